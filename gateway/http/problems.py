"""Rendering GatewayErrors as RFC 9457 application/problem+json responses, for routes and middleware alike."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from gateway.context import SCOPE_KEY
from gateway.errors import GatewayError
from gateway.types import Message

PROBLEM_TYPE = "application/problem+json"


def _headers(exc: GatewayError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", PROBLEM_TYPE.encode()), (b"cache-control", b"no-store")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return headers


def problem_messages(exc: GatewayError, extra: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Message, Message]:
    """The two ASGI messages of a problem response, for middleware that answers by itself."""
    body = exc.render()
    headers = [*_headers(exc), (b"content-length", str(len(body)).encode()), *extra]
    return ({"type": "http.response.start", "status": exc.status, "headers": headers},
            {"type": "http.response.body", "body": body})


def problem_response(exc: GatewayError) -> Response:
    return Response(exc.render(), status_code=exc.status, headers={k.decode(): v.decode() for k, v in _headers(exc)})


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    ctx = request.scope.get(SCOPE_KEY)
    if ctx is not None and ctx.reason is None:
        ctx.reason = exc.detail
    return problem_response(exc)
