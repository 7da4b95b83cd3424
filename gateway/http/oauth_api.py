"""OAuth 2.0 endpoints: the client-credentials token endpoint, the JWKS and RFC 8414 metadata.

Thin HTTP layer over gateway/oauth.py. The token endpoint's error bodies are RFC 6749 §5.2 JSON
(`{"error": "invalid_client", "error_description": ...}`), not problem+json: OAuth clients expect
them. Every token request is audited like any request (kind oauth:token:issue, or
auth:credential:reject with the reason when the client fails to authenticate), never with the secret,
and failed client authentications count towards the per-address backoff (gateway/backoff.py).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import oauth, times
from gateway.audit.events import EventKind
from gateway.credentials import Principal
from gateway.errors import ServiceUnavailable
from gateway.http.context import context
from gateway.http.endpoints import read_limited, runtime_of

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 8192
MAX_FORM_FIELDS = 16
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


class _BadForm(Exception):
    pass



def _json(status: int, body: Any, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": error, "error_description": description}, {**NO_STORE, **(headers or {})})


async def _read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise _BadForm(f"send the token request as {FORM_TYPE} (RFC 6749 section 4.4.2)")
    raw = await read_limited(request, MAX_FORM_BYTES,
                             lambda: _BadForm(f"token requests are limited to {MAX_FORM_BYTES} bytes"))
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise _BadForm("the token request body is not a valid form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _BadForm("request parameters must not be repeated (RFC 6749 section 3.2)")
    return form


async def token(request: Request) -> Response:
    """POST /oauth/token: client credentials grant (RFC 6749 §4.4), answered from the snapshot."""
    ctx = context(request.scope)
    ctx.kind = EventKind.OAUTH_TOKEN_ISSUE
    runtime = runtime_of(request)
    if not runtime.snapshot.ready:
        ctx.reason = "credentials are being reloaded"
        return _oauth_error(503, "temporarily_unavailable", "credentials are being reloaded; retry in a second",
                            {"retry-after": "1"})
    try:
        form = await _read_form(request)
        if "grant_type" not in form:
            raise _BadForm("grant_type is required; this server supports grant_type=client_credentials")
        if "client_secret" in form and "authorization" in request.headers:
            raise _BadForm("authenticate the client with one method: HTTP Basic or form fields, not both")
    except _BadForm as exc:
        ctx.reason = f"invalid_request: {exc}"
        return _oauth_error(400, "invalid_request", str(exc))
    server: oauth.TokenServer = request.app.state.token_server
    issued, (status, body, header_list) = server.issue(request.headers, form)
    client = issued.oauth_client if issued is not None else None
    if status == 200 and issued is not None and client is not None and issued.issued is not None:
        ctx.principal = Principal(client.credential)
        claims = issued.issued
        ctx.facts.detail = {"client_id": claims["client_id"], "jti": claims["jti"], "kid": claims["kid"],
                            "exp": claims["exp"], "scope": claims["scope"]}
    else:
        error = body.get("error", "invalid_request")
        reason = (issued.refusal if issued is not None else None) or body.get("error_description") or error
        ctx.reason = f"{error}: {reason}"
        if error == "invalid_client":
            ctx.kind = EventKind.AUTH_REJECT
            # Only failures are slowed (gateway/backoff.py): a valid client from a blocked address was served.
            wait = runtime.backoff.retry_after(ctx.client)
            if wait:
                ctx.reason = f"too many failed authentications from this address; retry in {wait} s"
                # "slow_down" is the registered OAuth error for "poll less often" (RFC 8628 §3.5).
                return _oauth_error(429, "slow_down", ctx.reason, {"retry-after": str(wait)})
            runtime.backoff.failure(ctx.client)
        if client is not None:  # the secret was right: name the client the refusal concerns
            ctx.facts.refused(client.id, client.vendor_id, client.member_id)
    headers = {name.lower(): value for name, value in header_list if name.lower() != "content-type"}
    return _json(status, body, {**headers, **NO_STORE})


async def jwks(request: Request) -> Response:
    """The JWT keys that verify our access tokens: the current one and those not yet retired."""
    context(request.scope).kind = EventKind.OAUTH_METADATA_READ
    snapshot = runtime_of(request).snapshot
    if not snapshot.ready:
        raise ServiceUnavailable("keys are being reloaded; retry in a second", headers={"Retry-After": "1"})
    # Short caching: verifiers refetch on an unknown kid anyway, and a retired key should go soon.
    return _json(200, snapshot.jwt.jwks(times.timestamp()), {"cache-control": "public, max-age=60"})


async def metadata(request: Request) -> Response:
    """RFC 8414 authorization server metadata."""
    context(request.scope).kind = EventKind.OAUTH_METADATA_READ
    server: oauth.TokenServer = request.app.state.token_server
    return _json(200, server.metadata(), {"cache-control": "public, max-age=300"})


routes = [
    Route(oauth.TOKEN_PATH, token, methods=["POST"]),
    Route(oauth.JWKS_PATH, jwks, methods=["GET"]),
    Route(oauth.METADATA_PATH, metadata, methods=["GET"]),
]
