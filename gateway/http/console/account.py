"""The signed-in person's own page: who they are, their role, and their sessions (any of which they
may end, e.g. one left open on another computer)."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import console_users
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.http.console.web import acting, changed, page, render, see_other
from gateway.http.context import context
from gateway.http.endpoints import runtime_of


@page()
async def account(request: Request, session: Session) -> Response:
    sessions = await console_users.live_sessions(runtime_of(request).pool, session.user.id)
    return render(request, "account.html", session=session, sessions=sessions, current=session.id)


@page()
async def end_session(request: Request, session: Session) -> Response:
    acting(request, EventKind.CONSOLE_SIGN_OUT)
    try:
        session_id = uuid.UUID(str(request.state.form.get("session_id", "")))
    except ValueError:
        session_id = uuid.UUID(int=0)
    await console_users.end_session(runtime_of(request).writer, session, session_id,
                                    context(request.scope).request_info)
    changed(request)
    return see_other("/console/account")


routes = [Route("/console/account", account, methods=["GET"]),
          Route("/console/account/sessions/end", end_session, methods=["POST"])]
