"""Credentials: API keys bound to a member, a vendor admin or a compliance officer (電磁的管理性).

A key is shown once, at issue; the database keeps only its keyed hash (keys/hashing.py). Each key may
carry a policy — expiry, allowed client networks (the statute's "specific terminals") and a client
certificate fingerprint — that `check()` applies on every request from the in-memory snapshot.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound
from keys import apikeys
from keys.apikeys import KeyKind
from keys.hashing import KeyHasher

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Kinds a vendor admin may issue over the API or the CLI; vendor admin keys come from the operator.
VENDOR_ISSUABLE = frozenset({KeyKind.MEMBER, KeyKind.COMPLIANCE})


@dataclass(frozen=True, slots=True)
class Credential:
    id: uuid.UUID
    key_id: str
    kind: KeyKind
    vendor_id: uuid.UUID | None
    member_id: uuid.UUID | None
    hash_version: int
    hash: bytes
    label: str
    allowed_networks: tuple[IPNetwork, ...]
    client_cert_sha256: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Credential:
        return cls(row["id"], row["key_id"], KeyKind(row["kind"]), row["vendor_id"], row["member_id"],
                   row["hash_version"], bytes(row["hash"]), row["label"], tuple(row["allowed_networks"] or ()),
                   row["client_cert_sha256"], row["expires_at"], row["revoked_at"], row["created_at"])

    def to_json(self) -> dict[str, Any]:
        """What an admin may see of a key: never the hash, let alone the secret."""
        return {"id": str(self.id), "key_id": self.key_id, "kind": self.kind.value,
                "member_id": str(self.member_id) if self.member_id else None, "label": self.label,
                "allowed_networks": [str(n) for n in self.allowed_networks],
                "client_cert_sha256": self.client_cert_sha256,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "created_at": self.created_at.isoformat()}


NOT_RECOGNISED = "API key not recognised"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the credential and what it is bound to."""

    credential: Credential

    @property
    def kind(self) -> str:
        return self.credential.kind.value

    @property
    def vendor_id(self) -> uuid.UUID | None:
        return self.credential.vendor_id

    @property
    def member_id(self) -> uuid.UUID | None:
        return self.credential.member_id


def check(credential: Credential, token: str, hasher: KeyHasher, now: datetime, client: IPAddress | None,
          client_cert_sha256: str | None) -> str | None:
    """None when the presented token may act as this credential now; otherwise the reason it may not."""
    # The hash comparison comes first and is constant-time, so that the other answers never tell a
    # caller without the secret anything about the key (revoked, expired, network...).
    if not hasher.verify(token, credential.hash_version, credential.hash):
        return NOT_RECOGNISED
    if credential.revoked_at is not None:
        return "API key revoked"
    if credential.expires_at is not None and now >= credential.expires_at:
        return "API key expired"
    if credential.allowed_networks and (client is None or not any(client in n for n in credential.allowed_networks)):
        return "API key not allowed from this client network"
    if credential.client_cert_sha256 is not None and client_cert_sha256 != credential.client_cert_sha256:
        return "API key requires the client certificate it is bound to"
    return None


def parse_cert_fingerprint(text: str | None) -> str | None:
    """A client certificate's SHA-256 as the proxy sends it (X-Client-Cert-SHA256): 64 lowercase hex digits.

    Accepts upper case and the colon-separated form (AB:CD:...) that openssl prints.
    """
    if text is None:
        return None
    fingerprint = text.strip().lower().replace(":", "")
    if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise InvalidInput("client_cert_sha256 must be the certificate's SHA-256 as 64 hex digits, e.g. from "
                           "'openssl x509 -in client.pem -noout -fingerprint -sha256'", field="client_cert_sha256")
    return fingerprint


def parse_networks(raw: list[str]) -> list[IPNetwork]:
    try:
        return [ipaddress.ip_network(text, strict=False) for text in raw]
    except ValueError:
        raise InvalidInput("allowed_networks must be CIDR blocks such as 203.0.113.0/24 or 2001:db8::/32",
                           field="allowed_networks") from None


async def issue(writer: AuditWriter, actor: Actor, hasher: KeyHasher, kind: KeyKind, vendor_id: uuid.UUID | None,
                member_id: uuid.UUID | None = None, *, label: str = "", expires_at: datetime | None = None,
                allowed_networks: list[IPNetwork] | None = None,
                client_cert_sha256: str | None = None) -> tuple[Credential, str]:
    """Create a key; returns it with its token, which is never available again."""
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= datetime.now(UTC)):
        raise InvalidInput("expires_at must be a future date-time with a time zone, e.g. 2027-04-01T00:00:00+09:00",
                           field="expires_at")
    client_cert_sha256 = parse_cert_fingerprint(client_cert_sha256)
    key = apikeys.generate(kind)
    version, digest = hasher.hash(key.token)
    credential_id = uuid.uuid4()
    async with writer.change() as change:
        if member_id is not None:
            status = await change.conn.fetchval("SELECT status FROM members WHERE id = $1 AND vendor_id = $2",
                                                member_id, vendor_id)
            if status is None:
                raise NotFound("member")
            if status != "active":
                raise Conflict("this member's access was revoked; it cannot get new keys")
        row = await change.conn.fetchrow(
            "INSERT INTO credentials (id, key_id, kind, vendor_id, member_id, hash_version, hash, label, "
            "allowed_networks, client_cert_sha256, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "RETURNING *", credential_id, key.key_id, kind.value, vendor_id, member_id, version, digest, label,
            allowed_networks or None, client_cert_sha256, expires_at)
        credential = Credential.from_row(row)
        detail = credential.to_json()
        for name in ("id", "member_id", "created_at", "revoked_at"):
            detail.pop(name)
        change.record(actor.event(EventKind.KEY_ISSUE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail={"credential_id": str(credential_id), **detail}))
    return credential, key.token


async def revoke(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, credential_id: uuid.UUID) -> Credential:
    async with writer.change() as change:
        row = await change.conn.fetchrow(
            "UPDATE credentials SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $1 AND vendor_id = $2 AND kind <> 'vendor' RETURNING *", credential_id, vendor_id)
        if row is None:
            raise NotFound("key")
        credential = Credential.from_row(row)
        change.record(actor.event(EventKind.KEY_REVOKE, Outcome.CHANGE, vendor_id=vendor_id,
                                  member_id=credential.member_id, detail={"credential_id": str(credential_id),
                                                                          "key_id": credential.key_id}))
    return credential


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID,
                          member_id: uuid.UUID | None = None) -> list[Credential]:
    rows = await conn.fetch(
        "SELECT * FROM credentials WHERE vendor_id = $1 AND kind <> 'vendor' AND ($2::uuid IS NULL OR member_id = $2) "
        "ORDER BY created_at", vendor_id, member_id)
    return [Credential.from_row(row) for row in rows]


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Credential]:
    rows = await conn.fetch("SELECT * FROM credentials WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [Credential.from_row(row) for row in rows]
