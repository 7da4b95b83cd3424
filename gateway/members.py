"""Members: the specific parties a vendor provides its data to (限定提供性: provision to specific persons)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound


@dataclass(frozen=True, slots=True)
class Member:
    id: uuid.UUID
    vendor_id: uuid.UUID
    name: str
    status: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Member:
        return cls(row["id"], row["vendor_id"], row["name"], row["status"])

    def to_json(self) -> dict[str, object]:
        return {"id": str(self.id), "name": self.name, "status": self.status}


async def create(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, name: str) -> Member:
    member_id = uuid.uuid4()
    async with writer.change() as change:
        try:
            row = await change.conn.fetchrow(
                "INSERT INTO members (id, vendor_id, name) VALUES ($1, $2, $3) RETURNING *", member_id, vendor_id, name)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"this vendor already has a member named {name!r}") from None
        except asyncpg.CheckViolationError:
            raise InvalidInput("name must be 1 to 200 characters", field="name") from None
        change.record(actor.event(EventKind.MEMBER_CREATE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail={"name": name}))
    return Member.from_row(row)


async def revoke(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    """Cut a member off: every credential and licence of it stops working on every instance."""
    async with writer.change() as change:
        row = await change.conn.fetchrow(
            "UPDATE members SET status = 'revoked', updated_at = now() WHERE id = $1 AND vendor_id = $2 RETURNING *",
            member_id, vendor_id)
        if row is None:
            raise NotFound("member")
        change.record(actor.event(EventKind.MEMBER_REVOKE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id))
    return Member.from_row(row)


async def get(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    row = await conn.fetchrow("SELECT * FROM members WHERE id = $1 AND vendor_id = $2", member_id, vendor_id)
    if row is None:
        raise NotFound("member")
    return Member.from_row(row)


async def find(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, name_or_id: str) -> Member:
    """A member of this vendor by id or name (the CLI's --member)."""
    try:
        return await get(conn, vendor_id, uuid.UUID(name_or_id))
    except ValueError:
        row = await conn.fetchrow("SELECT * FROM members WHERE name = $1 AND vendor_id = $2", name_or_id, vendor_id)
    if row is None:
        raise NotFound("member")
    return Member.from_row(row)


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID) -> list[Member]:
    rows = await conn.fetch("SELECT * FROM members WHERE vendor_id = $1 ORDER BY name", vendor_id)
    return [Member.from_row(row) for row in rows]


async def load(conn: asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Member]:
    rows = await conn.fetch("SELECT * FROM members WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [Member.from_row(row) for row in rows]
