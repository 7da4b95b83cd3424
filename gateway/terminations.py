"""Terminations: a licence ended with a signed notice, and the member's attestation that its copies are deleted.

Revocation cuts delivery; a termination also leaves evidence of what was ended and what the member must
do, which is what a vendor may later have to show (use of limited provision data against its terms
after the notice). `terminate` revokes the licence and issues the notice in one transaction: the notice
is a JSON document whose RFC 8785 bytes are signed by the current audit key, stored byte for byte and
named by its SHA-256 in the vendor:licence:terminate event. The member, whose credentials still work,
fetches it and answers with one deletion attestation (member:deletion:attest). Evidence bundles carry
both (terminations.jsonl, schemas/audit-format.md §6.1.4).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from gateway import times
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome, canonical, utc_text
from gateway.audit.format import ATTESTATION_TYPE, NOTICE_TYPE
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable

GROUNDS = {
    "contract_end": ("契約期間の満了", "the end of the contract term"),
    "breach": ("利用規約違反", "a breach of the terms"),
    "member_leaving": ("会員の退会", "the member leaving"),
    "other": ("その他", "other grounds"),
}
DEFAULT_ATTESTATION_DAYS = 30
MAX_ATTESTATION_DAYS = 366


@dataclass(frozen=True, slots=True)
class Termination:
    id: uuid.UUID
    vendor_id: uuid.UUID
    licence_id: uuid.UUID
    member_id: uuid.UUID
    grounds: str
    effective_at: datetime
    attestation_due: date
    notice: str          # the signed bytes, as UTF-8 text
    notice_sha256: bytes
    key_id: str
    signature: bytes
    attestation: str | None
    attestation_sha256: bytes | None
    attested_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Termination:
        return cls(row["id"], row["vendor_id"], row["licence_id"], row["member_id"], row["grounds"],
                   row["effective_at"], row["attestation_due"], row["notice"], bytes(row["notice_sha256"]),
                   row["key_id"], bytes(row["signature"]), row["attestation"],
                   None if row["attestation_sha256"] is None else bytes(row["attestation_sha256"]),
                   row["attested_at"])

    def signature_json(self) -> dict[str, Any]:
        return {"algorithm": "Ed25519", "key_id": self.key_id,
                "signature": base64.b64encode(self.signature).decode("ascii"),
                "signed": "the RFC 8785 bytes of notice (notice_sha256)"}

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "licence_id": str(self.licence_id), "member_id": str(self.member_id),
                "grounds": self.grounds, "effective_at": self.effective_at.isoformat(),
                "attestation_due": self.attestation_due.isoformat(),
                "attestation_outstanding": self.attestation is None,
                "notice": orjson.loads(self.notice), "notice_sha256": self.notice_sha256.hex(),
                "signature": self.signature_json(),
                "attestation": None if self.attestation is None else orjson.loads(self.attestation),
                "attestation_sha256": None if self.attestation_sha256 is None else self.attestation_sha256.hex(),
                "attested_at": None if self.attested_at is None else self.attested_at.isoformat()}


def parse_due(text: str | None) -> date | None:
    """An attestation due date as given (API or CLI): a calendar day, YYYY-MM-DD, in Japan."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text) if len(text) == 10 else _raise_due(text)
    except ValueError:
        return _raise_due(text)


def _raise_due(text: str) -> date:
    raise InvalidInput(f"attestation_due {text!r} must be a date such as 2026-05-31 (a day in Japan, JST)",
                       field="attestation_due")


def _obligations(due: date) -> list[dict[str, str]]:
    """What the member must do under the terms once the licence ends: one list for both renderings."""
    return [
        {"code": "stop_use", "ja": "本データの使用を直ちに停止すること。",
         "en": "Stop every use of the data at once."},
        {"code": "delete_copies", "ja": "本データ及びその複製（派生物を含む）を全て削除すること。",
         "en": "Delete every copy of the data, including derived copies."},
        {"code": "attest_deletion",
         "ja": f"{due.isoformat()}（日本時間）までに削除を証明すること（削除証明書の提出）。",
         "en": f"Attest the deletion by {due.isoformat()} (JST) with a deletion attestation."},
    ]


def _notice(termination_id: uuid.UUID, row: asyncpg.Record, effective: datetime, grounds: str, reason: str,
            due: date) -> dict[str, Any]:
    licence_id = str(row["id"])
    jst = times.jst_text(effective)
    ground_ja, ground_en = GROUNDS[grounds]
    obligations = _obligations(due)
    scope = {"partitions": sorted(row["partitions"]), "columns": list(row["columns"]),
             "valid_from": utc_text(row["valid_from"]),
             "valid_until": None if row["valid_until"] is None else utc_text(row["valid_until"])}
    terms_sha256 = bytes(row["terms_sha256"]).hex()
    every = "*" in row["partitions"]  # a licence to every partition, present and future (licences.py)
    partitions_ja = "すべて（将来の版のパーティションを含む）" if every else "、".join(scope["partitions"])
    partitions_en = "every partition, those of later versions included" if every else ", ".join(scope["partitions"])
    text_ja = "\n".join([
        "限定提供データ利用許諾 終了通知書",
        (f"{row['vendor_name']}は、{row['member_name']}（会員ID {row['member_id']}）に対し、データセット"
        f"「{row['dataset_name']}」（ID {row['dataset_id']}）に係るライセンス {licence_id}"
        f"（利用規約 第{row['terms_version']}版、SHA-256 {terms_sha256}）を、{jst}"
        f"（{utc_text(effective)}）をもって終了したことを通知します。"),
        f"対象: パーティション {partitions_ja}、列 {'、'.join(scope['columns'])}",
        f"終了事由: {ground_ja}。理由: {reason}",
        "本データは不正競争防止法第2条第7項の限定提供データです。利用規約に基づき、次の義務を負います。",
        *(f"・{o['ja']}" for o in obligations),
        f"削除証明書は POST /v1/licences/{licence_id}/deletion-attestation により提出してください。",
    ])
    text_en = "\n".join([
        "Notice of termination of a licence to limited provision data",
        (f"{row['vendor_name']} gives notice to {row['member_name']} (member {row['member_id']}) that licence "
        f"{licence_id} to the dataset {row['dataset_name']!r} ({row['dataset_id']}), under terms version "
        f"{row['terms_version']} (SHA-256 {terms_sha256}), ended at {utc_text(effective)} ({jst})."),
        f"Scope: partitions {partitions_en}; columns {', '.join(scope['columns'])}",
        f"Grounds: {ground_en}. Reason: {reason}",
        ("The data is limited provision data under Japan's Unfair Competition Prevention Act art. 2(7). "
        "Under the terms you must:"),
        *(f"- {o['en']}" for o in obligations),
        f"Send the deletion attestation with POST /v1/licences/{licence_id}/deletion-attestation.",
    ])
    # The Japanese text carries the legal meaning, the English is beside it. The document is served as it
    # was signed (RFC 8785: keys in code point order), so a member can check the signature on what it reads.
    return {
        "type": NOTICE_TYPE, "termination_id": str(termination_id),
        "text_ja": text_ja, "text_en": text_en,
        "licence_id": licence_id,
        "vendor": {"id": str(row["vendor_id"]), "name": row["vendor_name"]},
        "member": {"id": str(row["member_id"]), "name": row["member_name"]},
        "dataset": {"id": str(row["dataset_id"]), "name": row["dataset_name"]},
        "scope": scope,
        "effective_at": {"utc": utc_text(effective), "jst": effective.astimezone(times.JST).isoformat()},
        "grounds": grounds, "reason": reason,
        "terms": {"version": row["terms_version"], "sha256": terms_sha256},
        "obligations": obligations,
        "attestation_due": due.isoformat(),
        "attestation_path": f"/v1/licences/{licence_id}/deletion-attestation",
    }


_LICENCE = """
    SELECT l.*, m.name AS member_name, d.name AS dataset_name, v.name AS vendor_name, t.sha256 AS terms_sha256
    FROM licences l JOIN members m ON m.id = l.member_id JOIN datasets d ON d.id = l.dataset_id
    JOIN vendors v ON v.id = l.vendor_id
    JOIN licence_terms t ON t.licence_id = l.id AND t.version = l.terms_version
    WHERE l.id = $1 AND l.vendor_id = $2 FOR UPDATE OF l"""


async def terminate(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, licence_id: uuid.UUID, reason: str,
                    grounds: str = "other", attestation_due: date | None = None) -> Termination:
    """End a licence: revoked at once on every instance (the snapshot hears the licence row change, and
    streams in flight re-check it), with a notice signed by the audit key, in one transaction."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("give the reason for the termination: it is stated in the notice", field="reason")
    if grounds not in GROUNDS:
        raise InvalidInput(f"grounds must be one of {', '.join(GROUNDS)}", field="grounds")
    signer = writer.signer
    if signer is None:
        raise ServiceUnavailable("this gateway has no audit signing key to sign the notice: start it with its "
                                 "master key (GATEWAY_MASTER_KEY)")
    termination_id = uuid.uuid4()
    async with writer.change() as change:
        conn = change.conn
        row = await conn.fetchrow(_LICENCE, licence_id, vendor_id)
        if row is None:
            raise NotFound("licence")
        if row["status"] == "revoked":
            ended = await conn.fetchval("SELECT id FROM terminations WHERE licence_id = $1", licence_id)
            raise Conflict("this licence is terminated already: see GET /v1/admin/terminations/" + str(ended)
                           if ended else "this licence is revoked already: a revoked licence cannot be terminated")

        def notice_at(effective: datetime) -> bytes:
            due = attestation_due or times.jst_day(effective) + timedelta(days=DEFAULT_ATTESTATION_DAYS)
            if not times.jst_day(effective) <= due <= times.jst_day(effective) + timedelta(days=MAX_ATTESTATION_DAYS):
                raise InvalidInput(f"attestation_due must be a day from today to {MAX_ATTESTATION_DAYS} days ahead "
                                   "(JST)", field="attestation_due")
            return canonical(_notice(termination_id, row, effective, grounds, reason, due))

        # Signed with the audit key current now, its row locked until this transaction ends, so the key
        # is valid at the notice's effective time (a rotation waits for the commit).
        key_id, effective, notice, signature = await signer.sign_bytes(conn, notice_at)
        due = date.fromisoformat(orjson.loads(notice)["attestation_due"])
        digest = hashlib.sha256(notice).digest()
        status_reason = f"terminated: {reason}"
        await conn.execute("UPDATE licences SET status = 'revoked', status_reason = $2, updated_at = now() "
                           "WHERE id = $1", licence_id, status_reason)
        await conn.execute(
            "INSERT INTO terminations (id, vendor_id, licence_id, member_id, grounds, effective_at, attestation_due, "
            "notice, notice_sha256, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            termination_id, vendor_id, licence_id, row["member_id"], grounds, effective, due, notice.decode("utf-8"),
            digest, key_id, signature)
        change.record(actor.event(
            EventKind.LICENCE_TERMINATE, Outcome.CHANGE, vendor_id=vendor_id, member_id=row["member_id"],
            dataset_id=row["dataset_id"], licence_id=licence_id, terms_version=row["terms_version"],
            reason=status_reason,
            detail={"termination_id": str(termination_id), "notice_sha256": digest.hex(), "key_id": key_id,
                    "effective_at": utc_text(effective), "grounds": grounds, "attestation_due": due.isoformat()}))
        return Termination.from_row(await conn.fetchrow(_SELECT + " WHERE t.id = $1", termination_id))


async def attest(writer: AuditWriter, actor: Actor, licence_id: uuid.UUID, deleted_at: datetime, deleted: str,
                 statement: str, signatory: str) -> Termination:
    """The member's deletion attestation answering the termination of its licence: one, logged."""
    for name, value in (("deleted", deleted), ("statement", statement), ("signatory", signatory)):
        if not value.strip():
            raise InvalidInput(f"{name} must not be empty: the attestation states what was deleted, that it was, "
                               "and who signs it", field=name)
    async with writer.change() as change:
        conn = change.conn
        row = await conn.fetchrow(_SELECT + " WHERE t.licence_id = $1 AND t.member_id = $2 FOR UPDATE OF t",
                                  licence_id, actor.member_id)
        if row is None:
            raise Conflict("this licence has not been terminated: a deletion attestation answers a termination "
                           "notice (GET /v1/licences/{licence}/termination)")
        if row["attestation"] is not None:
            raise Conflict(f"the deletion for this termination was attested already, at {row['attested_at'].isoformat()}")
        attested_at = times.now()
        if deleted_at > attested_at:
            raise InvalidInput("deleted_at is in the future: attest a deletion once it is done", field="deleted_at")
        document = canonical({
            "type": ATTESTATION_TYPE, "termination_id": str(row["id"]), "licence_id": str(licence_id),
            "member_id": str(row["member_id"]), "notice_sha256": bytes(row["notice_sha256"]).hex(),
            "deleted_at": utc_text(deleted_at), "deleted": deleted, "statement": statement, "signatory": signatory,
            "attested_at": utc_text(attested_at), "credential_id": str(actor.credential_id)})
        digest = hashlib.sha256(document).digest()
        await conn.execute("INSERT INTO deletion_attestations (termination_id, credential_id, attested_at, "
                           "attestation, attestation_sha256) VALUES ($1, $2, $3, $4, $5)",
                           row["id"], actor.credential_id, attested_at, document.decode("utf-8"), digest)
        licence = await conn.fetchrow("SELECT dataset_id, terms_version FROM licences WHERE id = $1", licence_id)
        change.record(actor.event(
            EventKind.DELETION_ATTEST, Outcome.CHANGE, vendor_id=row["vendor_id"], dataset_id=licence["dataset_id"],
            licence_id=licence_id, terms_version=licence["terms_version"],
            detail={"termination_id": str(row["id"]), "attestation_sha256": digest.hex(),
                    "notice_sha256": bytes(row["notice_sha256"]).hex()}))
        return Termination.from_row(await conn.fetchrow(_SELECT + " WHERE t.id = $1", row["id"]))


_SELECT = """
    SELECT t.*, a.attestation, a.attestation_sha256, a.attested_at
    FROM terminations t LEFT JOIN deletion_attestations a ON a.termination_id = t.id"""


async def list_for_vendor(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, *,
                          outstanding: bool = False) -> list[Termination]:
    """The vendor's terminations, oldest first; `outstanding`: those whose attestation has not come."""
    rows = await conn.fetch(_SELECT + " WHERE t.vendor_id = $1 AND (NOT $2 OR a.termination_id IS NULL) "
                            "ORDER BY t.effective_at, t.id", vendor_id, outstanding)
    return [Termination.from_row(row) for row in rows]


async def get(conn: asyncpg.Pool | asyncpg.Connection, vendor_id: uuid.UUID, termination_id: uuid.UUID) -> Termination:
    row = await conn.fetchrow(_SELECT + " WHERE t.id = $1 AND t.vendor_id = $2", termination_id, vendor_id)
    if row is None:
        raise NotFound("termination")
    return Termination.from_row(row)


async def of_licence(conn: asyncpg.Pool | asyncpg.Connection, member_id: uuid.UUID,
                     licence_id: uuid.UUID) -> Termination:
    """The termination of the member's licence (what the member fetches with its own credentials)."""
    row = await conn.fetchrow(_SELECT + " WHERE t.licence_id = $1 AND t.member_id = $2", licence_id, member_id)
    if row is None:
        raise NotFound("termination", reason=f"licence {licence_id} has not been terminated")
    return Termination.from_row(row)
