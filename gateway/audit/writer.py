"""The audit writer: every event durable in PostgreSQL before the response it describes is released.

One writer per gateway process owns one append-only log (`log_id`), numbers its events 0, 1, 2, ...
and folds each into the log's RFC 9162 Merkle tree. Requests hand events to a group commit: the
writer flushes as soon as the previous commit returns ("flush when idle"), so under load one write
carries many requests' events and at low load an event waits for one commit only, never a timer.
A small group is one statement and one round trip; a large one is a COPY in a transaction, and the
group behind it is serialised and hashed while it commits.

Administrative changes take the other door, `change()`: the change and its event commit in the same
transaction, so no change exists without its event and no event without its change.

Besides `seq`, the writer numbers each event within its vendor (`vendor_seq`) and within its member
(`member_seq`) in this log: a vendor's or a member's events in a log are then a gap-free series, and an
evidence bundle missing one of them shows the gap without the database (schemas/audit-format.md).

Signed checkpoints (gateway/audit/checkpoints.py) are made by a background task, never on a request's path:
after every `checkpoint_events` events, at least every `checkpoint_seconds` while events arrive, and
at close. The same task creates next month's audit_events partition ahead of time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import ChainMap, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction, TransactionState

from gateway import metrics, signing_keys, times
from gateway.audit import tiles, usage
from gateway.audit.checkpoints import CheckpointSigner
from gateway.audit.events import AuditEvent, EventKind, Outcome, canonical
from gateway.audit.format import key_created_detail, key_retired_detail
from gateway.errors import ServiceUnavailable
from keys.merkle import CompactRange, leaf_hash
from keys.sealing import MasterKey
from keys.tiles import RightEdge

log = logging.getLogger(__name__)

_COLUMNS = ("at", "log_id", "seq", "event_id", "kind", "outcome", "vendor_id", "member_id", "dataset_id",
            "licence_id", "credential_id", "entry")
# A group of up to this many events is written in one statement, one round trip, committed on its own
# (a statement is atomic): its events and the usage they count. Larger groups go by COPY in a
# transaction, which takes rows at twice the speed but costs three more round trips (BEGIN, the
# COPY's own, COMMIT). At moderate load groups are small and the round trips are the latency.
_ONE_STATEMENT_MAX = 64
# Events serialised and hashed between two turns of the event loop when a group is numbered ahead.
_NUMBERING_SLICE = 200
_WRITE_GROUP = (
    f"WITH usage AS ({usage.UPSERT_USAGE}) INSERT INTO audit_events ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest($8::timestamptz[], $9::text[], $10::bigint[], $11::uuid[], $12::text[], $13::text[], "
    "$14::uuid[], $15::uuid[], $16::uuid[], $17::uuid[], $18::uuid[], $19::bytea[]) "
    # Evaluated once: nothing is appended to a log that was ended (schemas/migrations/0008).
    "WHERE (SELECT audit_log_open(($9::text[])[1]))")


# Whether the audit key history has started (its one operator:keyring:create event, §4.3); the LIKE
# lets PostgreSQL use the partial index of migration 0012.
_HAS_KEY_HISTORY = ("SELECT true FROM audit_events WHERE kind LIKE 'operator:keyring:%' "
                    "AND kind = 'operator:keyring:create' "
                    "AND convert_from(entry, 'UTF8')::jsonb #>> '{detail,purpose}' = 'audit' LIMIT 1")


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


# The transaction of `AuditWriter.held_change()` in the task that holds it.
_HELD_CHANGE: ContextVar[Change | None] = ContextVar("held_change", default=None)


# Counts of a vendor's and a member's events in this log (keyed by UUID.int): the next vendor_seq / member_seq.
Series = dict[int, int]


@dataclass(slots=True)
class _Numbered:
    """A batch numbered but not yet known to be committed: applied to the writer's state after COMMIT.

    `base` is the batch it was numbered after (None: the log's start). Its numbers hold only if that
    batch is the last one applied to the log when it is written; otherwise it is numbered again.
    """

    base: _Numbered | None
    first: int
    leaves: list[bytes]
    vendors: Series
    members: Series
    rows: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    """Events that commit together, their shared outcome and the timer of their deadline.

    The deadline fails the waiters of a group that has not been sent to PostgreSQL yet, and such a
    group is then never written: a client answered 503 has no event that claims a delivery. Once
    `sent`, a group's waiters wait for the write's own outcome instead (schemas/audit-format.md §2.1.1)."""

    events: list[AuditEvent]
    done: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None
    sent: bool = False

    def settle(self, error: AuditUnavailable | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)

    def expire(self) -> None:
        if not self.sent and not self.done.done():
            self.done.set_exception(AuditUnavailable())


def _observe(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


# Connections the writer needs of its own: one for the group in flight (groups commit one at a time,
# and a lost answer is read back after that connection is released) and one for the checkpoint task.
OWN_CONNECTIONS = 2


class AuditWriter:
    def __init__(self, pool: asyncpg.Pool, log_id: str, instance: str, *, own_pool: asyncpg.Pool | None = None,
                 batch_max: int = 2000, deadline: float = 2.0, master: MasterKey | None = None,
                 checkpoint_events: int = 1000, checkpoint_seconds: float = 2.0) -> None:
        # Group commits, read-backs and checkpoints go through `own` (OWN_CONNECTIONS, not shared): however
        # many deliveries hold or wait for the shared pool, the writer gets a connection. Administrative
        # changes use the shared `pool`: their transaction carries the change itself, and holds
        # `_append` only while its events are written.
        self.pool = pool
        self.own = own_pool or pool
        self.log_id = log_id
        self.instance = instance
        self.batch_max = batch_max
        self.deadline = deadline
        self.tree = CompactRange()
        # The tree's right edge as tiles, stored before each checkpoint (gateway/audit/tiles.py).
        self.edge = RightEdge()
        self.batches = 0
        # Without the master key there is no signing key: events are written, checkpoints are not.
        self.signer = CheckpointSigner(master) if master is not None else None
        self.checkpoint_events = checkpoint_events
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpointed = 0  # tree size of the last stored checkpoint
        self.on_checkpoint: Callable[[], None] | None = None  # called after each checkpoint (gateway/audit/witnesses.py)
        self._vendors: Series = {}
        self._members: Series = {}
        self._last: _Numbered | None = None  # the batch last applied to the tree and the series
        self._groups: deque[_Group] = deque()
        self._wakeup = asyncio.Event()
        # Serialises numbering: a batch and a change never interleave their seq ranges.
        self._append = asyncio.Lock()
        # Set when a commit's outcome is unknown (connection lost during COMMIT); nothing is appended
        # until the writer has looked the batch up, or the log could get a gap or a duplicate.
        self._unresolved: _Numbered | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._checkpoint_due = asyncio.Event()
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._month: tuple[int, int] | None = None
        self.shared = False
        self._registered = False  # its row in audit_logs exists

    @property
    def size(self) -> int:
        return self.tree.size

    async def start(self, *, shared: bool = False) -> None:
        """Make sure this and next month's partitions and an audit key exist, start. The log is
        registered (`audit_logs`) by its first event, or by a quota lease taken for it: a process
        that records nothing leaves no log.

        `shared`: the log is the command line's (gateway/liveness.py `hold_shared_log`), appended to by
        one process at a time: resumed where it stands if it exists."""
        async with self.own.acquire() as conn:
            if shared:
                self.shared = True
                if await conn.fetchval("SELECT true FROM audit_logs WHERE log_id = $1", self.log_id):
                    await self._resume(conn)
            await self._ensure_partitions(conn)
            history = self.signer is None or await conn.fetchval(_HAS_KEY_HISTORY)
        self._task = asyncio.create_task(self._flush_forever(), name=f"audit-writer {self.log_id}")
        self._checkpoint_task = asyncio.create_task(self._checkpoint_forever(), name=f"audit-checkpoints {self.log_id}")
        if not history:
            await self._start_key_history()

    async def _start_key_history(self) -> None:
        """Make the deployment's first audit key, in the transaction of its operator:keyring:create
        event, the start of the signed key history (schemas/audit-format.md §4.3).

        A deployment whose audit keys were made before the history existed has them recorded instead,
        as the keyring's rows say now: a create event for the oldest, a rotate event for each later
        one, a retire event for each retired one. Several instances may start at once: under the
        keyring's advisory lock the first records the history, the others find it and roll back."""
        assert self.signer is not None

        class _Recorded(Exception):
            pass

        try:
            async with self.change() as change:
                conn = change.conn
                await signing_keys.lock(conn)
                if await conn.fetchval(_HAS_KEY_HISTORY):
                    raise _Recorded
                keys = await signing_keys.public_keys(conn, signing_keys.AUDIT)
                if not keys:
                    made = await signing_keys.create(conn, self.signer.master, signing_keys.AUDIT)
                    assert made is not None  # under the lock, and no key exists
                    keys = [made]
                previous = None
                for key in keys:  # oldest first: each later key was made by rotating out the one before
                    kind = EventKind.KEYRING_CREATE if previous is None else EventKind.KEYRING_ROTATE
                    change.record(AuditEvent(kind, Outcome.CHANGE, actor="operator",
                                             detail=key_created_detail(key, previous)))
                    previous = key
                for key in keys:
                    if key.retired_at is not None:
                        change.record(AuditEvent(EventKind.KEYRING_RETIRE, Outcome.CHANGE, actor="operator",
                                                 detail=key_retired_detail(key)))
        except _Recorded:
            return  # another instance recorded it
        # Every bundle carries this event under a checkpoint (§4.3): sign one now, not in a minute.
        self._checkpoint_due.set()

    async def _register(self, conn: asyncpg.Connection) -> None:
        if not self._registered:
            await conn.execute("INSERT INTO audit_logs (log_id, instance, shared) VALUES ($1, $2, $3) "
                               "ON CONFLICT DO NOTHING", self.log_id, self.instance, self.shared)

    async def _resume(self, conn: asyncpg.Connection) -> None:
        """Take up a registered log where it stands: its tree (from its tiles, tiled as far as its
        events first), its series numbers and its newest checkpoint."""
        size = await conn.fetchval("SELECT count(*) FROM audit_events WHERE log_id = $1", self.log_id)
        await tiles.extend(conn, self.log_id, size)  # refuses a log whose numbering has a gap
        self.tree = await tiles.prove(conn, self.log_id, size, lambda tree: tree.compact_range(), tiled=size)
        self.edge = await tiles.right_edge(conn, self.log_id, size)
        for column, series in (("vendor_id", self._vendors), ("member_id", self._members)):
            for row in await conn.fetch(f"SELECT {column} AS subject, count(*) AS n FROM audit_events "
                                        f"WHERE log_id = $1 AND {column} IS NOT NULL GROUP BY {column}", self.log_id):
                series[row["subject"].int] = row["n"]
        self.checkpointed = await conn.fetchval(
            "SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints WHERE log_id = $1", self.log_id)
        self._registered = True

    async def close(self) -> None:
        """Drain what the writer holds, sign a final checkpoint over all of it, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._stopping = True
        self._checkpoint_due.set()
        if self._checkpoint_task is not None:
            await self._checkpoint_task
            self._checkpoint_task = None

    async def checkpoint(self) -> int:
        """Sign a checkpoint over everything committed so far (if not signed yet); returns its size."""
        async with self.own.acquire() as conn:
            await self._checkpoint_in(conn)
        return self.checkpointed

    async def commit(self, event: AuditEvent) -> None:
        """Return once `event` is committed; raise AuditUnavailable if it cannot be within the deadline."""
        try:
            await self.submit(event)
        except AuditUnavailable as exc:
            # The group's exception is shared by all its waiters: each raises its own.
            raise AuditUnavailable(exc.detail) from None

    def submit(self, event: AuditEvent) -> asyncio.Future[None]:
        """Queue `event` for the next group commit without waiting (for stream completion events).

        The future is shared by the events of one group (at most batch_max): it completes when they
        are committed, or fails with AuditUnavailable when they are not within `deadline` of the
        group's first event. One future and one timer per group, not per event, is what keeps the
        writer's own cost per event to a few microseconds.
        """
        # Once the flush loop has ended nothing would write the event: refuse it instead of losing it.
        if self._closing and (self._task is None or self._task.done()):
            raise AuditUnavailable("the gateway is shutting down; retry on another instance")
        if not self._groups or len(self._groups[-1].events) >= self.batch_max:
            loop = asyncio.get_running_loop()
            fresh = _Group([], loop.create_future())
            # Its waiters may all have gone (answered at their own deadline, or cancelled): the failure is
            # logged where it happens, not again by asyncio as "never retrieved".
            fresh.done.add_done_callback(_observe)
            fresh.timer = loop.call_later(self.deadline, fresh.expire)
            self._groups.append(fresh)
        group = self._groups[-1]
        group.events.append(event)
        self._wakeup.set()
        return group.done

    async def _flush_forever(self) -> None:
        ahead: tuple[_Group, _Numbered] | None = None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while ahead is not None or self._groups:
                taken, ahead = ahead or await self._take(None), None
                if taken is None:
                    continue
                writing = asyncio.create_task(self._commit_group(*taken))
                # While PostgreSQL takes this group, number the next one as if this one commits: the
                # serialising and hashing then overlap the round trips. If it does not commit, or a
                # change commits in between, _commit_group numbers the next one again.
                if self._groups:
                    ahead = await self._take(taken[1])
                await writing
            if self._closing:
                return

    async def _take(self, after: _Numbered | None) -> tuple[_Group, _Numbered] | None:
        """The next group, numbered (after `after` while that one commits); None if it cannot be numbered."""
        # Taken off the queue before any await: later events start a new group.
        group = self._groups.popleft()
        try:
            numbered = (self._number(group.events, None) if after is None
                        else await self._number_ahead(group.events, after))
        except Exception as exc:  # noqa: BLE001 - an event that cannot be serialised fails its group closed
            self._fail(group, exc)
            return None
        return group, numbered

    async def _commit_group(self, group: _Group, numbered: _Numbered) -> None:
        """Write and commit one group, then release its waiters, or fail them all closed."""
        started = time.perf_counter()
        try:
            async with self.own.acquire() as conn, self._append:
                await self._resolve(conn)
                if group.done.done():
                    return  # its deadline passed while it waited: its clients were answered 503, never write it
                group.sent = True  # from here its waiters wait for this write's outcome
                if numbered.base is not self._last:
                    numbered = self._number(group.events, None)
                if len(group.events) <= _ONE_STATEMENT_MAX:
                    await self._write_statement(conn, group.events, numbered)
                else:
                    transaction = conn.transaction()
                    await transaction.start()
                    try:
                        await self._write(conn, group.events, numbered, transaction)
                    except BaseException:
                        await _rollback_if_open(transaction)
                        raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, every waiter fails closed
            if group.sent and self._unresolved is not None and await self._committed_after_all():
                group.settle(None)  # the write committed, only its answer was lost: the response may go
                return
            self._fail(group, exc)
        else:
            metrics.AUDIT_BATCH_EVENTS.observe(len(group.events))
            metrics.AUDIT_COMMIT_SECONDS.observe(time.perf_counter() - started)
            group.settle(None)

    async def _committed_after_all(self) -> bool:
        """After a write failed on its way back, whether it committed: read back on a fresh connection
        within the deadline. Unknown counts as not committed (the waiters fail closed) and is logged, since
        the events may still turn out written (schemas/audit-format.md §2.1.1)."""
        unresolved = self._unresolved
        try:
            async with asyncio.timeout(self.deadline):
                async with self.own.acquire() as conn, self._append:
                    await self._resolve(conn)
        except Exception:  # noqa: BLE001 - any failure to read back leaves the outcome unknown
            log.error("audit write outcome unknown for %d events of log %s from seq %d; their clients were "
                      "answered 503", len(unresolved.leaves) if unresolved else 0, self.log_id,
                      unresolved.first if unresolved else -1)
            return False
        return unresolved is not None and self._last is unresolved

    @staticmethod
    def _fail(group: _Group, exc: Exception) -> None:
        log.warning("audit batch of %d events failed: %s", len(group.events), exc)
        metrics.AUDIT_FAILURES.inc()
        group.settle(AuditUnavailable())

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """A transaction for an administrative change; its recorded events commit with it, or nothing does.

        Within `held_change()` it is that transaction: the change commits when the holder's ends."""
        held = _HELD_CHANGE.get()
        if held is not None:
            yield held
            if not held.events:
                raise RuntimeError("an administrative change must record its audit event")
            return
        async with self._transaction() as change:
            yield change
            if not change.events:
                raise RuntimeError("an administrative change must record its audit event")

    @asynccontextmanager
    async def held_change(self) -> AsyncIterator[Change]:
        """One transaction for whatever `change()` the block makes, and for the holder's own statements
        after it (an idempotency key's stored answer commits with the change it answers). It commits
        with the events recorded; with none (nothing was changed) it is rolled back."""
        async with self._transaction() as change:
            token = _HELD_CHANGE.set(change)
            try:
                yield change
            finally:
                _HELD_CHANGE.reset(token)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Change]:
        """A transaction committed with the events the block records, or rolled back if it records none."""
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            change = Change(conn)
            try:
                yield change
                if not change.events:
                    await transaction.rollback()
                    return
                async with self._append:
                    await self._resolve(conn)
                    await self._write(conn, change.events, self._number(change.events, None), transaction)
            except BaseException:
                await _rollback_if_open(transaction)
                raise

    def _number(self, events: Sequence[AuditEvent], after: _Numbered | None) -> _Numbered:
        """Give `events` their seq and series numbers after `after` (None: after what is committed);
        serialise and hash them."""
        *_, numbered = self._numbering(events, after)
        assert numbered is not None
        return numbered

    async def _number_ahead(self, events: Sequence[AuditEvent], after: _Numbered) -> _Numbered:
        """`_number`, pausing every few hundred events so that the loop keeps feeding PostgreSQL the
        group in flight (its COPY data, its COMMIT) while this one is serialised and hashed."""
        for numbered in self._numbering(events, after):
            if numbered is not None:
                return numbered
            await asyncio.sleep(0)
        raise AssertionError("unreachable: _numbering ends with the numbered batch")

    def _numbering(self, events: Sequence[AuditEvent], after: _Numbered | None) -> Iterator[_Numbered | None]:
        """Number `events`, yielding None every _NUMBERING_SLICE events and the numbered batch at the end.

        Numbers follow `after`'s whatever happens meanwhile: if `after` does not commit, or anything
        else is appended first, the batch's `base` no longer matches and it is numbered again."""
        if after is None:
            numbered = _Numbered(self._last, self.tree.size, [], {}, {})
            vendors, members = (numbered.vendors, self._vendors), (numbered.members, self._members)
        else:
            numbered = _Numbered(after, after.first + len(after.leaves), [], {}, {})
            vendors = (numbered.vendors, ChainMap(after.vendors, self._vendors))
            members = (numbered.members, ChainMap(after.members, self._members))
        log_id, instance, first = self.log_id, self.instance, numbered.first
        rows, leaves = numbered.rows, numbered.leaves
        for offset, event in enumerate(events):
            body = event.body(log_id, first + offset, instance)
            body["vendor_seq"] = _next(vendors, event.vendor_id)
            body["member_seq"] = _next(members, event.member_id)
            entry = canonical(body)
            leaves.append(leaf_hash(entry))
            # Ids as the body's strings: asyncpg parses those in C, where a UUID costs a Python call each.
            rows.append((event.at, log_id, first + offset, body["event_id"], body["kind"], body["outcome"],
                         body["vendor_id"], body["member_id"], body["dataset_id"], body["licence_id"],
                         body["actor"]["credential_id"], entry))
            if offset % _NUMBERING_SLICE == _NUMBERING_SLICE - 1:
                yield None
        yield numbered

    async def _write(self, conn: asyncpg.Connection, events: Sequence[AuditEvent], numbered: _Numbered,
                     transaction: Transaction) -> None:
        """Write numbered events, commit, then extend the tree. Caller holds `_append`."""
        await self._register(conn)
        await conn.execute("SELECT audit_log_open($1)", self.log_id)
        await conn.copy_records_to_table("audit_events", records=numbered.rows, columns=_COLUMNS)
        # Usage commits with the events that count it: the bill and the evidence never disagree.
        await usage.write_usage(conn, events, self.log_id)
        try:
            await transaction.commit()
        except BaseException:
            # The COMMIT may or may not have reached the server: look the batch up before going on.
            self._unresolved = numbered
            raise
        self._extend(numbered)

    async def _write_statement(self, conn: asyncpg.Connection, events: Sequence[AuditEvent],
                               numbered: _Numbered) -> None:
        """Write and commit numbered events and their usage in one statement, then extend the tree."""
        await self._register(conn)
        try:
            await conn.execute(_WRITE_GROUP, *usage.usage_columns(events, self.log_id), *zip(*numbered.rows))
        except BaseException:
            # Lost on the way back, the statement may have committed: look the batch up before going on.
            self._unresolved = numbered
            raise
        self._extend(numbered)

    def _extend(self, numbered: _Numbered) -> None:
        self._registered = True
        for leaf in numbered.leaves:
            self.tree.append(leaf)
            self.edge.append(leaf)
        self._vendors.update(numbered.vendors)
        self._members.update(numbered.members)
        self._last = numbered
        numbered.base = None  # the chain behind it is applied: let it go
        self.batches += 1
        if self.tree.size - self.checkpointed >= self.checkpoint_events:
            self._checkpoint_due.set()

    async def _resolve(self, conn: asyncpg.Connection) -> None:
        if self._unresolved is None:
            return
        numbered = self._unresolved
        found = await conn.fetchval("SELECT count(*) FROM audit_events WHERE log_id = $1 AND seq >= $2",
                                    self.log_id, numbered.first)
        if found == len(numbered.leaves):
            self._extend(numbered)
        elif found != 0:
            raise RuntimeError(f"audit log {self.log_id} holds {found} of {len(numbered.leaves)} events of a batch")
        self._unresolved = None

    # -- background: checkpoints and partitions ---------------------------------------------------------

    async def _checkpoint_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._checkpoint_due.wait(), self.checkpoint_seconds)
            except TimeoutError:
                pass
            self._checkpoint_due.clear()
            # Read before the round: when close() has set it, every event is in the tree already.
            final = self._stopping
            try:
                async with self.own.acquire() as conn:
                    await self._ensure_partitions(conn)
                    await self._checkpoint_in(conn)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                # The next round retries; the events themselves are committed, only their signature waits.
                log.warning("audit log %s: checkpoint at size %d failed: %s", self.log_id, self.tree.size, exc)
            if final:
                return

    async def _checkpoint_in(self, conn: asyncpg.Connection) -> None:
        if self.signer is None:
            return
        # Size and root read together, with no await between: a committed prefix of the log.
        size, root = self.tree.size, self.tree.root()
        if size <= self.checkpointed:
            return
        await tiles.store(conn, self.log_id, self.edge)  # the tiles of every checkpointed tree exist
        try:
            await self.signer.sign(conn, self.log_id, size, root)
        except asyncpg.UniqueViolationError:
            pass  # an earlier attempt committed but its answer was lost: that checkpoint stands
        self.checkpointed = max(self.checkpointed, size)
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    async def _ensure_partitions(self, conn: asyncpg.Connection) -> None:
        """This month's and next month's partitions, checked again when the month turns."""
        now = times.now()
        if self._month == (now.year, now.month):
            return
        try:
            await conn.execute("SELECT audit_events_ensure_month(now()), "
                               "audit_events_ensure_month(now() + interval '1 month')")
        except asyncpg.PostgresError as exc:
            # E.g. the DEFAULT partition already holds rows of that month. Events still go to DEFAULT,
            # so nothing is lost; the next round tries again and the operator sees the warning.
            log.warning("audit_events: could not create the monthly partitions: %s", exc)
            return
        self._month = (now.year, now.month)


def _next(series: tuple[Series, Mapping[int, int]], subject: uuid.UUID | None) -> int | None:
    """The next number in `subject`'s series (this batch's counts first, then what is committed); the
    count is recorded in this batch's, applied to the committed ones after COMMIT."""
    if subject is None:
        return None
    key = subject.int  # hashing the int is native; hashing a UUID runs Python code
    batch, committed = series
    number = batch.get(key)
    if number is None:
        number = committed.get(key, 0)
    batch[key] = number + 1
    return number


def new_log_id(instance: str) -> str:
    """A log per writer process: instance name, start time and a random suffix (two processes never share)."""
    import secrets

    return f"{instance}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}/{secrets.token_hex(3)}"


async def _rollback_if_open(transaction: Transaction) -> None:
    # asyncpg has no public "is this transaction still open"; rolling back a finished one raises.
    if transaction._state is TransactionState.STARTED:
        try:
            await transaction.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone; the server rolls the transaction back itself
