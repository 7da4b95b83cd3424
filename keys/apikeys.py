"""API keys in the manner of GitHub tokens: typed prefix, public key id, random secret, CRC32 checksum.

    lpdm_<key id: 16 base62>_<secret: 43 base62><checksum: 6 base62>

The prefix lets secret scanners and people recognise a leaked key; the checksum lets the gateway
reject typos and random probes without touching the database.
"""

from __future__ import annotations

import enum
import secrets
import string
import zlib
from dataclasses import dataclass, field

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_SET = frozenset(BASE62)

KEY_ID_LENGTH = 16
# 43 base62 characters carry 43 * log2(62) = 256.03 bits.
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so any CRC32 fits.
_PREFIX_LENGTH = len("lpdm_")
TOKEN_LENGTH = _PREFIX_LENGTH + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
_KEY_ID_END = _PREFIX_LENGTH + KEY_ID_LENGTH
_CHECKSUM_START = TOKEN_LENGTH - CHECKSUM_LENGTH


class KeyKind(enum.StrEnum):
    MEMBER = "member"
    VENDOR = "vendor"
    COMPLIANCE = "compliance"
    OPERATOR = "operator"
    SHARING = "sharing"


_PREFIXES: dict[KeyKind, str] = {
    KeyKind.MEMBER: "lpdm_",
    KeyKind.VENDOR: "lpdv_",
    KeyKind.COMPLIANCE: "lpdc_",
    KeyKind.OPERATOR: "lpdo_",
    KeyKind.SHARING: "lpds_",
}
_KINDS = {prefix: kind for kind, prefix in _PREFIXES.items()}


class MalformedKey(ValueError):
    """The presented text is not a well-formed key; `reason` never contains the text itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ApiKey:
    kind: KeyKind
    key_id: str
    token: str = field(repr=False)


def generate(kind: KeyKind) -> ApiKey:
    """A new key of `kind`; show `token` to its owner once and store only its hash."""
    key_id = _random_base62(KEY_ID_LENGTH)
    body = f"{_PREFIXES[kind]}{key_id}_{_random_base62(SECRET_LENGTH)}"
    return ApiKey(kind, key_id, body + _checksum(body))


def parse(token: str) -> ApiKey:
    """Check the form and checksum of a presented token, before any lookup."""
    # Length first: it bounds all the work below, whatever a client sends.
    if len(token) != TOKEN_LENGTH:
        raise MalformedKey(f"an API key has {TOKEN_LENGTH} characters")
    kind = _KINDS.get(token[:_PREFIX_LENGTH])
    if kind is None:
        raise MalformedKey("unknown API key prefix")
    if token[_KEY_ID_END] != "_":
        raise MalformedKey("API key separator missing")
    key_id, secret_and_checksum = token[_PREFIX_LENGTH:_KEY_ID_END], token[_KEY_ID_END + 1 :]
    if not _BASE62_SET.issuperset(key_id + secret_and_checksum):
        raise MalformedKey("API key has characters outside base62")
    if token[_CHECKSUM_START:] != _checksum(token[:_CHECKSUM_START]):
        raise MalformedKey("API key checksum does not match")
    return ApiKey(kind, key_id, token)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))
