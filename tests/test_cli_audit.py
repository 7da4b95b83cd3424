"""`gateway audit export|verify|check` and the offline `python -m gateway.verify`."""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import orjson
import pytest

from gateway import cli, cli_audit
from gateway.audit import checkpoints
from gateway.runtime import Runtime
from tests.audit.support import audited_runtime, scenario, synthetic
from tests.conftest import client_for
from tests.test_layering import blocked_verify


def parser() -> argparse.ArgumentParser:
    """The `gateway` parser's audit part, as gateway/cli.py's build_parser registers it."""
    root = argparse.ArgumentParser(prog="gateway")
    cli_audit.register(root.add_subparsers(dest="command", required=True), cli._command)
    return root


async def run(runtime: Runtime, *argv: str) -> object:
    args = parser().parse_args(["audit", *argv])
    return await args.handler(runtime, args)


async def test_export_verify_and_check_from_the_command_line(dsn: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    runtime = await audited_runtime(dsn, tmp_path)
    try:
        async with client_for(runtime) as client:
            found = await scenario(runtime, client)
        bundle = tmp_path / "april.zip"
        exported = await run(runtime, "export", "--vendor", str(found.vendor_id), "--from", "2000-01-01",
                             "--to", "2100-01-01T00:00:00+09:00", "--member", "member-a", "-o", str(bundle))
        assert exported["events"] > 5 and exported["series"] == "member"  # type: ignore[index]
        [latest] = [c for c in await checkpoints.latest_checkpoints(runtime.pool, found.vendor_id)
                    if c["log"] == runtime.writer.log_id]
        trusted = tmp_path / "checkpoint.txt"
        trusted.write_text(latest["note"], encoding="utf-8")
        checked = await run(runtime, "check")
        assert checked["ok"] and checked["logs"]  # type: ignore[index]
    finally:
        await runtime.close()
    args = parser().parse_args(["audit", "verify", str(bundle), "--trusted-checkpoint", str(trusted)])
    assert args.offline(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and out.count("\n") == 1 and "consistent with the trusted checkpoint" in out
    # The same bundle, verified by `python -m gateway.verify` where asyncpg and Starlette cannot be imported;
    # and a tampered copy refused there, so the run is a real verification.
    offline = blocked_verify(bundle)
    assert offline.returncode == 0 and offline.stdout.startswith("OK: "), offline.stdout + offline.stderr
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data.replace(b'"member-a"', b'"member-b"') if item.filename == "events.jsonl" else data)
    refused = blocked_verify(tampered)
    assert refused.returncode == 1 and refused.stdout.startswith("FAILED"), refused.stdout + refused.stderr
    # The export recorded itself: a compliance:audit:read event of this vendor, signed before the export.
    conn = await asyncpg.connect(dsn)
    try:
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit_events WHERE vendor_id = $1",
                                                     found.vendor_id)]
    finally:
        await conn.close()
    assert "compliance:audit:read" in kinds


def test_verify_runs_offline_and_names_the_first_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    done = subprocess.run([sys.executable, "-m", "gateway.verify", str(broken)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=Path(__file__).resolve().parent.parent,
                          check=False)
    assert done.returncode == 1
    assert done.stdout.startswith("FAILED [bundle-format]: not a readable ZIP file")


async def test_check_fails_when_an_entry_a_column_or_an_event_is_altered(dsn: str, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    runtime = await audited_runtime(dsn, tmp_path)
    vendor = uuid.uuid4()
    try:
        for _ in range(12):
            await runtime.writer.commit(synthetic(vendor))
        await runtime.writer.checkpoint()
        log_id = runtime.writer.log_id
    finally:
        await runtime.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert (await checkpoints.check(conn)).ok
        # An attacker with the database: the append-only trigger has to go first.
        await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
        entry = orjson.loads(await conn.fetchval("SELECT entry FROM audit_events WHERE log_id = $1 AND seq = 4",
                                                 log_id))
        original = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        entry["delivery"]["records"] = 9999
        await conn.execute("UPDATE audit_events SET entry = $2 WHERE log_id = $1 AND seq = 4", log_id,
                           orjson.dumps(entry, option=orjson.OPT_SORT_KEYS))
        assert "hash to another root" in _problem(await checkpoints.check(conn), log_id)
        await conn.execute("UPDATE audit_events SET entry = $2, vendor_id = gen_random_uuid() "
                           "WHERE log_id = $1 AND seq = 4", log_id, original)
        assert "column vendor_id differs" in _problem(await checkpoints.check(conn), log_id)
        await conn.execute("DELETE FROM audit_events WHERE log_id = $1 AND seq = 4", log_id)
        assert "a gap or a duplicate" in _problem(await checkpoints.check(conn), log_id)
    finally:
        await conn.close()
    # The command exits non-zero, naming the log and the problem.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        with pytest.raises(SystemExit) as exited:
            await run(SimpleNamespace(pool=pool), "check")  # type: ignore[arg-type]
    finally:
        await pool.close()
    assert exited.value.code == 1
    assert f"audit log {log_id} fails: event 5 found where event 4 was expected" in capsys.readouterr().err


def _problem(result: checkpoints.CheckResult, log_id: str) -> str:
    assert not result.ok
    [entry] = [e for e in result.logs if e.log_id == log_id]
    assert entry.problem is not None
    return entry.problem
