"""Audit benchmark: the writer's sustained events/s, then export and offline verification of the result.

Writer: N delivery events (shaped like the member API's) are committed by C concurrent "requests",
each awaiting its own commit as the audit middleware does, through the real AuditWriter: group commit
by COPY into the partitioned audit_events table, canonical JSON, SHA-256 leaves, the Merkle compact
range, vendor/member series numbers, and signed checkpoints in the background. Target: >= 50,000 events/s.
By default twice as many requests as a group holds wait at once: a full group is then queued while
the previous one commits, which is the writer's saturation (it numbers and hashes the next group
during the previous one's round trips).

The writer is run --writer-runs times (3), each run a writer and a log of its own; the median run is
reported with all of them. Then the vendor's events (every run's log) are exported as an evidence
bundle and `verify_bundle` checks it offline.
Target: >= 100,000 events/s verified.

    .venv/bin/python -m loadtests.bench_audit [--events 200000] [--concurrency 4000] [--batch-max 2000]

Runs against a throwaway embedded PostgreSQL, or a fresh database on the local server named by
GATEWAY_DATABASE_URL (see loadtests/common.py). Figures go to stdout and loadtests/results/audit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from gateway import migrations
from gateway.audit import evidence
from gateway.audit.checkpoints import CheckpointSigner
from gateway.audit.events import AuditEvent, EventKind, Outcome
from gateway.audit.verify import verify_bundle
from gateway.audit.writer import AuditWriter, new_log_id
from keys.sealing import MasterKey
from loadtests.common import (
    RESULTS_DIR,
    CpuMeter,
    bench_database,
    event_loop_name,
    machine_info,
    run,
    say,
    write_results,
)


async def licensed_members(conn: asyncpg.Connection, count: int) -> tuple[uuid.UUID, uuid.UUID, dict[uuid.UUID, uuid.UUID]]:
    """A vendor, a dataset and `count` members each with a licence (the writer meters deliveries per licence)."""
    vendor, dataset = uuid.uuid4(), uuid.uuid4()
    await conn.execute("INSERT INTO vendors (id, name) VALUES ($1, 'Bench Vendor')", vendor)
    await conn.execute("INSERT INTO datasets (id, vendor_id, name, columns, partition_column) "
                       "VALUES ($1, $2, 'bench', '[]', 'prefecture')", dataset, vendor)
    licences = {uuid.uuid4(): uuid.uuid4() for _ in range(count)}
    for member, licence in licences.items():
        await conn.execute("INSERT INTO members (id, vendor_id, name) VALUES ($1, $2, $3)", member, vendor,
                           f"member-{member.hex[:8]}")
        await conn.execute("INSERT INTO licences (id, vendor_id, member_id, dataset_id, partitions, columns, "
                           "valid_from) VALUES ($1, $2, $3, $4, '{13,14}', '{population}', now())",
                           licence, vendor, member, dataset)
    return vendor, dataset, licences


def delivery_events(count: int, vendor: uuid.UUID, dataset: uuid.UUID,
                    licences: dict[uuid.UUID, uuid.UUID]) -> list[AuditEvent]:
    """Events as the member API makes them: a paged delivery with its request, actor and digest."""
    members = list(licences)
    events = []
    for i in range(count):
        member = members[i % len(members)]
        licence = licences[member]
        events.append(AuditEvent(
            kind=EventKind.RECORDS_DELIVER, outcome=Outcome.ALLOW, request_id=f"req-{i:012d}", method="GET",
            path=f"/v1/datasets/{dataset}/records", status=200, client="203.0.113.7",
            user_agent="analytics-client/2.1 (python-httpx)", credential_id=member, actor="member",
            vendor_id=vendor, member_id=member, dataset_id=dataset, licence_id=licence, terms_version=1,
            versions=[1, 2], partitions=["13", "14"], records=1000, bytes=48_213,
            sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", complete=True))
    return events


async def bench_writer(pool: asyncpg.Pool, master: MasterKey, events: list[AuditEvent], concurrency: int,
                       batch_max: int) -> tuple[dict[str, Any], str]:
    writer = AuditWriter(pool, new_log_id("bench"), "bench", batch_max=batch_max, deadline=60, master=master,
                         checkpoint_events=1000, checkpoint_seconds=2.0)
    await writer.start()
    latencies: list[float] = []
    queue = iter(events)

    async def request() -> None:
        # Each "request" commits one event at a time, as the audit middleware holds a response.
        for event in queue:
            started = time.perf_counter()
            await writer.commit(event)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(request() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    await writer.close()
    latencies.sort()
    return {"events": len(events), "concurrency": concurrency, "batch_max": batch_max, "seconds": round(seconds, 2),
            "events_per_s": round(len(events) / seconds), "batches": writer.batches,
            "events_per_batch": round(len(events) / max(writer.batches, 1)),
            "commit_latency_ms": {"p50": round(1000 * latencies[len(latencies) // 2], 1),
                                  "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 1)},
            "checkpoints_signed": await pool.fetchval("SELECT count(*) FROM audit_checkpoints WHERE log_id = $1",
                                                      writer.log_id)}, writer.log_id


async def main(args: argparse.Namespace) -> dict[str, Any]:
    master = MasterKey.generate()
    async with bench_database() as db:
        conn = await asyncpg.connect(db.dsn)
        try:
            await migrations.apply(conn)
            # Made while the backend lives: the meter finds the server through it.
            meter = CpuMeter(await conn.fetchval("SELECT pg_backend_pid()"))
            vendor, dataset, licences = await licensed_members(conn, 50)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(db.dsn, min_size=2, max_size=8)
        try:
            writer_runs = []
            for run_number in range(1, args.writer_runs + 1):
                # Each run is a writer of its own (a new log), as a restarted gateway process would be.
                events = delivery_events(args.events, vendor, dataset, licences)
                before = meter.sample()
                say(f"writer, run {run_number} of {args.writer_runs}: {args.events:,} events from "
                    f"{args.concurrency:,} concurrent requests")
                figures, _ = await bench_writer(pool, master, events, args.concurrency, args.batch_max)
                figures["cpu_seconds"] = CpuMeter.delta(before, meter.sample())
                say(f"  {figures['events_per_s']:,} events/s")
                writer_runs.append(figures)
            writer = {**sorted(writer_runs, key=lambda r: r["events_per_s"])[len(writer_runs) // 2],
                      "runs_events_per_s": [r["events_per_s"] for r in writer_runs], "runs": writer_runs}
            with tempfile.TemporaryDirectory(prefix="lpd-bench-audit-") as work:
                bundle = Path(work) / "bundle.zip"
                say("export: the vendor's events as an evidence bundle")
                started = time.perf_counter()
                exported = await evidence.export(pool, vendor, events[0].at.replace(year=2000),
                                                 events[0].at.replace(year=2100), path=bundle,
                                                 signer=CheckpointSigner(master))
                export_seconds = time.perf_counter() - started
                say(f"verify: {exported.events:,} events")
                runs, cpu = [], []
                for _ in range(args.verify_runs):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    verdict = verify_bundle(bundle)
                    runs.append(time.perf_counter() - started)
                    cpu.append(time.process_time() - cpu_started)
                    if not verdict.ok:
                        raise SystemExit(f"the bundle did not verify: {verdict.line()}")
                seconds = statistics.median(runs)
                size = bundle.stat().st_size
                if args.keep_bundle:
                    shutil.copyfile(bundle, args.keep_bundle)
        finally:
            await pool.close()
        return {"benchmark": "audit", "database": db.describe(), "event_loop": event_loop_name(),
                "machine": machine_info(), "writer": writer,
                "export": {"events": exported.events, "seconds": round(export_seconds, 2),
                           "events_per_s": round(exported.events / export_seconds), "bundle_mb": round(size / 1e6, 1),
                           "checkpoints": exported.checkpoints},
                "verify": {"events": verdict.events, "seconds": round(seconds, 2), "runs": [round(r, 2) for r in runs],
                           "cpu_seconds": round(statistics.median(cpu), 2),
                           "events_per_s": round(verdict.events / seconds)},
                "targets": {"writer_events_per_s": 50_000, "verify_events_per_s": 100_000}}


def report(results: dict[str, Any]) -> None:
    w, x, v = results["writer"], results["export"], results["verify"]
    print(f"{results['database']}, {results['machine']['cpus']} CPUs, {results['event_loop']} event loop")
    print(f"writer   {w['events_per_s']:>9,} events/s  (median of runs at "
          f"{', '.join(f'{r:,}' for r in w['runs_events_per_s'])}; each {w['events']:,} events, "
          f"{w['concurrency']:,} concurrent, "
          f"{w['events_per_batch']:,} per batch, commit p50 {w['commit_latency_ms']['p50']} ms "
          f"p99 {w['commit_latency_ms']['p99']} ms, {w['checkpoints_signed']} checkpoints)  target 50,000")
    cpu = w["cpu_seconds"]
    print(f"         CPU µs per event: writer process {1e6 * cpu['bench'] / w['events']:.1f}"
          + (f", PostgreSQL {1e6 * cpu['postgres'] / w['events']:.1f}" if "postgres" in cpu else ""))
    print(f"export   {x['events_per_s']:>9,} events/s  ({x['events']:,} events, {x['bundle_mb']} MB bundle)")
    print(f"verify   {v['events_per_s']:>9,} events/s  (median of {len(v['runs'])} runs, {v['cpu_seconds']} s CPU "
          f"for {v['events']:,} events)  target 100,000")
    print(f"load average at start: {results['machine']['load_average_at_start']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  .venv/bin/python -m loadtests.bench_audit                 # 200,000 events, ~30 s\n"
               "  .venv/bin/python -m loadtests.bench_audit --events 50000 --writer-runs 1 --verify-runs 1   # quick\n"
               "  .venv/bin/python -m loadtests.bench_audit --concurrency 64 --batch-max 2000   # 64 requests")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=4000, help="requests committing at once")
    parser.add_argument("--batch-max", type=int, default=2000, help="GATEWAY_AUDIT_BATCH_MAX")
    parser.add_argument("--writer-runs", type=int, default=3, help="writer runs, each a new log; the median is kept")
    parser.add_argument("--verify-runs", type=int, default=3)
    parser.add_argument("--keep-bundle", metavar="PATH", help="also copy the exported bundle there (to profile verify)")
    figures = run(main(parser.parse_args()))
    write_results(RESULTS_DIR / "audit.json", figures)
    report(figures)
