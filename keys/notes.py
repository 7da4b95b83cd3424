"""C2SP signed notes with Ed25519 keys, and the tlog checkpoints written as their text.

Note: text ending in newline, a blank line, then lines "— <key name> base64(key hash || signature)".
Checkpoint text: origin, decimal tree size, base64 root hash, then optional extension lines.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from keys.signing import PUBLIC_KEY_BYTES, SigningKey, verify_ed25519

ALG_ED25519 = 0x01
KEY_HASH_BYTES = 4
# The spec requires accepting at least 16 signatures; 100 is Go's sumdb/note limit.
MAX_SIGNATURES = 100
# Room for 100 post-quantum signatures (~5 kB each) and a long text; bounds work before any check.
MAX_NOTE_BYTES = 1 << 20
_MAX_TREE_SIZE = 2**64 - 1
_SIGNATURE_PREFIX = "\u2014 "
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
# At most 20 digits (2**64 - 1 has 20), so int() never meets a huge string.
_DECIMAL = re.compile("0|[1-9][0-9]{0,19}")
_HEX_KEY_HASH = re.compile("[0-9a-f]{8}")


class NoteError(ValueError):
    """A note, verifier key or checkpoint is malformed or not verified; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureLine(NamedTuple):
    name: str
    key_hash: bytes
    signature: bytes


class NoteSignature(NamedTuple):
    name: str
    key_hash: bytes
    verified: bool


@dataclass(frozen=True)
class ParsedNote:
    """A note split but not verified: nothing in `unverified_text` may be trusted."""

    unverified_text: str
    signatures: list[SignatureLine]


@dataclass(frozen=True)
class OpenedNote:
    """A note with at least one verified signature; unknown keys are listed with verified=False."""

    text: str
    signatures: list[NoteSignature]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()


class NoteSigner:
    def __init__(self, name: str, key: SigningKey) -> None:
        check_key_name(name)
        self.name = name
        self.key = key
        self._typed_public = bytes([ALG_ED25519]) + key.public_bytes()
        self.key_hash = key_hash_of(name, self._typed_public)

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_hash={self.key_hash.hex()})"

    def verifier_key(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{_b64(self._typed_public)}"

    def signature_line(self, text: str) -> str:
        """One signature line; join several signers' lines after `text + "\\n"` to cosign."""
        signature = self.key.sign(_check_text(text))
        return f"{_SIGNATURE_PREFIX}{self.name} {_b64(self.key_hash + signature)}\n"

    def sign(self, text: str) -> str:
        return text + "\n" + self.signature_line(text)


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_hash: bytes
    public: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse "name+hexhash+base64(0x01 || public key)", checking the hash against the key."""
        return cls(*parse_vkey(vkey, ALG_ED25519, "verifier key", "Ed25519"))


def parse_vkey(vkey: str, algorithm: int, what: str, kind: str) -> tuple[str, bytes, bytes]:
    """(name, key hash, Ed25519 public key) of a C2SP verifier key "name+hexhash+base64(type || key)"
    whose signature type is `algorithm`, the hash checked against name and key; errors name `what`
    (e.g. "verifier key") and `kind` (what the type means)."""
    name, _, rest = vkey.partition("+")
    hash_hex, _, key_b64 = rest.partition("+")
    check_key_name(name)
    if not _HEX_KEY_HASH.fullmatch(hash_hex):
        raise NoteError(f"{what} hash must be 8 lowercase hex digits")
    typed_public = _b64decode(key_b64, what)
    if key_hash_of(name, typed_public) != bytes.fromhex(hash_hex):
        raise NoteError(f"{what} hash does not match its name and key")
    if typed_public[:1] != bytes([algorithm]):
        raise NoteError(f"{what} algorithm is not {kind}")
    if len(typed_public) != 1 + PUBLIC_KEY_BYTES:
        raise NoteError(f"an Ed25519 {what} has {PUBLIC_KEY_BYTES} bytes")
    return name, bytes.fromhex(hash_hex), typed_public[1:]


def parse_note(note: str | bytes) -> ParsedNote:
    """Split a note and its signature lines, rejecting any malformed one; verifies nothing."""
    if len(note) > MAX_NOTE_BYTES:  # characters <= bytes, so this bounds the work below
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        data = note if isinstance(note, bytes) else note.encode("utf-8")
        text = data.decode("utf-8")
    except UnicodeError:
        raise NoteError("note is not valid UTF-8") from None
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    if _CONTROL.search(text):
        raise NoteError("note contains a control character")
    # The text may contain blank lines: the last one separates it from the signatures.
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    block = text[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note has no signature lines, or the last lacks its newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return ParsedNote(text[: split + 1], [_parse_signature_line(line) for line in lines])


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Verify a note: every known key's signature must verify, and at least one must exist."""
    parsed = parse_note(note)
    known = _index(verifiers)
    message = parsed.unverified_text.encode("utf-8")
    signatures = []
    for line in parsed.signatures:
        # A key is the pair (name, hash): a match on one alone is someone else's key, to ignore.
        verifier = known.get((line.name, line.key_hash))
        if verifier is None:
            signatures.append(NoteSignature(line.name, line.key_hash, False))
        elif verify_ed25519(verifier.public, line.signature, message):
            signatures.append(NoteSignature(line.name, line.key_hash, True))
        else:
            raise NoteError(f"signature by known key {line.name} does not verify")
    if not any(signature.verified for signature in signatures):
        raise NoteError("note has no signature by a known key")
    return OpenedNote(parsed.unverified_text, signatures)


def format_checkpoint(origin: str, size: int, root_hash: bytes, extensions: Sequence[str] = ()) -> str:
    """Checkpoint note text; raises ValueError for anything parse_checkpoint would not give back."""
    checkpoint = Checkpoint(origin, size, root_hash, tuple(extensions))
    text = "".join(f"{line}\n" for line in (origin, size, _b64(root_hash), *extensions))
    # Round-tripping rejects every bad input (newlines in a line, bad size, short hash) at once.
    try:
        parsed = parse_checkpoint(text)
    except NoteError as e:
        raise ValueError(f"not a valid checkpoint: {e.reason}") from None
    if parsed != checkpoint:
        raise ValueError("not a valid checkpoint: a line contains a newline")
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint text (per C2SP tlog-checkpoint); the caller checks the origin it expects."""
    if _CONTROL.search(text):
        raise NoteError("checkpoint contains a control character")
    if not text.endswith("\n"):
        raise NoteError("checkpoint text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise NoteError("checkpoint needs origin, size and root hash on non-empty lines")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > _MAX_TREE_SIZE:
        raise NoteError("tree size must be a decimal uint64 without leading zeros")
    root_hash = _b64decode(root_text, "root hash")
    # Only the canonical spelling, so one checkpoint has exactly one text.
    if len(root_hash) != 32 or _b64(root_hash) != root_text:
        raise NoteError("root hash must be the base64 of 32 bytes")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def _parse_signature_line(line: str) -> SignatureLine:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError("a line after the blank line is not a signature line")
    name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    check_key_name(name)
    raw = _b64decode(encoded, "signature")
    if len(raw) <= KEY_HASH_BYTES:
        raise NoteError("signature is shorter than its key hash")
    return SignatureLine(name, raw[:KEY_HASH_BYTES], raw[KEY_HASH_BYTES:])


def _index(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, bytes], NoteVerifier]:
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        previous = known.setdefault((verifier.name, verifier.key_hash), verifier)
        if previous.public != verifier.public:
            raise NoteError(f"two verifier keys named {verifier.name} share a key hash")
    return known


def _check_text(text: str) -> bytes:
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    if _CONTROL.search(text):
        raise NoteError("note text contains a control character")
    try:
        return text.encode("utf-8")
    except UnicodeError:
        raise NoteError("note text is not valid Unicode") from None


def check_key_name(name: str) -> None:
    # The spec forbids spaces and "+"; a control character or lone surrogate could never appear in
    # a valid note either, so a key named with one could never verify anything.
    if not name or "+" in name or any(c.isspace() or c < " " or "\ud800" <= c <= "\udfff" for c in name):
        raise NoteError("key name must be non-empty, without spaces, '+' or control characters")


def key_hash_of(name: str, typed_public: bytes) -> bytes:
    """SHA-256(name || 0x0A || algorithm byte || public key)[:4], per signed-note."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + typed_public).digest()[:KEY_HASH_BYTES]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise NoteError(f"{what} is not standard base64") from None
    # validate=True still accepts non-zero padding bits: several texts for one value. Only the
    # canonical one is accepted, so a signature or key has exactly one spelling.
    if _b64(data) != text:
        raise NoteError(f"{what} is not canonical base64")
    return data
