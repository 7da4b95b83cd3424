"""One exception hierarchy with the HTTP status on the class; one function renders RFC 9457 problems.

Every error a client can see is a GatewayError subclass raised by the domain or HTTP layer, so the
same reason text reaches the problem+json body, the audit event and the CLI's message.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

PROBLEM_BASE = "https://lpd-gateway.dev/problems/"


class GatewayError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, reason: str | None = None,
                 **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions
        # What the audit event records as the reason, when it must say more than the client is told.
        self.reason = reason or detail

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status,
                                "detail": self.detail}
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body

    def render(self, instance: str | None = None) -> bytes:
        return orjson.dumps(self.problem(instance))


class BadRequest(GatewayError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthenticated(GatewayError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="lpd-gateway"'}, **extensions)


class Forbidden(GatewayError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(GatewayError):
    """The same body whether the object is missing or belongs to someone else: no existence leak."""

    status, slug, title = 404, "not-found", "Not found"

    def __init__(self, what: str, reason: str | None = None) -> None:
        super().__init__(f"no such {what}", reason=reason)


class MethodNotAllowed(GatewayError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class NotAcceptable(GatewayError):
    status, slug, title = 406, "not-acceptable", "Not acceptable"


class Conflict(GatewayError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(GatewayError):
    """What was asked for existed and was taken away for good (a withdrawn version): starting again helps,
    retrying does not."""

    status, slug, title = 410, "gone", "Gone"


class PayloadTooLarge(GatewayError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(GatewayError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidInput(GatewayError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class TooManyRequests(GatewayError):
    status, slug, title = 429, "too-many-requests", "Too many requests"


class ServiceUnavailable(GatewayError):
    status, slug, title = 503, "unavailable", "Service unavailable"


def all_error_types() -> list[type[GatewayError]]:
    """Every problem type the gateway can answer with (the docs test checks each is documented)."""
    found: list[type[GatewayError]] = [GatewayError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return found
