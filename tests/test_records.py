"""Records as delivered (gateway/records.py): exact values through NDJSON, CSV, CP932 CSV and Delta
Sharing, keys in declared order, a byte order mark for Excel, and a character CP932 cannot encode.

One dataset covers the value types, Japanese text (half-width kana, CP932's NEC and IBM extensions),
emoji and characters outside CP932, nulls beside empty strings, and numbers at the edges of int64 and
of doubles. Its partition 近畿 is CP932-encodable, 関東 is not.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import delta_sharing
import httpx
import orjson
import pandas
import pytest

from gateway import delivery, records
from gateway.runtime import Runtime
from tests.factories import Licensed, accept_terms, make_vendor, serve, wait_for_snapshot
from tests.http.test_sharing_api import in_thread, profile_file

COLUMNS = [{"name": "region", "type": "text"}, {"name": "name", "type": "text"},
           {"name": "count", "type": "integer"}, {"name": "value", "type": "number"},
           {"name": "flag", "type": "boolean"}, {"name": "day", "type": "date"},
           {"name": "at", "type": "timestamp"}, {"name": "note", "type": "text"}]
NAMES = [c["name"] for c in COLUMNS]
# The upload, as a vendor's software writes it: keys in another order, numbers spelt as given.
UPLOAD = """\
{"value": 1e20, "region": "近畿", "name": "大阪府", "count": 9007199254740993, "flag": true, "day": "2026-04-01", "at": "2026-04-01T09:00:00+09:00", "note": ""}
{"region": "近畿", "name": "ｶﾀｶﾅ①～髙", "count": -9223372036854775808, "value": 1.7976931348623157e308, "flag": false, "day": null, "at": "2026-04-01T00:00:00Z", "note": null}
{"region": "近畿", "name": "京都府", "count": 9223372036854775807, "value": 5e-324, "flag": null, "day": "2026-04-02", "at": null, "note": "a comma, \\"quotes\\""}
{"region": "近畿", "name": "兵庫県", "count": 0, "value": -0.0, "flag": true, "day": null, "at": null, "note": null}
{"region": "近畿", "name": "奈良県", "count": 1, "value": 42, "flag": true, "day": null, "at": null, "note": "整数"}
{"region": "近畿", "name": "和歌山県", "count": 2, "value": 42.0, "flag": false, "day": null, "at": null, "note": "小数"}
{"region": "近畿", "name": "滋賀県", "count": 3, "value": 0.1, "flag": null, "day": null, "at": null, "note": null}
{"region": "近畿", "name": "三重県", "count": 4, "value": 1e17, "flag": null, "day": null, "at": null, "note": null}
{"region": "近畿", "name": "徳島県", "count": 5, "value": 1e-7, "flag": null, "day": null, "at": null, "note": null}
{"region": "近畿", "name": "空", "count": 6, "value": null, "flag": null, "day": null, "at": null, "note": null}
{"region": "関東", "name": "東京都", "count": 7, "value": 2.5, "flag": true, "day": null, "at": null, "note": null}
{"region": "関東", "name": "絵文字 😀", "count": 8, "value": 1e16, "flag": false, "day": null, "at": null, "note": null}
{"region": "関東", "name": "𠮷野家", "count": 9, "value": 9007199254740993, "flag": false, "day": null, "at": null, "note": null}
"""
# What a JSON reader gets back: the values given, in declared order; timestamps in UTC, and -0.0 as
# 0.0 (PostgreSQL's numeric has no negative zero; the two are equal as numbers).
EXPECTED = [{name: record[name] for name in NAMES} for record in map(orjson.loads, UPLOAD.splitlines())]
EXPECTED[0]["at"] = "2026-04-01T00:00:00Z"
EXPECTED[3]["value"] = 0.0
KINKI = [r for r in EXPECTED if r["region"] == "近畿"]
# Each number of the `value` column as CSV writes it: the shortest text that reads back as the same
# value, integers as integers and floats with a fraction or an exponent.
VALUE_TEXTS = ["1e+20", "1.7976931348623157e+308", "5e-324", "0.0", "42", "42.0", "0.1", "1e+17", "1e-07", "",
               "2.5", "1e+16", "9007199254740993"]
HEADER = ",".join(NAMES) + "\n"


def typed(records: list[dict[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    """Records with each value's JSON type beside it: 42 and 42.0 are different values here."""
    return [[(k, type(v).__name__, v) for k, v in r.items()] for r in records]


def csv_text(records: list[dict[str, Any]]) -> str:
    """The CSV the gateway writes for these records: null an empty field, "" a quoted empty one."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(NAMES)
    for record in records:
        index = EXPECTED.index(record)
        writer.writerow([VALUE_TEXTS[index] if name == "value"
                         else "true" if v is True else "false" if v is False else v
                         for name, v in record.items()])
    # csv.writer writes None and "" alike (empty), and the gateway quotes only what needs it.
    lines = out.getvalue().splitlines(keepends=True)
    for number, record in enumerate(records, 1):
        if record["note"] == "":
            assert lines[number].endswith(',""\n') or lines[number].endswith(",\n")
            lines[number] = lines[number].removesuffix(',""\n').removesuffix(",\n") + ',""\n'
    return "".join(lines)


async def published(runtime: Runtime, client: httpx.AsyncClient) -> Licensed:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.ok("POST", "/v1/admin/datasets", json={"name": "prefectures", "columns": COLUMNS,
                                                                   "partition_column": "region"})
    await vendor.ok("POST", f"/v1/admin/datasets/{dataset['id']}/versions", content=UPLOAD.encode(),
                    headers={"content-type": "application/x-ndjson"})
    member = await vendor.member()
    key = (await vendor.member_key(member["id"]))["api_key"]
    licence = await vendor.licence(member["id"], dataset["id"], ["近畿", "関東"], columns=NAMES)
    await wait_for_snapshot(runtime, lambda: uuid.UUID(licence["id"]) in runtime.snapshot.licences)
    await accept_terms(client, licence["id"], key)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licence["id"])].accepted_terms)
    return Licensed(vendor, dataset, member, key, licence)


def path(licensed: Licensed) -> str:
    return f"/v1/datasets/{licensed.dataset['id']}/records"


async def delivered_bytes(runtime: Runtime, licensed: Licensed) -> int:
    await runtime.writer.close()  # drain: a stream's end event is queued without waiting
    async with runtime.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT coalesce(sum(bytes), 0) FROM usage_daily WHERE licence_id = $1",
                                       uuid.UUID(licensed.licence["id"])))


async def test_values_arrive_exactly_as_ndjson_csv_and_through_delta_sharing(
        runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path) -> None:
    licensed = await published(runtime, client)
    ndjson = await client.get(path(licensed), headers=licensed.headers)
    assert ndjson.status_code == 200 and ndjson.headers["content-type"] == "application/x-ndjson"
    lines = ndjson.content.decode().splitlines()
    # Declared column order, and numbers in the form given: no float spelt as a long integer.
    assert [list(orjson.loads(line)) for line in lines] == [NAMES] * len(EXPECTED)
    assert '"value": 1e+20,' in lines[0] and '"value": 1.7976931348623157e+308,' in lines[1]
    assert "00000000000" not in ndjson.text
    assert typed([orjson.loads(line) for line in lines]) == typed(EXPECTED)
    # pandas reads it (a 21-digit integer was "Value is too big!"). Its default parser rounds the last
    # digit of some doubles and 5e-324 to 0 (precise_float=True refuses subnormals): pandas' own limits.
    frame = pandas.read_json(io.BytesIO(ndjson.content), lines=True, dtype=False)
    assert frame["count"].tolist() == [r["count"] for r in EXPECTED]
    assert all(math.isclose(a, b, rel_tol=1e-15, abs_tol=1e-320) if b is not None else math.isnan(a)
               for a, b in zip(frame["value"], [r["value"] for r in EXPECTED], strict=True))

    page = await client.get(path(licensed), params={"format": "csv", "limit": 100}, headers=licensed.headers)
    assert page.headers["content-type"] == "text/csv; charset=utf-8"
    assert page.content == csv_text(EXPECTED).encode()
    assert ',,' in page.text.splitlines()[2] and page.text.splitlines()[1].endswith(',""')  # null beside ""
    export = await client.get(path(licensed), params={"format": "csv"}, headers=licensed.headers)
    assert export.content == page.content
    read = pandas.read_csv(io.BytesIO(page.content), keep_default_na=False, dtype={"value": str})
    assert [int(v) if v.lstrip("-").isdigit() else float(v) if v else None for v in read["value"]] == \
        [r["value"] for r in EXPECTED]
    assert read["count"].tolist() == [r["count"] for r in EXPECTED]

    async with serve(runtime) as served:
        profile = await profile_file(served, licensed.key, tmp_path)
        share = runtime.snapshot.vendors[licensed.vendor.id].name
        shared = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.prefectures")
    assert list(shared.columns) == NAMES
    rows = sorted(shared.to_dict("records"), key=lambda r: r["count"])
    expected = sorted(EXPECTED, key=lambda r: r["count"])
    assert [r["count"] for r in rows] == [r["count"] for r in expected]
    assert [r["name"] for r in rows] == [r["name"] for r in expected]
    assert [r["note"] for r in rows] == [r["note"] for r in expected]
    # `number` is a double in Delta Sharing: 2**53 + 1 in that column arrives as the nearest double.
    assert [None if pandas.isna(r["value"]) else r["value"] for r in rows] == \
        [None if r["value"] is None else float(r["value"]) for r in expected]
    assert [None if r["flag"] is None or pandas.isna(r["flag"]) else r["flag"] for r in rows] == \
        [r["flag"] for r in expected]


async def test_a_csv_with_bom_opens_in_excel_as_japanese_text(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await published(runtime, client)
    asked = {"format": "csv", "bom": "true", "partition": "近畿"}
    page = await client.get(path(licensed), params={**asked, "limit": 3}, headers=licensed.headers)
    assert page.status_code == 200 and page.headers["content-type"] == "text/csv; charset=utf-8"
    assert page.content[:3] == b"\xef\xbb\xbf"
    assert page.content == (b"\xef\xbb\xbf" + HEADER.encode() + "近畿,大阪府,9007199254740993,1e+20,true,"
                            "2026-04-01,2026-04-01T00:00:00Z,\"\"\n近畿,ｶﾀｶﾅ①～髙,-9223372036854775808,"
                            "1.7976931348623157e+308,false,,2026-04-01T00:00:00Z,\n近畿,京都府,9223372036854775807,"
                            "5e-324,,2026-04-02,,\"a comma, \"\"quotes\"\"\"\n".encode())
    # The mark precedes the header only: the next page, asked for by the link, carries neither.
    assert "bom=true" in page.headers["link"]
    following = await client.get(page.headers["link"].split(";")[0].strip("<>"), headers=licensed.headers)
    assert following.content.startswith("近畿,兵庫県,".encode())
    export = await client.get(path(licensed), params=asked, headers=licensed.headers)
    assert export.content == b"\xef\xbb\xbf" + csv_text(KINKI).encode()
    assert await delivered_bytes(runtime, licensed) == len(page.content) + len(following.content) + len(export.content)


async def test_cp932_csv_is_excels_encoding_and_metered_as_delivered(runtime: Runtime,
                                                                     client: httpx.AsyncClient) -> None:
    licensed = await published(runtime, client)
    asked = {"format": "csv", "charset": "cp932", "partition": "近畿"}
    page = await client.get(path(licensed), params={**asked, "limit": 100}, headers=licensed.headers)
    assert page.status_code == 200 and page.headers["content-type"] == "text/csv; charset=Windows-31J"
    assert page.content == csv_text(KINKI).encode("cp932")
    assert "ｶﾀｶﾅ①～髙".encode("cp932") in page.content  # half-width kana, NEC and IBM extensions
    export = await client.get(path(licensed), params=asked, headers=licensed.headers)
    assert export.content == page.content
    assert await delivered_bytes(runtime, licensed) == 2 * len(page.content)


async def test_a_character_cp932_cannot_encode_is_406_naming_the_record(runtime: Runtime,
                                                                        client: httpx.AsyncClient) -> None:
    licensed = await published(runtime, client)
    for params in ({"limit": 100}, {}):  # a page, and an export whose first chunk holds it
        refused = await client.get(path(licensed), params={"format": "csv", "charset": "cp932", **params},
                                   headers=licensed.headers)
        assert refused.status_code == 406, refused.text
        problem = refused.json()
        assert {k: problem[k] for k in ("record", "partition", "version", "column", "code_point")} == \
            {"record": 12, "partition": "関東", "version": 1, "column": "name", "code_point": "U+1F600"}
        assert "charset=utf-8" in problem["detail"] and "'😀'" in problem["detail"]
    assert await delivered_bytes(runtime, licensed) == 0


async def test_an_export_meeting_such_a_character_midway_ends_as_an_error_naming_it(
        runtime: Runtime, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status left with the first chunk: the records before it are delivered, then the response
    breaks off, and its stream-end event says which record stopped it."""
    monkeypatch.setattr(delivery, "EXPORT_CHUNK_RECORDS", 2)
    licensed = await published(runtime, client)
    received = b""
    async with serve(runtime) as served, httpx.AsyncClient(base_url=served.base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", path(licensed), params={"format": "csv", "charset": "cp932"},
                                   headers=licensed.headers) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    received += chunk
    assert received == csv_text(EXPECTED[:11]).encode("cp932")
    assert await delivered_bytes(runtime, licensed) == len(received)
    async with runtime.pool.acquire() as conn:
        entry = await conn.fetchval("SELECT entry FROM audit_events WHERE kind = 'member:records:stream-end'")
    event = orjson.loads(entry)
    assert event["delivery"]["complete"] is False and event["delivery"]["records"] == 11
    assert event["delivery"]["bytes"] == len(received)
    assert event["reason"].startswith("record 12 of this export (partition '関東', version 1) holds '😀' "
                                      "(U+1F600) in column 'name', which CP932 cannot encode exactly")


async def test_encodings_are_for_csv_and_named_exactly(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await published(runtime, client)
    for params, status, says in (({"charset": "cp932"}, 406, "NDJSON is always UTF-8"),
                                 ({"bom": "true"}, 406, "NDJSON is always UTF-8"),
                                 ({"format": "csv", "charset": "cp932", "bom": "true"}, 406, "no byte order mark"),
                                 ({"format": "csv", "charset": "latin1"}, 406, "utf-8 or cp932"),
                                 ({"format": "csv", "charset": "shift_jis"}, 406, "utf-8 or cp932"),
                                 ({"format": "csv", "bom": "yes"}, 400, "bom must be true or false")):
        refused = await client.get(path(licensed), params={**params, "limit": 1}, headers=licensed.headers)
        assert refused.status_code == status and says in refused.json()["detail"], (params, refused.text)
    head = await client.head(path(licensed), params={"format": "csv", "charset": "cp932"}, headers=licensed.headers)
    assert head.status_code == 200 and head.headers["content-type"] == "text/csv; charset=Windows-31J"


@pytest.mark.parametrize(("given", "read_back"), [("〜", "～"), ("−", "－"), ("¢", "￠"), ("‖", "∥")])
def test_a_character_cp932_would_turn_into_another_is_refused_too(given: str, read_back: str) -> None:
    """Python's cp932 encodes these, but they decode as other characters: a substitution all the same."""
    assert given.encode("cp932").decode("cp932") == read_back
    line = f"東北,ok,a{given}b\n".encode()
    page = records.Page(line, [len(line)], [1], [0], [(0, "東北")], False)
    scope: Any = SimpleNamespace(columns=("region", "name", "note"))
    with pytest.raises(records.Unencodable) as refused:
        records.encoded(page, scope, "cp932")
    assert (refused.value.index, refused.value.column, refused.value.character) == (0, "note", given)
    assert records.encoded(page, scope, "utf-8") is page
