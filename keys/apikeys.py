"""API keys in the manner of GitHub tokens: typed prefix, public key id, random secret, CRC32 checksum.

    lpdm_<key id: 16 base62>_<secret: 43 base62><checksum: 6 base62>

The prefix lets secret scanners and people recognise a leaked key; the checksum lets the gateway
reject typos and random probes without touching the database.
"""

from __future__ import annotations

import enum
import re
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
    return ApiKey(kind, _checked_key_id(token, "API key"), token)


# OAuth client credentials (RFC 6749 §2.3.1) share the token format, under their own prefixes. They are
# not a KeyKind on purpose: a client secret is accepted only by the token endpoint, never as a bearer
# credential, so `parse()` must refuse it ("unknown API key prefix"), and a client id is public.
#     client id      lpdi_<key id: 16 base62>
#     client secret  lpda_<key id: 16 base62>_<secret: 43 base62><checksum: 6 base62>
# The secret repeats the client's key id, so a secret presented with the wrong client id is refused
# before any lookup, as is a secret with a bad checksum.
CLIENT_ID_PREFIX = "lpdi_"
CLIENT_SECRET_PREFIX = "lpda_"
CLIENT_ID_LENGTH = len(CLIENT_ID_PREFIX) + KEY_ID_LENGTH


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    key_id: str
    secret: str = field(repr=False)


def generate_client() -> ClientCredentials:
    """A new OAuth client id and secret; show the secret once and store only its hash."""
    key_id = _random_base62(KEY_ID_LENGTH)
    body = f"{CLIENT_SECRET_PREFIX}{key_id}_{_random_base62(SECRET_LENGTH)}"
    return ClientCredentials(CLIENT_ID_PREFIX + key_id, key_id, body + _checksum(body))


def parse_client_id(client_id: str) -> str:
    """The key id of a well-formed client id."""
    if len(client_id) != CLIENT_ID_LENGTH or not client_id.startswith(CLIENT_ID_PREFIX):
        raise MalformedKey(f"a client id is {CLIENT_ID_PREFIX} and {KEY_ID_LENGTH} base62 characters")
    key_id = client_id[len(CLIENT_ID_PREFIX):]
    if not _BASE62_SET.issuperset(key_id):
        raise MalformedKey("client id has characters outside base62")
    return key_id


def parse_client_secret(secret: str) -> str:
    """The key id of a well-formed client secret (checksum checked)."""
    if len(secret) != TOKEN_LENGTH:
        raise MalformedKey(f"a client secret has {TOKEN_LENGTH} characters")
    if not secret.startswith(CLIENT_SECRET_PREFIX):
        raise MalformedKey(f"a client secret starts with {CLIENT_SECRET_PREFIX}")
    return _checked_key_id(secret, "client secret")


def _checked_key_id(token: str, noun: str) -> str:
    """Separator, alphabet and checksum of a token of the right length and prefix; returns its key id."""
    if token[_KEY_ID_END] != "_":
        raise MalformedKey(f"{noun} separator missing")
    key_id, secret_and_checksum = token[_PREFIX_LENGTH:_KEY_ID_END], token[_KEY_ID_END + 1 :]
    if not _BASE62_SET.issuperset(key_id + secret_and_checksum):
        raise MalformedKey(f"{noun} has characters outside base62")
    if token[_CHECKSUM_START:] != _checksum(token[:_CHECKSUM_START]):
        raise MalformedKey(f"{noun} checksum does not match")
    return key_id


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


# Any of the secrets above inside a longer text: a key or client secret pasted where it does not belong.
_SECRET_IN_TEXT = re.compile("(" + "|".join(sorted([*_PREFIXES.values(), CLIENT_SECRET_PREFIX])) + ")"
                             "([0-9A-Za-z]{" + str(KEY_ID_LENGTH) + "})_[0-9A-Za-z]+")


def redact(text: str) -> str:
    """`text` with the secret part of every key or client secret in it replaced (the key id stays: it
    names the credential without giving it away). Texts that clients send end up in evidence and logs."""
    if "lpd" not in text:  # the usual case, at the cost of one substring search
        return text
    return _SECRET_IN_TEXT.sub(r"\1\2_[redacted]", text)

