"""Signing in (email and password, then a TOTP code, enrolling one first where there is none), signing
out, and the language switch."""

from __future__ import annotations

import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import console_users
from gateway.audit.events import EventKind
from gateway.console_users import Session, SignInRefused
from gateway.http.console.web import (
    LANGUAGE_COOKIE,
    LANGUAGES,
    PageError,
    acting,
    changed,
    checked_form,
    cookie_names,
    current_session,
    error_page,
    page,
    render,
    safe_next,
    see_other,
    set_cookie,
)
from gateway.http.context import context
from gateway.http.endpoints import runtime_of

HOME = {"vendor-admin": "/console/vendor/", "compliance": "/console/vendor/", "member": "/console/member/"}


def qr_svg(uri: str) -> str:
    """The otpauth URI as an inline SVG QR code (no image file, nothing fetched)."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#000", light="#fff",
                                                 title="TOTP", svgclass="qr")
    return svg


async def home(request: Request) -> Response:
    ctx = context(request.scope)
    ctx.kind = EventKind.CONSOLE_PAGE_READ
    try:
        session = await current_session(request)
    except PageError as exc:  # plain HTTP off loopback
        ctx.reason = exc.en
        return error_page(request, exc.status, exc.ja, exc.en)
    if session is None or session.stage != "active":
        return see_other("/console/sign-in")
    context(request.scope).person = session.user.actor()
    return see_other(HOME[session.user.role])


async def sign_in(request: Request) -> Response:
    ctx = context(request.scope)
    ctx.kind = EventKind.CONSOLE_SIGN_IN_REJECT if request.method == "POST" else EventKind.CONSOLE_PAGE_READ
    try:
        cookie_names(request)
        target = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return render(request, "sign_in.html", next=target, email="", message=None)
        form = await checked_form(request, None)
        email, password = str(form.get("email", "")), str(form.get("password", ""))
        runtime = runtime_of(request)
        try:
            pending = await console_users.sign_in_password(runtime.writer, runtime.master, email, password,
                                                           ctx.request_info)
        except SignInRefused as refused:
            changed(request)
            return _refused(request, "sign_in.html", refused, next=target, email=email)
        ctx.kind, ctx.person = EventKind.CONSOLE_PASSWORD, pending.user.actor()
        response = see_other("/console/sign-in/code?" + request.url.query if request.url.query
                             else "/console/sign-in/code")
        set_cookie(response, request, cookie_names(request)[0], pending.token,
                   int(console_users.SECOND_FACTOR_TIMEOUT.total_seconds()))
        return response
    except PageError as exc:
        ctx.reason = exc.en
        return error_page(request, exc.status, exc.ja, exc.en)


def _refused(request: Request, template: str, refused: SignInRefused, **values: object) -> Response:
    headers = {"retry-after": str(refused.retry_after)} if refused.retry_after else None
    if refused.retry_after:
        message = (f"サインインの失敗が続いたため、{refused.retry_after} 秒後に再度お試しください。",
                   f"Too many failed sign-ins: try again in {refused.retry_after} seconds.")
    elif str(refused) == console_users.REFUSED:
        message = ("メールアドレス、パスワードまたは確認コードが正しくありません。", "The email, password or code is not right.")
    else:
        message = ("サインインに時間がかかりすぎました。メールアドレスとパスワードからやり直してください。", str(refused))
    return render(request, template, status=429 if refused.retry_after else 401, headers=headers,
                  message=message, **values)


async def second_factor(request: Request) -> Response:
    ctx = context(request.scope)
    ctx.kind = EventKind.CONSOLE_SIGN_IN_REJECT if request.method == "POST" else EventKind.CONSOLE_PAGE_READ
    try:
        pending = await current_session(request)
        if pending is None or pending.stage != "password":
            return see_other("/console/sign-in")
        ctx.person = pending.user.actor()
        runtime = runtime_of(request)
        secret = await console_users.pending_secret(runtime.pool, runtime.master, pending)
        values = _enrolment(pending, secret)
        if request.method == "GET":
            return render(request, "second_factor.html", session=pending, message=None, **values)
        form = await checked_form(request, pending)
        try:
            session = await console_users.sign_in_code(runtime.writer, runtime.master, pending,
                                                       str(form.get("code", "")), ctx.request_info)
        except SignInRefused as refused:
            changed(request)
            return _refused(request, "second_factor.html", refused, session=pending, **values)
        changed(request)
        response = see_other(safe_next(request.query_params.get("next")) if request.query_params.get("next")
                             else HOME[session.user.role])
        set_cookie(response, request, cookie_names(request)[0], session.token, None)
        return response
    except PageError as exc:
        ctx.reason = exc.en
        return error_page(request, exc.status, exc.ja, exc.en)


def _enrolment(pending: Session, secret: str | None) -> dict[str, object]:
    if secret is None:
        return {"enrol": None}
    uri = console_users.totp.provisioning_uri(secret, pending.user.email, console_users.ISSUER)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return {"enrol": {"qr": qr_svg(uri), "secret": grouped, "uri": uri}}


@page()
async def sign_out(request: Request, session: Session) -> Response:
    acting(request, EventKind.CONSOLE_SIGN_OUT)
    await console_users.sign_out(runtime_of(request).writer, session, context(request.scope).request_info)
    changed(request)
    response = see_other("/console/sign-in")
    response.delete_cookie(cookie_names(request)[0], path="/", secure=cookie_names(request)[2], httponly=True,
                           samesite="strict")
    return response


async def switch_language(request: Request) -> Response:
    """A preference, not a change of anything the gateway keeps: a link, so it works without a form."""
    context(request.scope).kind = EventKind.CONSOLE_PAGE_READ
    chosen = request.query_params.get("to")
    response = see_other(safe_next(request.query_params.get("next")))
    if chosen in LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, chosen, max_age=365 * 86400, path="/", samesite="strict",
                            secure=request.url.scheme == "https", httponly=True)
    return response


routes = [
    Route("/console/", home, methods=["GET"]),
    Route("/console/sign-in", sign_in, methods=["GET", "POST"]),
    Route("/console/sign-in/code", second_factor, methods=["GET", "POST"]),
    Route("/console/sign-out", sign_out, methods=["POST"]),
    Route("/console/language", switch_language, methods=["GET"]),
]
