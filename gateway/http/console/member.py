"""The member screens of the console: a member's own licences and their terms (which its people read and
accept, as the member API's accept route does, with the person as the actor), its usage against its
quotas, its deliveries with their receipts, and its keys and OAuth clients (never a secret).

Every object is looked up by id and then checked to be the signed-in person's member's: another
member's licence or event is the 404 page, as a missing one is."""

from __future__ import annotations

import uuid

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import credentials, delivery, licences, metering, oauth_clients
from gateway.audit import report
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.errors import InvalidInput
from gateway.http.console.audit import decode_after, encode_after, event_receipt, names, pretty, search_events
from gateway.http.console.web import NOT_FOUND, PageError, acting, changed, language, page, render, see_other
from gateway.http.context import context
from gateway.http.endpoints import runtime_of
from gateway.licences import Licence

MEMBER = "member"
# A row per delivery request (a page, an export, a Delta Sharing file); a stream's progress and end
# events are part of the same delivery, shown in its entry's receipt chain, not rows of their own.
DELIVERY_KINDS = tuple(sorted(report.DELIVERY_REQUESTS))


def _member_id(session: Session) -> uuid.UUID:
    if session.user.member_id is None:
        raise PageError(404, *NOT_FOUND)
    return session.user.member_id


async def _own_licence(request: Request, session: Session) -> Licence:
    try:
        licence_id = uuid.UUID(request.path_params["licence_id"])
    except ValueError:
        raise PageError(404, *NOT_FOUND) from None
    found = await licences.load(runtime_of(request).pool, [licence_id])
    if not found or found[0].member_id != _member_id(session) or found[0].vendor_id != session.user.vendor_id:
        raise PageError(404, *NOT_FOUND)  # another member's licence is as missing as none
    return found[0]


def _own_licences(request: Request, session: Session) -> list[Licence]:
    return runtime_of(request).snapshot.licences_of(_member_id(session))


@page(MEMBER)
async def home(request: Request, session: Session) -> Response:
    _, datasets = names(request, session.user.vendor_id)
    return render(request, "member_licences.html", session=session, licences=_own_licences(request, session),
                  datasets=datasets)


@page(MEMBER)
async def licence(request: Request, session: Session) -> Response:
    own = await _own_licence(request, session)
    terms = await licences.current_terms(runtime_of(request).pool, own)
    _, datasets = names(request, session.user.vendor_id)
    return render(request, "member_licence.html", session=session, licence=own, terms=terms, datasets=datasets)


@page(MEMBER)
async def accept(request: Request, session: Session) -> Response:
    acting(request, EventKind.TERMS_ACCEPT)
    own = await _own_licence(request, session)
    ctx = context(request.scope)
    delivery.note_subject(ctx.facts, own)
    form = request.state.form
    try:
        version = int(str(form.get("version", "")))
    except ValueError:
        raise InvalidInput("version must be the terms version shown", field="version") from None
    digest = str(form.get("sha256", ""))
    ctx.facts.note(terms_version_named=version, terms_sha256_named=digest.lower())
    # The person accepts what the page showed them: its version and digest, checked against the current terms.
    await licences.accept_terms(runtime_of(request).writer, ctx.actor, own, version, digest)
    changed(request)
    return see_other(f"/console/member/licences/{own.id}")


@page(MEMBER)
async def usage(request: Request, session: Session) -> Response:
    runtime = runtime_of(request)
    _, datasets = names(request, session.user.vendor_id)
    rows = [(lic, metering.quota_status(lic, runtime.usage)) for lic in _own_licences(request, session)]
    english = language(request) == "en"
    bars = [(str(datasets.get(lic.dataset_id, lic.dataset_id)), status["records_used"]) for lic, status in rows]
    chart = report.bar_chart(bars, label="records delivered this month, by licence" if english else
                             "今月の配信レコード数 (ライセンス別)") if bars else ""
    quotas = [(str(datasets.get(lic.dataset_id, lic.dataset_id)), status["records_per_month"])
              for lic, status in rows if status["records_per_month"] is not None]
    quota_chart = report.bar_chart(quotas, label="monthly records quota, by licence" if english else
                                   "月間レコード上限 (ライセンス別)") if quotas else ""
    return render(request, "member_usage.html", session=session, rows=rows, datasets=datasets,
                  chart=Markup(chart), quota_chart=Markup(quota_chart))  # report.py escapes every text


@page(MEMBER)
async def deliveries(request: Request, session: Session) -> Response:
    member_id = _member_id(session)
    rows, following = await search_events(runtime_of(request).pool, session.user.vendor_id, None, None,
                                          member_id=member_id, kinds=DELIVERY_KINDS,
                                          after=decode_after(request.query_params.get("after")))
    _, datasets = names(request, session.user.vendor_id)
    return render(request, "member_deliveries.html", session=session, events=rows, datasets=datasets,
                  next_after=None if following is None else encode_after(*following),
                  paged=request.query_params.get("after") is not None)


@page(MEMBER)
async def delivery_event(request: Request, session: Session) -> Response:
    member_id = _member_id(session)
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise PageError(404, *NOT_FOUND) from None
    async with runtime_of(request).pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT at, event_id, kind, outcome, member_id, dataset_id, licence_id, log_id, seq, entry FROM audit_events "
            "WHERE event_id = $1 AND vendor_id = $2 AND member_id = $3 AND kind = ANY($4::text[])",
            event_id, session.user.vendor_id, member_id, list(DELIVERY_KINDS))
        if row is None:
            raise PageError(404, *NOT_FOUND)
        receipt = await event_receipt(conn, event_id, member_id=member_id)
    _, datasets = names(request, session.user.vendor_id)
    return render(request, "member_delivery.html", session=session, event=row, entry=pretty(bytes(row["entry"])),
                  receipt=None if receipt is None else pretty(receipt),
                  checkpoint=None if receipt is None else receipt["checkpoint"], datasets=datasets)


@page(MEMBER)
async def keys(request: Request, session: Session) -> Response:
    pool, member_id = runtime_of(request).pool, _member_id(session)
    own_keys = await credentials.list_for_vendor(pool, session.user.vendor_id, member_id)
    clients = await oauth_clients.list_for_vendor(pool, session.user.vendor_id, member_id)
    return render(request, "member_keys.html", session=session, keys=own_keys, clients=clients)


routes = [Route("/console/member/", home, methods=["GET"]),
          Route("/console/member/licences/{licence_id}", licence, methods=["GET"]),
          Route("/console/member/licences/{licence_id}/accept", accept, methods=["POST"]),
          Route("/console/member/usage", usage, methods=["GET"]),
          Route("/console/member/deliveries", deliveries, methods=["GET"]),
          Route("/console/member/deliveries/{event_id}", delivery_event, methods=["GET"]),
          Route("/console/member/keys", keys, methods=["GET"])]
