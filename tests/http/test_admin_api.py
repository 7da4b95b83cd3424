"""The vendor admin API: datasets, uploads, members, licences, keys; isolation between vendors and roles."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from gateway.runtime import Runtime
from tests.factories import COLUMNS, ROWS, auth, licensed_member, make_vendor


async def test_publish_accumulates_versions_with_figures(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    first = await vendor.publish(dataset["id"], ROWS)
    assert first["version"] == 1 and first["records"] == 45
    assert set(first["partitions"]) == {"north", "south", "east"}
    second = await vendor.publish(dataset["id"], "west,2026-05-01,7,x\n")
    assert second["version"] == 2 and second["records"] == 1
    shown = await vendor.ok("GET", f"/v1/admin/datasets/{dataset['id']}")
    assert shown["latest_version"] == 2
    assert shown["accumulation"]["records"] == 46 and shown["accumulation"]["partitions"] == 4


async def test_a_bad_row_is_422_naming_line_and_column_and_leaves_nothing(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    body = "area,day,count,secret_note\nnorth,2026-04-01,1,a\nnorth,2026-04-02,many,b\n"
    response = await client.post(f"/v1/admin/datasets/{dataset['id']}/versions", content=body.encode(),
                                 headers={**vendor.headers, "content-type": "text/csv"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["line"] == 3 and problem["column"] == "count"
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM records") == 0
        assert await conn.fetchval("SELECT count(*) FROM dataset_versions") == 0
    # The next good upload is version 1: the failed one left no trace, not even a number.
    assert (await vendor.publish(dataset["id"], ROWS))["version"] == 1


async def test_unknown_fields_and_bad_columns_are_refused(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    response = await vendor.post("/v1/admin/datasets", json={"name": "x", "columns": COLUMNS,
                                                             "partition_column": "area", "vendor_id": str(uuid.uuid4())})
    assert response.status_code == 422 and "vendor_id" in response.json()["detail"]
    response = await vendor.post("/v1/admin/datasets", json={"name": "x", "columns": COLUMNS, "partition_column": "nope"})
    assert response.status_code == 422 and response.json()["field"] == "partition_column"
    response = await vendor.post("/v1/admin/datasets", json={"name": "x", "columns": [{"name": "a", "type": "blob"}],
                                                             "partition_column": "a"})
    assert response.status_code == 422 and response.json()["field"] == "columns"
    assert (await vendor.ok("GET", "/v1/admin/datasets"))["items"] == []


async def test_another_vendors_ids_are_404_like_random_ids(runtime: Runtime, client: httpx.AsyncClient) -> None:
    owner = await licensed_member(runtime, client)
    other = await make_vendor(runtime, client)
    ids = {"datasets": owner.dataset["id"], "members": owner.member["id"], "licences": owner.licence["id"]}
    key_id = (await owner.vendor.ok("GET", "/v1/admin/keys"))["items"][0]["id"]
    probes = [
        ("GET", f"/v1/admin/datasets/{ids['datasets']}", None),
        ("POST", f"/v1/admin/datasets/{ids['datasets']}/versions", None),
        ("GET", f"/v1/admin/members/{ids['members']}", None),
        ("POST", f"/v1/admin/members/{ids['members']}/revoke", None),
        ("GET", f"/v1/admin/licences/{ids['licences']}", None),
        ("PATCH", f"/v1/admin/licences/{ids['licences']}", {"partitions": ["east"]}),
        ("POST", f"/v1/admin/licences/{ids['licences']}/suspend", {}),
        ("POST", f"/v1/admin/licences/{ids['licences']}/resume", {}),
        ("POST", f"/v1/admin/licences/{ids['licences']}/revoke", {}),
        ("POST", f"/v1/admin/keys/{key_id}/revoke", None),
    ]
    for method, path, body in probes:
        foreign = await client.request(method, path, json=body, headers={**other.headers,
                                                                          "content-type": "application/json"})
        random_path = path.replace(path.split("/")[4], str(uuid.uuid4()))
        unknown = await client.request(method, random_path, json=body, headers={**other.headers,
                                                                                 "content-type": "application/json"})
        assert foreign.status_code == 404, (method, path, foreign.text)
        assert foreign.content == unknown.content
    # Another vendor granting a licence over the owner's member or dataset: also not found.
    response = await other.post("/v1/admin/licences", json={
        "member_id": ids["members"], "dataset_id": ids["datasets"], "partitions": ["north"], "columns": ["area"],
        "terms_text": "t"})
    assert response.status_code == 404
    # And nothing of the owner's changed.
    licence = await owner.vendor.ok("GET", f"/v1/admin/licences/{ids['licences']}")
    assert licence["status"] == "active" and licence["partitions"] == ["north", "south"]


async def test_roles_member_and_compliance_keys_cannot_administer(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    compliance = await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"})
    async with runtime.pool.acquire() as conn:
        before = await _state(conn)
    for key in (licensed.key, compliance["api_key"]):
        for method, path, body in [("POST", "/v1/admin/members", {"name": "intruder"}),
                                   ("POST", "/v1/admin/datasets", {"name": "x", "columns": COLUMNS,
                                                                   "partition_column": "area"}),
                                   ("POST", f"/v1/admin/licences/{licensed.licence['id']}/revoke", {}),
                                   ("POST", "/v1/admin/keys", {"kind": "compliance"})]:
            response = await client.request(method, path, json=body, headers=auth(key))
            assert response.status_code == 403, (key[:5], path)
    # Members cannot read admin data; compliance officers can read their vendor's (read-only role).
    assert (await client.get("/v1/admin/members", headers=auth(licensed.key))).status_code == 403
    assert (await client.get("/v1/admin/members", headers=auth(compliance["api_key"]))).status_code == 200
    async with runtime.pool.acquire() as conn:
        assert await _state(conn) == before


async def _state(conn: asyncpg.Connection) -> list[object]:
    return [await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")
            for table in ("members", "datasets", "licences", "credentials", "dataset_versions")]


async def test_no_secret_is_stored_in_the_clear(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    compliance = (await licensed.vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance"}))["api_key"]
    secrets = [licensed.key, licensed.vendor.key, compliance]
    async with runtime.pool.acquire() as conn:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
        dump = []
        for table in tables:
            dump.extend(str(tuple(row)) for row in await conn.fetch(f"SELECT * FROM {table}"))
    text = "\n".join(dump)
    for secret in secrets:
        assert secret not in text
        assert secret.split("_")[2] not in text  # not even the secret part alone
    # The key list shows ids and policy only.
    listed = await licensed.vendor.ok("GET", "/v1/admin/keys")
    assert all("api_key" not in k and "hash" not in k for k in listed["items"])


async def test_licence_lifecycle(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/admin/licences/{licensed.licence['id']}"
    suspended = await licensed.vendor.ok("POST", f"{path}/suspend", json={"reason": "invoice overdue"})
    assert suspended["status"] == "suspended" and suspended["status_reason"] == "invoice overdue"
    assert (await licensed.vendor.post(f"{path}/suspend", json={})).status_code == 409
    assert (await licensed.vendor.ok("POST", f"{path}/resume", json={}))["status"] == "active"
    amended = await licensed.vendor.ok("PATCH", path, json={"partitions": ["north"], "terms_text": "terms v2"})
    assert amended["partitions"] == ["north"] and amended["terms_version"] == 2 and not amended["terms_accepted"]
    bad = await client.patch(path, json={"columns": ["secret_note", "nope"]}, headers=licensed.vendor.headers)
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    assert (await licensed.vendor.ok("POST", f"{path}/revoke", json={"reason": "contract ended"}))["status"] == "revoked"
    # A revoked licence leaves room for a new grant of the same dataset.
    again = await licensed.vendor.licence(licensed.member["id"], licensed.dataset["id"], ["east"])
    assert again["status"] == "active"
