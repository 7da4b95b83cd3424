"""The vendor screens of the console: the dashboard and usage here, datasets, members, licences and
console users in vendor_*.py. Vendor admins and compliance officers read every one (users: admins
only); only vendor admins see and send the forms that change anything.

Usage is read as the admin API's usage report reads it (metering.usage_report over usage_daily, which
the audit writer fills with its events), over the last 30 JST days; the charts are the evidence
report's own (gateway/audit/report.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import datasets, metering, times
from gateway.audit.events import Outcome
from gateway.audit.usage import denials_by_reason
from gateway.console_users import Session
from gateway.http.console import vendor_datasets, vendor_licences, vendor_members, vendor_users
from gateway.http.console.vendor_common import DAYS, READERS, bar_chart, step_chart, vendor_id
from gateway.http.console.web import SECURITY_HEADERS, language, page, render
from gateway.http.context import context
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
CSV_ROWS_PER_CHUNK = 500


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
    members_delivered, per_member = await metering.usage_leaders(pool, vendor, start, end, "member", TOP)
    month = times.month_start(end - timedelta(days=1))
    quotas_shown, quotas = await metering.quota_use(pool, vendor, month, TOP)
    quota_rows = [{"licence": {"id": q["licence_id"], "records_per_month": q["records_per_month"]},
                   "name": f"{q['member']} / {q['dataset']}", "records": q["records"],
                   "percent": round(100 * q["records"] / q["records_per_month"]) if q["records_per_month"] else None}
                  for q in quotas]
    denial_total, denials = await denials_by_reason(pool, vendor, _jst_midnight(start), latest=LATEST_DENIALS)
    lang = language(request)
    en = lang == "en"
    return render(
        request, "vendor_dashboard.html", session=session, start=start, end=end - timedelta(days=1), month=month,
        held=held, per_member=per_member, members_delivered=members_delivered, quota_rows=quota_rows,
        quotas_shown=quotas_shown, denials=denials, denial_total=denial_total, latest_denials=LATEST_DENIALS,
        accumulation_chart=bar_chart([(n, a["records"]) for n, a in held],
                                     "records per dataset" if en else "データセットごとのレコード数"),
        delivery_chart=bar_chart(per_member,
                                 "records delivered per member, last 30 days" if en else "会員ごとの配信レコード数(30日間)"),
        denial_chart=bar_chart(denials, "denials by reason, last 30 days" if en else "理由ごとの拒否件数(30日間)"))


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
    total_rows, totals = await metering.usage_by_licence(pool, vendor, start, end, USAGE_ROWS)
    by_member = await metering.usage_series(pool, vendor, start, end, "member", CHARTED)
    by_dataset = await metering.usage_series(pool, vendor, start, end, "dataset", CHARTED)
    return render(
        request, "vendor_usage.html", session=session, start=start, end=end - timedelta(days=1),
        totals=totals, total_rows=total_rows,
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
    start, end = _window()
    rows = metering.usage_report_rows(runtime_of(request).pool, vendor_id(session), start, end)

    async def lines() -> AsyncIterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")

        def taken() -> bytes:
            text = out.getvalue()
            out.seek(0)
            out.truncate()
            return text.encode()

        out.write("\ufeff")
        writer.writerow(CSV_COLUMNS)
        yield taken()  # at once: the download starts while the database sums the days
        written = 0
        async for row in rows:
            writer.writerow([_cell(row["period"] if name == "day" else row[name]) for name in CSV_COLUMNS])
            written += 1
            if written % CSV_ROWS_PER_CHUNK == 0:
                yield taken()
        yield taken()

    # The page read's event is durable before the first byte, as for every delivery.
    ctx = context(request.scope)
    await runtime_of(request).writer.commit(ctx.event(Outcome.ALLOW, 200))
    ctx.audited = True
    name = f"usage-{start.isoformat()}-{(end - timedelta(days=1)).isoformat()}.csv"
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{name}"'})


routes: list[Route] = [
    Route("/console/vendor/", dashboard, methods=["GET"]),
    Route("/console/vendor/usage", usage, methods=["GET"]),
    Route("/console/vendor/usage.csv", usage_csv, methods=["GET"]),
    *vendor_datasets.routes, *vendor_members.routes, *vendor_licences.routes, *vendor_users.routes,
]
