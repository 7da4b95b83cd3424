"""Idempotency-Key on the admin API: a retry gets the first answer and changes nothing."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from gateway.runtime import Runtime
from tests.factories import ROWS, make_vendor

CSV = ("area,day,count,secret_note\n" + ROWS).encode()


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"idempotency-key": f'"{key}"', **headers}


async def events_of(runtime: Runtime, vendor_id: uuid.UUID, kind: str) -> list[dict]:
    rows = await runtime.pool.fetch("SELECT outcome, entry FROM audit_events WHERE vendor_id = $1 AND kind = $2 "
                                    "ORDER BY at", vendor_id, kind)
    return [dict(r) for r in rows]


async def test_a_retried_publish_gets_the_first_answer_and_makes_no_second_version(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    path = f"/v1/admin/datasets/{dataset['id']}/versions"
    headers = {**vendor.headers, **keyed("publish-2026-12-03", **{"content-type": "text/csv"})}
    first = await client.post(path, content=CSV, headers=headers)
    again = await client.post(path, content=CSV, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert [v["version"] for v in (await vendor.ok("GET", f"/v1/admin/datasets/{dataset['id']}"))["versions"]] == [1]
    # One change in the evidence; the retry is recorded as a request that repeated its answer.
    publishes = await events_of(runtime, vendor.id, "vendor:version:publish")
    assert [e["outcome"] for e in publishes] == ["change", "allow"]
    assert b"idempotent_replay_of" in publishes[1]["entry"]
    # The same key for another body is refused and changes nothing.
    other = await client.post(path, content=CSV + b"north,2026-04-09,1,x\n", headers=headers)
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    assert len((await vendor.ok("GET", f"/v1/admin/datasets/{dataset['id']}"))["versions"]) == 1
    # With a new key it is a new request: the same upload is then a duplicate, published only on purpose.
    fresh = await client.post(path, content=CSV, headers={**headers, **keyed("another")})
    assert fresh.status_code == 409 and "idempotent-replayed" not in fresh.headers
    meant = await client.post(path, params={"duplicate": "allow"}, content=CSV, headers={**headers, **keyed("another")})
    assert meant.status_code == 201 and meant.json()["version"] == 2


async def test_a_retried_key_issue_repeats_the_secret_which_is_stored_sealed(runtime: Runtime,
                                                                            client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    member = await vendor.member()
    body = {"kind": "member", "member_id": member["id"]}
    first = await client.post("/v1/admin/keys", json=body, headers={**vendor.headers, **keyed("k1")})
    again = await client.post("/v1/admin/keys", json=body, headers={**vendor.headers, **keyed("k1")})
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    keys = await vendor.ok("GET", "/v1/admin/keys")
    assert sum(1 for k in keys["items"] if k.get("member_id") == member["id"]) == 1
    stored = await runtime.pool.fetchval("SELECT sealed_body FROM idempotency_keys WHERE vendor_id = $1", vendor.id)
    assert first.json()["api_key"].encode() not in bytes(stored)
    # Keys belong to a vendor: another vendor's equal key is unrelated.
    other = await make_vendor(runtime, client)
    created = await client.post("/v1/admin/members", json={"name": "m"}, headers={**other.headers, **keyed("k1")})
    assert created.status_code == 201 and "idempotent-replayed" not in created.headers


async def test_a_refusal_is_not_kept_and_a_malformed_key_changes_nothing(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    refused = await client.post("/v1/admin/members", json={"name": ""}, headers={**vendor.headers, **keyed("m1")})
    assert refused.status_code == 422
    corrected = await client.post("/v1/admin/members", json={"name": "member-a"},
                                  headers={**vendor.headers, **keyed("m1")})
    assert corrected.status_code == 201, corrected.text
    # The same key unquoted, as many clients send it, is the same key.
    bare = await client.post("/v1/admin/members", json={"name": "member-a"},
                             headers={**vendor.headers, "idempotency-key": "m1"})
    assert bare.status_code == 201 and bare.headers["idempotent-replayed"] == "true"
    for bad in ('""', '"' + "x" * 256 + '"', '"a"b"', "a b", "x" * 256):
        response = await client.post("/v1/admin/members", json={"name": "member-b"},
                                     headers={**vendor.headers, "idempotency-key": bad})
        assert response.status_code == 400 and "Idempotency-Key" in response.json()["detail"], bad
    twice = await client.post("/v1/admin/members", json={"name": "member-b"},
                              headers=[*vendor.headers.items(), ("idempotency-key", '"a"'), ("idempotency-key", '"a"')])
    assert twice.status_code == 400
    names = [m["name"] for m in (await vendor.ok("GET", "/v1/admin/members"))["items"]]
    assert names == ["member-a"]


async def test_a_request_still_running_under_the_key_answers_409(runtime: Runtime, client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('idempotency:' || $1 || ':' || $2, 0))",
                           str(vendor.id), "busy")
        busy = await client.post("/v1/admin/members", json={"name": "m"}, headers={**vendor.headers, **keyed("busy")})
    assert busy.status_code == 409 and "still being carried out" in busy.json()["detail"]
    await asyncio.sleep(0)
    assert (await vendor.ok("GET", "/v1/admin/members"))["items"] == []
