"""Datasets and their versions: what a vendor accumulates (相当蓄積性) and publishes, one immutable version at a time."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway import columns as columns_module
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.columns import Column
from gateway.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from gateway.uploads import UploadFormat, UploadRejected, parse_upload


@dataclass(frozen=True, slots=True)
class PartitionStats:
    records: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    records: int
    bytes: int
    published_at: datetime
    partitions: dict[str, PartitionStats]

    def to_json(self, partitions: frozenset[str] | None = None) -> dict[str, Any]:
        """The version as a caller may see it: restricted to `partitions` when given (a member's licence)."""
        shown = {p: s for p, s in self.partitions.items() if partitions is None or p in partitions}
        return {"version": self.version, "published_at": self.published_at.isoformat(),
                "records": sum(s.records for s in shown.values()), "bytes": sum(s.bytes for s in shown.values()),
                "partitions": {p: {"records": s.records, "bytes": s.bytes} for p, s in sorted(shown.items())}}


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
        return self.versions[-1].version if self.versions else 0

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def partitions(self) -> list[str]:
        return sorted({p for v in self.versions for p in v.partitions})

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "description": self.description,
                "columns": columns_module.to_json(self.columns), "partition_column": self.partition_column,
                "created_at": self.created_at.isoformat(), "latest_version": self.latest_version,
                "accumulation": accumulation(self.versions),
                "versions": [v.to_json() for v in self.versions]}


def accumulation(versions: tuple[Version, ...], partitions: frozenset[str] | None = None) -> dict[str, Any]:
    """Totals over versions (optionally within some partitions): the evidence of substantial accumulation."""
    stats = [s for v in versions for p, s in v.partitions.items() if partitions is None or p in partitions]
    seen = {p for v in versions for p in v.partitions if partitions is None or p in partitions}
    return {"versions": len(versions), "records": sum(s.records for s in stats), "bytes": sum(s.bytes for s in stats),
            "partitions": len(seen),
            "first_published_at": versions[0].published_at.isoformat() if versions else None,
            "last_published_at": versions[-1].published_at.isoformat() if versions else None}


async def create(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, name: str, description: str,
                 columns: Any, partition_column: str) -> Dataset:
    try:
        declared = columns_module.parse_columns(columns)
    except columns_module.ColumnError as exc:
        raise InvalidInput(str(exc), field="columns") from None
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
AMENDABLE = ("name", "description")


async def amend(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, dataset_id: uuid.UUID,
                values: dict[str, str]) -> Dataset:
    """Rename a dataset or change its description; its id, versions and licences stay as they are."""
    unknown = sorted(set(values) - set(AMENDABLE))
    if unknown:
        raise InvalidInput(f"unknown dataset field(s): {', '.join(unknown)}; amendable: {', '.join(AMENDABLE)}",
                           field=unknown[0])
    async with writer.change() as change:
        current = await change.conn.fetchrow(
            "SELECT name, description FROM datasets WHERE id = $1 AND vendor_id = $2 FOR UPDATE", dataset_id, vendor_id)
        if current is None:
            raise NotFound("dataset")
        changed = {name: value for name, value in values.items() if current[name] != value}
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
                                  detail={"before": {n: current[n] for n in changed}, "after": changed}))
        [dataset] = await load(change.conn, [dataset_id])
    return dataset


async def publish(writer: AuditWriter, actor: Actor, dataset: Dataset, body: AsyncIterable[bytes],
                  fmt: UploadFormat, *, max_bytes: int, progress: Callable[[int], None] | None = None) -> Version:
    """Append a version from an upload, streamed into PostgreSQL with COPY; a bad row leaves nothing behind."""
    digest = hashlib.sha256()
    received = 0

    async def hashed() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in body:
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"uploads are limited to {max_bytes} bytes (GATEWAY_MAX_UPLOAD_BYTES)")
            digest.update(chunk)
            if progress is not None:
                progress(received)
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
            async for batch in parse_upload(hashed(), fmt, dataset.columns, dataset.partition_column):
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
        total_records = sum(s[0] for s in stats.values())
        total_bytes = sum(s[1] for s in stats.values())
        row = await conn.fetchrow(
            "INSERT INTO dataset_versions (dataset_id, version, records, bytes, upload_sha256, upload_format) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING published_at",
            dataset.id, version, total_records, total_bytes, digest.digest(), fmt)
        await conn.executemany(
            "INSERT INTO dataset_partitions (dataset_id, version, partition, records, bytes) VALUES ($1, $2, $3, $4, $5)",
            [(dataset.id, version, p, s[0], s[1]) for p, s in stats.items()])
        change.record(actor.event(
            EventKind.VERSION_PUBLISH, Outcome.CHANGE, vendor_id=dataset.vendor_id, dataset_id=dataset.id,
            versions=[version], partitions=sorted(stats), records=total_records, bytes=total_bytes,
            sha256=digest.hexdigest(), detail={"format": fmt, "upload_bytes": received}))
    return Version(version, total_records, total_bytes, row["published_at"],
                   {p: PartitionStats(s[0], s[1]) for p, s in sorted(stats.items())})


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
        "SELECT v.dataset_id, v.version, v.records, v.bytes, v.published_at, p.partition, p.records AS p_records, "
        "p.bytes AS p_bytes FROM dataset_versions v LEFT JOIN dataset_partitions p USING (dataset_id, version) "
        "WHERE $1::uuid[] IS NULL OR v.dataset_id = ANY($1) ORDER BY v.dataset_id, v.version, p.partition", ids)
    versions: dict[uuid.UUID, dict[int, Version]] = {}
    for part in parts:
        by_number = versions.setdefault(part["dataset_id"], {})
        version = by_number.get(part["version"])
        if version is None:
            version = by_number[part["version"]] = Version(part["version"], part["records"], part["bytes"],
                                                           part["published_at"], {})
        if part["partition"] is not None:
            version.partitions[part["partition"]] = PartitionStats(part["p_records"], part["p_bytes"])
    return [_from_row(row, tuple(versions.get(row["id"], {}).values())) for row in rows]


def _from_row(row: asyncpg.Record, versions: tuple[Version, ...]) -> Dataset:
    declared = columns_module.parse_columns(orjson.loads(row["columns"]))
    return Dataset(row["id"], row["vendor_id"], row["name"], row["description"], declared, row["partition_column"],
                   row["created_at"], versions)
