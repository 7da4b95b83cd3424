"""Each log's tree as hash tiles in PostgreSQL: written before every checkpoint, grown only, proofs
read from them, and served in the tlog-tiles layout to the vendor's callers (schemas/audit-format.md §3.1)."""

from __future__ import annotations

import base64
import uuid

import asyncpg
import httpx
import pytest

from gateway.audit import checkpoints, tiles
from gateway.audit.writer import AuditWriter, new_log_id
from gateway.runtime import Runtime
from keys.merkle import MerkleTree, leaf_hash, verify_inclusion
from keys.notes import parse_note
from keys.tiles import TiledTree, tile_path, tile_width
from tests.audit.support import synthetic
from tests.factories import auth, licensed_member

EVENTS = 700  # two full level-0 tiles, a partial one, and a level-1 tile


async def _log_with_events(runtime: Runtime, vendor_id: uuid.UUID, count: int) -> str:
    """Another process's log (as a second instance writes it), checkpointed every 100 events."""
    writer = AuditWriter(runtime.pool, new_log_id("tiles"), "tiles", master=runtime.master, checkpoint_events=100)
    await writer.start()
    try:
        for start in range(0, count, 100):
            for _ in range(start, min(count, start + 100)):
                writer.submit(synthetic(vendor_id))
            await writer.commit(synthetic(vendor_id))
            await writer.checkpoint()
    finally:
        await writer.close()
    return writer.log_id


def _signed(note: str) -> tuple[int, bytes]:
    """Size and root of a checkpoint note, read from its text (as a tlog client does)."""
    lines = parse_note(note).unverified_text.split("\n")
    return int(lines[1]), base64.b64decode(lines[2])


async def _fetch_tree(http: httpx.AsyncClient, key: str, log_id: str, size: int) -> TiledTree:
    """The tree of `size` leaves from the tiles a client fetches over HTTP, at the widths that size has."""
    wanted = TiledTree.tiles_for(size, lambda tree: tree.root())
    fetched = {}
    for level, index in wanted:
        response = await http.get(f"/v1/audit/logs/{log_id}/{tile_path(level, index, tile_width(size, level, index))}",
                                  headers=auth(key))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        fetched[level, index] = response.content
    return TiledTree(size, fetched.__getitem__)


async def test_a_member_reads_its_vendors_logs_as_tiles_that_prove_the_signed_root(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    log_id = await _log_with_events(runtime, licensed.vendor.id, EVENTS)
    checkpoint = await client.get(f"/v1/audit/logs/{log_id}/checkpoint", headers=licensed.headers)
    assert checkpoint.status_code == 200 and checkpoint.headers["content-type"].startswith("text/plain")
    size, root = _signed(checkpoint.text)
    assert size == EVENTS + EVENTS // 100
    tree = await _fetch_tree(client, licensed.key, log_id, size)
    assert tree.root() == root
    async with runtime.pool.acquire() as conn:
        leaves = await tiles.leaf_hashes(conn, log_id, size)
    assert MerkleTree([leaves[i:i + 32] for i in range(0, len(leaves), 32)]).root() == root


async def test_only_tiles_of_the_signed_tree_and_only_of_the_vendors_logs_are_served(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    mine = await licensed_member(runtime, client)
    other = await licensed_member(runtime, client)
    log_id = await _log_with_events(runtime, mine.vendor.id, 300)
    size = 303
    base = f"/v1/audit/logs/{log_id}"
    assert (await client.get(f"{base}/tile/0/001.p/47", headers=mine.headers)).status_code == 200
    for beyond in ("tile/0/001.p/48", "tile/0/001", "tile/1/000.p/2", "tile/0/002.p/1"):
        assert (await client.get(f"{base}/{beyond}", headers=mine.headers)).status_code == 404, beyond
    for spelling in ("tile/0/1", "tile/0/x000/000", "tile/entries/000", "tile/0/000.p/256", "nothing"):
        answer = await client.get(f"{base}/{spelling}", headers=mine.headers)
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json", spelling
    assert tile_width(size, 0, 1) == 47
    # Another vendor's member: that log holds none of its vendor's events.
    for path in ("checkpoint", "tile/0/000"):
        refused = await client.get(f"{base}/{path}", headers=other.headers)
        assert refused.status_code == 404 and refused.json()["detail"] == "no such audit log"
    listed = await client.get("/v1/audit/checkpoint", headers=other.headers)
    assert log_id not in {c["log"] for c in listed.json()["checkpoints"]}
    assert log_id in {c["log"] for c in (await client.get("/v1/audit/checkpoint", headers=mine.headers)).json()[
        "checkpoints"]}


async def test_the_checkpoint_listing_names_only_logs_holding_the_callers_vendors_events(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    foreign = await _log_with_events(runtime, uuid.uuid4(), 5)
    own = await _log_with_events(runtime, licensed.vendor.id, 5)
    listed = {c["log"] for c in (await client.get("/v1/audit/checkpoint", headers=licensed.headers)).json()[
        "checkpoints"]}
    assert own in listed and foreign not in listed
    async with runtime.pool.acquire() as conn:
        holding = {r["log_id"] for r in await conn.fetch(
            "SELECT DISTINCT log_id FROM audit_events WHERE vendor_id = $1", licensed.vendor.id)}
    assert listed <= holding


async def test_a_receipt_is_proven_from_tiles_and_a_log_without_tiles_is_tiled_on_demand(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    delivered = await client.get(f"/v1/datasets/{licensed.dataset['id']}/records", params={"limit": 1},
                                 headers=licensed.headers)
    event_id = uuid.UUID(delivered.headers["audit-event"])
    await runtime.writer.checkpoint()
    async with runtime.pool.acquire() as conn:
        first = await checkpoints.receipt(conn, event_id)
        # As a log written before tiles existed: no tile, tiled_size 0. The receipt tiles it again.
        await conn.execute("ALTER TABLE audit_tiles DISABLE TRIGGER audit_tiles_grow_only")
        await conn.execute("DELETE FROM audit_tiles WHERE log_id = $1", runtime.writer.log_id)
        await conn.execute("ALTER TABLE audit_tiles ENABLE TRIGGER audit_tiles_grow_only")
        await conn.execute("UPDATE audit_logs SET tiled_size = 0 WHERE log_id = $1", runtime.writer.log_id)
        again = await checkpoints.receipt(conn, event_id)
        tiled = await conn.fetchval("SELECT tiled_size FROM audit_logs WHERE log_id = $1", runtime.writer.log_id)
    assert again == first
    assert tiled >= first["checkpoint"]["tree_size"]
    proof = [base64.b64decode(h) for h in first["inclusion_proof"]]
    verify_inclusion(leaf_hash(first["entry"].encode()), first["seq"], first["checkpoint"]["tree_size"], proof,
                     base64.b64decode(first["checkpoint"]["root_hash"]))


async def test_a_stored_tile_only_grows(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    log_id = await _log_with_events(runtime, licensed.vendor.id, 300)
    async with runtime.pool.acquire() as conn:
        full = await conn.fetchval("SELECT hashes FROM audit_tiles WHERE log_id = $1 AND level = 0 AND idx = 0", log_id)
        partial = await conn.fetchval("SELECT hashes FROM audit_tiles WHERE log_id = $1 AND level = 0 AND idx = 1",
                                      log_id)
        assert len(full) == 8192 and len(partial) == 47 * 32
        refused = [
            ("UPDATE audit_tiles SET hashes = $2 WHERE log_id = $1 AND level = 0 AND idx = 0", bytes(32) + full[32:]),
            ("UPDATE audit_tiles SET hashes = $2 WHERE log_id = $1 AND level = 0 AND idx = 1", partial[:32]),
            ("UPDATE audit_tiles SET hashes = $2 WHERE log_id = $1 AND level = 0 AND idx = 1",
             bytes(32) + partial[32:] + bytes(32)),
        ]
        for statement, value in refused:
            with pytest.raises(asyncpg.RaiseError, match="only grow"):
                await conn.execute(statement, log_id, value)
        with pytest.raises(asyncpg.RaiseError, match="only grow"):
            await conn.execute("DELETE FROM audit_tiles WHERE log_id = $1", log_id)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("TRUNCATE audit_tiles")
        # Growing a partial tile by what its tree appends is what the writer does.
        await conn.execute("UPDATE audit_tiles SET hashes = hashes || $2 WHERE log_id = $1 AND level = 0 AND idx = 1",
                           log_id, bytes(32))
