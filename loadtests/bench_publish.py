"""Publish benchmark: a vendor's CSV upload through datasets.publish, against plain COPYs of the same data.

The gateway's publish streams the upload through gateway/uploads.py (every value checked against the
declared columns, each row turned into JSON) into the `records` table with COPY. The baseline of the
ratio is the least PostgreSQL can do with the same upload: psql's \\copy of the CSV file into a table
of four text columns with no index (asyncpg's copy_to_table of the file is shown too). Two more
figures split publish's time: uploads.parse_upload alone (the Python share), and psql's \\copy of the
very records publish stores, made beforehand, into a table shaped like `records` (PostgreSQL's share).
Last, the same rows are published from four inputs: the UTF-8 CSV, that CSV in CP932 (charset=shift_jis),
gzip-compressed (Content-Encoding: gzip) and as Parquet, each with its rows/s and the peak memory of
the benchmark process while it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import asyncpg

from gateway import datasets
from gateway.actors import cli_actor
from gateway.demo_data import DEMO_COLUMNS, DEMO_PARTITION_COLUMN
from gateway.upload_bodies import PublishFormat
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
    finish,
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
)

T = TypeVar("T")

PLAIN_TABLE = "plain_demo"
RECORDS_COPY = "records_copy"  # LIKE records INCLUDING ALL: jsonb data, the same primary key
PLAIN_DDL = f"CREATE TABLE {PLAIN_TABLE} (prefecture text, mesh_code text, hour text, population text)"
# Row groups of the Parquet input: what a data-lake writer makes of a large file, several per upload.
PARQUET_ROW_GROUP = 131_072


@dataclass(frozen=True)
class Input:
    """One of the four uploads of the same rows: how datasets.publish is told to read it."""

    name: str
    label: str
    suffix: str
    fmt: PublishFormat
    charset: str | None = None
    gzip: bool = False


INPUTS = (Input("utf8_csv", "UTF-8 CSV", ".csv", "csv"),
          Input("cp932_csv", "CP932 CSV (charset=shift_jis)", ".cp932.csv", "csv", charset="shift_jis"),
          Input("gzip_csv", "gzip CSV (Content-Encoding: gzip)", ".csv.gz", "csv", gzip=True),
          Input("parquet", f"Parquet ({PARQUET_ROW_GROUP:,}-row groups)", ".parquet", "parquet"))

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
    inputs = {item.name: _write_input(csv_path, item) for item in INPUTS}
    async with bench_database() as db:
        say(f"database: {db.describe()}")
        runtime = await open_runtime(db, new_master_key())
        try:
            vendor, dataset = await create_demo_dataset(runtime)
            conn = await asyncpg.connect(db.dsn)
            try:
                await conn.execute(PLAIN_DDL)
                await conn.execute(f"CREATE TABLE {RECORDS_COPY} (LIKE records INCLUDING ALL)")
                records_path = csv_path.with_name("records.copy")
                say(f"writing the same records as COPY text to {records_path.name} (untimed)")
                await _write_records_file(csv_path, records_path, dataset.id)
                runs = _Runs(CpuMeter(await conn.fetchval("SELECT pg_backend_pid()")))
                for attempt in range(1, args.repeat + 1):
                    suffix = f" ({attempt}/{args.repeat})" if args.repeat > 1 else ""

                    say(f"datasets.publish of {csv_path.name}{suffix}")
                    progress = Progress("publishing", csv_bytes)
                    body = _Consumed(csv_path)
                    version = await runs.time("publish", datasets.publish(
                        runtime.writer, cli_actor(vendor.id), dataset, body.chunks(), "csv",
                        max_bytes=runtime.config.max_upload_bytes, progress=progress))
                    progress.finish()
                    runs.consumed.append(body.seconds)
                    _check("publish", version.records, rows)

                    say(f"uploads.parse_upload alone, no database{suffix}")
                    _check("parse_upload", await runs.time("parse_only", _parse_only(csv_path)), rows)

                    say(f"psql \\copy of the records into {RECORDS_COPY}{suffix}")
                    await conn.execute(f"TRUNCATE {RECORDS_COPY}")
                    copy = f"\\copy {RECORDS_COPY} FROM '{records_path}'"
                    await runs.time("psql_copy_records", asyncio.to_thread(timed_psql, db.dsn, copy))
                    _check("COPY", await conn.fetchval(f"SELECT count(*) FROM {RECORDS_COPY}"), rows)

                    say(f"psql \\copy of the CSV into {PLAIN_TABLE}{suffix}")
                    await conn.execute(f"TRUNCATE {PLAIN_TABLE}")
                    copy = f"\\copy {PLAIN_TABLE} FROM '{csv_path}' WITH (FORMAT csv, HEADER true)"
                    await runs.time("psql_copy", asyncio.to_thread(timed_psql, db.dsn, copy))
                    _check("COPY", await conn.fetchval(f"SELECT count(*) FROM {PLAIN_TABLE}"), rows)

                    say(f"asyncpg copy_to_table of the CSV into {PLAIN_TABLE}{suffix}")
                    await conn.execute(f"TRUNCATE {PLAIN_TABLE}")
                    copied = conn.copy_to_table(PLAIN_TABLE, source=csv_path, format="csv", header=True)
                    await runs.time("asyncpg_copy", copied)
                    _check("COPY", await conn.fetchval(f"SELECT count(*) FROM {PLAIN_TABLE}"), rows)

                    for item in INPUTS:
                        say(f"datasets.publish of the {item.label}{suffix}")
                        # The same rows each time (the CP932 and gzip files even have the UTF-8 file's
                        # digest): a duplicate on purpose.
                        with _PeakMemory() as memory:
                            version = await runs.time(f"input_{item.name}", datasets.publish(
                                runtime.writer, cli_actor(vendor.id), dataset, file_chunks(inputs[item.name]),
                                item.fmt, max_bytes=runtime.config.max_upload_bytes, charset=item.charset,
                                gzip=item.gzip, allow_duplicate=True))
                        _check(item.label, version.records, rows)
                        runs.memory.setdefault(item.name, []).append(memory.figures())
                sizes = {"csv_bytes": csv_bytes, "records_copy_bytes": records_path.stat().st_size,
                         "input_bytes": {name: path.stat().st_size for name, path in inputs.items()}}
            finally:
                await conn.close()
        finally:
            await runtime.close()
        return _results(args, db, sizes, runs)


class _Runs:
    """Wall time and CPU seconds of each measured action, by name; every repetition kept."""

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.seconds: dict[str, list[float]] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self.consumed: list[float] = []  # when publish had read (and parsed) the whole upload
        self.memory: dict[str, list[dict[str, int]]] = {}  # per input: _PeakMemory.figures() of each run

    async def time(self, name: str, action: Awaitable[T]) -> T:
        before = self.meter.sample()
        result, seconds = await timed(action)
        self.cpu[name] = CpuMeter.delta(before, self.meter.sample())
        self.seconds.setdefault(name, []).append(seconds)
        return result


def _write_input(csv_path: Path, item: Input) -> Path:
    """The demo CSV as `item` (untimed): re-encoded, compressed or converted, streamed."""
    path = csv_path.with_name(csv_path.stem + item.suffix)
    say(f"writing the same rows as {item.label} to {path.name} (untimed)")
    if item.fmt == "parquet":
        import pyarrow as pa
        import pyarrow.compute  # publish imports it too: loaded here, its memory is not counted there
        import pyarrow.csv
        import pyarrow.parquet

        types = {"prefecture": pa.string(), "mesh_code": pa.string(), "hour": pa.timestamp("s", tz="UTC"),
                 "population": pa.int64()}
        reader = pyarrow.csv.open_csv(csv_path, convert_options=pyarrow.csv.ConvertOptions(column_types=types))
        with pyarrow.parquet.ParquetWriter(path, reader.schema) as writer:
            pending: list[Any] = []
            for batch in reader:
                pending.append(batch)
                if sum(len(b) for b in pending) >= PARQUET_ROW_GROUP:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=PARQUET_ROW_GROUP)
                    pending = []
            if pending:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=PARQUET_ROW_GROUP)
    elif item.gzip:
        with csv_path.open("rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    elif item.charset is not None:
        with csv_path.open(encoding="utf-8", newline="") as source, \
                path.open("w", encoding="cp932", newline="") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    else:
        return csv_path
    return path


class _PeakMemory:
    """The resident memory of this process, sampled every 10 ms while a measurement runs: the peak, and how
    far it rose above the resident memory at the start (what the measured upload itself held)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = self.peak = 0

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._resident())

    def __enter__(self) -> Self:
        self.start = self.peak = self._resident()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._resident())

    def figures(self) -> dict[str, int]:
        return {"rss_at_start_bytes": self.start, "peak_rss_bytes": self.peak,
                "peak_rss_growth_bytes": self.peak - self.start}


def _check(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what} stored {got} rows, expected {expected}")


async def _write_records_file(csv_path: Path, records_path: Path, dataset_id: uuid.UUID) -> None:
    """The records publish stores, as COPY text (dataset_id, partition, version, seq, data): the input of the
    baseline that has PostgreSQL's share of publish alone."""
    with records_path.open("w", encoding="utf-8") as out:
        seq = 0
        async for batch in parse_upload(file_chunks(csv_path), "csv", DEMO_COLUMNS, DEMO_PARTITION_COLUMN):
            # COPY text escapes backslashes; records hold no tab or newline (uploads.py refuses control
            # characters).
            out.write("".join(f"{dataset_id}\t{_escape(partition)}\t1\t{at}\t{_escape(record)}\n"
                              for at, (partition, record) in enumerate(batch, seq)))
            seq += len(batch)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\")


class _Consumed:
    """The upload body, noting when publish has read all of it: what follows is PostgreSQL's tail
    (the rest of the COPY, the version rows, the audit event and the commit)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seconds = path, 0.0

    async def chunks(self) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        async for chunk in file_chunks(self.path):
            yield chunk
        self.seconds = time.perf_counter() - started


async def _parse_only(csv_path: Path) -> int:
    """The Python half of publish: the upload checked and turned into (partition, JSON) rows, then dropped."""
    produced = 0
    async for batch in parse_upload(file_chunks(csv_path), "csv", DEMO_COLUMNS, DEMO_PARTITION_COLUMN):
        produced += len(batch)
    return produced


def _results(args: argparse.Namespace, db: BenchDatabase, sizes: dict[str, int],
             runs: _Runs) -> dict[str, Any]:
    # MB/s are of the CSV upload for every path, so that the columns compare the same work.
    figures = {name: {**throughput(seconds, args.rows, sizes["csv_bytes"]), "cpu_seconds": runs.cpu[name]}
               for name, seconds in runs.seconds.items()}
    inputs = {item.name: {"input": item.label, "upload_bytes": sizes["input_bytes"][item.name],
                          **figures[f"input_{item.name}"],
                          "peak_rss_bytes": max(m["peak_rss_bytes"] for m in runs.memory[item.name]),
                          "peak_rss_growth_bytes": max(m["peak_rss_growth_bytes"] for m in runs.memory[item.name]),
                          "memory_runs": runs.memory[item.name]}
              for item in INPUTS}
    publish = figures["publish"]
    publish["upload_consumed_at_seconds"] = round(statistics.median(runs.consumed), 3)
    how = {
        "psql_copy": f"psql \\copy {PLAIN_TABLE} FROM csv_file WITH (FORMAT csv, HEADER true): 4 text "
                     "columns, no index; psql's start included",
        "asyncpg_copy": f"asyncpg Connection.copy_to_table('{PLAIN_TABLE}', source=csv_file, format='csv', "
                        "header=True)",
        "psql_copy_records": f"psql \\copy {RECORDS_COPY} FROM records_file: the very records publish "
                             "stores (made beforehand by parse_upload, "
                             f"{sizes['records_copy_bytes']:,} bytes of COPY text) into CREATE TABLE ... "
                             "(LIKE records INCLUDING ALL): PostgreSQL's share of publish alone",
    }
    return {
        "benchmark": "publish",
        "command": "python -m loadtests.bench_publish " + " ".join(sys.argv[1:]),
        "rows": args.rows, "repeat": args.repeat, **sizes,
        "database": {"server": db.server, "version": db.version},
        "machine": {**args.machine, "event_loop": event_loop_name()},
        "publish": publish,
        "parse_only": {**figures["parse_only"],
                       "how": "gateway.uploads.parse_upload over the CSV file, rows counted and dropped: the "
                              "Python share of publish"},
        "baselines": {name: {**figures[name], "how": text} for name, text in how.items()},
        "inputs": inputs,
        "ratio": {
            **{f"publish_vs_{name}": round(figures[name]["seconds"] / publish["seconds"], 3) for name in how},
            "meaning": "publish rows/s divided by the baseline's rows/s (1.0 = as fast as that COPY)",
        },
    }


def report(results: dict[str, Any]) -> str:
    rows, size = results["rows"], results["csv_bytes"]
    baselines, ratio = results["baselines"], results["ratio"]
    lines = [(f"publish benchmark: {rows:,} rows, {size / MB:,.1f} MB of CSV, PostgreSQL "
              f"{results['database']['version']} ({results['database']['server']}), "
              f"{results['machine']['cpus']} CPUs"),
             "",
             f"  {'path':<50}{'seconds':>9}{'rows/s':>11}{'MB/s':>7}   CPU seconds"]
    named = [("datasets.publish (CSV -> checked -> records)", results["publish"]),
             ("uploads.parse_upload alone (no database)", results["parse_only"]),
             ("psql \\copy of the same records into records' shape", baselines["psql_copy_records"]),
             ("psql \\copy of the CSV (4 text columns, no index)", baselines["psql_copy"]),
             ("asyncpg copy_to_table of the CSV (same table)", baselines["asyncpg_copy"])]
    for label, figures in named:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu_seconds"].items() if v >= 0.05)
        lines.append(f"  {label:<50}{figures['seconds']:>9.2f}{figures['rows_per_s']:>11,}"
                     f"{figures['mb_per_s']:>7.1f}   {cpu}")
    lines += ["",
              (f"  publish / psql COPY of the CSV:     {ratio['publish_vs_psql_copy']:.2f}x the rows/s "
               f"({1 / ratio['publish_vs_psql_copy']:.1f}x the time)"),
              f"  publish / asyncpg COPY of the CSV:  {ratio['publish_vs_asyncpg_copy']:.2f}x the rows/s",
              (f"  publish / psql COPY of the records: {ratio['publish_vs_psql_copy_records']:.2f}x the "
               f"rows/s ({1 / ratio['publish_vs_psql_copy_records']:.1f}x the time)")]
    publish = results["publish"]
    read = publish["upload_consumed_at_seconds"]
    lines.append(f"  publish had read and parsed the whole upload after {read:.2f} s; the last "
                 f"{publish['seconds'] - read:.2f} s went to finishing the COPY and committing")
    lines += ["", "  the publish figures for the four inputs (the same rows, each published as a new version):",
              f"  {'input':<42}{'upload MB':>10}{'seconds':>9}{'rows/s':>11}{'peak RSS MB':>13}{'(rise)':>9}"]
    for figures in results["inputs"].values():
        lines.append(f"  {figures['input']:<42}{figures['upload_bytes'] / MB:>10.1f}{figures['seconds']:>9.2f}"
                     f"{figures['rows_per_s']:>11,}{figures['peak_rss_bytes'] / MB:>13.1f}"
                     f"{figures['peak_rss_growth_bytes'] / MB:>+9.1f}")
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
    return finish(args.output, results, report)


if __name__ == "__main__":
    sys.exit(main())
