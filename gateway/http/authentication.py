"""Pure ASGI authentication: a presented bearer credential becomes the request's Principal, or a 401.

Authenticators are tried in order; each returns None for "not mine" and raises Unauthenticated for
"mine but not valid" (the Starlette/Datasette pattern), so API keys and OAuth tokens chain cleanly.
Everything is answered from the in-memory snapshot: no database round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway import access_tokens, credentials, members, oauth, times
from gateway.audit.events import EventKind
from gateway.backoff import FailureBackoff
from gateway.credentials import Principal
from gateway.errors import BadRequest, GatewayError, ServiceUnavailable, TooManyRequests, Unauthenticated
from gateway.http.context import RequestContext, context
from gateway.http.forwarding import Forwarding
from gateway.http.problems import problem_messages
from gateway.http.types import ASGIApp, Receive, Scope, Send
from gateway.snapshot import Snapshot
from keys import apikeys

Authenticator = Callable[[str, Scope, RequestContext], Principal | None]

# Secrets in URLs end up in proxy logs, browser history and Referer headers.
_SECRET_QUERY_NAMES = (b"api_key=", b"apikey=", b"access_token=", b"token=", b"key=", b"client_secret=")
# The token endpoint authenticates OAuth clients itself (HTTP Basic or form fields, RFC 6749 §2.3.1).
_CLIENT_AUTHENTICATED_PATHS = frozenset({oauth.TOKEN_PATH})


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
        refusal = credentials.check(credential, token, self.snapshot.hasher, times.now(), ctx.client,
                                    self.forwarding.client_cert_sha256(scope))
        if refusal is None and credential.member_id is not None:
            # A suspended member's keys and sharing profiles stop as its OAuth tokens do (JwtAuthenticator).
            refusal = members.refusal(self.snapshot.members.get(credential.member_id))
        if refusal is not None:
            if refusal != credentials.NOT_RECOGNISED:
                # The secret was right: the audit event names the key that was refused (expired, wrong
                # network, missing certificate), which is evidence of its use. Never the secret itself.
                ctx.facts.refused(credential.id, credential.vendor_id, credential.member_id)
            raise Unauthenticated(refusal)
        return Principal(credential)


class JwtAuthenticator:
    """OAuth access tokens (RFC 9068 JWTs from /oauth/token), checked against the snapshot only.

    The token's signature and claims are checked by `access_tokens.verify` (pinned EdDSA, typ, iss, aud, exp,
    nbf, jti, client_id; kid looked up in memory only). Then the client and its member must be active
    in the snapshot now: revoking either ends every token at once, not at its expiry. What the member
    may receive is decided per request by its licences, as for an API key.
    """

    def __init__(self, snapshot: Snapshot, issuer: str, audience: str, max_lifetime: float) -> None:
        self.snapshot = snapshot
        self.issuer = issuer
        self.audience = audience
        self.max_lifetime = max_lifetime

    def __call__(self, token: str, scope: Scope, ctx: RequestContext) -> Principal | None:
        if token.count(".") != 2:  # not a compact JWS: an API key or something else
            return None
        try:
            claims = access_tokens.verify(token, self.snapshot.jwt, issuer=self.issuer, audience=self.audience,
                                  max_lifetime=self.max_lifetime, now=times.timestamp())
        except access_tokens.InvalidToken as exc:
            raise Unauthenticated(exc.reason) from None
        client = self.snapshot.oauth_clients_by_client_id.get(claims["client_id"])
        if client is None:
            raise Unauthenticated("access token's client not recognised")
        member = self.snapshot.members.get(client.member_id)
        refusal = ("OAuth client revoked" if client.revoked_at is not None
                   else "access token subject is not its client's member" if claims["sub"] != str(client.member_id)
                   else members.refusal(member))
        if refusal is not None:
            # The token is genuine (signature checked): the audit event names the client it was issued to.
            ctx.facts.refused(client.id, client.vendor_id, client.member_id)
            raise Unauthenticated(refusal)
        return Principal(client.credential)


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, snapshot: Snapshot, authenticators: list[Authenticator],
                 backoff: FailureBackoff | None = None) -> None:
        self.app = app
        self.snapshot = snapshot
        self.authenticators = authenticators
        self.backoff = backoff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "gateway.context" not in scope:
            await self.app(scope, receive, send)
            return
        ctx = context(scope)
        try:
            self._authenticate(scope, ctx)
        except GatewayError as exc:
            if isinstance(exc, Unauthenticated) and self.backoff is not None:
                self.backoff.failure(ctx.client)
            ctx.kind = EventKind.AUTH_REJECT
            ctx.reason = exc.detail
            start, body = problem_messages(exc, scope["path"])
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, ctx: RequestContext) -> None:
        query = scope.get("query_string", b"").lower()
        if query and any(query.startswith(name) or b"&" + name in query for name in _SECRET_QUERY_NAMES):
            raise BadRequest("credentials are never accepted in the URL; send 'Authorization: Bearer <key>'")
        if scope["path"] in _CLIENT_AUTHENTICATED_PATHS:
            return
        token = bearer_token(scope)
        if token is None:
            return
        if not self.snapshot.ready:
            # Changes may have been missed (lost LISTEN connection): refuse rather than honour a revoked key.
            raise ServiceUnavailable("credentials are being reloaded; retry in a second", headers={"Retry-After": "1"})
        try:
            for authenticate in self.authenticators:
                principal = authenticate(token, scope, ctx)
                if principal is not None:
                    ctx.principal = principal
                    return
            raise Unauthenticated("credential not recognised: use an API key or an access token from /oauth/token")
        except Unauthenticated:
            # Only failures are slowed (gateway/backoff.py): a valid key from a blocked address was served above.
            wait = self.backoff.retry_after(ctx.client) if self.backoff is not None else 0
            if wait:
                raise TooManyRequests(f"too many failed authentications from this address; retry in {wait} s",
                                      headers={"Retry-After": str(wait)}) from None
            raise
