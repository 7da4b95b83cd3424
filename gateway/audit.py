"""The audit writer: every event durable in PostgreSQL before the response it describes is released.

One writer per gateway process owns one append-only log (`log_id`), numbers its events 0, 1, 2, ...
and folds each into the log's RFC 9162 Merkle tree. Requests hand events to a group commit: the
writer flushes as soon as the previous commit returns ("flush when idle"), so under load one COPY
carries many requests' events and at low load an event waits for one commit only, never a timer.

Administrative changes take the other door, `change()`: the change and its event commit in the same
transaction, so no change exists without its event and no event without its change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from asyncpg.transaction import Transaction, TransactionState

from gateway.errors import ServiceUnavailable
from gateway.events import AuditEvent, canonical
from keys.merkle import CompactRange, leaf_hash

log = logging.getLogger(__name__)

_COLUMNS = ("at", "log_id", "seq", "event_id", "kind", "outcome", "vendor_id", "member_id", "dataset_id",
            "licence_id", "credential_id", "entry")


class AuditUnavailable(ServiceUnavailable):
    """The event could not be made durable; the request fails closed and delivers nothing."""

    def __init__(self, detail: str = "the audit log cannot be written right now; nothing was delivered. "
                                     "Retry in a few seconds.") -> None:
        super().__init__(detail, headers={"Retry-After": "2"})


@dataclass(slots=True)
class Change:
    """An open transaction for an administrative change and the events that describe it."""

    conn: asyncpg.Connection
    events: list[AuditEvent] = field(default_factory=list)

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class AuditWriter:
    def __init__(self, pool: asyncpg.Pool, log_id: str, instance: str, *, batch_max: int = 2000,
                 deadline: float = 2.0) -> None:
        self.pool = pool
        self.log_id = log_id
        self.instance = instance
        self.batch_max = batch_max
        self.deadline = deadline
        self.tree = CompactRange()
        self.batches = 0
        self._pending: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        # Serialises numbering: a batch and a change never interleave their seq ranges.
        self._append = asyncio.Lock()
        # Set when a commit's outcome is unknown (connection lost during COMMIT); nothing is appended
        # until the writer has looked the batch up, or the log could get a gap or a duplicate.
        self._unresolved: tuple[int, list[bytes]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def size(self) -> int:
        return self.tree.size

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name=f"audit-writer {self.log_id}")

    async def close(self) -> None:
        """Drain what the writer holds, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def commit(self, event: AuditEvent) -> None:
        """Return once `event` is committed; raise AuditUnavailable if it cannot be within the deadline."""
        future = self.submit(event)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.deadline)
        except TimeoutError:
            raise AuditUnavailable() from None

    def submit(self, event: AuditEvent) -> asyncio.Future[None]:
        """Queue `event` for the next group commit without waiting (for stream completion events)."""
        if self._closing and self._task is None:
            raise AuditUnavailable("the gateway is shutting down; retry on another instance")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._wakeup.set()
        return future

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self.batch_max], self._pending[self.batch_max:]
                try:
                    async with self.pool.acquire() as conn, self._append:
                        transaction = conn.transaction()
                        await transaction.start()
                        try:
                            await self._append_in(conn, [event for event, _ in batch], transaction)
                        except BaseException:
                            await _rollback_if_open(transaction)
                            raise
                except Exception as exc:  # whatever failed, every waiter fails closed
                    log.warning("audit batch of %d events failed: %s", len(batch), exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(AuditUnavailable())
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
            if self._closing:
                return

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """A transaction for an administrative change; its recorded events commit with it, or nothing does."""
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            change = Change(conn)
            try:
                yield change
                if not change.events:
                    raise RuntimeError("an administrative change must record its audit event")
                async with self._append:
                    await self._append_in(conn, change.events, transaction)
            except BaseException:
                await _rollback_if_open(transaction)
                raise

    async def _append_in(self, conn: asyncpg.Connection, events: Sequence[AuditEvent],
                         transaction: Transaction) -> None:
        """Number, serialise and write `events`, commit, then extend the tree. Caller holds `_append`."""
        await self._resolve(conn)
        first = self.tree.size
        rows = []
        leaves = []
        for offset, event in enumerate(events):
            entry = canonical(event.body(self.log_id, first + offset, self.instance))
            leaves.append(leaf_hash(entry))
            rows.append((event.at, self.log_id, first + offset, event.event_id, event.kind.value, event.outcome.value,
                         event.vendor_id, event.member_id, event.dataset_id, event.licence_id, event.credential_id,
                         entry))
        await conn.copy_records_to_table("audit_events", records=rows, columns=_COLUMNS)
        try:
            await transaction.commit()
        except BaseException:
            # The COMMIT may or may not have reached the server: look the batch up before going on.
            self._unresolved = (first, leaves)
            raise
        self._extend(leaves)

    def _extend(self, leaves: list[bytes]) -> None:
        for leaf in leaves:
            self.tree.append(leaf)
        self.batches += 1

    async def _resolve(self, conn: asyncpg.Connection) -> None:
        if self._unresolved is None:
            return
        first, leaves = self._unresolved
        found = await conn.fetchval("SELECT count(*) FROM audit_events WHERE log_id = $1 AND seq >= $2",
                                    self.log_id, first)
        if found == len(leaves):
            self._extend(leaves)
        elif found != 0:
            raise RuntimeError(f"audit log {self.log_id} holds {found} of {len(leaves)} events of a batch")
        self._unresolved = None


def new_log_id(instance: str) -> str:
    """A log per writer process: instance name, start time and a random suffix (two processes never share)."""
    import secrets

    return f"{instance}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}/{secrets.token_hex(3)}"


async def _rollback_if_open(transaction: Transaction) -> None:
    # asyncpg has no public "is this transaction still open"; rolling back a finished one raises.
    if transaction._state is TransactionState.STARTED:  # noqa: SLF001
        try:
            await transaction.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone; the server rolls the transaction back itself
