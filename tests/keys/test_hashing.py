"""Keyed hashes of tokens: HMAC-SHA256 under versioned server secrets, rotation without reissue."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.apikeys import KeyKind, generate
from keys.hashing import KeyHasher

OLD, NEW = b"o" * 32, b"n" * 32


def test_hash_is_hmac_sha256_under_the_current_secret() -> None:
    token = generate(KeyKind.MEMBER).token
    version, digest = KeyHasher({1: OLD, 2: NEW}, current=2).hash(token)
    assert version == 2
    assert digest == hmac.new(NEW, token.encode(), hashlib.sha256).digest()


def test_rotation_keeps_old_digests_valid_and_hashes_new_ones_with_the_new_secret() -> None:
    token = generate(KeyKind.SHARING).token
    before = KeyHasher({1: OLD}, current=1)
    stored = before.hash(token)
    after = KeyHasher({1: OLD, 2: NEW}, current=2)
    assert after.verify(token, *stored)
    assert after.hash(token)[0] == after.current_version == 2
    assert after.hash(token) != stored


def test_retired_or_unknown_versions_do_not_verify() -> None:
    token = generate(KeyKind.VENDOR).token
    version, digest = KeyHasher({1: OLD}, current=1).hash(token)
    assert not KeyHasher({2: NEW}, current=2).verify(token, version, digest)
    assert not KeyHasher({1: OLD}, current=1).verify(token, 7, digest)


def test_a_digest_only_verifies_under_its_own_version() -> None:
    token = generate(KeyKind.VENDOR).token
    hasher = KeyHasher({1: OLD, 2: NEW}, current=2)
    version, digest = hasher.hash(token)
    assert hasher.verify(token, version, digest)
    assert not hasher.verify(token, 1, digest)


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_other_tokens_and_altered_digests_do_not_verify(token: str, other: str) -> None:
    hasher = KeyHasher({1: OLD}, current=1)
    version, digest = hasher.hash(token)
    assert hasher.verify(token, version, digest) is True
    assert hasher.verify(other, version, digest) is (other == token)
    assert not hasher.verify(token, version, digest[:-1] + bytes([digest[-1] ^ 1]))
    assert not hasher.verify(token, version, digest[:16])


def test_secrets_are_checked_when_the_hasher_is_built() -> None:
    with pytest.raises(ValueError, match="current version"):
        KeyHasher({1: OLD}, current=2)
    with pytest.raises(ValueError, match="shorter"):
        KeyHasher({1: OLD, 2: b"short"}, current=1)


def test_repr_shows_versions_but_no_secret() -> None:
    text = repr(KeyHasher({1: OLD, 2: NEW}, current=2))
    assert "[1, 2]" in text and "oooo" not in text and "nnnn" not in text
