"""Vendors: the tenants, each a data holder that provides limited provision data to its members."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, NotFound


@dataclass(frozen=True, slots=True)
class Vendor:
    id: uuid.UUID
    name: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Vendor:
        return cls(row["id"], row["name"])


async def create(writer: AuditWriter, actor: Actor, name: str) -> Vendor:
    vendor_id = uuid.uuid4()
    async with writer.change() as change:
        try:
            row = await change.conn.fetchrow("INSERT INTO vendors (id, name) VALUES ($1, $2) RETURNING *",
                                             vendor_id, name)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a vendor named {name!r} exists already") from None
        change.record(actor.event(EventKind.VENDOR_CREATE, Outcome.CHANGE, vendor_id=vendor_id,
                                  detail={"name": name}))
    return Vendor.from_row(row)


async def find(conn: asyncpg.Connection | asyncpg.Pool, name_or_id: str) -> Vendor:
    """A vendor by name or id (the CLI's --vendor)."""
    try:
        row = await conn.fetchrow("SELECT * FROM vendors WHERE id = $1", uuid.UUID(name_or_id))
    except ValueError:
        row = await conn.fetchrow("SELECT * FROM vendors WHERE name = $1", name_or_id)
    if row is None:
        raise NotFound("vendor")
    return Vendor.from_row(row)


async def load(conn: asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Vendor]:
    rows = await conn.fetch("SELECT * FROM vendors WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [Vendor.from_row(row) for row in rows]
