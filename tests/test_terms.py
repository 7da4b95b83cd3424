"""Licence terms (gateway/licences.py): accepted as read, readable by the vendor, never blank."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import orjson
import pytest

from gateway import licences
from gateway.actors import cli_actor
from gateway.errors import InvalidInput
from gateway.runtime import Runtime
from tests.factories import accept_terms, auth, licensed_member, make_vendor, wait_for_snapshot


async def test_terms_amended_after_the_member_read_them_are_not_accepted(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, accept=False)
    licence_id = licensed.licence["id"]
    read = (await client.get(f"/v1/licences/{licence_id}/terms", headers=licensed.headers)).json()
    await licensed.vendor.ok("PATCH", f"/v1/admin/licences/{licence_id}", json={"terms_text": "terms v2"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licence_id)].terms_version == 2)

    stale = await client.post(f"/v1/licences/{licence_id}/accept", headers=licensed.headers,
                              json={"terms_version": read["version"], "terms_sha256": read["sha256"]})
    assert stale.status_code == 409, stale.text
    problem = stale.json()
    assert problem["current_terms_version"] == 2
    assert problem["current_terms_sha256"] == hashlib.sha256(b"terms v2").hexdigest()
    assert f"GET /v1/licences/{licence_id}/terms" in problem["detail"]
    # The right version with the old text's digest is as stale.
    mixed = await client.post(f"/v1/licences/{licence_id}/accept", headers=licensed.headers,
                              json={"terms_version": 2, "terms_sha256": read["sha256"]})
    assert mixed.status_code == 409
    assert await runtime.pool.fetchval("SELECT count(*) FROM terms_acceptances WHERE licence_id = $1",
                                       uuid.UUID(licence_id)) == 0

    accepted = await accept_terms(client, licence_id, licensed.key)
    assert accepted["terms_version"] == 2 and accepted["terms_sha256"] == problem["current_terms_sha256"]
    entries = [orjson.loads(bytes(row["entry"])) for row in await runtime.pool.fetch(
        "SELECT entry FROM audit_events WHERE licence_id = $1 AND kind = 'member:terms:accept' ORDER BY at",
        uuid.UUID(licence_id))]
    assert [(e["outcome"], e["terms_version"], e["detail"].get("terms_sha256")) for e in entries] == [
        ("invalid", 2, None), ("invalid", 2, None), ("change", 2, problem["current_terms_sha256"])]
    # A refusal says what the member named.
    assert (entries[0]["detail"]["terms_version_named"], entries[0]["detail"]["terms_sha256_named"]) == (
        1, read["sha256"])


@pytest.mark.parametrize(("body", "status"), [
    (None, 422),                                                   # no body: the fields are named
    ({"terms_version": 1}, 422),
    ({"terms_version": 1, "terms_sha256": "abc"}, 422),            # not 64 hex digits
    ({"terms_version": "1", "terms_sha256": "0" * 64}, 422),
    ({"terms_version": 1, "terms_sha256": "0" * 64, "extra": 1}, 422),
])
async def test_an_acceptance_must_name_version_and_digest(runtime: Runtime, client: httpx.AsyncClient,
                                                          body: dict[str, object] | None, status: int) -> None:
    licensed = await licensed_member(runtime, client, accept=False)
    path = f"/v1/licences/{licensed.licence['id']}/accept"
    response = await client.post(path, headers=licensed.headers, json=body) if body is not None \
        else await client.post(path, headers=licensed.headers)
    assert response.status_code == status, response.text
    not_json = await client.post(path, headers={**licensed.headers, "content-type": "text/plain"}, content=b"1")
    assert not_json.status_code == 415
    assert not runtime.snapshot.licences[uuid.UUID(licensed.licence["id"])].accepted_terms


async def test_vendor_and_compliance_read_every_terms_version_and_another_vendor_does_not(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    licence_id = licensed.licence["id"]
    await licensed.vendor.ok("PATCH", f"/v1/admin/licences/{licence_id}", json={"terms_text": "terms v2"})
    path = f"/v1/admin/licences/{licence_id}/terms"
    terms = await licensed.vendor.ok("GET", path)
    assert terms["current_version"] == 2
    first, second = terms["items"]
    assert (first["version"], first["text"], first["sha256"]) == (1, "terms v1", hashlib.sha256(b"terms v1").hexdigest())
    member_key = await runtime.pool.fetchval("SELECT id FROM credentials WHERE member_id = $1",
                                             uuid.UUID(licensed.member["id"]))
    assert first["accepted_at"] is not None and first["accepted_by_credential_id"] == str(member_key)
    assert (second["text"], second["accepted_at"], second["accepted_by_credential_id"]) == ("terms v2", None, None)

    compliance = await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance", "label": "auditor"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(compliance["key_id"]) is not None)
    one = await client.get(path, params={"version": 2}, headers=auth(compliance["api_key"]))
    assert one.status_code == 200 and [i["version"] for i in one.json()["items"]] == [2]
    assert (await client.get(path, params={"version": 3}, headers=auth(compliance["api_key"]))).status_code == 404
    assert (await client.get(path, params={"version": "x"}, headers=auth(compliance["api_key"]))).status_code == 400

    other = await make_vendor(runtime, client)
    assert (await client.get(path, headers=other.headers)).status_code == 404
    assert (await client.get(path, headers=licensed.headers)).status_code == 403  # a member key


@pytest.mark.parametrize("blank", ["", "   ", "\n\t \u3000"])
async def test_blank_terms_are_refused_at_grant_and_amend(runtime: Runtime, client: httpx.AsyncClient,
                                                          blank: str) -> None:
    licensed = await licensed_member(runtime, client)
    vendor = licensed.vendor
    other = await vendor.member("member-b")
    granted = await vendor.post("/v1/admin/licences", json={
        "member_id": other["id"], "dataset_id": licensed.dataset["id"], "partitions": ["north"],
        "columns": ["area"], "terms_text": blank})
    assert granted.status_code == 422 and "terms text is empty" in granted.json()["detail"], granted.text
    licence_id = licensed.licence["id"]
    amended = await client.patch(f"/v1/admin/licences/{licence_id}", headers=vendor.headers,
                                 json={"terms_text": blank})
    assert amended.status_code == 422 and "terms text is empty" in amended.json()["detail"]
    with pytest.raises(InvalidInput, match="terms text is empty"):
        await licences.amend(runtime.writer, cli_actor(vendor.id), vendor.id, uuid.UUID(licence_id), {}, blank)
    assert await runtime.pool.fetchval("SELECT max(version) FROM licence_terms WHERE licence_id = $1",
                                       uuid.UUID(licence_id)) == 1
    assert await runtime.pool.fetchval("SELECT count(*) FROM licences WHERE member_id = $1",
                                       uuid.UUID(other["id"])) == 0
