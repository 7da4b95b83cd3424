"""Audit events: their stable kinds, their fields and their canonical bytes.

An event's canonical form is RFC 8785 (JSON Canonicalization Scheme) JSON. Events hold only
strings, integers, booleans, nulls, lists and objects with ASCII keys, and for that subset
orjson with sorted keys emits exactly the RFC 8785 bytes (tests/audit/test_events.py proves it against
the `rfc8785` reference over generated events) at a fraction of the cost — this is on every
request's path.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import times

FORMAT_VERSION = 1


class EventKind(enum.StrEnum):
    """Stable tags `subject:object:action`; documented in schemas/audit-format.md. Never renamed."""

    # Member requests (deliveries and the reads around them).
    DATASETS_LIST = "member:datasets:list"
    DATASET_READ = "member:dataset:read"
    RECORDS_DELIVER = "member:records:deliver"
    RECORDS_STREAM_END = "member:records:stream-end"
    RECORDS_STREAM_PROGRESS = "member:records:stream-progress"
    USAGE_READ = "member:usage:read"
    TERMS_READ = "member:terms:read"
    TERMS_ACCEPT = "member:terms:accept"
    RECEIPT_READ = "member:receipt:read"
    TERMINATION_READ = "member:termination:read"  # a terminated licence's notice, fetched by its member
    DELETION_ATTEST = "member:deletion:attest"    # the member's deletion attestation answering the notice
    # Authentication outcomes that never reached a route.
    AUTH_REJECT = "auth:credential:reject"
    # Vendor administration (each one a change, audited in the change's own transaction).
    DATASET_CREATE = "vendor:dataset:create"
    DATASET_AMEND = "vendor:dataset:amend"
    VERSION_PUBLISH = "vendor:version:publish"
    VERSION_WITHDRAW = "vendor:version:withdraw"
    MEMBER_CREATE = "vendor:member:create"
    MEMBER_REVOKE = "vendor:member:revoke"
    MEMBER_SUSPEND = "vendor:member:suspend"
    MEMBER_RESUME = "vendor:member:resume"
    MEMBER_AMEND = "vendor:member:amend"
    LICENCE_GRANT = "vendor:licence:grant"
    LICENCE_AMEND = "vendor:licence:amend"
    LICENCE_SUSPEND = "vendor:licence:suspend"
    LICENCE_RESUME = "vendor:licence:resume"
    LICENCE_REVOKE = "vendor:licence:revoke"
    LICENCE_TERMINATE = "vendor:licence:terminate"  # revoked with a signed termination notice
    KEY_ISSUE = "vendor:key:issue"
    KEY_REVOKE = "vendor:key:revoke"
    VENDOR_CREATE = "operator:vendor:create"
    # Reads by vendor admins and compliance officers.
    ADMIN_READ = "vendor:admin:read"
    AUDIT_READ = "compliance:audit:read"
    AUDIT_EXPORT_STREAM_END = "compliance:audit-export:stream-end"
    # The web console (issue 18): its people, their sign-ins and the pages they read.
    USER_CREATE = "vendor:user:create"
    USER_SUSPEND = "vendor:user:suspend"
    USER_RESUME = "vendor:user:resume"
    CONSOLE_PASSWORD = "console:session:password"  # the password was right; the second factor is awaited
    CONSOLE_SIGN_IN = "console:session:sign-in"
    CONSOLE_SIGN_IN_REJECT = "console:session:reject"
    CONSOLE_SIGN_OUT = "console:session:sign-out"
    CONSOLE_TOTP_ENROL = "console:totp:enrol"
    CONSOLE_PAGE_READ = "console:page:read"
    # Anything else that reached the gateway (unknown paths, methods): still evidence of access.
    REQUEST_OTHER = "request:other:reject"
    # OAuth 2.0 client credentials and the keyring (issue 5).
    OAUTH_TOKEN_ISSUE = "oauth:token:issue"
    OAUTH_METADATA_READ = "oauth:metadata:read"
    OAUTH_CLIENT_CREATE = "vendor:oauth-client:create"
    OAUTH_CLIENT_REVOKE = "vendor:oauth-client:revoke"
    KEYRING_CREATE = "operator:keyring:create"  # the first key of a purpose (audit: the key history's start)
    KEYRING_ROTATE = "operator:keyring:rotate"
    KEYRING_RETIRE = "operator:keyring:retire"
    # Delta Sharing (issue 9): catalogue, table reads and queries, file deliveries, profiles.
    SHARING_LIST = "member:sharing:list"
    SHARING_TABLE_READ = "member:sharing-table:read"
    SHARING_QUERY = "member:sharing-table:query"
    SHARING_FILE_DELIVER = "member:sharing-file:deliver"
    SHARING_FILE_STREAM_END = "member:sharing-file:stream-end"
    SHARING_FILE_STREAM_PROGRESS = "member:sharing-file:stream-progress"
    SHARING_PROFILE_ISSUE = "member:sharing-profile:issue"
    # The evidence API: checkpoints for any authenticated caller, public keys for anyone.
    CHECKPOINT_READ = "audit:checkpoint:read"
    TILE_READ = "audit:tile:read"  # a log's checkpoint or a hash tile in the tlog-tiles layout
    AUDIT_KEYS_READ = "audit:keys:read"
    # The API description (GET /openapi.json): public, like the OAuth metadata.
    OPENAPI_READ = "api:openapi:read"


# The kinds written for each request of members' clients, monitors and probes: nearly all of a log. The
# console's audit search finds the other kinds (changes, sign-ins, the evidence API's reads) through an
# index that leaves these out (audit_events_vendor_rare_kind_at, schemas/migrations/0020_audit_search.sql,
# whose predicate lists exactly these, sorted), so the audit writer keeps one index less per delivery.
PER_REQUEST_KINDS = tuple(sorted({
    EventKind.DATASETS_LIST, EventKind.DATASET_READ, EventKind.RECORDS_DELIVER, EventKind.RECORDS_STREAM_END,
    EventKind.RECORDS_STREAM_PROGRESS, EventKind.USAGE_READ, EventKind.TERMS_READ, EventKind.RECEIPT_READ,
    EventKind.TERMINATION_READ, EventKind.AUTH_REJECT, EventKind.REQUEST_OTHER, EventKind.OAUTH_TOKEN_ISSUE,
    EventKind.OAUTH_METADATA_READ, EventKind.SHARING_LIST, EventKind.SHARING_TABLE_READ, EventKind.SHARING_QUERY,
    EventKind.SHARING_FILE_DELIVER, EventKind.SHARING_FILE_STREAM_END, EventKind.SHARING_FILE_STREAM_PROGRESS,
    EventKind.CHECKPOINT_READ, EventKind.TILE_READ, EventKind.AUDIT_KEYS_READ, EventKind.OPENAPI_READ,
    EventKind.CONSOLE_PAGE_READ}))
# Those partial indexes' predicates as SQL, for the queries that mean to use them.
RARE_KIND_SQL = "kind NOT IN (" + ", ".join(f"'{kind}'" for kind in PER_REQUEST_KINDS) + ")"
NOT_ALLOWED_SQL = "outcome <> 'allow'"


class Outcome(enum.StrEnum):
    ALLOW = "allow"      # delivered or read as asked
    CHANGE = "change"    # an administrative change committed
    DENY = "deny"        # refused: authentication, licence, quota, scope
    INVALID = "invalid"  # refused: malformed request
    ERROR = "error"      # the gateway failed


def new_event_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562 §5.7): milliseconds since the epoch, then 74 random bits.

    Time-ordered ids make the audit log's event-id index grow at its right edge, as the log itself
    does; random (v4) ids would touch a random page of it per event, and after every PostgreSQL
    checkpoint write each such page whole into the WAL again.
    """
    random = int.from_bytes(os.urandom(10))
    return uuid.UUID(int=(time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (random >> 68) << 64
                     | 0b10 << 62 | random & (1 << 62) - 1)


def utc_text(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, the only time format inside events."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # strftime("%Y-%m-%dT%H:%M:%S.%fZ")'s bytes; %-formatting the fields takes a quarter of its time and
    # half of isoformat's (every event's time is formatted on the writer's path).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - the fast one, see above
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond)


@dataclass(slots=True)
class AuditEvent:
    kind: EventKind
    outcome: Outcome
    reason: str | None = None
    at: datetime = field(default_factory=times.now)
    event_id: uuid.UUID = field(default_factory=new_event_id)
    request_id: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    client: str | None = None
    user_agent: str | None = None
    credential_id: uuid.UUID | None = None
    actor: str | None = None            # credential kind, or "cli" for the command line
    vendor_id: uuid.UUID | None = None
    member_id: uuid.UUID | None = None
    dataset_id: uuid.UUID | None = None
    licence_id: uuid.UUID | None = None
    terms_version: int | None = None
    versions: list[int] | None = None
    partitions: list[str] | None = None
    records: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    complete: bool | None = None
    detail: dict[str, Any] | None = None
    # Not in the entry: what earlier events of the same stream already counted (records, bytes), so that
    # usage adds only the difference (a stream's usage is its last event's delivery; §2.1.1).
    metered_before: tuple[int, int] = (0, 0)

    def body(self, log_id: str, seq: int, instance: str) -> dict[str, Any]:
        """The event as the JSON object that is canonicalised and hashed (schemas/audit-event.schema.json)."""
        return {
            "v": FORMAT_VERSION,
            "log": log_id,
            "seq": seq,
            "instance": instance,
            "event_id": str(self.event_id),
            "at": utc_text(self.at),
            "kind": self.kind.value,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "request": None if self.request_id is None else {
                "id": self.request_id, "method": self.method, "path": self.path, "status": self.status,
                "client": self.client, "user_agent": self.user_agent,
            },
            "actor": {"credential_id": _text(self.credential_id), "kind": self.actor},
            "vendor_id": _text(self.vendor_id),
            "member_id": _text(self.member_id),
            "dataset_id": _text(self.dataset_id),
            "licence_id": _text(self.licence_id),
            "terms_version": self.terms_version,
            "versions": self.versions,
            "partitions": self.partitions,
            "delivery": None if self.records is None and self.bytes is None else {
                "records": self.records, "bytes": self.bytes, "sha256": self.sha256, "complete": self.complete,
            },
            "detail": self.detail,
        }


@dataclass(slots=True)
class EventFacts:
    """What a request's audit event says beyond who asked: its subject, what it delivered, details.

    Filled in by the domain as it decides (the delivery service names the licence before it checks
    quotas, so a refusal midway still names it), read once when the event is built. A request that
    sets `records` delivered something: its event carries the body's size and SHA-256.
    """

    # Who a refused credential belongs to, when the credential was recognised but not accepted.
    credential_id: uuid.UUID | None = None
    vendor_id: uuid.UUID | None = None
    member_id: uuid.UUID | None = None
    dataset_id: uuid.UUID | None = None
    licence_id: uuid.UUID | None = None
    terms_version: int | None = None
    partitions: list[str] | None = None
    versions: list[int] | None = None
    records: int | None = None
    detail: dict[str, Any] | None = None

    def refused(self, credential_id: uuid.UUID, vendor_id: uuid.UUID | None, member_id: uuid.UUID | None) -> None:
        """Name the owner of a credential that was recognised (its secret was right) and refused."""
        self.credential_id, self.vendor_id, self.member_id = credential_id, vendor_id, member_id

    def note(self, **detail: Any) -> None:
        """Add to the event's detail."""
        self.detail = {**(self.detail or {}), **detail}

    def fill(self, event: AuditEvent) -> None:
        for name in _FACTS:
            value = getattr(self, name)
            if value is not None:
                setattr(event, name, value)


_FACTS = tuple(EventFacts.__slots__)


# The text of the ids events name again and again (vendors, members, datasets, licences, credentials),
# keyed by their integer: str(UUID) runs Python code (0.5 µs), and an event names five of them.
# Bounded: cleared when full. Event ids are unique, so they are not kept here.
_ID_TEXTS: dict[int, str] = {}
_ID_TEXTS_MAX = 65_536


def _text(value: uuid.UUID | None) -> str | None:
    if value is None:
        return None
    key = value.int
    text = _ID_TEXTS.get(key)
    if text is None:
        if len(_ID_TEXTS) >= _ID_TEXTS_MAX:
            _ID_TEXTS.clear()
        text = _ID_TEXTS[key] = str(value)
    return text


def canonical(body: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of an event body (see the module docstring for why orjson is exact here)."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
