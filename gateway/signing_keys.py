"""The keyring of Ed25519 signing keys: audit checkpoints now, JWT access tokens later.

Private keys are sealed under the master key in `signing_keys`; public keys are published with their
validity so that anything a key signed stays verifiable after rotation. A key is current while its
`not_after` is NULL; exactly one per purpose is (a unique partial index makes sure).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from gateway.audit.format import AUDIT, AUDIT_KEY_NAME, PublicKey
from keys.notes import NoteSigner
from keys.sealing import MasterKey
from keys.signing import SigningKey

JWT = "jwt"
# Any fixed 64-bit number shared by every instance; this one spells "lpd-keys" in ASCII.
_ADVISORY_LOCK_ID = 0x6C70642D6B657973

_COLUMNS = "key_id, purpose, algorithm, public_key, not_before, not_after, retired_at"


def seal_context(key_id: str) -> bytes:
    return b"signing-key:" + key_id.encode("ascii")


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


async def lock(conn: asyncpg.Connection) -> None:
    """The keyring's advisory lock, until the caller's transaction ends (one keyring change at a time)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_ID)


async def create(conn: asyncpg.Connection, master: MasterKey, purpose: str = AUDIT) -> PublicKey | None:
    """The first key of `purpose`, made in the caller's transaction under the advisory lock; None if a key
    is current already (another instance made it first). The audit writer calls it in the transaction of
    the key's operator:keyring:create event (schemas/audit-format.md §4.3): the key and its event commit
    together, or neither does."""
    await lock(conn)
    if await _current_row(conn, purpose) is not None:
        return None
    key_id = await _insert(conn, master, purpose, await conn.fetchval("SELECT clock_timestamp()"))
    return PublicKey.from_row(await conn.fetchrow(f"SELECT {_COLUMNS} FROM signing_keys WHERE key_id = $1", key_id))


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


async def find(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> PublicKey | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM signing_keys WHERE key_id = $1", key_id)
    return None if row is None else PublicKey.from_row(row)


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
