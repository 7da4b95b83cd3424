"""A C2SP tlog-witness (c2sp.org/tlog-witness) for the gateway's audit logs: `gateway witness serve`.

Small enough for a member or an auditor to run on their own machine: no database, one folder of
state. The witness is configured with the logs it witnesses (an origin prefix, `lpd-gateway/` for
every log of a deployment, and the verifier keys that sign them) and holds its own Ed25519 key,
generated once into `<state>/witness.key` (mode 0600). For each origin it keeps the latest checkpoint it
cosigned (size, root, the note with its cosignature) in `<state>/state.json`, replaced atomically
(temporary file, fsync, rename, fsync of the folder) before it answers, and it cosigns a new
checkpoint only if a consistency proof links it to that one (schemas/audit-format.md §8).

`add_checkpoint` answers as the specification says: 400 for a malformed request or an old size above
the checkpoint's, 404 for an unknown origin, 403 without a valid signature by a trusted key, 409 with
the latest size (`text/x.tlog.size`) when the old size is not it, 422 when the proof or the roots do
not agree, and 200 with the cosignature line. A validly signed checkpoint refused as inconsistent is
kept in `<state>/refused.jsonl`: with the cosigned one it is the proof of a fork.

The HTTP layer (gateway/http/witness_api.py) only hands bodies to this module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from keys.cosignatures import Cosigner
from keys.merkle import EMPTY_ROOT, HASH_BYTES, ProofError, verify_consistency
from keys.notes import NoteError, NoteVerifier, open_note, parse_checkpoint, parse_note
from keys.signing import SigningKey

SIZE_CONTENT_TYPE = "text/x.tlog.size"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_PROOF_LINES = 63
# An old-size line, 63 proof lines and a checkpoint with a few signatures fit many times over.
MAX_BODY_BYTES = 64 << 10
DEFAULT_ORIGIN_PREFIX = "lpd-gateway/"
KEY_FILE = "witness.key"
STATE_FILE = "state.json"
REFUSED_FILE = "refused.jsonl"
_OLD_LINE = re.compile(r"old (0|[1-9][0-9]{0,19})")
_MAX_SIZE = 2**64 - 1


class WitnessError(ValueError):
    """The witness cannot start: its state folder, key file or configuration is unusable."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = TEXT_CONTENT_TYPE


@dataclass(frozen=True)
class WitnessedLogs:
    """The logs a witness cosigns: every origin starting with `origin_prefix`, signed by one of `vkeys`."""

    origin_prefix: str
    vkeys: tuple[str, ...]

    def verifiers(self) -> list[NoteVerifier]:
        return [NoteVerifier.from_vkey(vkey) for vkey in self.vkeys]


@dataclass(frozen=True)
class _Request:
    old: int
    proof: list[bytes]
    note: str


class _BadRequest(ValueError):
    pass


def parse_request(body: bytes) -> _Request:
    """The add-checkpoint body: `old <size>`, up to 63 base64 hashes, an empty line, the checkpoint note."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("the body is not UTF-8") from None
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise _BadRequest("the body has no empty line before the checkpoint")
    lines = head.split("\n")
    found = _OLD_LINE.fullmatch(lines[0])
    if found is None or int(found[1]) > _MAX_SIZE:
        raise _BadRequest("the first line must be 'old <size>', the size in decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise _BadRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            node = binascii.a2b_base64(line, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _BadRequest("a consistency proof line is not base64") from None
        if len(node) != HASH_BYTES or base64.b64encode(node).decode("ascii") != line:
            raise _BadRequest(f"a consistency proof line is not the canonical base64 of {HASH_BYTES} bytes")
        proof.append(node)
    return _Request(int(found[1]), proof, note)


def origin_hash(origin: str) -> str:
    """The monitoring path's name of an origin: lowercase hex SHA-256 of it."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


class Witness:
    """One witness's key, configuration and state. Create with `Witness.open`; one process per folder."""

    def __init__(self, state_dir: Path, cosigner: Cosigner, logs: Sequence[WitnessedLogs], lock: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.cosigner = cosigner
        self.logs = list(logs)
        self._verifiers = [(entry.origin_prefix, entry.verifiers()) for entry in self.logs]
        self._lock_file = lock
        self._lock = threading.Lock()
        self.clock = clock
        self.state: dict[str, dict[str, Any]] = _load_state(state_dir / STATE_FILE)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], logs: Sequence[WitnessedLogs], name: str | None = None,
             clock: Callable[[], float] = time.time) -> Witness:
        """Open (creating if need be) the state folder, take its lock, and load or generate the key."""
        if not logs:
            raise WitnessError("a witness needs at least one log to witness (--log-key VKEY)")
        for entry in logs:
            if not entry.origin_prefix or not entry.vkeys:
                raise WitnessError("each witnessed log needs an origin prefix and at least one verifier key")
            try:
                entry.verifiers()
            except NoteError as e:
                raise WitnessError(f"not a log verifier key: {e.reason}") from None
        folder = Path(state_dir).expanduser().resolve()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(folder / ".lock", "a")  # noqa: SIM115 - held for the witness's lifetime
        try:
            # Two processes on one state would each check the old size against their own copy.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise WitnessError(f"another witness is running on {folder}") from None
        try:
            cosigner = _load_or_create_key(folder / KEY_FILE, name)
            return cls(folder, cosigner, logs, lock, clock)
        except BaseException:
            lock.close()
            raise

    def close(self) -> None:
        self._lock_file.close()

    def vkey(self) -> str:
        return self.cosigner.vkey()

    def _trusted(self, origin: str) -> list[NoteVerifier] | None:
        for prefix, verifiers in self._verifiers:
            if origin.startswith(prefix) and len(origin) > len(prefix):
                return verifiers
        return None

    def add_checkpoint(self, body: bytes) -> Answer:
        """POST /add-checkpoint: check the request, and cosign and persist the checkpoint if it holds."""
        if len(body) > MAX_BODY_BYTES:
            return Answer(400, f"the body is larger than {MAX_BODY_BYTES} bytes\n")
        try:
            request = parse_request(body)
            parsed = parse_note(request.note)
            checkpoint = parse_checkpoint(parsed.unverified_text)
        except _BadRequest as e:
            return Answer(400, f"{e}\n")
        except NoteError as e:
            return Answer(400, f"not a checkpoint note: {e.reason}\n")
        origin = checkpoint.origin
        verifiers = self._trusted(origin)
        if verifiers is None:
            return Answer(404, "unknown log origin\n")
        try:
            # Unknown keys' lines are ignored; a trusted key's line that fails, or none at all, is refused.
            open_note(request.note, verifiers)
        except NoteError as e:
            return Answer(403, f"{e.reason}\n")
        if request.old > checkpoint.size:
            return Answer(400, "the old size is larger than the checkpoint's\n")
        text = parsed.unverified_text
        # Check and update under one lock, persisted before the answer: a smaller checkpoint checked
        # before a larger one must not overwrite it afterwards (the rollback tlog-witness warns of).
        with self._lock:
            known = self.state.get(origin)
            latest = known["size"] if known else 0
            if request.old != latest:
                return Answer(409, f"{latest}\n", SIZE_CONTENT_TYPE)
            problem = self._inconsistency(request, checkpoint.size, checkpoint.root_hash, known)
            if problem is not None:
                self._keep_refused(origin, request, problem)
                return Answer(422, f"{problem}\n")
            timestamp = max(1, int(self.clock()))
            line = self.cosigner.cosign(text, timestamp)
            updated = dict(self.state)
            updated[origin] = {"size": checkpoint.size, "root": base64.b64encode(checkpoint.root_hash).decode("ascii"),
                               "note": request.note + line, "cosigned_at": timestamp}
            _write_atomically(self.state_dir / STATE_FILE, orjson.dumps(updated, option=orjson.OPT_INDENT_2))
            self.state = updated
        return Answer(200, line)

    @staticmethod
    def _inconsistency(request: _Request, size: int, root: bytes, known: dict[str, Any] | None) -> str | None:
        """Why the checkpoint does not extend the latest cosigned one (None: it does)."""
        if size == 0 and root != EMPTY_ROOT:
            return "a checkpoint of size 0 must have the empty tree's root"
        if request.old == 0:
            return "a proof from size 0 must be empty" if request.proof else None
        assert known is not None  # old == the latest size, which is above 0
        old_root = base64.b64decode(known["root"])
        if request.old == size and root != old_root:
            return "the checkpoint has the latest cosigned size but another root hash (a fork)"
        try:
            verify_consistency(request.old, size, old_root, root, request.proof)
        except ProofError as e:
            return f"the consistency proof does not verify: {e.reason}"
        return None

    def _keep_refused(self, origin: str, request: _Request, problem: str) -> None:
        """Keep a validly signed checkpoint that does not extend the cosigned one: evidence of a fork."""
        record = {"at": int(self.clock()), "origin": origin, "old": request.old, "problem": problem,
                  "proof": [base64.b64encode(node).decode("ascii") for node in request.proof],
                  "note": request.note, "cosigned_note": self.state[origin]["note"] if origin in self.state else None}
        with open(self.state_dir / REFUSED_FILE, "ab") as handle:
            handle.write(orjson.dumps(record) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def checkpoint(self, hashed_origin: str) -> Answer:
        """GET /<origin hash>/checkpoint: the latest cosigned checkpoint, with the log's signature and ours."""
        for origin, known in self.state.items():
            if origin_hash(origin) == hashed_origin:
                return Answer(200, known["note"])
        return Answer(404, "no checkpoint of that log was cosigned\n")


def _load_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as e:
        raise WitnessError(f"cannot read the witness state {path}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and {"size", "root", "note"} <= set(v)
                                             for v in data.values()):
        raise WitnessError(f"{path} is not a witness state file")
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves the old file or the new one, never a mix."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself is durable
    finally:
        os.close(folder)


def open_key(state_dir: str | os.PathLike[str], name: str | None = None) -> Cosigner:
    """The witness key of a state folder, generated on first use (for `gateway witness vkey`)."""
    folder = Path(state_dir).expanduser().resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _load_or_create_key(folder / KEY_FILE, name)


def default_name() -> str:
    """A witness name that is a schema-less URL, as tlog-cosignature recommends."""
    return f"{socket.gethostname()}/lpd-witness"


def _load_or_create_key(path: Path, name: str | None) -> Cosigner:
    """The witness key: generated once into `path` (0600), its name recorded with it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = SigningKey.generate()
        chosen = name or default_name()
        try:
            Cosigner(chosen, key)
        except NoteError as e:
            os.close(fd)
            path.unlink()
            raise WitnessError(f"--name {chosen!r}: {e.reason}") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps({"name": chosen, "ed25519_seed": base64.b64encode(key.private_bytes()).decode()}))
            handle.flush()
            os.fsync(handle.fileno())
        return Cosigner(chosen, key)
    if path.stat().st_mode & 0o077:
        raise WitnessError(f"{path} is readable by others: chmod 600 {path}")
    try:
        data = orjson.loads(path.read_bytes())
        key = SigningKey.from_private_bytes("witness", base64.b64decode(data["ed25519_seed"], validate=True))
        stored = data["name"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WitnessError(f"{path} is not a witness key file: {e}") from None
    if name is not None and name != stored:
        raise WitnessError(f"the key in {path} is named {stored!r}, not {name!r}: a witness keeps its name")
    return Cosigner(stored, key)
