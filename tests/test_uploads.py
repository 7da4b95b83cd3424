"""gateway/uploads.py: every upload rule, chunk boundaries anywhere, round trips and fuzzing.

The declared columns an upload is checked against (gateway/columns.py) are tested here too, first.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.columns import Column, ColumnError, ColumnType, parse_columns, to_json
from gateway.uploads import MAX_TEXT_CHARS, UploadFormat, UploadRejected, parse_upload

COLUMNS = (Column("region", "text"), Column("code", "integer"), Column("score", "number"),
           Column("active", "boolean"), Column("day", "date"), Column("at", "timestamp"))
NAMES = [c.name for c in COLUMNS]
HEADER = b"region,code,score,active,day,at\n"
GOOD_CSV = b"Kanto,13,2.5,true,2020-04-01,2020-04-01T09:00:00+09:00\n"
GOOD_NDJSON = (b'{"region":"Kanto","code":13,"score":2.5,"active":true,"day":"2020-04-01",'
               b'"at":"2020-04-01T09:00:00+09:00"}\n')
GOOD_RECORD = ('{"region":"Kanto","code":13,"score":2.5,"active":true,"day":"2020-04-01",'
               '"at":"2020-04-01T00:00:00Z"}')
# A small upload with every awkward thing at once: BOM, CRLF, multi-byte UTF-8, quoting, nulls.
TRICKY_CSV = ("\ufeffat,day,region,code,score,active\r\n"
              '2020-04-01T09:00:00+09:00,2020-04-01,"東京, ""都""",13,1e3,true\r\n'
              "2020-04-01 00:30Z,,大阪,,,\r\n"
              '2020-03-31T23:59:59.25-05:00,"",北海道,-7,-0.5,false').encode()
TRICKY_NDJSON = ('\ufeff{"at":"2020-04-01T09:00:00+09:00","region":"東京, \\"都\\"","code":13,'
                 '"score":1e3,"active":true,"day":"2020-04-01"}\r\n'
                 '{"region":"大阪","day":null,"at":"2020-04-01 00:30Z","code":null,"score":null,"active":null}\n'
                 '{"region":"北海道","code":-7,"score":-0.5,"active":false,"day":null,'
                 '"at":"2020-03-31T23:59:59.25-05:00"}\n').encode()


async def _chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def parse(data: bytes | list[bytes], fmt: UploadFormat = "csv", columns: tuple[Column, ...] = COLUMNS,
                partition: str = "region", *, max_line_bytes: int = 1 << 20) -> list[tuple[str, str]]:
    chunks = [data] if isinstance(data, bytes) else data
    batches = parse_upload(_chunks(chunks), fmt, columns, partition, max_line_bytes=max_line_bytes)
    return [row async for batch in batches for row in batch]


async def rejected(data: bytes | list[bytes], fmt: UploadFormat = "csv",
                   columns: tuple[Column, ...] = COLUMNS, partition: str = "region", *,
                   max_line_bytes: int = 1 << 20) -> UploadRejected:
    with pytest.raises(UploadRejected) as info:
        await parse(data, fmt, columns, partition, max_line_bytes=max_line_bytes)
    return info.value


async def outcome(data: list[bytes], fmt: UploadFormat, columns: tuple[Column, ...] = COLUMNS, *,
                  max_line_bytes: int = 1 << 20) -> Any:
    """The output, or the rejection as (line, column, detail): what must not depend on chunking."""
    try:
        return await parse(data, fmt, columns, max_line_bytes=max_line_bytes)
    except UploadRejected as exc:
        return exc.line, exc.column, exc.detail


def records(rows: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [orjson.loads(record) for _, record in rows]


# Declared columns


def test_a_declaration_parses_and_round_trips_through_json() -> None:
    raw = [{"name": "region", "type": "text", "description": "where"}, {"name": "code", "type": "integer"}]
    columns = parse_columns(raw)
    assert columns == (Column("region", "text", "where"), Column("code", "integer"))
    assert to_json(columns) == [{"name": "region", "type": "text", "description": "where"},
                                {"name": "code", "type": "integer", "description": ""}]
    assert parse_columns(to_json(COLUMNS)) == COLUMNS


@pytest.mark.parametrize(("raw", "complaint"), [
    (None, "must be a list of 1 to 100"), ([], "must be a list of 1 to 100"),
    ([{"name": f"c{i}", "type": "text"} for i in range(101)], "must be a list of 1 to 100"),
    (["region"], "columns[0] must be an object"),
    ([{"name": "region", "type": "text", "unit": "m"}], "unknown key(s) unit"),
    ([{"type": "text"}], "columns[0]: name must be"), ([{"name": "Region", "type": "text"}], "name must be"),
    ([{"name": "1st", "type": "text"}], "name must be"),
    ([{"name": "a" * 64, "type": "text"}], "name must be"),
    ([{"name": "region\n", "type": "text"}], "name must be"),
    ([{"name": "a", "type": "text"}, {"name": "a", "type": "integer"}],
     "columns[1]: column 'a' is declared twice"),
    ([{"name": "a", "type": "int"}], "type must be one of text, integer, number, boolean, date, timestamp"),
    ([{"name": "a", "type": "text", "description": 5}], "description must be a string")])
def test_a_bad_declaration_says_what_to_fix(raw: object, complaint: str) -> None:
    with pytest.raises(ColumnError) as info:
        parse_columns(raw)
    assert complaint in str(info.value)


# Shapes of the output


async def test_csv_rows_are_partition_and_compact_json_in_declared_order() -> None:
    upload = b"at,active,day,score,code,region\n2020-04-01T09:00:00+09:00,true,2020-04-01,2.5,13,Kanto\n"
    assert await parse(upload) == [("Kanto", GOOD_RECORD)]
    assert await parse(HEADER + GOOD_CSV) == [("Kanto", GOOD_RECORD)]


async def test_ndjson_gives_the_same_rows_as_csv() -> None:
    assert await parse(GOOD_NDJSON, "ndjson") == [("Kanto", GOOD_RECORD)]


NULL_RECORD = '{"region":"Kanto","code":null,"score":null,"active":null,"day":null,"at":null}'


async def test_empty_fields_and_nulls_are_null_and_every_column_is_present() -> None:
    assert await parse(HEADER + b"Kanto,,,,,\n") == [("Kanto", NULL_RECORD)]
    reordered = b'{"at":null,"day":null,"active":null,"score":null,"code":null,"region":"Kanto"}\n'
    assert await parse(NULL_RECORD.encode() + b"\n" + reordered, "ndjson") == [("Kanto", NULL_RECORD)] * 2


@pytest.mark.parametrize(("line", "column", "complaint"), [
    (b'{"region":"Kanto"}', "code", "missing key(s) 'code', 'score', 'active', 'day', 'at'"),
    (b'{"region":"Kanto","code":null,"score":null,"active":null,"day":null}', "at", "missing key(s) 'at'"),
    (b'{"code":null,"score":null,"active":null,"day":null,"at":null}', "region", "missing key(s) 'region'")])
async def test_an_ndjson_line_missing_a_key_is_rejected_as_a_csv_row_missing_a_column_is(
        line: bytes, column: str, complaint: str) -> None:
    error = await rejected(GOOD_NDJSON + line + b"\n" + GOOD_NDJSON, "ndjson")
    assert (error.line, error.column) == (2, column)
    assert complaint in error.detail and "null where it has no value" in error.detail


@pytest.mark.parametrize(("line", "column"), [
    (b'{"region":"Kanto","code":1,"score":null,"active":null,"day":null,"at":null,"code":2}', "code"),
    (b'{"region":"Kanto","region":"Kansai","code":1,"score":null,"active":null,"day":null,"at":null}', "region"),
    # A repeat hidden by a missing key, and one beside an escaped quote (the count of quotes is off anyway).
    (b'{"region":"Kanto","code":1,"code":1,"score":null,"active":null,"day":null}', "code"),
    (b'{"region":"K\\"x","code":1,"score":null,"active":null,"day":null,"at":null,"at":null}', "at"),
    (b'{"region":"Kanto","code":1,"score":null,"active":null,"day":null,"at":null,"bogus":1,"bogus":2}', None)])
async def test_an_ndjson_line_giving_a_key_twice_is_rejected(line: bytes, column: str | None) -> None:
    error = await rejected(GOOD_NDJSON + line + b"\n", "ndjson")
    assert (error.line, error.column) == (2, column)
    assert "is given twice" in error.detail


async def test_escaped_quotes_and_keys_inside_text_are_not_mistaken_for_repeated_keys() -> None:
    line = ('{"region":"Kan\\"to\\": \\"x","code":1,"score":null,"active":null,"day":null,'
            '"at":"2020-04-01T09:00:00+09:00"}\n')
    assert records(await parse(line.encode(), "ndjson"))[0]["region"] == 'Kan"to": "x'


async def test_a_quoted_empty_csv_field_is_null_too() -> None:
    rows = await parse(HEADER + b'Kanto,"",,,,""\n')
    assert records(rows)[0]["code"] is None and records(rows)[0]["at"] is None


@pytest.mark.parametrize(("kind", "csv_value", "partition"), [
    ("integer", "013", "13"), ("number", "1e3", "1000.0"), ("number", "-2", "-2"),
    ("boolean", "true", "true"),
    ("date", "2020-04-01", "2020-04-01"), ("timestamp", "2020-04-01T09:00+09:00", "2020-04-01T00:00:00Z"),
    ("text", "Tōkyō", "Tōkyō")])
async def test_the_partition_is_its_json_value_as_text(kind: ColumnType, csv_value: str,
                                                        partition: str) -> None:
    columns = (Column("p", kind), Column("n", "integer"))
    rows = await parse(f"n,p\n1,{csv_value}\n".encode(), columns=columns, partition="p")
    assert rows[0][0] == partition


@pytest.mark.parametrize(("upload", "fmt"), [
    (HEADER + GOOD_CSV + GOOD_CSV + b",1,,,,\n", "csv"),
    (HEADER + GOOD_CSV + GOOD_CSV + b'"",1,,,,\n', "csv"),
    (GOOD_NDJSON * 2 + NULL_RECORD.replace('"Kanto"', "null").encode(), "ndjson"),
    (GOOD_NDJSON * 2 + NULL_RECORD.replace('"Kanto"', '""').encode(), "ndjson")])
async def test_the_partition_must_have_a_value(upload: bytes, fmt: UploadFormat) -> None:
    error = await rejected(upload, fmt)
    assert (error.line, error.column) == (3 if fmt == "ndjson" else 4, "region")
    assert "partition column must have a value" in error.detail


async def test_a_partition_value_has_at_most_200_characters() -> None:
    assert (await parse(HEADER + b"x" * 200 + b",,,,,\n"))[0][0] == "x" * 200
    error = await rejected(HEADER + b"x" * 201 + b",,,,,\n")
    assert (error.line, error.column) == (2, "region")
    assert "at most 200 characters" in error.detail


async def test_thousands_of_distinct_timestamps_are_each_converted() -> None:
    start = datetime(2020, 4, 1, tzinfo=timezone(timedelta(hours=9)))
    moments = [start + timedelta(minutes=i) for i in range(10_000)]
    upload = b"p,t\n" + b"".join(b"p,%s\n" % m.isoformat().encode() for m in moments)
    rows = await parse(upload, columns=(Column("p", "text"), Column("t", "timestamp")), partition="p")
    assert [orjson.loads(r)["t"] for _, r in rows] == [
        m.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for m in moments]


async def test_batches_follow_upload_order_and_size() -> None:
    upload = HEADER + b"".join(b"r%d,%d,,,,\n" % (i, i) for i in range(5))
    batches = [b async for b in parse_upload(_chunks([upload]), "csv", COLUMNS, "region", batch_rows=2)]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [p for b in batches for p, _ in b] == ["r0", "r1", "r2", "r3", "r4"]


# Encoding, line endings, blank lines


async def test_crlf_lf_and_a_missing_final_newline_give_the_same_rows() -> None:
    lf = HEADER + GOOD_CSV + GOOD_CSV
    expected = await parse(lf)
    assert await parse(lf.replace(b"\n", b"\r\n")) == expected
    assert await parse(lf.rstrip(b"\n")) == expected
    assert await parse(lf.replace(b"\n", b"\r\n").rstrip(b"\r\n")) == expected
    assert await parse(GOOD_NDJSON.replace(b"\n", b"\r\n") * 2, "ndjson") == expected


async def test_a_bom_at_the_start_is_skipped() -> None:
    assert await parse(b"\xef\xbb\xbf" + HEADER + GOOD_CSV) == [("Kanto", GOOD_RECORD)]
    assert await parse(b"\xef\xbb\xbf" + GOOD_NDJSON, "ndjson") == [("Kanto", GOOD_RECORD)]


async def test_a_bom_elsewhere_is_not_skipped() -> None:
    for chunks in [[GOOD_NDJSON + b"\xef\xbb\xbf" + GOOD_NDJSON], [GOOD_NDJSON, b"\xef\xbb\xbf" + GOOD_NDJSON]]:
        error = await rejected(chunks, "ndjson")
        assert (error.line, error.column) == (2, None)


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_invalid_utf8_is_rejected_at_its_line(fmt: UploadFormat) -> None:
    good = HEADER + GOOD_CSV if fmt == "csv" else GOOD_NDJSON * 2
    for bad in [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]:
        error = await rejected(good + b'"' + bad + b'"\n' + good, fmt)
        assert (error.line, error.column) == (3, None)
        assert "not valid UTF-8" in error.detail


async def test_an_empty_line_before_a_record_is_rejected_at_its_line() -> None:
    error = await rejected(GOOD_NDJSON + b"\n" + GOOD_NDJSON, "ndjson")
    assert (error.line, error.column) == (2, None)
    assert "empty line" in error.detail
    error = await rejected(GOOD_NDJSON + b"\r\n\n" + GOOD_NDJSON, "ndjson")
    assert error.line == 2
    error = await rejected(HEADER + GOOD_CSV + b"\n\n" + GOOD_CSV)
    assert (error.line, error.column) == (3, None)
    assert "empty line" in error.detail


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\n\n\n", b"\r\n\r\n"])
async def test_blank_lines_at_the_end_are_ignored(ending: bytes) -> None:
    """Excel and many exports end a file with an empty line; without a declaration it was refused."""
    assert await parse(HEADER + GOOD_CSV + ending) == [("Kanto", GOOD_RECORD)]
    assert await parse(GOOD_NDJSON + ending, "ndjson") == [("Kanto", GOOD_RECORD)]
    for cut in range(len(HEADER + GOOD_CSV + ending) + 1):
        upload = HEADER + GOOD_CSV + ending
        assert await parse([upload[:cut], upload[cut:]]) == [("Kanto", GOOD_RECORD)]


@pytest.mark.parametrize(("upload", "fmt", "line"), [
    (b"", "csv", 1), (b"", "ndjson", 1), (b"\xef\xbb\xbf", "ndjson", 1), (b"\n\n", "ndjson", 3),
    (HEADER, "csv", 2), (HEADER.rstrip(), "csv", 2), (HEADER + b"\n", "csv", 3),
    (b"\xef\xbb\xbf" + HEADER.replace(b"\n", b"\r\n"), "csv", 2)])
async def test_an_upload_without_records_is_rejected(upload: bytes, fmt: UploadFormat, line: int) -> None:
    error = await rejected(upload, fmt)
    assert (error.line, error.column) == (line, None)
    assert "no records" in error.detail


async def test_a_line_longer_than_the_limit_is_rejected_at_its_line() -> None:
    line = b'{"region":"' + b"x" * 100 + b'"}'
    region = (Column("region", "text"),)
    assert len(await parse(line + b"\n" + line, "ndjson", region, max_line_bytes=len(line))) == 2
    for upload in [line + b"\n" + line + b"y\n", line + b"\n" + line + b"y"]:
        for chunk_size in [1, 7, len(upload)]:
            chunks = [upload[i:i + chunk_size] for i in range(0, len(upload), chunk_size)]
            error = await rejected(chunks, "ndjson", region, max_line_bytes=len(line))
            assert (error.line, error.column) == (2, None)
            assert f"longer than {len(line)} bytes" in error.detail


async def test_a_line_without_end_is_refused_before_it_is_read_in_full() -> None:
    taken = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal taken
        while True:
            taken += 1
            yield b"x" * 1000

    with pytest.raises(UploadRejected) as info:
        async for _ in parse_upload(endless(), "ndjson", COLUMNS, "region", max_line_bytes=100_000):
            pass
    assert info.value.line == 1
    assert taken == 101


async def test_batches_are_yielded_while_the_upload_still_streams() -> None:
    taken = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal taken
        yield HEADER
        for _ in range(100):
            taken += 1
            yield GOOD_CSV * 10

    batches = parse_upload(stream(), "csv", COLUMNS, "region", batch_rows=50)
    assert len(await anext(batches)) == 50
    assert taken == 5
    assert isinstance(batches, AsyncGenerator)
    await batches.aclose()


async def test_no_batch_holding_a_row_after_a_bad_line_is_yielded() -> None:
    yielded: list[list[tuple[str, str]]] = []
    chunks = [HEADER, GOOD_CSV, GOOD_CSV, GOOD_CSV, b"Kanto,x,,,,\n", GOOD_CSV]
    with pytest.raises(UploadRejected) as info:
        async for batch in parse_upload(_chunks(chunks), "csv", COLUMNS, "region", batch_rows=2):
            yielded.append(batch)
    assert info.value.line == 5
    assert [len(b) for b in yielded] == [2]


# CSV: header, quoting, field counts


async def test_the_header_may_name_the_columns_in_any_order() -> None:
    values = dict(zip(NAMES, GOOD_CSV.decode().rstrip("\n").split(",")))
    for order in itertools.permutations(NAMES):
        upload = ",".join(order) + "\n" + ",".join(values[name] for name in order) + "\n"
        assert await parse(upload.encode()) == [("Kanto", GOOD_RECORD)]


@pytest.mark.parametrize(("header", "complaint"), [
    ("region,code,score,active,day", "missing 'at'"),
    ("region,code,score,active,day,at,extra", "unknown 'extra'"),
    ("region,code,score,active,day,at,code", "repeated 'code'"),
    ("Region,code,score,active,day,at", "missing 'region'; unknown 'Region'"),
    (" region,code,score,active,day,at", "unknown ' region'"),
    ("", "missing 'region', 'code', 'score', 'active', 'day', 'at'")])
async def test_the_header_must_name_each_declared_column_once(header: str, complaint: str) -> None:
    error = await rejected(header.encode() + b"\n" + GOOD_CSV)
    assert (error.line, error.column) == (1, None)
    assert complaint in error.detail
    assert "region, code, score, active, day, at" in error.detail


async def test_a_malformed_header_is_rejected_at_line_1() -> None:
    for header in [b'region,"code\n', b'"re\ngion",code,score,active,day,at\n']:
        error = await rejected(header + GOOD_CSV)
        assert (error.line, error.column) == (1, None)
        assert "malformed CSV" in error.detail


async def test_quoted_fields_may_hold_commas_and_doubled_quotes() -> None:
    rows = await parse(HEADER + b'"Kan,""to""",13,,,,\n"x",1,,,,\n')
    assert [p for p, _ in rows] == ['Kan,"to"', "x"]


@pytest.mark.parametrize("bad", [b'"Kanto,13,,,,', b'Kanto,"13,,,,', b'"Kan"to,13,,,,', b'Kanto,13,,,,"'])
@pytest.mark.parametrize("after", [b"", b"\n", b"\n" + GOOD_CSV, b'\n"x",1,,,,\n', b"\n" + GOOD_CSV * 3])
async def test_an_unclosed_or_stray_quote_is_rejected_at_the_line_its_record_starts(bad: bytes, after: bytes) -> None:
    upload = HEADER + GOOD_CSV + bad + after
    error = await rejected(upload)
    assert (error.line, error.column) == (3, None)
    assert "malformed CSV" in error.detail and error.detail.startswith("line 3")
    for cut in range(len(upload) + 1):
        assert await outcome([upload[:cut], upload[cut:]], "csv") == (error.line, error.column, error.detail)


# CSV: records over several lines (RFC 4180: a quoted field may hold line breaks)

async def test_a_quoted_field_may_hold_line_breaks_and_errors_name_the_line_the_record_starts() -> None:
    columns = (Column("region", "text"), Column("note", "text"), Column("code", "integer"))
    upload = ('region,note,code\n'
              'Kanto,"一行目\n二行目",1\n'
              'Kanto,"tab\there, ""quoted""\n\nand a blank line inside",2\r\n'
              'Kanto,plain,3\n').encode()
    rows = await parse(upload, columns=columns)
    assert [orjson.loads(r)["note"] for _, r in rows] == [
        "一行目\n二行目", 'tab\there, "quoted"\n\nand a blank line inside', "plain"]
    for cut in range(len(upload) + 1):
        assert await parse([upload[:cut], upload[cut:]], columns=columns) == rows
    assert await parse([upload[i:i + 1] for i in range(len(upload))], columns=columns) == rows
    # A bad value in a record over lines 8 to 10 is reported at line 8, where the record starts.
    bad = upload + b'Kanto,"a\nb\nc",x\n'
    error = await rejected(bad, columns=columns)
    assert (error.line, error.column) == (8, "code")
    assert error.detail.startswith("line 8 (a record over lines 8-10), column code: 'x' is not an integer")
    for cut in range(len(bad) + 1):
        assert await outcome([bad[:cut], bad[cut:]], "csv", columns) == (8, "code", error.detail)


async def test_a_record_left_open_is_refused_at_its_first_line_once_it_outgrows_the_line_limit() -> None:
    upload = HEADER + GOOD_CSV + b'"Kanto,13,,,,\n' + GOOD_CSV * 50
    error = await rejected([upload[i:i + 100] for i in range(0, len(upload), 100)], max_line_bytes=200)
    assert (error.line, error.column) == (3, None)
    assert "runs on for more than 200 bytes; is a quoted field left open?" in error.detail


@pytest.mark.parametrize("row", [b"Kanto,13,,,\n", b"Kanto,13,,,,,\n", b"Kanto\n"])
async def test_a_row_with_the_wrong_number_of_fields_is_rejected(row: bytes) -> None:
    error = await rejected(HEADER + GOOD_CSV + row)
    assert (error.line, error.column) == (3, None)
    assert "where the header has 6" in error.detail


@pytest.mark.parametrize(("upload", "fmt"), [
    (HEADER + GOOD_CSV + b"Kan\rto,13,,,,\n", "csv"), (HEADER + GOOD_CSV + b'"Kan\rto",13,,,,\n', "csv"),
    (HEADER + GOOD_CSV + GOOD_CSV.rstrip() + b"\r", "csv"),
    (GOOD_NDJSON * 2 + b'{"code":1,\r"region":"x"}', "ndjson"),
    (GOOD_NDJSON * 2 + b"\r\r\n", "ndjson")])
async def test_a_cr_anywhere_but_before_lf_is_rejected(upload: bytes, fmt: UploadFormat) -> None:
    error = await rejected(upload, fmt)
    assert (error.line, error.column) == (3, None)
    assert "carriage return" in error.detail


# NDJSON


@pytest.mark.parametrize(("line", "complaint"), [
    (b"{", "not valid JSON"), (b"not json", "not valid JSON"), (b"  ", "not valid JSON"),
    (b'{"region":NaN}', "not valid JSON"), (b'{"score":1e999}', "not valid JSON"),
    (b'{"region":"\\ud800"}', "not valid JSON"), (b"[1]", "expected a JSON object"),
    (b'"Kanto"', "expected a JSON object"), (b"null", "expected a JSON object"),
    (b'{"region":"Kanto","bogus":1,"other":2}', "unknown key(s) 'bogus', 'other'")])
async def test_each_ndjson_line_is_one_object_of_declared_keys(line: bytes, complaint: str) -> None:
    error = await rejected(GOOD_NDJSON + line + b"\n" + GOOD_NDJSON, "ndjson")
    assert (error.line, error.column) == (2, None)
    assert complaint in error.detail


# Types: each case is put on line 3 of a CSV and line 2 of an NDJSON upload.

CSV_VALUES: list[tuple[ColumnType, str, Any]] = [
    ("integer", "42", 42), ("integer", "-7", -7), ("integer", "007", 7), ("integer", "-0", 0),
    ("integer", "9223372036854775807", 2**63 - 1), ("integer", "-9223372036854775808", -(2**63)),
    ("integer", "0" * 30 + "42", 42),
    ("number", "1", 1), ("number", "-2.5", -2.5), ("number", "1e3", 1000.0), ("number", "1E-3", 0.001),
    ("number", "2.5e+2", 250.0), ("number", "-0.0", -0.0), ("number", "99999999999999999999", 1e20),
    ("boolean", "true", True), ("boolean", "false", False),
    ("date", "2020-04-01", "2020-04-01"), ("date", "2020-02-29", "2020-02-29"),
    ("timestamp", "2020-04-01T09:00:00+09:00", "2020-04-01T00:00:00Z"),
    ("timestamp", "2020-04-01T09:00+0900", "2020-04-01T00:00:00Z"),
    ("timestamp", "2020-04-01 09:00:00+09", "2020-04-01T00:00:00Z"),
    ("timestamp", "2020-03-31T23:30:00.5-05:00", "2020-04-01T04:30:00.500000Z"),
    ("timestamp", "2020-04-01T00:00:00.000001Z", "2020-04-01T00:00:00.000001Z"),
    ("timestamp", "2020-04-01T00:00:00.000000Z", "2020-04-01T00:00:00Z"),
    ("text", "Kanto", "Kanto"), ("text", " spaced ", " spaced "), ("text", "東京\u2028x", "東京\u2028x"),
    ("text", "a\tb", "a\tb"), ("text", "一行目\n二行目\n", "一行目\n二行目\n"), ("text", "\n", "\n"),
    ("text", "x" * MAX_TEXT_CHARS, "x" * MAX_TEXT_CHARS),
]
CSV_REJECTS: list[tuple[ColumnType, str, str]] = [
    ("integer", "abc", "'abc' is not an integer"), ("integer", "1.0", "is not an integer"),
    ("integer", "1e3", "is not an integer"), ("integer", " 1", "is not an integer"),
    ("integer", "1_000", "is not an integer"), ("integer", "+1", "is not an integer"),
    ("integer", "١٢", "is not an integer"),
    ("integer", "9223372036854775808", "outside the 64-bit integer range"),
    ("integer", "-9223372036854775809", "outside the 64-bit integer range"),
    ("integer", "1" * 5000, "outside the 64-bit integer range"),
    ("number", "nan", "is not a number"), ("number", "inf", "is not a number"),
    ("number", "Infinity", "is not a number"), ("number", ".5", "is not a number"),
    ("number", "1.", "is not a number"), ("number", "0x10", "is not a number"),
    ("number", "1_0", "is not a number"),
    ("number", "1e999", "finite"),
    ("number", "-" + "9" * 400, "finite"), ("boolean", "True", "is not a boolean"),
    ("boolean", "1", "is not a boolean"), ("boolean", "yes", "is not a boolean"),
    ("date", "2020-02-30", "is not a calendar date"), ("date", "2020-4-1", "is not a date"),
    ("date", "20200401", "is not a date"), ("date", "2020-W14-3", "is not a date"),
    ("date", "2020-04-01T00:00", "is not a date"), ("date", "0000-01-01", "is not a calendar date"),
    ("timestamp", "2020-04-01T00:00:00", "is not a timestamp with a time zone"),
    ("timestamp", "2020-04-01", "is not a timestamp"),
    ("timestamp", "2020-04-01T00:00:00z", "is not a timestamp"),
    ("timestamp", "2020-04-01x00:00:00Z", "is not a timestamp"),
    ("timestamp", "2020-04-01T00:00:00.1234567Z", "is not a timestamp"),
    ("timestamp", "2020-04-01T25:00:00Z", "is not a valid date, time and zone"),
    ("timestamp", "2020-02-30T00:00:00Z", "is not a valid"),
    ("timestamp", "2020-04-01T00:00:00+24:00", "not a valid"),
    ("timestamp", "0001-01-01T00:00:00+01:00", "is not a valid"),
    ("timestamp", "9999-12-31T23:00:00-01:00", "is not a valid"),
    ("text", "x" * (MAX_TEXT_CHARS + 1), f"at most {MAX_TEXT_CHARS}"),
    ("text", "a\x0cb", "control character U+000C"), ("text", "a\x7fb", "control character U+007F"),
    ("text", "a\x00b", "control character U+0000"), ("text", "a\x1bb", "control character U+001B"),
]


def _single(kind: ColumnType) -> tuple[Column, ...]:
    return (Column("p", "text"), Column("v", kind))


def _csv_line(*fields: str) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue().encode()


GOOD_CSV_VALUES: dict[ColumnType, str] = {"text": "x", "integer": "1", "number": "1", "boolean": "true",
                                          "date": "2020-04-01", "timestamp": "2020-04-01T00:00:00Z"}


@pytest.mark.parametrize(("kind", "text", "value"), CSV_VALUES)
async def test_csv_values_become_typed_json(kind: ColumnType, text: str, value: Any) -> None:
    rows = await parse(b"p,v\n" + _csv_line("p", text), columns=_single(kind), partition="p")
    got = orjson.loads(rows[0][1])["v"]
    assert got == value and type(got) is type(value)
    assert str(got) == str(value)  # -0.0 stays -0.0


@pytest.mark.parametrize(("kind", "text", "complaint"), CSV_REJECTS)
async def test_bad_csv_values_are_rejected_with_line_and_column(kind: ColumnType, text: str,
                                                                 complaint: str) -> None:
    upload = b"v,p\n" + _csv_line(GOOD_CSV_VALUES[kind], "p") + _csv_line(text, "p")
    error = await rejected(upload, columns=_single(kind), partition="p")
    assert (error.line, error.column) == (3, "v")
    assert error.detail.startswith("line 3, column v: ")
    assert complaint in error.detail


JSON_VALUES: list[tuple[ColumnType, bytes, Any]] = [
    ("integer", b"42", 42), ("integer", b"-9223372036854775808", -(2**63)), ("integer", b"-0", 0),
    ("number", b"1", 1), ("number", b"2.5", 2.5), ("number", b"1e3", 1000.0), ("number", b"-0.0", -0.0),
    ("number", b"18446744073709551615", 1.8446744073709552e19), ("number", b"1e400000000000", None),
    ("boolean", b"true", True), ("boolean", b"false", False),
    ("date", b'"2020-04-01"', "2020-04-01"),
    ("timestamp", b'"2020-04-01T09:00:00+09:00"', "2020-04-01T00:00:00Z"),
    ("text", b'"Kanto"', "Kanto"), ("text", b'"\\u6771\\u4eac"', "東京"),
    ("text", b'"a\\tb\\nc"', "a\tb\nc"),
]
JSON_REJECTS: list[tuple[ColumnType, bytes, str]] = [
    ("integer", b"3.0", "3.0 is not an integer"), ("integer", b"true", "true is not an integer"),
    ("integer", b'"42"', "'42' is not an integer"), ("integer", b"9223372036854775808", "outside the 64-bit"),
    ("integer", b"18446744073709551616", "is not an integer"), ("integer", b"[1]", "is not an integer"),
    ("number", b"true", "is not a number"), ("number", b'"1"', "is not a number"),
    ("number", b"{}", "is not a number"),
    ("boolean", b"1", "is not a boolean"), ("boolean", b'"true"', "is not a boolean"),
    ("date", b"20200401", "is not a date (expected a JSON string)"),
    ("date", b'"2020-02-30"', "calendar date"),
    ("timestamp", b"1585699200", "is not a timestamp"), ("timestamp", b'"2020-04-01T00:00:00"', "time zone"),
    ("text", b"13", "13 is not text"), ("text", b'"a\\fb"', "control character U+000C"),
    ("text", b'"a\\u0000b"', "control character U+0000"), ("text", b'"a\\rb"', "control character U+000D"),
    ("text", b'"' + b"x" * (MAX_TEXT_CHARS + 1) + b'"', f"at most {MAX_TEXT_CHARS}"),
]


@pytest.mark.parametrize(("kind", "json", "value"), JSON_VALUES)
async def test_ndjson_values_become_typed_json(kind: ColumnType, json: bytes, value: Any) -> None:
    upload = b'{"p":"p","v":' + json + b"}\n"
    if value is None:  # beyond a double: orjson refuses the line
        error = await rejected(upload, "ndjson", _single(kind), "p")
        assert (error.line, error.column) == (1, None)
        return
    got = orjson.loads((await parse(upload, "ndjson", _single(kind), "p"))[0][1])["v"]
    assert got == value and type(got) is type(value)
    assert str(got) == str(value)


@pytest.mark.parametrize(("kind", "json", "complaint"), JSON_REJECTS)
async def test_bad_ndjson_values_are_rejected_with_line_and_column(kind: ColumnType, json: bytes,
                                                                   complaint: str) -> None:
    error = await rejected(b'{"p":"p","v":null}\n{"v":' + json + b',"p":"p"}\n', "ndjson", _single(kind), "p")
    assert (error.line, error.column) == (2, "v")
    assert error.detail.startswith("line 2, column v: ")
    assert complaint in error.detail


async def test_messages_quote_long_values_cut_short() -> None:
    error = await rejected(b"p,v\np," + b"9" * 5000 + b"x\n", columns=_single("integer"), partition="p")
    assert len(error.detail) < 200
    assert error.detail.startswith("line 2, column v: '9999")


async def test_the_first_bad_line_is_reported_whatever_kind_of_problem_follows() -> None:
    base = HEADER + GOOD_CSV + b"Kanto,x,,,,\n"
    for later in [b"\xff\n", b"y" * 200 + b"\n", b'"unclosed\n', b"\n"]:
        upload = base + later + GOOD_CSV
        for size in range(1, len(upload) + 1, 3):
            chunks = [upload[i:i + size] for i in range(0, len(upload), size)]
            error = await rejected(chunks, max_line_bytes=100)
            assert (error.line, error.column) == (3, "code")


# Chunk boundaries


@pytest.mark.parametrize(("upload", "fmt"), [(TRICKY_CSV, "csv"), (TRICKY_NDJSON, "ndjson")])
async def test_a_split_at_any_byte_gives_the_same_rows(upload: bytes, fmt: UploadFormat) -> None:
    whole = await parse(upload, fmt)
    assert len(whole) == 3
    for cut in range(len(upload) + 1):
        assert await parse([upload[:cut], upload[cut:]], fmt) == whole
    assert await parse([upload[i:i + 1] for i in range(len(upload))], fmt) == whole


BAD_UPLOADS = [
    (TRICKY_CSV + b"\nx,1,2,3", "csv"), (TRICKY_CSV.replace("大阪".encode(), b"\xe5\xa4"), "csv"),
    (TRICKY_CSV.replace(b',"",', b',"'), "csv"), (TRICKY_CSV.replace(b"\r\n2020-04-01 ", b"\r\n\r\n"), "csv"),
    (TRICKY_NDJSON.replace(b"-7", b"-7.5"), "ndjson"), (TRICKY_NDJSON + b"\n" + TRICKY_NDJSON, "ndjson"),
    (TRICKY_NDJSON + TRICKY_NDJSON, "ndjson"),
]


@pytest.mark.parametrize(("upload", "fmt"), BAD_UPLOADS)
async def test_a_split_at_any_byte_gives_the_same_rejection(upload: bytes, fmt: UploadFormat) -> None:
    whole = await outcome([upload], fmt)
    assert isinstance(whole, tuple)
    for cut in range(len(upload) + 1):
        assert await outcome([upload[:cut], upload[cut:]], fmt) == whole


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


MEDIUM_CSV = HEADER + b"".join(
    b"R%d,%d,%d.25,%s,2020-04-%02d,2020-04-01T%02d:15:00+09:00\r\n"
    % (i, i, i, b"true" if i % 2 else b"false", i % 30 + 1, i % 24)
    for i in range(60))


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(MEDIUM_CSV)), max_size=30))
async def test_random_chunking_never_changes_the_rows(cuts: list[int]) -> None:
    assert await parse(_split(MEDIUM_CSV, cuts)) == await parse(MEDIUM_CSV)
    assert await outcome(_split(BAD_UPLOADS[1][0], cuts), "csv") == await outcome([BAD_UPLOADS[1][0]], "csv")


# Round trips: values of every type written as CSV and as NDJSON give the same records.

# Any valid UTF-8 text (so no surrogates) without control characters.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="".join(map(chr, [*range(32), 127]))),
                min_size=1, max_size=20)
# Partition values have no surrounding spaces; other text may hold line breaks and TABs too.
_PARTITION = _TEXT.filter(lambda text: text == text.strip())
_VALUES: dict[ColumnType, st.SearchStrategy[Any]] = {
    "text": st.text(st.characters(codec="utf-8", exclude_characters="".join(map(chr, [*range(9), *range(11, 32), 127]))),
                    min_size=1, max_size=20),
    "integer": st.integers(-(2**63), 2**63 - 1),
    "number": st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)),
    "boolean": st.booleans(),
    "date": st.dates(),
    "timestamp": st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9000, 1, 1),
                              timezones=st.builds(timezone, st.integers(-23 * 60 + 1, 23 * 60 - 1).map(
                                  lambda m: timedelta(minutes=m)))),
}


def _expected(kind: ColumnType, value: Any) -> Any:
    """The record's JSON value, worked out independently of gateway/uploads.py."""
    if kind == "number" and type(value) is float and abs(value) >= 1e16:
        return orjson.Fragment(f"{int(value)}.0")  # with a fraction, so that jsonb keeps it a float
    if value is None or kind in ("text", "integer", "number", "boolean"):
        return value
    if kind == "date":
        return value.isoformat()
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "") + "Z"


def _csv_text(kind: ColumnType, value: Any) -> str:
    """How a vendor's CSV writer spells the value (str() of a float is its shortest repr, e.g. 1e+16)."""
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        return str(value.isoformat(sep=" " if value.second % 2 else "T"))
    return str(value)


def _json_value(kind: ColumnType, value: Any) -> Any:
    return value.isoformat() if kind in ("date", "timestamp") and value is not None else value


@st.composite
def _uploads(draw: st.DrawFn) -> tuple[tuple[Column, ...], list[dict[str, Any]], list[str]]:
    kinds = draw(st.lists(st.sampled_from(list(_VALUES)), min_size=1, max_size=6))
    columns = (Column("part", "text"),) + tuple(Column(f"c{i}", kind) for i, kind in enumerate(kinds))
    record = st.fixed_dictionaries({"part": _PARTITION,
                                    **{c.name: st.none() | _VALUES[c.type] for c in columns[1:]}})
    rows = draw(st.lists(record, min_size=1, max_size=8))
    order = draw(st.permutations([c.name for c in columns]))
    return columns, rows, order


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_uploads(), st.booleans())
async def test_csv_and_ndjson_round_trip_to_the_same_records(upload: Any, crlf: bool) -> None:
    columns, rows, order = upload
    kinds = {c.name: c.type for c in columns}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(order)
    for row in rows:
        writer.writerow([_csv_text(kinds[name], row[name]) for name in order])
    ndjson = b"".join(orjson.dumps({name: _json_value(kinds[name], row[name]) for name in order}) + b"\n"
                      for row in rows)
    expected: list[tuple[str, str]] = []
    for row in rows:
        record = {c.name: _expected(c.type, row[c.name]) for c in columns}
        expected.append((row["part"], orjson.dumps(record).decode()))
    assert await parse(buffer.getvalue().encode(), "csv", columns, "part") == expected
    assert await parse(ndjson, "ndjson", columns, "part") == expected


# Fuzzing: whatever the bytes, the only failure is UploadRejected.

_PIECES = st.sampled_from([
    b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"\xff", b"\xe6\x9d", b"\x00", b"Kanto", b"13",
    b"-", b"2.5", b"1e999", b"true", b"2020-04-01", b"T09:00:00+09:00", b"{", b"}", b":", b"[", b"null",
    b"\\u0000", b'"region"', b'"code"', b'"at"', HEADER, GOOD_CSV, GOOD_NDJSON])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=40).map(b"".join)),
       st.lists(st.integers(0, 300), max_size=5), st.sampled_from(["csv", "ndjson"]))
async def test_arbitrary_bytes_give_rows_or_upload_rejected(upload: bytes, cuts: list[int],
                                                            fmt: UploadFormat) -> None:
    result = await outcome(_split(upload, cuts), fmt, max_line_bytes=200)
    assert await outcome([upload], fmt, max_line_bytes=200) == result
    if isinstance(result, tuple):
        line, _, detail = result
        assert line >= 1 and detail.startswith(f"line {line}")
    else:
        assert result and all(len(partition) <= 200 for partition, _ in result)


# Partition values: no surrounding spaces, no line breaks or TABs (licences name partitions exactly)


@pytest.mark.parametrize("value", [" 関東", "関東 ", "\u3000関東", "   ", "関\n東", "関\t東"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_a_partition_value_with_surrounding_spaces_or_a_line_break_is_rejected(
        value: str, fmt: UploadFormat) -> None:
    row = {"region": value, "code": 1, "score": None, "active": None, "day": None, "at": None}
    upload = (HEADER + GOOD_CSV + _csv_line(*(("" if v is None else str(v)) for v in row.values()))
              if fmt == "csv" else GOOD_NDJSON * 2 + orjson.dumps(row) + b"\n")
    error = await rejected(upload, fmt)
    assert (error.line, error.column) == (3, "region")
    assert "partition value" in error.detail
    # The same text is fine in a column that is not the partition column.
    note = (Column("p", "text"), Column("note", "text"))
    assert records(await parse(b"p,note\n" + _csv_line("x", value), columns=note, partition="p")) == [
        {"p": "x", "note": value}]


# Declared spellings (Excel and core-system conventions): refused undeclared, read when declared

EXCEL_COLUMNS = parse_columns([
    {"name": "region", "type": "text"},
    {"name": "active", "type": "boolean", "true": ["TRUE", "1", "はい"], "false": ["FALSE", "0", "いいえ"]},
    {"name": "day", "type": "date", "format": "%Y/%m/%d"},
    {"name": "at", "type": "timestamp", "format": "%Y/%m/%d %H:%M", "time_zone": "Asia/Tokyo"},
    {"name": "seen", "type": "timestamp", "time_zone": "Asia/Tokyo"},
    {"name": "sales", "type": "integer", "thousands_separator": ","},
    {"name": "share", "type": "number", "thousands_separator": ","}])
STRICT_COLUMNS = tuple(Column(c.name, c.type) for c in EXCEL_COLUMNS)
EXCEL_HEADER = b"region,active,day,at,seen,sales,share\n"
EXCEL_ROW = '関東,TRUE,2026/05/01,2026/05/01 09:30,2026-05-01T09:30:00,"1,234","1,234,567.5"\n'.encode()
CANONICAL = {"region": "関東", "active": True, "day": "2026-05-01", "at": "2026-05-01T00:30:00Z",
             "seen": "2026-05-01T00:30:00Z", "sales": 1234, "share": 1234567.5}


async def test_excel_spellings_publish_when_declared_and_are_stored_in_canonical_form() -> None:
    assert records(await parse(EXCEL_HEADER + EXCEL_ROW, columns=EXCEL_COLUMNS)) == [CANONICAL]
    ndjson = orjson.dumps({"region": "関東", "active": "はい", "day": "2026/5/1", "at": "2026/5/1 9:30",
                           "seen": "2026-05-01 09:30", "sales": "1,234", "share": "1,234,567.5"}) + b"\n"
    assert records(await parse(ndjson, "ndjson", EXCEL_COLUMNS)) == [CANONICAL]
    # The canonical forms keep working beside the declared ones (but for a declared date format).
    native = orjson.dumps({**CANONICAL, "day": "2026/05/01", "at": "2026/05/01 09:30",
                           "seen": "2026-05-01T09:30:00+09:00"}) + b"\n"
    assert records(await parse(native, "ndjson", EXCEL_COLUMNS)) == [CANONICAL]


@pytest.mark.parametrize(("column", "text", "complaint"), [
    ("active", "TRUE", "is not a boolean (expected true or false)"),
    ("day", "2026/05/01", "is not a date"),
    ("at", "2026/05/01 09:30", "is not a timestamp with a time zone"),
    ("seen", "2026-05-01T09:30:00", "is not a timestamp with a time zone"),
    ("sales", "1,234", "is not an integer"), ("share", "1,234.5", "is not a number")])
async def test_excel_spellings_are_still_refused_where_not_declared(column: str, text: str, complaint: str) -> None:
    fields = dict(zip([c.name for c in EXCEL_COLUMNS], ["関東", "true", "2026-05-01", "2026-05-01T09:30:00Z",
                                                          "2026-05-01T09:30:00Z", "1", "1"]))
    upload = EXCEL_HEADER + _csv_line(*{**fields, column: text}.values())
    assert len(await parse(EXCEL_HEADER + _csv_line(*fields.values()), columns=STRICT_COLUMNS)) == 1
    error = await rejected(upload, columns=STRICT_COLUMNS)
    assert (error.line, error.column) == (2, column)
    assert complaint in error.detail


@pytest.mark.parametrize(("declaration", "text", "value"), [
    ({"type": "boolean", "true": ["TRUE"], "false": ["FALSE"]}, "FALSE", False),
    ({"type": "boolean", "true": ["TRUE"], "false": ["FALSE"]}, "true", True),
    ({"type": "boolean", "true": ["1"], "false": ["0"]}, "0", False),
    ({"type": "boolean", "true": ["はい"], "false": ["いいえ"]}, "いいえ", False),
    ({"type": "date", "format": "%Y%m%d"}, "20260501", "2026-05-01"),
    ({"type": "date", "format": "%d.%m.%Y"}, "1.5.2026", "2026-05-01"),
    ({"type": "date", "format": "%Y年%m月%d日"}, "2026年5月1日", "2026-05-01"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M:%S", "time_zone": "UTC"}, "2026/05/01 23:59:59",
     "2026-05-01T23:59:59Z"),
    ({"type": "timestamp", "format": "%Y-%m-%d %H:%M:%S.%f", "time_zone": "Asia/Tokyo"}, "2026-05-01 09:00:00.5",
     "2026-05-01T00:00:00.500000Z"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M %z"}, "2026/05/01 09:00 +0900", "2026-05-01T00:00:00Z"),
    ({"type": "timestamp", "format": "%Y%m%d%H%M", "time_zone": "Asia/Tokyo"}, "202605010900", "2026-05-01T00:00:00Z"),
    ({"type": "timestamp", "time_zone": "America/New_York"}, "2026-07-01T09:00", "2026-07-01T13:00:00Z"),
    ({"type": "timestamp", "time_zone": "Asia/Tokyo"}, "2026-05-01T09:00:00Z", "2026-05-01T09:00:00Z"),
    ({"type": "integer", "thousands_separator": ","}, "-1,234,567", -1234567),
    ({"type": "integer", "thousands_separator": ","}, "999", 999),
    ({"type": "integer", "thousands_separator": ","}, "1234", 1234),
    ({"type": "number", "thousands_separator": ","}, "12,345.25", 12345.25),
    ({"type": "number", "thousands_separator": ","}, "12,345", 12345)])
async def test_a_declared_spelling_is_read_as_declared(declaration: dict[str, Any], text: str, value: Any) -> None:
    columns = parse_columns([{"name": "p", "type": "text"}, {"name": "v", **declaration}])
    got = records(await parse(b"p,v\n" + _csv_line("x", text), columns=columns, partition="p"))[0]["v"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("declaration", "text", "complaint"), [
    ({"type": "boolean", "true": ["TRUE"], "false": ["FALSE"]}, "True", "expected true or TRUE or false or FALSE"),
    ({"type": "boolean", "true": ["TRUE"], "false": ["FALSE"]}, "1", "is not a boolean"),
    ({"type": "date", "format": "%Y/%m/%d"}, "2026-05-01",
     "not a date in the declared format '%Y/%m/%d' (e.g. 2026/05/01)"),
    ({"type": "date", "format": "%Y/%m/%d"}, "2026/02/30", "is not a calendar date"),
    ({"type": "date", "format": "%Y/%m/%d"}, "2026/05/01 ", "not a date in the declared format"),
    ({"type": "date", "format": "%Y%m%d"}, "202605", "not a date in the declared format"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M", "time_zone": "Asia/Tokyo"}, "2026/05/01 24:00",
     "is not a valid date, time and zone"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M", "time_zone": "Asia/Tokyo"}, "2026/05/01 09:00+09:00",
     "not a timestamp in the declared format"),
    # 01:30 happens twice in New York on 2026-11-01 and not at all on 2026-03-08: nothing is guessed.
    ({"type": "timestamp", "time_zone": "America/New_York"}, "2026-11-01T01:30", "ambiguous or does not exist"),
    ({"type": "timestamp", "time_zone": "America/New_York"}, "2026-03-08T02:30", "ambiguous or does not exist"),
    ({"type": "timestamp", "time_zone": "Asia/Tokyo"}, "2026/05/01 09:00", "is not a timestamp"),
    ({"type": "integer", "thousands_separator": ","}, "12,34", "grouped in threes"),
    ({"type": "integer", "thousands_separator": ","}, "1,2345", "grouped in threes"),
    ({"type": "integer", "thousands_separator": ","}, ",123", "grouped in threes"),
    ({"type": "integer", "thousands_separator": ","}, "1,234.5", "is not an integer"),
    ({"type": "number", "thousands_separator": ","}, "1,23.5", "grouped in threes")])
async def test_a_value_that_misses_its_declared_spelling_is_rejected(declaration: dict[str, Any], text: str,
                                                                     complaint: str) -> None:
    columns = parse_columns([{"name": "p", "type": "text"}, {"name": "v", **declaration}])
    error = await rejected(b"p,v\n" + _csv_line("x", text), columns=columns, partition="p")
    assert (error.line, error.column) == (2, "v")
    assert complaint in error.detail


def test_spellings_round_trip_through_json_and_only_declared_ones_are_shown() -> None:
    assert parse_columns(to_json(EXCEL_COLUMNS)) == EXCEL_COLUMNS
    assert to_json(EXCEL_COLUMNS)[1] == {"name": "active", "type": "boolean", "description": "",
                                         "true": ["TRUE", "1", "はい"], "false": ["FALSE", "0", "いいえ"]}
    assert to_json(EXCEL_COLUMNS)[3] == {"name": "at", "type": "timestamp", "description": "",
                                         "format": "%Y/%m/%d %H:%M", "time_zone": "Asia/Tokyo"}


@pytest.mark.parametrize(("item", "complaint"), [
    ({"type": "text", "format": "%Y"}, "format applies to date and timestamp columns, not to text"),
    ({"type": "integer", "true": ["1"], "false": ["0"]}, "true applies to boolean columns"),
    ({"type": "date", "time_zone": "Asia/Tokyo"}, "time_zone applies to timestamp columns"),
    ({"type": "boolean", "true": ["TRUE"]}, "give both true and false"),
    ({"type": "boolean", "true": "TRUE", "false": "FALSE"}, "give both true and false as lists"),
    ({"type": "boolean", "true": [" TRUE"], "false": ["FALSE"]}, "without surrounding spaces"),
    ({"type": "boolean", "true": [""], "false": ["FALSE"]}, "give both true and false"),
    ({"type": "boolean", "true": ["X"], "false": ["X"]}, "'X' cannot spell both true and false"),
    ({"type": "boolean", "true": ["false"], "false": ["0"]}, "'false' always means false"),
    ({"type": "date", "format": "%Y/%m"}, "a date format needs %d"),
    ({"type": "date", "format": "%Y/%m/%d %H"}, "'%H' is not one a date may use"),
    ({"type": "date", "format": "%Y/%m/%d/%d"}, "'%d' appears twice"),
    ({"type": "date", "format": "%Y/%b/%d"}, "'%b' is not a directive"),
    ({"type": "date", "format": "%Y/%m/%d%"}, "'%' is not a directive"),
    ({"type": "date", "format": ""}, "format must be a strptime-style pattern"),
    ({"type": "timestamp", "format": "%Y/%m/%d"}, "a timestamp format needs %H, %M"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M"}, "a format without %z needs a time_zone"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M.%f", "time_zone": "UTC"}, "%f (fractions of a second) needs %S"),
    ({"type": "timestamp", "format": "%Y/%m/%d %H:%M%z", "time_zone": "UTC"}, "time_zone would never apply"),
    ({"type": "timestamp", "time_zone": "Tokyo"}, "'Tokyo' is not an IANA time zone name"),
    ({"type": "timestamp", "time_zone": "Asia"}, "is not an IANA time zone name"),
    ({"type": "timestamp", "time_zone": "../etc/passwd"}, "is not an IANA time zone name"),
    ({"type": "integer", "thousands_separator": "."}, "thousands_separator must be one of ','")])
def test_a_bad_spelling_declaration_says_what_to_fix(item: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ColumnError) as info:
        parse_columns([{"name": "v", **item}])
    assert complaint in str(info.value)
    assert str(info.value).startswith("columns[0] (v): ")
