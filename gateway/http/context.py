"""What one request carries through the middleware and the routes: who asked and what to audit.

The audit middleware creates it, authentication fills in the principal, the route fills in what was
asked and delivered, and the audit middleware turns it into the request's audit event.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.actors import Actor, RequestInfo
from gateway.audit.events import AuditEvent, EventFacts, EventKind, Outcome, new_event_id
from gateway.credentials import IPAddress, Principal
from gateway.http.types import Scope
from keys.apikeys import redact

SCOPE_KEY = "gateway.context"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    method: str
    path: str
    client: IPAddress | None
    user_agent: str | None
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    # What the route decided, for the audit event.
    kind: EventKind = EventKind.REQUEST_OTHER
    reason: str | None = None
    facts: EventFacts = field(default_factory=EventFacts)
    # True once the route has committed the request's event itself (administrative changes, streams).
    audited: bool = False
    # The console user behind a console request (they act as a person, not with a key).
    person: Actor | None = None
    event_id: uuid.UUID = field(default_factory=new_event_id)

    @classmethod
    def from_scope(cls, scope: Scope, client: IPAddress | None) -> RequestContext:
        request_id = None
        user_agent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                # A client's id is kept only if harmless: it ends up in evidence and logs.
                request_id = text if _REQUEST_ID.match(text) and redact(text) == text else None
            elif name == b"user-agent":
                user_agent = redact(value.decode("latin-1")[:512])
        return cls(request_id or secrets.token_hex(12), scope["method"], redact(scope["path"]), client, user_agent)

    @property
    def request_info(self) -> RequestInfo:
        return RequestInfo(self.request_id, self.method, self.path, None if self.client is None else _text(self.client),
                           self.user_agent)

    @property
    def actor(self) -> Actor:
        if self.person is not None:
            return dataclasses.replace(self.person, request=self.request_info)
        credential = self.principal.credential if self.principal else None
        return Actor(kind=credential.kind.value if credential else "anonymous",
                     vendor_id=credential.vendor_id if credential else None,
                     member_id=credential.member_id if credential else None,
                     credential_id=credential.id if credential else None, request=self.request_info)

    def event(self, outcome: Outcome, status: int, **fields: Any) -> AuditEvent:
        """The request's audit event, with what the route decided (`facts`)."""
        return self.actor.event(self.kind, outcome, self.facts, reason=self.reason, event_id=self.event_id,
                                status=status, **fields)


def context(scope: Scope) -> RequestContext:
    ctx: RequestContext = scope[SCOPE_KEY]
    return ctx


# Parsed peer addresses and their text, by the text the server gives: parsing is a few µs per request,
# and a server sees the same few clients again and again. Bounded: cleared when full.
_PEERS: dict[str, IPAddress | None] = {}
_TEXTS: dict[IPAddress, str] = {}
_PEERS_MAX = 65_536


def peer_address(scope: Scope) -> IPAddress | None:
    client = scope.get("client")
    if not client:
        return None
    host = client[0]
    try:
        return _PEERS[host]
    except KeyError:
        pass
    try:
        address: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if len(_PEERS) >= _PEERS_MAX:
        _PEERS.clear()
    _PEERS[host] = address
    return address


def _text(address: IPAddress) -> str:
    try:
        return _TEXTS[address]
    except KeyError:
        if len(_TEXTS) >= _PEERS_MAX:
            _TEXTS.clear()
        text = _TEXTS[address] = str(address)
        return text
