"""OAuth 2.0 access tokens as the resource server sees them: JWTs in the RFC 9068 profile, their keys.

The JWT keys are those of the keyring (gateway/signing_keys.py, purpose "jwt"); the snapshot holds
them as a `JwtKeyring` and gateway/oauth.py signs new tokens with its current key.

Verifying. `verify()` is the resource server's check on every request (RFC 9068 §4, RFC 8725):
  - one algorithm, EdDSA, and keys that are Ed25519 and nothing else: "none", HS256 keyed with the
    public key and every other algorithm are refused before any key is touched;
  - `typ` must be at+jwt; `crit` is refused; `jku`, `x5u`, `jwk` and `x5c` are never read, so a token
    cannot name its own key;
  - `kid` is only a key into the snapshot's dict of JWT keys: never a path, never SQL;
  - `iss` exact, `aud` must name this gateway, `exp`/`nbf`/`iat` with a small leeway, `jti`,
    `client_id` and `sub` required; a lifetime longer than this gateway issues, and an `iat` outside
    the signing key's period as the current key, are refused (a rotated-out key signs nothing new).
The authenticator (gateway/http/authentication.py) then requires the client and its member to be active
in the snapshot, so a revocation ends every token of the client at once.

Why not a JOSE library here: joserfc (authlib's JOSE layer) warns on every use of "EdDSA", deprecated
by RFC 9864 in favour of "Ed25519", which PyJWT and most resource servers do not accept yet. The
compact serialisation with one pinned algorithm is a few lines over `cryptography`'s Ed25519; the tests
check our tokens with PyJWT against the published JWKS, and PyJWT-made attack tokens against `verify`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import signing_keys
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.config import Config
from gateway.errors import Conflict, NotFound
from keys.sealing import MasterKey
from keys.signing import SigningKey

ALGORITHM = "EdDSA"
TOKEN_TYPE = "at+jwt"
# RFC 9068 §4: "at+jwt" or "application/at+jwt"; media types compare case-insensitively.
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Clock skew allowed between the instance that issued a token and the one checking it.
LEEWAY_SECONDS = 30
# Bounds the work a presented token can cause; ours are about 600 characters.
MAX_TOKEN_LENGTH = 4096


class InvalidToken(Exception):
    """A presented access token is not valid here; `reason` never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def issuer(config: Config) -> str:
    """The `iss` of our tokens and the RFC 8414 issuer: the public base URL, the same on every instance."""
    return config.base_url


def audience(config: Config) -> str:
    """The `aud` of our tokens: the gateway's API as a resource (RFC 8707 style identifier)."""
    return f"{config.base_url}/v1"


# -- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT public key of the keyring, ready to verify (Ed25519 only: the key is bound to EdDSA)."""

    key_id: str
    public: bytes
    verifier: Ed25519PublicKey = field(repr=False, compare=False)
    not_before: float
    not_after: float | None
    retired_at: float | None

    @classmethod
    def from_public_key(cls, key: signing_keys.PublicKey) -> JwtKey:
        return cls(key.key_id, key.public, Ed25519PublicKey.from_public_bytes(key.public), key.not_before.timestamp(),
                   None if key.not_after is None else key.not_after.timestamp(),
                   None if key.retired_at is None else key.retired_at.timestamp())

    def retired(self, now: float) -> bool:
        return self.retired_at is not None and now >= self.retired_at

    def jwk(self) -> dict[str, str]:
        """RFC 8037 JWK, with `alg` so that a verifier binds the key to EdDSA."""
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(self.public), "kid": self.key_id, "alg": ALGORITHM,
                "use": "sig"}


@dataclass(frozen=True, slots=True)
class JwtKeyring:
    """The snapshot's JWT keys: every key not yet retired verifies; `signer` (the current one) signs."""

    keys: Mapping[str, JwtKey] = field(default_factory=dict)
    signer: SigningKey | None = None

    def jwks(self, now: float) -> dict[str, Any]:
        """The published key set: the current key and every rotated-out key not yet retired."""
        return {"keys": [key.jwk() for key in self.keys.values() if not key.retired(now)]}


async def load_keyring(conn: asyncpg.Connection, master: MasterKey) -> JwtKeyring:
    """Every JWT key, and the current one opened for signing (created if there is none yet)."""
    signer = await signing_keys.current(conn, master, signing_keys.JWT)
    keys = {k.key_id: JwtKey.from_public_key(k) for k in await signing_keys.public_keys(conn, signing_keys.JWT)}
    return JwtKeyring(keys, signer)


async def rotate_key(writer: AuditWriter, actor: Actor, master: MasterKey, overlap: timedelta) -> dict[str, Any]:
    """Make a new JWT key current; the previous one keeps verifying for `overlap`, then is retired.

    New tokens are signed with the new key as soon as each instance's snapshot has it (NOTIFY, within
    milliseconds). Tokens signed by the previous key cannot have been issued after this rotation and
    live at most GATEWAY_TOKEN_TTL_SECONDS, so with an overlap of at least that, retiring it takes no
    valid token away.
    """
    async with writer.change() as change:
        previous = [k for k in await signing_keys.public_keys(change.conn, signing_keys.JWT) if k.not_after is None]
        new = await signing_keys.rotate(change.conn, master, signing_keys.JWT)
        retired = None
        if previous:
            retired = await signing_keys.retire(change.conn, previous[0].key_id, new.not_before + overlap)
        detail = {"purpose": signing_keys.JWT, "key_id": new.key_id,
                  "previous_key_id": retired.key_id if retired else None,
                  "previous_retired_at": retired.retired_at.isoformat() if retired and retired.retired_at else None}
        change.record(actor.event(EventKind.KEYRING_ROTATE, Outcome.CHANGE, detail=detail))
    return detail


async def retire_key(writer: AuditWriter, actor: Actor, key_id: str) -> signing_keys.PublicKey:
    """Withdraw a rotated-out JWT key now (e.g. suspected compromise): its tokens stop verifying at once."""
    async with writer.change() as change:
        keys = {k.key_id: k for k in await signing_keys.public_keys(change.conn, signing_keys.JWT)}
        if key_id not in keys:
            raise NotFound("JWT signing key")
        if keys[key_id].not_after is None:
            raise Conflict("this is the current JWT key: rotate first ('gateway keys rotate --purpose jwt')")
        retired = await signing_keys.retire(change.conn, key_id)
        assert retired is not None
        change.record(actor.event(EventKind.KEYRING_RETIRE, Outcome.CHANGE,
                                  detail={"purpose": signing_keys.JWT, "key_id": key_id}))
    return retired


# -- compact JWS ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _unb64(text: str, what: str) -> bytes:
    # Strict: the base64url alphabet without padding (RFC 7515 §2); anything else is not our token.
    if not _B64URL.issuperset(text) or len(text) % 4 == 1:
        raise InvalidToken(f"access token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"access token {what} is not base64url") from None


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_unb64(text, what))
    except orjson.JSONDecodeError:
        raise InvalidToken(f"access token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"access token {what} is not a JSON object")
    return value


def sign(signer: SigningKey, claims: dict[str, Any]) -> str:
    header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": signer.key_id}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode('ascii')))}"


def _number(claims: dict[str, Any], name: str, required: bool = True) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidToken(f"access token {name} claim missing or not a number")
    return float(value)


def _text_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidToken(f"access token {name} claim missing")
    return value


def verify(token: str, keyring: JwtKeyring, *, issuer: str, audience: str, max_lifetime: float,
           now: float) -> dict[str, Any]:
    """The claims of a valid access token; InvalidToken with the reason otherwise (see the module docstring)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("access token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("access token is not a signed JWT (header.payload.signature)")
    header_b64, payload_b64, signature_b64 = parts
    header = _json_object(header_b64, "header")
    # The algorithm is pinned, whatever the header says: "none", HS256 and the rest never reach a key.
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"access token algorithm not accepted (only {ALGORITHM})")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
        raise InvalidToken("access token typ must be at+jwt")
    if "crit" in header:
        raise InvalidToken("access token has critical header extensions this gateway does not support")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidToken("access token has no kid")
    # Only a dict lookup in memory: a kid such as "../../x" or "' OR 1=1 --" simply is not there.
    key = keyring.keys.get(kid)
    if key is None:
        raise InvalidToken("access token signed with an unknown key")
    try:
        key.verifier.verify(_unb64(signature_b64, "signature"), f"{header_b64}.{payload_b64}".encode("ascii"))
    except InvalidSignature:
        raise InvalidToken("access token signature invalid") from None
    if key.retired(now):
        raise InvalidToken("access token signing key retired")
    claims = _json_object(payload_b64, "claims")
    if claims.get("iss") != issuer:
        raise InvalidToken("access token issuer not accepted")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise InvalidToken("access token audience is not this gateway")
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    nbf = _number(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if now >= exp + LEEWAY_SECONDS:
        raise InvalidToken("access token expired")
    if nbf is not None and now + LEEWAY_SECONDS < nbf:
        raise InvalidToken("access token not valid yet (nbf)")
    if iat > now + LEEWAY_SECONDS:
        raise InvalidToken("access token issued in the future (iat)")
    if exp - iat > max_lifetime + LEEWAY_SECONDS:
        raise InvalidToken("access token lifetime longer than this gateway issues")
    # Our instances sign only with the current key: a token claiming another time was not made here.
    if iat < key.not_before - LEEWAY_SECONDS or (key.not_after is not None and iat > key.not_after + LEEWAY_SECONDS):
        raise InvalidToken("access token issued outside its signing key's period")
    for name in ("jti", "client_id", "sub"):
        _text_claim(claims, name)
    return claims


# -- the token endpoint (authlib) -----------------------------------------------------------------
