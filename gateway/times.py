"""Time as the gateway reads and counts it: Japan Standard Time for billing, one parser for every input.

Billing periods are JST days and months (the vendors and members are in Japan). Date-times arrive
from the API, the CLI and Delta Sharing queries; `parse_moment` reads all of them, and each caller
says what a date-time without an offset means there (refused, or a zone to assume).

One clock for every instance: the database's. Each process measures how far its own clock is from
PostgreSQL's when it starts and at every heartbeat (gateway/liveness.py), and `now()` is its own
clock corrected by that offset. So quota months, licence validity, token lifetimes and event times
agree across instances even when one machine's clock is days off (an instance 31 days ahead would
otherwise take next month's quota early).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

JST = timezone(timedelta(hours=9), "JST")

# The database's clock less this process's, as last measured (zero until the first measurement).
_offset = timedelta(0)


def now() -> datetime:
    """The current time in UTC by the database's clock."""
    return datetime.now(UTC) + _offset


def timestamp() -> float:
    """`now()` as POSIX seconds (for JWTs and signed URLs)."""
    return time.time() + _offset.total_seconds()


def observe_database_clock(database_now: datetime, asked_at: float, answered_at: float) -> None:
    """Take the database's time, read by a query sent at `asked_at` and answered at `answered_at`
    (this process's POSIX seconds), as the clock: the middle of the round trip is when it was read."""
    global _offset
    _offset = timedelta(seconds=database_now.timestamp() - (asked_at + answered_at) / 2)


def offset_seconds() -> float:
    """How far this process's clock is behind the database's (negative: ahead)."""
    return _offset.total_seconds()


def jst_text(moment: datetime) -> str:
    """A moment as shown to people: Japan Standard Time, to the second."""
    return moment.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S JST")


def jst_day(moment: datetime) -> date:
    return moment.astimezone(JST).date()


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A date-time whose offset's "+" arrived as a space (an unencoded "+" in a query string).
_PLUS_AS_SPACE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)? \d{2}:?\d{2}")


class MomentError(ValueError):
    """A date-time input that cannot be used; the message says what was expected."""


def parse_moment(text: str, *, assume: tzinfo | None = None, days_in: tzinfo | None = JST,
                 example: str = "2026-04-01 or 2026-04-01T00:00:00+09:00") -> datetime:
    """An RFC 3339 date-time, or a date meaning its midnight, with a UTC equivalent.

    A date alone is a calendar day in `days_in` (Japan, unless a protocol says otherwise); a date-time
    without an offset is in `assume`, or refused when `assume` is None. `example` is quoted in the error
    messages, for callers whose inputs have a form of their own."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if _PLUS_AS_SPACE.fullmatch(text):
            raise MomentError("has a space where its offset's '+' belongs: in a URL query a '+' means a space, "
                              "so send it as %2B (e.g. from=2026-04-01T00:00:00%2B09:00)") from None
        raise MomentError(f"must be an RFC 3339 date-time such as {example}") from None
    if moment.tzinfo is None:
        if _DATE.fullmatch(text) and days_in is not None:
            assume = days_in
        if assume is None:
            raise MomentError(f"needs a time zone, e.g. {example}")
        moment = moment.replace(tzinfo=assume)
    try:
        moment.astimezone(UTC)  # 0001-01-01T00:00+05:00 has no UTC time: no database stores it
    except OverflowError:
        raise MomentError("must lie between the years 1 and 9999 in UTC") from None
    return moment
