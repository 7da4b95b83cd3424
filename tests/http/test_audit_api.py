"""The evidence API: receipts a member can verify offline, checkpoints, public keys and bundle exports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import tempfile
import uuid
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway import times
from gateway.audit.verify import verify_bundle
from gateway.runtime import Runtime
from keys import merkle
from keys.notes import NoteVerifier, open_note, parse_checkpoint
from tests.factories import auth, licensed_member, records_path_of


async def fetch_receipt(client: httpx.AsyncClient, event_id: str, key: str) -> httpx.Response:
    """Receipts exist once a signed checkpoint covers the event (a few seconds at most)."""
    for _ in range(100):
        response = await client.get(f"/v1/receipts/{event_id}", headers=auth(key))
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError("no checkpoint covered the event in time")


async def test_a_member_verifies_its_delivery_receipt_offline(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    delivery = await client.get(records_path_of(licensed), params={"limit": 3}, headers=licensed.headers)
    event_id = delivery.headers["audit-event"]
    response = await fetch_receipt(client, event_id, licensed.key)
    assert response.status_code == 200
    receipt = response.json()
    entry = receipt["entry"].encode()
    assert f'"event_id":"{event_id}"' in receipt["entry"] and '"records":3' in receipt["entry"]
    # What a member's own verifier does, with the keys package only: signature, then inclusion.
    checkpoint = receipt["checkpoint"]
    opened = open_note(checkpoint["note"], [NoteVerifier.from_vkey(receipt["key"]["vkey"])])
    body = parse_checkpoint(opened.text)
    proof = [base64.b64decode(h) for h in receipt["inclusion_proof"]]
    merkle.verify_inclusion(merkle.leaf_hash(entry), receipt["seq"], body.size, proof, body.root_hash)
    # Another member's (or a random) event is the same 404.
    other = await licensed_member(runtime, client)
    foreign = await client.get(f"/v1/receipts/{event_id}", headers=other.headers)
    unknown = await client.get(f"/v1/receipts/{uuid.uuid4()}", headers=other.headers)
    assert foreign.status_code == unknown.status_code == 404 and foreign.content == unknown.content


async def test_checkpoints_for_callers_and_public_keys_for_anyone(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    assert (await client.get("/v1/audit/checkpoint")).status_code == 401
    for _ in range(100):
        latest = (await client.get("/v1/audit/checkpoint", headers=licensed.headers)).json()["checkpoints"]
        if latest:
            break
        await asyncio.sleep(0.1)
    assert latest and latest[0]["log"] == runtime.writer.log_id
    keys = (await client.get("/.well-known/lpd-audit-keys.json")).json()["keys"]
    assert keys and all("vkey" in k and "private" not in str(k).lower() for k in keys)


async def test_compliance_exports_its_vendors_evidence_through_the_api(runtime: Runtime, client: httpx.AsyncClient,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"  # where the gateway builds bundles (tempfile's folder)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    licensed = await licensed_member(runtime, client)
    await client.get(records_path_of(licensed), params={"limit": 2}, headers=licensed.headers)
    compliance = (await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"}))["api_key"]
    await asyncio.sleep(0.2)
    now = datetime.now(UTC)
    period = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}
    response = await client.get("/v1/audit/export", params=period, headers=auth(compliance))
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(response.content)
    verdict = verify_bundle(bundle)
    assert verdict.ok, verdict
    # The event that released the bundle names its digest; the bundle was built in a scratch folder
    # that is gone once the response is sent.
    entry = await runtime.pool.fetchval("SELECT entry FROM audit_events WHERE event_id = $1",
                                        uuid.UUID(response.headers["audit-event"]))
    assert orjson.loads(entry)["detail"]["bundle_sha256"] == hashlib.sha256(response.content).hexdigest()
    assert scratch.is_dir() and not list(scratch.iterdir())
    # A Range request still gets the whole bundle that its event describes.
    ranged = await client.get("/v1/audit/export", params=period, headers={**auth(compliance), "range": "bytes=0-9"})
    assert ranged.status_code == 200
    bundle.write_bytes(ranged.content)
    assert verify_bundle(bundle).ok
    assert (await client.get("/v1/audit/export", params=period, headers=licensed.headers)).status_code == 403
    assert (await client.get("/v1/audit/export", params={"from": "yesterday"},
                             headers=auth(compliance))).status_code == 400


async def test_a_date_in_an_export_is_a_day_in_japan_as_in_usage_reports(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    """`from=2026-12-01` is 2026-12-01T00:00 JST (2026-11-30T15:00Z), through the API as in the CLI and in
    usage reports; an offset whose '+' arrived as a space is answered with how to send it."""
    licensed = await licensed_member(runtime, client)
    compliance = (await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"}))["api_key"]
    await asyncio.sleep(0.2)
    response = await client.get("/v1/audit/export", params={"from": "2026-12-01", "to": "2026-12-02"},
                                headers=auth(compliance))
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        scope = orjson.loads(bundle.read("manifest.json"))["scope"]
    assert (scope["from"], scope["to"]) == ("2026-11-30T15:00:00.000000Z", "2026-12-01T15:00:00.000000Z"), scope
    spaced = await client.get("/v1/audit/export?from=2026-12-01T00:00:00 09:00&to=2026-12-02",
                              headers=auth(compliance))
    assert spaced.status_code == 400 and "%2B" in spaced.json()["detail"]


async def test_a_japan_day_is_the_same_period_in_usage_reports_and_audit_exports(runtime: Runtime,
                                                                                 client: httpx.AsyncClient) -> None:
    """Today in Japan, asked of the usage report and of the audit export by the same dates, covers the
    same deliveries; the next day covers none in either."""
    licensed = await licensed_member(runtime, client)
    compliance = (await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"}))["api_key"]
    delivered = await client.get(records_path_of(licensed), params={"limit": 3}, headers=licensed.headers)
    event_id = delivered.headers["audit-event"]
    today = times.jst_day(times.now())
    await fetch_receipt(client, event_id, licensed.key)  # the delivery is checkpointed: it can be exported

    async def both(day: date) -> tuple[int, list[dict[str, Any]]]:
        period = {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()}
        usage = await licensed.vendor.ok("GET", "/v1/admin/usage", params={**period, "by": "day"})
        exported = await client.get("/v1/audit/export", params=period, headers=auth(compliance))
        assert exported.status_code == 200, exported.text
        with zipfile.ZipFile(io.BytesIO(exported.content)) as bundle:
            scope = orjson.loads(bundle.read("manifest.json"))["scope"]
            events = [orjson.loads(line) for line in bundle.read("events.jsonl").splitlines()]
        midnight = datetime.combine(day, datetime.min.time(), times.JST).astimezone(UTC)
        assert scope["from"] == midnight.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), scope
        return sum(row["records"] for row in usage["items"]), [e for e in events if e["kind"] == "member:records:deliver"]

    records, deliveries = await both(today)
    assert records == 3 and [e["event_id"] for e in deliveries] == [event_id]
    assert await both(today + timedelta(days=1)) == (0, [])


async def test_the_report_names_vendor_members_and_datasets_and_shows_japan_time(runtime: Runtime,
                                                                                 client: httpx.AsyncClient) -> None:
    """Names as they are at export (a member renamed after its events), withdrawn versions under
    相当蓄積性, and times in JST with UTC beside them."""
    licensed = await licensed_member(runtime, client)
    compliance = (await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"}))["api_key"]
    dataset = licensed.dataset["id"]
    await licensed.vendor.publish(dataset, "north,2026-04-09,1,x\n")
    await licensed.vendor.ok("POST", f"/v1/admin/datasets/{dataset}/versions/2/withdraw", json={"reason": "誤配信"})
    await licensed.vendor.ok("PATCH", f"/v1/admin/members/{licensed.member['id']}", json={"name": "株式会社エー"})
    delivered = await client.get(records_path_of(licensed), params={"limit": 1}, headers=licensed.headers)
    await fetch_receipt(client, delivered.headers["audit-event"], licensed.key)  # all of it checkpointed
    today = times.jst_day(times.now())
    period = {"from": today.isoformat(), "to": (today + timedelta(days=1)).isoformat()}
    exported = await client.get("/v1/audit/export", params=period, headers=auth(compliance))
    assert exported.status_code == 200, exported.text
    with zipfile.ZipFile(io.BytesIO(exported.content)) as bundle:
        figures = orjson.loads(bundle.read("report.json"))
        page = bundle.read("report.html").decode()
        manifest = orjson.loads(bundle.read("manifest.json"))
    [member] = [m for m in figures["members"] if m["member_id"] == licensed.member["id"]]
    assert member["name"] == "株式会社エー"
    [row] = [d for d in figures["datasets"] if d["dataset_id"] == dataset]
    assert row["name"] == "footfall" and [(w["version"], w["records"], w["reason"]) for w in row["withdrawn"]] == \
        [(2, 1, "誤配信")]
    assert manifest["names"]["vendor"] in page and "株式会社エー" in page and "誤配信" in page
    midnight = f"{today.isoformat()} 00:00:00 JST"
    assert f"{midnight} (15:00:00 UTC)" in page


def test_a_date_in_an_api_body_is_a_day_in_japan() -> None:
    from gateway.http.endpoints import Field, fields

    parsed = fields({"at": "2026-12-01"}, {"at": Field("datetime")})["at"]
    assert parsed.astimezone(UTC) == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert fields({"at": "2026-12-01T00:00:00Z"}, {"at": Field("datetime")})["at"] == datetime(2026, 12, 1, tzinfo=UTC)


def test_the_cli_reads_a_date_as_a_day_in_japan() -> None:
    from gateway.cli_audit import moment_arg

    assert moment_arg("2026-12-01").astimezone(UTC) == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert moment_arg("2026-12-01T00:00:00Z") == datetime(2026, 12, 1, tzinfo=UTC)
