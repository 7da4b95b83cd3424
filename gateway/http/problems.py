"""Rendering GatewayErrors, for routes and middleware alike: RFC 9457 application/problem+json, or under
/delta-sharing the protocol's own `{"errorCode", "message"}`.

One renderer, so that the same reason reaches the body in either form, the audit event and the CLI.
The Delta Sharing connector retries 429 and 5xx, so its clients see the codes of the reference
server (PROTOCOL.md), plus QUOTA_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.delivery import TermsNotAccepted
from gateway.errors import GatewayError
from gateway.http.context import SCOPE_KEY
from gateway.http.types import Message

PROBLEM_TYPE = "application/problem+json"
SHARING_PREFIX = "/delta-sharing"

# The protocol's error codes (those of the reference server) for our problem types.
_SHARING_CODES = {"bad-request": "INVALID_PARAMETER_VALUE", "unauthenticated": "UNAUTHENTICATED",
                  "forbidden": "PERMISSION_DENIED", "not-found": "RESOURCE_DOES_NOT_EXIST",
                  "gone": "RESOURCE_DOES_NOT_EXIST",
                  "method-not-allowed": "UNSUPPORTED_OPERATION", "not-acceptable": "UNSUPPORTED_OPERATION",
                  "conflict": "INVALID_PARAMETER_VALUE", "payload-too-large": "MALFORMED_REQUEST",
                  "unsupported-media-type": "MALFORMED_REQUEST", "invalid-input": "INVALID_PARAMETER_VALUE",
                  "too-many-requests": "RESOURCE_EXHAUSTED", "unavailable": "TEMPORARILY_UNAVAILABLE",
                  "internal-error": "INTERNAL_ERROR"}


def is_sharing_path(path: str) -> bool:
    return path == SHARING_PREFIX or path.startswith(SHARING_PREFIX + "/")


def _rendered(exc: GatewayError, path: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if is_sharing_path(path):
        message = exc.detail
        terms = exc.extensions.get("terms")
        if terms:
            message += f": read them at {terms} and accept them with POST {terms.removesuffix('/terms')}/accept"
        code = exc.extensions.get("error_code") or _SHARING_CODES.get(exc.slug, "INTERNAL_ERROR")
        body, media_type = orjson.dumps({"errorCode": code, "message": message}), b"application/json"
    else:
        body, media_type = exc.render(), PROBLEM_TYPE.encode()
    headers = [(b"content-type", media_type), (b"cache-control", b"no-store")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return body, headers


def problem_messages(exc: GatewayError, path: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Message, Message]:
    """The two ASGI messages of an error response, for middleware that answers by itself."""
    body, headers = _rendered(exc, path)
    headers += [(b"content-length", str(len(body)).encode()), *extra]
    return ({"type": "http.response.start", "status": exc.status, "headers": headers},
            {"type": "http.response.body", "body": body})


def problem_response(exc: GatewayError, path: str) -> Response:
    body, headers = _rendered(exc, path)
    return Response(body, status_code=exc.status, headers={k.decode(): v.decode() for k, v in headers})


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    ctx = request.scope.get(SCOPE_KEY)
    if ctx is not None and ctx.reason is None:
        ctx.reason = exc.reason
    if isinstance(exc, TermsNotAccepted):
        # The member is told where the terms are (RFC 8288 link), in the body and the headers.
        terms = str(request.url_for("licence_terms", licence=str(exc.licence.id)))
        exc.extensions["terms"] = terms
        exc.headers["Link"] = f'<{terms}>; rel="terms-of-service"'
    return problem_response(exc, request.scope["path"])
