"""Offline verification of an evidence bundle: no database, no network (schemas/audit-format.md).

    python -m gateway.verify bundle.zip [--trusted-checkpoint FILE] [--trusted-key VKEY ...]

Checks, in order, stopping at the first problem: the ZIP's files against manifest.json; every
checkpoint's signature by a known key valid at its signed time; consistency between each log's
successive checkpoints (and with a trusted checkpoint); then every event: its inclusion proof against
its covering checkpoint, (log, seq) order and uniqueness, its log and seq against its proof line, its
place in the scope, and — for unfiltered exports — the gap-free vendor (or member) series with its
witnesses; finally per-log counts against the manifest and report.html rendered again from the events.

When a file's content fails a check, the verifier first finishes hashing it: if the manifest does not
match either, "manifest-mismatch" is the problem reported, since it explains the other.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hashlib
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from gateway import report
from gateway.checkpoints import (
    CheckpointError,
    OpenedCheckpoint,
    keys_from_vkeys,
    open_checkpoint,
    parse_time,
    public_key_from_json,
)
from gateway.evidence import FILES, FORMAT
from gateway.signing_keys import PublicKey
from keys.merkle import HASH_BYTES, ProofError, node_hash, verify_consistency
from keys.notes import NoteError

_CHUNK = 1 << 20
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
                  trusted_keys: Iterable[str] | None = None) -> Verdict:
    """Verify the bundle at `path`. `trusted_checkpoint`: a checkpoint note obtained earlier (e.g. from
    GET /v1/audit/checkpoint or a receipt); `trusted_keys`: C2SP verifier keys to accept instead of
    trusting keys.json alone (keys.json still supplies each key's validity)."""
    try:
        with zipfile.ZipFile(path) as bundle:
            return _Verifier(bundle, trusted_checkpoint, trusted_keys).run()
    except BundleError as e:
        return Verdict(False, e.code, e.message)
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:
        return Verdict(False, "bundle-format", f"not a readable ZIP file: {e}")


@dataclass
class _Log:
    """What the events of one log showed, to compare with the manifest at the end."""

    events: int = 0
    first_seq: int | None = None
    last_seq: int = -1
    number: int | None = None       # series number of the previous event
    first_inside: bool = False      # whether the first event is in the period
    first_number: int | None = None
    last_inside: bool = False


class _Verifier:
    def __init__(self, bundle: zipfile.ZipFile, trusted_checkpoint: str | None,
                 trusted_keys: Iterable[str] | None) -> None:
        self.bundle = bundle
        self.trusted_checkpoint = trusted_checkpoint
        self.trusted_keys = None if trusted_keys is None else _vkeys(trusted_keys)
        self.verdict = Verdict(True)
        self.checkpoints: dict[str, list[OpenedCheckpoint]] = {}
        self.logs: dict[str, _Log] = {}

    def run(self) -> Verdict:
        self.manifest = self._manifest()
        for name in ("keys.json", "checkpoints.jsonl", "consistency.jsonl", "report.html"):
            self._check_hash(name)
        self.keys = self._keys()
        self._checkpoints()
        self._consistency()
        if self.trusted_checkpoint is not None:
            self._trusted()
        self.summary = report.Summary(self.scope["from"], self.scope["to"])
        try:
            self._events()
        except BundleError:
            # Content failed a check; if the file also fails the manifest, that is the first problem.
            for name in ("events.jsonl", "proofs.jsonl"):
                self._check_hash(name)
            raise
        for name in ("events.jsonl", "proofs.jsonl"):
            self._compare(name, self.hashed[name])
        self._per_log()
        self._report()
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
        expected = {"manifest.json", *FILES}
        if set(names) != expected:
            missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
            raise BundleError("bundle-format", f"the bundle's files differ from the format's: missing {missing}, "
                                               f"unexpected {extra}")
        manifest = _json(self._read("manifest.json", _MAX_MANIFEST), "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError("bundle-format", f"manifest.json is not a {FORMAT} manifest")
        files = manifest.get("files")
        if not isinstance(files, dict) or set(files) != set(FILES):
            raise BundleError("bundle-format", "manifest.json must list the hash of every other file")
        scope = manifest.get("scope")
        try:
            assert isinstance(scope, dict)
            parse_time(scope["from"]), parse_time(scope["to"])
            assert isinstance(scope.get("vendor_id"), str) and scope["from"] < scope["to"]
        except (AssertionError, KeyError, TypeError, ValueError):
            raise BundleError("bundle-format", "manifest.json has no valid scope (vendor_id, from, to)") from None
        self.scope: dict[str, Any] = scope
        # The series follows from the scope, so a manifest cannot switch the gap check off on its own.
        self.series = None if scope.get("dataset_id") else ("member" if scope.get("member_id") else "vendor")
        if manifest.get("series") != self.series:
            raise BundleError("bundle-format", f"manifest.json says series {manifest.get('series')!r}; its scope "
                                               f"means {self.series!r}")
        self.hashed: dict[str, tuple[str, int]] = {}
        return manifest

    def _read(self, name: str, limit: int) -> bytes:
        with self.bundle.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise BundleError("bundle-format", f"{name} is larger than {limit} bytes")
        return data

    def _check_hash(self, name: str) -> None:
        digest, size = hashlib.sha256(), 0
        with self.bundle.open(name) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        self._compare(name, (digest.hexdigest(), size))

    def _compare(self, name: str, found: tuple[str, int]) -> None:
        claimed = self.manifest["files"][name]
        if not isinstance(claimed, dict) or (claimed.get("sha256"), claimed.get("bytes")) != found:
            raise BundleError("manifest-mismatch", f"{name} does not match its SHA-256 in manifest.json")

    def _lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        """(line number, line without its newline), hashing the file as it is read."""
        digest, size, number, rest = hashlib.sha256(), 0, 0, b""
        with self.bundle.open(name) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if len(rest) > _MAX_LINE:
                    raise BundleError("bundle-format", f"{name}: a line is longer than {_MAX_LINE} bytes")
                for line in lines:
                    number += 1
                    yield number, line
        if rest:
            raise BundleError("bundle-format", f"{name}: the last line has no newline")
        self.hashed[name] = (digest.hexdigest(), size)

    def _jsonl(self, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for number, line in self._lines(name):
            value = _json(line, f"{name} line {number}")
            if not isinstance(value, dict):
                raise BundleError("bundle-format", f"{name} line {number} is not a JSON object")
            yield number, value

    # -- keys and checkpoints ---------------------------------------------------------------------

    def _keys(self) -> list[PublicKey]:
        data = _json(self._read("keys.json", _MAX_MANIFEST), "keys.json")
        try:
            keys = [public_key_from_json(item) for item in data["keys"]]
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise BundleError("bundle-format", f"keys.json: {e}") from None
        if self.trusted_keys is not None:
            keys = [key for key in keys if key.vkey() in self.trusted_keys]
        return keys

    def _checkpoints(self) -> None:
        previous: tuple[str, int] = ("", 0)
        for number, line in self._jsonl("checkpoints.jsonl"):
            where = f"checkpoints.jsonl line {number}"
            log_id, size, note = line.get("log"), line.get("tree_size"), line.get("note")
            if not isinstance(log_id, str) or not _is_int(size) or not isinstance(note, str):
                raise BundleError("bundle-format", f"{where}: needs log, tree_size and note")
            try:
                opened = open_checkpoint(note, self.keys, log_id)
            except CheckpointError as e:
                raise BundleError(e.code, f"{where} (log {log_id}, size {size}): {e.reason}") from None
            if opened.size != size:
                raise BundleError("checkpoint-order", f"{where}: the note is of size {opened.size}, not {size}")
            if (log_id, size) <= previous:
                raise BundleError("checkpoint-order", f"{where}: checkpoints must be in (log, tree size) order, "
                                                      "each once")
            previous = (log_id, size)
            self.checkpoints.setdefault(log_id, []).append(opened)
        self.sizes = {log_id: [c.size for c in cps] for log_id, cps in self.checkpoints.items()}
        self.roots = {(c.log_id, c.size): c.root for cps in self.checkpoints.values() for c in cps}

    def _consistency(self) -> None:
        pairs = iter([(log_id, old, new) for log_id, cps in self.checkpoints.items() for old, new in zip(cps, cps[1:])])
        for number, line in self._jsonl("consistency.jsonl"):
            where = f"consistency.jsonl line {number}"
            expected = next(pairs, None)
            if expected is None:
                raise BundleError("consistency", f"{where}: a proof between no two successive checkpoints")
            log_id, old, new = expected
            if (line.get("log"), line.get("old_size"), line.get("new_size")) != (log_id, old.size, new.size):
                raise BundleError("consistency", f"{where}: expected the proof of log {log_id} from {old.size} to "
                                                 f"{new.size}")
            try:
                verify_consistency(old.size, new.size, old.root, new.root, _hashes(line.get("proof"), where))
            except ProofError as e:
                raise BundleError("consistency", f"log {log_id}: checkpoint {new.size} does not extend checkpoint "
                                                 f"{old.size} (the log was rewritten): {e.reason}") from None
        missing = next(pairs, None)
        if missing is not None:
            raise BundleError("consistency", f"no consistency proof for log {missing[0]} from {missing[1].size} to "
                                             f"{missing[2].size}")

    def _trusted(self) -> None:
        assert self.trusted_checkpoint is not None
        try:
            trusted = open_checkpoint(self.trusted_checkpoint, self.keys)
        except CheckpointError as e:
            raise BundleError("trusted-checkpoint", f"the trusted checkpoint does not verify: {e.reason}") from None
        cps = self.checkpoints.get(trusted.log_id)
        if not cps:
            raise BundleError("trusted-checkpoint", f"the bundle has no checkpoint of the trusted checkpoint's log "
                                                    f"{trusted.log_id}")
        match = next((c for c in cps if c.size == trusted.size), None)
        if match is None:
            where = ("precedes" if trusted.size < cps[0].size else "is newer than" if trusted.size > cps[-1].size
                     else "falls between")
            raise BundleError("trusted-checkpoint", f"the trusted checkpoint (size {trusted.size}) {where} the "
                                                    f"bundle's checkpoints of log {trusted.log_id} "
                                                    f"({cps[0].size}..{cps[-1].size}): cannot compare them")
        if match.root != trusted.root:
            raise BundleError("trusted-checkpoint", f"log {trusted.log_id} was rewritten: its checkpoint of size "
                                                    f"{trusted.size} in the bundle has another root than the trusted "
                                                    "one")
        self.verdict.notes.append(f"consistent with the trusted checkpoint of log {trusted.log_id} at size "
                                  f"{trusted.size}")

    # -- events -----------------------------------------------------------------------------------

    def _events(self) -> None:
        scope, series = self.scope, self.series
        number_field = f"{series}_seq" if series else None
        subject_field, subject = (f"{series}_id", scope[f"{series}_id"]) if series else (None, None)
        start, end = scope["from"], scope["to"]
        cache: _ProofCache | None = None
        previous: tuple[str, int] = ("", -1)
        proofs = self._jsonl("proofs.jsonl")
        for number, line in self._lines("events.jsonl"):
            where = f"events.jsonl line {number}"
            found = next(proofs, None)
            if found is None:
                raise BundleError("bundle-format", f"{where} has no proof line (proofs.jsonl is shorter)")
            proof = found[1]
            event = _json(line, where)
            if not isinstance(event, dict):
                raise BundleError("bundle-format", f"{where} is not a JSON object")
            log_id, seq, size = proof.get("log"), proof.get("seq"), proof.get("tree_size")
            if not isinstance(log_id, str) or not _is_int(seq) or not _is_int(size):
                raise BundleError("bundle-format", f"proofs.jsonl line {number}: needs log, seq and tree_size")
            if event.get("log") != log_id or event.get("seq") != seq:
                raise BundleError("log-mismatch", f"{where}: the event names log {event.get('log')} seq "
                                                  f"{event.get('seq')}, its proof log {log_id} seq {seq}")
            if (log_id, seq) <= previous:
                raise BundleError("order", f"{where}: log {log_id} seq {seq} after log {previous[0]} seq "
                                           f"{previous[1]}: events must be in (log, seq) order, each once")
            previous = (log_id, seq)
            sizes = self.sizes.get(log_id)
            if sizes is None:
                raise BundleError("log-mismatch", f"{where}: log {log_id} has no checkpoint in the bundle")
            covering = _first_above(sizes, seq)
            if covering is None or covering != size:
                raise BundleError("inclusion", f"{where}: the proof must be against checkpoint "
                                               f"{covering} of log {log_id}, the first covering seq {seq}")
            if cache is None or cache.key != (log_id, size):
                cache = _ProofCache((log_id, size), size, self.roots[(log_id, size)])
            leaf = hashlib.sha256(b"\x00" + line).digest()
            try:
                cache.verify(leaf, seq, proof.get("proof"), where)
            except ProofError as e:
                raise BundleError("inclusion", f"{where} (log {log_id} seq {seq}) is not in checkpoint {size}: "
                                               f"{e.reason} (the event was altered or inserted)") from None
            if event.get("vendor_id") != scope["vendor_id"]:
                raise BundleError("scope", f"{where}: an event of another vendor")
            at = event.get("at")
            inside = isinstance(at, str) and start <= at < end
            state = self.logs.get(log_id)
            if state is None:
                state = self.logs[log_id] = _Log(first_seq=seq, first_inside=inside)
            if series is None:
                for name in ("member_id", "dataset_id"):
                    if scope.get(name) and event.get(name) != scope[name]:
                        raise BundleError("scope", f"{where}: outside the export's {name} filter")
                if not inside:
                    raise BundleError("scope", f"{where}: the event's time {at} is outside the period")
            else:
                assert subject_field is not None and number_field is not None
                if event.get(subject_field) != subject:
                    raise BundleError("scope", f"{where}: not an event of {series} {subject}")
                value = event.get(number_field)
                if not _is_int(value):
                    raise BundleError("gap", f"{where}: the event has no {number_field}")
                if state.number is not None and value != state.number + 1:
                    raise BundleError("gap", f"{where}: log {log_id} {number_field} {value} follows {state.number}: "
                                             f"{'events are missing' if value > state.number + 1 else 'out of order'}")
                if state.number is None:
                    state.first_number = value
                state.number = value
            state.events += 1
            state.last_seq = seq
            state.last_inside = inside
            self.summary.add(event)
        if next(proofs, None) is not None:
            raise BundleError("bundle-format", "proofs.jsonl has more lines than events.jsonl")

    def _per_log(self) -> None:
        claimed = self.manifest.get("logs")
        if not isinstance(claimed, list) or not all(isinstance(c, dict) for c in claimed):
            raise BundleError("bundle-format", "manifest.json has no list of logs")
        names = [c.get("log") for c in claimed]
        if names != list(self.logs):
            raise BundleError("count", f"manifest.json lists logs {names}; events.jsonl holds {list(self.logs)}")
        if set(self.checkpoints) != set(self.logs):
            extra = sorted(set(self.checkpoints) ^ set(self.logs))
            raise BundleError("count", f"checkpoints and events name different logs: {extra}")
        for entry in claimed:
            log_id = entry["log"]
            state = self.logs[log_id]
            found = {"events": state.events, "first_seq": state.first_seq, "last_seq": state.last_seq,
                     "checkpoints": len(self.checkpoints[log_id])}
            for name, value in found.items():
                if entry.get(name) != value:
                    raise BundleError("count", f"log {log_id}: manifest.json says {name} {entry.get(name)}, the "
                                               f"bundle holds {value} (events deleted or added?)")
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
            if entry.get("pending"):
                self.verdict.notes.append(f"log {log_id}: {entry['pending']} events of the period were not yet "
                                          "checkpointed and are not in the bundle")
        for pending in self.manifest.get("pending_logs") or []:
            self.verdict.notes.append(f"log {pending.get('log')}: {pending.get('pending')} events not yet "
                                      "checkpointed, not in the bundle")

    def _report(self) -> None:
        if self.manifest.get("report") != report.GENERATOR:
            self.verdict.notes.append(f"report.html made by {self.manifest.get('report')!r}, not re-checked")
            return
        page = report.render(self.summary, self.manifest).encode("utf-8")
        if page != self._read("report.html", _MAX_REPORT):
            raise BundleError("report", "report.html does not show what events.jsonl holds")


class _ProofCache:
    """RFC 9162 inclusion verification against one root, remembering the nodes it has authenticated.

    A node on a verified path is the root of its subtree: a later proof reaching the same node with the
    same value and the same remaining path is verified there. Neighbouring events share all but the
    lowest nodes, so a run of events costs about two hashes each instead of log2(size).
    """

    def __init__(self, key: tuple[str, int], size: int, root: bytes) -> None:
        self.key, self.size, self.root = key, size, root
        # (level, index) -> (node hash, the proof it came from, where the path above it starts there)
        self.known: dict[tuple[int, int], tuple[bytes, list[Any], int]] = {}

    def verify(self, leaf: bytes, index: int, proof: Any, where: str) -> None:
        if not isinstance(proof, list):
            raise BundleError("bundle-format", f"{where}: the proof must be a list of base64 hashes")
        if not 0 <= index < self.size:
            raise ProofError("leaf index is not below the tree size")
        fn, sn, level, node = index, self.size - 1, 0, leaf
        new: list[tuple[tuple[int, int], bytes, int]] = []
        for i, text in enumerate(proof):
            if sn == 0:
                raise ProofError("proof has too many nodes")
            if fn == sn and not fn & 1:
                # The tree's right edge: a node without a right sibling moves up unchanged.
                while not fn & 1:
                    fn, sn, level = fn >> 1, sn >> 1, level + 1
            seen = self.known.get((level, fn))
            if seen is not None:
                value, earlier, at = seen
                if value != node:
                    raise ProofError("computed root does not match")
                if proof[i:] != earlier[at:]:
                    raise ProofError("the proof's upper nodes are not the tree's")
                self._remember(new, proof)
                return
            new.append(((level, fn), node, i))
            sibling = _hash(text, where)
            node = node_hash(sibling, node) if fn & 1 else node_hash(node, sibling)
            fn, sn, level = fn >> 1, sn >> 1, level + 1
        if sn != 0:
            raise ProofError("proof has too few nodes")
        if node != self.root:
            raise ProofError("computed root does not match")
        self._remember(new, proof)

    def _remember(self, new: list[tuple[tuple[int, int], bytes, int]], proof: list[Any]) -> None:
        for position, value, at in new:
            self.known[position] = (value, proof, at)


def _first_above(sizes: Sequence[int], seq: int) -> int | None:
    index = bisect.bisect_right(sizes, seq)
    return sizes[index] if index < len(sizes) else None


def _json(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BundleError("bundle-format", f"{where} is not valid JSON") from None


def _hash(text: Any, where: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except binascii.Error:
        value = b""
    if len(value) != HASH_BYTES:
        raise BundleError("bundle-format", f"{where}: a proof node is not the base64 of {HASH_BYTES} bytes")
    return value


def _hashes(items: Any, where: str) -> list[bytes]:
    if not isinstance(items, list):
        raise BundleError("bundle-format", f"{where}: the proof must be a list of base64 hashes")
    return [_hash(item, where) for item in items]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _vkeys(vkeys: Iterable[str]) -> set[str]:
    try:
        return keys_from_vkeys(vkeys)
    except NoteError as e:
        raise BundleError("unknown-key", f"a trusted key is not a verifier key: {e.reason}") from None


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.verify", description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--trusted-checkpoint", metavar="FILE", help="a checkpoint note kept from earlier")
    parser.add_argument("--trusted-key", metavar="VKEY", action="append",
                        help="accept only checkpoints signed by this verifier key (repeatable)")
    args = parser.parse_args(argv)
    trusted = None
    if args.trusted_checkpoint:
        trusted = Path(args.trusted_checkpoint).read_text(encoding="utf-8")
    verdict = verify_bundle(args.bundle, trusted, trusted_keys=args.trusted_key)
    out.write(verdict.line() + "\n")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
