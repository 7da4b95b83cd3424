"""Keyed hashes of API keys and client secrets, under a versioned server secret.

Why HMAC-SHA256 and not argon2: the tokens are random with at least 256 bits, so there is no
dictionary to slow down, and a slow hash would only add latency to every request and give clients
a CPU lever against the server. The HMAC secret lives outside the database, so a stolen dump
cannot even confirm whether a leaked token is genuine.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

MIN_SECRET_BYTES = 32


class KeyHasher:
    """Hashes with the current secret version; verifies with whichever version a digest names."""

    def __init__(self, secrets: Mapping[int, bytes], current: int) -> None:
        if current not in secrets:
            raise ValueError(f"no server secret for the current version {current}")
        for version, secret in secrets.items():
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"server secret version {version} is shorter than {MIN_SECRET_BYTES} bytes")
        self._secrets = dict(secrets)
        self._current = current

    def __repr__(self) -> str:
        return f"KeyHasher(versions={sorted(self._secrets)}, current={self._current})"

    @property
    def current_version(self) -> int:
        """Digests of an older version still verify; callers may re-hash them on next use."""
        return self._current

    def hash(self, token: str) -> tuple[int, bytes]:
        return self._current, self._digest(self._secrets[self._current], token)

    def verify(self, token: str, version: int, digest: bytes) -> bool:
        secret = self._secrets.get(version)
        if secret is None:
            return False
        return hmac.compare_digest(self._digest(secret, token), digest)

    @staticmethod
    def _digest(secret: bytes, token: str) -> bytes:
        return hmac.new(secret, token.encode("utf-8"), hashlib.sha256).digest()
