"""Publish benchmark: a vendor's CSV upload through datasets.publish, against a plain COPY of the same file.

The gateway's publish streams the upload through gateway/uploads.py (every value checked against the
declared columns, each row turned into JSON) into the `records` table with COPY. The baseline is the
least PostgreSQL can do with the same bytes: psql's \\copy of the file into a table of four text
columns with no index. A second baseline, asyncpg's copy_to_table of the file, shows what the Python
driver alone costs. The figure to watch is publish's rows/s as a share of psql's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from gateway import datasets
from gateway.actors import cli_actor
from gateway.demo_data import DEMO_COLUMNS, DEMO_PARTITION_COLUMN
from gateway.uploads import parse_upload
from loadtests.common import (
    MB,
    RESULTS_DIR,
    BenchDatabase,
    CpuMeter,
    Progress,
    bench_database,
    check_database_url,
    create_demo_dataset,
    event_loop_name,
    file_chunks,
    machine_info,
    new_master_key,
    open_runtime,
    positive_rows,
    run,
    say,
    throughput,
    timed,
    timed_psql,
    write_demo_csv,
    write_results,
)

PLAIN_TABLE = "plain_demo"
PLAIN_DDL = f"CREATE TABLE {PLAIN_TABLE} (prefecture text, mesh_code text, hour text, population text)"

EXAMPLES = """\
examples:
  python -m loadtests.bench_publish                 # 1,000,000 rows, embedded PostgreSQL
  python -m loadtests.bench_publish --rows 100000   # a quick run
  GATEWAY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m loadtests.bench_publish
      # a local server instead: a fresh database lpd_bench_* is created there and dropped afterwards

Figures go to stdout and, as JSON, to loadtests/results/publish.json; progress to stderr on a terminal.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_publish", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive_rows, default=1_000_000, metavar="N",
                        help="rows of demo data in the CSV file (default 1,000,000; at most 5,000,000)")
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 11), metavar="K",
                        help="measure each path K times and report the median (default 1; each publish adds "
                             "a version of N rows)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "publish.json", metavar="FILE",
                        help="where to write the JSON results (default loadtests/results/publish.json)")
    return parser.parse_args(argv)


async def measure(args: argparse.Namespace, csv_path: Path, csv_bytes: int) -> dict[str, Any]:
    rows = args.rows
    async with bench_database() as db:
        say(f"database: {db.describe()}")
        runtime = await open_runtime(db, new_master_key())
        try:
            vendor, dataset = await create_demo_dataset(runtime)
            conn = await asyncpg.connect(db.dsn)
            try:
                await conn.execute(PLAIN_DDL)
                meter = CpuMeter(await conn.fetchval("SELECT pg_backend_pid()"))
                runs: dict[str, list[float]] = {"publish": [], "parse_only": [], "psql_copy": [],
                                                "asyncpg_copy": []}
                cpu: dict[str, dict[str, float]] = {}
                for attempt in range(1, args.repeat + 1):
                    suffix = f" ({attempt}/{args.repeat})" if args.repeat > 1 else ""

                    say(f"datasets.publish of {csv_path.name}{suffix}")
                    progress = Progress("publishing", csv_bytes)
                    before = meter.sample()
                    version, seconds = await timed(datasets.publish(
                        runtime.writer, cli_actor(vendor.id), dataset, file_chunks(csv_path), "csv",
                        max_bytes=runtime.config.max_upload_bytes, progress=progress))
                    cpu["publish"] = CpuMeter.delta(before, meter.sample())
                    progress.finish()
                    if version.records != rows:
                        raise RuntimeError(f"publish stored {version.records} records, expected {rows}")
                    runs["publish"].append(seconds)

                    say(f"uploads.parse_upload alone, no database{suffix}")
                    before = meter.sample()
                    parsed, seconds = await timed(_parse_only(csv_path))
                    cpu["parse_only"] = CpuMeter.delta(before, meter.sample())
                    if parsed != rows:
                        raise RuntimeError(f"parse_upload produced {parsed} rows, expected {rows}")
                    runs["parse_only"].append(seconds)

                    say(f"psql \\copy into {PLAIN_TABLE}{suffix}")
                    await conn.execute(f"TRUNCATE {PLAIN_TABLE}")
                    before = meter.sample()
                    copy = f"\\copy {PLAIN_TABLE} FROM '{csv_path}' WITH (FORMAT csv, HEADER true)"
                    seconds = await asyncio.to_thread(timed_psql, db.dsn, copy)
                    cpu["psql_copy"] = CpuMeter.delta(before, meter.sample())
                    await _check_plain(conn, rows)
                    runs["psql_copy"].append(seconds)

                    say(f"asyncpg copy_to_table into {PLAIN_TABLE}{suffix}")
                    await conn.execute(f"TRUNCATE {PLAIN_TABLE}")
                    before = meter.sample()
                    _, seconds = await timed(conn.copy_to_table(PLAIN_TABLE, source=csv_path, format="csv",
                                                                header=True))
                    cpu["asyncpg_copy"] = CpuMeter.delta(before, meter.sample())
                    await _check_plain(conn, rows)
                    runs["asyncpg_copy"].append(seconds)
                stored = await conn.fetchval(
                    "SELECT pg_total_relation_size('records')")
            finally:
                await conn.close()
        finally:
            await runtime.close()
        return _results(args, db, csv_bytes, runs, cpu, stored)


async def _parse_only(csv_path: Path) -> int:
    """The Python half of publish: the upload checked and turned into (partition, JSON) rows, then dropped."""
    produced = 0
    async for batch in parse_upload(file_chunks(csv_path), "csv", DEMO_COLUMNS, DEMO_PARTITION_COLUMN):
        produced += len(batch)
    return produced


async def _check_plain(conn: asyncpg.Connection, rows: int) -> None:
    copied = await conn.fetchval(f"SELECT count(*) FROM {PLAIN_TABLE}")
    if copied != rows:
        raise RuntimeError(f"COPY stored {copied} rows, expected {rows}")


def _results(args: argparse.Namespace, db: BenchDatabase, csv_bytes: int, runs: dict[str, list[float]],
             cpu: dict[str, dict[str, float]], records_size: int) -> dict[str, Any]:
    figures = {name: {**throughput(seconds, args.rows, csv_bytes), "cpu_seconds": cpu[name]}
               for name, seconds in runs.items()}
    publish, psql = figures["publish"], figures["psql_copy"]
    return {
        "benchmark": "publish",
        "command": "python -m loadtests.bench_publish " + " ".join(sys.argv[1:]),
        "rows": args.rows, "csv_bytes": csv_bytes, "repeat": args.repeat,
        "database": {"server": db.server, "version": db.version},
        "machine": {**args.machine, "event_loop": event_loop_name()},
        "publish": figures["publish"],
        "parse_only": {**figures["parse_only"],
                       "how": "gateway.uploads.parse_upload over the file, rows counted and dropped: the "
                              "Python part of publish, before COPY"},
        "baselines": {
            "psql_copy": {**psql,
                          "how": f"psql \\copy {PLAIN_TABLE} FROM file WITH (FORMAT csv, HEADER true); "
                                 "4 text columns, no index; psql process start included"},
            "asyncpg_copy": {**figures["asyncpg_copy"],
                             "how": f"asyncpg Connection.copy_to_table('{PLAIN_TABLE}', source=file, "
                                    "format='csv', header=True)"},
        },
        "ratio": {
            "publish_vs_psql_copy": round(psql["seconds"] / publish["seconds"], 3),
            "publish_vs_asyncpg_copy": round(figures["asyncpg_copy"]["seconds"] / publish["seconds"], 3),
            "meaning": "publish rows/s divided by the baseline's rows/s (1.0 = as fast as a plain COPY)",
        },
        "records_table_bytes_after": records_size,
    }


def report(results: dict[str, Any]) -> str:
    rows, size = results["rows"], results["csv_bytes"]
    lines = [(f"publish benchmark: {rows:,} rows, {size / MB:,.1f} MB of CSV, PostgreSQL "
              f"{results['database']['version']} ({results['database']['server']}), "
              f"{results['machine']['cpus']} CPUs"),
             "",
             f"  {'path':<44}{'seconds':>9}{'rows/s':>11}{'MB/s':>8}   CPU seconds",
             ]
    named = [("datasets.publish (gateway, CSV -> records)", results["publish"]),
             ("uploads.parse_upload alone (no database)", results["parse_only"]),
             ("psql \\copy (4 text columns, no index)", results["baselines"]["psql_copy"]),
             ("asyncpg copy_to_table (same table)", results["baselines"]["asyncpg_copy"])]
    for label, figures in named:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu_seconds"].items() if v >= 0.05)
        lines.append(f"  {label:<44}{figures['seconds']:>9.2f}{figures['rows_per_s']:>11,}"
                     f"{figures['mb_per_s']:>8.1f}   {cpu}")
    ratio = results["ratio"]
    lines += ["",
              (f"  publish / psql COPY:    {ratio['publish_vs_psql_copy']:.2f}x the rows/s "
               f"({1 / ratio['publish_vs_psql_copy']:.1f}x the time)"),
              f"  publish / asyncpg COPY: {ratio['publish_vs_asyncpg_copy']:.2f}x the rows/s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    args.machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="lpd-bench-csv-") as folder:
        csv_path = Path(folder) / f"demo-{args.rows}.csv"
        say(f"writing {args.rows:,} demo rows to {csv_path}")
        csv_bytes = write_demo_csv(csv_path, args.rows)
        results = run(measure(args, csv_path, csv_bytes))
    write_results(args.output, results)
    print(report(results))
    say(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
