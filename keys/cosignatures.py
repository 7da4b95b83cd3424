"""C2SP tlog-cosignature/v1 (Ed25519): a witness's timestamped statement that it verified a checkpoint.

A cosignature is a signed-note signature line on the checkpoint,

    — <witness name> base64(key ID || u64 big-endian timestamp || Ed25519 signature)

whose key ID is SHA-256(name || 0x0A || 0x04 || public key)[:4] (signature type 0x04, so the same
Ed25519 key never makes a signature that a plain 0x01 note verifier would accept), and whose signature
is over "cosignature/v1\\n", "time <timestamp>\\n" and then the checkpoint's note text. The message does
not name the witness: a witness needs a key of its own per name (tlog-cosignature says so).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from keys.notes import NoteError, SignatureLine, check_key_name, key_hash_of, parse_note, parse_vkey
from keys.signing import SIGNATURE_BYTES, SigningKey, verify_ed25519

ALG_COSIGNATURE_V1 = 0x04
HEADER = "cosignature/v1\n"
MAX_TIMESTAMP = 2**63 - 1
_SIGNATURE_PREFIX = "\u2014 "


def message(text: str, timestamp: int) -> bytes:
    """What a v1 cosignature signs: the header line, the time line, then the checkpoint text."""
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise ValueError("a cosignature's timestamp is a POSIX time above 0 and below 2**63")
    return (HEADER + f"time {timestamp}\n" + text).encode("utf-8")


def _key_hash(name: str, public: bytes) -> bytes:
    return key_hash_of(name, bytes([ALG_COSIGNATURE_V1]) + public)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Cosigner:
    """A witness's Ed25519 key under its name: cosigns checkpoint texts."""

    def __init__(self, name: str, key: SigningKey) -> None:
        check_key_name(name)
        self.name = name
        self.key = key
        self.key_hash = _key_hash(name, key.public_bytes())

    def __repr__(self) -> str:
        return f"Cosigner(name={self.name!r}, key_hash={self.key_hash.hex()})"

    def vkey(self) -> str:
        """The verifier key: name+hex key ID+base64(0x04 || public key)."""
        return f"{self.name}+{self.key_hash.hex()}+{_b64(bytes([ALG_COSIGNATURE_V1]) + self.key.public_bytes())}"

    def cosign(self, text: str, timestamp: int) -> str:
        """The signature line (with its newline) cosigning the checkpoint note text `text` at `timestamp`."""
        signature = self.key.sign(message(text, timestamp))
        encoded = _b64(self.key_hash + struct.pack(">Q", timestamp) + signature)
        return f"{_SIGNATURE_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True)
class CosignatureVerifier:
    name: str
    key_hash: bytes
    public: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a witness vkey, checking its key ID against its name and key; raises NoteError."""
        return cls(*parse_vkey(vkey, ALG_COSIGNATURE_V1, "witness verifier key",
                               "tlog-cosignature/v1 (type 0x04, Ed25519)"))

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{_b64(bytes([ALG_COSIGNATURE_V1]) + self.public)}"

    def matches(self, line: SignatureLine) -> bool:
        """Whether the line claims to be this key's (name and key ID both match)."""
        return line.name == self.name and line.key_hash == self.key_hash

    def verify(self, text: str, line: SignatureLine) -> int:
        """The timestamp of this key's cosignature `line` on note text `text`; NoteError if it does not verify."""
        if not self.matches(line):
            raise NoteError(f"the signature line is not by witness {self.name}")
        if len(line.signature) != 8 + SIGNATURE_BYTES:
            raise NoteError(f"cosignature by {self.name} is not a timestamp and an Ed25519 signature (72 bytes)")
        (timestamp,) = struct.unpack(">Q", line.signature[:8])
        if not 0 < timestamp <= MAX_TIMESTAMP:
            raise NoteError(f"cosignature by {self.name} has timestamp {timestamp}, not a time above 0 below 2**63")
        if not verify_ed25519(self.public, line.signature[8:], message(text, timestamp)):
            raise NoteError(f"cosignature by {self.name} does not verify")
        return int(timestamp)


def line_text(line: SignatureLine) -> str:
    """A parsed signature line written out again (with its newline): base64 is canonical, so as it came."""
    return f"{_SIGNATURE_PREFIX}{line.name} {_b64(line.key_hash + line.signature)}\n"


def cosignature_lines(note: str, verifiers: list[CosignatureVerifier]) -> dict[str, tuple[int, str]]:
    """{vkey: (timestamp, line)} of the first valid cosignature in `note` by each given witness; as
    `cosignatures`, a given witness's line that does not verify raises NoteError."""
    parsed = parse_note(note)
    found: dict[str, tuple[int, str]] = {}
    for line in parsed.signatures:
        for verifier in verifiers:
            if verifier.matches(line):
                timestamp = verifier.verify(parsed.unverified_text, line)
                found.setdefault(verifier.vkey, (timestamp, line_text(line)))
    return found


def cosignatures(note: str, verifiers: list[CosignatureVerifier]) -> dict[str, int]:
    """{vkey: timestamp} of the valid cosignatures in `note` by the given witnesses (unknown lines are
    ignored). A line of a given witness that does not verify raises NoteError: it is forged or damaged,
    and a note carrying one is refused whole, as signed-note says of a known key's bad signature."""
    parsed = parse_note(note)
    found: dict[str, int] = {}
    for line in parsed.signatures:
        for verifier in verifiers:
            if verifier.matches(line):
                found[verifier.vkey] = verifier.verify(parsed.unverified_text, line)
    return found
