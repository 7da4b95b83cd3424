"""Who is acting: the principal behind a request or a CLI command, and the audit events it causes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.events import AuditEvent, EventKind, Outcome


@dataclass(frozen=True, slots=True)
class RequestInfo:
    request_id: str
    method: str
    path: str
    client: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    """`kind` is a credential kind (operator, vendor, compliance, member, sharing) or "cli"."""

    kind: str
    vendor_id: UUID | None = None
    member_id: UUID | None = None
    credential_id: UUID | None = None
    request: RequestInfo | None = None

    def event(self, kind: EventKind, outcome: Outcome, **fields: Any) -> AuditEvent:
        event = AuditEvent(kind=kind, outcome=outcome, credential_id=self.credential_id, actor=self.kind,
                           vendor_id=self.vendor_id, member_id=self.member_id)
        if self.request is not None:
            event.request_id = self.request.request_id
            event.method = self.request.method
            event.path = self.request.path
            event.client = self.request.client
            event.user_agent = self.request.user_agent
        for name, value in fields.items():
            setattr(event, name, value)
        return event


def cli_actor(vendor_id: UUID | None = None) -> Actor:
    return Actor(kind="cli", vendor_id=vendor_id)
