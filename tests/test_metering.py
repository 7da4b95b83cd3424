"""Report periods (metering.parse_period), the rule /v1/usage, /v1/admin/usage and `gateway usage report`
share: every date the OpenAPI document admits as a lone bound gives a period."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway import metering, times

# 2026-04-15 in JST.
NOW = datetime(2026, 4, 15, 3, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(times, "now", lambda: NOW)


@pytest.mark.parametrize(("start", "end", "period"), [
    (None, None, (date(2026, 4, 1), date(2026, 5, 1))),
    ("2026-01-10", None, (date(2026, 1, 10), date(2026, 5, 1))),
    (None, "2026-04-20", (date(2026, 4, 1), date(2026, 4, 20))),
    (None, "2026-09-01", (date(2026, 4, 1), date(2026, 9, 1))),
    # A lone bound whose partner's default would leave nothing: the bound's own month.
    (None, "2000-01-01", (date(1999, 12, 1), date(2000, 1, 1))),
    (None, "2026-04-01", (date(2026, 3, 1), date(2026, 4, 1))),
    (None, "0001-01-02", (date(1, 1, 1), date(1, 1, 2))),
    ("2027-03-10", None, (date(2027, 3, 10), date(2027, 4, 1))),
    ("2026-05-01", None, (date(2026, 5, 1), date(2026, 6, 1))),
    ("9999-12-30", None, (date(9999, 12, 30), date(9999, 12, 31))),
    ("2000-01-01", "2000-01-02", (date(2000, 1, 1), date(2000, 1, 2))),
])
def test_a_period_from_its_bounds_and_defaults(start: str | None, end: str | None,
                                                period: tuple[date, date]) -> None:
    assert metering.parse_period(start, end) == period


@pytest.mark.parametrize(("start", "end", "message"), [
    ("2026-04-02", "2026-04-02", "'to' must be after 'from'"),
    ("2026-04-02", "2000-01-01", "'to' must be after 'from'"),
    # The two dates no period can hold; the OpenAPI document excludes them as lone bounds.
    (None, "0001-01-01", "'to' must be after 0001-01-01"),
    ("9999-12-31", None, "'from' must be before 9999-12-31"),
    ("", None, "Invalid isoformat"),
])
def test_a_period_that_cannot_be_is_refused_with_a_hint(start: str | None, end: str | None,
                                                          message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metering.parse_period(start, end)
