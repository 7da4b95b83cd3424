"""Each audit log's Merkle tree as C2SP tlog-tiles in PostgreSQL (`audit_tiles`), and proofs from them.

The writer stores the tiles its events fill before it signs a checkpoint over them (AuditWriter keeps
the right edge in memory, keys.tiles.RightEdge), so every checkpointed tree is in tiles: a receipt or a
bundle's proofs read a few tiles instead of hashing every event of the log. `audit_logs.tiled_size`
says how many leaves the stored tiles hold; a log tiled less far than asked (one written before tiles
existed, or whose process died between a commit and its next checkpoint) is tiled from its events
first, once. Tiles only grow, and a full one never changes (migration 0009 refuses anything else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import asyncpg

from keys.tiles import TILE_HEIGHT, RightEdge, TiledTree, TileKey

T = TypeVar("T")

# Leaf hashes come from PostgreSQL in chunks of this many events: 3.2 MB per round trip.
_LEAF_CHUNK = 100_000

_STORE = ("INSERT INTO audit_tiles AS t (log_id, level, idx, hashes) VALUES ($1, $2, $3, $4) "
          "ON CONFLICT (log_id, level, idx) DO UPDATE SET hashes = EXCLUDED.hashes "
          "WHERE length(EXCLUDED.hashes) > length(t.hashes)")


class LogDamaged(RuntimeError):
    """The events of a log in PostgreSQL are not numbered 0, 1, 2, ... without gaps or duplicates."""


async def leaf_hashes(conn: asyncpg.Connection, log_id: str, end: int, start: int = 0) -> bytes:
    """The leaf hashes of events start..end-1 of a log, computed by PostgreSQL from the stored entries."""
    chunks = []
    for first in range(start, end, _LEAF_CHUNK):
        last = min(first + _LEAF_CHUNK, end)
        row = await conn.fetchrow(
            "SELECT string_agg(sha256('\\x00'::bytea || entry), ''::bytea ORDER BY seq) AS leaves, "
            "count(*) AS n, count(DISTINCT seq) AS distinct_n FROM audit_events "
            "WHERE log_id = $1 AND seq >= $2 AND seq < $3", log_id, first, last)
        if row["n"] != last - first or row["distinct_n"] != last - first:
            raise LogDamaged(f"audit log {log_id} has {row['n']} events ({row['distinct_n']} distinct) numbered "
                             f"{first}..{last - 1}, not {last - first}: run `gateway audit check`")
        chunks.append(bytes(row["leaves"]))
    return b"".join(chunks)


async def store(conn: asyncpg.Connection, log_id: str, edge: RightEdge) -> None:
    """Store the tiles that changed since the last store, and the size they now hold."""
    size, changed = edge.size, edge.take()
    try:
        async with conn.transaction():
            await conn.executemany(_STORE, [(log_id, level, index, hashes) for level, index, hashes in changed])
            await conn.execute("UPDATE audit_logs SET tiled_size = $2 WHERE log_id = $1 AND tiled_size < $2",
                               log_id, size)
    except BaseException:
        edge.requeue(changed)
        raise


async def right_edge(conn: asyncpg.Connection, log_id: str, size: int) -> RightEdge:
    """The right edge of the stored tiles of a log tiled to `size`."""
    partials: dict[int, bytes] = {}
    level = 0
    while level == 0 or size >> (TILE_HEIGHT * level):
        index = size >> (TILE_HEIGHT * (level + 1))
        hashes = await conn.fetchval("SELECT hashes FROM audit_tiles WHERE log_id = $1 AND level = $2 AND idx = $3",
                                     log_id, level, index)
        partials[level] = bytes(hashes or b"")
        level += 1
    return RightEdge.resume(size, partials)


async def extend(conn: asyncpg.Connection, log_id: str, size: int) -> None:
    """Tile a log's first `size` events if its stored tiles hold fewer (hashing only the rest)."""
    if await conn.fetchval("SELECT tiled_size FROM audit_logs WHERE log_id = $1", log_id) >= size:
        return
    async with conn.transaction():
        # One tiler at a time per log; the one that waited finds the work done.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('audit_tiles'), hashtext($1))", log_id)
        tiled = await conn.fetchval("SELECT tiled_size FROM audit_logs WHERE log_id = $1", log_id)
        if tiled >= size:
            return
        edge = await right_edge(conn, log_id, tiled)
        leaves = await leaf_hashes(conn, log_id, size, tiled)
        for start in range(0, len(leaves), 32):
            edge.append(leaves[start:start + 32])
        await store(conn, log_id, edge)


async def extend_to_checkpoint(conn: asyncpg.Connection, log_id: str) -> None:
    """Tile a log as far as its newest checkpoint."""
    size = await conn.fetchval("SELECT max(tree_size) FROM audit_checkpoints WHERE log_id = $1", log_id)
    if size:
        await extend(conn, log_id, size)


async def prove(conn: asyncpg.Connection, log_id: str, size: int, compute: Callable[[TiledTree], T], *,
                tiled: int | None = None) -> T:
    """`compute(tree)` over the log's tree of `size` leaves, reading only the tiles it needs (one query).
    `tiled`: the log's tiled_size if the caller has read it."""
    if tiled is None or tiled < size:
        await extend(conn, log_id, size)
    wanted = TiledTree.tiles_for(size, compute)
    tiles = await _fetch(conn, log_id, wanted)
    return compute(TiledTree(size, tiles.__getitem__))


async def reader(conn: asyncpg.Connection, log_id: str, first_leaf: int) -> Callable[[int], TiledTree]:
    """Trees of the log up to `size` leaves (tiled that far already), for many proofs of leaves from
    `first_leaf` on (a bundle): its level-0 tiles from that leaf's on and every higher tile, read at once."""
    rows = await conn.fetch("SELECT level, idx, hashes FROM audit_tiles WHERE log_id = $1 AND (level > 0 OR idx >= $2)",
                            log_id, first_leaf >> TILE_HEIGHT)
    tiles = {(row["level"], row["idx"]): bytes(row["hashes"]) for row in rows}
    return lambda tree_size: TiledTree(tree_size, tiles.__getitem__)


async def tile(conn: asyncpg.Connection, log_id: str, level: int, index: int) -> bytes | None:
    """The stored hashes of one tile (a prefix is every smaller tree's tile), or None."""
    hashes = await conn.fetchval("SELECT hashes FROM audit_tiles WHERE log_id = $1 AND level = $2 AND idx = $3",
                                 log_id, level, index)
    return None if hashes is None else bytes(hashes)


async def _fetch(conn: asyncpg.Connection, log_id: str, keys: set[TileKey]) -> dict[TileKey, bytes]:
    levels, indexes = [k[0] for k in keys], [k[1] for k in keys]
    rows = await conn.fetch("SELECT level, idx, hashes FROM audit_tiles WHERE log_id = $1 AND (level, idx) IN "
                            "(SELECT * FROM unnest($2::smallint[], $3::bigint[]))", log_id, levels, indexes)
    return {(row["level"], row["idx"]): bytes(row["hashes"]) for row in rows}

