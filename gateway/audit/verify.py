"""Offline verification of an evidence bundle: no database, no network (schemas/audit-format.md).

    python -m gateway.verify bundle.zip [--trusted-checkpoint FILE] [--trusted-key VKEY ...]

Checks, in order, stopping at the first problem: (formats 2 and 3) the signed key history of key-events.jsonl,
each audit key's validity, which keys.json must state exactly; manifest.sig, the audit key's signature
over manifest.json's SHA-256 and the export time, so that no manifest field can change unseen; the
ZIP's files against manifest.json; every
checkpoint's signature by a known key valid at its signed time; consistency between each log's
successive checkpoints (and with a trusted checkpoint); then every event: its inclusion proof against
its covering checkpoint, (log, seq) order and uniqueness, its log and seq against its proof line, its
place in the scope, and — for unfiltered exports — the gap-free vendor (or member) series with its
witnesses; finally per-log counts against the manifest, (formats 2 and 3) terms.jsonl against the digests
and the (licence, version) pairs the events name, (format 3) terminations.jsonl against the terminations the
events name
(each document's digest, each notice's signature by the audit key valid at its effective time), and the
report: report.json recomputed from the manifest
and the events (report.html rendered again from them, the reference implementation's extra check).

When a file's content fails a check, the verifier first finishes hashing it: if the manifest does not
match either, "manifest-mismatch" is the problem reported, since it explains the other.
"""

from __future__ import annotations

import argparse
import binascii
import bisect
import hashlib
import itertools
import queue
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.audit import report, schema
from gateway.audit.events import EventKind, utc_text
from gateway.audit.format import (
    ATTESTATION_TYPE,
    FILES_OF,
    FORMAT,
    FORMAT_V1,
    FORMAT_V2,
    KEY_EVENT_KINDS,
    MANIFEST_SIG,
    NOTICE_TYPE,
    SIGNED_FORMATS,
    TERMINATION_KINDS,
    CheckpointError,
    KeyEvent,
    OpenedCheckpoint,
    PublicKey,
    b64,
    from_b64,
    key_history,
    key_valid_at,
    keys_from_vkeys,
    named_termination,
    open_checkpoint,
    open_manifest_signature,
    origin,
    parse_time,
    public_key_from_json,
)
from gateway.audit.schema import ShapeError
from keys.cosignatures import CosignatureVerifier, cosignatures
from keys.merkle import HASH_BYTES, ProofError, leaf_hash, verify_consistency, verify_inclusion
from keys.notes import MAX_NOTE_BYTES, NoteError, parse_note
from keys.signing import verify_ed25519

# Large: while the parser runs, an inflater thread gets the GIL back once per switch interval (5 ms),
# and reading a chunk takes it about ten turns (file, each inflate buffer, CRC, hash). A chunk must
# keep the parser busy longer than that, or the parser waits for the next one.
_CHUNK = 8 << 20
_AHEAD = 2                 # chunks an inflater thread may run ahead of the parser
_MAX_LINE = 1 << 20        # an event or proof line longer than this is not from an exporter
_MAX_MANIFEST = 64 << 20   # bounds what is parsed before any check: the manifest lists every log
_MAX_REPORT = 256 << 20


class BundleError(Exception):
    """The bundle fails a check; `code` names it (schemas/audit-format.md lists them)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Verdict:
    ok: bool
    code: str | None = None
    problem: str | None = None
    events: int = 0
    logs: int = 0
    checkpoints: int = 0
    keys: list[str] = field(default_factory=list)
    series: str | None = None
    scope: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a person or a script: OK and the counts, or FAILED and the first problem."""
        if not self.ok:
            return f"FAILED [{self.code}]: {self.problem}"
        coverage = (f"complete {self.series} series per log" if self.series else
                    "filtered export: each event proven, omissions not detectable")
        text = (f"OK: {self.events:,} events in {self.logs:,} logs verified against {self.checkpoints:,} signed "
                f"checkpoints (keys {', '.join(self.keys) or 'none'}); {coverage}; vendor {self.scope.get('vendor_id')}"
                f" {self.scope.get('from')} – {self.scope.get('to')}")
        return text + "".join(f"; note: {n}" for n in self.notes)


def verify_bundle(path: str | Path, trusted_checkpoint: str | None = None, *,
                  trusted_keys: Iterable[str] | None = None, witnesses: Iterable[str] | None = None,
                  quorum: int | None = None, require_signed: bool = False) -> Verdict:
    """Verify the bundle at `path`. `trusted_checkpoint`: a checkpoint obtained earlier, as a signed note
    (e.g. a receipt's) or as the JSON GET /v1/audit/checkpoint returns; `trusted_keys`: C2SP verifier
    keys to accept instead of trusting keys.json alone (each key's validity comes from the bundle's
    signed key history from format 2 on, from keys.json in format 1);
    `witnesses` (cosignature/v1 vkeys) and `quorum` (default: all of them): each log's events must be
    covered by a checkpoint cosigned by `quorum` of those witnesses (schemas/audit-format.md §8.4);
    `require_signed`: refuse a format 1 bundle, whose manifest nothing signs."""
    try:
        policy = _witness_policy(witnesses, quorum)
    except BundleError as e:
        return Verdict(False, e.code, e.message)
    try:
        with zipfile.ZipFile(path) as bundle:
            return _Verifier(path, bundle, trusted_checkpoint, trusted_keys, policy, require_signed).run()
    except BundleError as e:
        return Verdict(False, e.code, e.message)
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile, zlib.error, NotImplementedError) as e:
        # zlib.error: damaged deflate data; NotImplementedError: a compression method zipfile lacks.
        return Verdict(False, "bundle-format", f"not a readable ZIP file: {type(e).__name__}: {e}")
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RuntimeError) as e:
        # A bundle is untrusted input: whatever slipped past the checks above is a verdict, never a
        # crash (RuntimeError: zipfile's "encrypted, password required"; RecursionError).
        return Verdict(False, "bundle-format", f"malformed content: {type(e).__name__}: {e}")


@dataclass
class _Log:
    """What the events of one log showed, to compare with the manifest at the end."""

    events: int = 0
    first_seq: int | None = None
    last_seq: int = -1
    first_inside: bool = False      # whether the first event is in the period
    first_number: int | None = None  # its series number
    last_inside: bool = False


class _Verifier:
    def __init__(self, path: str | Path, bundle: zipfile.ZipFile, trusted_checkpoint: str | None,
                 trusted_keys: Iterable[str] | None,
                 witnesses: tuple[list[CosignatureVerifier], int] | None = None,
                 require_signed: bool = False) -> None:
        self.path = path
        self.require_signed = require_signed
        self.witnesses = witnesses
        self.bundle = bundle
        self.trusted_checkpoint = trusted_checkpoint
        self.trusted_keys = None if trusted_keys is None else _vkeys(trusted_keys)
        self.verdict = Verdict(True)
        self.checkpoints: dict[str, list[OpenedCheckpoint]] = {}
        self.logs: dict[str, _Log] = {}
        # Formats 2 and 3: every (licence, terms version) the events name, and each acceptance's digest.
        self.terms_named: set[tuple[str, int]] = set()
        self.terms_accepted: list[tuple[int, str, int, str]] = []  # line, licence, version, sha256
        # The events naming a termination's documents: line, termination id, event.
        self.terminations_named: list[tuple[int, str, dict[str, Any]]] = []

    def run(self) -> Verdict:
        self.manifest = self._manifest()
        for name in self.files:
            if name not in ("events.jsonl", "proofs.jsonl"):  # those two are hashed as they are read
                self._check_hash(name)
        if self.format == FORMAT_V1:
            self.keys = self._keys()
        self._checkpoints()
        self._consistency()
        if self.trusted_checkpoint is not None:
            self._trusted()
        self.summary = report.Summary(self.scope["from"], self.scope["to"])
        # The two big files are inflated and hashed once, each on its own thread, which hands the chunks
        # to this one: zlib, the CRC and hashlib release the GIL, so on two cores this thread only parses.
        with ThreadPoolExecutor(2) as pool:
            events, proofs = streams = [_Stream(pool, self.path, name) for name in ("events.jsonl", "proofs.jsonl")]
            try:
                self._events(events, proofs)
            except Exception:
                # Content failed a check; if a file also fails the manifest, that is the first problem.
                for stream in streams:
                    self._compare(stream.name, stream.finish())
                raise
            finally:
                for stream in streams:
                    stream.abandon()  # no thread may be left waiting for this one to take a chunk
            for stream in streams:
                self._compare(stream.name, stream.finish())
        self._per_log()
        if self.format != FORMAT_V1:
            self._terms()
            self._terminations()
        self._report()
        if self.witnesses is not None:
            self._witnessed(*self.witnesses)
        self.verdict.events = sum(log.events for log in self.logs.values())
        self.verdict.logs = len(self.logs)
        self.verdict.checkpoints = sum(len(c) for c in self.checkpoints.values())
        self.verdict.keys = sorted({c.key.key_id for cs in self.checkpoints.values() for c in cs})
        self.verdict.scope, self.verdict.series = self.scope, self.series
        return self.verdict

    # -- files ------------------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        names = [info.filename for info in self.bundle.infolist()]
        if len(names) != len(set(names)):
            raise BundleError("bundle-format", "the ZIP holds two files of the same name")
        # The layout says whether the format is signed: manifest.sig is there from format 2 on (§6.1); which
        # signed format, the manifest says, and manifest.sig's text, which names it, vouches for that.
        signed = MANIFEST_SIG in names
        self.format = self._signed_format() if signed else FORMAT_V1
        self.files = FILES_OF[self.format]
        expected = {"manifest.json", *self.files} | ({MANIFEST_SIG} if signed else set())
        if set(names) != expected:
            missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
            raise BundleError("bundle-format", f"the bundle's files differ from the format's: missing {missing}, "
                                               f"unexpected {extra}")
        if self.format == FORMAT_V1 and self.require_signed:
            raise BundleError("manifest-signature", "a format 1 bundle: nothing signs its manifest (export it again "
                                                    "for a signed one)")
        data = self._read("manifest.json", _MAX_MANIFEST)
        signature = self._signature(data) if signed else None
        manifest = _json(data, "manifest.json")
        try:
            schema.manifest(manifest)
        except ShapeError as e:
            raise BundleError("bundle-format", str(e)) from None
        if manifest["format"] != self.format:
            # Only formats 2 and 3 are signed, so this is one that says 1 beside a manifest.sig.
            raise BundleError("bundle-format", f"manifest.json says format {manifest['format']!r}, but the bundle's "
                                               f"files are those of {self.format!r}")
        if signature is not None and manifest["created_at"] != signature:
            raise BundleError("manifest-signature", f"manifest.json says it was created at {manifest['created_at']}, "
                                                    f"manifest.sig that it was exported at {signature}")
        scope = manifest["scope"]
        if not (_time(manifest["created_at"]) and _time(scope["from"]) and _time(scope["to"])
                and scope["from"] < scope["to"]):
            raise BundleError("bundle-format", "manifest.json has no valid scope (vendor_id, from, to)")
        self.scope: dict[str, Any] = scope
        # The series follows from the scope, so a manifest cannot switch the gap check off on its own.
        self.series = None if scope.get("dataset_id") else ("member" if scope.get("member_id") else "vendor")
        if manifest["series"] != self.series:
            raise BundleError("bundle-format", f"manifest.json says series {manifest['series']!r}; its scope "
                                               f"means {self.series!r}")
        if self.format == FORMAT_V1:
            self.verdict.notes.append("format 1 bundle: its manifest is not signed, so its fields (the report "
                                      "marker among them) are protected by nothing")
        return manifest

    def _signed_format(self) -> str:
        """The signed format manifest.json claims, unverified (its signature is checked next); format 3 when
        it claims none of them (the manifest's own checks then say what is wrong)."""
        try:
            claimed = orjson.loads(self._read("manifest.json", _MAX_MANIFEST))["format"]
        except (KeyError, TypeError, orjson.JSONDecodeError):
            return FORMAT
        return claimed if claimed in SIGNED_FORMATS else FORMAT

    def _signature(self, manifest: bytes) -> str:
        """Step 1a: manifest.sig verifies with keys.json's keys (step 3's checks first, the trusted keys
        only, if given), by a key valid at its export time, over exactly these manifest bytes; the time."""
        self.keys = self._keys()
        try:
            self._key_history()  # the validity the signature is judged by; proven once it verified
        except BundleError:
            # As in step 2: a file that is not the one the manifest names is reported as that, first.
            claimed = _claimed_file(manifest, "key-events.jsonl")
            if claimed is not None and claimed != _digest(self.bundle, "key-events.jsonl"):
                raise BundleError("manifest-mismatch", "key-events.jsonl does not match its SHA-256 in "
                                                       "manifest.json") from None
            # And a manifest manifest.sig does not name is that (its signature is judged by the history).
            if _signed_digest(self._read(MANIFEST_SIG, MAX_NOTE_BYTES)) not in (None, hashlib.sha256(manifest).hexdigest()):
                raise BundleError("manifest-signature", "manifest.json is not the manifest manifest.sig signed (a "
                                                        "field was changed)") from None
            raise
        try:
            note = self._read(MANIFEST_SIG, MAX_NOTE_BYTES).decode("utf-8")
        except UnicodeError:
            raise BundleError("manifest-signature", "manifest.sig is not UTF-8") from None
        try:
            opened = open_manifest_signature(note, self.keys)
        except CheckpointError as e:
            raise BundleError(e.code, e.reason) from None
        if opened.manifest_sha256 != hashlib.sha256(manifest).hexdigest():
            raise BundleError("manifest-signature", "manifest.json is not the manifest manifest.sig signed (a "
                                                    "field was changed)")
        if opened.bundle_format != self.format:
            raise BundleError("manifest-signature", f"manifest.sig signed a {opened.bundle_format!r} bundle; its "
                                                    f"files are those of {self.format!r}")
        self._key_events_proven()
        self.verdict.notes.append(f"manifest signed by key {opened.key.key_id} at {opened.exported_at}")
        return opened.exported_at

    def _read(self, name: str, limit: int) -> bytes:
        with self.bundle.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise BundleError("bundle-format", f"{name} is larger than {limit} bytes")
        return data

    def _check_hash(self, name: str) -> None:
        self._compare(name, _digest(self.bundle, name))

    def _compare(self, name: str, found: tuple[str, int]) -> None:
        claimed = self.manifest["files"][name]
        if (claimed["sha256"], claimed["bytes"]) != found:
            raise BundleError("manifest-mismatch", f"{name} does not match its SHA-256 in manifest.json")

    def _jsonl(self, name: str, shape: Callable[[Any, str], dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """The lines of a small JSON Lines file, each checked against its schema (`shape`)."""
        with self.bundle.open(name) as handle:
            for number, line in enumerate(_lines(name, iter(lambda: handle.read(_CHUNK), b"")), 1):
                where = f"{name} line {number}"
                try:
                    yield number, shape(_json(line, where), where)
                except ShapeError as e:
                    raise BundleError("bundle-format", str(e)) from None

    # -- keys and checkpoints ---------------------------------------------------------------------

    def _keys(self) -> list[PublicKey]:
        try:
            data = _json(self._read("keys.json", _MAX_MANIFEST), "keys.json")
            keys = [public_key_from_json(item) for item in schema.keys(data)]
        except BundleError as e:  # not JSON: still step 3's problem
            raise BundleError("keys", e.message) from None
        except ValueError as e:  # ShapeError, or a key's fields disagree
            raise BundleError("keys", f"keys.json: {e}") from None
        # key_id names one key (checkpoints and receipts name their key by it), and a key is listed once:
        # a second entry of one public key could only give it a second validity.
        for what, values in (("key_id", [k.key_id for k in keys]), ("vkey", [k.vkey() for k in keys])):
            if len(set(values)) != len(values):
                raise BundleError("keys", f"keys.json lists one {what} twice")
        self.listed_keys = keys
        if self.trusted_keys is not None:
            keys = [key for key in keys if key.vkey() in self.trusted_keys]
        return keys

    def _key_history(self) -> None:
        """Step 3a (format 2): each audit key's validity from the signed key history of key-events.jsonl
        (§4.3), which keys.json must state exactly; the keys used from here on carry the history's."""
        events: list[tuple[dict[str, Any], KeyEvent]] = []
        previous: tuple[str, int] | None = None
        for number, line in self._jsonl("key-events.jsonl", schema.key_event_line):
            where = f"key-events.jsonl line {number}"
            if previous is not None and (line["log"], line["seq"]) <= previous:
                raise BundleError("key-history", f"{where}: lines must be in (log, seq) order, each once")
            previous = (line["log"], line["seq"])
            try:
                entry = line["entry"].encode("utf-8")
                event = schema.event(_json(entry, where), where)
            except (ShapeError, UnicodeError) as e:
                raise BundleError("bundle-format", f"{where}: its entry is not an event: {e}") from None
            if (event["log"], event["seq"]) != (line["log"], line["seq"]):
                raise BundleError("key-history", f"{where}: the entry is of log {event['log']} seq {event['seq']}")
            if (event["kind"] not in KEY_EVENT_KINDS or event["outcome"] != "change" or event["vendor_id"] is not None
                    or type(event["detail"]) is not dict):
                raise BundleError("key-history", f"{where}: {event['kind']} is not an event of the key history")
            events.append((line, KeyEvent(where, event["kind"], event["detail"], entry)))
        try:
            history = key_history([opened for _, opened in events])
        except ValueError as e:
            raise BundleError("key-history", f"key-events.jsonl: {e}") from None
        # keys.json says nothing the history does not: the same keys, each with the validity it gives.
        listed = {key.key_id: key for key in self.listed_keys}
        for key_id in sorted(listed.keys() | history.keys()):
            if key_id not in history:
                raise BundleError("key-history", f"keys.json lists key {key_id}, whose creation event "
                                                 "key-events.jsonl lacks")
            if key_id not in listed:
                raise BundleError("key-history", f"key-events.jsonl makes key {key_id}, which keys.json lacks")
            if listed[key_id] != history[key_id]:
                raise BundleError("key-history", f"keys.json states key {key_id} otherwise than its signed history: "
                                                 f"{_validity(listed[key_id])}, the key events say "
                                                 f"{_validity(history[key_id])}")
        self.keys = [history[key.key_id] for key in self.keys]
        self.key_events = events

    def _key_events_proven(self) -> None:
        """Step 3a's second half, once manifest.sig verified: each key event is in its log, under a
        checkpoint signed by a key valid then, by the history read (and with trusted keys, a trusted key)."""
        for line, opened in self.key_events:
            where = opened.where
            try:
                checkpoint = open_checkpoint(line["note"], self.keys, line["log"])
            except CheckpointError as e:
                raise BundleError("key-history", f"{where}: its checkpoint does not verify [{e.code}]: "
                                                 f"{e.reason}") from None
            if checkpoint.size != line["tree_size"] or not line["seq"] < checkpoint.size:
                raise BundleError("key-history", f"{where}: the checkpoint is of size {checkpoint.size}, not "
                                                 f"{line['tree_size']} covering seq {line['seq']}")
            try:
                verify_inclusion(leaf_hash(opened.entry), line["seq"], checkpoint.size,
                                 _hashes(line["proof"], where), checkpoint.root)
            except ProofError as e:
                raise BundleError("key-history", f"{where}: the event is not in its checkpoint: {e.reason}") from None
            made = opened.detail.get("not_before")
            if opened.kind != EventKind.KEYRING_RETIRE and utc_text(checkpoint.signed_at) < made:
                raise BundleError("key-history", f"{where}: signed at {utc_text(checkpoint.signed_at)}, before the "
                                                 f"key it makes existed ({made})")
        self.verdict.notes.append(f"key validity from {len(self.key_events)} signed key events")

    def _checkpoints(self) -> None:
        previous: tuple[str, int] = ("", 0)
        for number, line in self._jsonl("checkpoints.jsonl", schema.checkpoint_line):
            where = f"checkpoints.jsonl line {number}"
            log_id, size, note = line["log"], line["tree_size"], line["note"]
            try:
                opened = open_checkpoint(note, self.keys, log_id)
            except CheckpointError as e:
                raise BundleError(e.code, f"{where} (log {log_id}, size {size}): {e.reason}") from None
            if opened.size != size:  # the line misstates its note, as a wrong log would (§6.4 step 4)
                raise BundleError("checkpoint-format", f"{where}: the note is of size {opened.size}, not {size}")
            if (log_id, size) <= previous:
                raise BundleError("checkpoint-order", f"{where}: checkpoints must be in (log, tree size) order, "
                                                      "each once")
            previous = (log_id, size)
            self.checkpoints.setdefault(log_id, []).append(opened)
        self.sizes = {log_id: [c.size for c in cps] for log_id, cps in self.checkpoints.items()}
        self.roots = {(c.log_id, c.size): c.root for cps in self.checkpoints.values() for c in cps}

    def _consistency(self) -> None:
        pairs = iter([(log_id, old, new) for log_id, cps in self.checkpoints.items()
                      for old, new in itertools.pairwise(cps)])
        for number, line in self._jsonl("consistency.jsonl", schema.consistency_line):
            where = f"consistency.jsonl line {number}"
            expected = next(pairs, None)
            if expected is None:
                raise BundleError("consistency", f"{where}: a proof between no two successive checkpoints")
            log_id, old, new = expected
            if (line["log"], line["old_size"], line["new_size"]) != (log_id, old.size, new.size):
                raise BundleError("consistency", f"{where}: expected the proof of log {log_id} from {old.size} to "
                                                 f"{new.size}")
            try:
                verify_consistency(old.size, new.size, old.root, new.root, _hashes(line["proof"], where))
            except ProofError as e:
                raise BundleError("consistency", f"log {log_id}: checkpoint {new.size} does not extend checkpoint "
                                                 f"{old.size} (the log was rewritten): {e.reason}") from None
        missing = next(pairs, None)
        if missing is not None:
            raise BundleError("consistency", f"no consistency proof for log {missing[0]} from {missing[1].size} to "
                                             f"{missing[2].size}")

    def _trusted(self) -> None:
        assert self.trusted_checkpoint is not None
        given = _trusted_checkpoints(self.trusted_checkpoint)
        opened: list[tuple[str, OpenedCheckpoint]] = []
        for number, (note, claimed) in enumerate(given, 1):
            which = "the trusted checkpoint" if len(given) == 1 else f"trusted checkpoint {number}"
            try:
                trusted = open_checkpoint(note, self.keys)
            except CheckpointError as e:
                raise BundleError("trusted-checkpoint", f"{which} does not verify: {e.reason}") from None
            _agree(trusted, claimed, which)
            opened.append((which, trusted))
        compared = [(which, trusted) for which, trusted in opened if trusted.log_id in self.checkpoints]
        if not compared:
            logs = ", ".join(sorted({trusted.log_id for _, trusted in opened}))
            raise BundleError("trusted-checkpoint", f"the bundle has no checkpoint of the trusted checkpoint's log "
                                                    f"{logs}")
        for which, trusted in compared:
            cps = self.checkpoints[trusted.log_id]
            match = next((c for c in cps if c.size == trusted.size), None)
            if match is None:
                where = ("precedes" if trusted.size < cps[0].size else "is newer than" if trusted.size > cps[-1].size
                         else "falls between")
                raise BundleError("trusted-checkpoint", f"{which} (size {trusted.size}) {where} the bundle's "
                                                        f"checkpoints of log {trusted.log_id} "
                                                        f"({cps[0].size}..{cps[-1].size}): cannot compare them")
            if match.root != trusted.root:
                raise BundleError("trusted-checkpoint", f"log {trusted.log_id} was rewritten: its checkpoint of size "
                                                        f"{trusted.size} in the bundle has another root than the "
                                                        "trusted one")
            self.verdict.notes.append(f"consistent with the trusted checkpoint of log {trusted.log_id} at size "
                                      f"{trusted.size}")
        for _, trusted in opened:
            if trusted.log_id not in self.checkpoints:
                # GET /v1/audit/checkpoint lists every log; most hold no event of this export.
                self.verdict.notes.append(f"the trusted checkpoint of log {trusted.log_id} (size {trusted.size}) is "
                                          "of a log the bundle does not hold: not compared")

    def _witnessed(self, verifiers: list[CosignatureVerifier], quorum: int) -> None:
        """Step 10: every given witness's cosignature in the bundle verifies, and each log's events are
        covered by a checkpoint that `quorum` of the witnesses cosigned (§8.4)."""
        for log_id in sorted(self.logs):
            last_seq = self.logs[log_id].last_seq
            covering: OpenedCheckpoint | None = None
            for checkpoint in self.checkpoints[log_id]:
                try:
                    found = cosignatures(checkpoint.note, verifiers)
                except NoteError as e:
                    raise BundleError("witness", f"log {log_id}, checkpoint {checkpoint.size}: {e.reason}") from None
                if covering is None and checkpoint.size > last_seq and len(found) >= quorum:
                    covering = checkpoint
            if covering is None:
                raise BundleError("witness", f"log {log_id}: no checkpoint covering its events up to seq {last_seq} "
                                             f"is cosigned by {quorum} of the {len(verifiers)} given witnesses")
        self.verdict.notes.append(f"each log's events are covered by a checkpoint cosigned by at least {quorum} of the "
                                  f"{len(verifiers)} given witnesses")

    # -- events -----------------------------------------------------------------------------------

    def _events(self, events: _Stream, proofs: _Stream) -> None:
        """Every event against its proof line, in one pass.

        The cost per event is what bounds verification, so the loop keeps the current log's state in
        local variables and stores it in self.logs when the log changes.
        """
        scope, series = self.scope, self.series
        number_field = f"{series}_seq" if series else ""
        subject_field, subject = (f"{series}_id", scope[f"{series}_id"]) if series else ("", None)
        vendor_id, start, end = scope["vendor_id"], scope["from"], scope["to"]
        filters = [(name, scope[name]) for name in ("member_id", "dataset_id") if scope.get(name)]
        loads, dumps, sort, sha256, add = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.sha256, self.summary.add
        unique, event_valid, proof_valid = schema.check_unique, schema.event_valid, schema.proof_line_valid
        termination_kinds = frozenset(TERMINATION_KINDS)
        cache = _ProofCache(0, b"")
        high = 0  # the size of the previous event's covering checkpoint: it covers the seqs up to high - 1
        state = _Log()
        log_id, seq, count, previous, inside, last_inside = "", -1, 0, -1, False, False
        number = 0
        try:
            pairs = itertools.zip_longest(_lines(events.name, events), _lines(proofs.name, proofs))
            for number, (line, found) in enumerate(pairs, 1):
                if found is None:
                    raise BundleError("bundle-format", f"{_at(number)} has no proof line (proofs.jsonl is shorter)")
                if line is None:
                    raise BundleError("bundle-format", "proofs.jsonl has more lines than events.jsonl")
                proof, event = loads(found), loads(line)
                # A property named twice (orjson keeps the last) is looked for in the bytes, and a genuine
                # line is cleared cheaply: a proof line's only colons are its four, one per property (a name
                # repeated adds one), and an event line is its canonical entry (§2.2), which re-serialising
                # gives back. Any other line takes the slow, exact path.
                if found.count(b":") != 4:
                    unique(found)
                if dumps(event, option=sort) != line:
                    unique(line)
                if not proof_valid(proof):
                    schema.proof_line(proof, f"proofs.jsonl line {number}")  # raises, saying what is wrong
                if not event_valid(event):
                    schema.event(event, _at(number))
                    raise ShapeError(f"{_at(number)} is not a valid event")  # not reached: both check the same
                claimed_log, claimed_seq = proof["log"], proof["seq"]
                if event["log"] != claimed_log or event["seq"] != claimed_seq:
                    raise BundleError("log-mismatch", f"{_at(number)}: the event names log {event['log']} seq "
                                                      f"{event['seq']}, its proof log {claimed_log} seq "
                                                      f"{claimed_seq}")
                at = event["at"]
                inside = start <= at < end
                if claimed_log != log_id:
                    if claimed_log < log_id or claimed_log in self.logs:
                        raise BundleError("order", f"{_at(number)}: log {claimed_log} after log {log_id}: events must "
                                                   "be in (log, seq) order")
                    if claimed_log not in self.sizes:
                        raise BundleError("log-mismatch", f"{_at(number)}: log {claimed_log} has no checkpoint in the "
                                                          "bundle")
                    # The log before: its own last event says whether its series' end is witnessed.
                    state.events, state.last_seq, state.last_inside = count, seq, last_inside
                    state = self.logs[claimed_log] = _Log(first_seq=claimed_seq, first_inside=inside)
                    log_id, seq, count, high = claimed_log, -1, 0, 0
                elif claimed_seq <= seq:
                    raise BundleError("order", f"{_at(number)}: log {log_id} seq {claimed_seq} after seq {seq}: events "
                                               "must be in (log, seq) order, each once")
                seq = claimed_seq
                if seq >= high:  # seq only grows within a log: the covering checkpoint changes upwards
                    sizes = self.sizes[log_id]
                    index = bisect.bisect_right(sizes, seq)
                    if index == len(sizes):
                        raise BundleError("inclusion", f"{_at(number)}: no checkpoint of log {log_id} covers seq {seq}")
                    high = sizes[index]
                    cache = _ProofCache(high, self.roots[(log_id, high)])
                if proof["tree_size"] != high:
                    raise BundleError("inclusion", f"{_at(number)}: the proof must be against checkpoint {high} of "
                                                   f"log {log_id}, the first covering seq {seq}")
                try:
                    cache.verify(sha256(b"\x00" + line).digest(), seq, proof["proof"])
                except ProofError as e:
                    if not all(schema.node_valid(node) for node in proof["proof"]):
                        raise BundleError("bundle-format", f"proofs.jsonl line {number}: a proof node is not the "
                                                           "canonical base64 of 32 bytes") from None
                    raise BundleError("inclusion", f"{_at(number)} (log {log_id} seq {seq}) is not in checkpoint "
                                                   f"{high}: {e.reason} (the event was altered or inserted)") from None
                if event["vendor_id"] != vendor_id:
                    raise BundleError("scope", f"{_at(number)}: an event of another vendor")
                if series is None:
                    for name, value in filters:
                        if event[name] != value:
                            raise BundleError("scope", f"{_at(number)}: outside the export's {name} filter")
                    if not inside:
                        raise BundleError("scope", f"{_at(number)}: the event's time {at} is outside the period")
                else:
                    if event[subject_field] != subject:
                        raise BundleError("scope", f"{_at(number)}: not an event of {series} {subject}")
                    value = event[number_field]
                    if type(value) is not int:
                        raise BundleError("gap", f"{_at(number)}: the event has no {number_field}")
                    if count == 0:
                        state.first_number = value
                    elif value != previous + 1:
                        raise BundleError("gap", f"{_at(number)}: log {log_id} {number_field} {value} follows "
                                                 f"{previous}: events are missing or out of order")
                    previous = value
                count += 1
                last_inside = inside
                add(event)
                licence = event["licence_id"]
                if licence is not None and event["terms_version"] is not None:
                    self.terms_named.add((licence, event["terms_version"]))
                    if event["kind"] == "member:terms:accept":
                        detail = event["detail"]
                        digest = detail.get("terms_sha256") if detail is not None else None
                        if type(digest) is str:
                            self.terms_accepted.append((number, licence, event["terms_version"], digest))
                if event["kind"] in termination_kinds:
                    try:
                        termination = named_termination(event)
                    except ValueError as e:
                        raise BundleError("terminations", f"{_at(number)}: {e}") from None
                    if termination is not None:
                        self.terminations_named.append((number, termination, event))
        except orjson.JSONDecodeError:
            raise BundleError("bundle-format", f"{_at(number)} or its proof line is not valid JSON") from None
        except ShapeError as e:
            raise BundleError("bundle-format", f"{_at(number)} or its proof line: {e}") from None
        state.events, state.last_seq, state.last_inside = count, seq, inside

    def _per_log(self) -> None:
        claimed = self.manifest["logs"]
        names = [c["log"] for c in claimed]
        if names != list(self.logs):
            raise BundleError("count", f"manifest.json lists logs {names}; events.jsonl holds {list(self.logs)}")
        if set(self.checkpoints) != set(self.logs):
            extra = sorted(set(self.checkpoints) ^ set(self.logs))
            raise BundleError("count", f"checkpoints and events name different logs: {extra}")
        for entry in claimed:
            log_id = entry["log"]
            state = self.logs[log_id]
            # The origin is the one its checkpoints carry (they were opened as origin(log_id)).
            found = {"origin": origin(log_id), "events": state.events, "first_seq": state.first_seq,
                     "last_seq": state.last_seq, "checkpoints": len(self.checkpoints[log_id])}
            for name, value in found.items():
                if entry[name] != value:
                    raise BundleError("count", f"log {log_id}: manifest.json says {name} {entry[name]!r}, the "
                                               f"bundle holds {value!r} (events deleted or added?)")
            if self.series is not None:
                # A series must start at 0 or at a witness from before the period: otherwise its
                # first events could have been cut off unseen.
                if state.first_inside and state.first_number != 0:
                    raise BundleError("gap", f"log {log_id}: the {self.series} series starts at "
                                             f"{self.series}_seq {state.first_number} with no earlier event as "
                                             "witness: events before it are missing")
                if state.last_inside:
                    self.verdict.notes.append(f"log {log_id}: no later event of the {self.series} yet, so the "
                                              "series' end is not witnessed")
            if entry["pending"]:
                self.verdict.notes.append(f"log {log_id}: {entry['pending']} events of the period were not yet "
                                          "checkpointed and are not in the bundle")
        # pending_logs lists the logs none of whose events are in the bundle, each once (§6.2): a log
        # with events there has its pending count in manifest.logs.
        listed: set[str] = set()
        for pending in self.manifest["pending_logs"]:
            log_id = pending["log"]
            if log_id in self.logs or log_id in listed:
                raise BundleError("count", f"manifest.json lists log {log_id} in pending_logs, but "
                                           + ("the bundle holds events of it" if log_id in self.logs else "twice"))
            listed.add(log_id)
        for pending in self.manifest["pending_logs"]:
            self.verdict.notes.append(f"log {pending['log']}: {pending['pending']} events not yet "
                                      "checkpointed, not in the bundle")

    def _terms(self) -> None:
        """Step 8a (format 2): terms.jsonl holds, in order, exactly the terms versions the events name,
        each text with its SHA-256, and each acceptance event's digest is its text's."""
        digests: dict[tuple[str, int], str] = {}
        previous: tuple[str, int] | None = None
        for number, line in self._jsonl("terms.jsonl", schema.terms_line):
            pair = (line["licence_id"], line["version"])
            if previous is not None and pair <= previous:
                raise BundleError("terms", f"terms.jsonl line {number}: lines must be in (licence_id, version) "
                                           "order, each once")
            previous = pair
            if hashlib.sha256(line["text"].encode("utf-8")).hexdigest() != line["sha256"]:
                raise BundleError("terms", f"terms.jsonl line {number}: the text of licence {pair[0]} terms version "
                                           f"{pair[1]} does not have the SHA-256 the line names (the text was changed)")
            digests[pair] = line["sha256"]
        missing, extra = sorted(self.terms_named - digests.keys()), sorted(digests.keys() - self.terms_named)
        if missing or extra:
            raise BundleError("terms", "terms.jsonl must hold exactly the terms versions the events name: "
                                       + "; ".join(([f"missing {missing[:3]}"] if missing else [])
                                                   + ([f"not named by any event {extra[:3]}"] if extra else [])))
        for number, licence, version, digest in self.terms_accepted:
            if digests[(licence, version)] != digest:
                raise BundleError("terms", f"{_at(number)}: the member accepted terms with SHA-256 {digest}; "
                                           f"terms.jsonl's text of licence {licence} version {version} is another")

    def _terminations(self) -> None:
        """Step 8b (format 3): terminations.jsonl holds, in termination_id order, the documents of exactly the
        terminations the events name, each with the SHA-256 its events recorded; each notice is signed by
        the audit key it names, valid at the notice's effective time (§6.1.4)."""
        if self.format == FORMAT_V2:  # which has no terminations.jsonl, nor events naming one
            if self.terminations_named:
                number, termination, _ = self.terminations_named[0]
                raise BundleError("terminations", f"{_at(number)} names termination {termination}, which a "
                                                  f"{FORMAT_V2!r} bundle cannot hold")
            return
        keys = {key.key_id: key for key in self.keys}
        found: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {}  # id: line number, line, notice
        previous: str | None = None
        for number, line in self._jsonl("terminations.jsonl", schema.terminations_line):
            where = f"terminations.jsonl line {number}"
            termination = line["termination_id"]
            if previous is not None and termination <= previous:
                raise BundleError("terminations", f"{where}: lines must be in termination_id order, each once")
            previous = termination
            if (line["attestation"] is None) != (line["attestation_sha256"] is None):
                raise BundleError("terminations", f"{where}: attestation and attestation_sha256 must be both null or "
                                                  "both given")
            for what in ("notice", "attestation"):
                text = line[what]
                if text is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() != line[f"{what}_sha256"]:
                    raise BundleError("terminations", f"{where}: the {what} of termination {termination} does not have "
                                                      f"the SHA-256 the line names (the {what} was changed)")
            notice = _document(line["notice"], f"{where}: the notice")
            effective = notice.get("effective_at")
            effective = effective.get("utc") if type(effective) is dict else None
            if (notice.get("type") != NOTICE_TYPE or notice.get("termination_id") != termination
                    or notice.get("licence_id") != line["licence_id"] or not _time(effective)):
                raise BundleError("terminations", f"{where}: the notice is not a {NOTICE_TYPE} of termination "
                                                  f"{termination} and licence {line['licence_id']} with an effective_at.utc "
                                                  "time")
            key = keys.get(line["key_id"])
            if key is None:
                raise BundleError("terminations", f"{where}: the notice of termination {termination} is signed by key "
                                                  f"{line['key_id']}, not an audit key of the bundle"
                                                  + (" that is trusted" if self.trusted_keys is not None else ""))
            if not key_valid_at(key, parse_time(effective)):
                raise BundleError("terminations", f"{where}: key {key.key_id} was not valid at the notice's effective "
                                                  f"time {effective} ({_validity(key)})")
            if not verify_ed25519(key.public, from_b64(line["signature"]), line["notice"].encode("utf-8")):
                raise BundleError("terminations", f"{where}: the signature of the notice of termination {termination} "
                                                  f"does not verify under key {key.key_id} (the notice or its "
                                                  "signature was changed)")
            if line["attestation"] is not None:
                attestation = _document(line["attestation"], f"{where}: the attestation")
                if (attestation.get("type") != ATTESTATION_TYPE or attestation.get("termination_id") != termination
                        or attestation.get("licence_id") != line["licence_id"]
                        or attestation.get("notice_sha256") != line["notice_sha256"]):
                    raise BundleError("terminations", f"{where}: the attestation is not a {ATTESTATION_TYPE} answering "
                                                      f"this line's notice (termination {termination})")
            found[termination] = (number, line, notice)
        attested: dict[str, bool] = {}
        for number, termination, event in self.terminations_named:
            kind, detail = event["kind"], event["detail"]
            if termination not in found:
                raise BundleError("terminations", f"{_at(number)}: {kind} names termination {termination}, whose "
                                                  "documents terminations.jsonl lacks")
            _, line, notice = found[termination]
            recorded = {"licence_id": event["licence_id"], "notice_sha256": detail.get("notice_sha256")}
            if kind == EventKind.LICENCE_TERMINATE:
                recorded.update(key_id=detail.get("key_id"))
            else:
                recorded.update(attestation_sha256=detail.get("attestation_sha256"))
            for name, value in recorded.items():
                if line[name] != value:
                    raise BundleError("terminations", f"{_at(number)}: {kind} records {name} {_short(value)} for "
                                                      f"termination {termination}; terminations.jsonl has "
                                                      f"{_short(line[name])} (a document was changed or left out)")
            if kind == EventKind.LICENCE_TERMINATE and detail.get("effective_at") != notice["effective_at"]["utc"]:
                raise BundleError("terminations", f"{_at(number)}: {kind} records effective_at "
                                                  f"{_short(detail.get('effective_at'))}, the notice "
                                                  f"{notice['effective_at']['utc']}")
            attested[termination] = attested.get(termination, False) or kind == EventKind.DELETION_ATTEST
        for termination, (number, line, _) in found.items():
            if termination not in attested:
                raise BundleError("terminations", f"terminations.jsonl line {number}: termination {termination} is "
                                                  "named by no event")
            if line["attestation"] is not None and not attested[termination]:
                raise BundleError("terminations", f"terminations.jsonl line {number}: the attestation of termination "
                                                  f"{termination} is named by no event")

    def _report(self) -> None:
        if self.format == FORMAT_V1:
            # Format 1: the page alone, unsigned and laid out by a renderer since retired: nothing to compare.
            self.verdict.notes.append(f"report.html of format 1 (made by {self.manifest.get('report')!r}) is not "
                                      "re-checked; its figures are recomputed by exporting the period again")
            return
        # Formats 2 and 3: report.json is what any verifier recomputes (§6.5); the page is rendered from
        # it, and comparing it with this renderer's is the reference implementation's extra check.
        claimed = _json(self._read("report.json", _MAX_REPORT), "report.json")
        try:
            schema.report_figures(claimed)
        except ShapeError as e:
            raise BundleError("bundle-format", str(e)) from None
        figures = report.figures(self.summary, self.manifest)
        if report.figures_json(figures) != self._read("report.json", _MAX_REPORT):
            raise BundleError("report", "report.json does not hold the figures of events.jsonl and the manifest "
                                        f"({_first_difference(figures, claimed)})")
        if self.format == FORMAT_V2:
            self.verdict.notes.append("report.html of format 2 was laid out by a renderer since retired (times in "
                                      "UTC): its figures, report.json, are checked; the page is not")
        elif report.render(figures, self.manifest).encode("utf-8") != self._read("report.html", _MAX_REPORT):
            raise BundleError("report", "report.html is not report.json rendered (by this verifier's renderer)")


def _claimed_file(manifest: bytes, name: str) -> tuple[str, int] | None:
    """The (sha256, bytes) manifest.json claims for `name`, read before the manifest is checked; None
    when it claims nothing readable (the manifest's own checks then say what is wrong)."""
    try:
        claimed = orjson.loads(manifest)["files"][name]
        return claimed["sha256"], claimed["bytes"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _signed_digest(note: bytes) -> str | None:
    """The manifest-sha256 manifest.sig's text names, unverified; None if it names none readably."""
    try:
        text = parse_note(note.decode("utf-8")).unverified_text
    except (UnicodeError, NoteError):
        return None
    found = [line.removeprefix("manifest-sha256 ") for line in text.split("\n") if line.startswith("manifest-sha256 ")]
    return found[0] if len(found) == 1 else None


def _validity(key: PublicKey) -> str:
    fields = {"not_before": key.not_before, "not_after": key.not_after, "retired_at": key.retired_at}
    return ", ".join(f"{name} {'null' if value is None else utc_text(value)}" for name, value in fields.items())


def _first_difference(found: Any, claimed: Any, where: str = "report.json") -> str:
    """Where two JSON values first differ, for the verdict."""
    if type(found) is dict and type(claimed) is dict:
        for name in sorted(found.keys() | claimed.keys()):
            if found.get(name) != claimed.get(name):
                return _first_difference(found.get(name), claimed.get(name), f"{where}.{name}")
    elif type(found) is list and type(claimed) is list and len(found) == len(claimed):
        for index, (a, b) in enumerate(zip(found, claimed, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{where}[{index}]")
    elif found == claimed:
        return f"{where}: the same values, written otherwise than RFC 8785 bytes and a newline"
    return f"{where} is {_short(claimed)}, the events give {_short(found)}"


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


class _ProofCache:
    """RFC 9162 inclusion verification against one root, starting from the last proof it accepted.

    The paths of two leaves join above level d, the highest bit in which their indices differ: at level
    d their nodes are siblings, and above it the proofs of both hold the same nodes. So a proof is
    verified by hashing from its leaf up to level d, then comparing its node there with the last leaf's
    node, the node it reached with the last leaf's sibling there, and its remaining nodes with the last
    proof's. In seq order d is mostly 0 or 1: an event costs one hash on average instead of log2(size).
    """

    def __init__(self, size: int, root: bytes) -> None:
        self.size, self.root = size, root
        self.top = (size - 1).bit_length()  # the root's level
        self.last = -1  # the leaf of the last proof accepted, -1 for none
        self.proof: list[Any] = []
        # Per level below the root, on the last leaf's path: its node, the node's sibling, and how many
        # nodes its proof has from that sibling to the end (for levels with a sibling). Counted from the
        # end, they stay right for the levels above d, where the next proof has the same nodes.
        self.path = [b""] * self.top
        self.siblings = [b""] * self.top
        self.rest = [0] * self.top

    def verify(self, leaf: bytes, index: int, proof: Any) -> None:
        if type(proof) is not list:
            raise ProofError("the proof is not a list of base64 hashes")
        if not 0 <= index < self.size:
            raise ProofError("leaf index is not below the tree size")
        last, path, siblings, rest, count = self.last, self.path, self.siblings, self.rest, len(proof)
        # The levels up to d are rewritten below: the state is only trusted again once this proof is.
        self.last = -1
        top = (index ^ last).bit_length() - 1 if 0 <= last != index else self.top
        fn, sn, level, node, k = index, self.size - 1, 0, leaf, 0
        a2b, sha256, last_characters = binascii.a2b_base64, hashlib.sha256, schema.NODE_LAST
        try:
            while level != top:
                path[level] = node
                if fn != sn or fn & 1:  # else the tree's right edge: a node without a sibling moves up as it is
                    if k == count:
                        raise ProofError("proof has too few nodes")
                    sibling = siblings[level] = a2b(proof[k], strict_mode=True)
                    # Strict base64 of 32 bytes is 43 characters and "="; canonical, the last of the 43
                    # carries no bits beyond the 256 (schema.node_valid, in one comparison).
                    if len(sibling) != HASH_BYTES or proof[k][42] not in last_characters:
                        raise ProofError(f"a proof node is not the canonical base64 of {HASH_BYTES} bytes")
                    rest[level] = count - k
                    # RFC 9162 node hash, inline: this loop is the verifier's innermost.
                    node = sha256(b"\x01" + sibling + node if fn & 1 else b"\x01" + node + sibling).digest()
                    k += 1
                fn, sn, level = fn >> 1, sn >> 1, level + 1
            if top != self.top:
                # Level d: this leaf's node and the last leaf's are siblings, each proven by the other proof.
                if (k == count or a2b(proof[k], strict_mode=True) != path[top] or proof[k][42] not in last_characters
                        or node != siblings[top]):
                    raise ProofError("computed root does not match")
                earlier = self.proof
                if proof[k + 1:] != earlier[len(earlier) - rest[top] + 1:]:
                    raise ProofError("the proof's upper nodes are not the tree's")
                siblings[top], path[top], rest[top] = path[top], node, count - k
            elif k != count:
                raise ProofError("proof has too many nodes")
            elif node != self.root:
                raise ProofError("computed root does not match")
        except ProofError:  # a ValueError too
            raise
        except (ValueError, TypeError):  # a2b_base64 refused the node, or it is not a string
            raise ProofError(f"a proof node is not the base64 of {HASH_BYTES} bytes") from None
        self.last, self.proof = index, proof


class _Stream:
    """One file of the bundle inflated once, on a thread of `pool`, which hashes it for the manifest check
    and hands its chunks to the thread iterating this object."""

    def __init__(self, pool: ThreadPoolExecutor, path: str | Path, name: str) -> None:
        self.name = name
        # Bounded: the inflater runs at most this many chunks ahead of the parser.
        self.chunks: queue.Queue[bytes | None] = queue.Queue(_AHEAD)
        self.abandoned = False
        self.digest = pool.submit(self._inflate, path)

    def _inflate(self, path: str | Path) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        try:
            with zipfile.ZipFile(path) as bundle, bundle.open(self.name) as handle:  # a handle of its own
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if not self.abandoned:
                        self.chunks.put(chunk)
        finally:
            if not self.abandoned:
                self.chunks.put(None)  # the end, or an error that finish() raises
        return digest.hexdigest(), size

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.chunks.get()) is not None:
            yield chunk
        self.digest.result()  # a ZIP error (a bad CRC is only seen at the end) is raised here

    def abandon(self) -> None:
        """Stop handing chunks over; the thread still finishes the hash."""
        self.abandoned = True
        # Set before draining: the thread puts at most one more chunk after this, and the queue has room.
        while not self.chunks.empty():
            self.chunks.get_nowait()

    def finish(self) -> tuple[str, int]:
        """The file's SHA-256 (hex) and size, once the thread has read it to the end."""
        self.abandon()
        return self.digest.result()


def _lines(name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Each line of the file `name`, read as `chunks`, without its newline."""
    # A list of lines per chunk, chained: the lines themselves are iterated in C.
    return itertools.chain.from_iterable(_line_lists(name, chunks))


def _line_lists(name: str, chunks: Iterable[bytes]) -> Iterator[list[bytes]]:
    rest = b""
    for chunk in chunks:
        lines = chunk.split(b"\n")
        lines[0] = rest + lines[0]  # not rest + chunk: that would copy the whole chunk
        rest = lines.pop()
        if len(rest) > _MAX_LINE:
            raise BundleError("bundle-format", f"{name}: a line is longer than {_MAX_LINE} bytes")
        yield lines
    if rest:
        raise BundleError("bundle-format", f"{name}: the last line has no newline")


def _digest(bundle: zipfile.ZipFile, name: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with bundle.open(name) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _document(text: str, where: str) -> dict[str, Any]:
    """A termination notice or attestation: a JSON object naming no property twice."""
    try:
        value = schema.loads(text.encode("utf-8"))
    except (orjson.JSONDecodeError, ShapeError, UnicodeError) as e:
        raise BundleError("terminations", f"{where} is not JSON: {e}") from None
    if type(value) is not dict:
        raise BundleError("terminations", f"{where} is not a JSON object")
    return value


def _time(value: Any) -> bool:
    try:
        return isinstance(value, str) and parse_time(value) is not None
    except ValueError:
        return False


def _at(number: int) -> str:
    return f"events.jsonl line {number}"


def _json(data: bytes, where: str) -> Any:
    try:
        return schema.loads(data)
    except orjson.JSONDecodeError:
        raise BundleError("bundle-format", f"{where} is not valid JSON") from None
    except ShapeError as e:
        raise BundleError("bundle-format", f"{where}: {e}") from None


def _hash(text: Any, where: str) -> bytes:
    if not schema.node_valid(text):
        raise BundleError("bundle-format", f"{where}: a proof node is not the canonical base64 of {HASH_BYTES} bytes")
    return binascii.a2b_base64(text, strict_mode=True)


def _hashes(items: Any, where: str) -> list[bytes]:
    if not isinstance(items, list):
        raise BundleError("bundle-format", f"{where}: the proof must be a list of base64 hashes")
    return [_hash(item, where) for item in items]


def _witness_policy(witnesses: Iterable[str] | None, quorum: int | None) -> tuple[list[CosignatureVerifier], int] | None:
    """The given witness keys (each once) and the quorum, checked before the bundle is read."""
    if witnesses is None:
        if quorum is not None:
            raise BundleError("witness", "a quorum needs the witnesses' verifier keys (--witness VKEY)")
        return None
    verifiers: dict[str, CosignatureVerifier] = {}
    for vkey in witnesses:
        try:
            verifier = CosignatureVerifier.from_vkey(vkey.strip())
        except NoteError as e:
            raise BundleError("witness", f"a witness key is not a cosignature/v1 verifier key: {e.reason}") from None
        verifiers[verifier.vkey] = verifier
    if not verifiers:
        raise BundleError("witness", "no witness keys given")
    needed = len(verifiers) if quorum is None else quorum
    if not 1 <= needed <= len(verifiers):
        raise BundleError("witness", f"the quorum must be 1 to {len(verifiers)} (the distinct witness keys given), "
                                     f"not {needed}")
    return list(verifiers.values()), needed


def _vkeys(vkeys: Iterable[str]) -> set[str]:
    try:
        return keys_from_vkeys(vkeys)
    except NoteError as e:
        raise BundleError("keys", f"a trusted key is not a verifier key: {e.reason}") from None


def _trusted_checkpoints(text: str) -> list[tuple[str, dict[str, Any] | None]]:
    """The notes of a trusted checkpoint as given: a signed note, or the JSON GET /v1/audit/checkpoint
    returns ({"checkpoints": [...]}), or one checkpoint object of it (as in a receipt), each with the
    object it came in, if any."""
    if not text.lstrip().startswith(("{", "[")):  # a note starts with its origin
        return [(text, None)]
    try:
        value = schema.loads(text.encode("utf-8"))
    except (orjson.JSONDecodeError, ShapeError, UnicodeError) as e:
        raise BundleError("trusted-checkpoint", f"the trusted checkpoint is neither a signed note nor valid JSON: "
                                                f"{e}") from None
    items = value.get("checkpoints") if type(value) is dict and "checkpoints" in value else [value]
    if (type(items) is not list or not items
            or not all(type(item) is dict and type(item.get("note")) is str for item in items)):
        raise BundleError("trusted-checkpoint", "the trusted checkpoint's JSON is not that of GET "
                                                '/v1/audit/checkpoint: {"checkpoints": [{"note": ...}, ...]}')
    return [(item["note"], item) for item in items]


def _agree(trusted: OpenedCheckpoint, claimed: dict[str, Any] | None, which: str) -> None:
    """The fields of a checkpoint object beside its note (unsigned) must say what the note says."""
    if claimed is None:
        return
    signed = {"log": trusted.log_id, "origin": origin(trusted.log_id), "tree_size": trusted.size,
              "root_hash": b64(trusted.root), "signed_at": utc_text(trusted.signed_at), "key_id": trusted.key.key_id}
    for name, value in signed.items():
        if name in claimed and claimed[name] != value:
            raise BundleError("trusted-checkpoint", f"{which}: its {name} {claimed[name]!r} is not its note's "
                                                    f"{value!r}")


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.verify", description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--trusted-checkpoint", metavar="FILE",
                        help="a checkpoint kept from earlier: a signed note, or the JSON of GET /v1/audit/checkpoint")
    parser.add_argument("--trusted-key", metavar="VKEY", action="append",
                        help="accept only checkpoints signed by this verifier key (repeatable)")
    parser.add_argument("--witness", metavar="VKEY", action="append",
                        help="a witness's cosignature/v1 verifier key (repeatable)")
    parser.add_argument("--quorum", metavar="K", type=int,
                        help="cosignatures each log's events need from the --witness keys (default: all)")
    parser.add_argument("--require-signed", action="store_true",
                        help="refuse a format 1 bundle, whose manifest is not signed")
    args = parser.parse_args(argv)
    trusted = None
    if args.trusted_checkpoint:
        try:
            trusted = Path(args.trusted_checkpoint).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            verdict = Verdict(False, "trusted-checkpoint", f"cannot read {args.trusted_checkpoint}: {e}")
            out.write(verdict.line() + "\n")
            return 1
    verdict = verify_bundle(args.bundle, trusted, trusted_keys=args.trusted_key, witnesses=args.witness,
                            quorum=args.quorum, require_signed=args.require_signed)
    out.write(verdict.line() + "\n")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
