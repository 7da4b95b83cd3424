"""OAuth clients: a member's software authenticating with client credentials (RFC 6749 §4.4).

A vendor admin creates a client for one of its members; the client id and secret are shown once (the
database keeps the secret only as a keyed hash, as for API keys: keys/hashing.py). The client trades
them at POST /oauth/token for a short-lived JWT access token (gateway/oauth.py) that acts as the member.

To the rest of the gateway a client is a member credential: `credential` is its Credential view (kind
member, the client's id, vendor and member), so the member routes, rate limits, terms acceptance and the
audit trail treat a token exactly like the member's API key, and audit events name the client's id as
their credential_id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.credentials import Credential
from gateway.errors import Conflict, NotFound
from keys import apikeys
from keys.apikeys import KeyKind
from keys.hashing import KeyHasher


@dataclass(frozen=True, slots=True)
class OAuthClient:
    id: uuid.UUID
    client_id: str
    vendor_id: uuid.UUID
    member_id: uuid.UUID
    hash_version: int
    hash: bytes = field(repr=False)
    label: str
    created_at: datetime
    revoked_at: datetime | None
    credential: Credential = field(repr=False, compare=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> OAuthClient:
        view = Credential(id=row["id"], key_id=row["client_id"], kind=KeyKind.MEMBER, vendor_id=row["vendor_id"],
                          member_id=row["member_id"], hash_version=row["hash_version"], hash=bytes(row["hash"]),
                          label=row["label"], allowed_networks=(), client_cert_sha256=None, expires_at=None,
                          revoked_at=row["revoked_at"], created_at=row["created_at"])
        return cls(row["id"], row["client_id"], row["vendor_id"], row["member_id"], row["hash_version"],
                   bytes(row["hash"]), row["label"], row["created_at"], row["revoked_at"], view)

    @property
    def key_id(self) -> str:
        return self.client_id[len(apikeys.CLIENT_ID_PREFIX):]

    def to_json(self) -> dict[str, Any]:
        """What an admin may see of a client: never the hash, let alone the secret."""
        return {"id": str(self.id), "client_id": self.client_id, "member_id": str(self.member_id),
                "label": self.label, "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


SECRET_NOT_RECOGNISED = "client secret not recognised"


def check_secret(client: OAuthClient, secret: str, hasher: KeyHasher) -> str | None:
    """None when `secret` is this client's secret and the client is not revoked; else the reason."""
    # The constant-time hash comparison comes first, so that a caller without the secret learns
    # nothing about the client (revoked or not) from the answer.
    if not hasher.verify(secret, client.hash_version, client.hash):
        return SECRET_NOT_RECOGNISED
    if client.revoked_at is not None:
        return "OAuth client revoked"
    return None


async def create(writer: AuditWriter, actor: Actor, hasher: KeyHasher, vendor_id: uuid.UUID, member_id: uuid.UUID,
                 *, label: str = "") -> tuple[OAuthClient, str]:
    """Create a client for a member of this vendor; returns it with its secret, never available again."""
    generated = apikeys.generate_client()
    version, digest = hasher.hash(generated.secret)
    client_uuid = uuid.uuid4()
    async with writer.change() as change:
        status = await change.conn.fetchval("SELECT status FROM members WHERE id = $1 AND vendor_id = $2",
                                            member_id, vendor_id)
        if status is None:
            raise NotFound("member")
        if status != "active":
            raise Conflict("this member's access was revoked; it cannot get new OAuth clients" if status == "revoked"
                           else "this member is suspended; resume it before giving it new OAuth clients")
        row = await change.conn.fetchrow(
            "INSERT INTO oauth_clients (id, client_id, vendor_id, member_id, hash_version, hash, label) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            client_uuid, generated.client_id, vendor_id, member_id, version, digest, label)
        client = OAuthClient.from_row(row)
        change.record(actor.event(EventKind.OAUTH_CLIENT_CREATE, Outcome.CHANGE, vendor_id=vendor_id,
                                  member_id=member_id, detail={"oauth_client_id": str(client_uuid),
                                                               "client_id": client.client_id, "label": label}))
    return client, generated.secret


async def revoke(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, client_uuid: uuid.UUID) -> OAuthClient:
    """Revoke a client: its secret and every token issued to it stop working on every instance within a second."""
    async with writer.change() as change:
        row = await change.conn.fetchrow(
            "UPDATE oauth_clients SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND vendor_id = $2 "
            "RETURNING *", client_uuid, vendor_id)
        if row is None:
            raise NotFound("OAuth client")
        client = OAuthClient.from_row(row)
        change.record(actor.event(EventKind.OAUTH_CLIENT_REVOKE, Outcome.CHANGE, vendor_id=vendor_id,
                                  member_id=client.member_id, detail={"oauth_client_id": str(client.id),
                                                                      "client_id": client.client_id}))
    return client


async def find(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, id_or_client_id: str) -> OAuthClient:
    """A client of this vendor by its id or its client id (the CLI's argument)."""
    try:
        row = await conn.fetchrow("SELECT * FROM oauth_clients WHERE id = $1 AND vendor_id = $2",
                                  uuid.UUID(id_or_client_id), vendor_id)
    except ValueError:
        row = await conn.fetchrow("SELECT * FROM oauth_clients WHERE client_id = $1 AND vendor_id = $2",
                                  id_or_client_id, vendor_id)
    if row is None:
        raise NotFound("OAuth client")
    return OAuthClient.from_row(row)


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID,
                          member_id: uuid.UUID | None = None) -> list[OAuthClient]:
    rows = await conn.fetch(
        "SELECT * FROM oauth_clients WHERE vendor_id = $1 AND ($2::uuid IS NULL OR member_id = $2) "
        "ORDER BY created_at", vendor_id, member_id)
    return [OAuthClient.from_row(row) for row in rows]


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[OAuthClient]:
    rows = await conn.fetch("SELECT * FROM oauth_clients WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [OAuthClient.from_row(row) for row in rows]
