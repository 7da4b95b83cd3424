"""Licences: which member may receive which partitions and columns of a dataset, when, how much, on what terms.

`check()` is the authorisation decision on every delivery. It reads only the in-memory snapshot and
returns a value with its reason (Allowed, or Denied("licence suspended: unpaid invoice")), and that
same reason goes into the problem+json body and the audit event.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from gateway import times
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.members import Member, refusal

# A licence's partitions may be this one value: every partition of the dataset, present and future.
EVERY_PARTITION = "*"


@dataclass(frozen=True, slots=True)
class Licence:
    id: uuid.UUID
    vendor_id: uuid.UUID
    member_id: uuid.UUID
    dataset_id: uuid.UUID
    partitions: tuple[str, ...]
    columns: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None
    records_per_month: int | None
    records_quota_hard: bool
    bytes_per_month: int | None
    bytes_quota_hard: bool
    requests_per_second: float | None
    burst: int | None
    terms_version: int
    accepted_terms: frozenset[int]
    status: str
    status_reason: str
    partition_set: frozenset[str]

    @classmethod
    def from_row(cls, row: asyncpg.Record, accepted: frozenset[int] = frozenset()) -> Licence:
        return cls(row["id"], row["vendor_id"], row["member_id"], row["dataset_id"], tuple(sorted(row["partitions"])),
                   tuple(row["columns"]), row["valid_from"], row["valid_until"], row["records_per_month"],
                   row["records_quota_hard"], row["bytes_per_month"], row["bytes_quota_hard"],
                   row["requests_per_second"], row["burst"], row["terms_version"], accepted, row["status"],
                   row["status_reason"], frozenset(row["partitions"]))

    @property
    def live(self) -> bool:
        return self.status != "revoked"

    @property
    def every_partition(self) -> bool:
        """Granted as "*": every partition the dataset has or will have, resolved at delivery time."""
        return EVERY_PARTITION in self.partition_set

    @property
    def partition_filter(self) -> frozenset[str] | None:
        """The partitions to show of a dataset's versions; None: all of them (datasets.accumulation's convention)."""
        return None if self.every_partition else self.partition_set

    def covers(self, partition: str) -> bool:
        return self.every_partition or partition in self.partition_set

    def partitions_of(self, dataset_partitions: list[str]) -> tuple[str, ...]:
        """The licensed partitions among a dataset's partitions as they are now (sorted)."""
        return tuple(dataset_partitions) if self.every_partition else self.partitions

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "member_id": str(self.member_id), "dataset_id": str(self.dataset_id),
            "partitions": list(self.partitions), "columns": list(self.columns),
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "quotas": {"records_per_month": self.records_per_month, "records_quota_hard": self.records_quota_hard,
                       "bytes_per_month": self.bytes_per_month, "bytes_quota_hard": self.bytes_quota_hard,
                       "requests_per_second": self.requests_per_second, "burst": self.burst},
            "terms_version": self.terms_version, "terms_accepted": self.terms_version in self.accepted_terms,
            "status": self.status, "status_reason": self.status_reason,
        }


@dataclass(frozen=True, slots=True)
class Allowed:
    licence: Licence


@dataclass(frozen=True, slots=True)
class Denied:
    reason: str
    terms_required: bool = False


Decision = Allowed | Denied


def check(licence: Licence, member: Member | None, now: datetime) -> Decision:
    """May the licence's member receive data under it now? Pure: snapshot values in, a decision out."""
    refused = refusal(member)
    if refused is not None:
        return Denied(refused)
    if licence.status == "revoked":
        return Denied(f"licence revoked{_because(licence.status_reason)}")
    if licence.status == "suspended":
        return Denied(f"licence suspended{_because(licence.status_reason)}")
    if now < licence.valid_from:
        return Denied(f"licence not valid before {licence.valid_from.astimezone(UTC).isoformat()}")
    if licence.valid_until is not None and now >= licence.valid_until:
        return Denied(f"licence expired at {licence.valid_until.astimezone(UTC).isoformat()}")
    if licence.terms_version not in licence.accepted_terms:
        return Denied(f"terms version {licence.terms_version} of this licence must be accepted first",
                      terms_required=True)
    return Allowed(licence)


def _because(reason: str) -> str:
    return f": {reason}" if reason else ""


# The fields a vendor sets on grant and may change on amend: each is the SQL column of its name, so
# nothing else may reach the statements that grant and amend build from these names.
SETTABLE = ("partitions", "columns", "valid_from", "valid_until", "records_per_month", "records_quota_hard",
            "bytes_per_month", "bytes_quota_hard", "requests_per_second", "burst")


# A dataset's row with what _validate checks values against: its name, columns and the partitions its
# versions hold (the value `partitions` of dataset rows in grant and amend).
_PARTITIONS_HELD = ("(SELECT coalesce(array_agg(DISTINCT p.partition ORDER BY p.partition), '{}') "
                    "FROM dataset_partitions p WHERE p.dataset_id = d.id) AS held_partitions")


def _validate(values: dict[str, Any], dataset: asyncpg.Record) -> None:
    """Refuse values a licence cannot have, before anything is written: a licence for a partition no version
    holds, or a validity already over, would be accepted without a word and deliver nothing."""
    declared_columns = tuple(c["name"] for c in orjson.loads(dataset["columns"]))
    unknown = sorted(set(values) - set(SETTABLE))
    if unknown:
        raise InvalidInput(f"unknown licence field(s): {', '.join(unknown)}; settable: {', '.join(SETTABLE)}",
                           field=unknown[0])
    if values.get("burst") is not None and not 0 < values["burst"] < 2**31:  # an integer column
        raise InvalidInput("burst must be a whole number from 1 to 2147483647", field="burst")
    if "partitions" in values:
        partitions = values["partitions"]
        if not partitions or any(not p or len(p) > 200 for p in partitions):
            raise InvalidInput("partitions must be a non-empty list of partition values", field="partitions")
        if EVERY_PARTITION in partitions and len(set(partitions)) > 1:
            raise InvalidInput(f'partitions is either ["{EVERY_PARTITION}"] (every partition, present and future) '
                               "or a list of named partitions, not both", field="partitions")
        held = dataset["held_partitions"]
        missing = sorted(set(partitions) - set(held) - {EVERY_PARTITION})
        if missing:
            raise InvalidInput(
                f"no version of dataset {dataset['name']!r} holds partition(s) {', '.join(missing)}; "
                + (f"its partitions are {', '.join(held)}" if held else "it has no published partitions yet")
                + f'; to licence every partition, including those of future versions, give ["{EVERY_PARTITION}"]',
                field="partitions", unknown_partitions=missing, dataset_partitions=list(held))
    if values.get("valid_until") is not None and values["valid_until"] <= times.now():
        raise InvalidInput(f"valid_until {values['valid_until'].isoformat()} is already over: give a time in the "
                           "future, or null for no end (to end a licence now, revoke it)", field="valid_until")
    if "columns" in values:
        unknown = [c for c in values["columns"] if c not in declared_columns]
        if not values["columns"] or unknown:
            raise InvalidInput(
                f"columns must be a non-empty list of the dataset's columns ({', '.join(declared_columns)})"
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""), field="columns")


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def terms_sha256(text: str) -> str:
    """The hex SHA-256 of a terms text's UTF-8 bytes: what a member names when it accepts the text."""
    return _sha256(text).hex()


def check_terms_text(text: str) -> None:
    """Terms are what a member accepts and a termination notice binds it to: blank terms bind it to nothing."""
    if not text.strip():
        raise InvalidInput("the terms text is empty: give the licence terms the member is to accept "
                           "(terms_text in the API, a --terms file on the command line)", field="terms_text")


async def grant(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, member_id: uuid.UUID,
                dataset_id: uuid.UUID, terms_text: str, values: dict[str, Any]) -> Licence:
    """Licence a member of this vendor to a dataset of this vendor."""
    async with writer.change() as change:
        conn = change.conn
        member = await conn.fetchval("SELECT 1 FROM members WHERE id = $1 AND vendor_id = $2", member_id, vendor_id)
        dataset = await conn.fetchrow(f"SELECT d.name, d.columns, {_PARTITIONS_HELD} FROM datasets d "
                                      "WHERE d.id = $1 AND d.vendor_id = $2", dataset_id, vendor_id)
        if member is None:
            raise NotFound("member")
        if dataset is None:
            raise NotFound("dataset")
        _validate(values, dataset)
        check_terms_text(terms_text)
        values = {"valid_from": times.now(), **values}
        licence_id = uuid.uuid4()
        names = ["id", "vendor_id", "member_id", "dataset_id", *values]
        try:
            row = await conn.fetchrow(
                f"INSERT INTO licences ({', '.join(names)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))}) "
                "RETURNING *", licence_id, vendor_id, member_id, dataset_id, *values.values())
        except asyncpg.UniqueViolationError:
            raise Conflict("this member already has a licence for this dataset: amend it instead") from None
        except asyncpg.CheckViolationError as exc:
            raise InvalidInput(f"the licence values are inconsistent ({exc.constraint_name})") from None
        await conn.execute("INSERT INTO licence_terms (licence_id, version, text, sha256) VALUES ($1, 1, $2, $3)",
                           licence_id, terms_text, _sha256(terms_text))
        licence = Licence.from_row(row)
        change.record(actor.event(EventKind.LICENCE_GRANT, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  dataset_id=dataset_id, licence_id=licence_id, terms_version=1,
                                  detail=_audit_detail(licence)))
    return licence


async def amend(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, licence_id: uuid.UUID,
                values: dict[str, Any], terms_text: str | None) -> Licence:
    """Change a licence's scope, validity, quotas or terms; new terms must be accepted again."""
    async with writer.change() as change:
        conn = change.conn
        current = await conn.fetchrow(
            f"SELECT l.*, d.name, d.columns, {_PARTITIONS_HELD} FROM licences l JOIN datasets d ON d.id = l.dataset_id "
            "WHERE l.id = $1 AND l.vendor_id = $2 FOR UPDATE OF l", licence_id, vendor_id)
        if current is None:
            raise NotFound("licence")
        _refuse_if_revoked(current["status"])
        _validate(values, current)
        values = {name: value for name, value in values.items() if not _same(name, value, current[name])}
        terms_version = current["terms_version"]
        if terms_text is not None:
            check_terms_text(terms_text)
            latest = await conn.fetchval("SELECT sha256 FROM licence_terms WHERE licence_id = $1 AND version = $2",
                                         licence_id, terms_version)
            if latest != _sha256(terms_text):
                terms_version += 1
                await conn.execute(
                    "INSERT INTO licence_terms (licence_id, version, text, sha256) VALUES ($1, $2, $3, $4)",
                    licence_id, terms_version, terms_text, _sha256(terms_text))
        if not values and terms_version == current["terms_version"]:
            raise Conflict("nothing to change: the licence already has these values and terms; give at least one "
                           f"of {', '.join(('terms_text', *SETTABLE))} with a new value")
        values = {**values, "terms_version": terms_version}
        assignments = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(values))
        try:
            row = await conn.fetchrow(
                f"UPDATE licences SET {assignments}, updated_at = now() WHERE id = $1 AND vendor_id = $2 RETURNING *",
                licence_id, vendor_id, *values.values())
        except asyncpg.CheckViolationError as exc:
            raise InvalidInput(f"the licence values are inconsistent ({exc.constraint_name})") from None
        licence = await _reloaded(conn, row["id"])
        change.record(actor.event(EventKind.LICENCE_AMEND, Outcome.CHANGE, vendor_id=vendor_id,
                                  member_id=licence.member_id, dataset_id=licence.dataset_id, licence_id=licence_id,
                                  terms_version=terms_version, detail=_audit_detail(licence)))
    return licence


_TRANSITIONS = {
    # action: (allowed from, new status, event kind)
    "suspend": ({"active"}, "suspended", EventKind.LICENCE_SUSPEND),
    "resume": ({"suspended"}, "active", EventKind.LICENCE_RESUME),
    "revoke": ({"active", "suspended"}, "revoked", EventKind.LICENCE_REVOKE),
}


async def set_status(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, licence_id: uuid.UUID, action: str,
                     reason: str) -> Licence:
    allowed_from, status, kind = _TRANSITIONS[action]
    async with writer.change() as change:
        current = await change.conn.fetchval(
            "SELECT status FROM licences WHERE id = $1 AND vendor_id = $2 FOR UPDATE", licence_id, vendor_id)
        if current is None:
            raise NotFound("licence")
        _refuse_if_revoked(current)
        if current not in allowed_from:
            raise Conflict(f"a {current} licence cannot be {status}; it can be "
                           f"{', '.join(a for a, t in _TRANSITIONS.items() if current in t[0]) or 'left as it is'}")
        row = await change.conn.fetchrow(
            "UPDATE licences SET status = $3, status_reason = $4, updated_at = now() WHERE id = $1 AND vendor_id = $2 "
            "RETURNING id", licence_id, vendor_id, status, reason)
        licence = await _reloaded(change.conn, row["id"])
        change.record(actor.event(kind, Outcome.CHANGE, vendor_id=vendor_id, member_id=licence.member_id,
                                  dataset_id=licence.dataset_id, licence_id=licence_id, reason=reason or None))
    return licence


def _refuse_if_revoked(status: str) -> None:
    if status == "revoked":
        raise Conflict("this licence is revoked, and revocation is final: it cannot be amended, suspended or "
                       "resumed; grant the member a new licence instead")


def _same(name: str, value: Any, stored: Any) -> bool:
    """Whether an amended value equals the stored one: lists of partitions and columns as sets."""
    if name in ("partitions", "columns"):
        return set(value) == set(stored)
    return bool(value == stored)


async def _reloaded(conn: asyncpg.Connection, licence_id: uuid.UUID) -> Licence:
    """The licence as it is now in this transaction, with its accepted terms (a row alone does not hold them)."""
    [licence] = await load(conn, [licence_id])
    return licence


def _audit_detail(licence: Licence) -> dict[str, Any]:
    detail = licence.to_json()
    for name in ("id", "member_id", "dataset_id", "terms_accepted", "status_reason"):
        detail.pop(name)
    # Events hold no floats (their canonical form must be exact): a rate is written as text.
    quotas = detail["quotas"]
    if quotas["requests_per_second"] is not None:
        quotas["requests_per_second"] = repr(quotas["requests_per_second"])
    return detail


async def get(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, licence_id: uuid.UUID) -> Licence:
    found = await load(conn, [licence_id])
    if not found or found[0].vendor_id != vendor_id:
        raise NotFound("licence")
    return found[0]


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID,
                          member_id: uuid.UUID | None = None) -> list[Licence]:
    ids = [r["id"] for r in await conn.fetch(
        "SELECT id FROM licences WHERE vendor_id = $1 AND ($2::uuid IS NULL OR member_id = $2) ORDER BY created_at",
        vendor_id, member_id)]
    return await load(conn, ids) if ids else []


async def page_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, after: uuid.UUID | None,
                          limit: int) -> list[Licence]:
    """At most `limit` licences of the vendor, oldest first, those after the licence `after` (keyset pagination)."""
    ids = [r["id"] for r in await conn.fetch(
        "SELECT id FROM licences WHERE vendor_id = $1 AND ($2::uuid IS NULL OR (created_at, id) > "
        "(SELECT created_at, id FROM licences WHERE id = $2 AND vendor_id = $1)) ORDER BY created_at, id LIMIT $3",
        vendor_id, after, limit)]
    return await load(conn, ids) if ids else []


async def load(conn: asyncpg.Pool | asyncpg.Connection, ids: list[uuid.UUID] | None = None) -> list[Licence]:
    rows = await conn.fetch(
        "SELECT l.*, coalesce(array_agg(a.terms_version) FILTER (WHERE a.terms_version IS NOT NULL), '{}') AS accepted "
        "FROM licences l LEFT JOIN terms_acceptances a ON a.licence_id = l.id "
        "WHERE $1::uuid[] IS NULL OR l.id = ANY($1) GROUP BY l.id ORDER BY l.created_at", ids)
    return [Licence.from_row(row, frozenset(row["accepted"])) for row in rows]


async def current_terms(conn: asyncpg.Pool | asyncpg.Connection, licence: Licence) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT text, sha256, created_at FROM licence_terms WHERE licence_id = $1 AND version = $2",
                              licence.id, licence.terms_version)
    return {"licence_id": str(licence.id), "version": licence.terms_version, "text": row["text"],
            "sha256": bytes(row["sha256"]).hex(), "published_at": row["created_at"].isoformat(),
            "accepted": licence.terms_version in licence.accepted_terms}


async def terms_history(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, licence_id: uuid.UUID,
                        version: int | None = None) -> dict[str, Any]:
    """Every terms version of a licence of this vendor (or the one asked for), oldest first, with the text,
    its digest and who accepted it when: what the vendor and its compliance officers can show was agreed."""
    rows = await conn.fetch(
        "SELECT t.version, t.text, t.sha256, t.created_at, a.accepted_at, a.credential_id, l.terms_version AS current "
        "FROM licences l JOIN licence_terms t ON t.licence_id = l.id "
        "LEFT JOIN terms_acceptances a ON a.licence_id = t.licence_id AND a.terms_version = t.version "
        "WHERE l.id = $1 AND l.vendor_id = $2 AND ($3::int IS NULL OR t.version = $3) ORDER BY t.version",
        licence_id, vendor_id, version)
    if not rows:
        if version is not None and await conn.fetchval("SELECT 1 FROM licences WHERE id = $1 AND vendor_id = $2",
                                                       licence_id, vendor_id):
            raise NotFound("terms version", reason=f"licence {licence_id} has no terms version {version}")
        raise NotFound("licence")
    return {"licence_id": str(licence_id), "current_version": rows[0]["current"], "items": [
        {"version": row["version"], "text": row["text"], "sha256": bytes(row["sha256"]).hex(),
         "published_at": row["created_at"].isoformat(),
         "accepted_at": row["accepted_at"].isoformat() if row["accepted_at"] else None,
         "accepted_by_credential_id": str(row["credential_id"]) if row["credential_id"] else None}
        for row in rows]}


async def accept_terms(writer: AuditWriter, actor: Actor, licence: Licence, version: int,
                       sha256: str) -> dict[str, Any]:
    """The member accepts the terms it read, named by version and digest; recorded with the credential.

    Terms amended after the member read them are not what it agreed to: unless the version and digest
    are the licence's current ones, nothing is recorded and the Conflict names the current terms."""
    async with writer.change() as change:
        # FOR SHARE: an amendment of the terms (FOR UPDATE) waits, so what is accepted is still current.
        row = await change.conn.fetchrow(
            "SELECT t.version, t.sha256, l.status FROM licences l JOIN licence_terms t ON t.licence_id = l.id "
            "AND t.version = l.terms_version WHERE l.id = $1 FOR SHARE OF l", licence.id)
        current = bytes(row["sha256"]).hex()
        if row["status"] == "revoked":
            raise Conflict("this licence is revoked: its terms can no longer be accepted")
        if (version, sha256.lower()) != (row["version"], current):
            raise Conflict(f"these are not the licence's current terms (version {row['version']}, SHA-256 "
                           f"{current}): read them again at GET /v1/licences/{licence.id}/terms and accept what "
                           "you read", current_terms_version=row["version"], current_terms_sha256=current,
                           terms=f"/v1/licences/{licence.id}/terms")
        accepted_at = await change.conn.fetchval(
            "INSERT INTO terms_acceptances (licence_id, terms_version, credential_id, terms_sha256) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (licence_id, terms_version) DO UPDATE SET licence_id = EXCLUDED.licence_id "
            "RETURNING accepted_at", licence.id, row["version"], actor.credential_id, row["sha256"])
        change.record(actor.event(EventKind.TERMS_ACCEPT, Outcome.CHANGE, vendor_id=licence.vendor_id,
                                  dataset_id=licence.dataset_id, licence_id=licence.id, terms_version=row["version"],
                                  detail={"terms_sha256": current}))
    return {"licence_id": str(licence.id), "terms_version": row["version"], "terms_sha256": current,
            "accepted_at": accepted_at.isoformat()}
