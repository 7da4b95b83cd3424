"""Signed checkpoints of the audit logs, receipts for single events, and `gateway audit check`.

A checkpoint is a C2SP tlog-checkpoint signed note over a log's Merkle root at a tree size:

    lpd-gateway/<log_id>
    <tree size>
    <base64 root hash>
    signed-at <RFC 3339 UTC time, microseconds>

The extension line is signed with the rest, so a verifier can tell whether the key was valid when it
signed (key rotation). schemas/audit-format.md is the specification.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway import signing_keys
from gateway.audit import tiles
from gateway.audit.events import utc_text
from gateway.audit.format import AUDIT, SIGNED_AT, CheckpointError, PublicKey, b64, open_checkpoint, origin
from gateway.errors import NotFound, ServiceUnavailable
from gateway.signing_keys import note_signer, open_key
from keys.merkle import CompactRange, ProofError, leaf_hash, verify_inclusion
from keys.notes import format_checkpoint
from keys.sealing import MasterKey
from keys.signing import SigningKey

log = logging.getLogger(__name__)

# Leaf hashes come from PostgreSQL in chunks of this many events: 3.2 MB per round trip.
_LEAF_CHUNK = 100_000


# -- signing ----------------------------------------------------------------------------------------

class CheckpointSigner:
    """Signs and stores checkpoints with the current audit key, unsealed once per key."""

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self._keys: dict[str, SigningKey] = {}

    async def sign(self, conn: asyncpg.Connection, log_id: str, size: int, root: bytes) -> str:
        """Sign (log, size, root) and store it; returns the note."""
        async with conn.transaction():
            key, signed_at = await self._current(conn)
            text = format_checkpoint(origin(log_id), size, root, [SIGNED_AT + utc_text(signed_at)])
            note = note_signer(key).sign(text)
            await conn.execute(
                "INSERT INTO audit_checkpoints (log_id, tree_size, root_hash, note, key_id, signed_at) "
                "VALUES ($1, $2, $3, $4, $5, $6)", log_id, size, root, note, key.key_id, signed_at)
        return note

    async def sign_text(self, conn: asyncpg.Connection, text_at: Callable[[datetime], str]) -> str:
        """Sign the note text `text_at(signed_at)` with the audit key current at `signed_at`, the database
        clock read under that key's lock, as checkpoints are (an evidence bundle's manifest.sig)."""
        async with conn.transaction():
            key, signed_at = await self._current(conn)
            return note_signer(key).sign(text_at(signed_at))

    async def sign_bytes(self, conn: asyncpg.Connection,
                         message_at: Callable[[datetime], bytes]) -> tuple[str, datetime, bytes, bytes]:
        """Sign the bytes `message_at(signed_at)` with the audit key current at `signed_at` (a termination
        notice, gateway/terminations.py): (key id, signed_at, message, Ed25519 signature). Call it in the
        transaction that stores the signature: the key's row stays locked until that commits."""
        key, signed_at = await self._current(conn)
        message = message_at(signed_at)
        return key.key_id, signed_at, message, key.sign(message)

    async def _current(self, conn: asyncpg.Connection) -> tuple[SigningKey, datetime]:
        """The current audit key, locked FOR SHARE until the transaction ends, and the time read after."""
        # FOR SHARE: a rotation (gateway.signing_keys.rotate) waits until this signature is stored, and
        # its not_after, read from the clock afterwards, is later than our signed-at.
        for _ in range(3):
            row = await conn.fetchrow("SELECT key_id, sealed_private FROM signing_keys WHERE purpose = $1 "
                                      "AND not_after IS NULL FOR SHARE", AUDIT)
            if row is not None:
                break  # None: a rotation committed while we waited for the lock; read the new key
        else:
            raise RuntimeError("there is no current audit signing key")
        signed_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
        key = self._keys.get(row["key_id"])
        if key is None:
            key = self._keys[row["key_id"]] = open_key(self.master, row["key_id"], row["sealed_private"])
        return key, signed_at


# -- what the API serves ----------------------------------------------------------------------------

def checkpoint_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"log": row["log_id"], "origin": origin(row["log_id"]), "tree_size": row["tree_size"],
            "root_hash": b64(bytes(row["root_hash"])), "key_id": row["key_id"],
            "signed_at": utc_text(row["signed_at"]), "note": row["note"]}


async def latest_checkpoints(conn: asyncpg.Connection | asyncpg.Pool, vendor_id: uuid.UUID) -> list[dict[str, Any]]:
    """The newest checkpoint of every log holding events of the vendor (GET /v1/audit/checkpoint):
    its members keep these. Other logs are none of their business."""
    rows = await conn.fetch("SELECT DISTINCT ON (c.log_id) c.* FROM audit_checkpoints c "
                            "JOIN audit_log_vendors v ON v.log_id = c.log_id AND v.vendor_id = $1 "
                            "ORDER BY c.log_id, c.tree_size DESC", vendor_id)
    return [checkpoint_json(row) for row in rows]


async def vendor_log_checkpoint(conn: asyncpg.Connection | asyncpg.Pool, vendor_id: uuid.UUID,
                                log_id: str) -> asyncpg.Record:
    """The newest checkpoint of a log holding events of the vendor; NotFound for any other log."""
    row = await conn.fetchrow("SELECT c.* FROM audit_checkpoints c JOIN audit_log_vendors v "
                              "ON v.log_id = c.log_id AND v.vendor_id = $1 WHERE c.log_id = $2 "
                              "ORDER BY c.tree_size DESC LIMIT 1", vendor_id, log_id)
    if row is None:
        raise NotFound("audit log")
    return row


async def public_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    """Every audit key with its validity and C2SP verifier key (for the public keys endpoint)."""
    return [key.to_json() for key in await signing_keys.public_keys(conn, AUDIT)]


# An event, its covering checkpoint (if any) and how far its log is tiled: one round trip.
_RECEIPT = """
    SELECT e.log_id, e.seq, e.entry, e.vendor_id, e.member_id, l.tiled_size,
           c.tree_size, c.root_hash, c.note, c.key_id, c.signed_at
    FROM audit_events e
    JOIN audit_logs l ON l.log_id = e.log_id
    LEFT JOIN LATERAL (SELECT * FROM audit_checkpoints c WHERE c.log_id = e.log_id AND c.tree_size > e.seq
                       ORDER BY c.tree_size LIMIT 1) c ON true
    WHERE e.event_id = $1"""


async def receipt(conn: asyncpg.Connection, event_id: uuid.UUID, *, vendor_id: uuid.UUID | None = None,
                  member_id: uuid.UUID | None = None) -> dict[str, Any]:
    """An event's entry, its covering checkpoint and the RFC 9162 inclusion proof: verifiable offline.

    The covering checkpoint is the first one whose tree contains the event, the closest signed bound
    on when the event was committed. `vendor_id` / `member_id` restrict the answer to the caller's own
    events (an entry names who did what): another's event is NotFound, as a missing one is.
    Raises ServiceUnavailable (with Retry-After) while no checkpoint covers the event yet.
    """
    event = await conn.fetchrow(_RECEIPT, event_id)
    if (event is None or (vendor_id is not None and event["vendor_id"] != vendor_id)
            or (member_id is not None and event["member_id"] != member_id)):
        raise NotFound("audit event")
    if event["tree_size"] is None:
        raise ServiceUnavailable("no signed checkpoint covers this event yet; retry in a few seconds",
                                 headers={"Retry-After": "2"})
    covering = event
    size, seq = covering["tree_size"], event["seq"]
    proof = await tiles.prove(conn, event["log_id"], size, lambda tree: tree.inclusion_proof(seq, size),
                              tiled=event["tiled_size"])
    entry = bytes(event["entry"])
    try:
        verify_inclusion(leaf_hash(entry), seq, size, proof, bytes(covering["root_hash"]))
    except ProofError:
        # The receipt will not verify, which is the truth about this database: say so in the log too.
        log.error("audit log %s: event %d no longer hashes into checkpoint %d; run `gateway audit check`",
                  event["log_id"], seq, size)
    key = next(k for k in await signing_keys.public_keys(conn, AUDIT) if k.key_id == covering["key_id"])
    return {"event_id": str(event_id), "log": event["log_id"], "seq": event["seq"], "entry": entry.decode("utf-8"),
            "leaf_hash": b64(leaf_hash(entry)), "checkpoint": checkpoint_json(covering),
            "inclusion_proof": [b64(h) for h in proof], "key": key.to_json()}


# -- gateway audit check ----------------------------------------------------------------------------

@dataclass
class LogCheck:
    log_id: str
    events: int = 0
    checkpoints: int = 0
    uncovered: int = 0
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"log": self.log_id, "events": self.events, "checkpoints": self.checkpoints,
                "events_after_last_checkpoint": self.uncovered, "ok": self.problem is None, "problem": self.problem}


@dataclass
class CheckResult:
    logs: list[LogCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(entry.problem is None for entry in self.logs)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "logs": [entry.to_json() for entry in self.logs]}


# A log not seen for this long belongs to a dead process (gateway/liveness.py keeps the same bound).
DEAD_AFTER_SECONDS = 6.0

# The columns that repeat fields of the entry (for queries): they must agree with it.
_CHECKED_COLUMNS = ("event_id", "kind", "outcome", "vendor_id", "member_id", "dataset_id", "licence_id")


async def check(conn: asyncpg.Connection, progress: Any = None) -> CheckResult:
    """Re-verify every log in PostgreSQL: numbering, entries against their columns, and each checkpoint's
    signature and root recomputed from the entries. Reads everything; for a batch job, not a request."""
    keys = await signing_keys.public_keys(conn, AUDIT)
    logs = await conn.fetch(
        "SELECT e.log_id, l.ended_at IS NOT NULL AS ended, "
        "NOT l.shared AND l.seen_at < clock_timestamp() - make_interval(secs => $1) AS silent FROM "
        "(SELECT log_id FROM audit_logs UNION SELECT DISTINCT log_id FROM audit_events) e "
        "LEFT JOIN audit_logs l USING (log_id) ORDER BY 1", DEAD_AFTER_SECONDS)
    result = CheckResult()
    done = 0
    for row in logs:
        entry = LogCheck(row["log_id"])
        result.logs.append(entry)
        try:
            done = await _check_log(conn, row["log_id"], keys, entry, done, progress)
            if entry.uncovered and (row["ended"] or row["silent"]):
                # A running process signs within seconds; one that ended or died never will by itself.
                state = "has ended" if row["ended"] else "stopped answering"
                raise _Failed(f"{entry.uncovered} events are covered by no signed checkpoint and the log's process "
                              f"{state}: start a gateway (`gateway serve`), which signs the final checkpoint "
                              "within seconds, then check again")
        except _Failed as failed:
            entry.problem = str(failed)
    return result


class _Failed(Exception):
    pass


async def _check_log(conn: asyncpg.Connection, log_id: str, keys: list[PublicKey], entry: LogCheck, done: int,
                     progress: Any) -> int:
    rows = await conn.fetch("SELECT tree_size, root_hash, note FROM audit_checkpoints WHERE log_id = $1 "
                            "ORDER BY tree_size", log_id)
    sizes = [row["tree_size"] for row in rows]
    tree = CompactRange()
    columns = ", ".join(_CHECKED_COLUMNS)
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = conn.cursor(f"SELECT seq, at, credential_id, {columns}, entry FROM audit_events "
                             "WHERE log_id = $1 ORDER BY seq", log_id, prefetch=10_000)
        async for row in cursor:
            if row["seq"] != tree.size:
                raise _Failed(f"event {row['seq']} found where event {tree.size} was expected (a gap or a duplicate)")
            raw = bytes(row["entry"])
            _check_entry(log_id, row, raw)
            tree.append(leaf_hash(raw))
            index = bisect.bisect_left(sizes, tree.size)
            if index < len(sizes) and sizes[index] == tree.size:
                _check_checkpoint(log_id, rows[index], tree, keys)
                entry.checkpoints += 1
            done += 1
            if progress is not None:
                progress(done)
    entry.events = tree.size
    if sizes and sizes[-1] > tree.size:
        raise _Failed(f"checkpoint at size {sizes[-1]} but the log has only {tree.size} events (events deleted?)")
    entry.uncovered = tree.size - (sizes[-1] if sizes else 0)
    return done


def _check_entry(log_id: str, row: asyncpg.Record, raw: bytes) -> None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Failed(f"event {row['seq']}: the entry is not JSON") from None
    if body.get("log") != log_id or body.get("seq") != row["seq"]:
        raise _Failed(f"event {row['seq']}: the entry names log {body.get('log')} event {body.get('seq')}")
    if body.get("at") != utc_text(row["at"]):
        raise _Failed(f"event {row['seq']}: column at differs from the entry")
    actor = body.get("actor") or {}
    if actor.get("credential_id") != _text(row["credential_id"]):
        raise _Failed(f"event {row['seq']}: column credential_id differs from the entry")
    for name in _CHECKED_COLUMNS:
        if body.get(name) != _text(row[name]):
            raise _Failed(f"event {row['seq']}: column {name} differs from the entry")


def _check_checkpoint(log_id: str, row: asyncpg.Record, tree: CompactRange, keys: list[PublicKey]) -> None:
    try:
        opened = open_checkpoint(row["note"], keys, log_id)
    except CheckpointError as e:
        raise _Failed(f"checkpoint {row['tree_size']}: {e.reason}") from None
    if opened.size != row["tree_size"] or opened.root != bytes(row["root_hash"]):
        raise _Failed(f"checkpoint {row['tree_size']}: its note disagrees with its row")
    if opened.root != tree.root():
        raise _Failed(f"checkpoint {row['tree_size']}: the events hash to another root (an entry was altered)")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


