"""gateway/terminations.py: a licence ended with a signed notice the member still fetches, and its attestation."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import orjson

from gateway import signing_keys, times
from gateway.audit.format import AUDIT
from gateway.runtime import Runtime
from keys.signing import verify_ed25519
from tests.conftest import TEST_MASTER_KEY
from tests.factories import Licensed, licensed_member, make_vendor, wait_for_snapshot

ATTESTATION = {"deleted_at": "2026-01-05T10:00:00+09:00", "deleted": "every copy of footfall, incl. backups",
               "statement": "All copies were deleted.", "signatory": "Hanako Yamada, CISO"}


async def _terminate(runtime: Runtime, licensed: Licensed, **body: object) -> dict[str, object]:
    ended: dict[str, object] = await licensed.vendor.ok(
        "POST", f"/v1/admin/licences/{licensed.licence['id']}/terminate",
        json={"reason": "contract ended", "grounds": "contract_end", **body})
    licence_id = uuid.UUID(licensed.licence["id"])
    await wait_for_snapshot(runtime, lambda: not runtime.snapshot.licences[licence_id].live)
    return ended


async def test_termination_revokes_and_issues_a_signed_notice_the_member_still_fetches(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    records = f"/v1/datasets/{licensed.dataset['id']}/records"
    assert (await client.get(records, headers=licensed.headers)).status_code == 200
    ended = await _terminate(runtime, licensed, attestation_due=(times.jst_day(times.now()) + timedelta(days=14)).isoformat())

    licence = await licensed.vendor.ok("GET", f"/v1/admin/licences/{licensed.licence['id']}")
    assert licence["status"] == "revoked" and licence["status_reason"] == "terminated: contract ended"
    notice = ended["notice"]
    assert isinstance(notice, dict)
    assert notice["licence_id"] == licensed.licence["id"] and notice["member"]["id"] == licensed.member["id"]
    assert notice["dataset"] == {"id": licensed.dataset["id"], "name": "footfall"}
    assert notice["scope"]["partitions"] == ["north", "south"] and notice["grounds"] == "contract_end"
    assert notice["terms"] == {"version": 1, "sha256": hashlib.sha256(b"terms v1").hexdigest()}
    assert notice["effective_at"]["jst"].endswith("+09:00")
    assert [o["code"] for o in notice["obligations"]] == ["stop_use", "delete_copies", "attest_deletion"]
    assert "終了" in notice["text_ja"] and "terminat" in notice["text_en"]
    assert "パーティション north、south" in notice["text_ja"] and "partitions north, south" in notice["text_en"]
    # Signed by the audit key over the notice's RFC 8785 bytes, which its digest names.
    stored = await runtime.pool.fetchrow("SELECT notice FROM terminations WHERE id = $1", uuid.UUID(ended["id"]))
    signed = stored["notice"].encode()
    assert signed == orjson.dumps(notice, option=orjson.OPT_SORT_KEYS)
    assert hashlib.sha256(signed).hexdigest() == ended["notice_sha256"]
    signature = ended["signature"]
    key = next(k for k in await signing_keys.public_keys(runtime.pool, AUDIT) if k.key_id == signature["key_id"])
    assert verify_ed25519(key.public, base64.b64decode(signature["signature"]), signed)
    event = orjson.loads(await runtime.pool.fetchval(
        "SELECT entry FROM audit_events WHERE kind = 'vendor:licence:terminate' AND licence_id = $1",
        uuid.UUID(licensed.licence["id"])))
    assert event["outcome"] == "change" and event["detail"]["notice_sha256"] == ended["notice_sha256"]

    # The member's other requests to that licence are refused; its notice is served.
    for refused in (await client.get(records, headers=licensed.headers),
                    await client.get(f"/v1/licences/{licensed.licence['id']}/terms", headers=licensed.headers)):
        assert refused.status_code == 403 and "terminated: contract ended" in refused.json()["detail"]
    fetched = await client.get(f"/v1/licences/{licensed.licence['id']}/termination", headers=licensed.headers)
    assert fetched.status_code == 200 and fetched.json()["notice"] == notice
    assert fetched.json()["signature"] == signature

    again = await licensed.vendor.post(f"/v1/admin/licences/{licensed.licence['id']}/terminate",
                                       json={"reason": "twice"})
    assert again.status_code == 409 and ended["id"] in again.json()["detail"]


async def test_the_member_attests_deletion_once_and_it_is_logged(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/licences/{licensed.licence['id']}/deletion-attestation"
    early = await client.post(path, headers=licensed.headers, json=ATTESTATION)
    assert early.status_code == 409 and "not been terminated" in early.json()["detail"]
    ended = await _terminate(runtime, licensed)
    outstanding = await licensed.vendor.ok("GET", "/v1/admin/terminations", params={"outstanding": "true"})
    assert [t["id"] for t in outstanding["items"]] == [ended["id"]]

    incomplete = await client.post(path, headers=licensed.headers, json={**ATTESTATION, "statement": " "})
    assert incomplete.status_code == 422
    attested = await client.post(path, headers=licensed.headers, json=ATTESTATION)
    assert attested.status_code == 201, attested.text
    attestation = attested.json()["attestation"]
    assert attestation["notice_sha256"] == ended["notice_sha256"]
    assert attestation["deleted_at"] == "2026-01-05T01:00:00.000000Z" and attestation["signatory"] == "Hanako Yamada, CISO"
    event = orjson.loads(await runtime.pool.fetchval(
        "SELECT entry FROM audit_events WHERE kind = 'member:deletion:attest' AND outcome = 'change'"))
    assert event["detail"]["attestation_sha256"] == attested.json()["attestation_sha256"]
    assert event["member_id"] == licensed.member["id"] and event["licence_id"] == licensed.licence["id"]
    assert (await client.post(path, headers=licensed.headers, json=ATTESTATION)).status_code == 409

    assert (await licensed.vendor.ok("GET", "/v1/admin/terminations", params={"outstanding": "true"}))["items"] == []
    shown = await licensed.vendor.ok("GET", f"/v1/admin/terminations/{ended['id']}")
    assert shown["attestation"] == attestation and shown["attestation_outstanding"] is False
    other = await make_vendor(runtime, client)
    assert (await client.get(f"/v1/admin/terminations/{ended['id']}", headers=other.headers)).status_code == 404
    assert (await other.ok("GET", "/v1/admin/terminations"))["items"] == []


async def test_termination_input_is_checked_and_changes_nothing(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/admin/licences/{licensed.licence['id']}/terminate"
    for body in ({}, {"reason": " "}, {"reason": "x", "grounds": "whim"}, {"reason": "x", "attestation_due": "soon"},
                 {"reason": "x", "attestation_due": "2000-01-01"}):
        response = await licensed.vendor.post(path, json=body)
        assert response.status_code == 422, (body, response.text)
    assert await runtime.pool.fetchval("SELECT count(*) FROM terminations") == 0
    licence = await licensed.vendor.ok("GET", f"/v1/admin/licences/{licensed.licence['id']}")
    assert licence["status"] == "active"
    revoked = await licensed.vendor.post(f"/v1/admin/licences/{licensed.licence['id']}/revoke", json={})
    assert revoked.status_code == 200
    assert (await licensed.vendor.post(path, json={"reason": "x"})).status_code == 409


async def test_the_command_line_reads_terms_refuses_blank_ones_and_terminates(
        runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    vendor = str(licensed.vendor.id)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_DATABASE_URL": runtime.dsn, "GATEWAY_MASTER_KEY": TEST_MASTER_KEY, "GATEWAY_HOME": str(tmp_path)}

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    terms = gateway("licence", "terms", "--vendor", vendor, licensed.licence["id"], "--version", "1")
    assert terms.returncode == 0, terms.stderr
    assert [i["text"] for i in orjson.loads(terms.stdout)["items"]] == ["terms v1"]
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n")
    amended = gateway("licence", "amend", "--vendor", vendor, licensed.licence["id"], "--terms", str(blank))
    assert amended.returncode == 1 and "terms text is empty" in amended.stderr and "Traceback" not in amended.stderr

    ended = gateway("licence", "terminate", "--vendor", vendor, licensed.licence["id"], "--reason", "member left",
                    "--grounds", "member_leaving")
    assert ended.returncode == 0, ended.stderr
    termination = orjson.loads(ended.stdout)
    assert termination["notice"]["grounds"] == "member_leaving" and termination["attestation_outstanding"]
    outstanding = gateway("termination", "list", "--vendor", vendor, "--outstanding")
    assert [t["id"] for t in orjson.loads(outstanding.stdout)["items"]] == [termination["id"]]
    shown = gateway("termination", "show", "--vendor", vendor, termination["id"])
    assert orjson.loads(shown.stdout)["notice_sha256"] == termination["notice_sha256"]
    again = gateway("licence", "terminate", "--vendor", vendor, licensed.licence["id"], "--reason", "again")
    assert again.returncode == 1 and "terminated already" in again.stderr


async def test_a_notice_of_a_licence_to_every_partition_says_so(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, partitions=["*"])
    notice = (await _terminate(runtime, licensed))["notice"]
    assert notice["scope"]["partitions"] == ["*"]
    assert "すべて（将来の版のパーティションを含む）" in notice["text_ja"]
    assert "every partition, those of later versions included" in notice["text_en"]
