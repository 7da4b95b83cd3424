"""The vendor screens of the console: the dashboard and usage here, datasets, members, licences and
console users in vendor_*.py. Vendor admins and compliance officers read every one (users: admins
only); only vendor admins see and send the forms that change anything.

Usage is read as the admin API's usage report reads it (metering.usage_report over usage_daily, which
the audit writer fills with its events), over the last 30 JST days; the charts are the evidence
report's own (gateway/audit/report.py)."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import datasets, licences, members, metering, times
from gateway.audit.usage import denials_by_reason
from gateway.console_users import Session
from gateway.http.console import vendor_datasets, vendor_licences, vendor_members, vendor_users
from gateway.http.console.vendor_common import DAYS, READERS, bar_chart, step_chart, vendor_id
from gateway.http.console.web import SECURITY_HEADERS, language, page, render
from gateway.http.endpoints import runtime_of

CSV_COLUMNS = ("day", "member_id", "member", "dataset_id", "dataset", "licence_id", "requests", "records", "bytes",
               "over_soft_quota")
# A spreadsheet runs a cell that starts with one of these as a formula: names are text, so they are
# written with a leading apostrophe (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


TOP = 20  # rows of each dashboard table
LATEST_DENIALS = 1000  # the refusals whose reasons the dashboard counts
CHARTED = 6  # series of each usage chart
USAGE_ROWS = 100  # rows of the usage table; the CSV holds them all


def _window() -> tuple[date, date]:
    """The last 30 JST days, today included: [start, end)."""
    today = times.jst_day(times.now())
    return today - timedelta(days=DAYS - 1), today + timedelta(days=1)


def _jst_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=times.JST)


@page(*READERS)
async def dashboard(request: Request, session: Session) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    start, end = _window()
    found = await datasets.list_for_vendor(pool, vendor)
    held = [(d.name, datasets.accumulation(d.versions)) for d in found]
    usage = await metering.usage_report(pool, vendor, start, end, by="month")
    per_member: dict[str, int] = defaultdict(int)
    for row in usage:
        per_member[row["member"]] += row["records"]
    month = times.month_start(end - timedelta(days=1))
    this_month = await metering.usage_report(pool, vendor, month, times.next_month(month), by="month")
    used = {uuid.UUID(row["licence_id"]): row for row in this_month}
    quota_rows = []
    held_licences = await licences.list_for_vendor(pool, vendor)
    member_names = {m.id: m.name for m in await members.list_for_vendor(pool, vendor)} if held_licences else {}
    dataset_names = {d.id: d.name for d in found}
    for licence in held_licences:
        row = used.get(licence.id)
        if licence.status != "active" or (row is None and licence.records_per_month is None):
            continue
        records = row["records"] if row else 0
        name = f"{member_names.get(licence.member_id, licence.member_id)} / {dataset_names.get(licence.dataset_id)}"
        quota_rows.append({"licence": licence, "name": name, "records": records,
                           "percent": None if not licence.records_per_month else
                           round(100 * records / licence.records_per_month)})
    denial_total, denials = await denials_by_reason(pool, vendor, _jst_midnight(start), latest=LATEST_DENIALS)
    # The largest first, TOP of each: a vendor's thousand members are the usage screen's and the CSV's.
    quota_rows.sort(key=lambda q: (-(q["percent"] or 0), -q["records"]))
    ranked = sorted(per_member.items(), key=lambda kv: -kv[1])
    lang = language(request)
    en = lang == "en"
    return render(
        request, "vendor_dashboard.html", session=session, start=start, end=end - timedelta(days=1), month=month,
        held=held, per_member=ranked[:TOP], members_delivered=len(ranked), quota_rows=quota_rows[:TOP],
        quotas_shown=len(quota_rows), denials=denials, denial_total=denial_total, latest_denials=LATEST_DENIALS,
        accumulation_chart=bar_chart([(n, a["records"]) for n, a in held],
                                     "records per dataset" if en else "データセットごとのレコード数"),
        delivery_chart=bar_chart(ranked[:TOP],
                                 "records delivered per member, last 30 days" if en else "会員ごとの配信レコード数(30日間)"),
        denial_chart=bar_chart(denials, "denials by reason, last 30 days" if en else "理由ごとの拒否件数(30日間)"))


async def _daily(request: Request, session: Session) -> tuple[date, date, list[dict[str, Any]]]:
    start, end = _window()
    rows = await metering.usage_report(runtime_of(request).pool, vendor_id(session), start, end, by="day")
    return start, end, rows


def _cumulative(series: list[tuple[str, list[tuple[date, int]]]]) -> list[tuple[str, list[tuple[str, int]]]]:
    """Records summed day by day: step_chart's series."""
    charted = []
    for name, days in series:
        total, points = 0, []
        for day, records in days:
            total += records
            points.append((f"{day.isoformat()}T00:00:00+09:00", total))
        charted.append((name, points))
    return charted


@page(*READERS)
async def usage(request: Request, session: Session) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    start, end = _window()
    en = language(request) == "en"
    first, last = f"{start.isoformat()}T00:00:00+09:00", f"{end.isoformat()}T00:00:00+09:00"
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"requests": 0, "records": 0, "bytes": 0})
    for row in await metering.usage_report(pool, vendor, start, end, by="month"):
        total = totals[(row["member"], row["dataset"])]
        for name in ("requests", "records", "bytes"):
            total[name] += row[name]
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1]["records"], kv[0]))
    by_member = await metering.usage_series(pool, vendor, start, end, "member", CHARTED)
    by_dataset = await metering.usage_series(pool, vendor, start, end, "dataset", CHARTED)
    return render(
        request, "vendor_usage.html", session=session, start=start, end=end - timedelta(days=1),
        totals=ranked[:USAGE_ROWS], total_rows=len(ranked),
        member_chart=step_chart(_cumulative(by_member), first, last,
                                "cumulative records per member, last 30 days" if en else "会員ごとの累積配信レコード数(30日間)"),
        dataset_chart=step_chart(_cumulative(by_dataset), first, last,
                                 "cumulative records per dataset, last 30 days" if en
                                 else "データセットごとの累積配信レコード数(30日間)"))


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


@page(*READERS)
async def usage_csv(request: Request, session: Session) -> Response:
    """The usage page's rows, a row per licence and JST day: UTF-8 with a byte order mark and CRLF line
    ends, which Japanese Excel opens as UTF-8 (without the mark it reads Shift_JIS and garbles names)."""
    start, end, rows = await _daily(request, session)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row["period"] if name == "day" else row[name]) for name in CSV_COLUMNS])
    name = f"usage-{start.isoformat()}-{(end - timedelta(days=1)).isoformat()}.csv"
    return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'})


routes: list[Route] = [
    Route("/console/vendor/", dashboard, methods=["GET"]),
    Route("/console/vendor/usage", usage, methods=["GET"]),
    Route("/console/vendor/usage.csv", usage_csv, methods=["GET"]),
    *vendor_datasets.routes, *vendor_members.routes, *vendor_licences.routes, *vendor_users.routes,
]
