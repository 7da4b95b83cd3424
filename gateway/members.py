"""Members: the specific parties a vendor provides its data to (限定提供性: provision to specific persons).

A member is active, suspended (its credentials and licences stop until it is resumed) or revoked
(final: its keys, OAuth clients and licences are revoked with it, and its name may be given to a new
member). `refusal()` is what every credential check and licence check asks of a member's status.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound

REVOKED = "member access revoked by the vendor"
NAME_RULE = "name must be 1 to 200 characters, with no space (or other white space) at its start or end"


def check_name(name: object) -> None:
    """A member's name is how the vendor and the CLI tell members apart: ' Shibuya' beside 'Shibuya', or a name
    of spaces only, would look like another member's or like none."""
    if not (isinstance(name, str) and 1 <= len(name) <= 200 and name == name.strip()):
        raise InvalidInput(f"{NAME_RULE} (got {name!r})" if isinstance(name, str) and len(name) <= 200 else NAME_RULE,
                           field="name")


@dataclass(frozen=True, slots=True)
class Member:
    id: uuid.UUID
    vendor_id: uuid.UUID
    name: str
    status: str
    status_reason: str = ""
    contact_name: str | None = None
    contact_email: str | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Member:
        return cls(row["id"], row["vendor_id"], row["name"], row["status"], row["status_reason"],
                   row["contact_name"], row["contact_email"])

    def to_json(self) -> dict[str, object]:
        return {"id": str(self.id), "name": self.name, "status": self.status, "status_reason": self.status_reason,
                "contact_name": self.contact_name, "contact_email": self.contact_email}


def refusal(member: Member | None) -> str | None:
    """Why a member's credentials and licences may not be used now (None: they may): the one wording of it,
    for API keys, OAuth tokens and deliveries alike."""
    if member is None or member.status == "revoked":
        return REVOKED
    if member.status == "suspended":
        return "member access suspended by the vendor" + (f": {member.status_reason}" if member.status_reason else "")
    return None


async def create(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, name: str) -> Member:
    check_name(name)
    member_id = uuid.uuid4()
    async with writer.change() as change:
        try:
            row = await change.conn.fetchrow(
                "INSERT INTO members (id, vendor_id, name) VALUES ($1, $2, $3) RETURNING *", member_id, vendor_id, name)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"this vendor already has a member named {name!r}") from None
        except asyncpg.CheckViolationError:
            raise InvalidInput(NAME_RULE, field="name") from None
        change.record(actor.event(EventKind.MEMBER_CREATE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail={"name": name}))
    return Member.from_row(row)


_TRANSITIONS = {
    # action: (allowed from, new status, event kind)
    "suspend": ({"active"}, "suspended", EventKind.MEMBER_SUSPEND),
    "resume": ({"suspended"}, "active", EventKind.MEMBER_RESUME),
    "revoke": ({"active", "suspended"}, "revoked", EventKind.MEMBER_REVOKE),
}


async def set_status(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, member_id: uuid.UUID, action: str,
                     reason: str = "") -> Member:
    """Suspend, resume or revoke a member. Revocation is final and takes the member's keys, OAuth clients and
    live licences with it, in the same transaction; its event lists their ids, so the evidence shows what
    stopped. Suspension touches none of them: resuming gives back exactly what the member had."""
    allowed_from, status, kind = _TRANSITIONS[action]
    async with writer.change() as change:
        conn = change.conn
        current = await conn.fetchval("SELECT status FROM members WHERE id = $1 AND vendor_id = $2 FOR UPDATE",
                                      member_id, vendor_id)
        if current is None:
            raise NotFound("member")
        if current == "revoked":
            raise Conflict("this member was revoked, and revocation is final; create a new member (the name may "
                           "be used again) and grant it new licences")
        if current not in allowed_from:
            raise Conflict(f"this member is {current} already; it can be "
                           f"{' or '.join(a for a, t in _TRANSITIONS.items() if current in t[0])}")
        row = await conn.fetchrow(
            "UPDATE members SET status = $3, status_reason = $4, updated_at = now() WHERE id = $1 AND vendor_id = $2 "
            "RETURNING *", member_id, vendor_id, status, reason)
        detail: dict[str, Any] | None = None
        if status == "revoked":
            detail = await _revoke_what_it_holds(conn, vendor_id, member_id)
        change.record(actor.event(kind, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  reason=reason or None, detail=detail))
    return Member.from_row(row)


async def _revoke_what_it_holds(conn: asyncpg.Connection, vendor_id: uuid.UUID, member_id: uuid.UUID) -> dict[str, Any]:
    """Revoke a member's keys (sharing profiles are keys), OAuth clients and live licences; their ids, sorted."""
    keys = await conn.fetch(
        "UPDATE credentials SET revoked_at = now() WHERE member_id = $1 AND vendor_id = $2 AND revoked_at IS NULL "
        "RETURNING id", member_id, vendor_id)
    clients = await conn.fetch(
        "UPDATE oauth_clients SET revoked_at = now() WHERE member_id = $1 AND vendor_id = $2 AND revoked_at IS NULL "
        "RETURNING id", member_id, vendor_id)
    licences = await conn.fetch(
        "UPDATE licences SET status = 'revoked', status_reason = 'member revoked', updated_at = now() "
        "WHERE member_id = $1 AND vendor_id = $2 AND status <> 'revoked' RETURNING id", member_id, vendor_id)
    return {"revoked": {name: sorted(str(r["id"]) for r in rows)
                        for name, rows in (("credential_ids", keys), ("oauth_client_ids", clients),
                                           ("licence_ids", licences))}}


# What amend may change, each the column of its name (the statement below is built from these names).
AMENDABLE = ("name", "contact_name", "contact_email")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _check_amendment(values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - set(AMENDABLE))
    if unknown:
        raise InvalidInput(f"unknown member field(s): {', '.join(unknown)}; amendable: {', '.join(AMENDABLE)}",
                           field=unknown[0])
    if "name" in values:
        check_name(values["name"])
    if values.get("contact_name") is not None and not 1 <= len(values["contact_name"]) <= 200:
        raise InvalidInput("contact_name must be 1 to 200 characters, or null to clear it", field="contact_name")
    email = values.get("contact_email")
    if email is not None and not (len(email) <= 254 and _EMAIL.fullmatch(email)):
        raise InvalidInput(f"contact_email {email!r} is not an e-mail address such as legal@example.jp; "
                           "null clears it", field="contact_email")


async def amend(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, member_id: uuid.UUID,
                values: dict[str, Any]) -> Member:
    """Rename a member or change its contact details (None clears one); its id, keys and licences stay."""
    _check_amendment(values)
    async with writer.change() as change:
        conn = change.conn
        current = await conn.fetchrow("SELECT * FROM members WHERE id = $1 AND vendor_id = $2 FOR UPDATE",
                                      member_id, vendor_id)
        if current is None:
            raise NotFound("member")
        changed = {name: value for name, value in values.items() if current[name] != value}
        if not changed:
            raise Conflict("nothing to change: the member already has these values; give at least one of "
                           f"{', '.join(AMENDABLE)} with a new value")
        assignments = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(changed))
        try:
            row = await conn.fetchrow(
                f"UPDATE members SET {assignments}, updated_at = now() WHERE id = $1 AND vendor_id = $2 RETURNING *",
                member_id, vendor_id, *changed.values())
        except asyncpg.UniqueViolationError:
            raise Conflict(f"this vendor already has a member named {changed['name']!r}; choose another name") \
                from None
        change.record(actor.event(EventKind.MEMBER_AMEND, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail={"before": {n: current[n] for n in changed}, "after": changed}))
    return Member.from_row(row)


async def get(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    row = await conn.fetchrow("SELECT * FROM members WHERE id = $1 AND vendor_id = $2", member_id, vendor_id)
    if row is None:
        raise NotFound("member")
    return Member.from_row(row)


async def find(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, name_or_id: str) -> Member:
    """A member of this vendor by id or name (the CLI's --member). A name may belong to revoked members and
    one live member: the live one is meant, else the latest revoked."""
    try:
        return await get(conn, vendor_id, uuid.UUID(name_or_id))
    except ValueError:
        row = await conn.fetchrow(
            "SELECT * FROM members WHERE name = $1 AND vendor_id = $2 "
            "ORDER BY status = 'revoked', updated_at DESC LIMIT 1", name_or_id, vendor_id)
    if row is None:
        raise NotFound("member")
    return Member.from_row(row)


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID) -> list[Member]:
    rows = await conn.fetch("SELECT * FROM members WHERE vendor_id = $1 ORDER BY name, created_at", vendor_id)
    return [Member.from_row(row) for row in rows]


async def page_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, after: uuid.UUID | None,
                          limit: int) -> list[Member]:
    """At most `limit` members of the vendor by name, those after the member `after` (keyset pagination)."""
    rows = await conn.fetch(
        "SELECT * FROM members WHERE vendor_id = $1 AND ($2::uuid IS NULL OR (name, id) > "
        "(SELECT name, id FROM members WHERE id = $2 AND vendor_id = $1)) ORDER BY name, id LIMIT $3",
        vendor_id, after, limit)
    return [Member.from_row(row) for row in rows]


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Member]:
    rows = await conn.fetch("SELECT * FROM members WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [Member.from_row(row) for row in rows]
