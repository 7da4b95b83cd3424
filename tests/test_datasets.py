"""gateway/datasets.py: columns that declare how a vendor's text spells values (Excel and core systems),
through create, amend and publish, the API and the CLI, and what members then read."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.runtime import Runtime
from tests.conftest import TEST_MASTER_KEY
from tests.factories import VendorFixture, accept_terms, make_vendor, wait_for_snapshot

STRICT_COLUMNS = [{"name": "area", "type": "text"}, {"name": "day", "type": "date"},
                  {"name": "at", "type": "timestamp"}, {"name": "seen", "type": "timestamp"},
                  {"name": "open", "type": "boolean"}, {"name": "count", "type": "integer"},
                  {"name": "note", "type": "text"}]
SPELLINGS: dict[str, dict[str, Any]] = {
    "day": {"format": "%Y/%m/%d"}, "at": {"format": "%Y/%m/%d %H:%M", "time_zone": "Asia/Tokyo"},
    "seen": {"time_zone": "Asia/Tokyo"}, "open": {"true": ["TRUE"], "false": ["FALSE"]},
    "count": {"thousands_separator": ","}}
EXCEL_COLUMNS = [{**c, **SPELLINGS.get(c["name"], {})} for c in STRICT_COLUMNS]
# What Japanese Excel saves as CSV (UTF-8): CRLF, slashed dates, TRUE/FALSE, grouped digits, zone-less
# times, a cell with a line break (Alt+Enter) and one with a TAB, and an empty line at the end.
EXCEL_CSV = ('area,day,at,seen,open,count,note\r\n'
             '関東,2026/05/01,2026/05/01 09:30,2026-05-01 09:30:00,TRUE,"1,234","一行目\n二行目"\r\n'
             '関東,2026/5/2,2026/5/2 0:00,2026-05-02T00:00,FALSE,999,tab\there\r\n'
             '\r\n').encode()
CANONICAL = [
    {"area": "関東", "day": "2026-05-01", "at": "2026-05-01T00:30:00Z", "seen": "2026-05-01T00:30:00Z",
     "open": True, "count": 1234, "note": "一行目\n二行目"},
    {"area": "関東", "day": "2026-05-02", "at": "2026-05-01T15:00:00Z", "seen": "2026-05-01T15:00:00Z",
     "open": False, "count": 999, "note": "tab\there"}]


def cli(dsn: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


async def _publish(vendor: VendorFixture, dataset_id: str, body: bytes, media_type: str = "text/csv") -> httpx.Response:
    return await vendor.client.post(f"/v1/admin/datasets/{dataset_id}/versions", content=body,
                                    headers={**vendor.headers, "content-type": media_type})


async def _stored(runtime: Runtime, dataset_id: str) -> int:
    return await runtime.pool.fetchval("SELECT count(*) FROM records WHERE dataset_id = $1", uuid.UUID(dataset_id))


async def test_excel_spellings_publish_where_declared_and_members_read_canonical_values(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    strict = await vendor.ok("POST", "/v1/admin/datasets", json={
        "name": "strict", "columns": STRICT_COLUMNS, "partition_column": "area"})
    refused = await _publish(vendor, strict["id"], EXCEL_CSV)
    assert refused.status_code == 422
    assert (refused.json()["line"], refused.json()["column"]) == (2, "day")
    assert await _stored(runtime, strict["id"]) == 0

    declared = await vendor.ok("POST", "/v1/admin/datasets", json={
        "name": "excel", "columns": EXCEL_COLUMNS, "partition_column": "area"})
    assert [c for c in declared["columns"] if c["name"] == "open"] == [
        {"name": "open", "type": "boolean", "description": "", "true": ["TRUE"], "false": ["FALSE"]}]
    assert [c for c in declared["columns"] if c["name"] == "note"] == [{"name": "note", "type": "text",
                                                                        "description": ""}]
    published = await _publish(vendor, declared["id"], EXCEL_CSV)
    assert published.status_code == 201, published.text
    assert published.json()["records"] == 2

    member = await vendor.member()
    key = (await vendor.member_key(member["id"]))["api_key"]
    licence = await vendor.licence(member["id"], declared["id"], ["関東"], [c["name"] for c in STRICT_COLUMNS])
    await wait_for_snapshot(runtime, lambda: uuid.UUID(licence["id"]) in runtime.snapshot.licences)
    await accept_terms(client, licence["id"], key)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licence["id"])].accepted_terms)
    path, headers = f"/v1/datasets/{declared['id']}/records", {"Authorization": f"Bearer {key}"}
    ndjson = await client.get(path, headers=headers)
    assert [orjson.loads(line) for line in ndjson.content.splitlines()] == CANONICAL
    as_csv = await client.get(path, params={"format": "csv"}, headers=headers)
    rows = list(csv.DictReader(io.StringIO(as_csv.text, newline="")))
    assert [(r["day"], r["at"], r["seen"], r["count"], r["note"]) for r in rows] == [
        (c["day"], c["at"], c["seen"], str(c["count"]), c["note"]) for c in CANONICAL]
    metadata = (await client.get(f"/v1/datasets/{declared['id']}", headers=headers)).json()
    assert all(set(c) == {"name", "type", "description"} for c in metadata["columns"])  # spellings are the vendor's


async def test_an_amendment_declares_spellings_for_later_uploads_and_keeps_names_and_types(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.ok("POST", "/v1/admin/datasets", json={
        "name": "sales", "columns": STRICT_COLUMNS, "partition_column": "area"})
    path = f"/v1/admin/datasets/{dataset['id']}"
    assert (await _publish(vendor, dataset["id"], EXCEL_CSV)).status_code == 422
    amended = await vendor.ok("PATCH", path, json={"columns": EXCEL_COLUMNS})
    assert [c.get("format") for c in amended["columns"]][:3] == [None, "%Y/%m/%d", "%Y/%m/%d %H:%M"]
    assert (await _publish(vendor, dataset["id"], EXCEL_CSV)).status_code == 201
    [event] = [orjson.loads(r["entry"]) for r in await runtime.pool.fetch(
        "SELECT entry FROM audit_events WHERE kind = 'vendor:dataset:amend' AND outcome = 'change'")]
    assert event["detail"]["before"]["columns"][1] == {"name": "day", "type": "date", "description": ""}
    assert event["detail"]["after"]["columns"][1] == {"name": "day", "type": "date", "description": "",
                                                      "format": "%Y/%m/%d"}
    retyped = [{**c, "type": "integer"} if c["name"] == "note" else c for c in EXCEL_COLUMNS]
    for body, status, complaint in (
            ({"columns": EXCEL_COLUMNS}, 409, "nothing to change"),
            ({"columns": retyped}, 422, "not their names, types or order"),
            ({"columns": EXCEL_COLUMNS[::-1]}, 422, "not their names, types or order"),
            ({"columns": EXCEL_COLUMNS[:-1]}, 422, "not their names, types or order"),
            ({"columns": [{**EXCEL_COLUMNS[0], "format": "%Y"}, *EXCEL_COLUMNS[1:]]}, 422, "format applies to")):
        refused = await vendor.client.patch(path, json=body, headers=vendor.headers)
        assert refused.status_code == status and complaint in refused.json()["detail"], refused.text

    described = [{**c, "description": "件数"} if c["name"] == "count" else c for c in EXCEL_COLUMNS]
    columns_file = tmp_path / "columns.json"
    columns_file.write_bytes(orjson.dumps(described))
    done = cli(dsn, tmp_path, "dataset", "amend", "--vendor", str(vendor.id), "sales", "--columns", str(columns_file))
    assert done.returncode == 0, done.stderr
    assert [c["description"] for c in orjson.loads(done.stdout)["columns"] if c["name"] == "count"] == ["件数"]
    columns_file.write_bytes(orjson.dumps(retyped))
    done = cli(dsn, tmp_path, "dataset", "amend", "--vendor", str(vendor.id), "sales", "--columns", str(columns_file))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "not their names, types or order" in done.stderr


@pytest.mark.parametrize(("body", "line", "column", "complaint"), [
    ((b'{"area":"a","day":null,"at":null,"seen":null,"open":null,"count":1,"note":null}\n'
     b'{"area":"a","day":null,"at":null,"seen":null,"open":null,"count":1}\n'), 2, "note", "missing key(s) 'note'"),
    (b'{"area":"a","day":null,"at":null,"seen":null,"open":null,"count":1,"note":null,"count":2}\n', 1, "count",
     "given twice"),
    (b'{"area":" a","day":null,"at":null,"seen":null,"open":null,"count":1,"note":null}\n', 1, "area",
     "starts or ends with a space")])
async def test_ndjson_traps_answer_422_with_line_and_column_and_keep_nothing(
        runtime: Runtime, client: httpx.AsyncClient, body: bytes, line: int, column: str, complaint: str) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.ok("POST", "/v1/admin/datasets", json={
        "name": "traps", "columns": STRICT_COLUMNS, "partition_column": "area"})
    response = await _publish(vendor, dataset["id"], body, "application/x-ndjson")
    assert response.status_code == 422
    problem = response.json()
    assert (problem["line"], problem["column"]) == (line, column) and complaint in problem["detail"]
    assert await _stored(runtime, dataset["id"]) == 0
