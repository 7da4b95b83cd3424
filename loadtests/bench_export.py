"""Export benchmark: a member's full export of one partition over HTTP, against psql's raw COPY of it.

N records are published into ONE partition, a member is licensed for it and accepts the terms, and
the member downloads the whole partition as NDJSON and as CSV through the real HTTP path: uvicorn on
127.0.0.1, authentication, licence check, audit events, delivery.stream's COPY. The client is httpx,
streaming, counting records and bytes and discarding the data. The baseline is psql running the same
query as a plain COPY ... TO STDOUT > /dev/null on the same server. Target: the export reaches at
least half of the raw COPY's records/s.

The gateway runs in its own process by default (as `gateway serve` does; its peak RSS is read from
/proc and reported by the process itself through resource.getrusage), or with --in-process under
uvicorn in the benchmark's own event loop, where the client then competes with it for that loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
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
    gateway_env,
    machine_info,
    new_master_key,
    open_runtime,
    positive_rows,
    psql_command,
    run,
    say,
    throughput,
    timed,
    timed_psql,
    write_demo_csv,
)

FORMATS = ("ndjson", "csv")
TARGET_RATIO = 0.5
DOWNLOAD_TIMEOUT = 600.0

EXAMPLES = """\
examples:
  python -m loadtests.bench_export                  # 1,000,000 records in partition 13, 3 runs each
  python -m loadtests.bench_export --rows 100000 --repeat 1
  python -m loadtests.bench_export --in-process     # gateway under uvicorn in this process's event loop
  GATEWAY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m loadtests.bench_export
      # a local server instead: a fresh database lpd_bench_* is created there and dropped afterwards

Figures go to stdout and, as JSON, to loadtests/results/export.json; progress to stderr on a terminal.
"""


def _partition(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", text):
        raise argparse.ArgumentTypeError("use 1-50 letters, digits, '-' or '_', e.g. 13")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_export", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive_rows, default=1_000_000, metavar="N",
                        help="records published into the partition (default 1,000,000; at most 5,000,000)")
    parser.add_argument("--partition", type=_partition, default="13",
                        help="the partition every record goes to (default 13, Tokyo)")
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="K",
                        help="time each export K times, alternating with the baseline; medians are reported "
                             "(default 3)")
    parser.add_argument("--in-process", action="store_true",
                        help="serve the gateway from this process (uvicorn.Server in the same event loop) "
                             "instead of its own process")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the untimed first pass that checks the export is byte for byte the raw "
                             "COPY (it also warms the caches)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "export.json", metavar="FILE",
                        help="where to write the JSON results (default loadtests/results/export.json)")
    return parser.parse_args(argv)


# -- setting up -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fixture:
    dataset_id: uuid.UUID
    api_key: str
    publish_seconds: float


async def set_up(runtime: Runtime, csv_path: Path, csv_bytes: int, rows: int, partition: str) -> Fixture:
    """Publish the file, then a member with a key and an accepted licence for it (as gateway/demo.py does)."""
    vendor, dataset = await create_demo_dataset(runtime)
    actor = cli_actor(vendor.id)
    say(f"publishing {rows:,} records into partition {partition!r} (datasets.publish)")
    progress = Progress("publishing", csv_bytes)
    version, seconds = await timed(datasets.publish(
        runtime.writer, actor, dataset, file_chunks(csv_path), "csv",
        max_bytes=runtime.config.max_upload_bytes, progress=progress))
    progress.finish()
    if version.records != rows or list(version.partitions) != [partition]:
        raise RuntimeError(f"publish stored {version.records} records in {list(version.partitions)}")
    member = await members.create(runtime.writer, actor, vendor.id, "Bench Analytics")
    credential, api_key = await credentials.issue(runtime.writer, actor, runtime.hasher(), KeyKind.MEMBER,
                                                  vendor.id, member.id, label="bench member key")
    # Hard monthly quotas, as the demo's licences have, so that metering is on the measured path, with
    # room for every export of the run (at most 22 of N records of about 100 bytes).
    licence = await licences.grant(runtime.writer, actor, vendor.id, member.id, dataset.id, "bench terms v1",
                                   {"partitions": [partition], "columns": [c.name for c in DEMO_COLUMNS],
                                    "valid_from": datetime(2020, 4, 1, tzinfo=UTC),
                                    "records_per_month": 100 * rows, "bytes_per_month": 100_000 * rows})
    member_actor = Actor(kind="member", vendor_id=vendor.id, member_id=member.id, credential_id=credential.id)
    await licences.accept_terms(runtime.writer, member_actor, licence, 1, licences.terms_sha256("bench terms v1"))
    return Fixture(dataset.id, api_key, seconds)


# -- the gateway ------------------------------------------------------------------------------------

def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB from /proc; empty where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {name: int(value) for name, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE)}


class SubprocessGateway:
    """The gateway in its own process (loadtests/gateway_process.py), on the benchmark database."""

    mode = "subprocess"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.pid = 0
        self.exit_report: dict[str, Any] = {}

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | self.env
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.gateway_process", env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"the gateway process exited ({await self.process.wait()}) before listening")
        hello = json.loads(line)
        self.url, self.pid = f"http://127.0.0.1:{hello['port']}", hello["pid"]

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the process shuts down gracefully at the end of its stdin
        try:
            rest = await asyncio.wait_for(process.stdout.read(), 30)
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            say("the gateway process did not stop within 30 s: killing it")
            process.kill()
            await process.wait()
            return
        for line in rest.decode().splitlines():
            if line.startswith("{"):
                self.exit_report = json.loads(line)

    def memory(self) -> dict[str, int]:
        return _proc_status(self.pid)


class InProcessGateway:
    """build_app(runtime) under uvicorn.Server, in this process's event loop."""

    mode = "in-process"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = ""
        self.pid = 0
        self.exit_report: dict[str, Any] = {}
        self.runtime: Runtime | None = None
        self.server: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        from gateway import config as config_module
        from gateway.app import build_app

        self.runtime = await Runtime.open(config_module.load(self.env), serving=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(
            build_app(self.runtime), lifespan="off", log_level="warning", access_log=False,
            server_header=False, proxy_headers=False))
        self.task = asyncio.create_task(self.server.serve(sockets=[listener]))
        self.url, self.pid = f"http://127.0.0.1:{listener.getsockname()[1]}", os.getpid()

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 30)
        if self.runtime is not None:
            await self.runtime.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.exit_report = {"ru_maxrss_kib": usage.ru_maxrss, "note": "the whole benchmark process"}

    def memory(self) -> dict[str, int]:
        return _proc_status(self.pid)


Gateway = SubprocessGateway | InProcessGateway


async def wait_ready(client: httpx.AsyncClient, gateway: Gateway, timeout: float = 60) -> None:
    """Until /readyz answers 200: migrations applied and the snapshot (with our licence) loaded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get(f"{gateway.url}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        process = gateway.process if isinstance(gateway, SubprocessGateway) else None
        if process is not None and process.returncode is not None:
            raise RuntimeError(f"the gateway process exited ({process.returncode}) during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway was not ready within {timeout:.0f} s")
        await asyncio.sleep(0.1)


# -- measuring --------------------------------------------------------------------------------------

@dataclass
class Download:
    seconds: float
    first_byte_seconds: float
    bytes: int
    lines: int
    sha256: str = ""


async def download(client: httpx.AsyncClient, url: str, api_key: str, fmt: str, *, digest: bool = False,
                   expected_bytes: int | None = None) -> Download:
    """A full export, streamed; only counted (and hashed when asked), never kept."""
    hasher = hashlib.sha256() if digest else None
    progress = Progress(f"GET {fmt}", expected_bytes)
    size = lines = 0
    async with asyncio.timeout(DOWNLOAD_TIMEOUT):
        started = time.perf_counter()
        async with client.stream("GET", url, params={"format": fmt},
                                 headers={"Authorization": f"Bearer {api_key}"}) as response:
            first_byte = time.perf_counter() - started
            if response.status_code != 200:
                body = (await response.aread())[:500].decode(errors="replace")
                raise RuntimeError(f"export answered {response.status_code}: {body}")
            async for chunk in response.aiter_raw():
                size += len(chunk)
                lines += chunk.count(b"\n")
                if hasher is not None:
                    hasher.update(chunk)
                progress(size)
        seconds = time.perf_counter() - started
    progress.finish()
    return Download(seconds, first_byte, size, lines, hasher.hexdigest() if hasher else "")


def raw_copy_sql(dataset_id: uuid.UUID, partition: str, fmt: str) -> str:
    where = f"WHERE dataset_id = '{dataset_id}' AND partition = '{partition}' ORDER BY version, seq"
    if fmt == "ndjson":
        # The gateway writes a record's keys in declared order, each value as jsonb's own text (the demo
        # has no `number` column, whose values number_text would render), so the floor is the same text.
        pieces = " || ', ' || ".join(f"'\"{c.name}\": ' || COALESCE((data -> '{c.name}')::text, 'null')"
                                     for c in DEMO_COLUMNS)
        return f"COPY (SELECT '{{' || {pieces} || '}}' FROM records {where}) TO STDOUT"
    selected = ", ".join(f"data ->> '{c.name}' AS {c.name}" for c in DEMO_COLUMNS)
    return f"COPY (SELECT {selected} FROM records {where}) TO STDOUT WITH (FORMAT csv, HEADER)"


def hashed_psql(dsn: str, sql: str) -> Download:
    """psql's output counted and hashed (untimed: for the byte-for-byte check only)."""
    hasher, size, lines = hashlib.sha256(), 0, 0
    started = time.perf_counter()
    with subprocess.Popen(psql_command(dsn, sql), stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        while chunk := process.stdout.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
        if process.wait(timeout=DOWNLOAD_TIMEOUT) != 0:
            raise RuntimeError(f"psql failed ({process.returncode})")
    return Download(time.perf_counter() - started, 0.0, size, lines, hasher.hexdigest())


async def measure(args: argparse.Namespace, csv_path: Path, csv_bytes: int) -> dict[str, Any]:
    async with bench_database() as db:
        say(f"database: {db.describe()}")
        master_key = new_master_key()
        runtime = await open_runtime(db, master_key)
        try:
            fixture = await set_up(runtime, csv_path, csv_bytes, args.rows, args.partition)
        finally:
            await runtime.close()
        conn = await asyncpg.connect(db.dsn)
        try:
            # As autovacuum would after a bulk load: hint bits set, statistics current.
            say("VACUUM (ANALYZE) records")
            _, vacuum_seconds = await timed(conn.execute("VACUUM (ANALYZE) records"))
            meter_pid = await conn.fetchval("SELECT pg_backend_pid()")
            table_bytes = await conn.fetchval("SELECT pg_total_relation_size('records')")
            gateway: Gateway = (InProcessGateway if args.in_process else SubprocessGateway)(
                gateway_env(db, master_key))
            say(f"starting the gateway ({gateway.mode})")
            await gateway.start()
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(60.0)) as client:
                    await wait_ready(client, gateway)
                    say(f"gateway ready at {gateway.url}")
                    others = {"gateway": gateway.pid} if isinstance(gateway, SubprocessGateway) else {}
                    meter = CpuMeter(meter_pid, others)
                    figures = await _exports(args, db, client, gateway, fixture, meter)
            finally:
                await gateway.stop()
        finally:
            await conn.close()
        return _results(args, db, gateway, fixture, figures, vacuum_seconds, table_bytes)


async def _exports(args: argparse.Namespace, db: BenchDatabase, client: httpx.AsyncClient, gateway: Gateway,
                   fixture: Fixture, meter: CpuMeter) -> dict[str, Any]:
    path = f"/v1/datasets/{fixture.dataset_id}/records"
    url = gateway.url + path
    expected_lines = {"ndjson": args.rows, "csv": args.rows + 1}  # CSV has a header line
    raw_sql = {fmt: raw_copy_sql(fixture.dataset_id, args.partition, fmt) for fmt in FORMATS}
    memory_before = gateway.memory()
    out: dict[str, Any] = {"memory_before": memory_before, "verified_bytes": 0}

    if not args.no_verify:
        out["verification"] = {}
        for fmt in FORMATS:
            say(f"checking the {fmt} export against psql's raw COPY (untimed)")
            ours = await download(client, url, fixture.api_key, fmt, digest=True)
            out["verified_bytes"] += ours.bytes
            theirs = await asyncio.to_thread(hashed_psql, db.dsn, raw_sql[fmt])
            out["verification"][fmt] = {
                "identical": ours.sha256 == theirs.sha256 and ours.bytes == theirs.bytes,
                "gateway": {"bytes": ours.bytes, "lines": ours.lines, "sha256": ours.sha256},
                "psql": {"bytes": theirs.bytes, "lines": theirs.lines, "sha256": theirs.sha256}}
            if ours.lines != expected_lines[fmt]:
                raise RuntimeError(f"the {fmt} export had {ours.lines} lines, expected {expected_lines[fmt]}")
            if ours.sha256 != theirs.sha256:
                say(f"  note: the {fmt} export differs from psql's raw COPY "
                    f"({ours.bytes} vs {theirs.bytes} bytes)")

    runs: dict[str, dict[str, list[Any]]] = {fmt: {"gateway": [], "psql": []} for fmt in FORMATS}
    cpu: dict[str, dict[str, dict[str, float]]] = {fmt: {} for fmt in FORMATS}
    memory_during: list[dict[str, int]] = []
    for attempt in range(1, args.repeat + 1):
        for fmt in FORMATS:
            say(f"{fmt} ({attempt}/{args.repeat}): psql COPY > /dev/null, then GET {path}?format={fmt}")
            before = meter.sample()
            seconds = await asyncio.to_thread(timed_psql, db.dsn, raw_sql[fmt])
            cpu[fmt]["psql"] = CpuMeter.delta(before, meter.sample())
            runs[fmt]["psql"].append(seconds)

            before = meter.sample()
            got = await download(client, url, fixture.api_key, fmt)
            cpu[fmt]["gateway"] = CpuMeter.delta(before, meter.sample())
            memory_during.append(gateway.memory())
            if got.lines != expected_lines[fmt]:
                raise RuntimeError(f"the {fmt} export had {got.lines} lines, expected {expected_lines[fmt]}")
            runs[fmt]["gateway"].append(got)
    out["runs"], out["cpu"], out["memory_after"] = runs, cpu, memory_during
    return out


def _results(args: argparse.Namespace, db: BenchDatabase, gateway: Gateway, fixture: Fixture,
             figures: dict[str, Any], vacuum_seconds: float, table_bytes: int) -> dict[str, Any]:
    formats: dict[str, Any] = {}
    for fmt in FORMATS:
        downloads: list[Download] = figures["runs"][fmt]["gateway"]
        size = downloads[0].bytes
        ours = throughput([d.seconds for d in downloads], args.rows, size)
        ours["first_byte_ms"] = round(1000 * statistics.median(d.first_byte_seconds for d in downloads), 1)
        ours["bytes"] = size
        ours["cpu_seconds"] = figures["cpu"][fmt]["gateway"]
        raw = throughput(figures["runs"][fmt]["psql"], args.rows, size)
        raw["cpu_seconds"] = figures["cpu"][fmt]["psql"]
        raw["sql"] = raw_copy_sql(fixture.dataset_id, args.partition, fmt)
        ratio = round(raw["seconds"] / ours["seconds"], 3)
        formats[fmt] = {"gateway": ours, "psql_copy": raw, "ratio": ratio,
                        "target_met": ratio >= TARGET_RATIO}

    before = figures["memory_before"]
    after = figures["memory_after"]
    peak = max((m.get("VmHWM", 0) for m in after), default=0)
    memory = {
        "process": "the gateway's own process" if gateway.mode == "subprocess"
        else "the whole benchmark process (gateway, client and set-up)",
        "rss_before_exports_kib": before.get("VmRSS"), "peak_before_exports_kib": before.get("VmHWM"),
        "peak_after_exports_kib": peak or None,
        "peak_growth_kib": peak - before["VmHWM"] if peak and "VmHWM" in before else None,
        "rss_after_each_export_kib": [m.get("VmRSS") for m in after],
        "ru_maxrss_at_exit_kib": gateway.exit_report.get("ru_maxrss_kib"),
        "exported_bytes_total": figures["verified_bytes"]
        + sum(d.bytes for fmt in FORMATS for d in figures["runs"][fmt]["gateway"]),
    }
    return {
        "benchmark": "export",
        "command": "python -m loadtests.bench_export " + " ".join(sys.argv[1:]),
        "rows": args.rows, "partition": args.partition, "repeat": args.repeat, "gateway_mode": gateway.mode,
        "database": {"server": db.server, "version": db.version, "records_table_bytes": table_bytes},
        "machine": {**args.machine, "event_loop": event_loop_name()},
        "setup": {"publish_seconds": round(fixture.publish_seconds, 2),
                  "vacuum_seconds": round(vacuum_seconds, 2)},
        "target_ratio": TARGET_RATIO,
        **formats,
        "memory": memory,
        "verification": figures.get("verification", "skipped (--no-verify)"),
    }


def report(results: dict[str, Any]) -> str:
    lines = [(f"export benchmark: {results['rows']:,} records in partition {results['partition']!r}, gateway "
              f"{results['gateway_mode']}, PostgreSQL {results['database']['version']} "
              f"({results['database']['server']}), {results['machine']['cpus']} CPUs, "
              f"median of {results['repeat']}"),
             "",
             f"  {'path':<38}{'seconds':>9}{'records/s':>12}{'MB/s':>8}   CPU seconds"]
    for fmt in FORMATS:
        for label, figures in ((f"GET ?format={fmt} (gateway, httpx)", results[fmt]["gateway"]),
                               (f"psql COPY {fmt} > /dev/null", results[fmt]["psql_copy"])):
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu_seconds"].items() if v >= 0.05)
            lines.append(f"  {label:<38}{figures['seconds']:>9.2f}{figures['rows_per_s']:>12,}"
                         f"{figures['mb_per_s']:>8.1f}   {cpu}")
    lines.append("")
    for fmt in FORMATS:
        figures = results[fmt]
        verdict = "met" if figures["target_met"] else "NOT met"
        lines.append(f"  {fmt:<6} export / raw COPY: {figures['ratio']:.2f}x the records/s "
                     f"(target >= {results['target_ratio']}: {verdict}); "
                     f"first byte after {figures['gateway']['first_byte_ms']:.0f} ms")
    memory = results["memory"]
    if memory["peak_growth_kib"] is not None:
        lines.append(f"  memory of {memory['process']}: "
                     f"RSS {memory['rss_before_exports_kib'] / 1024:.0f} MiB before the exports, "
                     f"peak {memory['peak_after_exports_kib'] / 1024:.0f} MiB after "
                     f"{memory['exported_bytes_total'] / MB:,.0f} MB exported "
                     f"(peak grew by {memory['peak_growth_kib'] / 1024:.1f} MiB)")
    verification = results["verification"]
    if isinstance(verification, dict):
        same = [fmt for fmt in FORMATS if verification[fmt]["identical"]]
        differs = [fmt for fmt in FORMATS if fmt not in same]
        lines.append(f"  byte for byte identical to psql's COPY: {', '.join(same) or 'none'}"
                     + (f"; differs: {', '.join(differs)}" if differs else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    args.machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="lpd-bench-csv-") as folder:
        csv_path = Path(folder) / f"demo-{args.rows}-{args.partition}.csv"
        say(f"writing {args.rows:,} demo rows, all in partition {args.partition!r}, to {csv_path}")
        csv_bytes = write_demo_csv(csv_path, args.rows, partition=args.partition)
        results = run(measure(args, csv_path, csv_bytes))
    return finish(args.output, results, report)


if __name__ == "__main__":
    sys.exit(main())
