"""Real gateway processes for scale-out and fault tests, a PostgreSQL proxy that can 'stop' the database,
and a bounded load generator. Everything here stops by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import TEST_MASTER_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """`gateway serve` in a child process, on its own port, against a given database."""

    def __init__(self, dsn: str, home: Path, name: str, *, wrapper: tuple[str, ...] = (), **settings: str) -> None:
        """`wrapper` runs the process under another command, e.g. ("faketime", "-f", "+31d")."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(home),
                   GATEWAY_PORT=str(self.port), GATEWAY_INSTANCE=name, GATEWAY_LOG_LEVEL="WARNING", **settings)
        with self.log.open("wb") as out:
            # A session of its own: a wrapper (faketime) may fork the gateway instead of exec'ing it, and
            # signals then go to the whole group, so that no gateway outlives its test.
            self.process = subprocess.Popen([*wrapper, sys.executable, "-m", "gateway.cli", "serve"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"gateway exited: {self.log.read_text()}")
                try:
                    if (await client.get(f"{self.url}/readyz", timeout=1)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"gateway not ready: {self.log.read_text()}")
                await asyncio.sleep(0.1)

    def _signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)

    def terminate(self) -> int:
        self._signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        self._signal(signal.SIGKILL)  # also a child the wrapper left behind
        self.process.wait(timeout=10)


class PostgresProxy:
    """A TCP proxy to PostgreSQL; `stop()` drops every connection and refuses new ones, as a stopped
    server would, and `start()` brings it back (the style of asyncpg's ProxiedClusterTestCase)."""

    def __init__(self, target_dsn: str) -> None:
        parts = urllib.parse.urlsplit(target_dsn)
        query = urllib.parse.parse_qs(parts.query)
        self.socket_path = f"{query['host'][0]}/.s.PGSQL.{parts.port or 5432}" if "host" in query else None
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.database = parts.path.lstrip("/")
        self.user = parts.username or "postgres"
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        # Cleared by freeze(): bytes are held in both directions, as by a server that stopped answering.
        self.flowing = asyncio.Event()
        self.flowing.set()

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    def freeze(self) -> None:
        """Hold every byte on every connection, new ones included, until thaw(): a frozen PostgreSQL."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            if self.socket_path:
                server_reader, server_writer = await asyncio.open_unix_connection(self.socket_path)
            else:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self.links |= {client_writer, server_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    await self.flowing.wait()
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))


@dataclass
class LoadResult:
    """What the clients saw: request ids by status, records received, and when each status was seen."""

    by_status: dict[int, list[str]] = field(default_factory=dict)
    records: int = 0
    errors: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def ids(self, status: int) -> list[str]:
        return self.by_status.get(status, [])


async def load(urls: list[str], path: str, headers: dict[str, str], *, seconds: float, workers: int = 8,
               result: LoadResult | None = None, stop: asyncio.Event | None = None) -> LoadResult:
    """GET `path` on `urls` round-robin from `workers` clients for at most `seconds`, each request with its
    own X-Request-Id so the audit log can be reconciled with what the clients received."""
    result = result or LoadResult()
    started = time.monotonic()
    deadline = started + seconds

    async def worker(index: int) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            n = index
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                request_id = f"load-{uuid.uuid4().hex}"
                url = urls[n % len(urls)] + path
                n += 1
                try:
                    response = await client.get(url, headers={**headers, "X-Request-Id": request_id})
                except httpx.TransportError:
                    result.errors += 1
                    await asyncio.sleep(0.02)
                    continue
                result.by_status.setdefault(response.status_code, []).append(request_id)
                result.timeline.append((time.monotonic() - started, response.status_code))
                if response.status_code == 200:
                    result.records += response.content.count(b"\n")
                else:
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return result
