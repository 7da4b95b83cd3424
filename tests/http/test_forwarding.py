"""The shipped proxy configuration (deploy/nginx.conf) bounds slow and oversized requests, which uvicorn
alone does not: a slowloris client is cut off while other clients are served."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import build_app
from gateway.runtime import Runtime
from tests import REPOSITORY
from tests.processes import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SHIPPED = REPOSITORY / "deploy" / "nginx.conf"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")]


def render(backend_port: int, listen_port: int, prefix: Path) -> str:
    """The shipped file with only what a test host needs changed: addresses and writable paths."""
    conf = SHIPPED.read_text()
    conf = re.sub(r"(upstream gateway \{)[^}]*?(keepalive)", rf"\1\n        server 127.0.0.1:{backend_port};\n        \2",
                  conf, flags=re.DOTALL)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    temp = "".join(f"    {name}_temp_path {prefix}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                              "scgi"))
    return conf.replace("http {\n", f"http {{\n    access_log off;\n{temp}", 1)


@pytest.fixture
async def proxied(runtime: Runtime, tmp_path: Path) -> AsyncIterator[int]:
    backend_port, listen_port = free_port(), free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(runtime), host="127.0.0.1", port=backend_port,
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(backend_port, listen_port, tmp_path))
    assert NGINX is not None
    # Popen starts nginx and returns at once: nothing here blocks the event loop.
    nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g",  # noqa: ASYNC220
                              f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"])
    try:
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{listen_port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and nginx.poll() is None, "nginx did not start"
                await asyncio.sleep(0.1)
        yield listen_port
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        server.should_exit = True
        await serving


def _shipped_header_timeout() -> int:
    return int(re.search(r"client_header_timeout (\d+)s;", SHIPPED.read_text())[1])  # type: ignore[index]


async def test_slow_headers_are_cut_off_while_others_are_served(proxied: int) -> None:
    timeout = _shipped_header_timeout()

    def slowloris() -> tuple[float, bytes]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxied)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
            sock.settimeout(1.0)
            answer = b""
            while time.monotonic() - started < timeout + 10:
                try:
                    sock.sendall(b"X-a: b\r\n")  # a header line a second, never the blank line
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                except TimeoutError:
                    continue
                except OSError:
                    break
            return time.monotonic() - started, answer

    # asyncio.to_thread runs at most min(32, cores + 4) at once: stay under that so all attack together.
    attack = [asyncio.to_thread(slowloris) for _ in range(5)]
    results = asyncio.gather(*attack)
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        served = await client.get(f"http://127.0.0.1:{proxied}/healthz")
        assert served.status_code == 200 and time.monotonic() - started < 1.0
    for elapsed, answer in await results:
        assert elapsed < timeout + 5, "a slow client was kept beyond the header timeout"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


async def test_oversized_headers_are_refused_by_the_proxy(proxied: int) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{proxied}/healthz", headers={"X-Big": "x" * 64_000})
        assert response.status_code in (400, 431, 494)
        assert "/" not in response.headers.get("server", "")  # server_tokens off: no version banner
