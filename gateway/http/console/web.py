"""What every console page shares: templates in Japanese and English, JST times, the signed-in session,
CSRF tokens, the cookies and the security headers.

Pages are rendered on the server and work without JavaScript. Every text is written in both languages
where it is used (`t("会員", "Members")`): Japanese unless the reader chose English or their browser
asks for it first. The console's cookies are `__Host-` and Secure over HTTPS; a browser refuses a
`__Host-` cookie that is not Secure, so on plain-HTTP loopback (the demo) they go without the prefix
and without Secure, and off loopback the console refuses plain HTTP altogether.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway import console_users, times
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.errors import GatewayError
from gateway.http.context import context
from gateway.http.endpoints import runtime_of
from gateway.server_secrets import CONSOLE

HERE = Path(__file__).parent
LANGUAGES = ("ja", "en")
LANGUAGE_COOKIE = "lpd-lang"
# No inline script or style anywhere: the one script and the one style sheet are files the gateway serves.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "cache-control": "no-store", "referrer-policy": "same-origin",
                    "x-frame-options": "DENY", "cross-origin-opener-policy": "same-origin"}
ROLE_NAMES = {"vendor-admin": ("ベンダー管理者", "Vendor admin"), "compliance": ("コンプライアンス担当", "Compliance"),
              "member": ("会員", "Member")}
Handler = Callable[[Request, Session], Awaitable[Response]]


@jinja2.pass_context
def _t(ctx: Any, ja: str, en: str) -> str:
    return ja if ctx["lang"] == "ja" else en


def jst(value: datetime | str | None) -> str:
    """A moment as people here read it: JST, to the second."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return times.jst_text(value)


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:,}"


ENVIRONMENT = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.globals.update(t=_t, role_names=ROLE_NAMES)
ENVIRONMENT.filters.update(jst=jst, number=number)


class PageError(Exception):
    """A console refusal shown as a page: its status and what to do, in both languages."""

    def __init__(self, status: int, ja: str, en: str) -> None:
        super().__init__(en)
        self.status, self.ja, self.en = status, ja, en


NOT_FOUND = ("ページまたは対象が見つかりません。", "There is no such page or object.")


def language(request: Request) -> str:
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    best, best_q = "ja", -1.0
    for item in request.headers.get("accept-language", "").split(","):
        tag, _, params = item.strip().partition(";")
        base = tag.strip().lower().split("-")[0]
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        if base in LANGUAGES and q > best_q:
            best, best_q = base, q
    return best


def _loopback(request: Request) -> bool:
    client = request.client
    try:
        return client is not None and ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False


def cookie_names(request: Request) -> tuple[str, str, bool]:
    """(session cookie, pre-sign-in cookie, Secure) for this request's transport."""
    if request.url.scheme == "https":
        return "__Host-lpd-session", "__Host-lpd-pre", True
    if _loopback(request):
        return "lpd-session", "lpd-pre", False
    raise PageError(403, "コンソールは HTTPS でのみ利用できます(ループバックを除く)。HTTPS の URL で開いてください。",
                    "The console is served over HTTPS only (loopback excepted): open it by its https:// URL.")


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    _, _, secure = cookie_names(request)
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict")


def csrf_for(request: Request, session: Session | None) -> str:
    """The CSRF token of this browser: bound to its session, or before sign-in to its pre-sign-in cookie."""
    _, pre_cookie, _ = cookie_names(request)
    binding = session.token if session is not None else (
        request.cookies.get(pre_cookie) or getattr(request.state, "pre_token", ""))
    _, key = runtime_of(request).secrets.current(CONSOLE)
    return console_users.csrf_token(key, binding)


async def checked_form(request: Request, session: Session | None) -> FormData:
    """The posted form, once its CSRF token is checked: a form another site made the browser send is
    refused (403) before anything is read from it or changed."""
    form = await request.form(max_files=1, max_fields=200)
    given = form.get("csrf")
    _, pre_cookie, _ = cookie_names(request)
    binding = session.token if session is not None else request.cookies.get(pre_cookie)
    if not isinstance(given, str) or binding is None or not hmac.compare_digest(
            given, console_users.csrf_token(runtime_of(request).secrets.current(CONSOLE)[1], binding)):
        raise PageError(403, "フォームの有効期限が切れたか、別のサイトから送信されました。ページを開き直して、もう一度送信してください。",
                        "This form is out of date or was sent by another site: reload the page and send it again.")
    return form


def render(request: Request, template: str, *, session: Session | None = None, status: int = 200,
           headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    try:
        _, pre_cookie, _ = cookie_names(request)
    except PageError:
        pre_cookie = None  # plain HTTP off loopback: the page says so, and carries no form that could work
    if pre_cookie is not None and session is None and not request.cookies.get(pre_cookie):
        # A browser's first page: the cookie that the sign-in form's CSRF token is bound to.
        request.state.pre_token = getattr(request.state, "pre_token", None) or secrets.token_urlsafe(32)
    html = ENVIRONMENT.get_template(template).render(
        lang=language(request), user=None if session is None else session.user,
        csrf="" if pre_cookie is None else csrf_for(request, session),
        path=request.url.path, query=request.url.query, **values)
    response = HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
    pre_token = getattr(request.state, "pre_token", None)
    if pre_cookie is not None and pre_token is not None:
        set_cookie(response, request, pre_cookie, pre_token, None)
    return response


def error_page(request: Request, status: int, ja: str, en: str, session: Session | None = None) -> HTMLResponse:
    return render(request, "error.html", session=session, status=status, message_ja=ja, message_en=en)


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def sign_in_location(request: Request) -> str:
    return "/console/sign-in?" + urllib.parse.urlencode({"next": request.url.path})


def safe_next(target: str | None) -> str:
    """Where to go after sign-in or a language switch: a console path, never another site."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


async def current_session(request: Request) -> Session | None:
    session_cookie, _, _ = cookie_names(request)
    token = request.cookies.get(session_cookie)
    if not token:
        return None
    return await console_users.session_for(runtime_of(request).pool, token)


# A multipart form's fields besides its file, and its boundaries, are small: this is their allowance.
MULTIPART_SLACK = 64 * 1024


def bounded_upload(most_bytes: Callable[[Request], int], ja: str, en: str) -> Callable[[Any], Any]:
    """An upload form's endpoint, refused before its body is read when it declares no length (411) or more
    than `most_bytes(request)` and MULTIPART_SLACK (413): the multipart parser spools a file to disk
    whatever its size, so the bound comes first. `ja` and `en` say what to do instead ({limit} is filled)."""

    def wrap(endpoint: Any) -> Any:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            limit = most_bytes(request)
            length = request.headers.get("content-length", "")
            if not (length.isascii() and length.isdigit()):
                return error_page(request, 411, "ファイルの大きさが分からないため受け付けられません。ブラウザのフォームから送信してください。",
                                  "The upload declares no length (Content-Length): send it from the form.")
            if int(length) > limit + MULTIPART_SLACK:
                return error_page(request, 413, ja.format(limit=limit), en.format(limit=limit))
            response: Response = await endpoint(request)
            return response

        return guarded

    return wrap


def acting(request: Request, kind: EventKind) -> None:
    """The change a form asks for: the request's event names it, whatever the outcome."""
    context(request.scope).kind = kind


def changed(request: Request) -> None:
    """The domain function committed the change's event with the change: the request needs none more."""
    context(request.scope).audited = True


def page(*roles: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A page for signed-in users of `roles` (any role when none is named): anyone else signed in gets the
    same 404 as for a missing object; anyone not signed in is sent to sign in. A POST's CSRF token is
    checked before the handler runs (the form is then `request.state.form`). Domain errors become pages."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            ctx = context(request.scope)
            ctx.kind = EventKind.CONSOLE_PAGE_READ
            session = None
            try:
                session = await current_session(request)
                if session is None or session.stage != "active":
                    return see_other(sign_in_location(request))
                ctx.person = session.user.actor()
                if roles and session.user.role not in roles:
                    ctx.reason = f"the console role {session.user.role} may not use {request.url.path}"
                    raise PageError(404, *NOT_FOUND)
                if request.method == "POST":
                    request.state.form = await checked_form(request, session)
                return await handler(request, session)
            except PageError as exc:
                ctx.reason = ctx.reason or exc.en
                return error_page(request, exc.status, exc.ja, exc.en, session)
            except GatewayError as exc:
                ctx.reason = exc.reason
                if exc.status == 404:
                    return error_page(request, 404, *NOT_FOUND, session=session)
                return error_page(request, exc.status, "操作を完了できませんでした。内容を確かめて、もう一度お試しください。",
                                  exc.detail, session)

        endpoint.console_roles = roles or tuple(ROLE_NAMES)  # type: ignore[attr-defined]  # for tools: who may use it
        return endpoint

    return wrap
