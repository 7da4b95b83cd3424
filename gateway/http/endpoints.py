"""The thin helpers every route shares: JSON in and out, strict body fields, roles, path ids, and the
response of a streamed delivery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import times
from gateway.audit.events import EventKind, Outcome
from gateway.credentials import Principal
from gateway.delivery import Stream
from gateway.errors import (
    BadRequest,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from gateway.http.context import RequestContext, context
from gateway.http.types import Message, Receive, Scope, Send
from gateway.runtime import Runtime

MAX_JSON_DEPTH = 16
NO_STORE = {"cache-control": "no-store"}
T = TypeVar("T")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={**NO_STORE, **(headers or {})})


class RawResponse(Response):
    """A response whose headers are encoded already (e.g. cached per licence): nothing is re-encoded
    or copied per request but the content length."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]], status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [*raw_headers, (b"content-length", str(len(body)).encode())]


class Direct:
    """A `handler(request) -> Response` as a pure ASGI endpoint, for the member routes on every request's
    path: Starlette wraps a function endpoint in a second exception layer of its own (a send wrapper
    and two closures per request); here an error goes on up to the app's exception middleware, which
    answers it with the same handlers."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class StreamingDelivery(Response):
    """A `delivery.Stream` as an HTTP response: the status line leaves once the authorisation event is
    committed, the body as the stream produces it; the client's disconnect stops the stream."""

    def __init__(self, ctx: RequestContext, stream: Stream, status: int, headers: dict[str, str], *,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.ctx, self.stream, self.status_code, self.cleanup = ctx, stream, status, cleanup
        self.raw_headers = encode_headers(headers)
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = _AsgiTransport(self, send)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            transport.gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await self.stream.run(self.ctx.event(Outcome.ALLOW, self.status_code), transport)
        finally:
            watcher.cancel()
            if self.cleanup is not None:
                self.cleanup()


class _AsgiTransport:
    def __init__(self, response: StreamingDelivery, send: Send) -> None:
        self.response, self.send = response, send
        self.gone = asyncio.Event()

    async def start(self) -> None:
        # The authorisation event is committed: the audit middleware lets the messages through.
        self.response.ctx.audited = True
        await self.send({"type": "http.response.start", "status": self.response.status_code,
                         "headers": self.response.raw_headers})

    async def write(self, chunk: bytes) -> None:
        message: Message = {"type": "http.response.body", "body": chunk, "more_body": True}
        await self.send(message)

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class DerivedCache:
    """Values derived from snapshot objects (licences, datasets), reused while those very objects are current.

    The snapshot replaces an object whenever its row changes (an amended or suspended licence, a new
    version), so comparing identity is the invalidation: a changed licence or dataset always gets freshly
    derived values, and nothing derived from the old object outlives it. The cache only saves work on the
    request path; every decision is still taken per request from the snapshot.
    """

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int = 20_000) -> None:
        self._items: dict[Hashable, tuple[tuple[object, ...], Any]] = {}
        self._limit = limit

    def get(self, key: Hashable, sources: tuple[object, ...], derive: Callable[[], T]) -> T:
        item = self._items.get(key)
        if item is not None:
            held = item[0]
            if len(held) == len(sources) and all(a is b for a, b in zip(held, sources, strict=True)):
                value: T = item[1]
                return value
        value = derive()
        if len(self._items) >= self._limit:
            self._items.clear()  # bounded; rebuilt from the snapshot on the next requests
        self._items[key] = (sources, value)
        return value


# One per process: keys are (purpose, id) tuples.
derived = DerivedCache()


def runtime_of(request: Request) -> Runtime:
    """The process's Runtime, which the app holds: how every route reaches the domain."""
    found: Runtime = request.app.state.runtime
    return found


def principal(request: Request, kind: EventKind, *roles: str) -> Principal:
    """The caller, if its credential kind is one of `roles`; records the audit kind of the request."""
    ctx = context(request.scope)
    ctx.kind = kind
    if ctx.principal is None:
        raise Unauthenticated("this route needs 'Authorization: Bearer <key>'")
    if ctx.principal.kind not in roles:
        raise Forbidden(f"a {ctx.principal.kind} key cannot use this route")
    return ctx.principal


def vendor_of(caller: Principal) -> uuid.UUID:
    assert caller.vendor_id is not None
    return caller.vendor_id


def path_id(request: Request, name: str, what: str) -> uuid.UUID:
    """A path id; a malformed one is as unknown as a well-formed id that does not exist."""
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise NotFound(what) from None


async def read_limited(request: Request, max_bytes: int, refuse: Callable[[], Exception]) -> bytes:
    """The request body, read as it arrives; `refuse()` is raised as soon as it passes `max_bytes`, so an
    oversized body is never held whole."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise refuse()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType("send the body as 'Content-Type: application/json'")
    declared = request.headers.get("content-length")
    # ASCII digits only ("²".isdigit() is true, int() refuses it); twenty of them exceed any limit.
    if declared is not None and declared.isascii() and declared.isdigit() \
            and (len(declared) > 20 or int(declared) > max_bytes):
        raise PayloadTooLarge(f"JSON bodies are limited to {max_bytes} bytes")
    raw = await read_limited(request, max_bytes,
                             lambda: PayloadTooLarge(f"JSON bodies are limited to {max_bytes} bytes"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a JSON body: its type name, whether it must be present, whether null is allowed."""

    type: str  # text, uuid, datetime, integer, number, boolean, text_list, json
    required: bool = False
    nullable: bool = False
    max_length: int = 10_000


def fields(body: Any, spec: dict[str, Field]) -> dict[str, Any]:
    """Validate `body` against `spec`: unknown fields are refused (no mass assignment), values converted."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(spec)}", field=unknown[0])
    missing = [name for name, f in spec.items() if f.required and name not in body]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}", field=missing[0])
    values = {}
    for name, value in body.items():
        f = spec[name]
        if value is None:
            if not f.nullable:
                raise InvalidInput(f"{name} may not be null", field=name)
            values[name] = None
            continue
        values[name] = _convert(name, value, f)
    return values


def _convert(name: str, value: Any, f: Field) -> Any:
    def wrong(expected: str) -> InvalidInput:
        return InvalidInput(f"{name} must be {expected}", field=name)

    if f.type == "text":
        if not isinstance(value, str):
            raise wrong("a string")
        if len(value) > f.max_length:
            raise wrong(f"at most {f.max_length} characters")
        if "\x00" in value:  # PostgreSQL text cannot hold U+0000
            raise wrong("text without NUL (U+0000) characters")
        return value
    if f.type == "text_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 10_000:
            raise wrong("a list of strings")
        if any("\x00" in v for v in value):  # PostgreSQL text cannot hold U+0000
            raise wrong("a list of strings without NUL (U+0000) characters")
        return value
    if f.type == "uuid":
        try:
            return uuid.UUID(value) if isinstance(value, str) else _raise(wrong("an id"))
        except ValueError:
            raise wrong("an id") from None
    if f.type == "datetime":
        if not isinstance(value, str):
            raise wrong("a date-time")
        try:
            return times.parse_moment(value)
        except times.MomentError as exc:
            raise InvalidInput(f"{name} {exc}", field=name) from None
    if f.type == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one kind of number: 551.0 is the whole number 551 (as JSON Schema says)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise wrong("a whole number of 0 or more")
        return value
    if f.type == "number":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e9:
            raise wrong("a positive number")
        return float(value)
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    return value  # "json": validated by the domain


def _raise(exc: Exception) -> Any:
    raise exc
