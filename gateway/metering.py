"""Metering, quotas and rate limits: how much each licence received, and how much more it may receive.

Usage is written by the audit writer in the same transaction as the delivery events it counts
(gateway/audit/usage.py), per licence, per day in Japan Standard Time (billing periods are JST days and
months) and per writer. Quota decisions need no database round trip: each instance keeps a
`UsageBook` of the month — its own deliveries, counted in memory the moment they are decided, and the
other instances' deliveries as last read from PostgreSQL (every `SYNC_SECONDS`) — and decides from it.

Hard quotas across instances: leases. An instance may deliver under a hard quota only what it has
leased for its log (`quota_leases`, per licence, JST month and process, taken under the row lock of
`quota_grants`); leases are taken in shares of 1/LEASE_SHARES of the quota, so a round trip happens
once per share, not per request, and the sum of all leases never exceeds the quota: zero overshoot,
on any number of instances. The price is undershoot: a share leased by one instance is not available
to another until that instance gives it back — when the licence has been idle on it for
LEASE_IDLE_SECONDS, at the end of every export, and when its log ends (gateway/liveness.py: at
shutdown, or by a survivor within seconds of a crash, shrinking the lease to what the log metered).
A refusal says which it is: the quota used up (Retry-After: the next month), or held by deliveries in
progress (Retry-After: seconds). Within an instance, a delivery reserves its part of the lease before
its first await, so concurrent requests stay exact. If a lease cannot be taken (PostgreSQL
unreachable), the delivery is refused: never unlimited.

The month is the database's (gateway/times.py): an instance whose own clock is days ahead still
leases from the current month's grant.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from gateway import database, tasks, times
from gateway.errors import ServiceUnavailable
from gateway.licences import Licence
from gateway.times import JST, jst_day, month_start, next_month

log = logging.getLogger(__name__)

SYNC_SECONDS = 1.0
LEASE_SHARES = 20
# A lease this instance has not drawn on for this long goes back to the grant for the other instances.
LEASE_IDLE_SECONDS = 5.0
# What a refusal for quota held by deliveries in progress tells the client to wait: an idle lease is
# back within LEASE_IDLE_SECONDS plus a sync.
LEASE_RETRY_SECONDS = 7


@dataclass(slots=True)
class Tally:
    records: int = 0
    bytes: int = 0


@dataclass
class UsageBook:
    """One instance's view of each licence's usage in the current JST month."""

    log_id: str
    instance: str = ""  # of the log, to register it with a lease that comes before its first event
    # How long a lease may take (the audit deadline): on a stalled PostgreSQL the delivery is refused with
    # 503 then. A lease whose commit was sent but not answered stays with this log, unused, until the log
    # ends and its leases return (gateway/liveness.py): too little delivered, never too much.
    deadline: float = 2.0
    month: date = field(default_factory=lambda: current_month())
    mine: dict[uuid.UUID, Tally] = field(default_factory=dict)
    others: dict[uuid.UUID, Tally] = field(default_factory=dict)
    leased: dict[uuid.UUID, Tally] = field(default_factory=dict)
    # What the other instances held leased when this one last leased: a refusal says so.
    elsewhere: dict[uuid.UUID, Tally] = field(default_factory=dict)
    # When (monotonic) each licence was last counted here: idle leases go back (LEASE_IDLE_SECONDS).
    drawn_at: dict[uuid.UUID, float] = field(default_factory=dict)
    _leasing: dict[uuid.UUID, asyncio.Lock] = field(default_factory=dict)

    def room(self, licence_id: uuid.UUID) -> Tally:
        """What this instance may still deliver under the hard quotas: its leases less its deliveries."""
        leased = self.leased.get(licence_id, Tally())
        own = self.mine.get(licence_id, Tally())
        return Tally(leased.records - own.records, leased.bytes - own.bytes)

    async def lease(self, pool: asyncpg.Pool, licence: Licence, records: int, byte_count: int) -> None:
        """Hold at least `records` and `byte_count` of unused hard quota if the month's grant allows,
        leasing at least one share at a time. Raises the database's errors: the caller refuses."""
        limits = _hard_limits(licence)
        if limits == (None, None):
            return
        async with self._leasing.setdefault(licence.id, asyncio.Lock()):
            self._roll_month()
            room = self.room(licence.id)
            asks = [0 if limit is None or room_now >= want else max(want - room_now, -(-limit // LEASE_SHARES))
                    for limit, room_now, want in zip(limits, (room.records, room.bytes), (records, byte_count))]
            if not any(asks):
                return
            month = self.month
            held, gives = await database.within(pool, self.deadline, self._take_lease, licence.id, month, asks,
                                                limits)
            if month != self.month:
                return  # the month turned while leasing: that lease belongs to the month just ended
            tally = self.leased.setdefault(licence.id, Tally())
            tally.records += gives[0]
            tally.bytes += gives[1]
            self.elsewhere[licence.id] = Tally(held[0] - (tally.records - gives[0]), held[1] - (tally.bytes - gives[1]))

    async def _take_lease(self, conn: asyncpg.Connection, licence_id: uuid.UUID, month: date, asks: list[int],
                          limits: tuple[int | None, int | None]) -> tuple[tuple[int, int], list[int]]:
        """In one transaction: what every log holds of the month's grant, and this log's lease grown by what
        is left of `asks` under `limits`. Returns (held before, given)."""
        async with conn.transaction():
            # A lease may come before the log's first event: it registers the log it belongs to.
            await conn.execute("INSERT INTO audit_logs (log_id, instance) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               self.log_id, self.instance)
            # A log that was ended (this process was taken for dead) can no longer lease.
            await conn.execute("SELECT audit_log_open($1)", self.log_id)
            await conn.execute("INSERT INTO quota_grants (licence_id, month) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               licence_id, month)
            await conn.execute("SELECT FROM quota_grants WHERE licence_id = $1 AND month = $2 FOR UPDATE",
                               licence_id, month)
            row = await conn.fetchrow(
                "SELECT coalesce(sum(records_leased), 0)::bigint, coalesce(sum(bytes_leased), 0)::bigint "
                "FROM quota_leases WHERE licence_id = $1 AND month = $2", licence_id, month)
            held = (row[0], row[1])
            gives = [0 if limit is None else max(0, min(ask, limit - already))
                     for limit, ask, already in zip(limits, asks, held, strict=True)]
            await conn.execute(
                "INSERT INTO quota_leases AS q (licence_id, month, log_id, records_leased, bytes_leased) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (licence_id, month, log_id) DO UPDATE SET "
                "records_leased = q.records_leased + EXCLUDED.records_leased, "
                "bytes_leased = q.bytes_leased + EXCLUDED.bytes_leased", licence_id, month, self.log_id, *gives)
        return held, gives

    async def give_back(self, pool: asyncpg.Pool, licence_ids: list[uuid.UUID] | None = None) -> None:
        """Return unused leases to the month's grant, so that other instances can use them.

        The room leaves this instance's book before the first await: a delivery deciding meanwhile
        cannot reserve what is on its way back. If the database does not take it, it stays leased
        there (and idle) until the log ends: too little delivered, never too much."""
        month = self.month
        returns = [(licence_id, max(room.records, 0), max(room.bytes, 0))
                   for licence_id in (licence_ids if licence_ids is not None else list(self.leased))
                   if (room := self.room(licence_id)).records > 0 or room.bytes > 0]
        if not returns:
            return
        for licence_id, records, byte_count in returns:
            self.leased[licence_id].records -= records
            self.leased[licence_id].bytes -= byte_count
        async with pool.acquire() as conn:
            await conn.executemany(
                "UPDATE quota_leases SET records_leased = greatest(records_leased - $4, 0), "
                "bytes_leased = greatest(bytes_leased - $5, 0) WHERE licence_id = $1 AND month = $2 AND log_id = $3",
                [(licence_id, month, self.log_id, records, byte_count) for licence_id, records, byte_count in returns])

    def used(self, licence_id: uuid.UUID) -> Tally:
        own = self.mine.get(licence_id, Tally())
        theirs = self.others.get(licence_id, Tally())
        return Tally(own.records + theirs.records, own.bytes + theirs.bytes)

    def count(self, licence_id: uuid.UUID, records: int, byte_count: int) -> None:
        """Count (or, with negative figures, give back) this instance's deliveries. Synchronous on
        purpose: a reservation made before the first await cannot be seen half-made by another request."""
        self._roll_month()
        tally = self.mine.setdefault(licence_id, Tally())
        tally.records += records
        tally.bytes += byte_count
        self.drawn_at[licence_id] = time.monotonic()

    def idle(self) -> list[uuid.UUID]:
        """Licences with leased room here that no delivery has drawn on for LEASE_IDLE_SECONDS."""
        since = time.monotonic() - LEASE_IDLE_SECONDS
        return [licence_id for licence_id in self.leased
                if self.drawn_at.get(licence_id, 0.0) < since and (room := self.room(licence_id)).records + room.bytes > 0]

    def _roll_month(self) -> None:
        month = current_month()
        if month != self.month:
            self.month, self.mine, self.others, self.leased, self.elsewhere = month, {}, {}, {}, {}

    async def sync(self, conn: asyncpg.Connection, licence_ids: list[uuid.UUID]) -> None:
        """Re-read the other writers' totals for the month."""
        self._roll_month()
        rows = await conn.fetch(
            "SELECT licence_id, sum(records)::bigint AS records, sum(bytes)::bigint AS bytes FROM usage_daily "
            "WHERE licence_id = ANY($1) AND day >= $2 AND day < $3 AND log_id <> $4 GROUP BY licence_id",
            licence_ids, self.month, next_month(self.month), self.log_id)
        self.others = {row["licence_id"]: Tally(row["records"], row["bytes"]) for row in rows}


@dataclass(frozen=True, slots=True)
class Allowance:
    """How much one delivery may carry under the licence's quotas, and what to tell the member."""

    records: int | None          # None: no hard records quota
    bytes: int | None            # None: no hard bytes quota
    headers: dict[str, str]
    warning: str | None = None   # a soft quota already passed
    exhausted: str | None = None  # a hard quota already reached: refuse


def allowance(licence: Licence, book: UsageBook, now: datetime) -> Allowance:
    used = book.used(licence.id)
    reset = int((datetime.combine(next_month(book.month), datetime.min.time(), JST) - now).total_seconds())
    headers: dict[str, str] = {}
    hard: dict[str, int | None] = {"records": None, "bytes": None}
    warnings = []
    exhausted = None
    retry = 0
    for unit, limit, is_hard, spent in (("records", licence.records_per_month, licence.records_quota_hard,
                                         used.records),
                                        ("bytes", licence.bytes_per_month, licence.bytes_quota_hard, used.bytes)):
        if limit is None:
            continue
        left = max(limit - spent, 0)
        headers[f"ratelimit-{unit}"] = f"limit={limit}, remaining={left}, reset={max(reset, 0)}"
        if is_hard:
            # What this instance may deliver is what it holds leased (see the module docstring).
            room = book.room(licence.id)
            hard[unit] = max(room.records if unit == "records" else room.bytes, 0)
            if hard[unit] == 0 and exhausted is None:
                elsewhere = book.elsewhere.get(licence.id, Tally())
                held = elsewhere.records if unit == "records" else elsewhere.bytes
                if spent < limit and held > 0:
                    exhausted = (f"{left} of the monthly {unit} quota of {limit} are held by deliveries in progress "
                                 f"for this licence; retry in {LEASE_RETRY_SECONDS} seconds")
                    retry = LEASE_RETRY_SECONDS
                else:
                    exhausted = f"monthly {unit} quota of {limit} reached; it resets at the start of next month (JST)"
                    retry = max(reset, 1)
        elif spent >= limit:
            warnings.append(f"monthly {unit} soft quota of {limit} exceeded ({spent} used)")
    if exhausted:
        headers["retry-after"] = str(retry)
    warning = "; ".join(warnings) or None
    if warning:
        headers["quota-warning"] = warning
    return Allowance(hard["records"], hard["bytes"], headers, warning, exhausted)


async def lease_and_decide(book: UsageBook, pool: asyncpg.Pool, licence: Licence, records: int,
                           byte_count: int) -> Allowance:
    """Lease what a delivery needs under the hard quotas, then decide from the book. A quota that cannot
    be checked (the lease failed) is not unlimited: the delivery is refused with 503."""
    try:
        await book.lease(pool, licence, records, byte_count)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, database.DatabaseUnavailable):
        raise ServiceUnavailable("the quota cannot be checked right now; nothing was delivered. Retry shortly.",
                                 headers={"retry-after": "2"}) from None
    return allowance(licence, book, times.now())


def current_month() -> date:
    """The first day of the current JST month, by the database's clock."""
    return month_start(jst_day(times.now()))


def _hard_limits(licence: Licence) -> tuple[int | None, int | None]:
    return (licence.records_per_month if licence.records_quota_hard else None,
            licence.bytes_per_month if licence.bytes_quota_hard else None)


class RateLimiter:
    """Per-credential token buckets (requests per second with a burst), per instance."""

    def __init__(self) -> None:
        self._buckets: dict[uuid.UUID, list[float]] = {}

    def take(self, credential_id: uuid.UUID, rate: float | None, burst: int | None) -> float:
        """0 when the request may go ahead; otherwise the seconds until a token is available."""
        if rate is None:
            return 0.0
        capacity = float(burst or max(1, int(rate)))
        now = time.monotonic()
        bucket = self._buckets.setdefault(credential_id, [capacity, now])
        bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate


class UsageSync:
    """Keeps a UsageBook current for every licence with a quota (a background task of a serving instance)."""

    def __init__(self, book: UsageBook, pool: asyncpg.Pool, licences: dict[uuid.UUID, Licence]) -> None:
        self.book, self.pool, self.licences = book, pool, licences
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sync_once()
        self._task = asyncio.create_task(self._run(), name="usage-sync")

    async def sync_once(self) -> None:
        ids = [lic.id for lic in self.licences.values()
               if lic.records_per_month is not None or lic.bytes_per_month is not None]
        async with self.pool.acquire() as conn:
            await self.book.sync(conn, ids)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync_once()
                idle = self.book.idle()
                if idle:
                    await self.book.give_back(self.pool, idle)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # Keep deciding from the last figures plus local counts; they only grow until the next sync.
                log.warning("usage sync failed: %s", exc)

    async def close(self) -> None:
        """Stop syncing; the leases go back when the log ends (gateway/liveness.py)."""
        await tasks.stop(self._task)


def _usage_query(by: str) -> str:
    period = "day" if by == "day" else "date_trunc('month', u.day)::date"
    return (
        f"SELECT {period} AS period, l.id AS licence_id, m.id AS member_id, m.name AS member, d.id AS dataset_id, "
        "d.name AS dataset, sum(u.requests)::bigint AS requests, sum(u.records)::bigint AS records, "
        "sum(u.bytes)::bigint AS bytes, bool_or(u.over_soft_quota) AS over_soft_quota "
        "FROM usage_daily u JOIN licences l ON l.id = u.licence_id JOIN members m ON m.id = l.member_id "
        "JOIN datasets d ON d.id = l.dataset_id WHERE ($1::uuid IS NULL OR l.vendor_id = $1) AND u.day >= $2 AND u.day < $3 "
        "AND ($4::uuid IS NULL OR l.member_id = $4) AND ($5::uuid IS NULL OR l.dataset_id = $5) "
        "AND ($6::uuid[] IS NULL OR l.id = ANY($6)) "
        "GROUP BY 1, l.id, m.id, d.id ORDER BY 1, m.name, d.name")


def _usage_row(row: asyncpg.Record) -> dict[str, Any]:
    return {"period": row["period"].isoformat(), "licence_id": str(row["licence_id"]),
            "member_id": str(row["member_id"]), "member": row["member"], "dataset_id": str(row["dataset_id"]),
            "dataset": row["dataset"], "requests": row["requests"], "records": row["records"],
            "bytes": row["bytes"], "over_soft_quota": row["over_soft_quota"]}


async def usage_report(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID | None, start: date,
                       end: date, *,
                       member_id: uuid.UUID | None = None, dataset_id: uuid.UUID | None = None,
                       licence_ids: list[uuid.UUID] | None = None, by: str = "month") -> list[dict[str, Any]]:
    """Usage by member, dataset and period (JST `day` or `month`) in [start, end): the admin report and the CLI's."""
    rows = await conn.fetch(_usage_query(by), vendor_id, start, end, member_id, dataset_id, licence_ids)
    return [_usage_row(row) for row in rows]


async def usage_report_rows(pool: asyncpg.Pool, vendor_id: uuid.UUID, start: date, end: date,
                            by: str = "day") -> AsyncIterator[dict[str, Any]]:
    """usage_report's rows for a vendor, read by a cursor: a download of a thousand members' days starts
    at once and is never held whole in memory."""
    async with pool.acquire() as conn, conn.transaction():
        async for row in conn.cursor(_usage_query(by), vendor_id, start, end, None, None, None, prefetch=1000):
            yield _usage_row(row)


# What the console ranks usage by: the licence's column and the table naming it. A member holds one
# licence per dataset, so a licence is a (member, dataset) pair.
_RANKED_BY = {"member": ("l.member_id", "members"), "dataset": ("l.dataset_id", "datasets")}


def _ranked_sql(by: str) -> str:
    """A CTE `ranked` of the vendor's ($1) $4 members or datasets that received the most records in
    [$2, $3), with `ranks`, how many received any."""
    key, _ = _RANKED_BY[by]
    return (f"WITH used AS (SELECT {key} AS id, sum(u.records)::bigint AS total FROM usage_daily u "
            "JOIN licences l ON l.id = u.licence_id WHERE l.vendor_id = $1 AND u.day >= $2 AND u.day < $3 GROUP BY 1), "
            "ranked AS (SELECT id, total, count(*) OVER () AS ranks FROM used ORDER BY total DESC, id LIMIT $4) ")


async def usage_leaders(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, start: date, end: date,
                        by: str, top: int) -> tuple[int, list[tuple[str, int]]]:
    """How many of the vendor's members or datasets (`by`) received records in [start, end), and the `top`
    of them with their records, largest first: summed by the database."""
    _, table = _RANKED_BY[by]
    rows = await conn.fetch(_ranked_sql(by) + f"SELECT t.name, r.total, r.ranks FROM ranked r JOIN {table} t "
                            "ON t.id = r.id ORDER BY r.total DESC, r.id", vendor_id, start, end, top)
    return (rows[0]["ranks"] if rows else 0), [(row["name"], row["total"]) for row in rows]


async def usage_series(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, start: date, end: date,
                       by: str, top: int) -> list[tuple[str, list[tuple[date, int]]]]:
    """Records per JST day in [start, end) of the vendor's `top` members or datasets (`by`) that received
    the most, largest first: summed by the database, so a vendor's thousand members cost `top` series."""
    key, table = _RANKED_BY[by]
    rows = await conn.fetch(
        _ranked_sql(by) + "SELECT r.id, t.name, u.day, sum(u.records)::bigint AS records FROM usage_daily u "
        f"JOIN licences l ON l.id = u.licence_id JOIN ranked r ON r.id = {key} JOIN {table} t ON t.id = r.id "
        "WHERE u.day >= $2 AND u.day < $3 GROUP BY r.id, r.total, t.name, u.day ORDER BY r.total DESC, r.id, u.day",
        vendor_id, start, end, top)
    series: dict[uuid.UUID, tuple[str, list[tuple[date, int]]]] = {}
    for row in rows:
        series.setdefault(row["id"], (row["name"], []))[1].append((row["day"], row["records"]))
    return list(series.values())


async def usage_by_licence(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, start: date, end: date,
                           top: int) -> tuple[int, list[asyncpg.Record]]:
    """How many of the vendor's licences were used in [start, end), and the `top` of them by records, with
    their member, dataset, requests, records and bytes."""
    rows = await conn.fetch(
        "WITH used AS (SELECT u.licence_id, sum(u.requests)::bigint AS requests, sum(u.records)::bigint AS records, "
        "sum(u.bytes)::bigint AS bytes FROM usage_daily u JOIN licences l ON l.id = u.licence_id "
        "WHERE l.vendor_id = $1 AND u.day >= $2 AND u.day < $3 GROUP BY 1), "
        "ranked AS (SELECT *, count(*) OVER () AS ranks FROM used ORDER BY records DESC, licence_id LIMIT $4) "
        "SELECT r.*, m.name AS member, d.name AS dataset FROM ranked r JOIN licences l ON l.id = r.licence_id "
        "JOIN members m ON m.id = l.member_id JOIN datasets d ON d.id = l.dataset_id "
        "ORDER BY r.records DESC, r.licence_id", vendor_id, start, end, top)
    return (rows[0]["ranks"] if rows else 0), rows


async def quota_use(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, month: date,
                    top: int) -> tuple[int, list[asyncpg.Record]]:
    """How many of the vendor's active licences have a monthly records quota, and the `top` of them by the
    share of it used in `month` (records, records_per_month, member, dataset)."""
    rows = await conn.fetch(
        "WITH used AS (SELECT l.id AS licence_id, l.records_per_month, l.member_id, l.dataset_id, "
        "coalesce(sum(u.records), 0)::bigint AS records FROM licences l LEFT JOIN usage_daily u "
        "ON u.licence_id = l.id AND u.day >= $2 AND u.day < $3 "
        "WHERE l.vendor_id = $1 AND l.status = 'active' AND l.records_per_month IS NOT NULL GROUP BY l.id), "
        "ranked AS (SELECT *, count(*) OVER () AS ranks FROM used "
        "ORDER BY records::float8 / records_per_month DESC, records DESC, licence_id LIMIT $4) "
        "SELECT r.*, m.name AS member, d.name AS dataset FROM ranked r JOIN members m ON m.id = r.member_id "
        "JOIN datasets d ON d.id = r.dataset_id "
        "ORDER BY r.records::float8 / r.records_per_month DESC, r.records DESC, r.licence_id",
        vendor_id, month, next_month(month), top)
    return (rows[0]["ranks"] if rows else 0), rows


def parse_period(start: str | None, end: str | None) -> tuple[date, date]:
    """A report's [from, to) in JST days; defaults to the current month. Raises ValueError with a hint.

    A lone bound takes the other's default unless that would leave the period empty; then the other is
    the bound's own month: `to=2000-01-01` alone is December 1999, `from=2027-03-10` alone runs to
    2027-04-01. So every date is a valid lone bound but the two no period can hold (0001-01-01 for `to`,
    9999-12-31 for `from`), as schemas/openapi.yaml says; only both bounds in the wrong order are refused.
    """
    today = jst_day(times.now())
    # Only an absent bound takes the default: `to=` (empty) is a malformed date, not "the default".
    first = date.fromisoformat(start) if start is not None else None
    last = date.fromisoformat(end) if end is not None else None
    if first is None:
        first = month_start(today)
        if last is not None and last <= first:
            if last == date.min:
                raise ValueError("'to' must be after 0001-01-01, the first day a date can name")
            first = month_start(last - timedelta(days=1))
    if last is None:
        last = next_month(today)
        if last <= first:
            if first == date.max:
                raise ValueError("'from' must be before 9999-12-31, the last day a date can name")
            # December 9999 has no next month a date can name: its period ends on its last day.
            last = next_month(first) if (first.year, first.month) < (9999, 12) else date.max
    if last <= first:
        raise ValueError("'to' must be after 'from'")
    return first, last


def quota_status(licence: Licence, book: UsageBook) -> dict[str, Any]:
    """The licence's quotas and what is left of them this month, as the member sees it."""
    used = book.used(licence.id)
    return {"period": book.month.isoformat()[:7], "records_used": used.records, "bytes_used": used.bytes,
            "records_per_month": licence.records_per_month, "records_quota_hard": licence.records_quota_hard,
            "records_left": None if licence.records_per_month is None else max(0, licence.records_per_month - used.records),
            "bytes_per_month": licence.bytes_per_month, "bytes_quota_hard": licence.bytes_quota_hard,
            "bytes_left": None if licence.bytes_per_month is None else max(0, licence.bytes_per_month - used.bytes),
            "requests_per_second": licence.requests_per_second, "burst": licence.burst}
