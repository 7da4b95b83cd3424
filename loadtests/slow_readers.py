"""Slow readers benchmark: what twelve slow-reading exports of one member cost another member's pages.

A member ("slow") starts twelve full exports and reads each through a raw socket with a 4 KB
receive buffer, 1 KB every 250 ms (4 KB/s): the gateway spends almost all of every export waiting on
its client. Another member ("other") meanwhile asks for pages of records as fast as W clients can,
each page read from PostgreSQL (the page cache is off: every page needs a pooled connection and an
audit commit). The other member's latencies are measured first alone (the baseline), then with the
twelve slow readers (from a second after each has its first bytes: starting twelve exports at once
costs what twelve big reads cost, however fast their readers), alternately `--repeat` times. Target: the other member's p99 with the slow
readers at most twice its baseline, and no 503.

The gateway runs in its own process (loadtests/gateway_process.py, as bench_export runs it) with
the default settings (8 pooled connections, 2 s audit deadline) but for GATEWAY_PAGE_CACHE_BYTES=0,
on 127.0.0.1. Everything stops by itself: each phase lasts `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from gateway import credentials, datasets, licences, members
from gateway.actors import Actor, cli_actor
from gateway.demo_data import DEMO_COLUMNS
from gateway.runtime import Runtime
from keys.apikeys import KeyKind
from loadtests.bench_export import SubprocessGateway, wait_ready
from loadtests.common import (
    RESULTS_DIR,
    bench_database,
    check_database_url,
    create_demo_dataset,
    event_loop_name,
    file_chunks,
    finish,
    gateway_env,
    machine_info,
    new_master_key,
    open_runtime,
    positive_rows,
    run,
    say,
    write_demo_csv,
)

SLOW_READERS = 12
READ_BYTES = 1024
READ_EVERY = 0.25  # 4 KB/s per slow reader
RECEIVE_BUFFER = 4096
PAGE_LIMIT = 100
TARGET_P99_RATIO = 2.0
# Measuring starts this long after every slow reader has its first bytes: what is measured is the cost
# of exports waiting on their clients, not of starting twelve exports at once (reading and rendering
# the first 5,000 records of each, as any export does however fast its reader).
SETTLE_SECONDS = 1.0

EXAMPLES = """\
examples:
  python -m loadtests.slow_readers                  # 200,000 records, 3 x (10 s alone, 10 s with 12 slow readers)
  python -m loadtests.slow_readers --seconds 5 --repeat 1      # a quick run
  GATEWAY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m loadtests.slow_readers
      # a local server instead: a fresh database lpd_bench_* is created there and dropped afterwards

Figures go to stdout and, as JSON, to loadtests/results/slow_readers.json.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.slow_readers", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive_rows, default=200_000, metavar="N",
                        help="demo records published, all in partition 13 (default 200,000: each export is "
                             "far longer than a slow reader gets through)")
    parser.add_argument("--seconds", type=float, default=10.0, metavar="S",
                        help="length of each phase, alone and with the slow readers (default 10)")
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="K",
                        help="alternate the two phases K times (default 3)")
    parser.add_argument("--workers", type=int, default=4, metavar="W",
                        help="the other member's concurrent clients, each one request at a time (default 4)")
    parser.add_argument("--slow-readers", type=int, default=SLOW_READERS, metavar="R",
                        help=f"slow-reading exports of the first member (default {SLOW_READERS})")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "slow_readers.json", metavar="FILE",
                        help="where to write the JSON results (default loadtests/results/slow_readers.json)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Fixture:
    dataset_id: uuid.UUID
    slow_key: str
    other_key: str


async def set_up(runtime: Runtime, csv_path: Path, rows: int) -> Fixture:
    """One dataset, two members each with a key and an accepted licence for partition 13, all columns."""
    vendor, dataset = await create_demo_dataset(runtime)
    actor = cli_actor(vendor.id)
    say(f"publishing {rows:,} records into partition '13' (datasets.publish)")
    await datasets.publish(runtime.writer, actor, dataset, file_chunks(csv_path), "csv",
                           max_bytes=runtime.config.max_upload_bytes)
    keys = []
    for name in ("Slow Readers Inc", "Other Analytics"):
        member = await members.create(runtime.writer, actor, vendor.id, name)
        credential, api_key = await credentials.issue(runtime.writer, actor, runtime.hasher(), KeyKind.MEMBER,
                                                      vendor.id, member.id, label=f"{name} key")
        licence = await licences.grant(runtime.writer, actor, vendor.id, member.id, dataset.id, "bench terms v1",
                                       {"partitions": ["13"], "columns": [c.name for c in DEMO_COLUMNS],
                                        "valid_from": datetime(2020, 4, 1, tzinfo=UTC)})
        await licences.accept_terms(runtime.writer, Actor(kind="member", vendor_id=vendor.id, member_id=member.id,
                                                          credential_id=credential.id), licence,
                                    1, licences.terms_sha256("bench terms v1"))
        keys.append(api_key)
    return Fixture(dataset.id, keys[0], keys[1])


# -- the clients ------------------------------------------------------------------------------------

@dataclass
class SlowReader:
    status: int = 0
    received: int = 0
    ended_early: bool = False


async def slow_export(url: str, path: str, key: str, reader: SlowReader, started: asyncio.Event,
                      stop: asyncio.Event) -> None:
    """A full export read READ_BYTES every READ_EVERY seconds through a socket with a small window."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    stream, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER // 2)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        await writer.drain()
        head = await stream.readuntil(b"\r\n\r\n")
        reader.status = int(head.split(b" ", 2)[1])
        while not stop.is_set():
            chunk = await stream.read(READ_BYTES)
            if not chunk:
                reader.ended_early = True
                return
            reader.received += len(chunk)
            started.set()  # its first chunk of records is read and rendered: from here on it only waits
            await asyncio.sleep(READ_EVERY)
    finally:
        writer.transport.abort()


@dataclass
class Pages:
    latencies: list[float] = field(default_factory=list)  # of 200 answers, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0


async def page_load(url: str, key: str, workers: int, seconds: float) -> Pages:
    """`workers` clients, each asking for the next page as soon as it has the last, for `seconds`."""
    pages = Pages()
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    async def worker() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get(url, params={"limit": PAGE_LIMIT}, headers=headers)
                except httpx.TransportError:
                    pages.errors += 1
                    continue
                took = time.perf_counter() - started
                pages.statuses[response.status_code] = pages.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    pages.latencies.append(took)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return pages


def percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": round(1000 * statistics.median(latencies), 2), "p99_ms": round(1000 * cuts[98], 2)}


# -- measuring --------------------------------------------------------------------------------------

async def with_slow_readers(args: argparse.Namespace, gateway: SubprocessGateway, fixture: Fixture,
                            observer: asyncpg.Connection) -> tuple[Pages, dict[str, Any]]:
    records = f"/v1/datasets/{fixture.dataset_id}/records"
    readers = [SlowReader() for _ in range(args.slow_readers)]
    starts = [asyncio.Event() for _ in readers]
    stop = asyncio.Event()
    exports = [asyncio.create_task(slow_export(gateway.url, records, fixture.slow_key, reader, begun, stop))
               for reader, begun in zip(readers, starts, strict=True)]
    try:
        await asyncio.wait_for(asyncio.gather(*(begun.wait() for begun in starts)), 30)
        await asyncio.sleep(SETTLE_SECONDS)
        events_before = await observer.fetchval("SELECT count(*) FROM audit_events")
        pinned = asyncio.create_task(_pinned(observer, stop))
        pages = await page_load(gateway.url + records, fixture.other_key, args.workers, args.seconds)
        events = await observer.fetchval("SELECT count(*) FROM audit_events") - events_before
        still_running = sum(not task.done() for task in exports)
    finally:
        stop.set()
    most_pinned = await pinned
    await asyncio.gather(*exports, return_exceptions=True)
    return pages, {"statuses": [r.status for r in readers], "still_running_at_end": still_running,
                   "received_bytes": [r.received for r in readers],
                   "audit_events_committed": events, "most_connections_pinned_in_ClientWrite": most_pinned}


async def _pinned(observer: asyncpg.Connection, stop: asyncio.Event) -> int:
    """The most backends seen at once that had been sending one result for over a second (ClientWrite)."""
    most = 0
    while not stop.is_set():
        most = max(most, await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event = 'ClientWrite' AND now() - query_start > interval '1 second'"))
        await asyncio.sleep(0.2)
    return most


async def measure(args: argparse.Namespace, csv_path: Path) -> dict[str, Any]:
    async with bench_database() as db:
        say(f"database: {db.describe()}")
        master_key = new_master_key()
        runtime = await open_runtime(db, master_key)
        try:
            fixture = await set_up(runtime, csv_path, args.rows)
        finally:
            await runtime.close()
        observer = await asyncpg.connect(db.dsn)
        try:
            await observer.execute("VACUUM (ANALYZE) records")
            gateway = SubprocessGateway(gateway_env(db, master_key, GATEWAY_PAGE_CACHE_BYTES="0"))
            say("starting the gateway (its own process)")
            await gateway.start()
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                    await wait_ready(client, gateway)
                say(f"gateway ready at {gateway.url}; warming up")
                await page_load(f"{gateway.url}/v1/datasets/{fixture.dataset_id}/records", fixture.other_key,
                                args.workers, 2.0)
                phases: dict[str, list[Any]] = {"baseline": [], "slow_readers": []}
                for attempt in range(1, args.repeat + 1):
                    say(f"({attempt}/{args.repeat}) the other member alone, {args.seconds:g} s")
                    phases["baseline"].append((await page_load(
                        f"{gateway.url}/v1/datasets/{fixture.dataset_id}/records", fixture.other_key,
                        args.workers, args.seconds), None))
                    say(f"({attempt}/{args.repeat}) with {args.slow_readers} slow-reading exports, {args.seconds:g} s")
                    phases["slow_readers"].append(await with_slow_readers(args, gateway, fixture, observer))
            finally:
                await gateway.stop()
        finally:
            await observer.close()
    return _results(args, db.server, db.version, phases)


def _results(args: argparse.Namespace, server: str, version: str, phases: dict[str, list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, runs in phases.items():
        latencies = [x for pages, _ in runs for x in pages.latencies]
        statuses: dict[str, int] = {}
        for pages, _ in runs:
            for status, count in pages.statuses.items():
                statuses[str(status)] = statuses.get(str(status), 0) + count
        out[name] = {**percentiles(latencies), "requests": sum(statuses.values()), "statuses": statuses,
                     "transport_errors": sum(pages.errors for pages, _ in runs),
                     "requests_per_s": round(len(latencies) / (args.seconds * len(runs)), 1),
                     "runs": [percentiles(pages.latencies) for pages, _ in runs]}
        if name == "slow_readers":
            out[name]["exports"] = [detail for _, detail in runs]
    ratio = out["slow_readers"]["p99_ms"] / out["baseline"]["p99_ms"]
    refused = out["slow_readers"]["statuses"].get("503", 0) + out["baseline"]["statuses"].get("503", 0)
    return {
        "benchmark": "slow_readers",
        "command": "python -m loadtests.slow_readers " + " ".join(sys.argv[1:]),
        "rows": args.rows, "seconds": args.seconds, "repeat": args.repeat, "workers": args.workers,
        "slow_reader_count": args.slow_readers, "page_limit": PAGE_LIMIT,
        "slow_reader_bytes_per_s": READ_BYTES / READ_EVERY,
        "database": {"server": server, "version": version},
        "machine": {**args.machine, "event_loop": event_loop_name()},
        **out,
        "p99_ratio": round(ratio, 2), "target_p99_ratio": TARGET_P99_RATIO, "responses_503": refused,
        "target_met": ratio <= TARGET_P99_RATIO and refused == 0,
    }


def report(results: dict[str, Any]) -> str:
    base, slow = results["baseline"], results["slow_readers"]
    exports = slow["exports"]
    lines = [(f"slow readers benchmark: {results['workers']} clients of another member asking for pages of "
             f"{results['page_limit']} records (page cache off), alone and with {results['slow_reader_count']} "
             f"exports read at {results['slow_reader_bytes_per_s'] / 1024:.0f} KB/s each; "
             f"{results['repeat']} x {results['seconds']:g} s per phase, PostgreSQL "
             f"{results['database']['version']} ({results['database']['server']}), {results['machine']['cpus']} CPUs"),
             "",
             f"  {'other member':<28}{'p50 ms':>9}{'p99 ms':>9}{'pages/s':>9}   statuses",
             ]
    for label, figures in (("alone (baseline)", base), (f"with {results['slow_reader_count']} slow readers", slow)):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(figures["statuses"].items()))
        errors = f", {figures['transport_errors']} transport errors" if figures["transport_errors"] else ""
        lines.append(f"  {label:<28}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
                     f"{figures['requests_per_s']:>9.1f}   {statuses}{errors}")
    verdict = "met" if results["target_met"] else "NOT met"
    lines += ["",
              (f"  p99 with slow readers / baseline: {results['p99_ratio']:.2f}x (target <= "
              f"{results['target_p99_ratio']:g}x and no 503: {verdict}; 503s: {results['responses_503']})"),
              (f"  slow exports answered 200: {sum(s == 200 for e in exports for s in e['statuses'])} of "
              f"{sum(len(e['statuses']) for e in exports)}; still running at each phase's end: "
              f"{[e['still_running_at_end'] for e in exports]}"),
              (f"  audit events committed during each slow phase: {[e['audit_events_committed'] for e in exports]}; "
              f"most connections held in ClientWrite > 1 s: "
              f"{max(e['most_connections_pinned_in_ClientWrite'] for e in exports)}")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    args.machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="lpd-bench-csv-") as folder:
        csv_path = Path(folder) / f"demo-{args.rows}.csv"
        say(f"writing {args.rows:,} demo rows, all in partition '13', to {csv_path}")
        write_demo_csv(csv_path, args.rows, partition="13")
        results = run(measure(args, csv_path))
    return finish(args.output, results, report)


if __name__ == "__main__":
    sys.exit(main())
