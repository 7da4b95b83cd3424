"""A slow reader costs only itself, and a stalled PostgreSQL costs a page read its deadline, not 60 s.

On real gateway processes and sockets: twelve exports of one member read a few KB/s through raw
sockets with small receive buffers, while another member's uncached page requests run; PostgreSQL is
frozen (tests/processes.py `PostgresProxy.freeze()`) or its `records` table locked while a page is
read; and every connection of the shared pool is held while the audit writer still commits.
Speed is measured by `python -m loadtests.slow_readers`; these tests assert correctness bounds only.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from gateway.audit.events import EventKind
from gateway.audit.writer import OWN_CONNECTIONS, AuditWriter
from gateway.runtime import Runtime
from tests.conftest import client_for, open_runtime
from tests.factories import ROWS, Licensed, licensed_member, records_path_of
from tests.processes import GatewayProcess, LoadResult, PostgresProxy, load

DEADLINE = 1.0
# A correctness bound, not a benchmark: the page read's deadline, its 503's own audit deadline, slack.
BOUND = 2 * DEADLINE + 1.0
SLOW_READERS = 12
# Records of about 270 bytes, 20,000 of them: each export is four chunks (5.4 MB), far more than a
# client reading 4 KB/s takes in the seconds the test runs.
BIG_ROWS = "".join(f"north,2026-06-01,{i},{'x' * 250}\n" for i in range(20_000))
ALL_COLUMNS = ["area", "day", "count", "secret_note"]


def _request_id() -> str:
    return f"slow-{uuid.uuid4().hex}"


async def _events_of(runtime: Runtime, request_id: str) -> list[dict[str, object]]:
    rows = await runtime.pool.fetch(
        "SELECT entry FROM audit_events WHERE convert_from(entry, 'UTF8')::jsonb -> 'request' ->> 'id' = $1",
        request_id)
    return [orjson.loads(row["entry"]) for row in rows]


async def _records_used(runtime: Runtime, licensed: Licensed) -> int:
    used: int = await runtime.pool.fetchval("SELECT coalesce(sum(records), 0) FROM usage_daily WHERE licence_id = $1",
                                            uuid.UUID(licensed.licence["id"]))
    return used


async def _timed_page(http: httpx.AsyncClient, licensed: Licensed, request_id: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    try:
        response = await http.get(records_path_of(licensed), params={"limit": 3},
                                  headers={**licensed.headers, "X-Request-Id": request_id}, timeout=BOUND + 3)
    except httpx.TimeoutException:
        raise AssertionError(f"the page read had no answer within {BOUND + 3:.0f} s: it waits for the pool's "
                             "command timeout, not the audit deadline") from None
    return response, time.monotonic() - started


async def _until_served(url: str, licensed: Licensed) -> None:
    """Until the gateway at `url` has the dataset's second version in its snapshot."""
    async with httpx.AsyncClient(base_url=url) as probe:
        path = f"/v1/datasets/{licensed.dataset['id']}"
        while len((await probe.get(path, headers=licensed.headers)).json().get("versions", [])) < 2:
            await asyncio.sleep(0.05)


async def _stream_ends(runtime: Runtime, instance: str, wanted: int = 1) -> list[dict[str, Any]]:
    """The records stream-end events of an instance's log, once `wanted` of them are there (or 20 s passed)."""
    ends: list[dict[str, Any]] = []
    for _ in range(200):
        ends = [orjson.loads(row["entry"]) for row in await runtime.pool.fetch(
            "SELECT entry FROM audit_events WHERE kind = $1 AND log_id LIKE $2",
            EventKind.RECORDS_STREAM_END.value, f"{instance}/%")]
        if len(ends) >= wanted:
            break
        await asyncio.sleep(0.1)
    return ends


def _assert_refused_closed(response: httpx.Response, waited: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get("retry-after"), "a 503 must say when to retry"
    assert "nothing was delivered" in response.json()["detail"]
    assert b"north" not in response.content and b"south" not in response.content
    assert waited < BOUND, f"503 after {waited:.2f} s: beyond {BOUND:.1f} s with an audit deadline of {DEADLINE} s"


@pytest.mark.slow
async def test_a_page_read_on_a_frozen_database_answers_503_within_the_audit_deadline_and_leaves_no_usage(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    """PostgreSQL stops answering altogether. The audit write already sent when it froze (a listing's,
    here) is waited for, by design (schemas/audit-format.md §2.1.1); a page read asked after it fails at
    its own deadline and its 503 at its event's: nothing waits for the pool's 60 s command timeout."""
    licensed = await licensed_member(runtime, client)
    proxy = PostgresProxy(dsn)
    await proxy.start()
    gateway = GatewayProcess(proxy.dsn, tmp_path, "frozen-read", GATEWAY_AUDIT_DEADLINE_SECONDS=str(DEADLINE),
                             GATEWAY_PAGE_CACHE_BYTES="0")
    probe = _request_id()
    try:
        await gateway.ready()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            warm, _ = await _timed_page(http, licensed, _request_id())
            assert warm.status_code == 200 and warm.content.count(b"\n") == 3
            proxy.freeze()
            listing = asyncio.create_task(http.get("/v1/datasets", headers=licensed.headers))
            await asyncio.sleep(0.3)  # its audit write is on the wire, waiting for the frozen server
            response, waited = await _timed_page(http, licensed, probe)
            proxy.thaw()
            assert (await listing).status_code == 200  # that write committed once PostgreSQL answered
        await asyncio.sleep(2 * DEADLINE)
    finally:
        gateway.stop()
        await proxy.stop()
    _assert_refused_closed(response, waited)
    assert [e for e in await _events_of(runtime, probe) if e["outcome"] == "allow"] == []
    assert await _records_used(runtime, licensed) == 3, "usage counts only the page that was delivered"


@pytest.mark.slow
async def test_a_page_read_stalled_on_a_lock_answers_503_within_the_deadline_and_its_connection_is_not_reused(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    """`records` is locked (as by a VACUUM FULL or a migration): the page read waits on the lock, the audit
    log does not. The read is abandoned at the deadline, its 503 is recorded as such, and the connection
    it abandoned is closed, not pooled: once the lock goes, every page answers again."""
    licensed = await licensed_member(runtime, client)
    gateway = GatewayProcess(dsn, tmp_path, "locked-read", GATEWAY_AUDIT_DEADLINE_SECONDS=str(DEADLINE),
                             GATEWAY_PAGE_CACHE_BYTES="0")
    probe = _request_id()
    locker = await asyncpg.connect(dsn)
    try:
        await gateway.ready()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            warm, _ = await _timed_page(http, licensed, _request_id())
            assert warm.status_code == 200
            async with locker.transaction():
                await locker.execute("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
                response, waited = await _timed_page(http, licensed, probe)
                # The audit writer is not behind the lock: a request needing no records is answered.
                assert (await http.get("/v1/datasets", headers=licensed.headers)).status_code == 200
            after = [await _timed_page(http, licensed, _request_id()) for _ in range(10)]
    finally:
        await locker.close()
        gateway.stop()
    _assert_refused_closed(response, waited)
    assert "could not be read in time" in response.json()["detail"]
    assert [answer.status_code for answer, _ in after] == [200] * 10
    events = await _events_of(runtime, probe)
    assert [(e["outcome"], e["request"]["status"]) for e in events] == [("error", 503)], events  # type: ignore[index]
    assert await _records_used(runtime, licensed) == 3 * 11


async def test_with_every_shared_connection_held_the_audit_writer_still_commits(dsn: str, tmp_path: Path) -> None:
    """Deliveries can hold every connection of the shared pool; the writer has connections of its own.
    A request that needs no records is answered; a page read fails closed at the deadline."""
    runtime = await open_runtime(dsn, tmp_path, GATEWAY_POOL_SIZE="2", GATEWAY_AUDIT_DEADLINE_SECONDS="0.5")
    try:
        async with client_for(runtime) as client:
            licensed = await licensed_member(runtime, client)
            held = [await runtime.pool.acquire() for _ in range(2)]
            try:
                # Bounded here, or a starved request would wait for connections this test holds until it ends.
                listed = await asyncio.wait_for(client.get("/v1/datasets", headers=licensed.headers), 5)
                started = time.monotonic()
                page = await asyncio.wait_for(client.get(records_path_of(licensed), params={"limit": 2},
                                                         headers=licensed.headers), 5)
                waited = time.monotonic() - started
            finally:
                for conn in held:
                    await runtime.pool.release(conn)
            assert listed.status_code == 200, listed.text
            assert page.status_code == 503 and "nothing was delivered" in page.json()["detail"]
            assert waited < 2 * 0.5 + 1.0
            assert (await client.get(records_path_of(licensed), params={"limit": 2},
                                     headers=licensed.headers)).status_code == 200
    finally:
        await runtime.close()


async def test_the_gateways_writer_has_connections_of_its_own(runtime: Runtime) -> None:
    assert runtime.writer.own is not runtime.pool
    assert runtime.writer.own.get_max_size() == OWN_CONNECTIONS
    # Without one (the writer tests and benchmarks), a writer uses the pool it is given.
    assert AuditWriter(runtime.pool, "unit/shared", "unit").own is runtime.pool


# -- twelve slow readers ----------------------------------------------------------------------------

@dataclass
class SlowReader:
    """An export read through a raw socket with a 4 KB receive buffer, 1 KB every 250 ms (4 KB/s)."""

    status: int = 0
    received: int = 0


async def _slow_export(url: str, path: str, key: str, reader: SlowReader, started: asyncio.Event,
                       stop: asyncio.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so that the window the gateway sees stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    stream, writer = await asyncio.open_connection(sock=sock, limit=2048)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        await writer.drain()
        head = await stream.readuntil(b"\r\n\r\n")
        reader.status = int(head.split(b" ", 2)[1])
        started.set()
        while not stop.is_set():
            chunk = await stream.read(1024)
            if not chunk:
                return
            reader.received += len(chunk)
            await asyncio.sleep(0.25)
    finally:
        writer.transport.abort()


async def _pinned_connections(observer: asyncpg.Connection, stop: asyncio.Event) -> int:
    """The most backends seen at once that had been sending one result to the gateway for over a second."""
    most = 0
    while not stop.is_set():
        pinned = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event = 'ClientWrite' AND now() - query_start > interval '1 second'")
        most = max(most, pinned)
        await asyncio.sleep(0.2)
    return most


@pytest.fixture
async def two_members(runtime: Runtime, client: httpx.AsyncClient) -> AsyncIterator[tuple[Licensed, Licensed]]:
    slow = await licensed_member(runtime, client, columns=ALL_COLUMNS)
    await slow.vendor.publish(slow.dataset["id"], BIG_ROWS)
    other = await licensed_member(runtime, client)
    yield slow, other


@pytest.mark.slow
async def test_twelve_slow_exports_of_one_member_cost_another_member_nothing(
        runtime: Runtime, two_members: tuple[Licensed, Licensed], dsn: str, tmp_path: Path) -> None:
    slow, other = two_members
    gateway = GatewayProcess(dsn, tmp_path, "slow-readers", GATEWAY_PAGE_CACHE_BYTES="0")
    readers = [SlowReader() for _ in range(SLOW_READERS)]
    stop = asyncio.Event()
    observer = await asyncpg.connect(dsn)
    try:
        await gateway.ready()
        await _until_served(gateway.url, slow)  # the big version reached the gateway's snapshot
        starts = [asyncio.Event() for _ in readers]
        exports = [asyncio.create_task(_slow_export(gateway.url, records_path_of(slow), slow.key, reader, begun, stop))
                   for reader, begun in zip(readers, starts, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(begun.wait() for begun in starts)), 10)
        watching = asyncio.create_task(_pinned_connections(observer, stop))
        result = await load([gateway.url], records_path_of(other) + "?limit=5", other.headers, seconds=6, workers=8,
                            result=LoadResult())
        running = [not task.done() for task in exports]
        stop.set()
        pinned = await watching
        await asyncio.gather(*exports)
        # Each cut export's stream-end event is written (the client left): the writer still commits.
        ends = len(await _stream_ends(runtime, "slow-readers", SLOW_READERS))
    finally:
        stop.set()
        await observer.close()
        gateway.stop()
    assert [reader.status for reader in readers] == [200] * SLOW_READERS
    assert all(running), "an export ended before the other member's requests did: nothing was tested"
    assert all(0 < reader.received < len(BIG_ROWS) // 2 for reader in readers)
    assert set(result.by_status) == {200} and result.errors == 0, (
        f"the other member got {sorted((s, len(ids)) for s, ids in result.by_status.items())}, "
        f"{result.errors} transport errors")
    assert len(result.ids(200)) > 50
    assert pinned == 0, f"{pinned} connections were held while a slow client read"
    answered = set(result.ids(200))
    audited = {row["id"] for row in await runtime.pool.fetch(
        "SELECT convert_from(entry, 'UTF8')::jsonb -> 'request' ->> 'id' AS id FROM audit_events "
        "WHERE outcome = 'allow' AND log_id LIKE 'slow-readers/%'")}
    assert answered <= audited, "a page was answered without its audit event"
    assert ends == SLOW_READERS, f"{ends} of {SLOW_READERS} stream-end events were written"


# -- a reader slower than the statement timeout ------------------------------------------------------

STATEMENT_TIMEOUT = 2.0
READER_BYTES_PER_SECOND = 100_000


async def _read_whole_response(url: str, path: str, key: str, per_second: int) -> tuple[int, bytes, bool]:
    """GET `path` through a socket with a 4 KB receive buffer, read at `per_second` bytes a second to the
    end. Returns the status, the de-chunked body and whether the body ended with its terminating chunk."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    stream, writer = await asyncio.open_connection(sock=sock, limit=4096)
    raw = bytearray()
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        step = per_second // 10
        while chunk := await stream.read(step):
            raw += chunk
            await asyncio.sleep(0.1 * len(chunk) / step)
    finally:
        writer.transport.abort()
    head, _, chunked = bytes(raw).partition(b"\r\n\r\n")
    body, terminated = bytearray(), False
    while chunked:
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            terminated = True
            break
        body += rest[:size]
        chunked = rest[size + 2:]
    return int(head.split(b" ", 2)[1]), bytes(body), terminated


@pytest.mark.slow
async def test_a_reader_slower_than_the_statement_timeout_gets_the_whole_export(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    """Read at 100 KB/s, an export lasts several times the statement timeout: it still arrives whole,
    with its terminating chunk, and its stream-end event says complete with every record. (Streamed by
    one long statement, the timeout would cut it, and the cut would look like a clean end.)"""
    rows = 3_000
    licensed = await licensed_member(runtime, client, columns=ALL_COLUMNS)
    await licensed.vendor.publish(licensed.dataset["id"], "".join(BIG_ROWS.splitlines(keepends=True)[:rows]))
    gateway = GatewayProcess(dsn, tmp_path, "slow-whole", GATEWAY_STATEMENT_TIMEOUT_SECONDS=str(STATEMENT_TIMEOUT),
                             GATEWAY_PAGE_CACHE_BYTES="0")
    try:
        await gateway.ready()
        await _until_served(gateway.url, licensed)
        started = time.monotonic()
        status, body, terminated = await _read_whole_response(gateway.url, records_path_of(licensed), licensed.key,
                                                              READER_BYTES_PER_SECOND)
        took = time.monotonic() - started
        ends = await _stream_ends(runtime, "slow-whole")
    finally:
        gateway.stop()
    assert took > 3 * STATEMENT_TIMEOUT, f"the export took {took:.1f} s: too fast to test the timeout"
    assert status == 200 and terminated, "the export ended without its terminating chunk"
    # This version and the factory's first, in the licence's partitions.
    published = rows + sum(line.split(",")[0] in ("north", "south") for line in ROWS.splitlines())
    assert body.count(b"\n") == published
    [end] = ends
    assert end["delivery"] == {"records": published, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                               "complete": True}, end


@pytest.mark.slow
async def test_an_export_whose_database_stops_answering_ends_as_an_error_and_is_recorded_incomplete(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    """PostgreSQL freezes half a second into an export read at 2 MB/s: the client's response ends
    without its terminating chunk (an error, never a short 200), and once PostgreSQL answers again the
    stream-end event says `complete: false` with the bytes handed to the client."""
    licensed = await licensed_member(runtime, client, columns=ALL_COLUMNS)
    await licensed.vendor.publish(licensed.dataset["id"], BIG_ROWS)
    proxy = PostgresProxy(dsn)
    await proxy.start()
    gateway = GatewayProcess(proxy.dsn, tmp_path, "frozen-export", GATEWAY_PAGE_CACHE_BYTES="0")
    try:
        await gateway.ready()
        await _until_served(gateway.url, licensed)
        asyncio.get_running_loop().call_later(0.5, proxy.freeze)
        status, body, terminated = await _read_whole_response(gateway.url, records_path_of(licensed), licensed.key,
                                                              2_000_000)
        proxy.thaw()
        ends = await _stream_ends(runtime, "frozen-export")
    finally:
        proxy.thaw()
        gateway.stop()
        await proxy.stop()
    assert status == 200 and not terminated, (
        f"the export ended cleanly after {len(body):,} bytes although its database stopped answering")
    [end] = ends
    assert end["delivery"]["complete"] is False and end["reason"], end
    assert len(body) <= end["delivery"]["bytes"] < len(BIG_ROWS) * 2
