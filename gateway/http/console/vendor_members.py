"""The vendor's members: create, suspend, resume or revoke one, and its API keys and OAuth clients.

A new key's token and a new client's secret are on the answer to the form that made them, once: the
page is 200 (not a redirect that could be reloaded) and no-store, and no page shows them again."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import (
    access_tokens,
    console_users,
    credentials,
    datasets,
    licences,
    members,
    oauth,
    oauth_clients,
)
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.errors import InvalidInput
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
    vendor_id,
)
from gateway.http.console.web import NOT_FOUND, PageError, acting, changed, page, render, see_other
from gateway.http.endpoints import runtime_of
from gateway.members import Member

STATUS_ACTIONS = {"suspend": EventKind.MEMBER_SUSPEND, "resume": EventKind.MEMBER_RESUME,
                  "revoke": EventKind.MEMBER_REVOKE}


async def _list(request: Request, session: Session, *, status: int = 200, message: tuple[str, str] | None = None,
                typed: str = "") -> Response:
    found = await members.page_for_vendor(runtime_of(request).pool, vendor_id(session), after(request), PAGE_SIZE)
    return render(request, "vendor_members.html", session=session, status=status, members=found,
                  next_after=found[-1].id if len(found) == PAGE_SIZE else None,
                  may_change=may_change(session), message=message, typed=typed)


@page(*READERS)
async def list_members(request: Request, session: Session) -> Response:
    return await _list(request, session)


@page(*ADMIN)
async def create_member(request: Request, session: Session) -> Response:
    acting(request, EventKind.MEMBER_CREATE)
    name = text(request, "name")
    try:
        members.check_name(name)
    except InvalidInput as exc:
        return await _list(request, session, status=400, typed=name, message=refused(request, "会員名が正しくありません。", exc.detail))
    member = await members.create(runtime_of(request).writer, actor(request, session), vendor_id(session), name)
    changed(request)
    return see_other(f"/console/vendor/members/{member.id}")


async def _member(request: Request, session: Session) -> Member:
    return await members.get(runtime_of(request).pool, vendor_id(session), path_uuid(request, "member_id"))


async def _detail(request: Request, session: Session, member: Member, *, status: int = 200,
                  message: tuple[str, str] | None = None, secret: dict[str, str] | None = None) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    held = await licences.list_for_vendor(pool, vendor, member.id)
    names = {d.id: d.name for d in await datasets.list_for_vendor(pool, vendor)} if held else {}
    return render(request, "vendor_member.html", session=session, status=status, member=member, licences=held,
                  dataset_names=names, keys=await credentials.list_for_vendor(pool, vendor, member.id),
                  clients=await oauth_clients.list_for_vendor(pool, vendor, member.id),
                  users=await console_users.list_for_vendor(pool, vendor, member.id),
                  may_change=may_change(session), message=message, secret=secret)


@page(*READERS)
async def show_member(request: Request, session: Session) -> Response:
    return await _detail(request, session, await _member(request, session))


async def _reshow(request: Request, session: Session, message: tuple[str, str]) -> Response:
    return await _detail(request, session, await _member(request, session), status=400, message=message)


@page(*ADMIN)
async def issue_key(request: Request, session: Session) -> Response:
    acting(request, EventKind.KEY_ISSUE)
    runtime = runtime_of(request)
    member = await _member(request, session)
    label = text(request, "label").strip()
    try:
        kind = credentials.issuable("member", True, label)
    except InvalidInput as exc:
        return await _detail(request, session, member, status=400, message=refused(request, "キーの名前が正しくありません。", exc.detail))
    credential, token = await credentials.issue(runtime.writer, actor(request, session), runtime.hasher(), kind,
                                                vendor_id(session), member.id, label=label)
    changed(request)
    return await _detail(request, session, member, secret={"kind": "key", "id": credential.key_id, "secret": token})


@page(*ADMIN)
async def revoke_key(request: Request, session: Session) -> Response:
    acting(request, EventKind.KEY_REVOKE)
    runtime = runtime_of(request)
    member, credential_id = await _member(request, session), path_uuid(request, "credential_id")
    # Only a key of this member, from this member's page: another's is missing here, like one that is not.
    if credential_id not in {c.id for c in await credentials.list_for_vendor(runtime.pool, member.vendor_id, member.id)}:
        raise PageError(404, *NOT_FOUND)
    await credentials.revoke(runtime.writer, actor(request, session), vendor_id(session), credential_id)
    changed(request)
    return see_other(f"/console/vendor/members/{member.id}")


@page(*ADMIN)
async def create_client(request: Request, session: Session) -> Response:
    acting(request, EventKind.OAUTH_CLIENT_CREATE)
    runtime = runtime_of(request)
    member = await _member(request, session)
    label = text(request, "label").strip()
    if len(label) > credentials.LABEL_MAX:
        return await _detail(request, session, member, status=400,
                             message=refused(request, "名前は200文字までです。", "A label is at most 200 characters."))
    client, secret = await oauth_clients.create(runtime.writer, actor(request, session), runtime.hasher(),
                                                vendor_id(session), member.id, label=label)
    changed(request)
    return await _detail(request, session, member, secret={
        "kind": "oauth", "id": client.client_id, "secret": secret,
        "token_endpoint": access_tokens.issuer(runtime.config) + oauth.TOKEN_PATH})


@page(*ADMIN)
async def revoke_client(request: Request, session: Session) -> Response:
    acting(request, EventKind.OAUTH_CLIENT_REVOKE)
    runtime = runtime_of(request)
    member, client_id = await _member(request, session), path_uuid(request, "client_id")
    if client_id not in {c.id for c in await oauth_clients.list_for_vendor(runtime.pool, member.vendor_id, member.id)}:
        raise PageError(404, *NOT_FOUND)
    await oauth_clients.revoke(runtime.writer, actor(request, session), vendor_id(session), client_id)
    changed(request)
    return see_other(f"/console/vendor/members/{member.id}")


def member_choices(found: list[Member]) -> list[tuple[uuid.UUID, str]]:
    """Members a new licence or user may name: not revoked."""
    return [(m.id, m.name) for m in found if m.status != "revoked"]


routes = [
    Route("/console/vendor/members", list_members, methods=["GET"]),
    Route("/console/vendor/members", create_member, methods=["POST"]),
    Route("/console/vendor/members/{member_id}", show_member, methods=["GET"]),
    *(Route(f"/console/vendor/members/{{member_id}}/{action}", status_page("member", action, kind, members.set_status, _reshow),
            methods=["POST"])
      for action, kind in STATUS_ACTIONS.items()),
    Route("/console/vendor/members/{member_id}/keys", issue_key, methods=["POST"]),
    Route("/console/vendor/members/{member_id}/keys/{credential_id}/revoke", revoke_key, methods=["POST"]),
    Route("/console/vendor/members/{member_id}/oauth-clients", create_client, methods=["POST"]),
    Route("/console/vendor/members/{member_id}/oauth-clients/{client_id}/revoke", revoke_client, methods=["POST"]),
]
