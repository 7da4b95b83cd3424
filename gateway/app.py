"""The ASGI application: routes, the pure-ASGI middleware stack, and the process lifespan."""

from __future__ import annotations

import gc
import logging
import os
import signal

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from gateway import access_tokens, oauth
from gateway.config import Config
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, ServiceUnavailable
from gateway.http import admin_api, audit_api, console, member_api, oauth_api, openapi, ops, sharing_api
from gateway.http.audit_middleware import AuditMiddleware
from gateway.http.authentication import ApiKeyAuthenticator, AuthenticationMiddleware, JwtAuthenticator
from gateway.http.forwarding import Forwarding
from gateway.http.problems import handle_gateway_error, problem_response
from gateway.http.types import Receive, Scope, Send
from gateway.http.witness_api import build_witness_app
from gateway.runtime import Runtime
from gateway.witness import Witness

log = logging.getLogger(__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) as problems like every other error."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/console/"):  # a person's browser: a page, the same as a missing object's
        return console.error_page(request, exc.status_code if exc.status_code == 405 else 404, *console.NOT_FOUND)
    problem: GatewayError = MethodNotAllowed("this method is not allowed here") if exc.status_code == 405 \
        else NotFound("resource")
    response = await handle_gateway_error(request, problem)
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only; a path served by several
        # routes (GET and POST /v1/admin/members) must name them all (RFC 9110 §15.5.6).
        allowed = {method for route in request.app.routes if isinstance(route, Route)
                   and route.matches(request.scope)[0] != Match.NONE for method in route.methods or ()}
        response.headers["Allow"] = ", ".join(m for m in _METHOD_ORDER if m in allowed)
    return response


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# A database that went away mid-request is the deployment failing, not the gateway: 503, never data.
DATABASE_UNREACHABLE = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.OperatorInterventionError, OSError, TimeoutError)


async def _database_unreachable(request: Request, exc: Exception) -> Response:
    log.warning("database unreachable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return await handle_gateway_error(request, ServiceUnavailable(
        "the database is unreachable; nothing was delivered. Retry in a few seconds.", headers={"Retry-After": "2"}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Last resort: a problem body, never a stack trace (the exception is logged, not sent)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(GatewayError("the gateway failed to answer; the failure was logged"), request.scope["path"])


def build_app(runtime: Runtime) -> Starlette:
    config = runtime.config
    forwarding = Forwarding(config.trusted_proxies)
    jwt_authenticator = JwtAuthenticator(runtime.snapshot, access_tokens.issuer(config), access_tokens.audience(config),
                                         config.token_ttl_seconds)
    app = Starlette(
        routes=[*ops.routes, *member_api.routes, *admin_api.routes, *oauth_api.routes,
                *sharing_api.routes, *audit_api.routes, *openapi.routes, *console.routes],
        middleware=[
            Middleware(AuditMiddleware, writer=runtime.writer, forwarding=forwarding),
            Middleware(AuthenticationMiddleware, snapshot=runtime.snapshot,
                       authenticators=[ApiKeyAuthenticator(runtime.snapshot, forwarding), jwt_authenticator],
                       backoff=runtime.backoff),
        ],
        exception_handlers={GatewayError: handle_gateway_error, HTTPException: _http_exception,
                            **{error: _database_unreachable for error in DATABASE_UNREACHABLE},
                            Exception: _internal_error},
    )
    app.state.runtime = runtime
    app.state.token_server = oauth.TokenServer(runtime.snapshot, config)
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

    def stopping(self) -> None:
        """The server was told to stop: running streams end now, recorded, while the server waits for
        its connections (uvicorn's graceful timeout), so that their stream-end events are written and
        their leases returned before the process exits."""
        if self.runtime is not None:
            self.runtime.deliveries.stopping = True

    @staticmethod
    def _ended() -> None:
        """Another instance ended this process's log (it took the process for dead): nothing more can be
        written, so stop, and let the supervisor start a new process with a new log."""
        os.kill(os.getpid(), signal.SIGTERM)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.runtime = await Runtime.open(self.config, serving=True, on_ended=self._ended)
                except Exception as exc:  # noqa: BLE001 - any start failure is reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.app = build_app(self.runtime)
                # What start loaded (the snapshot above all) lives as long as the process: move it out of
                # the cyclic GC's reach, or every full collection walks it (loadtests/README.md: with 10,000
                # keys in the snapshot, pages cost a fifth more CPU without this).
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def witness_app(witness: Witness) -> Starlette:
    """What `gateway witness serve` serves: the tlog-witness interface of gateway/witness.py."""
    return build_witness_app(witness)
