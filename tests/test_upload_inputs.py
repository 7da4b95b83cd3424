"""Upload inputs: declared charsets, gzip bodies and Parquet files reach the record pipeline exactly, through the
API and the CLI; undeclared or broken ones are refused naming where, and leave nothing behind."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import io
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway import datasets, upload_bodies
from gateway.actors import cli_actor
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.runtime import Runtime
from tests.factories import VendorFixture, accept_terms, auth, make_vendor, wait_for_snapshot
from tests.test_cli import GATEWAY, cli_env

__all__ = ["cli_env"]  # a fixture of tests/test_cli.py, used here too

HEADER = "area,day,count,secret_note\n"
PARQUET = "application/vnd.apache.parquet"
TYPED_COLUMNS = [{"name": "area", "type": "text"}, {"name": "day", "type": "date"},
                 {"name": "count", "type": "integer"}, {"name": "share", "type": "number"},
                 {"name": "open", "type": "boolean"}, {"name": "at", "type": "timestamp"},
                 {"name": "note", "type": "text"}]


async def _upload(vendor: VendorFixture, dataset_id: str, body: bytes, content_type: str,
                  **headers: str) -> httpx.Response:
    return await vendor.client.post(f"/v1/admin/datasets/{dataset_id}/versions", content=body,
                                    headers={**vendor.headers, "content-type": content_type, **headers})


async def _read_back(runtime: Runtime, vendor: VendorFixture, dataset: dict[str, Any], partitions: list[str],
                     columns: list[str]) -> list[dict[str, Any]]:
    """Every deliverable record, as a member licensed to all of `partitions` and `columns` receives it."""
    member = await vendor.member(f"reader-{uuid.uuid4().hex[:6]}")
    key = (await vendor.member_key(member["id"]))["api_key"]
    licence = await vendor.licence(member["id"], dataset["id"], partitions, columns)
    await wait_for_snapshot(runtime, lambda: uuid.UUID(licence["id"]) in runtime.snapshot.licences)
    await accept_terms(vendor.client, licence["id"], key)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licence["id"])].accepted_terms)
    response = await vendor.client.get(f"/v1/datasets/{dataset['id']}/records?format=ndjson", headers=auth(key))
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines()]


async def _nothing_kept(runtime: Runtime) -> None:
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM records") == 0
        assert await conn.fetchval("SELECT count(*) FROM dataset_versions") == 0


# -- charsets ----------------------------------------------------------------------------------------

# Each charset with text only it (or Unicode) can carry: CP932's ①, ～ and 髙 are not in JIS X 0208.
DECLARED = [
    ('text/csv; charset="Shift_JIS"', "cp932", "関東", "髙橋①～Ⅲ"),
    ("text/csv; charset=euc-jp", "euc_jp", "北海道", "ｶﾀｶﾅ　と全角空白"),
    ("text/csv; charset=utf-8", "utf-8-sig", "九州", "😀 と BOM"),  # utf-8-sig writes the BOM Excel writes
]


async def test_declared_charsets_publish_and_arrive_exactly_as_utf8(runtime: Runtime,
                                                                   client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    expected = []
    for content_type, codec, area, note in DECLARED:
        body = (HEADER + f"{area},2026-04-01,7,{note}\r\n").encode(codec)
        response = await _upload(vendor, dataset["id"], body, content_type)
        assert response.status_code == 201, response.text
        assert list(response.json()["partitions"]) == [area]
        expected.append({"area": area, "day": "2026-04-01", "count": 7, "secret_note": note})
    records = await _read_back(runtime, vendor, dataset, [a for _, _, a, _ in DECLARED],
                               ["area", "day", "count", "secret_note"])
    assert sorted(records, key=str) == sorted(expected, key=str)


async def test_cp932_bytes_without_a_charset_are_422_naming_line_and_character(runtime: Runtime,
                                                                             client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    body = (HEADER + "north,2026-04-01,1,ok\nnorth,2026-04-02,2,髙橋\n").encode("cp932")
    response = await _upload(vendor, dataset["id"], body, "text/csv")
    assert response.status_code == 422
    problem = response.json()
    assert (problem["line"], problem["character"]) == (3, 20)
    assert "not valid UTF-8" in problem["detail"] and "charset=shift_jis" in problem["detail"]
    await _nothing_kept(runtime)


async def test_bytes_invalid_in_the_declared_charset_are_422_naming_line_and_character(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    body = (HEADER + "north,2026-04-01,1,関東\n").encode("cp932") + b"north,2026-04-02,2,ab\x81\x7f\n"
    response = await _upload(vendor, dataset["id"], body, "text/csv; charset=cp932")
    assert response.status_code == 422
    problem = response.json()
    assert (problem["line"], problem["character"]) == (3, 22)
    assert "not valid Shift_JIS (CP932) (bytes 0x81 0x7F)" in problem["detail"]
    # A UTF-8 file (its BOM says so) declared as Shift_JIS would be read as other characters: refused.
    bom = await _upload(vendor, dataset["id"], b"\xef\xbb\xbf" + (HEADER + "north,2026-04-01,1,x\n").encode(),
                        "text/csv; charset=shift_jis")
    assert bom.status_code == 422 and "byte order mark" in bom.json()["detail"]
    unknown = await _upload(vendor, dataset["id"], (HEADER + "north,2026-04-01,1,x\n").encode(),
                            "text/csv; charset=latin-9")
    assert unknown.status_code == 415 and "'latin-9' is not supported" in unknown.json()["detail"]
    await _nothing_kept(runtime)


@pytest.mark.parametrize("name", ["shift_jis", "Shift-JIS", "SJIS", "cp932", "Windows-31J", "MS_Kanji"])
def test_every_shift_jis_name_means_cp932(name: str) -> None:
    assert upload_bodies.charset(name).codec == "cp932"


async def _chunks(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _transcoded(pieces: list[bytes], codec: str) -> bytes | tuple[Any, ...]:
    try:
        return b"".join([c async for c in upload_bodies.to_utf8(_chunks(pieces), upload_bodies.charset(codec))])
    except InvalidInput as exc:
        return exc.extensions["line"], exc.extensions["character"], exc.detail


async def test_a_split_at_any_byte_gives_the_same_text_and_the_same_error() -> None:
    text = "area,note\n関東,①～\nｶﾀｶﾅ,髙\n"
    for codec, invalid in (("shift_jis", b"x,\x82\x20\n"), ("euc-jp", b"x,\xa4\x20\n")):
        good = text.encode("cp932" if codec == "shift_jis" else "euc_jp", "replace")
        whole = await _transcoded([good], codec)
        assert whole == good.decode("cp932" if codec == "shift_jis" else "euc_jp").encode()
        error = await _transcoded([good + invalid], codec)
        assert error[:2] == (4, 3), error
        for cut in range(1, len(good) + len(invalid)):
            data = good + invalid
            assert await _transcoded([good[:cut], good[cut:]], codec) == whole
            assert await _transcoded([data[:cut], data[cut:]], codec) == error
    assert (await _transcoded([b"a\n\x82"], "cp932"))[:2] == (2, 1)  # ends inside a character


# -- gzip --------------------------------------------------------------------------------------------

async def test_a_gzip_upload_publishes_and_its_digest_is_the_files(runtime: Runtime,
                                                                  client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    csv = (HEADER + "関東,2026-04-01,1,髙\n").encode("cp932")
    # Two members, as `cat a.gz b.gz` makes: one stream.
    body = gzip.compress(csv[:30]) + gzip.compress(csv[30:])
    response = await _upload(vendor, dataset["id"], body, "text/csv; charset=shift_jis", **{"content-encoding": "gzip"})
    assert response.status_code == 201, response.text
    assert response.json()["records"] == 1
    same = await _upload(vendor, dataset["id"], csv, "text/csv; charset=shift_jis")
    assert same.status_code == 409 and same.json()["duplicate_of"] == 1
    assert await _read_back(runtime, vendor, dataset, ["関東"], ["area", "secret_note"]) == [
        {"area": "関東", "secret_note": "髙"}]


async def test_a_corrupt_or_truncated_gzip_body_is_422_and_another_coding_415(runtime: Runtime,
                                                                             client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    packed = gzip.compress((HEADER + "north,2026-04-01,1,x\n").encode())
    corrupt = packed[:12] + bytes(b ^ 0xFF for b in packed[12:20]) + packed[20:]
    for body, reason in ((corrupt, "it is corrupt"), (packed[:-6], "ends before the gzip stream does"),
                         (b"area,day\n", "it is corrupt")):
        response = await _upload(vendor, dataset["id"], body, "text/csv", **{"content-encoding": "gzip"})
        assert response.status_code == 422, response.text
        assert "not valid gzip" in response.json()["detail"] and reason in response.json()["detail"]
    brotli = await _upload(vendor, dataset["id"], packed, "text/csv", **{"content-encoding": "br"})
    assert brotli.status_code == 415 and "Content-Encoding 'br'" in brotli.json()["detail"]
    await _nothing_kept(runtime)


async def test_an_idempotency_key_tells_the_same_bytes_under_another_coding_apart(runtime: Runtime,
                                                                                 client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    body = gzip.compress((HEADER + "north,2026-04-01,1,x\n").encode())
    key = {"idempotency-key": '"gzip-once"'}
    first = await _upload(vendor, dataset["id"], body, "text/csv", **{"content-encoding": "gzip"}, **key)
    assert first.status_code == 201, first.text
    # The same bytes as they are: another request (here a CSV that is not UTF-8), not a retry of the first.
    other = await _upload(vendor, dataset["id"], body, "text/csv", **key)
    assert other.status_code == 409 and "different request" in other.json()["detail"], other.text


async def test_a_gzip_bomb_stops_at_the_upload_limit_of_the_inflated_bytes(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await datasets.get(runtime.pool, vendor.id, uuid.UUID((await vendor.dataset())["id"]))
    bomb = gzip.compress(HEADER.encode() + b"north,2026-04-01,1," + b"x" * (64 << 20))  # 64 MiB in about 64 KiB

    async def body() -> AsyncIterator[bytes]:
        yield bomb

    with pytest.raises(PayloadTooLarge, match="once decompressed"):
        await datasets.publish(runtime.writer, cli_actor(vendor.id), dataset, body(), "csv", max_bytes=1 << 20,
                               gzip=True)
    await _nothing_kept(runtime)


# -- Parquet -----------------------------------------------------------------------------------------

def _parquet(table: pa.Table, **options: Any) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, **options)
    return out.getvalue()


TOKYO = datetime.timezone(datetime.timedelta(hours=9))
TYPED = pa.table({
    "note": pa.array(["改行なし", "", None]),
    "area": pa.array(["関東", "関東", "近畿"]).dictionary_encode(),  # pandas' category
    "day": pa.array([datetime.date(2026, 4, 1), None, datetime.date(2026, 12, 31)], pa.date32()),
    "count": pa.array([2**63 - 1, -(2**63), 0], pa.int64()),
    "share": pa.array([0.1, 1e20, None], pa.float64()),
    "open": pa.array([True, False, None]),
    "at": pa.array([datetime.datetime(2026, 4, 1, 9, 0, 0, 123456, tzinfo=TOKYO), None,
                    datetime.datetime(2026, 4, 1, 0, 0, tzinfo=datetime.UTC)], pa.timestamp("us", tz="Asia/Tokyo")),
})


async def test_a_parquet_upload_publishes_and_arrives_exactly(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.ok("POST", "/v1/admin/datasets", json={"name": "typed", "columns": TYPED_COLUMNS,
                                                                  "partition_column": "area"})
    body = _parquet(TYPED, row_group_size=2)  # two row groups, read one at a time
    response = await _upload(vendor, dataset["id"], body, PARQUET)
    assert response.status_code == 201, response.text
    assert {p: s["records"] for p, s in response.json()["partitions"].items()} == {"関東": 2, "近畿": 1}
    again = await _upload(vendor, dataset["id"], body, PARQUET)
    assert again.status_code == 409 and again.json()["duplicate_of"] == 1
    records = await _read_back(runtime, vendor, dataset, ["関東", "近畿"], [c["name"] for c in TYPED_COLUMNS])
    assert sorted(records, key=lambda r: r["count"]) == [
        {"area": "関東", "day": None, "count": -(2**63), "share": 1e20, "open": False, "at": None, "note": ""},
        {"area": "近畿", "day": "2026-12-31", "count": 0, "share": None, "open": None,
         "at": "2026-04-01T00:00:00Z", "note": None},
        {"area": "関東", "day": "2026-04-01", "count": 2**63 - 1, "share": 0.1, "open": True,
         "at": "2026-04-01T00:00:00.123456Z", "note": "改行なし"},
    ]


@pytest.mark.parametrize(("table", "column", "reason"), [
    (TYPED.drop_columns(["open"]), "open", "missing open"),
    (TYPED.append_column("extra", pa.array([1, 2, 3])), "extra", "unknown extra"),
    (TYPED.set_column(3, "count", pa.array([1.0, 2.0, 3.0])), "count",
     "column count is double in the Parquet file, but the dataset declares it integer"),
    (TYPED.set_column(6, "at", TYPED["at"].cast(pa.timestamp("us"))), "at", "a timestamp with a time zone"),
    (TYPED.set_column(4, "share", pa.array([0.5, float("nan"), 1.0])), "share", "line 2, column share: NaN"),
    (TYPED.set_column(6, "at", pa.array([1, 2, 1_000], pa.timestamp("ns", tz="UTC"))), "at",
     "kept to the microsecond"),
])
async def test_a_parquet_file_unlike_the_declaration_is_422_naming_the_column(
        runtime: Runtime, client: httpx.AsyncClient, table: pa.Table, column: str, reason: str) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.ok("POST", "/v1/admin/datasets", json={"name": "typed", "columns": TYPED_COLUMNS,
                                                                  "partition_column": "area"})
    response = await _upload(vendor, dataset["id"], _parquet(table), PARQUET)
    assert response.status_code == 422, response.text
    assert response.json()["column"] == column and reason in response.json()["detail"]
    not_parquet = await _upload(vendor, dataset["id"], b"area,day\n", PARQUET)
    assert not_parquet.status_code == 422 and "not a Parquet file" in not_parquet.json()["detail"]
    charset = await _upload(vendor, dataset["id"], _parquet(TYPED), PARQUET + "; charset=utf-8")
    assert charset.status_code == 415
    await _nothing_kept(runtime)


# -- the CLI -----------------------------------------------------------------------------------------

def _gateway(args: list[str], env: dict[str, str], stdin: bytes = b"") -> tuple[int, str, str]:
    done = subprocess.run(GATEWAY + args, env=env, input=stdin, capture_output=True, timeout=120, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_the_cli_reads_the_format_from_the_name_gzip_stdin_and_encodings(cli_env: dict[str, str],
                                                                        tmp_path: Path, dsn: str) -> None:
    assert _gateway(["vendor", "create", "Inputs"], cli_env)[0] == 0
    columns = tmp_path / "columns.json"
    columns.write_text('[{"name": "area", "type": "text"}, {"name": "n", "type": "integer"}]')
    assert _gateway(["dataset", "create", "--vendor", "Inputs", "--name", "counts", "--columns", str(columns),
                     "--partition-column", "area"], cli_env)[0] == 0
    publish = ["dataset", "publish", "--vendor", "Inputs", "counts"]
    csv = "area,n\n関東,{n}\n"
    ndjson = '{{"area": "関東", "n": {n}}}\n'
    files: list[tuple[str, bytes]] = [
        ("a.csv.gz", gzip.compress(csv.format(n=1).encode())),
        ("b.CSV", csv.format(n=2).encode("cp932")),  # with --encoding cp932 below
        ("c.ndjson", ndjson.format(n=3).encode()),
        ("d.NDJSON", ndjson.format(n=4).encode()),
        ("e.jsonl.GZ", gzip.compress(ndjson.format(n=5).encode())),
        ("f.parquet", _parquet(pa.table({"n": pa.array([6], pa.int32()), "area": ["関東"]}))),
        ("g.csv", b"\xef\xbb\xbf" + csv.format(n=7).encode()),  # Excel's CSV UTF-8: the BOM says it
    ]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        extra = ["--encoding", "cp932"] if name == "b.CSV" else []
        status, out, err = _gateway([*publish, str(tmp_path / name), *extra], cli_env)
        assert status == 0, (name, err)
        assert orjson.loads(out)["records"] == 1
    for data in (csv.format(n=8).encode("cp932"), gzip.compress(csv.format(n=9).encode("cp932"))):
        status, out, err = _gateway([*publish, "-", "--format", "csv", "--encoding", "shift_jis"], cli_env, data)
        assert status == 0, err
    (tmp_path / "h.json").write_text(ndjson.format(n=10))
    (tmp_path / "i.txt").write_text(csv.format(n=11))
    (tmp_path / "j.csv").write_bytes(csv.format(n=12).encode("cp932"))
    for args, expected in (([str(tmp_path / "h.json")], "name the file .ndjson or .jsonl"),
                           ([str(tmp_path / "i.txt")], "pass --format csv, ndjson or parquet"),
                           (["-"], "give their format with --format"),
                           ([str(tmp_path / "j.csv")], "line 2, character 1: not valid UTF-8"),
                           ([str(tmp_path / "j.csv"), "--encoding", "klingon"], "'klingon' is not supported")):
        status, out, err = _gateway([*publish, *args], cli_env)
        assert status == 1 and err.count("\n") == 1 and expected in err, err
    assert sorted(_stored(dsn)) == list(range(1, 10))


def _stored(dsn: str) -> list[int]:
    async def fetch() -> list[int]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r["n"] for r in await conn.fetch("SELECT (data ->> 'n')::int AS n FROM records "
                                                     "WHERE partition = '関東'")]
        finally:
            await conn.close()
    return asyncio.run(fetch())

