"""Migrations: applied once, recorded with checksums, safe when several processes start at once."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from gateway import migrations

EXPECTED_TABLES = {
    "vendors", "datasets", "dataset_versions", "dataset_partitions", "records", "members", "licences",
    "licence_terms", "terms_acceptances", "credentials", "server_secrets", "audit_events", "schema_migrations",
}


@pytest.fixture
async def empty_dsn(databases):
    name = await databases.create()
    yield databases.dsn(name)
    await databases.drop(name)


async def test_migrating_from_empty_gives_the_schema(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        applied = await migrations.apply(conn)
        assert [m.version for m in applied] == [m.version for m in migrations.discover()]
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert EXPECTED_TABLES <= tables
        assert await migrations.pending(conn) == 0
        # Idempotent: a second run applies nothing and changes nothing.
        assert await migrations.apply(conn) == []
    finally:
        await conn.close()


async def test_concurrent_starts_apply_each_migration_once(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.apply(c) for c in conns))
        assert sum(len(r) for r in results) == len(migrations.discover())
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in migrations.discover()]
    finally:
        for c in conns:
            await c.close()


async def test_a_changed_applied_migration_stops_the_start(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrations.apply(conn)
        edited = [dataclasses.replace(m, sql=m.sql + "\n-- edited") if m.version == 1 else m
                  for m in migrations.discover()]
        with pytest.raises(migrations.MigrationError, match="was changed after it was applied"):
            await migrations.apply(conn, edited)
    finally:
        await conn.close()


async def test_audit_events_are_append_only(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrations.apply(conn)
        await conn.execute(
            "INSERT INTO audit_events (at, log_id, seq, event_id, kind, outcome, entry) "
            "VALUES (now(), 'l', 0, gen_random_uuid(), 'k', 'allow', '\\x00')")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_events SET kind = 'x'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_events")
        for table in ("audit_events", "audit_checkpoints"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(f"TRUNCATE {table}")
        assert await conn.fetchval("SELECT count(*) FROM audit_events") == 1
    finally:
        await conn.close()


async def test_published_records_are_append_only(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrations.apply(conn)
        await conn.execute("INSERT INTO records (dataset_id, partition, version, seq, data) "
                           "VALUES (gen_random_uuid(), '13', 1, 0, '{}')")
        for statement in ("UPDATE records SET data = '{\"x\": 1}'", "DELETE FROM records", "TRUNCATE records"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT data::text FROM records") == "{}"
    finally:
        await conn.close()
