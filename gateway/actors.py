"""Who is acting: the principal behind a request or a CLI command, and the audit events it causes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.audit.events import AuditEvent, EventFacts, EventKind, Outcome


@dataclass(frozen=True, slots=True)
class RequestInfo:
    request_id: str
    method: str
    path: str
    client: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    """`kind` is a credential kind (operator, vendor, compliance, member, sharing) or "cli".

    `credential_label` is the acting key's label, for the admin API: a vendor may hold several admin keys,
    and its events say which one acted by its name as well as its id (detail.actor_label,
    schemas/audit-format.md §2.1.2). None elsewhere: member deliveries do not carry it.
    """

    kind: str
    vendor_id: UUID | None = None
    member_id: UUID | None = None
    credential_id: UUID | None = None
    request: RequestInfo | None = None
    credential_label: str | None = None

    def event(self, kind: EventKind, outcome: Outcome, facts: EventFacts | None = None, **fields: Any) -> AuditEvent:
        """The audit event of what this actor did: the one place an event is built (API, CLI, streams)."""
        known: dict[str, Any] = {"credential_id": self.credential_id, "actor": self.kind, "vendor_id": self.vendor_id,
                                 "member_id": self.member_id}
        request = self.request
        if request is not None:
            known.update(request_id=request.request_id, method=request.method, path=request.path,
                         client=request.client, user_agent=request.user_agent)
        event = AuditEvent(kind, outcome, **(known | fields if fields else known))
        if facts is not None:
            facts.fill(event)
        if self.credential_label is not None:
            event.detail = {**(event.detail or {}), "actor_label": self.credential_label}
        return event


def cli_actor(vendor_id: UUID | None = None) -> Actor:
    return Actor(kind="cli", vendor_id=vendor_id)
