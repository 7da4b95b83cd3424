"""The audit log of the signed-in person's vendor: a search by period (JST calendar days), member,
dataset, kind and outcome, newest first, 50 events a page by keyset (never OFFSET: the millionth
event's page costs what the first does), and an event's entry, its receipt and its coverage by a
signed checkpoint (the receipt is built as the member API's receipt route builds it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import times
from gateway.audit import checkpoints
from gateway.audit.events import NOT_ALLOWED_SQL, PER_REQUEST_KINDS, RARE_KIND_SQL, EventKind, Outcome
from gateway.console_users import Session
from gateway.errors import ServiceUnavailable
from gateway.http.console.web import NOT_FOUND, PageError, page, render
from gateway.http.endpoints import runtime_of

READERS = ("vendor-admin", "compliance")
PAGE_SIZE = 50
# A period's default: the last week, today included (JST).
DEFAULT_DAYS = 7


@dataclass(frozen=True, slots=True)
class Period:
    """Calendar days in Japan, both ends included, as people fill in a form: [first 00:00, last+1 00:00) JST."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, datetime.min.time(), times.JST)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), datetime.min.time(), times.JST)


def period(values: ImmutableMultiDict[str, Any] | Any, errors: list[tuple[str, str]]) -> Period:
    """The period `from`..`to` of a query or form (dates, JST), by default the last week; a wrong date is
    an error for the form, and the default stands in for it."""
    today = times.jst_day(times.now())
    first, last = today - timedelta(days=DEFAULT_DAYS - 1), today
    for name in ("from", "to"):
        text = str(values.get(name) or "").strip()
        if not text:
            continue
        try:
            day = date.fromisoformat(text)
        except ValueError:
            errors.append(("日付は 2026-04-01 の形で入力してください。", f"{name}: a date such as 2026-04-01"))
            continue
        if name == "from":
            first = day
        else:
            last = day
    if last < first:
        errors.append(("終了日は開始日以降にしてください。", "The last day must not be before the first."))
        last = first
    return Period(first, last)


def optional_id(values: Any, name: str, errors: list[tuple[str, str]]) -> uuid.UUID | None:
    text = str(values.get(name) or "").strip()
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        errors.append(("ID の形式が正しくありません。", f"{name} must be an id"))
        return None


def encode_after(at: datetime, event_id: uuid.UUID) -> str:
    return f"{at.isoformat()}~{event_id}"


def decode_after(text: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The keyset position a "next" link carries; a damaged one starts from the newest (no 500)."""
    if not text:
        return None
    at, _, event_id = text.partition("~")
    try:
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            return None
        return moment, uuid.UUID(event_id)
    except ValueError:
        return None


async def search_events(pool: Any, vendor_id: uuid.UUID, start: datetime | None, end: datetime | None, *,
                        member_id: uuid.UUID | None = None, dataset_id: uuid.UUID | None = None,
                        kinds: tuple[str, ...] = (), outcome: str | None = None,
                        after: tuple[datetime, uuid.UUID] | None = None,
                        limit: int = PAGE_SIZE) -> tuple[list[Any], tuple[datetime, uuid.UUID] | None]:
    """A page of the vendor's events in [start, end) (None: unbounded), newest first, and the position of
    the next page."""
    sql, args = search_query(vendor_id, start, end, member_id=member_id, dataset_id=dataset_id, kinds=kinds,
                             outcome=outcome, after=after, limit=limit)
    async with pool.acquire() as conn, conn.transaction():
        # A plan for these very values: from a statement's sixth run PostgreSQL may switch to a generic
        # plan, which for a member's events sorted all of them (288 ms) instead of walking the index.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = await conn.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["at"], rows[-1]["event_id"]) if more else None


def search_query(vendor_id: uuid.UUID, start: datetime | None, end: datetime | None, *,
                 member_id: uuid.UUID | None, dataset_id: uuid.UUID | None, kinds: tuple[str, ...],
                 outcome: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int) -> tuple[str, list[Any]]:
    """The SQL of a search page and its arguments.

    Only the conditions asked for are in the SQL (no `$n IS NULL OR ...`), so that each shape gets the
    plan of its own indexes: audit_events_vendor_at, audit_events_member_at for a member, and for a kind
    or an outcome that few events have the partial indexes of schemas/migrations/0020_audit_search.sql,
    whose predicates the query then states."""
    where, args = ["vendor_id = $1"], [vendor_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if start is not None:
        where.append(f"at >= {arg(start)}")
    if end is not None:
        where.append(f"at < {arg(end)}")

    if member_id is not None:
        where.append(f"member_id = {arg(member_id)}")
    if dataset_id is not None:
        where.append(f"dataset_id = {arg(dataset_id)}")
    if len(kinds) == 1:
        # Equality, not ANY: an index scan on (vendor_id, kind, at) then yields rows in time order.
        where.append(f"kind = {arg(kinds[0])}")
    elif kinds:
        where.append(f"kind = ANY({arg(list(kinds))}::text[])")
    if kinds and not set(kinds) & set(PER_REQUEST_KINDS):
        where.append(RARE_KIND_SQL)
    if outcome is not None:
        where.append(f"outcome = {arg(outcome)}")
        if outcome != Outcome.ALLOW:
            where.append(NOT_ALLOWED_SQL)
    if after is not None:
        where.append(f"(at, event_id) < ({arg(after[0])}, {arg(after[1])})")
    sql = ("SELECT at, event_id, kind, outcome, member_id, dataset_id, licence_id, log_id, seq FROM audit_events "
           f"WHERE {' AND '.join(where)} ORDER BY at DESC, event_id DESC LIMIT {limit + 1}")
    return sql, args


def names(request: Request, vendor_id: uuid.UUID) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str]]:
    """The vendor's members and datasets by id, from the snapshot: what the rows and filters show."""
    snapshot = runtime_of(request).snapshot
    members = {m.id: m.name for m in snapshot.members.values() if m.vendor_id == vendor_id}
    datasets = {d.id: d.name for d in snapshot.datasets.values() if d.vendor_id == vendor_id}
    return dict(sorted(members.items(), key=lambda kv: kv[1])), dict(sorted(datasets.items(), key=lambda kv: kv[1]))


KINDS = tuple(kind.value for kind in EventKind)
OUTCOMES = tuple(outcome.value for outcome in Outcome)


@page(*READERS)
async def search(request: Request, session: Session) -> Response:
    query = request.query_params
    errors: list[tuple[str, str]] = []
    chosen = period(query, errors)
    member_id, dataset_id = optional_id(query, "member", errors), optional_id(query, "dataset", errors)
    kind = query.get("kind") or None
    outcome = query.get("outcome") or None
    if kind is not None and kind not in KINDS:
        errors.append(("種別が正しくありません。", "There is no such kind."))
        kind = None
    if outcome is not None and outcome not in OUTCOMES:
        errors.append(("結果が正しくありません。", "There is no such outcome."))
        outcome = None
    vendor_id = session.user.vendor_id
    rows, following = await search_events(runtime_of(request).pool, vendor_id, chosen.start, chosen.end,
                                          member_id=member_id, dataset_id=dataset_id,
                                          kinds=() if kind is None else (kind,), outcome=outcome,
                                          after=decode_after(query.get("after")))
    members, datasets = names(request, vendor_id)
    kept = {"from": chosen.first.isoformat(), "to": chosen.last.isoformat(), "member": member_id or "",
            "dataset": dataset_id or "", "kind": kind or "", "outcome": outcome or ""}
    next_query = None if following is None else {**kept, "after": encode_after(*following)}
    return render(request, "audit_search.html", session=session, status=400 if errors else 200, errors=errors,
                  events=rows, filters=kept, members=members, datasets=datasets, kinds=KINDS, outcomes=OUTCOMES,
                  next_query=next_query, paged=query.get("after") is not None)


async def event_receipt(conn: Any, event_id: uuid.UUID, *, vendor_id: uuid.UUID | None = None,
                        member_id: uuid.UUID | None = None) -> dict[str, Any] | None:
    """The receipt of an event as the member API builds it, or None while no signed checkpoint covers it."""
    try:
        return await checkpoints.receipt(conn, event_id, vendor_id=vendor_id, member_id=member_id)
    except ServiceUnavailable:
        return None


def pretty(data: bytes | str | dict[str, Any]) -> str:
    value = orjson.loads(data) if isinstance(data, bytes | str) else data
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@page(*READERS)
async def event(request: Request, session: Session) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise PageError(404, *NOT_FOUND) from None
    vendor_id = session.user.vendor_id
    async with runtime_of(request).pool.acquire() as conn:
        row = await conn.fetchrow("SELECT at, event_id, kind, outcome, member_id, dataset_id, licence_id, log_id, "
                                  "seq, entry FROM audit_events WHERE event_id = $1 AND vendor_id = $2",
                                  event_id, vendor_id)
        if row is None:
            raise PageError(404, *NOT_FOUND)  # another vendor's event is as missing as no event
        receipt = await event_receipt(conn, event_id, vendor_id=vendor_id)
    members, datasets = names(request, vendor_id)
    return render(request, "audit_event.html", session=session, event=row, entry=pretty(bytes(row["entry"])),
                  receipt=None if receipt is None else pretty(receipt), checkpoint=None if receipt is None else
                  receipt["checkpoint"], members=members, datasets=datasets)


routes = [Route("/console/audit/", search, methods=["GET"]),
          Route("/console/audit/events/{event_id}", event, methods=["GET"])]
