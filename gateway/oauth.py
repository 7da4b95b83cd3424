"""OAuth 2.0 issuing: the client-credentials token endpoint, answering with RFC 9068 JWTs.

POST /oauth/token runs authlib's RFC 6749 machinery (grant selection, client authentication
methods, §5.2 error bodies, the token response) over the in-memory snapshot: the client is looked up
and its secret checked without a database round trip, and the token is signed with the current JWT key
of the snapshot's keyring. The tokens, their keys and their verification are gateway/access_tokens.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientCredentialsGrant,
    ClientMixin,
    InsecureTransportError,
    InvalidClientError,
    InvalidScopeError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization, scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator

from gateway import members, oauth_clients, times
from gateway.access_tokens import audience, issuer, sign
from gateway.config import Config
from gateway.oauth_clients import OAuthClient
from gateway.snapshot import Snapshot
from keys import apikeys

TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
SCOPE_PREFIX = "licence:"


class TokenRequest(OAuth2Request):
    """A token request whose form the route has read already (authlib's core is synchronous)."""

    def __init__(self, uri: str, headers: Mapping[str, str], form: dict[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form
        # Filled by client authentication and the token generator, for the request's audit event:
        # the client whose secret was presented correctly, why it was refused, what was issued.
        self.oauth_client: OAuthClient | None = None
        self.refusal: str | None = None
        self.issued: dict[str, Any] | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class _Client(ClientMixin):  # type: ignore[misc]
    """authlib's view of an authenticated client for one request."""

    def __init__(self, client: OAuthClient, scope: str, request: TokenRequest) -> None:
        self.client = client
        self.scope = scope
        self.request = request

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        # RFC 6749 §3.3 lets the server ignore the requested scope: the token always lists every live
        # licence of the member, and each request is authorised by the licence itself (from the snapshot).
        return self.scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # never used: TokenServer authenticates clients itself (_authenticate)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE


class _ClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def validate_requested_scope(self) -> None:
        requested = self.request.payload.scope
        if requested is None:
            return
        allowed = set(self.request.client.scope.split())
        if not set(scope_to_list(requested)) <= allowed:
            raise InvalidScopeError("scope may name only this member's licences, as licence:<licence id>")


class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with only the client credentials grant, over the snapshot."""

    def __init__(self, snapshot: Snapshot, config: Config) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.issuer = issuer(config)
        self.audience = audience(config)
        self.ttl = config.token_ttl_seconds
        self.token_endpoint = self.issuer + TOKEN_PATH
        self.register_grant(_ClientCredentialsGrant)
        self.register_token_generator("default", BearerTokenGenerator(self._access_token, expires_generator=self.ttl))
        # Our own client authentication: secrets are checked against the snapshot with the reasons the
        # audit log needs, and the secret's form is checked before any lookup.
        self.register_client_auth_method("client_secret_basic", self._authenticate_basic)
        self.register_client_auth_method("client_secret_post", self._authenticate_post)

    # authlib's framework hooks
    def query_client(self, client_id: str) -> None:
        return None  # clients are found by _authenticate, never by the "none" method

    def save_token(self, token: dict[str, Any], request: TokenRequest) -> None:
        """Nothing to store: the token is self-contained and the request's audit event names its jti."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: TokenRequest) -> TokenRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, headers

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata."""
        return {"issuer": self.issuer, "token_endpoint": self.token_endpoint, "jwks_uri": self.issuer + JWKS_PATH,
                "grant_types_supported": [GRANT_TYPE], "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
                "response_types_supported": [],
                # Not standard metadata: what resource servers must put in `aud` checks.
                "resource": self.audience}

    def issue(self, headers: Mapping[str, str], form: dict[str, str]) -> tuple[TokenRequest | None, tuple[int, Any, list[tuple[str, str]]]]:
        """Run the token request: (the request with what happened, (status, body, headers))."""
        try:
            request = TokenRequest(self.token_endpoint, headers, form)
        except InsecureTransportError as exc:
            # authlib refuses OAuth over plain http except on loopback: GATEWAY_PUBLIC_URL must be https.
            return None, exc()
        return request, self.create_token_response(request)

    # client authentication
    def _authenticate_basic(self, query_client: Any, request: TokenRequest) -> _Client | None:
        if not request.headers.get("Authorization", "").lower().startswith("basic "):
            return None
        client_id, secret = extract_basic_authorization(request.headers)
        return self._authenticate(request, client_id, secret, status=401)

    def _authenticate_post(self, query_client: Any, request: TokenRequest) -> _Client | None:
        client_id, secret = request.form.get("client_id"), request.form.get("client_secret")
        if client_id is None and secret is None:
            return None
        return self._authenticate(request, client_id, secret, status=400)

    def _authenticate(self, request: TokenRequest, client_id: str | None, secret: str | None, status: int) -> _Client:
        snapshot = self.snapshot
        client = None
        reason: str | None
        if not client_id or not secret:
            reason = "send both client_id and client_secret"
        else:
            try:
                # Form and checksum first: typos and random probes never reach a lookup or an HMAC.
                key_id = apikeys.parse_client_id(client_id)
                secret_key_id = apikeys.parse_client_secret(secret)
            except apikeys.MalformedKey as exc:
                reason = f"malformed client credentials: {exc.reason}"
            else:
                client = snapshot.oauth_clients_by_client_id.get(client_id)
                if key_id != secret_key_id:
                    reason = "client secret does not belong to this client_id"
                elif client is None:
                    reason = "client not recognised"
                else:
                    assert snapshot.hasher is not None
                    reason = oauth_clients.check_secret(client, secret, snapshot.hasher)
                    member = snapshot.members.get(client.member_id)
                    if reason is None:
                        reason = members.refusal(member)
                    if reason != oauth_clients.SECRET_NOT_RECOGNISED:
                        request.oauth_client = client  # its secret was right: the audit event may name it
        if reason is not None or client is None:
            request.refusal = reason
            raise InvalidClientError(description=reason, status_code=status)
        scope = " ".join(sorted(f"{SCOPE_PREFIX}{licence.id}" for licence in snapshot.licences_of(client.member_id)
                                if licence.live))
        return _Client(client, scope, request)

    # the token
    def _access_token(self, client: _Client, grant_type: str, user: Any, scope: str) -> str:
        signer = self.snapshot.jwt.signer
        assert signer is not None, "the snapshot loads the current JWT key before it is ready"
        now = int(times.timestamp())
        claims = {"iss": self.issuer, "sub": str(client.client.member_id), "aud": self.audience,
                  "exp": now + self.ttl, "iat": now, "nbf": now, "jti": str(uuid.uuid4()),
                  "client_id": client.client.client_id, "scope": scope}
        client.request.issued = {**claims, "kid": signer.key_id}
        return sign(signer, claims)
