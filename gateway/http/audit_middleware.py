"""Pure ASGI middleware that holds every response until its audit event is committed.

The route's response start and body wait here; the event (with the SHA-256 and size of the body) goes
to the group commit, and only after COMMIT do the status line and the bytes leave. If the event cannot
be committed, the held response is dropped and a 503 goes out instead: no data without a record.

Routes that stream, and administrative changes that commit their event in their own transaction,
mark the context `audited`, and their messages then pass straight through.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from gateway import metrics
from gateway.audit.events import Outcome
from gateway.audit.writer import AuditUnavailable, AuditWriter
from gateway.errors import GatewayError
from gateway.http.context import SCOPE_KEY, RequestContext, peer_address
from gateway.http.forwarding import Forwarding
from gateway.http.problems import problem_messages
from gateway.http.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Probes and scrapes are not requests for data; auditing them would bury the evidence in noise.
UNAUDITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def outcome_for(status: int) -> Outcome:
    if status < 400:
        return Outcome.ALLOW
    if status in (401, 403, 404, 429):
        return Outcome.DENY
    if status >= 500:
        return Outcome.ERROR
    return Outcome.INVALID


class AuditMiddleware:
    def __init__(self, app: ASGIApp, writer: AuditWriter, forwarding: Forwarding) -> None:
        self.app = app
        self.writer = writer
        self.forwarding = forwarding
        # gateway_responses_total's children by (status, outcome): labels() costs more than inc().
        self._counters: dict[tuple[int, Outcome], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        # Without trusted proxies the client is the peer (Forwarding.client_address's answer), parsed once
        # per peer address instead of on every request.
        ctx = RequestContext.from_scope(scope, self.forwarding.client_address(scope)
                                        if self.forwarding.trusted_proxies else peer_address(scope))
        scope[SCOPE_KEY] = ctx
        held: Message | None = None
        common = [(b"x-request-id", ctx.request_id.encode()), (b"audit-event", str(ctx.event_id).encode()),
                  (b"x-content-type-options", b"nosniff")]

        async def send_after_commit(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *common]
                if ctx.audited:
                    await send(message)
                else:
                    held = message
                return
            if held is None:  # the route committed its own event: pass through
                await send(message)
                return
            start, held = held, None
            if message.get("more_body", False):
                raise RuntimeError(f"{ctx.path}: a streamed response must commit its own audit event first")
            body: bytes = message.get("body", b"")
            event = ctx.event(outcome_for(start["status"]), start["status"])
            if ctx.facts.records is not None:  # a delivery: the event names exactly what was sent
                event.bytes = len(body)
                event.sha256 = hashlib.sha256(body).hexdigest()
                event.complete = True
            try:
                await self.writer.commit(event)
            except AuditUnavailable as exc:
                start, message = problem_messages(exc, scope["path"], common)
            self._count(start["status"], event.outcome)
            await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_after_commit)
        except Exception as exc:
            if held is not None or not ctx.audited:
                ctx.reason = f"internal error: {type(exc).__name__}"
                await self._commit_quietly(ctx, 500)
            raise

    def _count(self, status: int, outcome: Outcome) -> None:
        counter = self._counters.get((status, outcome))
        if counter is None:
            counter = metrics.RESPONSES.labels(f"{status // 100}xx", outcome.value)
            self._counters[(status, outcome)] = counter
        counter.inc()

    async def _commit_quietly(self, ctx: RequestContext, status: int) -> None:
        try:
            await self.writer.commit(ctx.event(Outcome.ERROR, status))
        except GatewayError:
            log.error("request %s failed and its audit event could not be committed", ctx.request_id)

