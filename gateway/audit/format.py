"""The evidence format, as schemas/audit-format.md specifies it: what the writer signs, the exporter
writes and the verifier reads.

Checkpoints are C2SP tlog-checkpoint signed notes over a log's Merkle root at a tree size:

    lpd-gateway/<log_id>
    <tree size>
    <base64 root hash>
    signed-at <RFC 3339 UTC time, microseconds>

The extension line is signed with the rest, so a verifier can tell whether the key was valid when it
signed (key rotation). Nothing here touches a database or the network: the offline verifier runs on
this module, gateway/audit/events.py and gateway/audit/report.py alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.audit.events import EventKind, utc_text
from keys.notes import NoteError, NoteVerifier, open_note, parse_checkpoint, parse_note

FORMAT_V1 = "lpd-gateway-evidence/1"
FORMAT_V2 = "lpd-gateway-evidence/2"
FORMAT = "lpd-gateway-evidence/3"  # what the exporter writes; the verifier reads all three
# The files the manifest lists, per format (manifest.json itself and, from version 2, manifest.sig,
# its signature, are the others of a bundle). Format 3 added terminations.jsonl.
FILES_V1 = ("events.jsonl", "proofs.jsonl", "checkpoints.jsonl", "consistency.jsonl", "keys.json", "report.html")
FILES_V2 = ("events.jsonl", "proofs.jsonl", "checkpoints.jsonl", "consistency.jsonl", "keys.json", "key-events.jsonl",
            "terms.jsonl", "report.json", "report.html")
FILES = ("events.jsonl", "proofs.jsonl", "checkpoints.jsonl", "consistency.jsonl", "keys.json", "key-events.jsonl",
         "terms.jsonl", "terminations.jsonl", "report.json", "report.html")
FILES_OF = {FORMAT_V1: FILES_V1, FORMAT_V2: FILES_V2, FORMAT: FILES}
SIGNED_FORMATS = (FORMAT_V2, FORMAT)  # those with manifest.sig
MANIFEST_SIG = "manifest.sig"
_MANIFEST_DIGEST = "manifest-sha256 "
_EXPORTED_AT = "exported-at "
AUDIT = "audit"
# The signed-note key name of audit checkpoints. C2SP tlog-checkpoint says the name SHOULD be the
# origin; ours is not, because one key signs many logs (one per process) and a verifier should need
# one verifier key per key, not one per log.
AUDIT_KEY_NAME = "lpd-gateway-audit"
ORIGIN_PREFIX = "lpd-gateway/"
SIGNED_AT = "signed-at "
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def origin(log_id: str) -> str:
    return ORIGIN_PREFIX + log_id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_b64(text: str) -> bytes:
    """Decode base64 written as b64() writes it, refusing every other spelling (URL-safe alphabet, line
    breaks, missing padding, non-zero padding bits): each value has one text (schemas/audit-format.md)."""
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError):  # ValueError: non-ASCII text
        raise ValueError("not standard base64") from None
    if b64(data) != text:
        raise ValueError("not canonical base64 (non-zero padding bits)")
    return data


def parse_time(text: str) -> datetime:
    """Inverse of events.utc_text, accepting only its exact spelling."""
    try:
        moment = datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a UTC time like 2026-04-01T09:30:00.000000Z") from None
    if utc_text(moment) != text:
        raise ValueError(f"{text!r} is not a UTC time like 2026-04-01T09:30:00.000000Z")
    return moment


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    purpose: str
    public: bytes
    not_before: datetime
    not_after: datetime | None
    retired_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PublicKey:
        return cls(row["key_id"], row["purpose"], bytes(row["public_key"]), row["not_before"], row["not_after"],
                   row["retired_at"])

    @property
    def note_name(self) -> str:
        return AUDIT_KEY_NAME if self.purpose == AUDIT else f"lpd-gateway-{self.purpose}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.vkey())

    def vkey(self) -> str:
        """The C2SP signed-note verifier key: name+hex key hash+base64(0x01 || public key)."""
        typed = b"\x01" + self.public
        # signed-note's key hash: SHA-256(name || 0x0A || type || key)[:4].
        key_hash = hashlib.sha256(self.note_name.encode() + b"\n" + typed).digest()[:4]
        return f"{self.note_name}+{key_hash.hex()}+{base64.b64encode(typed).decode('ascii')}"

    def to_json(self) -> dict[str, Any]:
        """The published form (keys.json in evidence bundles, the public keys endpoint)."""
        return {"key_id": self.key_id, "purpose": self.purpose, "algorithm": "Ed25519",
                "public_key": base64.b64encode(self.public).decode("ascii"), "vkey": self.vkey(),
                "not_before": utc_text(self.not_before),
                "not_after": None if self.not_after is None else utc_text(self.not_after),
                "retired_at": None if self.retired_at is None else utc_text(self.retired_at)}


# -- opening ----------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint does not verify; `code` names the check (see schemas/audit-format.md)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OpenedCheckpoint:
    log_id: str
    size: int
    root: bytes
    signed_at: datetime
    key: PublicKey
    note: str


def open_checkpoint(note: str, keys: Sequence[PublicKey], log_id: str | None = None) -> OpenedCheckpoint:
    """Verify a checkpoint note against `keys`: signature, text, origin and the key's validity."""
    try:
        parsed = parse_note(note)
    except NoteError as e:
        raise CheckpointError("checkpoint-format", f"not a signed note: {e.reason}") from None
    by_hash = {(k.note_name, _key_hash(k)): k for k in keys}
    known = [by_hash[(s.name, s.key_hash)] for s in parsed.signatures if (s.name, s.key_hash) in by_hash]
    if not known:
        names = ", ".join(f"{s.name}+{s.key_hash.hex()}" for s in parsed.signatures)
        raise CheckpointError("unknown-key", f"signed by an unknown key ({names})")
    try:
        open_note(note, [k.verifier() for k in known])
    except NoteError as e:
        raise CheckpointError("bad-signature", e.reason) from None
    try:
        checkpoint = parse_checkpoint(parsed.unverified_text)
    except NoteError as e:
        raise CheckpointError("checkpoint-format", e.reason) from None
    if not checkpoint.origin.startswith(ORIGIN_PREFIX):
        raise CheckpointError("checkpoint-format", f"origin {checkpoint.origin!r} is not an lpd-gateway log")
    found_log = checkpoint.origin.removeprefix(ORIGIN_PREFIX)
    if log_id is not None and found_log != log_id:
        raise CheckpointError("checkpoint-format", f"checkpoint is of log {found_log}, not {log_id}")
    # Exactly one extension line, the signed-at line: any other, even signed, is text this format does
    # not define, and a verifier that skipped it would accept notes another reads differently.
    if len(checkpoint.extensions) != 1 or not checkpoint.extensions[0].startswith(SIGNED_AT):
        raise CheckpointError("checkpoint-format", "a checkpoint has exactly one extension line, the signed-at "
                                                   f"line; this one has {list(checkpoint.extensions)}")
    signed_text = checkpoint.extensions[0].removeprefix(SIGNED_AT)
    try:
        signed_at = parse_time(signed_text)
    except ValueError as e:
        raise CheckpointError("checkpoint-format", str(e)) from None
    key = known[0]
    if not key_valid_at(key, signed_at):
        raise CheckpointError("key-validity", f"key {key.key_id} was not valid at {signed_text} (valid from "
                                              f"{utc_text(key.not_before)} to {_until(key)})")
    return OpenedCheckpoint(found_log, checkpoint.size, checkpoint.root_hash, signed_at, key, note)


# -- the manifest's signature (formats 2 and 3) -------------------------------------------------------------

def manifest_signature_text(manifest_sha256: str, exported_at: str, bundle_format: str = FORMAT) -> str:
    """The signed text of manifest.sig: the format, the manifest's digest and the export time."""
    return f"{bundle_format}\n{_MANIFEST_DIGEST}{manifest_sha256}\n{_EXPORTED_AT}{exported_at}\n"


@dataclass(frozen=True, slots=True)
class OpenedManifestSignature:
    bundle_format: str
    manifest_sha256: str
    exported_at: str
    key: PublicKey


def open_manifest_signature(note: str, keys: Sequence[PublicKey]) -> OpenedManifestSignature:
    """Verify manifest.sig against `keys`: a signature by a known key valid at the signed export time,
    over exactly the three lines of manifest_signature_text. Raises CheckpointError with code
    "manifest-signature" (schemas/audit-format.md §6.4 step 1a)."""
    code = "manifest-signature"
    try:
        parsed = parse_note(note)
    except NoteError as e:
        raise CheckpointError(code, f"manifest.sig is not a signed note: {e.reason}") from None
    by_hash = {(k.note_name, _key_hash(k)): k for k in keys}
    known = [by_hash[(s.name, s.key_hash)] for s in parsed.signatures if (s.name, s.key_hash) in by_hash]
    if not known:
        names = ", ".join(f"{s.name}+{s.key_hash.hex()}" for s in parsed.signatures)
        raise CheckpointError(code, f"manifest.sig is signed by no known key ({names})")
    try:
        open_note(note, [k.verifier() for k in known])
    except NoteError as e:
        raise CheckpointError(code, f"manifest.sig: {e.reason}") from None
    lines = parsed.unverified_text.split("\n")
    if (len(lines) != 4 or lines[0] not in SIGNED_FORMATS or not lines[1].startswith(_MANIFEST_DIGEST)
            or not lines[2].startswith(_EXPORTED_AT) or lines[3] != ""):
        raise CheckpointError(code, f"manifest.sig's text is not a format ({' or '.join(SIGNED_FORMATS)}), a "
                                    "manifest-sha256 line and an exported-at line")
    digest, exported = lines[1].removeprefix(_MANIFEST_DIGEST), lines[2].removeprefix(_EXPORTED_AT)
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(code, "manifest.sig's manifest-sha256 is not 64 lowercase hex digits")
    try:
        moment = parse_time(exported)
    except ValueError as e:
        raise CheckpointError(code, f"manifest.sig's exported-at: {e}") from None
    key = known[0]
    if not key_valid_at(key, moment):
        raise CheckpointError(code, f"manifest.sig: key {key.key_id} was not valid at {exported} (valid from "
                                    f"{utc_text(key.not_before)} to {_until(key)})")
    return OpenedManifestSignature(lines[0], digest, exported, key)


def key_valid_at(key: PublicKey, moment: datetime) -> bool:
    ends = [t for t in (key.not_after, key.retired_at) if t is not None]
    return key.not_before <= moment and all(moment < end for end in ends)


def _until(key: PublicKey) -> str:
    ends = [t for t in (key.not_after, key.retired_at) if t is not None]
    return utc_text(min(ends)) if ends else "now"


def _key_hash(key: PublicKey) -> bytes:
    return bytes.fromhex(key.vkey().split("+")[1])


# -- terminations (format 3, schemas/audit-format.md §6.1.4) -------------------------------------------

TERMINATION_KINDS = (EventKind.LICENCE_TERMINATE, EventKind.DELETION_ATTEST)
NOTICE_TYPE = "lpd-gateway-termination-notice/1"        # a notice's `type`
ATTESTATION_TYPE = "lpd-gateway-deletion-attestation/1"  # an attestation's `type`


def named_termination(event: Mapping[str, Any]) -> str | None:
    """The termination whose documents a bundle must carry for `event`: `detail.termination_id` of a
    vendor:licence:terminate or member:deletion:attest event with outcome change, else None. Raises
    ValueError for such an event that names none."""
    if event["kind"] not in TERMINATION_KINDS or event["outcome"] != "change":
        return None
    detail = event["detail"]
    termination = detail.get("termination_id") if type(detail) is dict else None
    if type(termination) is not str:
        raise ValueError(f"a {event['kind']} event names no termination (detail.termination_id)")
    return termination


# -- the key history (formats 2 and 3, schemas/audit-format.md §4.3) ------------------------------------------

KEY_EVENT_KINDS = (EventKind.KEYRING_CREATE, EventKind.KEYRING_ROTATE, EventKind.KEYRING_RETIRE)


def key_created_detail(key: PublicKey, replaces: PublicKey | None = None) -> dict[str, Any]:
    """`detail` of the event that made `key`: operator:keyring:create for the first key of its purpose,
    operator:keyring:rotate (with the key it `replaces` and that key's end) for every later one."""
    detail: dict[str, Any] = {"purpose": key.purpose, "key_id": key.key_id, "public_key": b64(key.public),
                              "vkey": key.vkey(), "not_before": utc_text(key.not_before)}
    if replaces is not None:
        assert replaces.not_after is not None
        detail["replaces"] = {"key_id": replaces.key_id, "not_after": utc_text(replaces.not_after)}
    return detail


def key_retired_detail(key: PublicKey) -> dict[str, Any]:
    """`detail` of operator:keyring:retire: the key and the retirement it now has (database clock)."""
    assert key.retired_at is not None
    return {"purpose": key.purpose, "key_id": key.key_id, "retired_at": utc_text(key.retired_at)}


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One audit keyring event of a bundle's key-events.jsonl, its entry already proven or to be."""

    where: str
    kind: str
    detail: dict[str, Any]
    entry: bytes = b""  # its canonical bytes, the Merkle leaf


def key_history(events: Sequence[KeyEvent]) -> dict[str, PublicKey]:
    """The audit keys and their validity as the key events say (§4.3), by key_id; raises ValueError.

    One create event starts the history; each rotate event makes a key and ends the one it replaces at
    the new key's not_before; retire events bring a key's end forward (the earliest counts)."""
    made: dict[str, PublicKey] = {}
    ends: dict[str, datetime] = {}
    replaced: dict[str, str] = {}
    retired: dict[str, datetime] = {}
    creates = 0
    for event in events:
        d, where = event.detail, event.where
        try:
            if d["purpose"] != AUDIT:
                raise ValueError(f"{where}: not an event of an audit key")
            key_id = d["key_id"]
            if event.kind == EventKind.KEYRING_RETIRE:
                if set(d) != {"purpose", "key_id", "retired_at"}:
                    raise ValueError(f"{where}: a retirement names purpose, key_id and retired_at")
                at = parse_time(d["retired_at"])
                retired[key_id] = min(at, retired.get(key_id, at))
                continue
            rotation = event.kind == EventKind.KEYRING_ROTATE
            names = {"purpose", "key_id", "public_key", "vkey", "not_before"} | ({"replaces"} if rotation else set())
            if set(d) != names or (rotation and (type(d["replaces"]) is not dict
                                                  or set(d["replaces"]) != {"key_id", "not_after"})):
                raise ValueError(f"{where}: the event does not have exactly the properties of its kind")
            creates += not rotation
            public = from_b64(d["public_key"])
            if len(public) != 32 or type(key_id) is not str or not key_id:
                raise ValueError(f"{where}: not a key (public_key is not 32 bytes, or no key_id)")
            key = PublicKey(key_id, AUDIT, public, parse_time(d["not_before"]), None, None)
            if key.vkey() != d["vkey"]:
                raise ValueError(f"{where}: the vkey is not the public key's")
            if key_id in made or any(k.public == public for k in made.values()):
                raise ValueError(f"{where}: key {key_id} is made twice")
            made[key_id] = key
            if rotation:
                old, end = d["replaces"]["key_id"], parse_time(d["replaces"]["not_after"])
                if old in replaced:
                    raise ValueError(f"{where}: key {old} is replaced twice")
                if end != key.not_before:
                    raise ValueError(f"{where}: the replaced key's end is not the new key's start")
                replaced[old], ends[old] = key_id, end
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: the event's detail is not that of its kind ({type(e).__name__}: {e})") from None
    if creates != 1:
        raise ValueError(f"the key history has {creates} operator:keyring:create events of an audit key, not one")
    for old, new in replaced.items():
        if old not in made:
            raise ValueError(f"key {new} replaces key {old}, whose creation event the bundle lacks")
        if not made[old].not_before < made[new].not_before:
            raise ValueError(f"key {new} replaces key {old}, which it does not follow")
    for key_id in retired:
        if key_id not in made:
            raise ValueError(f"key {key_id} is retired, but the bundle lacks its creation event")
    # One create event and every other key replacing a distinct, earlier one: a single chain.
    return {key_id: PublicKey(key_id, AUDIT, key.public, key.not_before, ends.get(key_id), retired.get(key_id))
            for key_id, key in made.items()}


def public_key_from_json(data: dict[str, Any]) -> PublicKey:
    """A key as published in keys.json (its shape already checked, gateway/audit/schema.py); raises
    ValueError if its public key is not the canonical base64 of 32 bytes or its vkey is not that key's."""
    key_id = data["key_id"]
    try:
        public = from_b64(data["public_key"])
    except ValueError as e:
        raise ValueError(f"key {key_id}: public_key is {e}") from None
    if len(public) != 32:
        raise ValueError(f"key {key_id}: public_key is not the base64 of 32 bytes")
    key = PublicKey(key_id, data["purpose"], public, parse_time(data["not_before"]),
                    None if data["not_after"] is None else parse_time(data["not_after"]),
                    None if data["retired_at"] is None else parse_time(data["retired_at"]))
    if data["vkey"] != key.vkey():
        raise ValueError(f"key {key_id}: its vkey does not match its public key")
    return key


def keys_from_vkeys(vkeys: Iterable[str]) -> set[str]:
    """Validate verifier keys given on the command line (raises NoteError) and return them."""
    found = set()
    for vkey in vkeys:
        NoteVerifier.from_vkey(vkey.strip())
        found.add(vkey.strip())
    return found
