"""Resource limits, hostile input, headers and fail-closed behaviour of the real app."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import cursors
from gateway.errors import BadRequest
from gateway.runtime import Runtime
from tests.conftest import client_for, open_runtime
from tests.factories import licensed_member, make_vendor, records_path_of
from tests.processes import PostgresProxy


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


async def test_oversized_json_bodies_are_refused_before_being_read_whole(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    vendor = await make_vendor(runtime, client)
    declared = await client.post("/v1/admin/members", content=b"{}", headers={
        **vendor.headers, "content-type": "application/json", "content-length": str(50 << 20)})
    assert declared.status_code == 413
    tracemalloc.start()
    try:
        streamed = await client.post("/v1/admin/members", content=chunks(40 << 20),
                                     headers={**vendor.headers, "content-type": "application/json"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.status_code == 413
    assert peak < 8 << 20, f"memory grew to {peak >> 20} MiB for a 40 MiB body"


async def test_oversized_uploads_are_refused_and_leave_nothing(dsn: str, tmp_path: Path) -> None:
    runtime = await open_runtime(dsn, tmp_path, GATEWAY_MAX_UPLOAD_BYTES="100000")
    try:
        async with client_for(runtime) as client:
            vendor = await make_vendor(runtime, client)
            dataset = await vendor.dataset()
            body = "area,day,count,secret_note\n" + "north,2026-04-01,1,x\n" * 20_000
            response = await client.post(f"/v1/admin/datasets/{dataset['id']}/versions", content=body.encode(),
                                         headers={**vendor.headers, "content-type": "text/csv"})
            assert response.status_code == 413
        async with runtime.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM records") == 0
    finally:
        await runtime.close()


async def test_nesting_page_size_and_cursor_length_are_bounded(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    deep = b"[" * 100 + b"]" * 100
    response = await client.post("/v1/admin/members", content=deep,
                                 headers={**licensed.vendor.headers, "content-type": "application/json"})
    assert response.status_code == 400
    path = records_path_of(licensed)
    assert (await client.get(path, params={"limit": 10_001}, headers=licensed.headers)).status_code == 400
    assert (await client.get(path, params={"limit": 0}, headers=licensed.headers)).status_code == 400
    assert (await client.get(path, params={"cursor": "A" * 5000}, headers=licensed.headers)).status_code == 400


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=1200))
def test_any_cursor_text_is_refused_cleanly(text: str) -> None:
    try:
        cursors.decode(text, {1: b"k" * 32})
    except BadRequest:
        pass


async def test_security_headers_and_no_cors(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    response = await client.get(records_path_of(licensed), params={"limit": 1}, headers={
        **licensed.headers, "Origin": "https://evil.example"})
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in response.headers
    assert "server" not in response.headers
    preflight = await client.options(records_path_of(licensed), headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


async def test_credentials_in_the_url_or_twice_are_refused(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    in_query = await client.get(path, params={"api_key": licensed.key})
    assert in_query.status_code == 400 and licensed.key not in in_query.text
    twice = await client.get(path, headers=[("Authorization", f"Bearer {licensed.key}"),
                                            ("Authorization", f"Bearer {licensed.key}")])
    assert twice.status_code == 400


async def test_a_stale_snapshot_fails_closed(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    runtime.snapshot.ready = False
    response = await client.get(records_path_of(licensed), headers=licensed.headers)
    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("quota", [None, 1000])
async def test_database_unreachable_means_503_and_zero_data_bytes(dsn: str, tmp_path: Path,
                                                                  quota: int | None) -> None:
    proxy = PostgresProxy(dsn)
    await proxy.start()
    runtime = await open_runtime(proxy.dsn, tmp_path, GATEWAY_AUDIT_DEADLINE_SECONDS="1.0")
    try:
        async with client_for(runtime) as client:
            extra = {"records_per_month": quota} if quota else {}
            licensed = await licensed_member(runtime, client, **extra)
            path = records_path_of(licensed)
            assert (await client.get(path, params={"limit": 2}, headers=licensed.headers)).status_code == 200
            runtime.usage.leased.clear()  # force the quota path to need the database again
            await proxy.stop()
            for params in ({"limit": 2}, {}):
                response = await client.get(path, params=params, headers=licensed.headers)
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert b"north" not in response.content and b"south" not in response.content
    finally:
        await proxy.start()
        await runtime.close()
        await proxy.stop()


async def test_an_exhausted_pool_beyond_the_audit_deadline_means_503(dsn: str, tmp_path: Path) -> None:
    runtime = await open_runtime(dsn, tmp_path, GATEWAY_POOL_SIZE="2", GATEWAY_AUDIT_DEADLINE_SECONDS="0.5")
    try:
        async with client_for(runtime) as client:
            licensed = await licensed_member(runtime, client)
            # Hold every connection, the audit writer's own too (tests/test_slow_readers.py shows that the
            # shared pool alone cannot starve it): the audit commit cannot proceed.
            pools = [runtime.pool, runtime.writer.own]
            held = [(pool, await pool.acquire()) for pool in pools for _ in range(pool.get_max_size())]
            try:
                started = asyncio.get_running_loop().time()
                response = await client.get("/v1/datasets", headers=licensed.headers)
                waited = asyncio.get_running_loop().time() - started
            finally:
                for pool, conn in held:
                    await pool.release(conn)
            assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            assert licensed.dataset["id"] not in response.text  # nothing of the answer leaked
            assert waited < 2.0
            assert (await client.get("/v1/datasets", headers=licensed.headers)).status_code == 200
    finally:
        await runtime.close()
