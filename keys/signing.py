"""Ed25519 signing keys of the keyring, used for JWTs and audit checkpoints."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64


# eq=False: the library's private keys compare by identity, so value equality would be a pretence.
@dataclass(frozen=True, eq=False)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(secrets.token_hex(8), Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, key_id: str, raw: bytes) -> SigningKey:
        """Rebuild a key from its 32-byte seed, e.g. after opening it from the database."""
        if len(raw) != PRIVATE_KEY_BYTES:
            raise ValueError(f"an Ed25519 private key has {PRIVATE_KEY_BYTES} bytes")
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw 32-byte seed: seal it before it leaves memory."""
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def public_jwk(self) -> dict[str, str]:
        """The public key as an RFC 8037 JWK, bound to EdDSA so no other algorithm can use it."""
        x = base64.urlsafe_b64encode(self.public_bytes()).rstrip(b"=").decode("ascii")
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.key_id, "alg": "EdDSA", "use": "sig"}


def verify_ed25519(public: bytes, signature: bytes, message: bytes) -> bool:
    if len(public) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
