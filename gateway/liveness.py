"""Which gateway processes are alive, seen from PostgreSQL, and what a survivor does for one that died.

Every process is one audit log (a row of `audit_logs`, made by its first event or quota lease: a
process that records nothing has none and holds nothing). While it runs it renews the row's `seen_at`
from the database clock every HEARTBEAT_SECONDS, on a connection of its own (so that deliveries
holding the pool cannot make a live process look dead), and takes the database's time as its clock
(gateway/times.py). A process not seen for DEAD_AFTER_SECONDS is dead.

Ending a log (schemas/migrations/0008) happens once, by the process itself when it stops, or by the
first serving process that finds it dead (a starting one looks at once):
1. under the log's advisory lock, which every append takes shared (`audit_log_open`), `ended_at` is
   set: from then on nothing can be appended to the log, even by a process that was only paused and
   comes back (it is told so at its next heartbeat and stops);
2. in the same transaction its hard-quota leases shrink to what its log metered (`usage_daily` rows
   of its log_id), so the rest returns to the month's grant for the other instances;
3. then the final checkpoint is signed over every committed event (if no checkpoint covers them yet)
   and `final_size` records it: every committed event gets its receipt.
A survivor reaps only after its own heartbeats have gone through for DEAD_AFTER_SECONDS, so that
after PostgreSQL itself stalled, the instances that have not renewed yet are not taken for dead.

The command line's log is the exception (`shared`, schemas/migrations/0011): CLI commands append to
one log per deployment, one command at a time under SHARED_LOG_LOCK (`hold_shared_log`), each resuming
it where the last one left it and signing a checkpoint over it when done. It belongs to no process, so
it has no heartbeat, is never taken for dead and never ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from gateway import tasks, times
from gateway.audit import tiles
from gateway.audit.checkpoints import DEAD_AFTER_SECONDS, CheckpointSigner
from gateway.audit.tiles import LogDamaged
from gateway.audit.writer import new_log_id

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0

# A log's leases shrink to what it metered: its usage rows of the lease's JST month.
_RETURN_LEASES = """
UPDATE quota_leases q SET records_leased = least(q.records_leased, spent.records),
                          bytes_leased = least(q.bytes_leased, spent.bytes)
FROM (SELECT l.licence_id, l.month, coalesce(sum(u.records), 0) AS records, coalesce(sum(u.bytes), 0) AS bytes
      FROM quota_leases l LEFT JOIN usage_daily u ON u.licence_id = l.licence_id AND u.log_id = l.log_id
           AND u.day >= l.month AND u.day < (l.month + interval '1 month')
      WHERE l.log_id = $1 GROUP BY l.licence_id, l.month) AS spent
WHERE q.log_id = $1 AND q.licence_id = spent.licence_id AND q.month = spent.month
"""


class LogEnded(RuntimeError):
    """This process's log was ended by another process (it was taken for dead): it must restart."""


async def end_log(conn: asyncpg.Connection, log_id: str, ended_by: str, *, silent_for: float | None) -> bool:
    """End a log and return its unspent leases; with `silent_for`, only if it has not been seen for
    that many seconds (a dead process). False when it was ended already, or is alive after all."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('audit_logs'), hashtext($1))", log_id)
        ended = await conn.fetchval(
            "UPDATE audit_logs SET ended_at = clock_timestamp(), ended_by = $2 WHERE log_id = $1 AND ended_at IS NULL "
            "AND ($3::float8 IS NULL OR seen_at < clock_timestamp() - make_interval(secs => $3)) RETURNING true",
            log_id, ended_by, silent_for)
        if not ended:
            return False
        await conn.execute(_RETURN_LEASES, log_id)
    return True


async def finish_log(conn: asyncpg.Connection, signer: CheckpointSigner, log_id: str) -> int:
    """Sign the final checkpoint of an ended log over all its events (unless one covers them) and
    record its size; returns the size."""
    size = await conn.fetchval("SELECT count(*) FROM audit_events WHERE log_id = $1", log_id)
    covered = await conn.fetchval("SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints WHERE log_id = $1",
                                  log_id)
    if size > covered:
        # Its process stored the tiles of its last checkpoint: only the events after it are hashed.
        root = await tiles.prove(conn, log_id, size, lambda tree: tree.root())
        try:
            await signer.sign(conn, log_id, size, root)
        except asyncpg.UniqueViolationError:
            pass  # another survivor signed the same size first: that checkpoint stands
    await conn.execute("UPDATE audit_logs SET final_size = $2 WHERE log_id = $1 AND ended_at IS NOT NULL",
                       log_id, size)
    return size


# Held (session-level) by the CLI command appending to the command line's log; another one waits for it.
SHARED_LOG_LOCK = "SELECT pg_advisory_lock(hashtext('audit_shared_log'), 0)"
SHARED_LOG_QUIET_WAIT = 2.0  # seconds


async def hold_shared_log(dsn: str, instance: str) -> tuple[str, asyncpg.Connection]:
    """The command line's log (a new id if there is none yet) and the connection holding its lock for this
    command: close it when the command's writer has closed."""
    conn = await asyncpg.connect(dsn)
    try:
        # A command that has just ended may still hold it for a moment (its session is being torn down):
        # say that this one waits only when it is another command at work.
        for _ in range(round(SHARED_LOG_QUIET_WAIT / 0.1)):
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext('audit_shared_log'), 0)"):
                break
            await asyncio.sleep(0.1)
        else:
            log.warning("another gateway command is writing to the audit log; waiting for it to finish")
            await conn.execute(SHARED_LOG_LOCK)
        log_id = await conn.fetchval("SELECT log_id FROM audit_logs WHERE shared AND ended_at IS NULL")
    except BaseException:
        await conn.close()
        raise
    return log_id or new_log_id(instance), conn


# A heartbeat renews the log's seen_at (once its first event or lease has registered it) and reads the
# database clock; `ended` says that another process ended the log.
_BEAT = """
    WITH beat AS (UPDATE audit_logs SET seen_at = clock_timestamp() WHERE log_id = $1 AND ended_at IS NULL
                  RETURNING seen_at)
    SELECT coalesce((SELECT seen_at FROM beat), clock_timestamp()) AS now,
           EXISTS (SELECT FROM audit_logs WHERE log_id = $1 AND ended_at IS NOT NULL) AS ended"""
_SHARED_BEAT = "SELECT clock_timestamp() AS now, false AS ended"


class Liveness:
    """This process's heartbeat and clock; for a serving process also the reaper of dead ones."""

    def __init__(self, dsn: str, log_id: str, signer: CheckpointSigner | None, *, reaps: bool,
                 on_ended: Callable[[], None] | None = None, shared: bool = False) -> None:
        # shared: the command line's log, which is not this process's to renew or end: only the clock is read.
        self.dsn, self.log_id, self.signer, self.reaps, self.shared = dsn, log_id, signer, reaps, shared
        self.on_ended = on_ended
        self.ended = False
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # Since when (monotonic) this process's heartbeats have gone through without a miss.
        self._steady_since: float | None = None

    async def start(self) -> None:
        """The first heartbeat (and clock reading) before anything is decided; a serving process then
        ends what died while nothing was watching."""
        await self._beat()
        if self.reaps:
            # Finish what was ended; who is dead is decided once this process's heartbeats are steady.
            await self.reap(steady=False)
        self._task = asyncio.create_task(self._run(), name=f"liveness {self.log_id}")

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=HEARTBEAT_SECONDS * 2,
                                               command_timeout=HEARTBEAT_SECONDS * 2)
        return self._conn

    async def _beat(self) -> None:
        conn = await self._connection()
        asked = time.time()
        row = await (conn.fetchrow(_SHARED_BEAT) if self.shared else conn.fetchrow(_BEAT, self.log_id))
        answered = time.time()
        if row["ended"]:
            self.ended = True
            raise LogEnded(f"audit log {self.log_id} was ended by another process, which took this one for dead")
        times.observe_database_clock(row["now"], asked, answered)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
                if self._steady_since is None:
                    self._steady_since = time.monotonic()
                if self.reaps:
                    await self.reap(steady=time.monotonic() - self._steady_since >= DEAD_AFTER_SECONDS)
            except LogEnded as exc:
                log.error("%s; stopping", exc)
                if self.on_ended is not None:
                    self.on_ended()
                return
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self._steady_since = None
                log.warning("heartbeat of %s failed: %s", self.log_id, exc or "no answer in time")
                await self._drop_connection()

    async def reap(self, *, steady: bool) -> None:
        """End the logs of processes not seen for DEAD_AFTER_SECONDS (only when this one's own heartbeats
        are `steady`), and finish every ended log whose final checkpoint is not signed yet."""
        conn = await self._connection()
        if steady:
            silent = await conn.fetch(
                "SELECT log_id FROM audit_logs WHERE ended_at IS NULL AND NOT shared AND log_id <> $1 "
                "AND seen_at < clock_timestamp() - make_interval(secs => $2)", self.log_id, DEAD_AFTER_SECONDS)
            for row in silent:
                if await end_log(conn, row["log_id"], self.log_id, silent_for=DEAD_AFTER_SECONDS):
                    log.warning("audit log %s: its process stopped answering; its log is ended and its unspent "
                                "quota leases returned", row["log_id"])
        if self.signer is None:
            return
        for row in await conn.fetch("SELECT log_id FROM audit_logs WHERE final_size IS NULL AND ended_at IS NOT NULL"):
            try:
                await finish_log(conn, self.signer, row["log_id"])
            except LogDamaged as exc:
                log.error("%s", exc)

    async def close(self) -> None:
        """End this process's own log (its writer has drained and signed its last checkpoint)."""
        await tasks.stop(self._task)
        self._task = None
        if self.ended or self.shared:
            await self._drop_connection()
            return
        try:
            conn = await self._connection()
            if await end_log(conn, self.log_id, self.log_id, silent_for=None) and self.signer is not None:
                await finish_log(conn, self.signer, self.log_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # A survivor (or the next start) ends it once the heartbeats are missed.
            log.warning("audit log %s could not be ended: %s", self.log_id, exc)
        finally:
            await self._drop_connection()

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), HEARTBEAT_SECONDS)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                conn.terminate()
