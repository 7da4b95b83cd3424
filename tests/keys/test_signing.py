"""Ed25519 keyring keys: raw round trips, JWK form, verification."""

from __future__ import annotations

import base64
import re

import pytest

from keys.sealing import MasterKey
from keys.signing import SigningKey, verify_ed25519

# RFC 8032 s7.1 TEST 1: secret key, public key, empty message, signature.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test_1() -> None:
    key = SigningKey.from_private_bytes("rfc8032", RFC8032_SECRET)
    assert key.public_bytes() == RFC8032_PUBLIC
    assert key.sign(b"") == RFC8032_SIGNATURE
    assert verify_ed25519(RFC8032_PUBLIC, RFC8032_SIGNATURE, b"")


def test_generated_key_ids_are_16_hex_and_keys_round_trip_through_sealing() -> None:
    key = SigningKey.generate()
    assert re.fullmatch("[0-9a-f]{16}", key.key_id)
    master = MasterKey.generate()
    context = f"signing_keys:{key.key_id}".encode()
    sealed = master.seal(key.private_bytes(), context=context)
    restored = SigningKey.from_private_bytes(key.key_id, master.open(sealed, context=context))
    assert restored.public_bytes() == key.public_bytes()
    assert verify_ed25519(key.public_bytes(), restored.sign(b"m"), b"m")


def test_repr_hides_the_private_key() -> None:
    key = SigningKey.from_private_bytes("abc", RFC8032_SECRET)
    assert "abc" in repr(key)
    assert RFC8032_SECRET.hex() not in repr(key) and "private" not in repr(key)


def test_public_jwk() -> None:
    key = SigningKey.from_private_bytes("k1", RFC8032_SECRET)
    jwk = key.public_jwk()
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"], "kid": "k1", "alg": "EdDSA", "use": "sig"}
    assert "=" not in jwk["x"]
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == RFC8032_PUBLIC


def test_verify_rejects_wrong_message_key_signature_and_lengths() -> None:
    assert not verify_ed25519(RFC8032_PUBLIC, RFC8032_SIGNATURE, b"x")
    assert not verify_ed25519(SigningKey.generate().public_bytes(), RFC8032_SIGNATURE, b"")
    assert not verify_ed25519(RFC8032_PUBLIC, RFC8032_SIGNATURE[:-1] + b"\x00", b"")
    assert not verify_ed25519(RFC8032_PUBLIC[:31], RFC8032_SIGNATURE, b"")
    assert not verify_ed25519(RFC8032_PUBLIC, RFC8032_SIGNATURE + b"\x00", b"")
    assert not verify_ed25519(b"", b"", b"")


def test_from_private_bytes_checks_the_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey.from_private_bytes("k", bytes(31))
