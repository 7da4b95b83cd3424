"""The command line's changes land in one shared log per deployment, one command at a time, each
resuming it where the last left it (gateway/liveness.py, schemas/migrations/0011)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway import credentials, vendors
from gateway.actors import cli_actor
from gateway.audit import checkpoints, tiles
from gateway.audit.format import open_checkpoint
from gateway.runtime import Runtime
from gateway.signing_keys import AUDIT, public_keys
from keys.apikeys import KeyKind
from keys.merkle import MerkleTree
from tests.conftest import TEST_MASTER_KEY, make_config, open_runtime
from tests.test_cli import run


async def _cli_runtime(dsn: str, home: Path) -> Runtime:
    return await Runtime.open(make_config(dsn, home), serving=False, role="cli")


async def _create_vendor(dsn: str, home: Path, name: str) -> str:
    runtime = await _cli_runtime(dsn, home)
    try:
        await vendors.create(runtime.writer, cli_actor(), name)
        return runtime.writer.log_id
    finally:
        await runtime.close()


async def _entries(conn: asyncpg.Connection, log_id: str) -> list[dict[str, object]]:
    rows = await conn.fetch("SELECT entry FROM audit_events WHERE log_id = $1 ORDER BY seq", log_id)
    return [orjson.loads(row["entry"]) for row in rows]


async def test_commands_append_to_one_log_that_resumes_where_it_stood(dsn: str, tmp_path: Path) -> None:
    logs = [await _create_vendor(dsn, tmp_path, f"Shared Log Vendor {i}") for i in range(3)]
    assert len(set(logs)) == 1, logs
    [log_id] = set(logs)
    conn = await asyncpg.connect(dsn)
    try:
        entries = await _entries(conn, log_id)
        assert [e["seq"] for e in entries] == list(range(len(entries))) and len(entries) >= 3
        shared, ended = await conn.fetchrow("SELECT shared, ended_at FROM audit_logs WHERE log_id = $1", log_id)
        assert shared and ended is None
        # Each command signed a checkpoint over everything when it closed; the newest covers every event
        # and its root is the root of the whole log, so the resumed tree was the log's tree.
        note = await conn.fetchval("SELECT note FROM audit_checkpoints WHERE log_id = $1 ORDER BY tree_size DESC "
                                   "LIMIT 1", log_id)
        opened = open_checkpoint(note, await public_keys(conn, AUDIT), log_id)
        leaves = await tiles.leaf_hashes(conn, log_id, len(entries))
        assert opened.size == len(entries)
        assert opened.root == MerkleTree([leaves[i:i + 32] for i in range(0, len(leaves), 32)]).root()
        result = await checkpoints.check(conn)
    finally:
        await conn.close()
    assert result.ok, result.to_json()


async def test_a_members_series_continues_across_commands(dsn: str, tmp_path: Path) -> None:
    runtime = await _cli_runtime(dsn, tmp_path)
    try:
        vendor = await vendors.create(runtime.writer, cli_actor(), "Series Vendor")
    finally:
        await runtime.close()
    for _ in range(2):
        runtime = await _cli_runtime(dsn, tmp_path)
        try:
            await credentials.issue(runtime.writer, cli_actor(vendor.id), runtime.hasher(), KeyKind.VENDOR, vendor.id,
                                    None, label="again")
        finally:
            await runtime.close()
    conn = await asyncpg.connect(dsn)
    try:
        entries = await _entries(conn, runtime.writer.log_id)
    finally:
        await conn.close()
    numbers = [e["vendor_seq"] for e in entries if e["vendor_id"] == str(vendor.id)]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 3, numbers


async def test_a_command_that_records_nothing_creates_no_log(dsn: str, tmp_path: Path) -> None:
    # The deployment's first writer makes the audit key and records that (schemas/audit-format.md
    # §4.3): here a serving instance, started before the command.
    serving = await open_runtime(dsn, tmp_path / "serving")
    await serving.close()
    runtime = await _cli_runtime(dsn, tmp_path)
    await runtime.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_logs WHERE log_id = $1", runtime.writer.log_id) == 0
    finally:
        await conn.close()


async def test_a_serving_process_that_records_nothing_leaves_no_log(dsn: str, tmp_path: Path) -> None:
    first = await open_runtime(dsn, tmp_path / "first")  # records the audit key's creation: its log exists
    await first.close()
    idle = await open_runtime(dsn, tmp_path / "idle")
    await asyncio.sleep(1.5)  # a heartbeat, which registers nothing
    await idle.close()
    conn = await asyncpg.connect(dsn)
    try:
        logs = {r["log_id"] for r in await conn.fetch("SELECT log_id FROM audit_logs")}
    finally:
        await conn.close()
    assert first.writer.log_id in logs and idle.writer.log_id not in logs


async def test_a_second_command_waits_for_the_first(dsn: str, tmp_path: Path) -> None:
    first = await _cli_runtime(dsn, tmp_path)
    try:
        await vendors.create(first.writer, cli_actor(), "First Command")
        second = asyncio.create_task(_cli_runtime(dsn, tmp_path))
        await asyncio.sleep(0.5)
        assert not second.done(), "two commands appended to the shared log at once"
    finally:
        await first.close()
    later = await asyncio.wait_for(second, 10)
    try:
        assert later.writer.log_id == first.writer.log_id and later.writer.size == first.writer.size
    finally:
        await later.close()


async def test_a_serving_gateway_does_not_take_the_shared_log_for_dead(dsn: str, tmp_path: Path) -> None:
    log_id = await _create_vendor(dsn, tmp_path, "Idle Log Vendor")
    serving = await open_runtime(dsn, tmp_path / "serving")
    try:
        await serving.liveness.reap(steady=True)  # type: ignore[union-attr]
    finally:
        await serving.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT ended_at FROM audit_logs WHERE log_id = $1", log_id) is None
    finally:
        await conn.close()


@pytest.mark.slow
def test_cli_commands_in_their_own_processes_share_one_log(dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(tmp_path))
    for name in ("Process One", "Process Two"):
        run(["vendor", "create", name], env)
    assert orjson.loads(run(["audit", "check"], env).stdout)["ok"]

    async def logs() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r["log_id"] for r in await conn.fetch("SELECT log_id FROM audit_logs")]
        finally:
            await conn.close()

    found = asyncio.run(logs())
    assert len(found) == 1, found
