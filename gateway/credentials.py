"""Credentials: API keys bound to a member, a vendor admin or a compliance officer (電磁的管理性).

A key is shown once, at issue; the database keeps only its keyed hash (keys/hashing.py). Each key may
carry a policy — expiry, allowed client networks (the statute's "specific terminals") and a client
certificate fingerprint — that `check()` applies on every request from the in-memory snapshot.

A vendor may hold several named admin keys: its admins (and the operator, from the CLI) issue, list,
revoke and rotate them like any other key. Rotation issues a key with the same label and policy and
lets the old one work for an overlap, so that its holders switch without an outage.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome, utc_text
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound
from keys import apikeys
from keys.apikeys import KeyKind
from keys.hashing import KeyHasher

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Kinds a vendor admin (or the operator) may issue and rotate over the API or the CLI. Sharing keys are
# their member's (GET /v1/delta-sharing/profile); operator keys are no vendor's.
VENDOR_ISSUABLE = frozenset({KeyKind.MEMBER, KeyKind.COMPLIANCE, KeyKind.VENDOR})
LABEL_MAX = 200
# How long a rotated-out key keeps working by default: time to redeploy its holders with the new one.
DEFAULT_OVERLAP_SECONDS = 3600
MAX_OVERLAP_SECONDS = 30 * 86400  # a rotated-out key is on its way out; to keep a key longer, do not rotate it
LAST_ADMIN_KEY = ("this is the vendor's last usable admin key, and the one making this request: revoking it would "
                  "lock the vendor out; issue another admin key first (POST /v1/admin/keys with kind 'vendor'), "
                  "or rotate this one")


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


def issuable(kind: str, member_given: bool, label: str, *, member_field: str = "member_id") -> KeyKind:
    """The kind of key a vendor admin or the operator asks for, if it may be issued with these fields.

    Member keys name their member, the other kinds none; vendor admin keys are named (several may exist,
    and every admin event names the one that acted). `member_field` is how the caller spells the member
    (the API's member_id, the CLI's --member).
    """
    if kind not in {k.value for k in VENDOR_ISSUABLE}:
        raise InvalidInput("kind must be 'member', 'compliance' or 'vendor'", field="kind")
    chosen = KeyKind(kind)
    if (chosen == KeyKind.MEMBER) != member_given:
        raise InvalidInput(f"member keys need {member_field}; compliance and vendor keys take none", field="member_id")
    check_label(chosen, label)
    return chosen


def check_label(kind: KeyKind, label: str) -> None:
    _check_length(label)
    if kind == KeyKind.VENDOR and not label:
        raise InvalidInput("vendor admin keys need a label naming who or what holds them, e.g. 'ci deploy'",
                           field="label")


def _check_length(label: str) -> None:
    if len(label) > LABEL_MAX:
        raise InvalidInput(f"label must be at most {LABEL_MAX} characters", field="label")


def parse_overlap(seconds: int) -> timedelta:
    """How long a rotated-out key keeps working: 0 (it stops at once) to MAX_OVERLAP_SECONDS."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_OVERLAP_SECONDS:
        raise InvalidInput(f"overlap_seconds must be a whole number of seconds from 0 (the old key stops at once) "
                           f"to {MAX_OVERLAP_SECONDS} (30 days)", field="overlap_seconds")
    return timedelta(seconds=seconds)


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
    _check_length(label)  # not check_label: callers that need a named key (API, CLI) check with issuable()
    async with writer.change() as change:
        credential, token = await _insert(change.conn, hasher, kind, vendor_id, member_id, label, expires_at,
                                          allowed_networks or [], client_cert_sha256)
        change.record(actor.event(EventKind.KEY_ISSUE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail=_issued_detail(credential)))
    return credential, token


async def _insert(conn: asyncpg.Connection, hasher: KeyHasher, kind: KeyKind, vendor_id: uuid.UUID | None,
                  member_id: uuid.UUID | None, label: str, expires_at: datetime | None,
                  allowed_networks: list[IPNetwork] | tuple[IPNetwork, ...],
                  client_cert_sha256: str | None) -> tuple[Credential, str]:
    """A new key in the caller's transaction (issue and rotate): its row, and its token, shown once."""
    if member_id is not None:
        status = await conn.fetchval("SELECT status FROM members WHERE id = $1 AND vendor_id = $2", member_id,
                                     vendor_id)
        if status is None:
            raise NotFound("member")
        if status != "active":
            raise Conflict("this member's access was revoked; it cannot get new keys" if status == "revoked"
                           else "this member is suspended; resume it before giving it new keys")
    key = apikeys.generate(kind)
    version, digest = hasher.hash(key.token)
    row = await conn.fetchrow(
        "INSERT INTO credentials (id, key_id, kind, vendor_id, member_id, hash_version, hash, label, "
        "allowed_networks, client_cert_sha256, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "RETURNING *", uuid.uuid4(), key.key_id, kind.value, vendor_id, member_id, version, digest, label,
        list(allowed_networks) or None, client_cert_sha256, expires_at)
    return Credential.from_row(row), key.token


def _issued_detail(credential: Credential) -> dict[str, Any]:
    detail = credential.to_json()
    for name in ("id", "member_id", "created_at", "revoked_at"):
        detail.pop(name)
    return {"credential_id": str(credential.id), **detail}


async def _lock_admin_keys(conn: asyncpg.Connection, vendor_id: uuid.UUID) -> None:
    """Take turns at changing a vendor's admin keys (until commit).

    Without it, two admins each revoking their own key at once would each find the other's still usable,
    and lock the vendor out together. NO KEY UPDATE: rows that merely reference the vendor (new members,
    keys) are not held up.
    """
    await conn.execute("SELECT 1 FROM vendors WHERE id = $1 FOR NO KEY UPDATE", vendor_id)


async def revoke(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, credential_id: uuid.UUID) -> Credential:
    """Revoke any key of the vendor, admin keys included; revoking a revoked key keeps its first revocation.

    One refusal: a vendor admin may not revoke the key it is using when that is the vendor's last usable
    admin key (nobody could administer the vendor any more but the operator). The operator (CLI, no key)
    may revoke every admin key of a vendor, and issue it a new one.
    """
    async with writer.change() as change:
        conn = change.conn
        kind = await conn.fetchval("SELECT kind FROM credentials WHERE id = $1 AND vendor_id = $2", credential_id,
                                   vendor_id)
        if kind is None:
            raise NotFound("key")
        if kind == KeyKind.VENDOR:
            await _lock_admin_keys(conn, vendor_id)
            if actor.credential_id == credential_id and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM credentials WHERE vendor_id = $1 AND kind = 'vendor' AND id <> $2 "
                    "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))", vendor_id, credential_id):
                raise Conflict(LAST_ADMIN_KEY)
        row = await conn.fetchrow(
            "UPDATE credentials SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $1 AND vendor_id = $2 RETURNING *", credential_id, vendor_id)
        credential = Credential.from_row(row)
        change.record(actor.event(EventKind.KEY_REVOKE, Outcome.CHANGE, vendor_id=vendor_id,
                                  member_id=credential.member_id,
                                  detail={"credential_id": str(credential_id), "key_id": credential.key_id,
                                          "kind": credential.kind.value, "label": credential.label}))
    return credential


async def rotate(writer: AuditWriter, actor: Actor, hasher: KeyHasher, vendor_id: uuid.UUID, credential_id: uuid.UUID,
                 overlap_seconds: int = DEFAULT_OVERLAP_SECONDS) -> tuple[Credential, Credential, str]:
    """A new key in place of an old one: the same kind, member, label and policy (networks, certificate,
    expiry), and the old key's expiry brought forward to now + the overlap (never later than it was).

    Returns (the old key, the new key, the new key's token). One transaction: the new key, the old key's
    expiry and the event (a `vendor:key:issue` whose detail names the key it `replaces`) commit together.
    """
    overlap = parse_overlap(overlap_seconds)
    async with writer.change() as change:
        conn = change.conn
        row = await conn.fetchrow(
            "SELECT *, expires_at IS NOT NULL AND expires_at <= now() AS expired FROM credentials "
            "WHERE id = $1 AND vendor_id = $2 FOR UPDATE", credential_id, vendor_id)
        if row is None:
            raise NotFound("key")
        old = Credential.from_row(row)
        if old.kind not in VENDOR_ISSUABLE:
            raise Conflict("a sharing key is renewed by its member (GET /v1/delta-sharing/profile); revoke it instead")
        if old.revoked_at is not None:
            raise Conflict("this key is revoked; issue a new key instead of rotating it")
        if row["expired"]:
            raise Conflict("this key has expired; issue a new key instead of rotating it")
        new, token = await _insert(conn, hasher, old.kind, vendor_id, old.member_id, old.label, old.expires_at,
                                   old.allowed_networks, old.client_cert_sha256)
        row = await conn.fetchrow(
            "UPDATE credentials SET expires_at = least(coalesce(expires_at, 'infinity'), now() + $3::interval) "
            "WHERE id = $1 AND vendor_id = $2 RETURNING *", credential_id, vendor_id, overlap)
        old = Credential.from_row(row)
        assert old.expires_at is not None
        change.record(actor.event(EventKind.KEY_ISSUE, Outcome.CHANGE, vendor_id=vendor_id, member_id=old.member_id,
                                  detail={**_issued_detail(new), "replaces": {
                                      "credential_id": str(old.id), "key_id": old.key_id,
                                      "expires_at": utc_text(old.expires_at)}}))
    return old, new, token


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID,
                          member_id: uuid.UUID | None = None) -> list[Credential]:
    """Every key of the vendor, its admin keys included (never the hashes: see Credential.to_json)."""
    rows = await conn.fetch(
        "SELECT * FROM credentials WHERE vendor_id = $1 AND ($2::uuid IS NULL OR member_id = $2) "
        "ORDER BY created_at", vendor_id, member_id)
    return [Credential.from_row(row) for row in rows]


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Credential]:
    rows = await conn.fetch("SELECT * FROM credentials WHERE $1::uuid[] IS NULL OR id = ANY($1)", ids)
    return [Credential.from_row(row) for row in rows]
