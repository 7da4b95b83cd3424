"""Sealing at rest: AES-256-GCM bound to a context, and a master key file that stays private."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.sealing import MasterKey, SealError

KEY = MasterKey.generate()
CONTEXT = b"signing_keys:0123456789abcdef"


@given(st.binary(max_size=2048), st.binary(min_size=1, max_size=64))
def test_seal_then_open_round_trips(plaintext: bytes, context: bytes) -> None:
    sealed = KEY.seal(plaintext, context=context)
    assert sealed[0] == 1 and len(sealed) == 1 + 12 + len(plaintext) + 16
    assert KEY.open(sealed, context=context) == plaintext


def test_each_seal_uses_a_fresh_nonce() -> None:
    assert KEY.seal(b"same", context=CONTEXT) != KEY.seal(b"same", context=CONTEXT)


@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_changed_byte_fails_to_open(plaintext: bytes, data: st.DataObject) -> None:
    sealed = bytearray(KEY.seal(plaintext, context=CONTEXT))
    position = data.draw(st.integers(0, len(sealed) - 1))
    sealed[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealError):
        KEY.open(bytes(sealed), context=CONTEXT)


@given(st.binary(min_size=1, max_size=64).filter(lambda c: c != CONTEXT))
def test_a_sealed_value_does_not_open_in_another_context(other: bytes) -> None:
    with pytest.raises(SealError):
        KEY.open(KEY.seal(b"secret", context=CONTEXT), context=other)


def test_wrong_key_truncation_and_unknown_version_fail() -> None:
    sealed = KEY.seal(b"secret", context=CONTEXT)
    with pytest.raises(SealError):
        MasterKey.generate().open(sealed, context=CONTEXT)
    for cut in range(len(sealed)):
        with pytest.raises(SealError):
            KEY.open(sealed[:cut], context=CONTEXT)
    with pytest.raises(SealError, match="version"):
        KEY.open(b"\x02" + sealed[1:], context=CONTEXT)


def test_an_empty_context_is_refused() -> None:
    with pytest.raises(ValueError):
        KEY.seal(b"x", context=b"")
    with pytest.raises(ValueError):
        KEY.open(KEY.seal(b"x", context=CONTEXT), context=b"")


def test_text_form_round_trips_with_or_without_padding() -> None:
    text = KEY.to_text()
    assert len(text) == 43 and "=" not in text
    again = MasterKey.from_text(text)
    padded = MasterKey.from_text(text + "=")
    with_newline = MasterKey.from_text(text + "\n")
    sealed = KEY.seal(b"x", context=CONTEXT)
    for key in (again, padded, with_newline):
        assert key.open(sealed, context=CONTEXT) == b"x"
        assert key.to_text() == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        base64.urlsafe_b64encode(bytes(31)).decode(),
        base64.urlsafe_b64encode(bytes(33)).decode(),
        base64.b64encode(b"\xfb" * 32).decode(),  # standard alphabet: '+' and '/'
        "A" * 42 + "B",  # non-canonical: unused low bits set
        "A" * 43 + "==",
        "A" * 20 + " " + "A" * 22,
    ],
)
def test_bad_key_text_is_rejected_without_echoing_it(text: str) -> None:
    with pytest.raises(ValueError, match="URL-safe base64") as caught:
        MasterKey.from_text(text)
    assert not text.strip() or text.strip() not in str(caught.value)


def test_repr_hides_the_key() -> None:
    assert KEY.to_text() not in repr(KEY)
    with pytest.raises(ValueError):
        MasterKey(bytes(16))


def test_load_or_create_makes_a_0600_file_then_loads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    old_umask = os.umask(0)  # even with a permissive umask the file must be private
    try:
        created = MasterKey.load_or_create(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == created.to_text() + "\n"
    loaded = MasterKey.load_or_create(path)
    assert loaded.to_text() == created.to_text()
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temporary file left behind


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o660])
def test_an_existing_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY.to_text() + "\n")
    path.chmod(mode)
    with pytest.raises(PermissionError, match=f"chmod 600 {path}") as caught:
        MasterKey.load_or_create(path)
    assert KEY.to_text() not in str(caught.value)
    path.chmod(0o600)
    assert MasterKey.load_or_create(path).to_text() == KEY.to_text()


@pytest.mark.parametrize("content", [b"", b"not a key\n", b"\xff" * 43, KEY.to_text().encode() * 30])
def test_a_corrupt_key_file_is_refused_without_echoing_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="URL-safe base64") as caught:
        MasterKey.load_or_create(path)
    assert "not a key" not in str(caught.value) and "\\xff" not in str(caught.value)
    assert path.read_bytes() == content  # never overwritten


def test_a_key_path_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "master.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not a regular file"):
        MasterKey.load_or_create(folder)


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(MasterKey.load_or_create(path).to_text())

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert MasterKey.load_or_create(path).to_text() == results[0]
