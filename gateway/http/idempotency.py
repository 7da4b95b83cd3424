"""`Idempotency-Key` on the admin API's POST and PATCH routes (draft-ietf-httpapi-idempotency-key-header-07).

A vendor admin that retries a request with the same key gets the first answer again and changes
nothing: a publish retried after a timeout is not a second version, a grant not a second licence.

- The key is an RFC 8941 sf-string of 1 to 255 characters, e.g. `Idempotency-Key: "8e03978e-…"`, or
  the same characters unquoted, as many clients send it (not an sf-string, so RFC 8941 would have the
  field ignored, and a retry would then make a second version: taking it is the safe reading); keys
  belong to a vendor (two vendors' equal keys are unrelated), and last 24 hours.
- The request's fingerprint is the SHA-256 of its method, path, query, content type, content coding
  and body; the same key with another fingerprint answers 409 and changes nothing. The draft suggests
  422, but the request is well formed: it is the key's state it conflicts with, which is what 409 says
  (and what a client generating requests from the OpenAPI document expects of a valid request refused
  by state).
- A request still being carried out under the key: 409, retry later.
- Only an answer that changed something is kept, and it is kept in the change's own transaction (the
  change and its stored answer commit together or not at all). A refusal changed nothing, so its
  retry is carried out anew.
- The stored answer is sealed with the master key: it may hold a secret (an API key just issued).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.audit.events import EventKind
from gateway.errors import BadRequest, Conflict, PayloadTooLarge
from gateway.http.context import context
from gateway.http.endpoints import NO_STORE, runtime_of
from gateway.http.types import Message, Receive

HEADER = b"idempotency-key"
LIFETIME_HOURS = 24
# An sf-string (RFC 8941 §3.3.3): printable ASCII in double quotes, with '"' and '\' escaped.
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[\x21\x23-\x7e]+")  # visible ASCII but '"': a broken sf-string is not a bare key
_EXAMPLE = 'Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"'

Endpoint = Callable[[Request], Awaitable[Response]]


def idempotent(endpoint: Endpoint) -> Endpoint:
    """`endpoint`, answering a retried Idempotency-Key with its first answer."""

    async def honouring_idempotency_key(request: Request) -> Response:
        ctx = context(request.scope)
        if ctx.principal is None or ctx.principal.kind != "vendor":
            return await endpoint(request)  # a caller the route refuses anyway, key or not
        key = _key(request)
        if key is None:
            return await endpoint(request)
        assert ctx.principal.vendor_id is not None
        vendor_id = ctx.principal.vendor_id
        runtime = runtime_of(request)
        body = _HashedBody(request.receive)
        async with runtime.writer.held_change() as change:
            conn = change.conn
            if not await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended('idempotency:' || $1 || ':' || $2, 0))",
                    str(vendor_id), key):
                raise Conflict("a request with this Idempotency-Key is still being carried out; retry when it has "
                               "answered", idempotency_key=key)
            first = await conn.fetchrow(
                "SELECT fingerprint, status, media_type, sealed_body, event_kind, event_id FROM idempotency_keys "
                "WHERE vendor_id = $1 AND key = $2 AND created_at > now() - make_interval(hours => $3)",
                vendor_id, key, LIFETIME_HOURS)
            if first is not None:
                await body.drain(runtime.config.max_upload_bytes)
                if bytes(first["fingerprint"]) != _fingerprint(request, body.digest):
                    raise Conflict("this Idempotency-Key was used for a different request (method, path, "
                                       "query, content type, content coding or body) in the last 24 hours: use a "
                                       "new key for a new request",
                                       idempotency_key=key)
                # The retry is evidence too: its event names the change it repeats the answer of.
                ctx.kind = EventKind(first["event_kind"])
                ctx.facts.note(idempotent_replay_of=str(first["event_id"]))
                content = runtime.master.open(bytes(first["sealed_body"]), context=_seal_context(vendor_id, key))
                return Response(content, status_code=first["status"], media_type=first["media_type"],
                                headers={**NO_STORE, "idempotent-replayed": "true"})
            response = await endpoint(Request(request.scope, body))
            if change.events and 200 <= response.status_code < 300:
                await body.drain(runtime.config.max_upload_bytes)
                await conn.execute("DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => $1)",
                                   LIFETIME_HOURS)
                await conn.execute(
                    "INSERT INTO idempotency_keys (vendor_id, key, fingerprint, status, media_type, sealed_body, "
                    "event_kind, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "ON CONFLICT (vendor_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
                    "status = EXCLUDED.status, media_type = EXCLUDED.media_type, sealed_body = EXCLUDED.sealed_body, "
                    "event_kind = EXCLUDED.event_kind, event_id = EXCLUDED.event_id, created_at = now()",
                    vendor_id, key, _fingerprint(request, body.digest), response.status_code,
                    response.media_type or "application/json",
                    runtime.master.seal(bytes(response.body), context=_seal_context(vendor_id, key)),
                    change.events[0].kind.value, change.events[0].event_id)
            return response

    honouring_idempotency_key.__name__ = endpoint.__name__
    honouring_idempotency_key.__doc__ = endpoint.__doc__
    return honouring_idempotency_key


def _key(request: Request) -> str | None:
    """The key: an sf-string, or (as clients of other APIs send it) a bare run of visible ASCII."""
    values = [value.decode("latin-1").strip(" \t") for name, value in request.scope["headers"] if name == HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"send one Idempotency-Key header, not {len(values)}")
    quoted = _SF_STRING.fullmatch(values[0])
    key = re.sub(r'\\(["\\])', r"\1", quoted[1]) if quoted else values[0]
    if not (quoted or _BARE.fullmatch(key)) or not 1 <= len(key) <= 255:
        raise BadRequest(f"Idempotency-Key must be 1 to 255 visible ASCII characters, best quoted (RFC 8941 "
                         f"sf-string), e.g. {_EXAMPLE}")
    return key


def _fingerprint(request: Request, body_digest: bytes) -> bytes:
    scope = request.scope
    parts = [scope["method"].encode(), scope["path"].encode(), scope["query_string"],
             request.headers.get("content-type", "").encode("latin-1"), body_digest]
    # The same bytes mean another upload under another Content-Encoding; added only when there is
    # one, so that the fingerprints stored before it counted stay as they were.
    coding = request.headers.get("content-encoding")
    if coding is not None:
        parts.append(coding.encode("latin-1"))
    return hashlib.sha256(b"\0".join(parts)).digest()


def _seal_context(vendor_id: uuid.UUID, key: str) -> bytes:
    return f"idempotency-answer:{vendor_id}:{key}".encode()


class _HashedBody:
    """The request's receive channel, hashing the body as the route reads it (a publish streams it)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk: bytes = message.get("body", b"")
            self._hash.update(chunk)
            self._size += len(chunk)
            self._done = not message.get("more_body", False)
        return message

    async def drain(self, max_bytes: int) -> None:
        """Read what the route left unread (all of it, for a retry), up to `max_bytes`."""
        while not self._done:
            message: dict[str, Any] = await self()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            if self._size > max_bytes:
                raise PayloadTooLarge(f"request bodies are limited to {max_bytes} bytes")

    @property
    def digest(self) -> bytes:
        return self._hash.digest()
