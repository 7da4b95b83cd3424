"""Pure ASGI authentication: a presented bearer credential becomes the request's Principal, or a 401.

Authenticators are tried in order; each returns None for "not mine" and raises Unauthenticated for
"mine but not valid" (the Starlette/Datasette pattern), so API keys and OAuth tokens chain cleanly.
Everything is answered from the in-memory snapshot: no database round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from gateway import credentials
from gateway.context import Principal, RequestContext, context
from gateway.errors import BadRequest, GatewayError, ServiceUnavailable, Unauthenticated
from gateway.events import EventKind
from gateway.forwarding import Forwarding
from gateway.problems import problem_messages
from gateway.snapshot import Snapshot
from gateway.types import ASGIApp, Receive, Scope, Send
from keys import apikeys

Authenticator = Callable[[str, Scope, RequestContext], Principal | None]

# Secrets in URLs end up in proxy logs, browser history and Referer headers.
_SECRET_QUERY_NAMES = (b"api_key=", b"apikey=", b"access_token=", b"token=", b"key=")


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of the request, if any; a request must not carry two."""
    found = [v for k, v in scope["headers"] if k == b"authorization"]
    if not found:
        return None
    if len(found) > 1:
        raise BadRequest("send one Authorization header, not several")
    scheme, _, token = found[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use 'Authorization: Bearer <API key or access token>'")
    return token.strip()


class ApiKeyAuthenticator:
    def __init__(self, snapshot: Snapshot, forwarding: Forwarding) -> None:
        self.snapshot = snapshot
        self.forwarding = forwarding

    def __call__(self, token: str, scope: Scope, ctx: RequestContext) -> Principal | None:
        if not token.startswith("lpd"):
            return None
        try:
            key = apikeys.parse(token)
        except apikeys.MalformedKey as exc:
            raise Unauthenticated(f"malformed API key: {exc.reason}") from None
        credential = self.snapshot.credential(key.key_id)
        if credential is None or credential.kind != key.kind:
            raise Unauthenticated("API key not recognised")
        assert self.snapshot.hasher is not None
        refusal = credentials.check(credential, token, self.snapshot.hasher, datetime.now(UTC), ctx.client,
                                    self.forwarding.client_cert_sha256(scope))
        if refusal is not None:
            raise Unauthenticated(refusal)
        return Principal(credential)


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, snapshot: Snapshot, authenticators: list[Authenticator]) -> None:
        self.app = app
        self.snapshot = snapshot
        self.authenticators = authenticators

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "gateway.context" not in scope:
            await self.app(scope, receive, send)
            return
        ctx = context(scope)
        try:
            self._authenticate(scope, ctx)
        except GatewayError as exc:
            ctx.kind = EventKind.AUTH_REJECT
            ctx.reason = exc.detail
            start, body = problem_messages(exc)
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, ctx: RequestContext) -> None:
        query = scope.get("query_string", b"").lower()
        if any(query.startswith(name) or b"&" + name in query for name in _SECRET_QUERY_NAMES):
            raise BadRequest("credentials are never accepted in the URL; send 'Authorization: Bearer <key>'")
        token = bearer_token(scope)
        if token is None:
            return
        if not self.snapshot.ready:
            # Changes may have been missed (lost LISTEN connection): refuse rather than honour a revoked key.
            raise ServiceUnavailable("credentials are being reloaded; retry in a second", headers={"Retry-After": "1"})
        for authenticate in self.authenticators:
            principal = authenticate(token, scope, ctx)
            if principal is not None:
                ctx.principal = principal
                return
        raise Unauthenticated("credential not recognised: use an API key or an access token from /oauth/token")
