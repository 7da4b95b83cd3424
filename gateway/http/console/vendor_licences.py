"""The vendor's licences: grant, amend (scope, validity, quotas, new terms), suspend, resume, revoke and
terminate one; its terms versions and who accepted which.

The posted fields are read by the admin API's own field specs (admin_api.GRANT_FIELDS, AMEND_FIELDS,
TERMINATE_FIELDS), so a form accepts exactly what the API accepts."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import credentials, datasets, licences, members, terminations, times
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.datasets import Dataset
from gateway.errors import InvalidInput
from gateway.http.admin_api import AMEND_FIELDS, GRANT_FIELDS, TERMINATE_FIELDS
from gateway.http.console.vendor_common import (
    ADMIN,
    PAGE_SIZE,
    READERS,
    actor,
    after,
    may_change,
    path_uuid,
    refused,
    status_page,
    text,
    texts,
    typed,
    vendor_id,
)
from gateway.http.console.vendor_members import member_choices
from gateway.http.console.web import acting, changed, page, render, see_other
from gateway.http.endpoints import fields, runtime_of
from gateway.licences import Licence

QUOTAS = ("records_per_month", "bytes_per_month")
STATUS_ACTIONS = {"suspend": EventKind.LICENCE_SUSPEND, "resume": EventKind.LICENCE_RESUME,
                  "revoke": EventKind.LICENCE_REVOKE}


def _lf(terms: str) -> str:
    """Terms as typed, with the line ends a browser sends (CRLF) as the API's and the CLI's (LF): the text
    a member accepts by its digest is the same whichever way the vendor wrote it."""
    return terms.replace("\r\n", "\n")


def _refused(request: Request, exc: InvalidInput) -> tuple[str, str]:
    return refused(request, "入力内容を確かめてください。", exc.detail)


@page(*READERS)
async def list_licences(request: Request, session: Session) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    found = await licences.page_for_vendor(pool, vendor, after(request), PAGE_SIZE)
    held = await members.load(pool, list({lic.member_id for lic in found})) if found else []
    return render(request, "vendor_licences.html", session=session, licences=found,
                  next_after=found[-1].id if len(found) == PAGE_SIZE else None,
                  member_names={m.id: m.name for m in held},
                  dataset_names={d.id: d.name for d in await datasets.list_for_vendor(pool, vendor)},
                  may_change=may_change(session))


async def _grant_form(request: Request, session: Session, *, status: int = 200, message: tuple[str, str] | None = None,
                      given: dict[str, Any] | None = None) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    found = await datasets.list_for_vendor(pool, vendor)
    wanted = (given or {}).get("dataset_id") or request.query_params.get("dataset")
    dataset = next((d for d in found if str(d.id) == wanted), found[0] if found else None)
    return render(request, "vendor_licence_new.html", session=session, status=status, message=message,
                  members=member_choices(await members.list_for_vendor(pool, vendor)), datasets=found,
                  dataset=dataset, given=given or {}, every_partition=licences.EVERY_PARTITION)


@page(*ADMIN)
async def new_licence(request: Request, session: Session) -> Response:
    return await _grant_form(request, session)


def _scope(request: Request, dataset: Dataset | None) -> dict[str, Any]:
    """partitions and columns as checked; no column checked means every column of the dataset."""
    chosen = texts(request, "columns")
    if not chosen and dataset is not None:
        chosen = [c.name for c in dataset.columns]
    return {"partitions": texts(request, "partitions"), "columns": chosen}


@page(*ADMIN)
async def grant(request: Request, session: Session) -> Response:
    acting(request, EventKind.LICENCE_GRANT)
    runtime = runtime_of(request)
    given = {"member_id": text(request, "member_id"), "dataset_id": text(request, "dataset_id"),
             "terms_text": _lf(text(request, "terms")), "valid_until": text(request, "valid_until"),
             "records_per_month": text(request, "records_per_month").strip(),
             "bytes_per_month": text(request, "bytes_per_month").strip()}
    dataset = next((d for d in await datasets.list_for_vendor(runtime.pool, vendor_id(session))
                    if str(d.id) == given["dataset_id"]), None)
    scope = _scope(request, dataset)
    try:
        body = fields({**typed(given), **scope}, GRANT_FIELDS)
        member_id, dataset_id, terms = body.pop("member_id"), body.pop("dataset_id"), body.pop("terms_text")
        licence = await licences.grant(runtime.writer, actor(request, session), vendor_id(session), member_id,
                                       dataset_id, terms, body)
    except InvalidInput as exc:
        return await _grant_form(request, session, status=400, message=_refused(request, exc),
                                 given={**given, **scope, "columns": texts(request, "columns")})
    changed(request)
    return see_other(f"/console/vendor/licences/{licence.id}")


async def _detail(request: Request, session: Session, licence: Licence, *, status: int = 200,
                  message: tuple[str, str] | None = None) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    history = await licences.terms_history(pool, vendor, licence.id)
    accepted_by = [uuid.UUID(i["accepted_by_credential_id"]) for i in history["items"] if i["accepted_by_credential_id"]]
    labels = {str(c.id): c.label or c.key_id for c in await credentials.load(pool, accepted_by)} if accepted_by else {}
    member = await members.get(pool, vendor, licence.member_id)
    dataset = await datasets.get(pool, vendor, licence.dataset_id)
    return render(request, "vendor_licence.html", session=session, status=status, licence=licence, member=member,
                  dataset=dataset, terms=history["items"], labels=labels, message=message,
                  may_change=may_change(session), grounds=terminations.GROUNDS,
                  every_partition=licences.EVERY_PARTITION, valid_until_day=_day(licence))


def _day(licence: Licence) -> str:
    """The JST day of the licence's end, as a date input shows it ('' for none)."""
    return "" if licence.valid_until is None else times.jst_day(licence.valid_until).isoformat()


@page(*READERS)
async def show_licence(request: Request, session: Session) -> Response:
    licence = await licences.get(runtime_of(request).pool, vendor_id(session), path_uuid(request, "licence_id"))
    return await _detail(request, session, licence)


@page(*ADMIN)
async def amend(request: Request, session: Session) -> Response:
    acting(request, EventKind.LICENCE_AMEND)
    runtime = runtime_of(request)
    licence = await licences.get(runtime.pool, vendor_id(session), path_uuid(request, "licence_id"))
    dataset = await datasets.get(runtime.pool, vendor_id(session), licence.dataset_id)
    current = await licences.current_terms(runtime.pool, licence)
    terms = _lf(text(request, "terms"))
    until = text(request, "valid_until")
    if until and until == _day(licence) and licence.valid_until is not None:
        until = licence.valid_until.isoformat()  # the day as shown, unchanged: the moment it stands for
    values: dict[str, Any] = {**_scope(request, dataset), "valid_until": until or None,
                              **{name: text(request, name).strip() or None for name in QUOTAS}}
    for name in QUOTAS:
        if values[name] is not None and values[name].isascii() and values[name].isdigit() and len(values[name]) < 19:
            values[name] = int(values[name])
    if terms != current["text"]:
        values["terms_text"] = terms
    try:
        body = fields(values, AMEND_FIELDS)
        new_terms = body.pop("terms_text", None)
        await licences.amend(runtime.writer, actor(request, session), vendor_id(session), licence.id, body, new_terms)
    except InvalidInput as exc:
        return await _detail(request, session, licence, status=400, message=_refused(request, exc))
    changed(request)
    return see_other(f"/console/vendor/licences/{licence.id}")


async def _reshow(request: Request, session: Session, message: tuple[str, str]) -> Response:
    licence = await licences.get(runtime_of(request).pool, vendor_id(session), path_uuid(request, "licence_id"))
    return await _detail(request, session, licence, status=400, message=message)


@page(*ADMIN)
async def terminate(request: Request, session: Session) -> Response:
    acting(request, EventKind.LICENCE_TERMINATE)
    runtime = runtime_of(request)
    licence = await licences.get(runtime.pool, vendor_id(session), path_uuid(request, "licence_id"))
    given = typed({"reason": text(request, "reason").strip(), "grounds": text(request, "grounds"),
                   "attestation_due": text(request, "attestation_due")})
    try:
        body = fields(given, TERMINATE_FIELDS)
        await terminations.terminate(runtime.writer, actor(request, session), vendor_id(session), licence.id,
                                     body["reason"], body.get("grounds", "other"),
                                     terminations.parse_due(body.get("attestation_due")))
    except InvalidInput as exc:
        return await _detail(request, session, licence, status=400, message=_refused(request, exc))
    changed(request)
    return see_other(f"/console/vendor/licences/{licence.id}")


routes = [
    Route("/console/vendor/licences", list_licences, methods=["GET"]),
    Route("/console/vendor/licences", grant, methods=["POST"]),
    Route("/console/vendor/licences/new", new_licence, methods=["GET"]),
    Route("/console/vendor/licences/{licence_id}", show_licence, methods=["GET"]),
    Route("/console/vendor/licences/{licence_id}/amend", amend, methods=["POST"]),
    *(Route(f"/console/vendor/licences/{{licence_id}}/{action}", status_page("licence", action, kind, licences.set_status, _reshow),
            methods=["POST"])
      for action, kind in STATUS_ACTIONS.items()),
    Route("/console/vendor/licences/{licence_id}/terminate", terminate, methods=["POST"]),
]
