"""What the vendor screens share: who may read and who may change, the ids in their paths, the posted
fields, and charts drawn by the evidence report's own chart code."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from gateway.actors import Actor
from gateway.audit import report
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.http.console.web import NOT_FOUND, PageError, acting, changed, page, see_other
from gateway.http.context import context
from gateway.http.endpoints import runtime_of

READERS = ("vendor-admin", "compliance")
ADMIN = ("vendor-admin",)
DAYS = 30  # the dashboard's and the usage page's window
PAGE_SIZE = 100  # rows of a long list shown at once; the next page starts after the last one shown


def vendor_id(session: Session) -> uuid.UUID:
    return session.user.vendor_id


def actor(request: Request, session: Session) -> Actor:
    """The signed-in person as the actor of the change's event, with the request it came by."""
    return session.user.actor(context(request.scope).request_info)


def may_change(session: Session) -> bool:
    return session.user.role == "vendor-admin"


def path_uuid(request: Request, name: str) -> uuid.UUID:
    """An id from the path; one that is not an id is a missing object, answered alike."""
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise PageError(404, *NOT_FOUND) from None


def path_number(request: Request, name: str) -> int:
    text = request.path_params[name]
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and 0 < int(text) < 2**31):  # an integer column
        raise PageError(404, *NOT_FOUND)
    return int(text)


def after(request: Request) -> uuid.UUID | None:
    """A list page's `after` (the last row of the page before): an id, or none for the first page."""
    try:
        return uuid.UUID(request.query_params["after"]) if request.query_params.get("after") else None
    except ValueError:
        raise PageError(404, *NOT_FOUND) from None


def text(request: Request, name: str) -> str:
    """A posted text field, as typed ('' when absent; a file where text is expected counts as absent)."""
    value = request.state.form.get(name, "")
    return value if isinstance(value, str) else ""


def texts(request: Request, name: str) -> list[str]:
    return [v for v in request.state.form.getlist(name) if isinstance(v, str)]


def refused(request: Request, ja: str, en: str) -> tuple[str, str]:
    """A form's refusal as the message shown above it again; the request's event gives the reason."""
    context(request.scope).reason = en
    return ja, en


def bar_chart(bars: list[tuple[str, int]], label: str) -> Markup:
    # report.bar_chart escapes every label it draws: its SVG is markup as it stands.
    return Markup(report.bar_chart(bars, label=label))


def step_chart(series: list[tuple[str, list[tuple[str, int]]]], start: str, end: str, label: str) -> Markup:
    return Markup(report.step_chart(series, start, end, label=label))


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """Form fields as the API's JSON body would carry them, for admin_api's field specs: blank optional
    fields absent, whole numbers as numbers (anything else stays text, and the spec refuses it)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value == "" or value is None:
            continue
        if isinstance(value, str) and name in ("records_per_month", "bytes_per_month") and value.isascii() \
                and value.isdigit() and len(value) < 19:
            value = int(value)
        out[name] = value
    return out


MAX_REASON_CHARS = 1000
Reshow = Callable[[Request, Session, tuple[str, str]], Awaitable[Response]]


def status_page(noun: str, action: str, kind: EventKind, set_status: Callable[..., Awaitable[Any]],
                reshow: Reshow) -> Callable[[Request], Awaitable[Response]]:
    """The POST of a member's or licence's suspend, resume or revoke form (/console/vendor/{noun}s/{id}/
    {action}): the domain's set_status with the reason given; a reason too long shows the object's page
    again (`reshow`, status 400) with the message."""

    @page(*ADMIN)
    async def change_status(request: Request, session: Session) -> Response:
        acting(request, kind)
        object_id = path_uuid(request, f"{noun}_id")
        reason = text(request, "reason").strip()
        if len(reason) > MAX_REASON_CHARS:
            return await reshow(request, session, refused(request, "理由は1000文字までです。",
                                                          "A reason is at most 1,000 characters."))
        await set_status(runtime_of(request).writer, actor(request, session), vendor_id(session), object_id, action,
                         reason)
        changed(request)
        return see_other(f"/console/vendor/{noun}s/{object_id}")

    change_status.__name__ = f"{action}_{noun}"
    return change_status
