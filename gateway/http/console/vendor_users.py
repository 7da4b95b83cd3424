"""The vendor's console users (vendor admins only): create one, with its password shown once, and
suspend or resume one."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import console_users, members
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.errors import InvalidInput
from gateway.http.console.vendor_common import ADMIN, actor, path_uuid, refused, text, vendor_id
from gateway.http.console.vendor_members import member_choices
from gateway.http.console.web import acting, changed, page, render, see_other
from gateway.http.endpoints import runtime_of


async def _list(request: Request, session: Session, *, status: int = 200, message: tuple[str, str] | None = None,
                given: dict[str, str] | None = None, secret: dict[str, str] | None = None) -> Response:
    pool, vendor = runtime_of(request).pool, vendor_id(session)
    found = await console_users.list_for_vendor(pool, vendor)
    everyone = await members.list_for_vendor(pool, vendor)
    return render(request, "vendor_users.html", session=session, status=status, users=found,
                  member_names={m.id: m.name for m in everyone}, members=member_choices(everyone),
                  roles=console_users.ROLES, message=message, given=given or {}, secret=secret)


@page(*ADMIN)
async def list_users(request: Request, session: Session) -> Response:
    return await _list(request, session)


@page(*ADMIN)
async def create_user(request: Request, session: Session) -> Response:
    acting(request, EventKind.USER_CREATE)
    runtime = runtime_of(request)
    given = {"email": text(request, "email").strip(), "role": text(request, "role"),
             "member_id": text(request, "member_id"), "display_name": text(request, "display_name").strip()}
    try:
        if not console_users.EMAIL.match(given["email"]):
            raise InvalidInput("email must be an email address such as someone@example.jp", field="email")
        member_id = None
        if given["role"] == "member":
            try:
                member_id = uuid.UUID(given["member_id"])
            except ValueError:
                raise InvalidInput("a member user names its member", field="member_id") from None
        user, password, _ = await console_users.create(runtime.writer, runtime.master, actor(request, session),
                                                       vendor_id(session), given["role"], given["email"],
                                                       member_id=member_id, display_name=given["display_name"])
    except InvalidInput as exc:
        return await _list(request, session, status=400, given=given,
                           message=refused(request, "入力内容を確かめてください。", exc.detail))
    changed(request)
    return await _list(request, session, secret={"kind": "password", "id": user.email, "secret": password})


def _status_page(action: str, kind: EventKind) -> object:
    @page(*ADMIN)
    async def change_status(request: Request, session: Session) -> Response:
        acting(request, kind)
        await console_users.set_status(runtime_of(request).writer, actor(request, session), vendor_id(session),
                                       path_uuid(request, "user_id"), action)
        changed(request)
        return see_other("/console/vendor/users")

    change_status.__name__ = f"{action}_user"
    return change_status


routes = [
    Route("/console/vendor/users", list_users, methods=["GET"]),
    Route("/console/vendor/users", create_user, methods=["POST"]),
    Route("/console/vendor/users/{user_id}/suspend", _status_page("suspend", EventKind.USER_SUSPEND),  # type: ignore[arg-type]
          methods=["POST"]),
    Route("/console/vendor/users/{user_id}/resume", _status_page("resume", EventKind.USER_RESUME),  # type: ignore[arg-type]
          methods=["POST"]),
]
