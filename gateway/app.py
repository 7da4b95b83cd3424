"""The ASGI application: routes, the pure-ASGI middleware stack, and the process lifespan."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gateway import routes_admin, routes_member, routes_ops
from gateway.audit_middleware import AuditMiddleware
from gateway.authentication import ApiKeyAuthenticator, AuthenticationMiddleware
from gateway.config import Config
from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.forwarding import Forwarding
from gateway.problems import handle_gateway_error, problem_response
from gateway.runtime import Runtime
from gateway.types import Receive, Scope, Send

log = logging.getLogger(__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) as problems like every other error."""
    assert isinstance(exc, HTTPException)
    problem: GatewayError = MethodNotAllowed("this method is not allowed here") if exc.status_code == 405 \
        else NotFound("resource")
    response = await handle_gateway_error(request, problem)
    if exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Last resort: a problem body, never a stack trace (the exception is logged, not sent)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(GatewayError("the gateway failed to answer; the failure was logged"))


def build_app(runtime: Runtime) -> Starlette:
    forwarding = Forwarding(runtime.config.trusted_proxies)
    app = Starlette(
        routes=[*routes_ops.routes, *routes_member.routes, *routes_admin.routes],
        middleware=[
            Middleware(AuditMiddleware, writer=runtime.writer, forwarding=forwarding),
            Middleware(AuthenticationMiddleware, snapshot=runtime.snapshot,
                       authenticators=[ApiKeyAuthenticator(runtime.snapshot, forwarding)]),
        ],
        exception_handlers={GatewayError: handle_gateway_error, HTTPException: _http_exception,
                            Exception: _internal_error},
    )
    app.state.runtime = runtime
    return app


class GatewayApp:
    """What uvicorn serves: opens the Runtime at lifespan startup and closes (drains) it at shutdown."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime: Runtime | None = None
        self.app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.app is not None, "the server must run the lifespan protocol"
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.runtime = await Runtime.open(self.config, serving=True)
                except Exception as exc:  # report any start failure to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.app = build_app(self.runtime)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
