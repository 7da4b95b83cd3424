"""Server-held secrets (API key hashing, cursor signing), sealed in PostgreSQL under the master key.

Every instance of one deployment shares them through the database; the master key that unseals them
never touches the database. Each purpose has numbered versions: new material is made with the newest,
and older versions keep verifying what they made (rotation without invalidating issued keys).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from gateway.config import Config
from keys.hashing import KeyHasher
from keys.sealing import MasterKey, SealError

API_KEY_HASH = "api-key-hash"
CURSOR = "cursor"
# The web console's CSRF tokens: an HMAC under it binds each form to the session that showed it.
CONSOLE = "console"
PURPOSES = (API_KEY_HASH, CURSOR, CONSOLE)


class MasterKeyMismatch(RuntimeError):
    pass


def load_master_key(config: Config) -> MasterKey:
    if config.master_key:
        return MasterKey.from_text(config.master_key)
    config.home.mkdir(parents=True, exist_ok=True)
    return MasterKey.load_or_create(config.home / "master.key")


def _context(purpose: str, version: int) -> bytes:
    return f"server-secret:{purpose}:{version}".encode()


@dataclass(frozen=True, slots=True)
class ServerSecrets:
    by_purpose: dict[str, dict[int, bytes]]

    def current(self, purpose: str) -> tuple[int, bytes]:
        versions = self.by_purpose[purpose]
        newest = max(versions)
        return newest, versions[newest]

    def hasher(self) -> KeyHasher:
        versions = self.by_purpose[API_KEY_HASH]
        return KeyHasher(dict(versions), max(versions))


async def load(conn: asyncpg.Connection, master: MasterKey) -> ServerSecrets:
    """Read every sealed secret, creating version 1 of any purpose that has none yet."""
    for purpose in PURPOSES:
        sealed = master.seal(secrets.token_bytes(32), context=_context(purpose, 1))
        # Several instances may start at once: the first insert wins, the others read it.
        await conn.execute("INSERT INTO server_secrets (purpose, version, sealed) VALUES ($1, 1, $2) "
                           "ON CONFLICT DO NOTHING", purpose, sealed)
    by_purpose: dict[str, dict[int, bytes]] = {purpose: {} for purpose in PURPOSES}
    for row in await conn.fetch("SELECT purpose, version, sealed FROM server_secrets"):
        try:
            by_purpose.setdefault(row["purpose"], {})[row["version"]] = master.open(
                row["sealed"], context=_context(row["purpose"], row["version"]))
        except SealError:
            raise MasterKeyMismatch(
                "the master key does not open this database's sealed secrets: start the gateway with the "
                "GATEWAY_MASTER_KEY (or GATEWAY_HOME/master.key) that was used when the database was created"
            ) from None
    return ServerSecrets(by_purpose)


async def rotate(conn: asyncpg.Connection, master: MasterKey, purpose: str) -> int:
    """Add a new version of `purpose`'s secret; returns its number."""
    async with conn.transaction():
        # Two rotations at once would pick the same number; take turns.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('server_secrets:' || $1))", purpose)
        version = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM server_secrets WHERE purpose = $1", purpose)
        await conn.execute("INSERT INTO server_secrets (purpose, version, sealed) VALUES ($1, $2, $3)",
                           purpose, version, master.seal(secrets.token_bytes(32), context=_context(purpose, version)))
    return int(version)
