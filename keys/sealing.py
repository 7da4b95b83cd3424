"""Encryption at rest under one master key: AES-256-GCM bound to a context.

Sealed layout: version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || tag (16 bytes).
The context (e.g. b"signing_keys:<id>") is the associated data, so a sealed value copied to another
row or purpose fails to open instead of being silently accepted there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")
_EXPECTED = "the master key must be 32 bytes in URL-safe base64 (43 characters, optional '=' padding)"
_MAX_KEY_FILE_BYTES = 1024


class SealError(ValueError):
    """A sealed value could not be opened: wrong key, wrong context, tampered or truncated."""


class MasterKey:
    __slots__ = ("_aead", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"a master key has {KEY_BYTES} bytes")
        self._raw = bytes(raw)
        self._aead = AESGCM(self._raw)

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Parse urlsafe base64, padded or not; errors never repeat the text, which is a secret."""
        text = text.strip()
        if not _KEY_TEXT.fullmatch(text):
            raise ValueError(_EXPECTED)
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=")
        # The last character carries 2 unused bits; only one spelling of each key is accepted.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text.rstrip("="):
            raise ValueError(_EXPECTED)
        return cls(raw)

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        """Read the key file, or create it (mode 0600) if absent."""
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        key = cls.generate()
        try:
            _create_exclusive(path, (key.to_text() + "\n").encode("ascii"))
        except FileExistsError:
            # Another process created it first: use theirs, so both seal under the same key.
            return cls._load(path)
        return key

    @classmethod
    def _load(cls, path: Path) -> MasterKey:
        fd = os.open(path, os.O_RDONLY)
        try:
            # fstat on the open file, not stat on the path: no window to swap the file in between.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"master key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise PermissionError(
                    f"master key file {path} is accessible to group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
                )
            data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
        try:
            return cls.from_text(data.decode("ascii"))
        except ValueError:  # UnicodeDecodeError too, whose message would quote a byte of the key.
            raise ValueError(f"master key file {path}: {_EXPECTED}") from None

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self._raw).rstrip(b"=").decode("ascii")

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        # Random 96-bit nonces: safe for up to ~2**32 seals under one key (NIST SP 800-38D).
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES:
            raise SealError("sealed value is truncated")
        if sealed[:1] != _VERSION:
            raise SealError("sealed value has an unknown format version")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, context)
        except InvalidTag:
            raise SealError("sealed value does not open: wrong key, wrong context or tampered") from None


def _check_context(context: bytes) -> None:
    # An empty context would let a value sealed for one purpose open in every other.
    if not context:
        raise ValueError("a seal context must be non-empty")


def _create_exclusive(path: Path, content: bytes) -> None:
    """Write `content` to `path` only if it does not exist, so that no reader sees a partial file.

    The key is written and synced under a temporary name first, then hard-linked into place:
    link() is atomic and fails if the target exists, unlike rename().
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.link(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    # Losing the key after a crash would make everything sealed with it unreadable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
