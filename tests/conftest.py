"""Test harness: a real PostgreSQL, migrated once into a template, one fresh database per test.

The server is the embedded PostgreSQL by default, or the one named by GATEWAY_TEST_DATABASE_URL.
Each test gets `CREATE DATABASE ... TEMPLATE`, so tests never see each other's rows or
notifications and the suite runs in any order. Nothing about the database is mocked.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway import config as config_module
from gateway import database, migrations
from gateway.app import build_app
from gateway.runtime import Runtime
from keys.sealing import MasterKey

TEST_MASTER_KEY = MasterKey.generate().to_text()


def _with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An admin DSN of the PostgreSQL server the suite runs against."""
    external = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if external:
        yield external
        return
    home = Path(tempfile.mkdtemp(prefix="lpd-gateway-tests-"))
    yield database.embedded_dsn(home, "postgres")


class Databases:
    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.prefix = f"gwt_{secrets.token_hex(3)}"
        self.created: list[str] = []

    async def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        conn = await asyncpg.connect(self.server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            await conn.close()
        self.created.append(name)
        return name

    def dsn(self, name: str) -> str:
        return _with_database(self.server_dsn, name)

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self.server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def databases(server_dsn: str) -> AsyncIterator[Databases]:
    dbs = Databases(server_dsn)
    yield dbs
    for name in dbs.created:
        await dbs.drop(name)


@pytest.fixture(scope="session")
async def migrated_template(databases: Databases) -> str:
    name = await databases.create()
    conn = await asyncpg.connect(databases.dsn(name))
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()
    return name


def make_config(dsn: str, home: Path, **overrides: str) -> config_module.Config:
    env = {"GATEWAY_DATABASE_URL": dsn, "GATEWAY_HOME": str(home), "GATEWAY_MASTER_KEY": TEST_MASTER_KEY,
           "GATEWAY_INSTANCE": "test", "GATEWAY_POOL_SIZE": "4", **overrides}
    return config_module.load(env)


@pytest.fixture(scope="session")
async def demo_template(databases: Databases, migrated_template: str,
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A database with the demo seeded once (through the real publish path), cloned by demo tests."""
    from gateway import demo

    name = await databases.create(migrated_template)
    runtime = await Runtime.open(make_config(databases.dsn(name), tmp_path_factory.mktemp("demo")), serving=False)
    try:
        content, created = await demo.seed(runtime, records=12_000)
        assert created
    finally:
        await runtime.close()
    return name, content


@pytest.fixture
async def dsn(databases: Databases, migrated_template: str) -> AsyncIterator[str]:
    name = await databases.create(migrated_template)
    yield databases.dsn(name)
    await databases.drop(name)


@pytest.fixture
async def demo_dsn(databases: Databases, demo_template: tuple[str, dict[str, Any]]) -> AsyncIterator[str]:
    name = await databases.create(demo_template[0])
    yield databases.dsn(name)
    await databases.drop(name)


@pytest.fixture
def demo_content(demo_template: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return demo_template[1]


async def open_runtime(dsn: str, home: Path, **overrides: str) -> Runtime:
    return await Runtime.open(make_config(dsn, home, **overrides), serving=True)


@pytest.fixture
async def runtime(dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(dsn, tmp_path)
    yield rt
    await rt.close()


@pytest.fixture
async def demo_runtime(demo_dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(demo_dsn, tmp_path)
    yield rt
    await rt.close()


def client_for(rt: Runtime, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_app(rt), client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(runtime) as c:
        yield c


@pytest.fixture
async def demo_client(demo_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(demo_runtime) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
