"""Receipt benchmark: what one receipt costs as its log grows, read from hash tiles.

For each log size (default 1,000, 100,000 and 1,000,000 events) a log is written by the real audit
writer (group commits, a checkpoint every 1,000 events, hash tiles stored before each checkpoint, as a
gateway writes them), then `gateway.audit.checkpoints.receipt` is asked for --receipts events picked
at random, one after another, on one connection: the database lookups, the tiles read and the proof
computed, as `GET /v1/receipts/{event}` does behind its authentication. Target: the same latency at
every size (flat, not growing with the log).

Beside it, what a receipt cost before tiles (the log's leaf hashes read and its whole tree built, then
the proof: keys.merkle.MerkleTree over gateway.audit.tiles.leaf_hashes), for --before receipts per size.

Everything runs in this process against a throwaway database (loadtests/common.py bench_database) and
stops by itself.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.audit import checkpoints, tiles
from gateway.audit.events import AuditEvent, EventKind, Outcome
from gateway.audit.writer import AuditWriter, new_log_id
from gateway.runtime import Runtime
from keys.merkle import MerkleTree
from keys.tiles import TiledTree
from loadtests.common import (
    RESULTS_DIR,
    bench_database,
    check_database_url,
    finish,
    machine_info,
    new_master_key,
    open_runtime,
    run,
    say,
)

SIZES = (1_000, 100_000, 1_000_000)
BATCH = 2_000  # events submitted before waiting for their group commit
TARGET_RATIO = 1.5  # largest log's p50 over the smallest's: "flat" within measurement noise

EXAMPLES = """\
examples:
  python -m loadtests.bench_receipts                       # 1k, 100k and 1M events, 300 receipts each
  python -m loadtests.bench_receipts --sizes 1000 100000   # a quicker run
  GATEWAY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m loadtests.bench_receipts

Figures go to stdout and, as JSON, to loadtests/results/receipts.json.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_receipts", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), metavar="N",
                        help="log sizes in events (default 1000 100000 1000000)")
    parser.add_argument("--receipts", type=int, default=300, metavar="K", help="receipts timed per size (default 300)")
    parser.add_argument("--before", type=int, default=3, metavar="K",
                        help="receipts timed the way they were computed before tiles, per size (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "receipts.json", metavar="FILE",
                        help="where to write the JSON results (default loadtests/results/receipts.json)")
    return parser.parse_args(argv)


def _event(vendor_id: uuid.UUID) -> AuditEvent:
    return AuditEvent(kind=EventKind.RECORDS_DELIVER, outcome=Outcome.ALLOW, vendor_id=vendor_id,
                      member_id=uuid.uuid4(), actor="member", credential_id=uuid.uuid4(), records=100, bytes=16_384,
                      sha256="0" * 64, path="/v1/datasets/x/records", status=200, partitions=["13"])


async def write_log(runtime: Runtime, size: int) -> tuple[str, list[uuid.UUID], float]:
    """A log of `size` events written by an AuditWriter; (log id, every event id, events per second)."""
    writer = AuditWriter(runtime.pool, new_log_id(f"receipts-{size}"), "bench", master=runtime.master,
                         batch_max=BATCH, deadline=60)
    await writer.start()
    vendor_id, ids = uuid.uuid4(), []
    started = time.perf_counter()
    try:
        while len(ids) < size:
            events = [_event(vendor_id) for _ in range(min(BATCH, size - len(ids)))]
            waits = [writer.submit(event) for event in events]
            await waits[-1]
            ids += [event.event_id for event in events]
            if len(ids) % 100_000 < BATCH:
                say(f"  {len(ids):,} of {size:,} events")
    finally:
        await writer.close()
    return writer.log_id, ids, size / (time.perf_counter() - started)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive") if len(seconds) > 1 else seconds * 99
    return {"p50_ms": round(1000 * statistics.median(seconds), 3), "p99_ms": round(1000 * cuts[98], 3),
            "count": len(seconds)}


async def measure_size(runtime: Runtime, size: int, receipts: int, before: int) -> dict[str, Any]:
    say(f"writing a log of {size:,} events")
    log_id, ids, rate = await write_log(runtime, size)
    picked = random.Random(size).sample(ids, min(receipts, len(ids)))
    timings, tiles_read = [], []
    async with runtime.pool.acquire() as conn:
        await checkpoints.receipt(conn, picked[0])  # warm: statements prepared
        for event_id in picked:
            started = time.perf_counter()
            body = await checkpoints.receipt(conn, event_id)
            timings.append(time.perf_counter() - started)
            tree_size, seq = body["checkpoint"]["tree_size"], body["seq"]
            tiles_read.append(len(TiledTree.tiles_for(tree_size, lambda t, s=seq, n=tree_size: t.inclusion_proof(s, n))))
        old = []
        for event_id in picked[:before]:
            started = time.perf_counter()
            row = await conn.fetchrow("SELECT log_id, seq FROM audit_events WHERE event_id = $1", event_id)
            covering = await conn.fetchval("SELECT min(tree_size) FROM audit_checkpoints WHERE log_id = $1 "
                                           "AND tree_size > $2", row["log_id"], row["seq"])
            leaves = await tiles.leaf_hashes(conn, log_id, covering)
            MerkleTree([leaves[i:i + 32] for i in range(0, len(leaves), 32)]).inclusion_proof(row["seq"], covering)
            old.append(time.perf_counter() - started)
    return {"events": size, "written_events_per_s": round(rate), "receipt": _percentiles(timings),
            "tiles_read_per_receipt": {"max": max(tiles_read), "mean": round(statistics.mean(tiles_read), 2)},
            "before_tiles": _percentiles(old) if old else None}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_database() as db:
        say(f"database: {db.describe()}")
        runtime = await open_runtime(db, new_master_key())
        try:
            sizes = [await measure_size(runtime, size, args.receipts, args.before) for size in sorted(args.sizes)]
        finally:
            await runtime.close()
    ratio = sizes[-1]["receipt"]["p50_ms"] / sizes[0]["receipt"]["p50_ms"]
    return {"benchmark": "receipts", "command": "python -m loadtests.bench_receipts " + " ".join(sys.argv[1:]),
            "database": {"server": db.server, "version": db.version}, "machine": args.machine, "sizes": sizes,
            "p50_ratio_largest_to_smallest": round(ratio, 2), "target_ratio": TARGET_RATIO,
            "target_met": ratio <= TARGET_RATIO}


def report(results: dict[str, Any]) -> str:
    lines = [(f"receipt benchmark: PostgreSQL {results['database']['version']} ({results['database']['server']}), "
             f"{results['machine']['cpus']} CPUs"), "",
             f"  {'log events':>12}{'p50 ms':>9}{'p99 ms':>9}{'tiles':>7}{'before tiles p50 ms':>22}{'written/s':>11}"]
    for size in results["sizes"]:
        before = size["before_tiles"]
        lines.append(f"  {size['events']:>12,}{size['receipt']['p50_ms']:>9.2f}{size['receipt']['p99_ms']:>9.2f}"
                     f"{size['tiles_read_per_receipt']['max']:>7}"
                     f"{before['p50_ms'] if before else float('nan'):>22.1f}{size['written_events_per_s']:>11,}")
    verdict = "met" if results["target_met"] else "NOT met"
    lines += ["", (f"  p50 at the largest log / at the smallest: {results['p50_ratio_largest_to_smallest']:.2f}x "
                  f"(target <= {results['target_ratio']:g}x: {verdict})")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    args.machine = machine_info()
    return finish(args.output, run(measure(args)), report)


if __name__ == "__main__":
    sys.exit(main())
