"""The keyring of Ed25519 signing keys: audit checkpoints now, JWT access tokens later.

Private keys are sealed under the master key in `signing_keys`; public keys are published with their
validity so that anything a key signed stays verifiable after rotation. A key is current while its
`not_after` is NULL; exactly one per purpose is (a unique partial index makes sure).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.events import utc_text
from keys.notes import NoteSigner, NoteVerifier
from keys.sealing import MasterKey
from keys.signing import SigningKey

AUDIT = "audit"
JWT = "jwt"
# The signed-note key name of audit checkpoints. C2SP tlog-checkpoint says the name SHOULD be the
# origin; ours is not, because one key signs many logs (one per process) and a verifier should need
# one verifier key per key, not one per log.
AUDIT_KEY_NAME = "lpd-gateway-audit"
# Any fixed 64-bit number shared by every instance; this one spells "lpd-keys" in ASCII.
_ADVISORY_LOCK_ID = 0x6C70642D6B657973

_COLUMNS = "key_id, purpose, algorithm, public_key, not_before, not_after, retired_at"


def seal_context(key_id: str) -> bytes:
    return b"signing-key:" + key_id.encode("ascii")


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    purpose: str
    public: bytes
    not_before: datetime
    not_after: datetime | None
    retired_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PublicKey:
        return cls(row["key_id"], row["purpose"], bytes(row["public_key"]), row["not_before"], row["not_after"],
                   row["retired_at"])

    @property
    def note_name(self) -> str:
        return AUDIT_KEY_NAME if self.purpose == AUDIT else f"lpd-gateway-{self.purpose}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.vkey())

    def vkey(self) -> str:
        """The C2SP signed-note verifier key: name+hex key hash+base64(0x01 || public key)."""
        typed = b"\x01" + self.public
        # signed-note's key hash: SHA-256(name || 0x0A || type || key)[:4].
        key_hash = hashlib.sha256(self.note_name.encode() + b"\n" + typed).digest()[:4]
        return f"{self.note_name}+{key_hash.hex()}+{base64.b64encode(typed).decode('ascii')}"

    def to_json(self) -> dict[str, Any]:
        """The published form (keys.json in evidence bundles, the public keys endpoint)."""
        return {"key_id": self.key_id, "purpose": self.purpose, "algorithm": "Ed25519",
                "public_key": base64.b64encode(self.public).decode("ascii"), "vkey": self.vkey(),
                "not_before": utc_text(self.not_before),
                "not_after": None if self.not_after is None else utc_text(self.not_after),
                "retired_at": None if self.retired_at is None else utc_text(self.retired_at)}


async def current(conn: asyncpg.Connection, master: MasterKey, purpose: str = AUDIT) -> SigningKey:
    """The current key of `purpose`, created if there is none yet.

    Several instances may start at once: under the advisory lock the first creates the key and the
    others find it, so no instance ever signs with a key the others do not know.
    """
    row = await _current_row(conn, purpose)
    if row is None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_ID)
            row = await _current_row(conn, purpose)
            if row is None:
                await _insert(conn, master, purpose, await conn.fetchval("SELECT clock_timestamp()"))
                row = await _current_row(conn, purpose)
    assert row is not None
    return open_key(master, row["key_id"], row["sealed_private"])


async def rotate(conn: asyncpg.Connection, master: MasterKey, purpose: str = AUDIT) -> PublicKey:
    """Make a new key current; the old one gets not_after = now and keeps verifying.

    The old key's row is locked first: a writer signing a checkpoint holds it FOR SHARE, so
    rotation waits for that signature, and the rotation time read afterwards is later than every
    signing time made with the old key (both read the database clock).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_ID)
        await conn.execute("SELECT 1 FROM signing_keys WHERE purpose = $1 AND not_after IS NULL FOR UPDATE", purpose)
        now = await conn.fetchval("SELECT clock_timestamp()")
        await conn.execute("UPDATE signing_keys SET not_after = $2 WHERE purpose = $1 AND not_after IS NULL",
                           purpose, now)
        key_id = await _insert(conn, master, purpose, now)
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM signing_keys WHERE key_id = $1", key_id)
    return PublicKey.from_row(row)


async def public_keys(conn: asyncpg.Connection | asyncpg.Pool, purpose: str = AUDIT) -> list[PublicKey]:
    """Every key of `purpose` ever made, oldest first, with its validity."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM signing_keys WHERE purpose = $1 ORDER BY not_before, key_id",
                            purpose)
    return [PublicKey.from_row(row) for row in rows]


async def retire(conn: asyncpg.Connection, key_id: str, at: datetime | None = None) -> PublicKey | None:
    """Withdraw a rotated-out key from `at` (default: now, by the database clock); None if no such key.

    The current key is never retired (rotate first), and a retirement is only ever brought forward:
    asking for a later time than one already set changes nothing. Used for JWT keys (gateway/oauth.py):
    a retired JWT key verifies no token any more and leaves the published JWKS.
    """
    row = await conn.fetchrow(
        "UPDATE signing_keys SET retired_at = least(coalesce(retired_at, 'infinity'), coalesce($2, clock_timestamp())) "
        f"WHERE key_id = $1 AND not_after IS NOT NULL RETURNING {_COLUMNS}", key_id, at)
    return None if row is None else PublicKey.from_row(row)


def open_key(master: MasterKey, key_id: str, sealed: bytes) -> SigningKey:
    return SigningKey.from_private_bytes(key_id, master.open(bytes(sealed), context=seal_context(key_id)))


def note_signer(key: SigningKey) -> NoteSigner:
    return NoteSigner(AUDIT_KEY_NAME, key)


async def _current_row(conn: asyncpg.Connection, purpose: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT key_id, sealed_private FROM signing_keys WHERE purpose = $1 "
                               "AND not_after IS NULL", purpose)


async def _insert(conn: asyncpg.Connection, master: MasterKey, purpose: str, not_before: datetime) -> str:
    key = SigningKey.generate()
    await conn.execute(
        "INSERT INTO signing_keys (key_id, purpose, public_key, sealed_private, not_before) VALUES ($1, $2, $3, $4, $5)",
        key.key_id, purpose, key.public_bytes(), master.seal(key.private_bytes(), context=seal_context(key.key_id)),
        not_before)
    return key.key_id
