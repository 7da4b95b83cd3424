"""Vendor admin keys like any other key: several named ones per vendor, issued, listed, revoked and rotated
with overlap, by the vendor's admins (API) and the operator (CLI); every admin event names the key that acted
and its label (detail.actor_label, schemas/audit-format.md §2.1.2)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway import credentials
from gateway.runtime import Runtime
from tests import REPOSITORY
from tests.conftest import TEST_MASTER_KEY
from tests.factories import VendorFixture, auth, make_vendor, wait_for_snapshot

GATEWAY = [sys.executable, "-m", "gateway.cli"]


async def _issue_admin(vendor: VendorFixture, label: str, **extra: Any) -> dict[str, Any]:
    issued = await vendor.ok("POST", "/v1/admin/keys", json={"kind": "vendor", "label": label, **extra})
    await wait_for_snapshot(vendor.runtime, lambda: vendor.runtime.snapshot.credential(issued["key_id"]) is not None)
    return issued


async def _refused_soon(runtime: Runtime, key_id: str, condition: Any) -> None:
    await wait_for_snapshot(runtime, lambda: condition(runtime.snapshot.credential(key_id)))


async def _events(runtime: Runtime, response: httpx.Response) -> list[dict[str, Any]]:
    """The audit events of one request, by its request id."""
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT entry FROM audit_events ORDER BY at")
    found = [orjson.loads(row["entry"]) for row in rows]
    return [e for e in found if (e["request"] or {}).get("id") == response.headers["x-request-id"]]


async def _credentials(runtime: Runtime) -> list[Any]:
    async with runtime.pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM credentials ORDER BY id"))


async def test_two_named_admin_keys_both_work_and_are_listed(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    first = await _issue_admin(vendor, "alice")
    second = await _issue_admin(vendor, "ci deploy")
    assert first["api_key"].startswith("lpdv_") and first["kind"] == "vendor" and first["label"] == "alice"
    for key in (vendor.key, first["api_key"], second["api_key"]):
        assert (await client.get("/v1/admin/members", headers=auth(key))).status_code == 200
    # A key issued by a second admin key administers the same vendor.
    member = await client.post("/v1/admin/members", json={"name": "m"}, headers=auth(second["api_key"]))
    assert member.status_code == 201
    assert (await vendor.ok("GET", f"/v1/admin/members/{member.json()['id']}"))["name"] == "m"
    listed = (await client.get("/v1/admin/keys", headers=auth(first["api_key"]))).json()["items"]
    admins = [k for k in listed if k["kind"] == "vendor"]
    assert {k["label"] for k in admins} == {"", "alice", "ci deploy"}
    assert {k["id"] for k in admins} >= {first["id"], second["id"]}
    for item in listed:
        assert set(item) == {"id", "key_id", "kind", "member_id", "label", "allowed_networks", "client_cert_sha256",
                             "expires_at", "revoked_at", "created_at"}
    text = orjson.dumps(listed).decode()
    assert first["api_key"] not in text and first["api_key"].split("_")[2] not in text


async def test_revoking_an_admin_key_refuses_it_at_once_and_the_last_one_cannot_revoke_itself(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    [own] = [k for k in (await vendor.ok("GET", "/v1/admin/keys"))["items"] if k["kind"] == "vendor"]
    # The only admin key revoking itself would lock the vendor out: refused, and it keeps working.
    refused = await vendor.post(f"/v1/admin/keys/{own['id']}/revoke")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == credentials.LAST_ADMIN_KEY and "lock the vendor out" in refused.json()["detail"]
    assert (await vendor.ok("GET", "/v1/admin/keys"))["items"][0]["revoked_at"] is None
    # A second key revokes the first at once; the first is refused (401) as soon as the snapshot hears of it.
    second = await _issue_admin(vendor, "second")
    revoked = await client.post(f"/v1/admin/keys/{second['id']}/revoke", headers=auth(vendor.key))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    await _refused_soon(runtime, second["key_id"], lambda c: c.revoked_at is not None)
    response = await client.get("/v1/admin/members", headers=auth(second["api_key"]))
    assert response.status_code == 401 and response.json()["detail"] == "API key revoked"
    # With another usable admin key, a key may revoke itself.
    third = await _issue_admin(vendor, "third")
    assert (await vendor.post(f"/v1/admin/keys/{own['id']}/revoke")).status_code == 200
    await _refused_soon(runtime, own["key_id"], lambda c: c.revoked_at is not None)
    assert (await client.get("/v1/admin/members", headers=auth(vendor.key))).status_code == 401
    # And now the third is the last one: it cannot revoke itself either.
    last = await client.post(f"/v1/admin/keys/{third['id']}/revoke", headers=auth(third["api_key"]))
    assert last.status_code == 409


async def test_two_admin_keys_revoking_themselves_at_once_leave_one(runtime: Runtime,
                                                                    client: httpx.AsyncClient) -> None:
    """The guard takes turns (a lock on the vendor): each would otherwise find the other still usable."""
    vendor = await make_vendor(runtime, client)
    [own] = [k for k in (await vendor.ok("GET", "/v1/admin/keys"))["items"] if k["kind"] == "vendor"]
    other = await _issue_admin(vendor, "other")
    for _ in range(3):
        answers = await asyncio.gather(
            client.post(f"/v1/admin/keys/{own['id']}/revoke", headers=auth(vendor.key)),
            client.post(f"/v1/admin/keys/{other['id']}/revoke", headers=auth(other["api_key"])))
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        survivor = next(key for key, r in zip((vendor.key, other["api_key"]), answers, strict=True)
                        if r.status_code == 409)
        assert (await client.get("/v1/admin/members", headers=auth(survivor))).status_code == 200
        # Start again with two keys: the survivor and a new one.
        fresh = await client.post("/v1/admin/keys", json={"kind": "vendor", "label": "next"}, headers=auth(survivor))
        own, vendor.key = ((own, vendor.key) if survivor == vendor.key
                           else ({"id": other["id"]}, other["api_key"]))
        other = fresh.json()
        key_id = other["key_id"]
        await wait_for_snapshot(runtime, lambda k=key_id: runtime.snapshot.credential(k) is not None)


async def test_rotation_overlaps_then_the_old_key_is_refused(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    old = await _issue_admin(vendor, "deploy", allowed_networks=["127.0.0.0/8"])
    response = await client.post(f"/v1/admin/keys/{old['id']}/rotate", json={"overlap_seconds": 2},
                                 headers=auth(old["api_key"]))
    assert response.status_code == 201, response.text
    rotated = response.json()
    assert rotated["api_key"].startswith("lpdv_") and rotated["id"] != old["id"]
    assert (rotated["kind"], rotated["label"], rotated["allowed_networks"]) == ("vendor", "deploy", ["127.0.0.0/8"])
    replaced = rotated["replaces"]
    assert replaced["id"] == old["id"] and replaced["revoked_at"] is None
    ends = datetime.fromisoformat(replaced["expires_at"])
    assert 0 < (ends - datetime.now(UTC)).total_seconds() <= 2.5
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(rotated["key_id"]) is not None
                            and runtime.snapshot.credential(old["key_id"]).expires_at is not None)
    # During the overlap both work.
    for key in (old["api_key"], rotated["api_key"]):
        assert (await client.get("/v1/admin/members", headers=auth(key))).status_code == 200
    # After it, the old one is refused and the new one works.
    await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.2)
    expired = await client.get("/v1/admin/members", headers=auth(old["api_key"]))
    assert expired.status_code == 401 and expired.json()["detail"] == "API key expired"
    assert (await client.get("/v1/admin/members", headers=auth(rotated["api_key"]))).status_code == 200
    # An expired (or revoked) key is not rotated again.
    again = await client.post(f"/v1/admin/keys/{old['id']}/rotate", json={}, headers=auth(rotated["api_key"]))
    assert again.status_code == 409 and "expired" in again.json()["detail"]


async def test_rotation_keeps_a_member_keys_member_and_never_extends_the_old_key(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    member = await vendor.member()
    expires = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    issued = await vendor.member_key(member["id"], label="etl", expires_at=expires)
    # The default overlap (an hour) is later than the key's own expiry: the expiry stays.
    rotated = await vendor.ok("POST", f"/v1/admin/keys/{issued['id']}/rotate")
    assert rotated["member_id"] == member["id"] and rotated["kind"] == "member" and rotated["label"] == "etl"
    assert rotated["api_key"].startswith("lpdm_")
    assert datetime.fromisoformat(rotated["replaces"]["expires_at"]) == datetime.fromisoformat(issued["expires_at"])
    assert datetime.fromisoformat(rotated["expires_at"]) == datetime.fromisoformat(issued["expires_at"])
    # Overlap 0: the old key stops at once.
    fresh = await vendor.ok("POST", f"/v1/admin/keys/{rotated['id']}/rotate", json={"overlap_seconds": 0})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(fresh["key_id"]) is not None
                            and runtime.snapshot.credential(rotated["key_id"]).expires_at
                            <= datetime.now(UTC))
    response = await client.get("/v1/datasets", headers=auth(rotated["api_key"]))
    assert response.status_code == 401 and response.json()["detail"] == "API key expired"
    assert (await client.get("/v1/datasets", headers=auth(fresh["api_key"]))).status_code == 200


async def test_bad_rotation_and_issue_input_is_a_problem_and_changes_nothing(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    target = await _issue_admin(vendor, "target")
    before = await _credentials(runtime)
    for body, field in [({"overlap_seconds": -1}, "overlap_seconds"), ({"overlap_seconds": 2_592_001}, "overlap_seconds"),
                        ({"overlap_seconds": "1h"}, "overlap_seconds"), ({"overlap": 60}, "overlap")]:
        response = await vendor.post(f"/v1/admin/keys/{target['id']}/rotate", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["field"] == field, body
    for body, field in [({"kind": "vendor"}, "label"), ({"kind": "vendor", "label": ""}, "label"),
                        ({"kind": "vendor", "label": "x", "member_id": str(uuid.uuid4())}, "member_id"),
                        ({"kind": "operator", "label": "x"}, "kind"), ({"kind": "sharing", "label": "x"}, "kind")]:
        response = await vendor.post("/v1/admin/keys", json=body)
        assert response.status_code == 422 and response.json()["field"] == field, (body, response.text)
    assert await _credentials(runtime) == before


async def test_another_vendors_admin_keys_are_404_like_random_ids(runtime: Runtime, client: httpx.AsyncClient) -> None:
    owner = await make_vendor(runtime, client)
    other = await make_vendor(runtime, client)
    target = await _issue_admin(owner, "owner's")
    before = await _credentials(runtime)
    for action in ("revoke", "rotate"):
        foreign = await other.post(f"/v1/admin/keys/{target['id']}/{action}", json={})
        unknown = await other.post(f"/v1/admin/keys/{uuid.uuid4()}/{action}", json={})
        assert foreign.status_code == 404 and foreign.content == unknown.content, action
    assert all(k["kind"] != "vendor" or k["id"] != target["id"]
               for k in (await other.ok("GET", "/v1/admin/keys"))["items"])
    assert await _credentials(runtime) == before
    assert (await client.get("/v1/admin/members", headers=auth(target["api_key"]))).status_code == 200


async def test_every_admin_event_names_the_key_and_its_label(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    admin = await _issue_admin(vendor, "alice")
    headers = auth(admin["api_key"])
    issued = await client.post("/v1/admin/keys", json={"kind": "vendor", "label": "bob"}, headers=headers)
    rotated = await client.post(f"/v1/admin/keys/{issued.json()['id']}/rotate", json={"overlap_seconds": 60},
                                headers=headers)
    revoked = await client.post(f"/v1/admin/keys/{issued.json()['id']}/revoke", headers=headers)
    read = await client.get("/v1/admin/keys", headers=headers)
    invalid = await client.post("/v1/admin/members", json={"nom": "x"}, headers=headers)
    assert [r.status_code for r in (issued, rotated, revoked, read, invalid)] == [201, 201, 200, 200, 422]
    events = {name: await _events(runtime, response) for name, response in
              [("issued", issued), ("rotated", rotated), ("revoked", revoked), ("read", read), ("invalid", invalid)]}
    for name, found in events.items():
        [event] = found
        assert event["actor"] == {"credential_id": admin["id"], "kind": "vendor"}, name
        assert event["detail"]["actor_label"] == "alice", name
    assert events["issued"][0]["kind"] == "vendor:key:issue"
    assert events["issued"][0]["detail"]["label"] == "bob" and events["issued"][0]["detail"]["kind"] == "vendor"
    rotation = events["rotated"][0]
    assert rotation["kind"] == "vendor:key:issue" and rotation["detail"]["credential_id"] == rotated.json()["id"]
    assert rotation["detail"]["replaces"]["credential_id"] == issued.json()["id"]
    assert rotation["detail"]["replaces"]["expires_at"].endswith("Z")
    revocation = events["revoked"][0]
    assert revocation["kind"] == "vendor:key:revoke"
    assert revocation["detail"]["credential_id"] == issued.json()["id"] and revocation["detail"]["label"] == "bob"
    assert events["read"][0]["kind"] == "vendor:admin:read" and events["invalid"][0]["outcome"] == "invalid"
    # A member's deliveries do not carry it: the label is for the admin API's events.
    member = await vendor.member()
    key = await vendor.member_key(member["id"], label="etl")
    listed = await client.get("/v1/datasets", headers=auth(key["api_key"]))
    [delivery] = await _events(runtime, listed)
    assert "actor_label" not in (delivery["detail"] or {})


# -- the operator's CLI ---------------------------------------------------------------------------------

def _cli(args: list[str], dsn: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(PYTHONPATH=str(REPOSITORY), GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY,
               GATEWAY_HOME=str(home))
    return subprocess.run(GATEWAY + args, env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_the_operator_issues_rotates_lists_and_revokes_admin_keys(runtime: Runtime, client: httpx.AsyncClient,
                                                                         dsn: str, tmp_path: Path) -> None:
    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_cli, list(args), dsn, tmp_path)

    created = await cli("vendor", "create", "Op Vendor")
    assert created.returncode == 0, created.stderr
    first = orjson.loads(created.stdout)["vendor_admin_key"]
    # The vendor exists already: the error says what to do next.
    again = await cli("vendor", "create", "Op Vendor")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "exists already" in again.stderr and "gateway key issue --vendor 'Op Vendor' --kind vendor" in again.stderr
    done = await cli("key", "issue", "--vendor", "Op Vendor", "--kind", "vendor", "--label", "replacement")
    assert done.returncode == 0, done.stderr
    replacement = orjson.loads(done.stdout)
    assert replacement["kind"] == "vendor" and replacement["label"] == "replacement"
    listed = orjson.loads((await cli("key", "list", "--vendor", "Op Vendor")).stdout)["items"]
    assert [(k["kind"], k["label"]) for k in listed] == [("vendor", "vendor admin"), ("vendor", "replacement")]
    assert first not in orjson.dumps(listed).decode()
    lost = listed[0]
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(replacement["key_id"]) is not None)
    assert (await client.get("/v1/admin/members", headers=auth(replacement["api_key"]))).status_code == 200
    # The operator may revoke a vendor's admin keys, the last one included.
    revoked = await cli("key", "revoke", "--vendor", "Op Vendor", lost["id"])
    assert revoked.returncode == 0 and orjson.loads(revoked.stdout)["revoked_at"] is not None, revoked.stderr
    await _refused_soon(runtime, lost["key_id"], lambda c: c.revoked_at is not None)
    assert (await client.get("/v1/admin/members", headers=auth(first))).status_code == 401
    rotated = await cli("key", "rotate", "--vendor", "Op Vendor", replacement["id"], "--overlap", "0")
    assert rotated.returncode == 0, rotated.stderr
    new = orjson.loads(rotated.stdout)
    assert new["label"] == "replacement" and new["replaces"]["id"] == replacement["id"]
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(new["key_id"]) is not None)
    assert (await client.get("/v1/admin/members", headers=auth(replacement["api_key"]))).status_code == 401
    assert (await client.get("/v1/admin/members", headers=auth(new["api_key"]))).status_code == 200
    # Mistakes are one line, status 1, in the API's words; nothing is written.
    async with runtime.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM credentials")
    for args, expected in [
        (["key", "rotate", "--vendor", "Op Vendor", new["id"], "--overlap=-1h"], "overlap_seconds must be"),
        (["key", "rotate", "--vendor", "Op Vendor", new["id"], "--overlap", "31d"], "overlap_seconds must be"),
        (["key", "issue", "--vendor", "Op Vendor", "--kind", "vendor"], "vendor admin keys need a label"),
        (["key", "revoke", "--vendor", "Op Vendor", str(uuid.uuid4())], "no such key"),
    ]:
        failed = await cli(*args)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1, (args, failed.stderr)
        assert failed.stderr.startswith("gateway: ") and expected in failed.stderr, (args, failed.stderr)
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM credentials") == before
    # Events of the CLI name the operator's command line, and the keys they changed by id and label.
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT entry FROM audit_events WHERE kind = 'vendor:key:revoke'")
    [revocation] = [orjson.loads(r["entry"]) for r in rows]
    assert revocation["actor"]["kind"] == "cli"
    assert revocation["detail"]["credential_id"] == lost["id"] and revocation["detail"]["label"] == "vendor admin"
