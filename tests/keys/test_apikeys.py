"""API key format: typed prefix, base62 id and secret, CRC32 checksum checked before any lookup."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.apikeys import (
    BASE62,
    TOKEN_LENGTH,
    ApiKey,
    KeyKind,
    MalformedKey,
    generate,
    generate_client,
    parse,
    redact,
)

EXPECTED_PREFIXES = {
    KeyKind.MEMBER: "lpdm_",
    KeyKind.VENDOR: "lpdv_",
    KeyKind.COMPLIANCE: "lpdc_",
    KeyKind.OPERATOR: "lpdo_",
    KeyKind.SHARING: "lpds_",
}
TOKEN_SHAPE = re.compile(r"lpd[mvcos]_([0-9A-Za-z]{16})_([0-9A-Za-z]{43})([0-9A-Za-z]{6})")


def _base62_to_int(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + BASE62.index(char)
    return value


@pytest.mark.parametrize("kind", list(KeyKind))
def test_generated_keys_have_the_documented_shape_and_parse_back(kind: KeyKind) -> None:
    key = generate(kind)
    match = TOKEN_SHAPE.fullmatch(key.token)
    assert match is not None
    assert key.token.startswith(EXPECTED_PREFIXES[kind])
    assert len(key.token) == TOKEN_LENGTH == 71
    assert key.key_id == match.group(1)
    # The checksum is the CRC32 of everything before it, in 6 zero-padded base62 digits.
    assert _base62_to_int(match.group(3)) == zlib.crc32(key.token[:-6].encode())
    assert parse(key.token) == key


def test_kind_values_are_stable() -> None:
    assert [k.value for k in KeyKind] == ["member", "vendor", "compliance", "operator", "sharing"]


def test_generated_keys_are_distinct() -> None:
    keys = [generate(KeyKind.MEMBER) for _ in range(200)]
    assert len({k.key_id for k in keys}) == len({k.token for k in keys}) == 200


def test_secret_characters_look_uniform() -> None:
    # secrets.choice over base62: every symbol shows up across many secrets (not a weaker alphabet).
    seen = set("".join(generate(KeyKind.SHARING).token[22:65] for _ in range(100)))
    assert seen == set(BASE62)


def test_repr_and_str_never_show_the_token() -> None:
    key = generate(KeyKind.VENDOR)
    secret = key.token[22:65]
    for text in (repr(key), str(key), repr([key])):
        assert secret not in text and key.token not in text
        assert key.key_id in text and "vendor" in text.lower()


@pytest.mark.parametrize(
    "mangle,reason",
    [
        (lambda t: t[:-1], "characters"),
        (lambda t: t + "0", "characters"),
        (lambda t: "", "characters"),
        (lambda t: "x" * 100_000, "characters"),
        (lambda t: "lpdx_" + t[5:], "prefix"),
        (lambda t: "LPDM_" + t[5:], "prefix"),
        (lambda t: "ghp_" + t[4:], "prefix"),
        (lambda t: t[:21] + "-" + t[22:], "separator"),
        (lambda t: t[:30] + "_" + t[31:], "base62"),
        (lambda t: t[:30] + "é" + t[31:], "base62"),
        (lambda t: t[:30] + " " + t[31:], "base62"),
        (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "checksum"),
    ],
)
def test_malformed_tokens_are_rejected_with_a_reason_that_never_echoes_them(
    mangle: Callable[[str], str], reason: str
) -> None:
    token = generate(KeyKind.MEMBER).token
    bad = mangle(token)
    with pytest.raises(MalformedKey) as caught:
        parse(bad)
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    if bad:
        assert bad not in str(caught.value) and token[5:21] not in str(caught.value)


def test_the_checksum_catches_typos_not_forgers() -> None:
    # Anyone can recompute a CRC32: a changed secret with a fresh checksum parses, and only the
    # keyed-hash lookup can then refuse it. The checksum's job is to spare that lookup for junk.
    key = generate(KeyKind.OPERATOR)
    forged = key.token[:30] + ("a" if key.token[30] != "a" else "b") + key.token[31:65]
    crc, digits = zlib.crc32(forged.encode()), ""
    for _ in range(6):
        crc, digit = divmod(crc, 62)
        digits = BASE62[digit] + digits
    assert parse(forged + digits).key_id == key.key_id


def test_overlong_input_is_rejected_in_constant_time() -> None:
    huge = "lpdm_" + "A" * 10_000_000
    start = time.perf_counter()
    for _ in range(100):
        with pytest.raises(MalformedKey):
            parse(huge)
    assert time.perf_counter() - start < 1


@given(st.data())
def test_any_single_character_change_fails_to_parse(data: st.DataObject) -> None:
    key = generate(data.draw(st.sampled_from(list(KeyKind))))
    position = data.draw(st.integers(0, TOKEN_LENGTH - 1))
    original = key.token[position]
    replacement = data.draw(st.characters(exclude_categories=["Cs"]).filter(lambda c: c != original))
    with pytest.raises(MalformedKey):
        parse(key.token[:position] + replacement + key.token[position + 1 :])


@given(st.data())
def test_any_single_byte_change_of_the_ascii_token_fails_to_parse(data: st.DataObject) -> None:
    key = generate(data.draw(st.sampled_from(list(KeyKind))))
    raw = bytearray(key.token.encode("ascii"))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 127).filter(lambda b: b != raw[position]))
    with pytest.raises(MalformedKey):
        parse(raw.decode("ascii"))


def test_api_key_is_immutable() -> None:
    key = generate(KeyKind.COMPLIANCE)
    with pytest.raises(AttributeError):
        key.token = "x"  # type: ignore[misc]
    assert ApiKey(key.kind, key.key_id, key.token) == key


@pytest.mark.parametrize("kind", list(KeyKind))
def test_redact_removes_the_secret_part_of_every_key_in_a_text_and_keeps_its_id(kind: KeyKind) -> None:
    key, client = generate(kind), generate_client()
    text = f"/v1/datasets/{key.token}/records?x={client.secret} and again {key.token}"
    redacted = redact(text)
    assert key.token not in redacted and client.secret not in redacted
    assert redacted.count(f"_{key.key_id}_[redacted]") == 2 and f"lpda_{client.key_id}_[redacted]" in redacted
    assert redact("/v1/datasets/lpd-sample/records") == "/v1/datasets/lpd-sample/records"

