"""Leases, meters and logs that survive the end of a process: kill -9, SIGTERM, a clock a month ahead.

Real gateway processes against the test database, and an in-process serving runtime as the survivor
(every serving process ends the logs of dead ones, gateway/liveness.py). The figures are printed:
how long after kill -9 the dead process's leases were back and its log signed, and how many bytes it
handed over beyond what its log metered (the bound of schemas/audit-format.md §2.1.1).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway import delivery, metering
from gateway.audit import checkpoints
from gateway.config import Config
from gateway.runtime import Runtime
from tests.conftest import client_for, make_config, open_runtime
from tests.factories import Licensed, auth, licensed_member, wait_for_snapshot
from tests.processes import GatewayProcess
from tests.test_in_flight import ALL_COLUMNS, BIG_ROWS

# The bound: a dead instance's leases are back within this.
LEASES_BACK_SECONDS = 10.0
# An export chunk of BIG_ROWS: the bound allows one chunk beyond PROGRESS_BYTES.
CHUNK_BYTES = delivery.EXPORT_CHUNK_RECORDS * len(BIG_ROWS.splitlines()[0]) * 2


@pytest.fixture
async def survivor(dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(dsn, tmp_path / "survivor")
    yield rt
    await rt.close()


async def _big_licence(runtime: Runtime, client: httpx.AsyncClient, **licence: object) -> Licensed:
    licensed = await licensed_member(runtime, client, columns=ALL_COLUMNS, **licence)
    await licensed.vendor.publish(licensed.dataset["id"], BIG_ROWS)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    return licensed


async def _sees_version_2(process: GatewayProcess, licensed: Licensed) -> None:
    async with httpx.AsyncClient(base_url=process.url) as probe:
        for _ in range(500):
            seen = await probe.get(f"/v1/datasets/{licensed.dataset['id']}", headers=licensed.headers)
            if seen.status_code == 200 and len(seen.json()["versions"]) == 2:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the process never saw the published version")


async def _read_slowly(base: str, licensed: Licensed, received: list[int], enough: asyncio.Event,
                       threshold: int) -> bool:
    """Read the export 64 KB every 20 ms, counting into received[0]; True if it broke off."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        try:
            async with http.stream("GET", f"/v1/datasets/{licensed.dataset['id']}/records",
                                   headers=licensed.headers) as response:
                assert response.status_code == 200, await response.aread()
                async for chunk in response.aiter_raw(65_536):
                    received[0] += len(chunk)
                    if received[0] >= threshold:
                        enough.set()
                    await asyncio.sleep(0.02)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return True
    return False


async def _log_of(runtime: Runtime, instance: str) -> str:
    log_id = await runtime.pool.fetchval("SELECT log_id FROM audit_logs WHERE instance = $1", instance)
    assert log_id is not None
    return str(log_id)


async def _metered(runtime: Runtime, log_id: str) -> tuple[int, int]:
    row = await runtime.pool.fetchrow("SELECT coalesce(sum(records), 0)::bigint, coalesce(sum(bytes), 0)::bigint "
                                      "FROM usage_daily WHERE log_id = $1", log_id)
    return row[0], row[1]


async def _until_finished(runtime: Runtime, log_id: str, timeout: float) -> float:
    """Seconds until the log is ended and its final checkpoint recorded."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await runtime.pool.fetchval("SELECT final_size IS NOT NULL FROM audit_logs WHERE log_id = $1", log_id):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"log {log_id} was not finished within {timeout} s")


@pytest.mark.slow
async def test_kill_9_mid_export_returns_the_dead_instances_leases_and_signs_its_log_within_10_s(
        survivor: Runtime, dsn: str, tmp_path: Path) -> None:
    async with client_for(survivor) as local:
        licensed = await _big_licence(survivor, local, records_per_month=200_000)
        victim = GatewayProcess(dsn, tmp_path, "victim")
        try:
            await victim.ready()
            await _sees_version_2(victim, licensed)
            received, enough = [0], asyncio.Event()
            reading = asyncio.create_task(_read_slowly(victim.url, licensed, received, enough, 9 * 1024 * 1024))
            await asyncio.wait_for(enough.wait(), 60)
            victim.kill()
        finally:
            victim.stop()
        assert await reading, "the export ended cleanly although its process was killed"
        log_id = await _log_of(survivor, "victim")
        seconds = await _until_finished(survivor, log_id, 30)

        lease = await survivor.pool.fetchrow("SELECT records_leased, bytes_leased FROM quota_leases WHERE log_id = $1",
                                             log_id)
        records, byte_count = await _metered(survivor, log_id)
        unmetered = received[0] - byte_count
        print(f"\nkill -9 mid-export: log ended, leases back and final checkpoint signed {seconds:.1f} s after the "
              f"kill; the client had {received[0]:,} bytes, the log metered {byte_count:,} ({records:,} records): "
              f"{unmetered:,} bytes unmetered (bound {delivery.PROGRESS_BYTES + CHUNK_BYTES:,})")
        assert seconds <= LEASES_BACK_SECONDS
        assert records > 0 and lease["records_leased"] == records, "the lease did not shrink to what was metered"
        assert unmetered <= delivery.PROGRESS_BYTES + CHUNK_BYTES

        # The rest of the quota is the survivor's to deliver, and the dead log's last event has its receipt.
        page = await local.get(f"/v1/datasets/{licensed.dataset['id']}/records", params={"limit": 10_000},
                               headers=licensed.headers)
        assert page.status_code == 200, page.text
        last = await survivor.pool.fetchval("SELECT event_id FROM audit_events WHERE log_id = $1 "
                                            "ORDER BY seq DESC LIMIT 1", log_id)
        receipt = await local.get(f"/v1/receipts/{last}", headers=licensed.headers)
        assert receipt.status_code == 200, receipt.text
        assert receipt.json()["checkpoint"]["tree_size"] == receipt.json()["seq"] + 1
        async with survivor.pool.acquire() as conn:
            verdict = await checkpoints.check(conn)
        assert next(entry for entry in verdict.logs if entry.log_id == log_id).problem is None


@pytest.mark.slow
async def test_sigterm_ends_a_running_export_with_its_stream_end_event_and_returns_the_lease(
        survivor: Runtime, dsn: str, tmp_path: Path) -> None:
    async with client_for(survivor) as local:
        licensed = await _big_licence(survivor, local, records_per_month=200_000)
        stopping = GatewayProcess(dsn, tmp_path, "stopping")
        try:
            await stopping.ready()
            await _sees_version_2(stopping, licensed)
            received, enough = [0], asyncio.Event()
            reading = asyncio.create_task(_read_slowly(stopping.url, licensed, received, enough, 1024 * 1024))
            await asyncio.wait_for(enough.wait(), 60)
            asked = time.monotonic()
            status = await asyncio.to_thread(stopping.terminate)
            exited = time.monotonic() - asked
        finally:
            stopping.stop()
        assert status == 0, stopping.log.read_text()
        assert await reading, "the client took the cut export for a whole one"
        log_id = await _log_of(survivor, "stopping")
        entry = await survivor.pool.fetchval("SELECT entry FROM audit_events WHERE log_id = $1 "
                                             "AND kind = 'member:records:stream-end'", log_id)
        assert entry is not None, "the stream-end event was not written before the process exited"
        end = orjson.loads(entry)
        assert end["delivery"]["complete"] is False and end["reason"] == "the gateway is shutting down"
        ended = await survivor.pool.fetchrow("SELECT ended_by, final_size FROM audit_logs WHERE log_id = $1", log_id)
        assert ended["ended_by"] == log_id and ended["final_size"] is not None  # ended by itself, signed
        lease = await survivor.pool.fetchval("SELECT records_leased FROM quota_leases WHERE log_id = $1", log_id)
        records, _ = await _metered(survivor, log_id)
        assert lease == records == end["delivery"]["records"]
        print(f"\nSIGTERM mid-export: the process exited {exited:.1f} s after the signal, its stream recorded "
              f"({records:,} records) and its lease returned")


@pytest.mark.slow
async def test_a_dead_logs_uncovered_events_are_a_problem_until_a_gateway_signs_them(
        dsn: str, tmp_path: Path) -> None:
    # Checkpoints only every hour: the events this process commits stay uncovered when it dies.
    victim = GatewayProcess(dsn, tmp_path, "unsigned", GATEWAY_CHECKPOINT_SECONDS="3600",
                            GATEWAY_CHECKPOINT_EVENTS="1000000")
    try:
        await victim.ready()
        async with httpx.AsyncClient(base_url=victim.url) as http:
            for _ in range(5):
                await http.get("/v1/datasets", headers=auth("lpd_m_nonsense"))
        victim.kill()
    finally:
        victim.stop()
    config: Config = make_config(dsn, tmp_path / "cli")
    reader = await Runtime.open(config, serving=False, role="cli")
    try:
        log_id = await _log_of(reader, "unsigned")
        await asyncio.sleep(7)  # longer than a process may stay silent
        async with reader.pool.acquire() as conn:
            entry = next(e for e in (await checkpoints.check(conn)).logs if e.log_id == log_id)
        assert entry.uncovered > 0 and entry.problem is not None and "gateway serve" in entry.problem
    finally:
        await reader.close()
    started = time.monotonic()
    serving = await open_runtime(dsn, tmp_path / "next")
    try:
        seconds = await _until_finished(serving, log_id, 20)
        async with serving.pool.acquire() as conn:
            entry = next(e for e in (await checkpoints.check(conn)).logs if e.log_id == log_id)
        assert entry.problem is None and entry.uncovered == 0
    finally:
        await serving.close()
    print(f"\na dead log's events were signed {time.monotonic() - started:.1f} s after a gateway started "
          f"({seconds:.1f} s of waiting for the log's end)")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed (.ci/run installs it)")
async def test_an_instance_a_month_ahead_cannot_overshoot_a_hard_quota(survivor: Runtime, dsn: str,
                                                                       tmp_path: Path) -> None:
    rows = "".join(f"north,2026-06-01,{i},\n" for i in range(5_000))
    async with client_for(survivor) as local:
        licensed = await licensed_member(survivor, local, records_per_month=5_000)
        await licensed.vendor.publish(licensed.dataset["id"], rows)
        await wait_for_snapshot(survivor, lambda: survivor.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                                .latest_version == 2)
        taken = 0
        url: str | None = f"/v1/datasets/{licensed.dataset['id']}/records?limit=10000"
        while url is not None and taken < 5_000:
            page = await local.get(url, headers=licensed.headers)
            assert page.status_code == 200, page.text
            taken += len(page.content.splitlines())
            url = page.links.get("next", {}).get("url")
        assert taken == 5_000
        ahead = GatewayProcess(dsn, tmp_path, "ahead", wrapper=("faketime", "-f", "+31d"))
        try:
            await ahead.ready()
            async with httpx.AsyncClient(base_url=ahead.url) as http:
                refused = await http.get(f"/v1/datasets/{licensed.dataset['id']}/records", params={"limit": 100},
                                         headers=licensed.headers)
                usage = await http.get("/v1/usage", headers=licensed.headers)
        finally:
            ahead.stop()
        assert refused.status_code == 429, refused.text
        assert "reached" in refused.json()["detail"]
        assert usage.json()["current"][0]["period"] == survivor.usage.month.isoformat()[:7]


async def test_quota_held_by_another_instance_is_refused_as_such_and_comes_back_when_idle(
        survivor: Runtime, dsn: str, tmp_path: Path) -> None:
    holder = await open_runtime(dsn, tmp_path / "holder")
    try:
        async with client_for(survivor) as local:
            licensed = await licensed_member(survivor, local, records_per_month=5_000)
            licence_id = uuid.UUID(licensed.licence["id"])
            await wait_for_snapshot(holder, lambda: licence_id in holder.snapshot.licences
                                    and holder.snapshot.licences[licence_id].accepted_terms)
            # The other instance holds the whole month's quota for a delivery in progress.
            await holder.usage.lease(holder.pool, holder.snapshot.licences[licence_id], 5_000, 0)
            holder.usage.count(licence_id, 0, 0)
            refused = await local.get(f"/v1/datasets/{licensed.dataset['id']}/records", params={"limit": 10},
                                      headers=licensed.headers)
            assert refused.status_code == 429, refused.text
            assert "held by deliveries in progress" in refused.json()["detail"]
            assert refused.headers["retry-after"] == str(metering.LEASE_RETRY_SECONDS)
            usage = await local.get("/v1/usage", headers=licensed.headers)
            assert usage.json()["current"][0]["records_left"] == 5_000
            # Unused, the lease goes back: within the Retry-After the member is served.
            await asyncio.sleep(metering.LEASE_RETRY_SECONDS)
            served = await local.get(f"/v1/datasets/{licensed.dataset['id']}/records", params={"limit": 10},
                                     headers=licensed.headers)
            assert served.status_code == 200, served.text
    finally:
        await holder.close()
