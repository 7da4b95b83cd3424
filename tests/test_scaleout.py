"""Several real gateway processes on one PostgreSQL: propagation, quotas, and faults (kill -9, database
stopped, SIGTERM). Each test starts its processes, drives them for a bounded time and stops them."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.audit import evidence
from gateway.audit.checkpoints import CheckpointSigner
from gateway.audit.verify import Verdict, verify_bundle
from gateway.runtime import Runtime
from tests.factories import licensed_member, records_path_of
from tests.processes import GatewayProcess, LoadResult, PostgresProxy, load

pytestmark = pytest.mark.slow


async def audited_request_ids(runtime: Runtime) -> set[str]:
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT convert_from(entry, 'UTF8')::jsonb -> 'request' ->> 'id' AS id "
                                "FROM audit_events")
    return {row["id"] for row in rows if row["id"]}


async def verified_export(runtime: Runtime, vendor_id: uuid.UUID, folder: Path) -> Verdict:
    """Export the vendor's evidence of the last hour as one bundle and verify it offline."""
    await runtime.writer.checkpoint()
    now = datetime.now(UTC)
    bundle = folder / f"bundle-{uuid.uuid4().hex[:6]}.zip"
    await evidence.export(runtime.pool, vendor_id, now - timedelta(hours=1), now + timedelta(minutes=1), path=bundle,
                          signer=CheckpointSigner(runtime.master))
    verdict = verify_bundle(bundle)
    assert verdict.ok, verdict.line()
    return verdict


async def first_status(url: str, headers: dict[str, str], want: int, timeout: float = 5.0) -> float:
    """Seconds until `url` answers `want`."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - started < timeout:
            try:
                if (await client.get(url, headers=headers)).status_code == want:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.01)
    raise AssertionError(f"{url} did not answer {want} within {timeout} s")


async def test_changes_through_one_instance_reach_all_within_a_second(runtime: Runtime, client: httpx.AsyncClient,
                                                                      dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    gateways = [GatewayProcess(dsn, tmp_path, f"gw{i}") for i in range(2)]
    try:
        await asyncio.gather(*(g.ready() for g in gateways))
        path = records_path_of(licensed) + "?limit=1"
        for g in gateways:
            await first_status(g.url + path, licensed.headers, 200)
        # Suspend the licence through instance 0; instance 1 must refuse within a second.
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{gateways[0].url}/v1/admin/licences/{licensed.licence['id']}/suspend",
                                       json={"reason": "audit"}, headers=licensed.vendor.headers)
            assert response.status_code == 200
        suspended_after = await first_status(gateways[1].url + path, licensed.headers, 403, timeout=1.0)
        # Revoke the member's key through instance 1; instance 0 must refuse within a second.
        async with httpx.AsyncClient() as http:
            keys = (await http.get(f"{gateways[1].url}/v1/admin/keys", headers=licensed.vendor.headers)).json()
            member_key = next(k for k in keys["items"] if k["kind"] == "member")
            await http.post(f"{gateways[1].url}/v1/admin/keys/{member_key['id']}/revoke",
                            headers=licensed.vendor.headers)
        revoked_after = await first_status(gateways[0].url + path, licensed.headers, 401, timeout=1.0)
        print(f"\npropagation: licence suspension {suspended_after * 1000:.0f} ms, "
              f"key revocation {revoked_after * 1000:.0f} ms")
        # Graceful stops sign each process's final checkpoint; then one export holds every instance's log.
        assert [await asyncio.to_thread(g.terminate) for g in gateways] == [0, 0]
    finally:
        for g in gateways:
            g.stop()
    verdict = await verified_export(runtime, licensed.vendor.id, tmp_path)
    assert verdict.logs >= 3  # this test's own writer and the two gateway processes


async def test_a_hard_quota_hammered_through_two_instances_stays_within_the_bound(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    quota = 400
    licensed = await licensed_member(runtime, client, records_per_month=quota)
    await licensed.vendor.publish(licensed.dataset["id"], "".join(f"north,2026-06-01,{i},x\n" for i in range(3000)))
    gateways = [GatewayProcess(dsn, tmp_path, f"gw{i}") for i in range(2)]
    try:
        await asyncio.gather(*(g.ready() for g in gateways))
        started = time.monotonic()
        result = await load([g.url for g in gateways], records_path_of(licensed) + "?limit=5", licensed.headers,
                            seconds=6, workers=12)
        elapsed = time.monotonic() - started
    finally:
        for g in gateways:
            g.stop()
    assert result.ids(429), "the quota was never reached"
    async with runtime.pool.acquire() as conn:
        delivered = await conn.fetchval("SELECT coalesce(sum(records), 0) FROM usage_daily WHERE licence_id = $1",
                                        uuid.UUID(licensed.licence["id"]))
    assert delivered == result.records  # metering agrees with what the clients received
    # Leases (gateway/metering.py): the sum of leases never exceeds the quota, so no overshoot at all; and
    # with both instances driven until they refuse, every lease is spent, so no undershoot either.
    print(f"\nquota {quota}: delivered {delivered} through {len(gateways)} instances in {elapsed:.1f} s")
    assert delivered == quota


async def test_kill_9_under_load_loses_no_event_of_an_answered_request(runtime: Runtime, client: httpx.AsyncClient,
                                                                      dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    gateway = GatewayProcess(dsn, tmp_path, "victim")
    try:
        await gateway.ready()
        stop = asyncio.Event()
        running = asyncio.create_task(load([gateway.url], records_path_of(licensed) + "?limit=3", licensed.headers,
                                           seconds=5, workers=8, stop=stop))
        await asyncio.sleep(1.0)
        gateway.kill()
        await asyncio.sleep(0.3)
        stop.set()
        result = await running
    finally:
        gateway.stop()
    answered = result.ids(200)
    assert len(answered) > 20 and result.errors > 0
    missing = set(answered) - await audited_request_ids(runtime)
    assert not missing, f"{len(missing)} answered requests have no audit event"


async def test_database_stopped_under_load_fails_closed_and_recovers(runtime: Runtime, client: httpx.AsyncClient,
                                                                      dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    proxy = PostgresProxy(dsn)
    await proxy.start()
    gateway = GatewayProcess(proxy.dsn, tmp_path, "through-proxy")
    path = records_path_of(licensed) + "?limit=3"
    try:
        await gateway.ready()
        result = LoadResult()
        running = asyncio.create_task(load([gateway.url], path, licensed.headers, seconds=8, workers=6,
                                           result=result))
        await asyncio.sleep(1.0)
        await proxy.stop()
        stopped_at = len(result.timeline)
        await asyncio.sleep(2.0)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{gateway.url}/readyz", timeout=3)).status_code == 503
        during = {status for _, status in result.timeline[stopped_at + 20:]}
        await proxy.start()
        recovered_after = await first_status(gateway.url + path, licensed.headers, 200, timeout=5.0)
        await running
    finally:
        gateway.stop()
        await proxy.stop()
    assert during <= {503}, f"while the database was down the gateway answered {during}"
    await verified_export(runtime, licensed.vendor.id, tmp_path)  # the chains still verify
    assert result.ids(503)
    missing = set(result.ids(200)) - await audited_request_ids(runtime)
    assert not missing, "a request was answered without its audit event"
    print(f"\nrecovered {recovered_after * 1000:.0f} ms after PostgreSQL came back")


async def test_a_frozen_database_leaves_no_allow_event_and_no_usage_for_a_503(runtime: Runtime,
                                                                           client: httpx.AsyncClient, dsn: str,
                                                                           tmp_path: Path) -> None:
    """PostgreSQL stops answering for longer than the audit deadline, then answers again. The clients
    answered 503 at the deadline must have no event claiming a delivery, and usage must count exactly
    the records the clients answered 200 received (the INSERT in flight used to commit afterwards)."""
    licensed = await licensed_member(runtime, client)
    proxy = PostgresProxy(dsn)
    await proxy.start()
    gateway = GatewayProcess(proxy.dsn, tmp_path, "frozen", GATEWAY_AUDIT_DEADLINE_SECONDS="1")
    path = records_path_of(licensed) + "?limit=3"
    try:
        await gateway.ready()
        result = LoadResult()
        running = asyncio.create_task(load([gateway.url], path, licensed.headers, seconds=7, workers=8,
                                           result=result))
        await asyncio.sleep(1.5)
        proxy.freeze()
        await asyncio.sleep(3.0)
        proxy.thaw()
        await running
        await asyncio.sleep(3.0)  # past every deadline: what the writer held is written or dropped by now
    finally:
        gateway.stop()
        await proxy.stop()
    refused = result.ids(503)
    assert refused, "the freeze produced no 503: the test did not test anything"
    async with runtime.pool.acquire() as conn:
        claimed = await conn.fetch(
            "SELECT convert_from(entry, 'UTF8')::jsonb -> 'request' ->> 'id' AS request_id FROM audit_events "
            "WHERE outcome = 'allow' AND convert_from(entry, 'UTF8')::jsonb -> 'request' ->> 'id' = ANY($1::text[])",
            refused)
        records = await conn.fetchval("SELECT coalesce(sum(records), 0) FROM usage_daily WHERE licence_id = $1",
                                      uuid.UUID(licensed.licence["id"]))
    assert [row["request_id"] for row in claimed] == [], "a client answered 503 has an event claiming a delivery"
    assert records == result.records, f"usage counts {records} records, the clients received {result.records}"
    missing = set(result.ids(200)) - await audited_request_ids(runtime)
    assert not missing, "a request was answered without its audit event"


async def test_sigterm_drains_in_flight_requests_and_the_writer(runtime: Runtime, client: httpx.AsyncClient,
                                                                 dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    gateway = GatewayProcess(dsn, tmp_path, "draining")
    try:
        await gateway.ready()
        running = asyncio.create_task(load([gateway.url], records_path_of(licensed), licensed.headers,
                                           seconds=3, workers=8))
        await asyncio.sleep(1.0)
        exit_code = await asyncio.to_thread(gateway.terminate)
        result = await running
    finally:
        gateway.stop()
    assert exit_code == 0
    assert result.ids(200)
    assert set(result.ids(200)) <= await audited_request_ids(runtime)
    async with runtime.pool.acquire() as conn:
        # Every stream that was answered also has its completion event: the writer drained on shutdown.
        authorised = await conn.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'member:records:deliver' "
                                         "AND log_id LIKE 'draining/%'")
        completed = await conn.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'member:records:stream-end' "
                                        "AND log_id LIKE 'draining/%'")
    assert authorised == completed > 0
