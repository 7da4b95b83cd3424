"""Numbered SQL migrations under schemas/migrations, applied once each under an advisory lock.

Several instances may start at once: the advisory lock makes them take turns, and each migration
runs in its own transaction with its checksum recorded, so a file edited after it was applied
stops the start instead of leaving instances with different ideas of the schema.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg


def _migrations_dir() -> Path:
    """schemas/migrations of a source checkout, or the copy a wheel installs under share/ (pyproject.toml)."""
    checkout = Path(__file__).resolve().parent.parent / "schemas" / "migrations"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "lpd-gateway" / "migrations"


MIGRATIONS_DIR = _migrations_dir()
# Any fixed 64-bit number shared by every instance; this one spells "lpd-migr" in ASCII.
ADVISORY_LOCK_ID = 0x6C70642D6D696772
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration numbers must run 1, 2, 3, ... without gaps; found {versions}")
    return migrations


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def apply(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; return the ones applied now (empty when up to date)."""
    migrations = discover() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await conn.execute(_LEDGER)
        applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
        done = []
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql was changed after it was applied "
                        "to this database; restore the original file and add the change as a new migration")
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   migration.version, migration.name, migration.checksum)
            done.append(migration)
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            raise MigrationError(f"the database has migration {unknown[0]} that this gateway does not know; "
                                 "run a gateway at least as new as the one that applied it")
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def pending(conn: asyncpg.Connection) -> int:
    """How many migrations are not applied yet (for /readyz)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = await conn.fetchval("SELECT count(*) FROM schema_migrations") if exists else 0
    return len(discover()) - applied
