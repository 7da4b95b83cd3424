"""Datasets and their versions: what a vendor accumulates (相当蓄積性) and publishes, one immutable version at a time."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from gateway import columns as columns_module
from gateway import times, upload_bodies
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.columns import Column
from gateway.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from gateway.upload_bodies import PublishFormat
from gateway.uploads import UploadRejected


@dataclass(frozen=True, slots=True)
class PartitionStats:
    records: int
    bytes: int


PublishMode = Literal["append", "replace"]
PUBLISH_MODES: tuple[PublishMode, ...] = ("append", "replace")
MAX_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    records: int
    bytes: int
    published_at: datetime
    partitions: dict[str, PartitionStats]
    # append: adds to what is deliverable; replace: from it on, the deliverable content is this version
    # (and later appends). A withdrawn version is delivered by no path, its records kept (migration 0015).
    mode: PublishMode = "append"
    withdrawn_at: datetime | None = None
    withdrawal_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.withdrawn_at is None

    def to_json(self, partitions: frozenset[str] | None = None) -> dict[str, Any]:
        """The version as a caller may see it: restricted to `partitions` when given (a member's licence).
        A member sees a withdrawn version listed as withdrawn, without figures: it is nothing it can read."""
        shown = {p: s for p, s in self.partitions.items() if partitions is None or p in partitions}
        body: dict[str, Any] = {"version": self.version, "published_at": self.published_at.isoformat(),
                                "mode": self.mode,
                                "withdrawn_at": self.withdrawn_at.isoformat() if self.withdrawn_at else None,
                                "withdrawal_reason": self.withdrawal_reason}
        if partitions is None or self.live:
            body.update(records=sum(s.records for s in shown.values()), bytes=sum(s.bytes for s in shown.values()),
                        partitions={p: {"records": s.records, "bytes": s.bytes} for p, s in sorted(shown.items())})
        return body


@dataclass(frozen=True, slots=True)
class Dataset:
    id: uuid.UUID
    vendor_id: uuid.UUID
    name: str
    description: str
    columns: tuple[Column, ...]
    partition_column: str
    created_at: datetime
    versions: tuple[Version, ...] = ()

    @property
    def latest_version(self) -> int:
        """The highest version number published, withdrawn or not (numbers are never reused)."""
        return self.versions[-1].version if self.versions else 0

    @property
    def current_version(self) -> int:
        """The highest live version: the Delta Sharing table version (0 while none is live)."""
        return max((v.version for v in self.versions if v.live), default=0)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def version(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    def deliverable(self, upto: int | None = None) -> tuple[int, ...]:
        """The versions that make up the dataset's content as of version `upto` (default: all): the live
        ones from the last live replace version on, or all live ones when none replaced. Withdrawing a
        replace version therefore makes what it replaced deliverable again."""
        live = [v for v in self.versions if v.live and (upto is None or v.version <= upto)]
        start = max((i for i, v in enumerate(live) if v.mode == "replace"), default=0)
        return tuple(v.version for v in live[start:])

    def withdrawn_between(self, since: int, upto: int) -> list[Version]:
        """The withdrawn versions numbered in (since, upto]."""
        return [v for v in self.versions if not v.live and since < v.version <= upto]

    def partitions(self) -> list[str]:
        return sorted({p for v in self.versions for p in v.partitions})

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "description": self.description,
                "columns": columns_module.to_json(self.columns), "partition_column": self.partition_column,
                "created_at": self.created_at.isoformat(), "latest_version": self.latest_version,
                "deliverable_versions": list(self.deliverable()),
                "accumulation": accumulation(self.versions),
                "versions": [v.to_json() for v in self.versions]}


def accumulation(versions: tuple[Version, ...], partitions: frozenset[str] | None = None) -> dict[str, Any]:
    """Totals over the live versions (optionally within some partitions): the evidence of substantial
    accumulation; the withdrawn versions are counted apart, since no member can receive them."""

    def totals(chosen: list[Version]) -> tuple[int, int, set[str]]:
        stats = [(p, s) for v in chosen for p, s in v.partitions.items() if partitions is None or p in partitions]
        return sum(s.records for _, s in stats), sum(s.bytes for _, s in stats), {p for p, _ in stats}

    live = [v for v in versions if v.live]
    withdrawn = [v for v in versions if not v.live]
    records, byte_count, seen = totals(live)
    withdrawn_records, withdrawn_bytes, _ = totals(withdrawn)
    return {"versions": len(live), "records": records, "bytes": byte_count, "partitions": len(seen),
            "first_published_at": live[0].published_at.isoformat() if live else None,
            "last_published_at": live[-1].published_at.isoformat() if live else None,
            "withdrawn": {"versions": [v.version for v in withdrawn], "records": withdrawn_records,
                          "bytes": withdrawn_bytes}}


async def create(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, name: str, description: str,
                 columns: Any, partition_column: str) -> Dataset:
    declared = _declared(columns)
    if partition_column not in {c.name for c in declared}:
        raise InvalidInput(f"partition_column {partition_column!r} must be one of the declared columns",
                           field="partition_column")
    dataset_id = uuid.uuid4()
    async with writer.change() as change:
        try:
            row = await change.conn.fetchrow(
                "INSERT INTO datasets (id, vendor_id, name, description, columns, partition_column) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                dataset_id, vendor_id, name, description,
                orjson.dumps(columns_module.to_json(declared)).decode(), partition_column)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"this vendor already has a dataset named {name!r}") from None
        except asyncpg.CheckViolationError:
            raise InvalidInput(NAME_RULE, field="name") from None
        change.record(actor.event(EventKind.DATASET_CREATE, Outcome.CHANGE, vendor_id=vendor_id, dataset_id=dataset_id,
                                  detail={"name": name, "partition_column": partition_column,
                                          "columns": [c.name for c in declared]}))
    return _from_row(row, ())


NAME_RULE = "name must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
AMENDABLE = ("name", "description", "columns")
SHAPE_RULE = ("an amendment may change the columns' descriptions and spellings, not their names, types or order "
              "(the records are stored by them); declare the same columns, or a new dataset for other ones")


def _declared(raw: Any) -> tuple[Column, ...]:
    try:
        return columns_module.parse_columns(raw)
    except columns_module.ColumnError as exc:
        raise InvalidInput(str(exc), field="columns") from None


async def amend(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, dataset_id: uuid.UUID,
                values: dict[str, Any]) -> Dataset:
    """Rename a dataset, change its description, or its columns' descriptions and declared spellings (they
    apply to uploads from now on; what is stored is in canonical form already); its id, versions and
    licences stay as they are."""
    unknown = sorted(set(values) - set(AMENDABLE))
    if unknown:
        raise InvalidInput(f"unknown dataset field(s): {', '.join(unknown)}; amendable: {', '.join(AMENDABLE)}",
                           field=unknown[0])
    declared = _declared(values["columns"]) if "columns" in values else None
    async with writer.change() as change:
        current = await change.conn.fetchrow(
            "SELECT name, description, columns FROM datasets WHERE id = $1 AND vendor_id = $2 FOR UPDATE",
            dataset_id, vendor_id)
        if current is None:
            raise NotFound("dataset")
        changed = {name: value for name, value in values.items() if name != "columns" and current[name] != value}
        before = {name: current[name] for name in changed}
        after = dict(changed)
        if declared is not None:
            stored = columns_module.parse_columns(orjson.loads(current["columns"]))
            if not columns_module.same_shape(stored, declared):
                raise InvalidInput(SHAPE_RULE, field="columns")
            if declared != stored:
                changed["columns"] = orjson.dumps(columns_module.to_json(declared)).decode()
                before["columns"], after["columns"] = columns_module.to_json(stored), columns_module.to_json(declared)
        if not changed:
            raise Conflict("nothing to change: the dataset already has these values; give at least one of "
                           f"{', '.join(AMENDABLE)} with a new value")
        assignments = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(changed))
        try:
            await change.conn.execute(f"UPDATE datasets SET {assignments} WHERE id = $1 AND vendor_id = $2",
                                      dataset_id, vendor_id, *changed.values())
        except asyncpg.UniqueViolationError:
            raise Conflict(f"this vendor already has a dataset named {changed['name']!r}; choose another name") \
                from None
        except asyncpg.CheckViolationError:
            raise InvalidInput(NAME_RULE, field="name") from None
        change.record(actor.event(EventKind.DATASET_AMEND, Outcome.CHANGE, vendor_id=vendor_id, dataset_id=dataset_id,
                                  detail={"before": before, "after": after}))
        [dataset] = await load(change.conn, [dataset_id])
    return dataset


async def publish(writer: AuditWriter, actor: Actor, dataset: Dataset, body: AsyncIterable[bytes],
                  fmt: PublishFormat, *, max_bytes: int, charset: str | None = None, gzip: bool = False,
                  mode: PublishMode = "append", allow_duplicate: bool = False,
                  progress: Callable[[int], None] | None = None) -> Version:
    """Add a version from an upload, streamed into PostgreSQL with COPY; a bad row leaves nothing behind,
    nor does an upload identical to a live version of the dataset, unless `allow_duplicate`.

    `charset` is the one the upload declares (None: UTF-8), `gzip` whether the body is gzip-compressed.
    `max_bytes` bounds the body as received and, inflated, the file it carries. The digest (upload_sha256,
    and so the duplicate check) is the file's, as saved: inflated, in its own charset."""
    if mode not in PUBLISH_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(PUBLISH_MODES)}", field="mode")
    text = upload_bodies.check_upload(fmt, charset)
    digest = hashlib.sha256()
    received = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in body:
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"uploads are limited to {max_bytes} bytes (GATEWAY_MAX_UPLOAD_BYTES)")
            if progress is not None:
                progress(received)
            yield chunk

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in upload_bodies.gunzip(counted(), max_bytes) if gzip else counted():
            digest.update(chunk)
            yield chunk

    stats: dict[str, list[int]] = {}
    async with writer.change() as change:
        conn = change.conn
        # Publishes of one dataset take turns so that version numbers never collide, on any instance.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('publish:' || $1::uuid::text))", dataset.id)
        version = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM dataset_versions WHERE dataset_id = $1", dataset.id)

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            seq = 0
            async for batch in upload_bodies.records(hashed(), fmt, text, dataset.columns,
                                                     dataset.partition_column):
                for partition, record in batch:
                    entry = stats.get(partition)
                    if entry is None:
                        entry = stats[partition] = [0, 0]
                    entry[0] += 1
                    entry[1] += len(record.encode())
                    yield (dataset.id, partition, version, seq, record)
                    seq += 1

        try:
            await conn.copy_records_to_table("records", records=rows(),
                                             columns=("dataset_id", "partition", "version", "seq", "data"))
        except UploadRejected as exc:
            raise InvalidInput(exc.detail, line=exc.line, column=exc.column) from None
        # The digest is known only now; refusing here rolls the copied records back with the rest.
        # Under the publish lock, so two identical uploads at once cannot both pass.
        same = await conn.fetchrow(
            "SELECT version, published_at FROM dataset_versions WHERE dataset_id = $1 AND upload_sha256 = $2 "
            "AND withdrawn_at IS NULL ORDER BY version LIMIT 1", dataset.id, digest.digest())
        if same is not None and not allow_duplicate:
            raise Conflict(f"this upload is identical (SHA-256 {digest.hexdigest()}) to version {same['version']}, "
                           f"published {times.jst_text(same['published_at'])}; nothing was published. To publish "
                           "it anyway, repeat the request with duplicate=allow (CLI: --allow-duplicate)",
                           duplicate_of=same["version"], duplicate_published_at=same["published_at"].isoformat())
        total_records = sum(s[0] for s in stats.values())
        total_bytes = sum(s[1] for s in stats.values())
        row = await conn.fetchrow(
            "INSERT INTO dataset_versions (dataset_id, version, records, bytes, upload_sha256, upload_format, mode) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING published_at",
            dataset.id, version, total_records, total_bytes, digest.digest(), fmt, mode)
        await conn.executemany(
            "INSERT INTO dataset_partitions (dataset_id, version, partition, records, bytes) VALUES ($1, $2, $3, $4, $5)",
            [(dataset.id, version, p, s[0], s[1]) for p, s in stats.items()])
        change.record(actor.event(
            EventKind.VERSION_PUBLISH, Outcome.CHANGE, vendor_id=dataset.vendor_id, dataset_id=dataset.id,
            versions=[version], partitions=sorted(stats), records=total_records, bytes=total_bytes,
            sha256=digest.hexdigest(), detail={"format": fmt, "upload_bytes": received, "mode": mode,
                                               "gzip": gzip, **({} if fmt == "parquet" else {"charset": text.label}),
                                               **({"duplicate_of": same["version"]} if same else {})}))
    return Version(version, total_records, total_bytes, row["published_at"],
                   {p: PartitionStats(s[0], s[1]) for p, s in sorted(stats.items())}, mode)


async def withdraw(writer: AuditWriter, actor: Actor, dataset: Dataset, number: int, reason: str) -> Version:
    """Withdraw a version for good: no delivery path serves its records from the commit on (the snapshot
    hears of it by NOTIFY on every instance); they stay stored and in the evidence."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"give the reason for the withdrawal (1-{MAX_REASON_CHARS} characters): it is recorded "
                           "and shown to members whose reads it interrupts", field="reason")
    async with writer.change() as change:
        conn = change.conn
        row = await conn.fetchrow("SELECT * FROM dataset_versions WHERE dataset_id = $1 AND version = $2 FOR UPDATE",
                                  dataset.id, number)
        if row is None:
            raise NotFound("version")
        if row["withdrawn_at"] is not None:
            raise Conflict(f"version {number} was already withdrawn at {times.jst_text(row['withdrawn_at'])} "
                           f"(reason: {row['withdrawal_reason']}); a withdrawal is final",
                           withdrawn_at=row["withdrawn_at"].isoformat(), withdrawal_reason=row["withdrawal_reason"])
        row = await conn.fetchrow("UPDATE dataset_versions SET withdrawn_at = now(), withdrawal_reason = $3 "
                                  "WHERE dataset_id = $1 AND version = $2 RETURNING *", dataset.id, number, reason)
        parts = await conn.fetch("SELECT partition, records, bytes FROM dataset_partitions "
                                 "WHERE dataset_id = $1 AND version = $2 ORDER BY partition", dataset.id, number)
        change.record(actor.event(
            EventKind.VERSION_WITHDRAW, Outcome.CHANGE, vendor_id=dataset.vendor_id, dataset_id=dataset.id,
            versions=[number], partitions=[p["partition"] for p in parts], records=row["records"], bytes=row["bytes"],
            reason=reason, detail={"reason": reason, "mode": row["mode"], "published_at": row["published_at"].isoformat(),
                                   "upload_sha256": row["upload_sha256"].hex()}))
    return _version(row, {p["partition"]: PartitionStats(p["records"], p["bytes"]) for p in parts})


async def get(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    found = await load(conn, [dataset_id])
    if not found or found[0].vendor_id != vendor_id:
        raise NotFound("dataset")
    return found[0]


async def find(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, name_or_id: str) -> Dataset:
    """A dataset of this vendor by id or name (the CLI's DATASET argument)."""
    try:
        return await get(conn, vendor_id, uuid.UUID(name_or_id))
    except ValueError:
        dataset_id = await conn.fetchval("SELECT id FROM datasets WHERE vendor_id = $1 AND name = $2",
                                         vendor_id, name_or_id)
    if dataset_id is None:
        raise NotFound("dataset")
    return await get(conn, vendor_id, dataset_id)


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID) -> list[Dataset]:
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM datasets WHERE vendor_id = $1 ORDER BY name", vendor_id)]
    return await load(conn, ids) if ids else []


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Dataset]:
    """Datasets with their versions and partition figures (for the snapshot and the admin API)."""
    rows = await conn.fetch("SELECT * FROM datasets WHERE $1::uuid[] IS NULL OR id = ANY($1) ORDER BY name", ids)
    parts = await conn.fetch(
        "SELECT v.dataset_id, v.version, v.records, v.bytes, v.published_at, v.mode, v.withdrawn_at, "
        "v.withdrawal_reason, p.partition, p.records AS p_records, "
        "p.bytes AS p_bytes FROM dataset_versions v LEFT JOIN dataset_partitions p USING (dataset_id, version) "
        "WHERE $1::uuid[] IS NULL OR v.dataset_id = ANY($1) ORDER BY v.dataset_id, v.version, p.partition", ids)
    versions: dict[uuid.UUID, dict[int, Version]] = {}
    for part in parts:
        by_number = versions.setdefault(part["dataset_id"], {})
        version = by_number.get(part["version"])
        if version is None:
            version = by_number[part["version"]] = _version(part, {})
        if part["partition"] is not None:
            version.partitions[part["partition"]] = PartitionStats(part["p_records"], part["p_bytes"])
    return [_from_row(row, tuple(versions.get(row["id"], {}).values())) for row in rows]


def _version(row: asyncpg.Record, partitions: dict[str, PartitionStats]) -> Version:
    return Version(row["version"], row["records"], row["bytes"], row["published_at"], partitions, row["mode"],
                   row["withdrawn_at"], row["withdrawal_reason"])


def _from_row(row: asyncpg.Record, versions: tuple[Version, ...]) -> Dataset:
    declared = columns_module.parse_columns(orjson.loads(row["columns"]))
    return Dataset(row["id"], row["vendor_id"], row["name"], row["description"], declared, row["partition_column"],
                   row["created_at"], versions)
