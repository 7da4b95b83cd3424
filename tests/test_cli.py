"""The `gateway` command: the same domain code as the API, help with examples, and the embedded server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.cli import build_parser, walk
from tests.conftest import TEST_MASTER_KEY

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def run(args: list[str], env: dict[str, str], check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(GATEWAY + args, env=env, capture_output=True, text=True, timeout=120, check=False,
                            cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def cli_env(dsn: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, "GATEWAY_DATABASE_URL": dsn, "GATEWAY_MASTER_KEY": TEST_MASTER_KEY, "GATEWAY_HOME": str(tmp_path)}


def test_every_command_has_help_with_an_example() -> None:
    """Every command and every group of commands (`gateway vendor --help` lists its commands' examples)."""
    parser = build_parser()
    assert "example:" in parser.format_help()
    found = walk(parser)
    assert {"init", "vendor", "vendor create", "audit", "audit verify"} <= {" ".join(words) for words, _ in found}
    for words, sub in found:
        help_text = sub.format_help()
        assert "example:" in help_text or "examples:" in help_text, sub.prog
        assert "gateway " in help_text.rsplit("example", 1)[1], sub.prog


def test_a_vendor_administers_through_the_cli(cli_env: dict[str, str], tmp_path: Path) -> None:
    created = orjson.loads(run(["vendor", "create", "Cli Vendor"], cli_env).stdout)
    assert created["vendor_admin_key"].startswith("lpdv_")
    columns = tmp_path / "columns.json"
    columns.write_text('[{"name": "area", "type": "text"}, {"name": "n", "type": "integer"}]')
    run(["dataset", "create", "--vendor", "Cli Vendor", "--name", "counts", "--columns", str(columns),
         "--partition-column", "area"], cli_env)
    data = tmp_path / "v1.csv"
    data.write_text("area,n\nnorth,1\nsouth,2\nnorth,3\n")
    published = run(["dataset", "publish", "--vendor", "Cli Vendor", "counts", str(data)], cli_env)
    assert orjson.loads(published.stdout)["records"] == 3
    assert published.stderr == ""  # no progress when stderr is not a terminal
    bad = tmp_path / "bad.csv"
    bad.write_text("area,n\nnorth,one\n")
    failed = run(["dataset", "publish", "--vendor", "Cli Vendor", "counts", str(bad)], cli_env, check=False)
    assert failed.returncode == 1 and "line 2" in failed.stderr
    run(["member", "create", "--vendor", "Cli Vendor", "Member One"], cli_env)
    terms = tmp_path / "terms.txt"
    terms.write_text("Use internally only.")
    licence = orjson.loads(run(["licence", "grant", "--vendor", "Cli Vendor", "--member", "Member One",
                                "--dataset", "counts", "--partitions", "north", "--columns", "area,n",
                                "--terms", str(terms)], cli_env).stdout)
    assert licence["partitions"] == ["north"]
    key = orjson.loads(run(["key", "issue", "--vendor", "Cli Vendor", "--kind", "member", "--member", "Member One"],
                           cli_env).stdout)
    assert key["api_key"].startswith("lpdm_")
    listed = run(["key", "list", "--vendor", "Cli Vendor"], cli_env).stdout
    assert key["api_key"] not in listed and key["key_id"] in listed
    report = run(["usage", "report", "--vendor", "Cli Vendor", "--format", "csv"], cli_env)
    assert report.stdout.splitlines()[0].startswith("period")  # nothing delivered yet: the header only
    # Same rules as the API: another vendor's name does not resolve.
    other = run(["member", "list", "--vendor", "Nobody"], cli_env, check=False)
    assert other.returncode == 1 and "no such vendor" in other.stderr


@pytest.mark.slow
def test_init_makes_the_gateway_that_the_other_commands_then_find(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    home = tmp_path / ".gateway"
    refused = run(["vendor", "create", "Early"], env, check=False, cwd=tmp_path)
    assert refused.returncode == 1 and f"no gateway in {home}" in refused.stderr and not home.exists()
    made = run(["init"], env, cwd=tmp_path)
    assert orjson.loads(made.stdout)["made"] == [str(home), str(home / "pgdata"), str(home / "master.key")]
    assert made.stderr.startswith(f"Created a gateway in {home}")
    again = run(["init"], env, cwd=tmp_path)
    assert orjson.loads(again.stdout)["made"] == [] and "already in place" in again.stderr
    created = orjson.loads(run(["vendor", "create", "Initialised"], env, cwd=tmp_path).stdout)
    assert created["name"] == "Initialised"
    assert orjson.loads(run(["audit", "check"], env, cwd=tmp_path).stdout)["ok"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_attaches_to_the_embedded_server_of_a_running_gateway(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_HOME=str(tmp_path / "home"), GATEWAY_PORT=str(port))
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        server = subprocess.Popen(GATEWAY + ["serve"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        created = orjson.loads(run(["vendor", "create", "Attached"], env).stdout)
        # The CLI has exited; the gateway's database must still be up and hold what the CLI wrote.
        response = httpx.get(f"http://127.0.0.1:{port}/v1/admin/members", timeout=5,
                             headers={"Authorization": f"Bearer {created['vendor_admin_key']}"})
        assert response.status_code == 200 and response.json() == {"items": []}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    # The last user of the embedded server stopped it cleanly on exit.
    assert not (tmp_path / "home" / "pgdata" / "postmaster.pid").exists()
