"""gateway/members.py: suspend and resume, final revocation that takes what the member held, names that can be
reused, renames and contact details, through the API and the CLI alike."""

from __future__ import annotations

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
from tests.factories import auth, licensed_member, make_vendor, records_path_of, wait_for_snapshot
from tests.test_oauth import fetch_token, make_client, token_for


def cli(dsn: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


async def _events(runtime: Runtime, kind: str) -> list[dict[str, Any]]:
    """The changes of a kind (refusals are events of the same kind, outcome deny or invalid)."""
    rows = await runtime.pool.fetch(
        "SELECT entry FROM audit_events WHERE kind = $1 AND outcome = 'change' ORDER BY at", kind)
    return [orjson.loads(r["entry"]) for r in rows]


async def test_a_suspended_member_is_refused_everywhere_with_the_reason_and_resumed_gets_it_all_back(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    token = await token_for(client, oauth_client)
    member_id = uuid.UUID(licensed.member["id"])
    path = f"/v1/admin/members/{member_id}"
    records = records_path_of(licensed)
    assert (await client.get(records, headers=licensed.headers)).status_code == 200

    suspended = await licensed.vendor.ok("POST", f"{path}/suspend", json={"reason": "invoice overdue"})
    assert suspended["status"] == "suspended" and suspended["status_reason"] == "invoice overdue"
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "suspended")
    expected = "member access suspended by the vendor: invoice overdue"
    for headers in (licensed.headers, auth(token)):
        refused = await client.get(records, headers=headers)
        assert refused.status_code == 401 and refused.json()["detail"] == expected, refused.text
    assert (await fetch_token(client, oauth_client)).json()["error_description"] == expected
    # Nothing it holds was revoked: the licence and client are as they were.
    licence = await licensed.vendor.ok("GET", f"/v1/admin/licences/{licensed.licence['id']}")
    assert licence["status"] == "active" and licence["terms_accepted"] is True
    assert (await licensed.vendor.post(f"{path}/suspend")).status_code == 409

    resumed = await licensed.vendor.ok("POST", f"{path}/resume")
    assert resumed["status"] == "active" and resumed["status_reason"] == ""
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "active")
    for headers in (licensed.headers, auth(token)):
        assert (await client.get(records, headers=headers)).status_code == 200
    [suspend] = await _events(runtime, "vendor:member:suspend")
    [resume] = await _events(runtime, "vendor:member:resume")
    assert suspend["reason"] == "invoice overdue" and suspend["member_id"] == str(member_id)
    assert resume["member_id"] == str(member_id)


async def test_the_cli_suspends_and_resumes_a_member_by_name(runtime: Runtime, client: httpx.AsyncClient,
                                                             dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    member_id = uuid.UUID(licensed.member["id"])
    vendor = str(licensed.vendor.id)
    done = cli(dsn, tmp_path, "member", "suspend", "--vendor", vendor, licensed.member["name"], "--reason", "audit")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["status"] == "suspended"
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "suspended")
    assert (await client.get(records_path_of(licensed), headers=licensed.headers)).status_code == 401
    done = cli(dsn, tmp_path, "member", "resume", "--vendor", vendor, licensed.member["name"])
    assert done.returncode == 0, done.stderr
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "active")
    assert (await client.get(records_path_of(licensed), headers=licensed.headers)).status_code == 200


async def test_revocation_is_final_takes_what_the_member_held_and_frees_its_name(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    vendor = licensed.vendor
    oauth_client = await make_client(runtime, licensed)
    token = await token_for(client, oauth_client)
    member_id = uuid.UUID(licensed.member["id"])
    keys = [k["id"] for k in (await vendor.ok("GET", "/v1/admin/keys"))["items"] if k["member_id"] == str(member_id)]
    revoked = await vendor.ok("POST", f"/v1/admin/members/{member_id}/revoke", json={"reason": "contract ended"})
    assert revoked["status"] == "revoked"
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "revoked")
    # What it held shows as revoked, not as active or with revoked_at null.
    licence = await vendor.ok("GET", f"/v1/admin/licences/{licensed.licence['id']}")
    assert licence["status"] == "revoked" and licence["status_reason"] == "member revoked"
    [listed] = (await vendor.ok("GET", "/v1/admin/oauth-clients"))["items"]
    assert listed["revoked_at"] is not None
    assert all(k["revoked_at"] for k in (await vendor.ok("GET", "/v1/admin/keys"))["items"] if k["id"] in keys)
    response = await client.get("/v1/datasets", headers=auth(token))
    assert response.status_code == 401 and response.json()["detail"] == "OAuth client revoked"
    assert (await client.get("/v1/datasets", headers=licensed.headers)).json()["detail"] == "API key revoked"
    [event] = await _events(runtime, "vendor:member:revoke")
    assert event["reason"] == "contract ended"
    assert event["detail"]["revoked"] == {
        "credential_ids": sorted(keys), "oauth_client_ids": [oauth_client.id], "licence_ids": [licensed.licence["id"]]}
    # Final: neither resumed nor suspended nor revoked again.
    for action in ("resume", "suspend", "revoke"):
        refused = await vendor.post(f"/v1/admin/members/{member_id}/{action}")
        assert refused.status_code == 409 and "revocation is final" in refused.json()["detail"], refused.text

    # The name is free for a new member, and the CLI's name means the live one.
    again = await vendor.member(licensed.member["name"])
    assert again["id"] != str(member_id)
    done = cli(dsn, tmp_path, "member", "suspend", "--vendor", str(vendor.id), licensed.member["name"])
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["id"] == again["id"]
    taken = await vendor.post("/v1/admin/members", json={"name": licensed.member["name"]})
    assert taken.status_code == 409


async def test_members_are_renamed_with_contact_details_and_the_snapshot_sees_it(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    vendor = await make_vendor(runtime, client)
    member = await vendor.member("shibuya")
    await vendor.member("taken")
    path = f"/v1/admin/members/{member['id']}"
    amended = await vendor.ok("PATCH", path, json={"name": "shibuya-kk", "contact_name": "Legal",
                                                   "contact_email": "legal@shibuya.example"})
    assert amended == {**member, "name": "shibuya-kk", "status_reason": "", "contact_name": "Legal",
                       "contact_email": "legal@shibuya.example"}
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[uuid.UUID(member["id"])].name == "shibuya-kk")
    [event] = await _events(runtime, "vendor:member:amend")
    assert {k: v for k, v in event["detail"].items() if k != "actor_label"} == {"before": {"name": "shibuya", "contact_name": None, "contact_email": None},
                               "after": {"name": "shibuya-kk", "contact_name": "Legal",
                                         "contact_email": "legal@shibuya.example"}}
    for body, status in (({"name": "shibuya-kk"}, 409), ({}, 409), ({"name": "taken"}, 409),
                         ({"contact_email": "not an address"}, 422), ({"contact_name": ""}, 422)):
        refused = await vendor.client.patch(path, json=body, headers=vendor.headers)
        assert refused.status_code == status, (body, refused.text)
    cleared = await vendor.ok("PATCH", path, json={"contact_email": None})
    assert cleared["contact_email"] is None and cleared["contact_name"] == "Legal"

    done = cli(dsn, tmp_path, "member", "amend", "--vendor", str(vendor.id), "shibuya-kk", "--name", "shibuya-2",
               "--no-contact-name")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["name"] == "shibuya-2" and orjson.loads(done.stdout)["contact_name"] is None
    done = cli(dsn, tmp_path, "member", "amend", "--vendor", str(vendor.id), "shibuya-2", "--name", "taken")
    assert done.returncode == 1 and "already has a member named 'taken'" in done.stderr


async def test_datasets_are_renamed_keeping_their_id_and_delta_sharing_shows_the_new_name(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    vendor, dataset_id = licensed.vendor, licensed.dataset["id"]
    await vendor.dataset("taken")
    path = f"/v1/admin/datasets/{dataset_id}"
    amended = await vendor.ok("PATCH", path, json={"name": "footfall-jp", "description": "人流"})
    assert amended["id"] == dataset_id and amended["name"] == "footfall-jp" and amended["description"] == "人流"
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(dataset_id)].name == "footfall-jp")
    tables = await client.get("/delta-sharing/shares", headers=licensed.headers)
    share = tables.json()["items"][0]["name"]
    listed = await client.get(f"/delta-sharing/shares/{share}/all-tables", headers=licensed.headers)
    assert [t["name"] for t in listed.json()["items"]] == ["footfall-jp"]
    [event] = await _events(runtime, "vendor:dataset:amend")
    assert {k: v for k, v in event["detail"].items() if k != "actor_label"} == {"before": {"name": "footfall", "description": ""},
                               "after": {"name": "footfall-jp", "description": "人流"}}
    for body, status in (({"name": "footfall-jp"}, 409), ({}, 409), ({"name": "taken"}, 409),
                         ({"name": "Not Valid"}, 422)):
        refused = await vendor.client.patch(path, json=body, headers=vendor.headers)
        assert refused.status_code == status, (body, refused.text)
    done = cli(dsn, tmp_path, "dataset", "amend", "--vendor", str(vendor.id), "footfall-jp", "--description", "")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["description"] == ""


@pytest.mark.parametrize("action", ["suspend", "resume", "revoke"])
async def test_another_vendors_member_is_not_found(runtime: Runtime, client: httpx.AsyncClient, action: str) -> None:
    licensed = await licensed_member(runtime, client)
    other = await make_vendor(runtime, client)
    response = await other.post(f"/v1/admin/members/{licensed.member['id']}/{action}")
    assert response.status_code == 404


@pytest.mark.parametrize("name", ["   ", " Shibuya", "Shibuya ", "\u3000渋谷", "渋谷\t", "\n"])
async def test_member_names_of_spaces_or_with_spaces_around_are_refused_by_the_api_and_the_cli(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path, name: str) -> None:
    vendor = await make_vendor(runtime, client)
    refused = await vendor.post("/v1/admin/members", json={"name": name})
    assert refused.status_code == 422 and refused.json()["field"] == "name"
    assert "no space (or other white space) at its start or end" in refused.json()["detail"]
    member = await vendor.member("Shibuya")
    refused = await vendor.client.patch(f"/v1/admin/members/{member['id']}", json={"name": name}, headers=vendor.headers)
    assert refused.status_code == 422 and refused.json()["field"] == "name"
    for args in (("member", "create", "--vendor", str(vendor.id), name),
                 ("member", "amend", "--vendor", str(vendor.id), "Shibuya", "--name", name)):
        done = cli(dsn, tmp_path, *args)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "no space (or other white space) at its start or end" in done.stderr
    assert [m["name"] for m in (await vendor.ok("GET", "/v1/admin/members"))["items"]] == ["Shibuya"]


@pytest.mark.parametrize("name", ["   ", " footfall", "footfall ", "foot fall"])
async def test_dataset_names_with_spaces_are_refused_by_the_api_and_the_cli(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path, name: str) -> None:
    vendor = await make_vendor(runtime, client)
    refused = await vendor.post("/v1/admin/datasets", json={"name": name, "columns": [{"name": "a", "type": "text"}],
                                                            "partition_column": "a"})
    assert refused.status_code == 422 and refused.json()["field"] == "name"
    dataset = await vendor.dataset()
    refused = await vendor.client.patch(f"/v1/admin/datasets/{dataset['id']}", json={"name": name},
                                        headers=vendor.headers)
    assert refused.status_code == 422 and refused.json()["field"] == "name"
    columns = tmp_path / "columns.json"
    columns.write_text('[{"name": "a", "type": "text"}]')
    for args in (("dataset", "create", "--vendor", str(vendor.id), "--name", name, "--columns", str(columns),
                  "--partition-column", "a"),
                 ("dataset", "amend", "--vendor", str(vendor.id), "footfall", "--name", name)):
        done = cli(dsn, tmp_path, *args)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "lowercase letters, digits, '-' or '_'" in done.stderr
    assert [d["name"] for d in (await vendor.ok("GET", "/v1/admin/datasets"))["items"]] == ["footfall"]
