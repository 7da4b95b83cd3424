"""Hot-path benchmark (issue 6): the gateway against a bare Starlette app serving the same bytes.

In one run, on a throwaway database (loadtests/common.py: an embedded PostgreSQL in a temporary folder,
or a fresh database on the local server named by GATEWAY_DATABASE_URL):

1. `gateway demo` seeds the demo (METI's mobile-location example, 120,000 records) into a temporary
   GATEWAY_HOME; the demo licences' rate limit (50 requests/s) and monthly quotas are then raised with
   `gateway licence amend` so that a benchmark does not measure 429s — the quotas stay hard, so the
   lease and metering path is measured as it runs for any licence.
2. The gateway runs as shipped: `gateway serve` (its own process), pinned to one core, wrk to the other;
   PostgreSQL is left to the scheduler (--pin-postgres puts it beside wrk). The two workloads, with the
   first demo member's key:
   - core: `GET /v1/datasets/{dataset}` (authenticated, licensed, metered, durably audited; no record read);
   - page: `GET /v1/datasets/{dataset}/records?limit=100` (a 100-record NDJSON page; adds the record read).
   Pages asked for again come from the gateway's page cache (gateway/page_cache.py); the page is also
   measured "cold": on a second gateway with the cache off (GATEWAY_PAGE_CACHE_BYTES=0), where every
   page is read from PostgreSQL.
3. The bare baseline: a Starlette app with the same two routes returning the bytes the gateway returned
   (captured from it), served by `gateway.cli.serve` itself, so with exactly the server and settings the
   gateway ships with (loadtests/bench_server.py); the same app as raw ASGI for reference; nginx serving
   the same bytes with the key checked by a `map` (the physical limit), when nginx is installed or
   installable.
4. Variants of the gateway: 1,000 more members with a licence each and 10,000 more credentials in the
   snapshot; and the Prometheus instrumentation switched off, to price it.

Every figure is the median of --repeat runs of --seconds each (wrk, one thread), at 64 and 16 connections:
requests/s, latency p50/p99/p99.9 (a Lua reporter, loadtests/wrk_report.lua), CPU µs per request of the
server process (from /proc/PID/stat) and of PostgreSQL, and for the gateway the audit batch sizes (from
/metrics and by xmin) and commit times (/metrics). Written to loadtests/results/hotpath.json.

    .venv/bin/python -m loadtests.bench [--quick] [--profile] [--repeat 3] [--seconds 10]

The audit writer's p99 at half the gateway's maximum throughput, on this module's functions (wrk paced
by wrk_report.lua): .venv/bin/python -m loadtests.bench_audit_latency [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from keys import apikeys
from keys.sealing import MasterKey
from loadtests.common import (
    RESULTS_DIR,
    BenchDatabase,
    bench_database,
    check_database_url,
    finish,
    machine_info,
    new_master_key,
    run,
    say,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wrk_report.lua"
CORE_ROUTE, PAGE_ROUTE = "/v1/datasets/{dataset}", "/v1/datasets/{dataset}/records"
PAGE_QUERY = "?limit=100"
WORKLOADS = ("core", "page")
CONNECTIONS = (64, 16)
TARGETS = {"core_ratio_64": 0.80, "core_p50_extra_ms_16": 1.0, "core_p99_extra_ms_16": 3.0,
           "page_ratio_64": 0.50, "metrics_cost": 0.03}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--profile", action="store_true",
                        help="also record py-spy profiles of the gateway at 64 connections (extra runs, "
                             "not counted) into loadtests/results/profile-*.{svg,txt}")
    parser.add_argument("--only", choices=("gateway", "all"), default="all",
                        help="'gateway': the gateway's own figures only (for tuning steps)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "hotpath.json")
    return quick(parser.parse_args(argv))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every wrk benchmark on the demo (this one and loadtests/bench_audit_latency.py)."""
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one wrk run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="one 3-second run per figure (a smoke test)")
    parser.add_argument("--server-cpu", type=int, default=1, help="core the servers are pinned to (default 1)")
    parser.add_argument("--load-cpu", type=int, default=0, help="core of wrk (default 0)")
    parser.add_argument("--pin-postgres", action="store_true",
                        help="pin the embedded PostgreSQL to wrk's core (default: left to the scheduler; pinned "
                             "beside a saturated wrk its commits wait for the CPU and the gateway's latency "
                             "triples)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk or nginx")


def quick(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.seconds, args.repeat = 3.0, 1
    return args


# -- tools ------------------------------------------------------------------------------------------

def ensure_tool(command: str, package: str, allow_install: bool) -> str | None:
    """The tool's path, installing the Debian package when missing and allowed (as root only)."""
    found = shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)
    if found or not allow_install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    say(f"installing {package} (apt-get install -y {package})")
    done = subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        say(f"  could not install {package}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Postgres:
    """The server's processes: pinned to the load core when embedded, and their CPU, for the figures."""

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster

    @classmethod
    async def find(cls, dsn: str) -> Postgres:
        try:
            import psutil

            conn = await asyncpg.connect(dsn)
            try:
                # Asked while the backend lives: it exits when the connection closes.
                return cls(psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).parent().pid)
            finally:
                await conn.close()
        except Exception:  # noqa: BLE001 - another user's or another machine's server: no figures
            return cls(None)

    def pin(self, cpu: int) -> None:
        """Pin the postmaster (new backends inherit it) and every live backend."""
        if self.postmaster is None:
            return
        import psutil

        root = psutil.Process(self.postmaster)
        for proc in [root, *root.children(recursive=True)]:
            try:
                os.sched_setaffinity(proc.pid, {cpu})
            except OSError:
                pass

    def cpu(self) -> float | None:
        if self.postmaster is None:
            return None
        import psutil

        root = psutil.Process(self.postmaster)
        total = 0.0
        for child in root.children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        times = root.cpu_times()
        return total + times.user + times.system + times.children_user + times.children_system


# -- servers ----------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    pid: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_server(name: str, command: list[str], env: dict[str, str], port: int, cpu: int, logs: Path) -> Server:
    log = logs / f"{name}.log"
    # taskset execs the command: the pid we get is the server's own.
    process = subprocess.Popen(pinned(cpu, command), env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    return Server(name, process, port, log, process.pid)


async def wait_ready(server: Server, path: str, timeout: float = 120, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({server.process.returncode}); see its log:\n"
                                   + server.log.read_text(errors="replace")[-3000:])
            try:
                response = await client.get(server.url(path), headers=headers, timeout=2)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout} s; see {server.log}")


@contextmanager
def keep_going(results: dict[str, Any], name: str) -> Iterator[None]:
    """A variant or baseline that fails is reported as such; the rest of the run goes on."""
    try:
        yield
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        say(f"  {name} failed: {str(exc)[:2000]}")
        results[name] = {"error": str(exc)[:2000]}


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


# -- wrk --------------------------------------------------------------------------------------------

@dataclass
class Driver:
    wrk: str
    load_cpu: int
    seconds: float
    repeat: int
    postgres: Postgres
    dsn: str

    def wrk_once(self, url: str, key: str | None, connections: int, seconds: float,
                 rate: float | None = None) -> dict[str, Any]:
        """One wrk run: as many requests as the server answers, or `rate` requests/s in all (paced by
        loadtests/wrk_report.lua's delay(), one schedule for all connections)."""
        command = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "-s", str(LUA)]
        if key:
            command += ["-H", f"Authorization: Bearer {key}"]
        command.append(url)
        if rate is not None:
            command += ["--", f"{rate:.3f}"]
        done = subprocess.run(pinned(self.load_cpu, command), capture_output=True, text=True,
                              timeout=seconds + 60, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
        return dict(orjson.loads(line[len("WRK_JSON "):]))

    async def measure(self, server: Server, url: str, key: str | None, connections: int, *,
                      repeat: int | None = None, metrics: bool = False, rate: float | None = None) -> dict[str, Any]:
        """`repeat` wrk runs (paced at `rate` requests/s if given); each with the server's and PostgreSQL's
        CPU and (gateway, `metrics`) the audit batches and commit times."""
        runs = []
        for _ in range(self.repeat if repeat is None else repeat):
            before = await scrape(server) if metrics else None
            started = time_now()
            cpu0, pg0 = process_cpu(server.pid), self.postgres.cpu()
            result = await asyncio.to_thread(self.wrk_once, url, key, connections, self.seconds, rate)
            cpu1, pg1 = process_cpu(server.pid), self.postgres.cpu()
            ended = time_now()
            after = await scrape(server) if metrics else None
            seconds = result["duration_us"] / 1e6
            requests = max(result["requests"], 1)
            one = {"requests_per_s": round(result["requests"] / seconds, 1),
                   **({} if rate is None else {"target_requests_per_s": round(rate, 1)}),
                   "latency_ms": {k: round(v / 1000, 3) for k, v in result["latency_us"].items()},
                   "cpu_us_per_request": round((cpu1 - cpu0) * 1e6 / requests, 1),
                   "server_cpu_share": round((cpu1 - cpu0) / seconds, 3),
                   "postgres_cpu_us_per_request": None if pg0 is None or pg1 is None
                   else round((pg1 - pg0) * 1e6 / requests, 1),
                   "requests": result["requests"], "bytes_per_response": round(result["bytes"] / requests),
                   "errors": {k: v for k, v in result["errors"].items() if v}}
            if before is not None and after is not None:
                one["audit"] = {**await commits(self.dsn, started, ended), **histogram(before, after, seconds)}
            runs.append(one)
        return summarise(runs)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    summary: dict[str, Any] = {
        "requests_per_s": med([r["requests_per_s"] for r in runs]),
        "latency_ms": {k: med([r["latency_ms"][k] for r in runs]) for k in ("p50", "p90", "p99", "p999", "max")},
        "cpu_us_per_request": med([r["cpu_us_per_request"] for r in runs]),
        "postgres_cpu_us_per_request": med([r["postgres_cpu_us_per_request"] for r in runs]),
        "bytes_per_response": runs[0]["bytes_per_response"],
        "errors": sum(sum(r["errors"].values()) for r in runs),
        "spread": round((max(r["requests_per_s"] for r in runs) - min(r["requests_per_s"] for r in runs))
                        / max(statistics.median(r["requests_per_s"] for r in runs), 1), 3),
        "runs": runs,
    }
    audits = [r["audit"] for r in runs if "audit" in r]
    if audits:
        summary["audit"] = {name: med([a.get(name) for a in audits])
                            for name in ("events_per_commit_mean", "events_per_commit_p50", "events_per_commit_p90",
                                         "events_per_commit_max", "histogram_mean", "commits_per_s",
                                         "commit_ms_mean", "commit_ms_p50", "commit_ms_p99", "commits_over_10ms")}
        summary["audit"]["histogram_observed"] = all(a["histogram_observed"] for a in audits)
        slowest = [a["commit_ms_max_bound"] for a in audits if "commit_ms_max_bound" in a]
        if slowest:  # over all runs; None (beyond the largest bound) wins
            summary["audit"]["commit_ms_max_bound"] = None if None in slowest else max(slowest)
    return summary


# -- /metrics ---------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


async def scrape(server: Server) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(server.url("/metrics"), timeout=10)).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def histogram(before: dict[str, float], after: dict[str, float], seconds: float | None = None) -> dict[str, Any]:
    """The audit writer's histograms over one run, if it observes them: gateway_audit_batch_events (events
    per group commit) and gateway_audit_commit_seconds (one group's write and commit: mean, and p50/p99
    estimated from the buckets), and group commits per second of the run."""
    count = after.get("gateway_audit_batch_events_count", 0.0) - before.get("gateway_audit_batch_events_count", 0.0)
    if count <= 0:
        return {"histogram_observed": False}
    total = after.get("gateway_audit_batch_events_sum", 0.0) - before.get("gateway_audit_batch_events_sum", 0.0)
    out: dict[str, Any] = {"histogram_observed": True, "histogram_mean": round(total / count, 1)}
    if seconds:
        out["commits_per_s"] = round(count / seconds, 1)
    name = "gateway_audit_commit_seconds"
    commits = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if commits > 0:
        spent = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        buckets = histogram_buckets(before, after, name)
        bounds = dict(buckets)
        slowest = next(le for le, n in buckets if n >= commits)
        out.update({"commit_ms_mean": round(spent / commits * 1000, 3),
                    "commit_ms_p50": _ms(bucket_quantile(buckets, 0.50)),
                    "commit_ms_p99": _ms(bucket_quantile(buckets, 0.99)),
                    # the slowest commit's bucket (None: beyond the largest finite bound), the slow ones
                    "commit_ms_max_bound": None if slowest == float("inf") else _ms(slowest),
                    "commits_over_10ms": None if 0.01 not in bounds else int(commits - bounds[0.01]),
                    "commit_buckets": {("+Inf" if le == float("inf") else f"{le:g}"): n for le, n in buckets}})
    return out


_LE = re.compile(r'le="([^"]+)"')


def histogram_buckets(before: dict[str, float], after: dict[str, float], name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count over the run) of a Prometheus histogram, in order of the bounds."""
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket{{") and (match := _LE.search(key)):
            buckets.append((float(match.group(1)), value - before.get(key, 0.0)))
    return sorted(buckets)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile as Prometheus' histogram_quantile() estimates it: linear within the bucket it falls in
    (the bucket's bound is the most it can be); the largest finite bound if it falls beyond them."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def commits(dsn: str, started: Any, ended: Any) -> dict[str, Any]:
    """Audit batch sizes over one run, exactly, from the audit log itself: the events of one group commit
    are rows written by one transaction, so they share their xmin."""
    conn = await asyncpg.connect(dsn)
    try:
        sizes = [row[0] for row in await conn.fetch(
            "SELECT count(*) FROM audit_events WHERE at >= $1 AND at < $2 GROUP BY xmin::text ORDER BY 1",
            started, ended)]
    finally:
        await conn.close()
    if not sizes:
        return {"commits": 0}
    return {"commits": len(sizes), "events": sum(sizes),
            "events_per_commit_mean": round(sum(sizes) / len(sizes), 1),
            "events_per_commit_p50": sizes[len(sizes) // 2], "events_per_commit_p90": sizes[int(len(sizes) * 0.9)],
            "events_per_commit_max": sizes[-1]}


# -- the demo ---------------------------------------------------------------------------------------

def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args] if not (ROOT / ".venv/bin/gateway").exists() \
        else [str(ROOT / ".venv/bin/gateway"), *args]


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(gateway_command(*args), env=env, capture_output=True, timeout=900, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return orjson.loads(done.stdout) if done.stdout.strip() else None


def server_env(db: BenchDatabase, master: str, port: int) -> dict[str, str]:
    """The machine's environment without GATEWAY_* settings, plus those of this benchmark's gateway.

    The log level is the shipped default (INFO): the baseline runs with the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": db.dsn, "GATEWAY_HOME": str(db.home / "gateway"),
                "GATEWAY_MASTER_KEY": master, "GATEWAY_INSTANCE": "bench", "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port), "GATEWAY_LOG_LEVEL": "INFO"})
    return env


async def seed_demo(db: BenchDatabase, env: dict[str, str]) -> dict[str, Any]:
    say("seeding the demo (gateway demo)")
    cli(env, "demo")
    demo = dict(orjson.loads((db.home / "gateway" / "demo.json").read_bytes()))
    for member in demo["members"]:
        # A benchmark is not a member's traffic: raise the demo's 50 requests/s and monthly quotas (still
        # hard quotas, so leases and metering stay on the measured path).
        cli(env, "licence", "amend", "--vendor", demo["vendor_id"], member["licence_id"],
            "--requests-per-second", "1000000", "--burst", "1000000",
            "--records-per-month", str(10**12), "--bytes-per-month", str(10**15))
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) records")  # as autovacuum would after the bulk load
    finally:
        await conn.close()
    return demo


async def add_population(db: BenchDatabase, master: str, demo: dict[str, Any], members: int,
                         keys_per_member: int) -> dict[str, int]:
    """`members` more members of the demo vendor, each licensed for Tokyo with `keys_per_member` API keys
    (valid keyed hashes, as `credentials.issue` makes them), written with COPY."""
    from gateway import server_secrets

    conn = await asyncpg.connect(db.dsn)
    try:
        hasher = (await server_secrets.load(conn, MasterKey.from_text(master))).hasher()
        vendor, dataset = uuid.UUID(demo["vendor_id"]), uuid.UUID(demo["dataset"])
        member_rows, licence_rows, credential_rows = [], [], []
        for i in range(members):
            member = uuid.uuid4()
            member_rows.append((member, vendor, f"Bench Member {i:05d}"))
            licence_rows.append((uuid.uuid4(), vendor, member, dataset, ["13"], ["prefecture", "hour", "population"],
                                 time_now(), 1_000_000, 1_000_000_000))
            for _ in range(keys_per_member):
                key = apikeys.generate(apikeys.KeyKind.MEMBER)
                version, digest = hasher.hash(key.token)
                credential_rows.append((uuid.uuid4(), key.key_id, "member", vendor, member, version, digest,
                                        "bench population"))
        async with conn.transaction():
            await conn.copy_records_to_table("members", records=member_rows, columns=("id", "vendor_id", "name"))
            await conn.copy_records_to_table(
                "licences", records=licence_rows,
                columns=("id", "vendor_id", "member_id", "dataset_id", "partitions", "columns", "valid_from",
                         "records_per_month", "bytes_per_month"))
            await conn.copy_records_to_table(
                "credentials", records=credential_rows,
                columns=("id", "key_id", "kind", "vendor_id", "member_id", "hash_version", "hash", "label"))
        counts = {name: int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
                  for name in ("members", "licences", "credentials")}
    finally:
        await conn.close()
    return counts


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- captured answers, nginx ------------------------------------------------------------------------

async def capture(server: Server, key: str, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The gateway's response (status, headers, body) to each workload, for the baselines to replay."""
    answers = {}
    async with httpx.AsyncClient() as client:
        for route, path in paths.items():
            response = await client.get(server.url(path), headers={"Authorization": f"Bearer {key}"}, timeout=10)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:500]}")
            answers[route] = {"status": response.status_code, "body": response.content.decode("latin-1"),
                              "headers": [(k.decode("latin-1").lower(), v.decode("latin-1"))
                                          for k, v in response.headers.raw]}
    return answers


def nginx_config(folder: Path, port: int, key: str, paths: dict[str, str],
                 answers: dict[str, dict[str, Any]]) -> Path:
    """One worker (master_process off: the one process serves), access log on, the key checked by a map."""
    locations = []
    for route, path in paths.items():
        answer = answers[route]
        body = folder / f"{route.strip('/').replace('/', '_').replace('{', '').replace('}', '')}.body"
        body.write_bytes(answer["body"].encode("latin-1"))
        headers = dict(answer["headers"])
        adds = "\n".join(f'            add_header {name} "{_nginx_quote(value)}" always;'
                         for name, value in answer["headers"]
                         if name not in ("content-type", "content-length", "date", "server"))
        locations.append(f"""
        location = {path.split('?')[0]} {{
            if ($key_ok = 0) {{ return 401; }}
            default_type "{headers.get('content-type', 'application/octet-stream')}";
{adds}
            alias {body};
        }}""")
    conf = folder / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log combined buffer=64k;
    server_tokens off;
    etag off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 1000000;
    map_hash_bucket_size 256;  # the key is longer than the default bucket
    map $http_authorization $key_ok {{
        "Bearer {key}" 1;
        default 0;
    }}
    server {{
        listen 127.0.0.1:{port};
        {''.join(locations)}
    }}
}}
""")
    return conf


def _nginx_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${dollar}")


# -- the instrumentation's price, measured in-process -----------------------------------------------

def instrumentation_cost_us() -> dict[str, float]:
    """µs per request spent in Prometheus client calls on the request path (counter per response)."""
    from gateway import metrics

    number = 200_000
    counter = timeit.timeit(lambda: metrics.RESPONSES.labels("2xx", "allow").inc(), number=number) / number * 1e6
    observe = timeit.timeit(lambda: metrics.AUDIT_BATCH_EVENTS.observe(17), number=number) / number * 1e6
    return {"responses_counter_us": round(counter, 3), "batch_histogram_observe_us": round(observe, 3)}


# -- profiles ---------------------------------------------------------------------------------------

def profile(driver: Driver, server: Server, url: str, key: str, name: str, seconds: float,
            cpu_us: float | None = None) -> dict[str, str]:
    """py-spy (sampling from outside, on the load core) while wrk drives the server at 64 connections."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        say("  py-spy not installed (.venv/bin/pip install py-spy): no profile")
        return {}
    outputs = {}
    for fmt, suffix in (("flamegraph", "svg"), ("raw", "raw")):
        out = RESULTS_DIR / f"profile-{name}.{suffix}"
        spy_process = subprocess.Popen(pinned(driver.load_cpu, [spy, "record", "--pid", str(server.pid), "--rate", "200",
                                                                "--duration", f"{seconds:g}", "--nonblocking",
                                                                "--format", fmt, "--output", str(out)]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        driver.wrk_once(url, key, 64, seconds)
        spy_process.wait(60)
        outputs[fmt] = str(out)
    raw = RESULTS_DIR / f"profile-{name}.raw"
    if raw.exists():
        (RESULTS_DIR / f"profile-{name}.txt").write_text(summarise_profile(raw.read_text(), name, cpu_us))
        raw.unlink()
        outputs["raw"] = str(RESULTS_DIR / f"profile-{name}.txt")
    return outputs


# The writer's own tasks and what they run (private methods); commit()/submit() are the request's side.
_WRITER_TASK = ("AuditWriter._", "write_usage (gateway/audit/usage.py")
_BACKGROUND = ("UsageSync._run", "SnapshotRefresher._run")
LAYERS = {
    "loop": "event loop: uvloop's C code (sockets, epoll, callbacks, task switches)",
    "server": "HTTP server: uvicorn + httptools (parse, response start, header checks)",
    "starlette": "Starlette: middleware stack, routing, Request/Response objects",
    "gateway": "gateway request path: context, authentication, licence, metering, route, audit middleware",
    "database": "asyncpg on the request path (pool, quota lease, page fetch and decode)",
    "writer": "audit writer task: number, serialise, hash, Merkle, COPY, usage, COMMIT",
    "background": "background tasks (usage sync, snapshot refresher)",
}


def _layer(frames: list[str]) -> str:
    """The layer a sample's CPU belongs to: the writer task or a background task if it is under one,
    else the innermost frame of a known package (stdlib helpers count for their caller)."""
    if any(f.startswith(_WRITER_TASK) for f in frames):
        return "writer"
    if any(f.startswith(_BACKGROUND) for f in frames):
        return "background"
    for frame in reversed(frames):
        if frame.startswith("Runner.run (asyncio/runners.py") and frame is frames[-1]:
            return "loop"
        where = frame.rsplit("(", 1)[-1]
        if where.startswith(("gateway/", "keys/", "<string>")):
            return "gateway"
        if where.startswith("starlette/"):
            return "starlette"
        if where.startswith(("uvicorn/", "httptools")):
            return "server"
        if where.startswith("asyncpg/"):
            return "database"
    return "loop"


def summarise_profile(collapsed: str, name: str, cpu_us: float | None = None) -> str:
    """Self and inclusive shares per function, per file and per layer, from py-spy's collapsed stacks.

    py-spy (without --idle) samples only while the process is on CPU, so shares of samples are shares
    of the CPU; with `cpu_us` (CPU µs per request of the same workload) they become µs per request."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    modules: dict[str, int] = {}
    layers: dict[str, int] = dict.fromkeys(LAYERS, 0)
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        # "function (file.py:line)" -> "function (file.py)"
        names = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";") if f]
        if names:
            own[names[-1]] = own.get(names[-1], 0) + count
            module = names[-1].split("(")[-1].rstrip(")")
            modules[module] = modules.get(module, 0) + count
            layers[_layer(names)] += count
        for frame in set(names):
            inclusive[frame] = inclusive.get(frame, 0) + count
    total = max(total, 1)
    per = f" (~µs per request of {cpu_us:.0f} µs CPU)" if cpu_us else ""
    lines = [f"py-spy profile of the gateway, workload {name}, 64 connections ({total} samples on CPU)", "",
             f"by layer{per}:"]
    lines += [f"  {100 * n / total:5.1f}%  {'' if not cpu_us else f'{cpu_us * n / total:5.0f} µs  '}{LAYERS[k]}"
              for k, n in sorted(layers.items(), key=lambda x: -x[1])]
    lines += ["", "self time by file:"]
    lines += [f"  {100 * n / total:5.1f}%  {m}" for m, n in sorted(modules.items(), key=lambda x: -x[1])[:30]]
    lines += ["", "self time by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:40]]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:70]]
    return "\n".join(lines) + "\n"


# -- the run ----------------------------------------------------------------------------------------

async def measure_gateway(driver: Driver, server: Server, key: str, urls: dict[str, str], *,
                          connections: tuple[int, ...] = CONNECTIONS,
                          workloads: tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for workload in workloads:
        url = urls[workload]
        await asyncio.to_thread(driver.wrk_once, url, key, 64, 2)  # warm-up, not counted
        for conns in connections:
            say(f"  {workload} at {conns} connections")
            figures[f"{workload}_{conns}"] = await driver.measure(server, url, key, conns, metrics=True)
    return figures


async def measure_plain(driver: Driver, server: Server, key: str | None, urls: dict[str, str],
                        connections: tuple[int, ...] = CONNECTIONS) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for workload in WORKLOADS:
        await asyncio.to_thread(driver.wrk_once, urls[workload], key, 64, 2)
        for conns in connections:
            say(f"  {workload} at {conns} connections")
            figures[f"{workload}_{conns}"] = await driver.measure(server, urls[workload], key, conns)
    return figures


def find_wrk(args: argparse.Namespace) -> str:
    """The checks made before anything starts, and the wrk to use; on one core, nothing is pinned."""
    check_database_url()
    wrk = ensure_tool("wrk", "wrk", not args.no_install)
    if wrk is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    if (os.cpu_count() or 1) < 2:
        say("one core only: nothing is pinned, and the figures mix the server with the load generator")
        args.server_cpu = args.load_cpu = None
    return wrk


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"seconds": args.seconds, "repeat": args.repeat, "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu, "postgres_pinned_to_load_cpu": args.pin_postgres,
            "wrk": "1 thread, --latency via loadtests/wrk_report.lua"}


@dataclass
class Bench:
    """A benchmark's seeded demo: database, wrk driver, the servers' environment, the member's requests."""
    db: BenchDatabase
    driver: Driver
    master: str
    env: dict[str, str]
    port: int
    demo: dict[str, Any]
    key: str
    paths: dict[str, str]
    logs: Path
    pin_cpu: int | None  # PostgreSQL's core with --pin-postgres (embedded server only)

    def urls_of(self, server: Server) -> dict[str, str]:
        return {"core": server.url(self.paths[CORE_ROUTE]), "page": server.url(self.paths[PAGE_ROUTE])}

    def pin_postgres(self) -> None:
        """Pin PostgreSQL if asked; again after a server started, as its pool connections are new backends."""
        if self.pin_cpu is not None:
            self.driver.postgres.pin(self.pin_cpu)


@asynccontextmanager
async def seeded_bench(args: argparse.Namespace, wrk: str, prefix: str) -> AsyncIterator[Bench]:
    """A throwaway database with the demo seeded (seed_demo), and what the servers need to run on it."""
    logs = Path(tempfile.mkdtemp(prefix=prefix))
    async with bench_database() as db:
        postgres = await Postgres.find(db.dsn)
        master = new_master_key()
        port = free_port()
        env = server_env(db, master, port)
        bench = Bench(db, Driver(wrk, args.load_cpu, args.seconds, args.repeat, postgres, db.dsn), master, env,
                      port, {}, "", {}, logs,
                      args.load_cpu if db.server == "embedded" and args.load_cpu is not None and args.pin_postgres
                      else None)
        bench.pin_postgres()
        bench.demo = await seed_demo(db, env)
        bench.key, dataset = bench.demo["members"][0]["api_key"], bench.demo["dataset"]
        bench.paths = {CORE_ROUTE: f"/v1/datasets/{dataset}",
                       PAGE_ROUTE: f"/v1/datasets/{dataset}/records{PAGE_QUERY}"}
        yield bench
    shutil.rmtree(logs, ignore_errors=True)  # kept when the run failed: the servers' logs are there


def save_answers(bench: Bench, answers: dict[str, dict[str, Any]]) -> Path:
    """The captured answers, in the file the baseline servers replay."""
    answers_file = bench.logs / "answers.json"
    answers_file.write_bytes(orjson.dumps(answers))
    return answers_file


def baseline_command(kind: str, answers_file: Path) -> list[str]:
    """A server of loadtests/bench_server.py (bare, raw, gateway-nometrics)."""
    return [sys.executable, "-m", "loadtests.bench_server", kind, str(answers_file)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    wrk = find_wrk(args)
    results: dict[str, Any] = {"benchmark": "hotpath", "machine": machine_info(), "settings": run_settings(args)}
    async with seeded_bench(args, wrk, "lpd-hotpath-") as bench:
        db, driver, master, env, port = bench.db, bench.driver, bench.master, bench.env, bench.port
        demo, key, paths, logs, urls_of = bench.demo, bench.key, bench.paths, bench.logs, bench.urls_of
        results["database"] = db.describe()

        # -- the gateway, as shipped
        say(f"gateway (gateway serve, pinned to core {args.server_cpu})")
        gateway = start_server("gateway", gateway_command("serve"), env, port, args.server_cpu, logs)
        with running(gateway):
            await wait_ready(gateway, "/readyz")
            bench.pin_postgres()
            answers = await capture(gateway, key, paths)
            results["gateway"] = await measure_gateway(driver, gateway, key, urls_of(gateway))
            if args.profile:
                say("  profiles (py-spy)")
                results["profiles"] = {
                    w: await asyncio.to_thread(profile, driver, gateway, urls_of(gateway)[w], key, w,
                                               max(args.seconds, 10), results["gateway"][f"{w}_64"]["cpu_us_per_request"])
                    for w in WORKLOADS}
        # -- cold pages: the page cache off, so that every page is read from PostgreSQL
        say("gateway with the page cache off (GATEWAY_PAGE_CACHE_BYTES=0): cold pages")
        cold = start_server("gateway-cold", gateway_command("serve"), {**env, "GATEWAY_PAGE_CACHE_BYTES": "0"}, port,
                            args.server_cpu, logs)
        with running(cold), keep_going(results, "gateway_cold"):
            await wait_ready(cold, "/readyz")
            await asyncio.to_thread(driver.wrk_once, urls_of(cold)["page"], key, 64, 2)  # warm-up, not counted
            say("  page at 64 connections")
            results["gateway"]["page_cold_64"] = await driver.measure(cold, urls_of(cold)["page"], key, 64,
                                                                      metrics=True)
        answers_file = save_answers(bench, answers)
        results["responses"] = {route: {"bytes": len(a["body"]), "headers": len(a["headers"])}
                                for route, a in answers.items()}

        if args.only == "all":
            # -- the gateway without its Prometheus instrumentation (loadtests/bench_server.py gateway-nometrics)
            say("gateway without Prometheus instrumentation")
            results["instrumentation_in_process"] = instrumentation_cost_us()
            quiet = start_server("gateway-nometrics", baseline_command("gateway-nometrics", answers_file),
                                 env, port, args.server_cpu, logs)
            with running(quiet), keep_going(results, "gateway_nometrics"):
                await wait_ready(quiet, "/readyz")
                await asyncio.to_thread(driver.wrk_once, urls_of(quiet)["core"], key, 64, 2)
                say("  core at 64 connections")
                results["gateway_nometrics"] = {"core_64": await driver.measure(quiet, urls_of(quiet)["core"], key, 64)}

            # -- 1,000 more members and 10,000 more credentials in the snapshot
            say("adding 1,000 members (a licence each) and 10,000 credentials")
            results["population"] = await add_population(db, master, demo, 1000, 10)
            big = start_server("gateway-population", gateway_command("serve"), env, port, args.server_cpu, logs)
            with running(big), keep_going(results, "gateway_population"):
                await wait_ready(big, "/readyz")
                say("gateway with the larger snapshot")
                results["gateway_population"] = await measure_gateway(
                    driver, big, key, urls_of(big))

            # -- baselines
            for kind in ("bare", "raw"):
                say(f"{kind} {'Starlette' if kind == 'bare' else 'ASGI'} app (gateway.cli.serve), same bytes")
                bare = start_server(kind, baseline_command(kind, answers_file), env, port, args.server_cpu, logs)
                with running(bare), keep_going(results, kind):
                    await wait_ready(bare, paths[CORE_ROUTE])
                    results[kind] = await measure_plain(driver, bare, None, urls_of(bare),
                                                        CONNECTIONS if kind == "bare" else (64,))
            nginx = ensure_tool("nginx", "nginx", not args.no_install)
            if nginx is None:
                results["nginx"] = None
                say("nginx not installed: no physical limit measured")
            else:
                say("nginx, one process, key checked by a map, access log on")
                folder = logs / "nginx"
                folder.mkdir()
                conf = nginx_config(folder, port, key, paths, answers)
                server = start_server("nginx", [nginx, "-p", str(folder), "-c", str(conf)], env, port,
                                      args.server_cpu, logs)
                with running(server), keep_going(results, "nginx"):
                    await wait_ready(server, paths[CORE_ROUTE], headers={"Authorization": f"Bearer {key}"})
                    results["nginx"] = await measure_plain(driver, server, key, urls_of(server))
    results["summary"] = summary(results)
    return results


# -- figures ----------------------------------------------------------------------------------------

def summary(results: dict[str, Any]) -> dict[str, Any]:
    gateway = results["gateway"]
    bare = results.get("bare") if "error" not in (results.get("bare") or {}) else None
    out: dict[str, Any] = {}
    if bare:
        for workload in WORKLOADS:
            for conns in CONNECTIONS:
                name = f"{workload}_{conns}"
                out[f"{name}_ratio"] = round(gateway[name]["requests_per_s"] / bare[name]["requests_per_s"], 3)
                # What the ratio would be if both servers were CPU-bound on their core: robust to other
                # load on the machine, which stretches latencies far more than CPU per request.
                out[f"{name}_cpu_ratio"] = round(bare[name]["cpu_us_per_request"] / gateway[name]["cpu_us_per_request"], 3)
        core16, bare16 = gateway["core_16"]["latency_ms"], bare["core_16"]["latency_ms"]
        out["core_16_p50_extra_ms"] = round(core16["p50"] - bare16["p50"], 3)
        out["core_16_p99_extra_ms"] = round(core16["p99"] - bare16["p99"], 3)
        out["page_cold_64_ratio"] = round(gateway["page_cold_64"]["requests_per_s"]
                                          / bare["page_64"]["requests_per_s"], 3)
        out["targets"] = {
            "core >= 0.80 x bare at 64": out["core_64_ratio"] >= TARGETS["core_ratio_64"],
            "core p50 <= bare p50 + 1 ms at 16": out["core_16_p50_extra_ms"] <= TARGETS["core_p50_extra_ms_16"],
            "core p99 <= bare p99 + 3 ms at 16": out["core_16_p99_extra_ms"] <= TARGETS["core_p99_extra_ms_16"],
            "page >= 0.50 x bare at 64": out["page_64_ratio"] >= TARGETS["page_ratio_64"],
        }
    if results.get("nginx") and "core_64" in results["nginx"]:
        out["nginx_core_64_requests_per_s"] = results["nginx"]["core_64"]["requests_per_s"]
    if results.get("gateway_population") and "core_64" in results["gateway_population"]:
        big = results["gateway_population"]
        out["population_change"] = {name: round(big[name]["requests_per_s"] / gateway[name]["requests_per_s"] - 1, 3)
                                    for name in big if name in gateway}
        out["population_cpu_change"] = {
            name: round(big[name]["cpu_us_per_request"] / gateway[name]["cpu_us_per_request"] - 1, 3)
            for name in big if name in gateway}
        noise = max(gateway["core_64"]["spread"], big["core_64"]["spread"], 0.03)
        out["population_noise"] = noise
        # A cost is what is measured: slower or dearer beyond the run-to-run spread (faster is no cost).
        out.setdefault("targets", {})["no measurable change with 1,000 members / 10,000 keys"] = all(
            change >= -noise for change in out["population_change"].values()) and all(
            change <= noise for change in out["population_cpu_change"].values())
    if results.get("gateway_nometrics") and "core_64" in results["gateway_nometrics"]:
        with_metrics = gateway["core_64"]
        without = results["gateway_nometrics"]["core_64"]
        out["metrics_cost_ab"] = round(1 - with_metrics["requests_per_s"] / without["requests_per_s"], 3)
        per_request = results["instrumentation_in_process"]["responses_counter_us"]
        batch = (gateway["core_64"].get("audit") or {}).get("events_per_commit_mean") or 1
        in_process = (per_request + results["instrumentation_in_process"]["batch_histogram_observe_us"] / batch)
        out["metrics_cost_in_process"] = round(in_process / with_metrics["cpu_us_per_request"], 4)
        out.setdefault("targets", {})["/metrics instrumentation <= 3 %"] = \
            out["metrics_cost_in_process"] <= TARGETS["metrics_cost"]
    return out


def row(label: str, fig: dict[str, Any], base: dict[str, Any] | None) -> str:
    lat = fig["latency_ms"]
    ratio = f"{fig['requests_per_s'] / base['requests_per_s']:.2f}" if base else ""
    pg = fig.get("postgres_cpu_us_per_request")
    batch = (fig.get("audit") or {}).get("events_per_commit_mean")
    return (f"| {label} | {fig['requests_per_s']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | "
            f"{fig['cpu_us_per_request']:.0f} | {'' if pg is None else f'{pg:.0f}'} | "
            f"{'' if batch is None else f'{batch:.1f}'} | {ratio} | {fig['errors'] or ''} |")


def report(results: dict[str, Any]) -> str:
    lines = [("| server, workload, connections | requests/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | "
              "PostgreSQL CPU µs/req | audit events/commit | ÷ bare | errors |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    bare = results.get("bare") or {}
    for workload in WORKLOADS:
        for conns in CONNECTIONS:
            name = f"{workload}_{conns}"
            for label, source in (("nginx (map, access log)", results.get("nginx")), ("raw ASGI", results.get("raw")),
                                  ("bare Starlette", bare), ("gateway", results["gateway"]),
                                  ("gateway, 1,000 members / 10,000 keys", results.get("gateway_population")),
                                  ("gateway, no Prometheus", results.get("gateway_nometrics"))):
                if source and name in source:
                    lines.append(row(f"{label}, {workload}, {conns}", source[name], bare.get(name)))
            if workload == "page" and conns == 64 and "page_cold_64" in results["gateway"]:
                lines.append(row("gateway, page, 64, cold (page cache off)", results["gateway"]["page_cold_64"],
                                 bare.get("page_64")))
    out = results["summary"]
    lines.append("")
    for name, value in results.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"{name}: FAILED: {value['error'][:300]}")
    for name, value in out.items():
        if name != "targets":
            lines.append(f"{name}: {value}")
    for name, met in out.get("targets", {}).items():
        lines.append(f"target {name}: {'met' if met else 'MISSED'}")
    return "\n".join(lines)


def run_and_report(args: argparse.Namespace, measure: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
                   describe: Callable[[dict[str, Any]], str]) -> int:
    """Run a benchmark, write its JSON to args.output and print its report."""
    return finish(args.output, run(measure(args)), describe)


def entry(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), main, report)


if __name__ == "__main__":
    sys.exit(entry())
