"""The usage rows the audit writer commits with its events: the bill is written with the evidence.

Each group of events adds its deliveries to `usage_daily` (per licence, per JST day, per writer) in
the group's own transaction, so usage never counts a delivery the log does not prove, and the log
never holds a delivery the bill missed. gateway/metering.py reads these rows for quotas and reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from gateway.audit.events import NOT_ALLOWED_SQL, AuditEvent, EventKind, Outcome
from gateway.times import jst_day

# Events that count as a member request, and those that carry delivered records and bytes.
REQUEST_KINDS = frozenset({EventKind.DATASET_READ, EventKind.RECORDS_DELIVER, EventKind.SHARING_TABLE_READ,
                           EventKind.SHARING_QUERY, EventKind.SHARING_FILE_DELIVER})
DELIVERY_KINDS = frozenset({EventKind.RECORDS_DELIVER, EventKind.RECORDS_STREAM_END, EventKind.RECORDS_STREAM_PROGRESS,
                            EventKind.SHARING_FILE_DELIVER, EventKind.SHARING_FILE_STREAM_END,
                            EventKind.SHARING_FILE_STREAM_PROGRESS})

# Adds a group's counts to usage_daily; parameters $1..$7 are the columns of usage_columns().
UPSERT_USAGE = (
    "INSERT INTO usage_daily AS u (licence_id, day, log_id, requests, records, bytes, over_soft_quota) "
    "SELECT * FROM unnest($1::uuid[], $2::date[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], "
    "$7::boolean[]) ON CONFLICT (licence_id, day, log_id) DO UPDATE SET "
    "requests = u.requests + EXCLUDED.requests, records = u.records + EXCLUDED.records, "
    "bytes = u.bytes + EXCLUDED.bytes, over_soft_quota = u.over_soft_quota OR EXCLUDED.over_soft_quota")


async def write_usage(conn: asyncpg.Connection, events: Sequence[AuditEvent], log_id: str) -> None:
    """Add a group's deliveries to usage_daily, inside the group's own transaction."""
    columns = usage_columns(events, log_id)
    if columns[0]:
        await conn.execute(UPSERT_USAGE, *columns)


def usage_columns(events: Sequence[AuditEvent], log_id: str) -> list[list[Any]]:
    """A group's requests, records and bytes per licence and JST day, as UPSERT_USAGE's columns."""
    totals: dict[tuple[uuid.UUID, date], list[Any]] = {}
    for event in events:
        if event.licence_id is None or event.outcome is not Outcome.ALLOW:
            continue
        counts_request = event.kind in REQUEST_KINDS
        delivered = event.kind in DELIVERY_KINDS and event.records is not None
        if not counts_request and not delivered:
            continue
        row = totals.setdefault((event.licence_id, jst_day(event.at)), [0, 0, 0, False])
        row[0] += counts_request
        if delivered:
            # A stream's progress and end events each say what it had sent so far: count the difference.
            row[1] += (event.records or 0) - event.metered_before[0]
            row[2] += (event.bytes or 0) - event.metered_before[1]
        row[3] = row[3] or bool(event.detail and event.detail.get("quota_warning"))
    keys = list(totals)
    return [[licence_id for licence_id, _ in keys], [day for _, day in keys], [log_id] * len(keys),
            *([row[i] for row in totals.values()] for i in range(4))]


async def denials_by_reason(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, since: datetime,
                            latest: int = 1000, limit: int = 20) -> tuple[int, list[tuple[str, int]]]:
    """The number of the vendor's refusals since `since`, and the `latest` of them counted by the reason
    their events give (as the evidence report counts them: the reason, else the kind), most frequent
    first. The count reads only the partial index of the outcomes other than allow
    (schemas/migrations/0020_audit_search.sql); the reasons are in each event's entry, so they are read
    from the latest refusals only (tens of thousands of entries would take a quarter of a second)."""
    total = await conn.fetchval(f"SELECT count(*) FROM audit_events WHERE vendor_id = $1 AND at >= $2 "
                                f"AND outcome = 'deny' AND {NOT_ALLOWED_SQL}", vendor_id, since)
    rows = await conn.fetch(
        "SELECT coalesce(convert_from(entry, 'UTF8')::jsonb ->> 'reason', kind) AS reason, count(*) AS n "
        f"FROM (SELECT entry, kind FROM audit_events WHERE vendor_id = $1 AND at >= $2 AND outcome = 'deny' "
        f"AND {NOT_ALLOWED_SQL} ORDER BY at DESC LIMIT $3) latest "
        "GROUP BY 1 ORDER BY n DESC, reason LIMIT $4", vendor_id, since, latest, limit)
    return total, [(row["reason"], row["n"]) for row in rows]
