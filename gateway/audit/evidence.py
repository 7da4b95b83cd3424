"""Evidence bundles: a vendor's audit events of a period, with everything needed to verify them offline.

A bundle is a ZIP (layout and verification in schemas/audit-format.md):

    manifest.json       scope, per-log summary, SHA-256 of every other file
    manifest.sig        a signed note over manifest.json's SHA-256 and the export time, by the audit key
    events.jsonl        the selected events' canonical entries, one per line, in (log, seq) order
    proofs.jsonl        line i: the RFC 9162 inclusion proof of events.jsonl line i in its covering checkpoint
    checkpoints.jsonl   per log, every checkpoint from the first covering the log's first event to the newest
    consistency.jsonl   per log, a consistency proof between each two successive checkpoints
    keys.json           the audit public keys with their validity
    key-events.jsonl    the audit keys' signed history: their keyring events, each with its checkpoint and proof
    terms.jsonl         the licence terms texts the events name (licence, version), with their SHA-256
    terminations.jsonl  the termination notices (as signed, with their signatures) and deletion attestations
                        the events name, with their SHA-256
    report.json         the statutory report's figures (gateway/audit/report.py), from the manifest and events
    report.html         the report rendered from report.json

Deletion is what an offline verifier finds hardest to see, so an export without a member or dataset
filter takes, per log, the vendor's events as a gap-free `vendor_seq` series (a member-only filter:
`member_seq`), plus the vendor's neighbouring event on each side as a witness that the series starts and
ends where the bundle says. Filtered exports carry only inclusion proofs.

The export streams: events go from a server-side cursor to the ZIP; per log only its hash tiles from
the first exported event on are in memory (32 bytes per event, gateway/audit/tiles.py), from which
every proof is read.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import itertools
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
import orjson

from gateway.audit import report, tiles
from gateway.audit.checkpoints import CheckpointSigner
from gateway.audit.events import EventKind, utc_text
from gateway.audit.format import (
    FILES,
    FORMAT,
    MANIFEST_SIG,
    b64,
    manifest_signature_text,
    named_termination,
    origin,
)
from gateway.errors import InvalidInput
from gateway.signing_keys import AUDIT, public_keys
from keys.merkle import leaf_hash
from keys.tiles import TiledTree

_BUFFER = 1 << 20

Progress = Callable[[int], None]
# Neighbouring events' proofs share their upper nodes: encode each node once, not once per event.
_b64_node = functools.lru_cache(maxsize=1 << 16)(b64)


@dataclass
class ExportResult:
    path: Path
    events: int = 0
    logs: int = 0
    checkpoints: int = 0
    pending: int = 0
    series: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "events": self.events, "logs": self.logs, "checkpoints": self.checkpoints,
                "events_not_yet_checkpointed": self.pending, "series": self.series, "warnings": self.warnings}


@dataclass(frozen=True)
class _Scope:
    vendor_id: uuid.UUID
    start: datetime
    end: datetime
    member_id: uuid.UUID | None
    dataset_id: uuid.UUID | None

    @property
    def series(self) -> str | None:
        """Which gap-free numbering the selection follows: the vendor's, the member's, or none."""
        if self.dataset_id is not None:
            return None
        return "member" if self.member_id is not None else "vendor"

    def to_json(self) -> dict[str, Any]:
        return {"vendor_id": str(self.vendor_id), "from": utc_text(self.start), "to": utc_text(self.end),
                "member_id": _text(self.member_id), "dataset_id": _text(self.dataset_id)}


async def export(conn_or_pool: asyncpg.Connection | asyncpg.Pool, vendor_id: uuid.UUID, start: datetime,
                 end: datetime, member_id: uuid.UUID | None = None, dataset_id: uuid.UUID | None = None, *,
                 path: str | os.PathLike[str], signer: CheckpointSigner,
                 progress: Progress | None = None) -> ExportResult:
    """Write the bundle of `vendor_id`'s events with start <= at < end to `path` (atomically); `signer`
    signs its manifest with the audit key current at export (manifest.sig)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("the period's start and end need a time zone, e.g. 2026-04-01T00:00:00Z")
    if not start < end:
        raise InvalidInput("the period must end after it starts")
    scope = _Scope(vendor_id, start.astimezone(UTC), end.astimezone(UTC), member_id, dataset_id)
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        if isinstance(conn_or_pool, asyncpg.Pool):
            async with conn_or_pool.acquire() as conn:
                result = await _export(conn, scope, partial, signer, progress)
        else:
            result = await _export(conn_or_pool, scope, partial, signer, progress)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    result.path = target
    return result


async def export_apart(dsn: str, vendor_id: uuid.UUID, start: datetime, end: datetime,
                       member_id: uuid.UUID | None = None, dataset_id: uuid.UUID | None = None, *,
                       path: str | os.PathLike[str], signer: CheckpointSigner) -> tuple[ExportResult, str]:
    """`export` on a thread of its own, with its own connection and event loop, and the bundle's SHA-256.

    For the gateway's API: an export is seconds of CPU per hundred thousand events (proofs, hashing,
    compression). On the serving loop it would hold every other request of the process between its
    reads; on a thread it shares the interpreter in the switch interval's slices (5 ms).
    """

    async def apart() -> tuple[ExportResult, str]:
        conn = await asyncpg.connect(dsn)
        try:
            result = await export(conn, vendor_id, start, end, member_id, dataset_id, path=path, signer=signer)
        finally:
            await conn.close()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:  # noqa: ASYNC230 - this loop serves no request
            while chunk := handle.read(_BUFFER):
                digest.update(chunk)
        return result, digest.hexdigest()

    return await asyncio.to_thread(asyncio.run, apart())


class _Sink:
    """A file being written: buffered, hashed and counted as it goes (the manifest needs each file's hash)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= _BUFFER:
            self.flush()

    def flush(self) -> None:
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        self.sha256.update(data)
        self.size += len(data)
        self.raw.write(data)

    def describe(self) -> dict[str, Any]:
        self.flush()
        return {"sha256": self.sha256.hexdigest(), "bytes": self.size}


async def _export(conn: asyncpg.Connection, scope: _Scope, partial: Path, signer: CheckpointSigner,
                  progress: Progress | None) -> ExportResult:
    result = ExportResult(partial, series=scope.series)
    summary = report.Summary(utc_text(scope.start), utc_text(scope.end))
    terms: set[tuple[str, int]] = set()
    terminations: dict[str, bool] = {}  # named by the events: whether an attestation event is among them
    logs: list[dict[str, Any]] = []
    pending_logs: list[dict[str, Any]] = []
    files: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lpd-evidence-") as work, \
            zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        # Local scratch files, written in 1 MB pieces: proofs, checkpoints and consistency proofs wait
        # here while events.jsonl streams into the ZIP (a ZIP takes one file at a time).
        side = {name: open(Path(work) / name, "w+b") for name in FILES[1:4]}  # noqa: SIM115, ASYNC230
        try:
            sinks = {name: _Sink(handle) for name, handle in side.items()}
            # A log not tiled as far as its checkpoints (written before tiles existed) is tiled first:
            # the snapshot below is read-only. The writers store tiles before each checkpoint they sign.
            for plan in await _plan(conn, scope):
                await tiles.extend_to_checkpoint(conn, plan.log_id)
            for log_id in await conn.fetch(f"SELECT DISTINCT log_id FROM audit_events WHERE {_KEY_EVENTS}"):
                await tiles.extend_to_checkpoint(conn, log_id["log_id"])
            # One snapshot for every query: checkpoints, events and terms agree with each other.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                with bundle.open("events.jsonl", "w", force_zip64=True) as raw_events:
                    events = _Sink(raw_events)
                    for plan in await _plan(conn, scope):
                        entry = await _export_log(conn, scope, plan, events, sinks, summary, terms, terminations,
                                                  result, progress)
                        (logs if entry["events"] else pending_logs).append(entry)
                    files["events.jsonl"] = events.describe()
                keys = [key.to_json() for key in await public_keys(conn, AUDIT)]
                key_events = await _key_events(conn, result)
                terms_jsonl = await _terms(conn, terms, result)
                terminations_jsonl = await _terminations(conn, terminations, result)
                names = await _names(conn, scope)
            for name, sink in sinks.items():
                files[name] = sink.describe()
                side[name].seek(0)
                with bundle.open(name, "w", force_zip64=True) as out:
                    shutil.copyfileobj(side[name], out, _BUFFER)
        finally:
            for handle in side.values():
                handle.close()
        written = {"keys.json": orjson.dumps({"keys": keys}, option=orjson.OPT_INDENT_2) + b"\n",
                   "key-events.jsonl": key_events,
                   "terms.jsonl": terms_jsonl, "terminations.jsonl": terminations_jsonl}

        def signed_text(signed_at: datetime) -> str:
            # Called under the signing key's lock, once the time is read: the manifest names the export
            # time the signature does, and the report shows it.
            created_at = utc_text(signed_at)
            manifest: dict[str, Any] = {
                "format": FORMAT, "created_at": created_at, "scope": scope.to_json(), "series": scope.series,
                "report": report.GENERATOR, "logs": logs,
                "pending_logs": [{"log": p["log"], "pending": p["pending"]} for p in pending_logs],
                "names": names}
            figures = report.figures(summary, manifest)
            written["report.json"] = report.figures_json(figures)
            written["report.html"] = report.render(figures, manifest).encode("utf-8")
            for name, data in written.items():
                files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            manifest["files"] = {name: files[name] for name in FILES}
            written["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
            return manifest_signature_text(hashlib.sha256(written["manifest.json"]).hexdigest(), created_at)

        written[MANIFEST_SIG] = (await signer.sign_text(conn, signed_text)).encode("utf-8")
        for name, data in written.items():
            bundle.writestr(name, data)
    result.logs = len(logs)
    return result


# The keyring's events, of every purpose (the exporter keeps the audit keys'): 0012's partial index.
_KEY_EVENTS = "kind LIKE 'operator:keyring:%'"


async def _key_events(conn: asyncpg.Connection, result: ExportResult) -> bytes:
    """key-events.jsonl: every event of the audit key history (schemas/audit-format.md §4.3), in (log, seq)
    order, each with its covering checkpoint's note and its inclusion proof in that checkpoint's tree."""
    rows = await conn.fetch(f"SELECT log_id, seq, entry FROM audit_events WHERE {_KEY_EVENTS} ORDER BY log_id, seq")
    out = []
    readers: dict[str, Callable[[int], TiledTree]] = {}
    for row in sorted(rows, key=lambda r: (r["log_id"], r["seq"])):  # code point order, not the collation's
        log_id, seq, raw = row["log_id"], row["seq"], bytes(row["entry"])
        event = orjson.loads(raw)
        detail = event.get("detail")
        if type(detail) is not dict or detail.get("purpose") != AUDIT:
            continue  # a JWT key's or a secret's: not what signs checkpoints
        if event["kind"] != "operator:keyring:retire" and "public_key" not in detail:
            continue  # a rotation logged before the key history existed: the writer recorded it again (§4.3)
        covering = await conn.fetchrow("SELECT tree_size, note FROM audit_checkpoints WHERE log_id = $1 "
                                       "AND tree_size > $2 ORDER BY tree_size LIMIT 1", log_id, seq)
        if covering is None:
            result.warnings.append(f"log {log_id}: key event {seq} ({event['kind']}) is not checkpointed yet; the "
                                   "bundle will not verify (export again in a few seconds)")
            continue
        if log_id not in readers:
            readers[log_id] = await tiles.reader(conn, log_id, seq)  # the log's first key event: its smallest
        size = covering["tree_size"]
        proof = [b64(h) for h in readers[log_id](size).inclusion_proof(seq, size)]
        out.append(orjson.dumps({"log": log_id, "seq": seq, "entry": raw.decode("utf-8"), "tree_size": size,
                                 "proof": proof, "note": covering["note"]}) + b"\n")
    return b"".join(out)


async def _names(conn: asyncpg.Connection, scope: _Scope) -> dict[str, Any]:
    """manifest.names: what the vendor, its members and its datasets (those the scope selects) are
    called at export, for the report; the events hold ids, and names change (renames are events too)."""
    vendor = await conn.fetchval("SELECT name FROM vendors WHERE id = $1", scope.vendor_id)
    members = await conn.fetch("SELECT id::text, name FROM members WHERE vendor_id = $1 AND ($2::uuid IS NULL OR id = $2) "
                               "ORDER BY id", scope.vendor_id, scope.member_id)
    datasets = await conn.fetch("SELECT id::text, name FROM datasets WHERE vendor_id = $1 AND ($2::uuid IS NULL OR "
                                "id = $2) ORDER BY id", scope.vendor_id, scope.dataset_id)
    return {"vendor": vendor or "", "members": {r["id"]: r["name"] for r in members},
            "datasets": {r["id"]: r["name"] for r in datasets}}


async def _terms(conn: asyncpg.Connection, named: set[tuple[str, int]], result: ExportResult) -> bytes:
    """terms.jsonl: the text of every licence terms version the exported events name, in (licence, version)
    order, with the SHA-256 the gateway recorded for it (an acceptance event names the same digest)."""
    pairs = sorted(named)
    rows = await conn.fetch(
        "SELECT t.licence_id::text AS licence_id, t.version, t.text, t.sha256 FROM licence_terms t "
        "JOIN unnest($1::uuid[], $2::int[]) AS n(licence_id, version) ON n.licence_id = t.licence_id "
        "AND n.version = t.version", [uuid.UUID(lid) for lid, _ in pairs], [v for _, v in pairs])
    found = {(row["licence_id"], row["version"]): row for row in rows}
    out = []
    for pair in pairs:
        row = found.get(pair)
        if row is None:
            result.warnings.append(f"licence {pair[0]}: terms version {pair[1]}, named by an event, is not stored; "
                                   "the bundle will not verify")
            continue
        if hashlib.sha256(row["text"].encode("utf-8")).digest() != bytes(row["sha256"]):
            result.warnings.append(f"licence {pair[0]}: the stored text of terms version {pair[1]} no longer has "
                                   "its recorded SHA-256; the bundle will not verify")
        out.append(orjson.dumps({"licence_id": pair[0], "version": pair[1], "sha256": bytes(row["sha256"]).hex(),
                                 "text": row["text"]}) + b"\n")
    return b"".join(out)


async def _terminations(conn: asyncpg.Connection, named: dict[str, bool], result: ExportResult) -> bytes:
    """terminations.jsonl (schemas/audit-format.md §6.1.4): per termination the events name, in id order, its
    notice exactly as signed with the signature and key, and its attestation if an exported event names it."""
    rows = await conn.fetch(
        "SELECT t.id::text AS id, t.licence_id::text AS licence_id, t.notice, t.notice_sha256, t.key_id, t.signature, "
        "a.attestation, a.attestation_sha256 FROM terminations t "
        "LEFT JOIN deletion_attestations a ON a.termination_id = t.id WHERE t.id = ANY($1::uuid[])",
        [uuid.UUID(termination) for termination in named])
    found = {row["id"]: row for row in rows}
    out = []
    for termination in sorted(named):
        row = found.get(termination)
        if row is None or (named[termination] and row["attestation"] is None):
            result.warnings.append(f"termination {termination}, named by an event, is not stored with its documents; "
                                   "the bundle will not verify")
            continue
        attested = named[termination]
        documents = [(row["notice"], row["notice_sha256"])] + ([(row["attestation"], row["attestation_sha256"])]
                                                               if attested else [])
        if any(hashlib.sha256(text.encode("utf-8")).digest() != bytes(digest) for text, digest in documents):
            result.warnings.append(f"termination {termination}: a stored document no longer has its recorded SHA-256; "
                                   "the bundle will not verify")
        out.append(orjson.dumps({
            "termination_id": termination, "licence_id": row["licence_id"], "notice": row["notice"],
            "notice_sha256": bytes(row["notice_sha256"]).hex(), "key_id": row["key_id"],
            "signature": b64(bytes(row["signature"])),
            "attestation": row["attestation"] if attested else None,
            "attestation_sha256": bytes(row["attestation_sha256"]).hex() if attested else None}) + b"\n")
    return b"".join(out)


@dataclass
class _Plan:
    log_id: str
    lo: int  # smallest and largest seq of the log's selected events in the period
    hi: int


async def _plan(conn: asyncpg.Connection, scope: _Scope) -> list[_Plan]:
    where, args = _where(scope)
    rows = await conn.fetch(f"SELECT log_id, min(seq) AS lo, max(seq) AS hi FROM audit_events WHERE {where} "
                            "GROUP BY log_id", *args)
    # Logs in code point order (Python's), not the database collation's: the verifier checks this order.
    return sorted((_Plan(r["log_id"], r["lo"], r["hi"]) for r in rows), key=lambda p: p.log_id)


def _where(scope: _Scope) -> tuple[str, list[Any]]:
    clauses = ["vendor_id = $1", "at >= $2", "at < $3"]
    args: list[Any] = [scope.vendor_id, scope.start, scope.end]
    for column, value in (("member_id", scope.member_id), ("dataset_id", scope.dataset_id)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    return " AND ".join(clauses), args


# A log's checkpoints from the first covering `first_seq` on, each note followed by the witnesses'
# cosignature lines (schemas/audit-format.md §8), in byte order: a signed note may carry many signatures.
_CHECKPOINTS = """
    SELECT c.tree_size, c.root_hash, c.note || coalesce(
        (SELECT string_agg(s.signature_line, '' ORDER BY s.signature_line COLLATE "C") FROM audit_cosignatures s
         WHERE s.log_id = c.log_id AND s.tree_size = c.tree_size), '') AS note
    FROM audit_checkpoints c WHERE c.log_id = $1 AND c.tree_size > $2 ORDER BY c.tree_size"""


async def _export_log(conn: asyncpg.Connection, scope: _Scope, plan: _Plan, events: _Sink, sinks: dict[str, _Sink],
                      summary: report.Summary, terms: set[tuple[str, int]], terminations: dict[str, bool],
                      result: ExportResult, progress: Progress | None) -> dict[str, Any]:
    log_id = plan.log_id
    latest = await conn.fetchval("SELECT max(tree_size) FROM audit_checkpoints WHERE log_id = $1", log_id) or 0
    where, args = _where(scope)
    # Events signed into no checkpoint yet cannot be proven: they wait for the next export.
    pending = await conn.fetchval(f"SELECT count(*) FROM audit_events WHERE {where} AND log_id = ${len(args) + 1} "
                                  f"AND seq >= ${len(args) + 2}", *args, log_id, latest)
    result.pending += pending
    entry: dict[str, Any] = {"log": log_id, "origin": origin(log_id), "events": 0, "first_seq": None,
                             "last_seq": None, "checkpoints": 0, "pending": pending}
    if latest <= plan.lo:
        return entry
    query, query_args = await _events_query(conn, scope, plan, latest)
    first_seq = await conn.fetchval(f"SELECT min(seq) FROM ({query}) AS selected", *query_args)
    checkpoints = await conn.fetch(_CHECKPOINTS, log_id, first_seq)
    sizes = [row["tree_size"] for row in checkpoints]
    tree_of = await tiles.reader(conn, log_id, first_seq)
    for row in checkpoints:
        if tree_of(row["tree_size"]).root() != bytes(row["root_hash"]):
            result.warnings.append(f"log {log_id}: the stored hash tiles no longer hash to checkpoint {row['tree_size']}; "
                                   "the bundle will not verify (run `gateway audit check`)")
        sinks["checkpoints.jsonl"].write(orjson.dumps({"log": log_id, "tree_size": row["tree_size"],
                                                       "note": row["note"]}) + b"\n")
    for old, new in itertools.pairwise(sizes):
        proof = [b64(h) for h in tree_of(new).consistency_proof(old, new)]
        sinks["consistency.jsonl"].write(orjson.dumps({"log": log_id, "old_size": old, "new_size": new,
                                                       "proof": proof}) + b"\n")
    proofs = sinks["proofs.jsonl"]
    trees = {size: tree_of(size) for size in sizes}
    damaged = False
    count, seq = 0, -1
    async for row in conn.cursor(query, *query_args, prefetch=5_000):
        seq, raw = row["seq"], bytes(row["entry"])
        size = sizes[bisect.bisect_right(sizes, seq)]  # the first checkpoint whose tree holds the event
        if trees[size].leaf(seq) != leaf_hash(raw) and not damaged:
            damaged = True
            result.warnings.append(f"log {log_id}: stored event {seq} no longer hashes to what its checkpoints "
                                   "signed; the bundle will not verify (run `gateway audit check`)")
        events.write(raw + b"\n")
        proofs.write(orjson.dumps({"log": log_id, "seq": seq, "tree_size": size,
                                   "proof": [_b64_node(h) for h in trees[size].inclusion_proof(seq, size)]}) + b"\n")
        event = orjson.loads(raw)
        summary.add(event)
        if event["licence_id"] is not None and event["terms_version"] is not None:
            terms.add((event["licence_id"], event["terms_version"]))
        try:
            termination = named_termination(event)
        except ValueError as e:
            result.warnings.append(f"log {log_id}: event {seq}: {e}; the bundle will not verify")
            termination = None
        if termination is not None:
            terminations[termination] = terminations.get(termination, False) or event["kind"] == EventKind.DELETION_ATTEST
        count += 1
        result.events += 1
        if progress is not None and result.events % 1000 == 0:
            progress(result.events)
    if progress is not None:
        progress(result.events)
    result.checkpoints += len(sizes)
    entry.update(events=count, first_seq=first_seq, last_seq=seq, checkpoints=len(sizes))
    return entry


async def _events_query(conn: asyncpg.Connection, scope: _Scope, plan: _Plan, latest: int) -> tuple[str, list[Any]]:
    """The SELECT of one log's events for the bundle, all with seq < latest (the newest checkpoint)."""
    if scope.series is None:
        where, args = _where(scope)
        n = len(args)
        query = f"SELECT seq, entry FROM audit_events WHERE {where} AND log_id = ${n + 1} AND seq < ${n + 2} ORDER BY seq"
        return query, [*args, plan.log_id, latest]
    column, subject = ("vendor_id", scope.vendor_id) if scope.series == "vendor" else ("member_id", scope.member_id)
    series = f"SELECT seq FROM audit_events WHERE log_id = $1 AND {column} = $2"
    # Witnesses: the subject's events just before and just after the period's range in this log. Their
    # series numbers join the period's events to the rest of the series, so none can go missing unseen.
    before = await conn.fetchval(f"{series} AND seq < $3 ORDER BY seq DESC LIMIT 1", plan.log_id, subject, plan.lo)
    after = await conn.fetchval(f"{series} AND seq > $3 AND seq < $4 ORDER BY seq LIMIT 1", plan.log_id, subject,
                                plan.hi, latest)
    first = plan.lo if before is None else before
    last = after if after is not None else min(plan.hi, latest - 1)
    query = (f"SELECT seq, entry FROM audit_events WHERE log_id = $1 AND {column} = $2 AND seq >= $3 "
             "AND seq <= $4 ORDER BY seq")
    return query, [plan.log_id, subject, first, last]


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)
