"""C2SP signed notes and tlog checkpoints against Go's and C2SP's published vectors."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.merkle import leaf_hash
from keys.notes import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
)
from keys.signing import SigningKey
from tests import vectors

V = vectors.load("c2sp-signed-note.json")
GO = V["go_note"]
GO_VERIFIERS = [NoteVerifier.from_vkey(key["vkey"]) for key in GO["keys"]]


def _signer(key: dict[str, str]) -> NoteSigner:
    """Rebuild a vector's signer from its Ed25519 seed or Go's PRIVATE+KEY+name+hash+base64(0x01||seed)."""
    if "seed_hex" in key:
        seed = bytes.fromhex(key["seed_hex"])
    else:
        typed_seed = base64.b64decode(key["skey"].split("+", 4)[4])
        assert typed_seed[0] == 0x01
        seed = typed_seed[1:]
    return NoteSigner(key["name"], SigningKey.from_private_bytes("vector", seed))


def _expected_signatures(case: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(s["name"], s["key_id_hex"], s["signature_bytes"]) for s in case["signatures"]]


def _parsed_signatures(note: str) -> list[tuple[str, str, int]]:
    return [(s.name, s.key_hash.hex(), len(s.signature)) for s in parse_note(note).signatures]


# --- Go sumdb/note ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", GO["keys"], ids=lambda k: k["name"])
def test_go_keys_reproduce_verifier_keys_and_signature_lines(key: dict[str, str]) -> None:
    signer = _signer(key)
    verifier = NoteVerifier.from_vkey(key["vkey"])
    assert signer.key_hash.hex() == verifier.key_hash.hex() == key["key_id_hex"]
    assert signer.verifier_key() == key["vkey"]
    assert verifier.name == key["name"]
    assert verifier.public == signer.key.public_bytes()
    assert signer.signature_line(GO["text"]) == key["signature_line"]  # Ed25519 is deterministic
    assert signer.sign(GO["text"]) == GO["text"] + "\n" + key["signature_line"]


def test_go_signed_note_opens_with_both_keys() -> None:
    opened = open_note(GO["signed_note"], GO_VERIFIERS)
    assert opened.text == GO["text"]
    assert opened.signatures == [(k["name"], bytes.fromhex(k["key_id_hex"]), True) for k in GO["keys"]]
    assert GO["signed_note"] == GO["text"] + "\n" + "".join(k["signature_line"] for k in GO["keys"])


@pytest.mark.parametrize("known", [0, 1])
def test_go_signed_note_with_one_known_key_reports_the_other_as_unverified(known: int) -> None:
    opened = open_note(GO["signed_note"], [GO_VERIFIERS[known]])
    assert [s.verified for s in opened.signatures] == [i == known for i in range(2)]


def test_several_signers_sign_one_text() -> None:
    signers = [_signer(key) for key in GO["keys"]]
    note = GO["text"] + "\n" + "".join(s.signature_line(GO["text"]) for s in signers)
    assert note == GO["signed_note"]


@pytest.mark.parametrize("case", GO["bad_verifier_keys"], ids=lambda c: c["desc"])
def test_go_bad_verifier_keys_are_rejected(case: dict[str, str]) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_vkey(case["vkey"])


def _bad_note(case: dict[str, str]) -> str | bytes:
    return case["note"] if "note" in case else base64.b64decode(case["note_base64"])


@pytest.mark.parametrize("case", GO["bad_notes"], ids=lambda c: c["desc"])
def test_go_bad_notes_are_malformed_whatever_the_keys(case: dict[str, str]) -> None:
    note = _bad_note(case)
    # Malformed, not merely unverified: parsing alone, which checks no signature, rejects it.
    with pytest.raises(NoteError):
        parse_note(note)
    for verifiers in ([], GO_VERIFIERS):
        with pytest.raises(NoteError):
            open_note(note, verifiers)


@pytest.mark.parametrize("case", GO["unknown_key_lines"], ids=lambda c: c["desc"])
def test_go_lines_sharing_only_name_or_key_id_are_unknown_keys(case: dict[str, str]) -> None:
    alone = GO["text"] + "\n" + case["line"]
    assert len(parse_note(alone).signatures) == 1
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(alone, GO_VERIFIERS)
    # Beside a verified signature it is reported, unverified, not an error.
    opened = open_note(GO["signed_note"] + case["line"], GO_VERIFIERS)
    assert [s.verified for s in opened.signatures] == [True, True, False]


@pytest.mark.parametrize("key", ["PeterNeumann", "EnochRoot"])
def test_a_bad_signature_by_a_known_key_rejects_the_note(key: str) -> None:
    tampered = GO["signed_note"].replace("problem,", "problem;")
    with pytest.raises(NoteError):
        open_note(tampered, [v for v in GO_VERIFIERS if v.name == key])


def test_a_bad_signature_by_a_known_key_rejects_the_note_even_beside_a_good_one() -> None:
    peter, enoch = (_signer(key) for key in GO["keys"])
    other_text = GO["text"].replace("problem,", "problem;")
    note = GO["text"] + "\n" + peter.signature_line(GO["text"]) + enoch.signature_line(other_text)
    with pytest.raises(NoteError, match="EnochRoot does not verify"):
        open_note(note, GO_VERIFIERS)


# --- Go sumdb checkpoints and tree notes ----------------------------------------------------------


@pytest.mark.parametrize("case", V["go_sumdb_checkpoints"]["checkpoints"], ids=lambda c: str(c["size"]))
def test_go_sumdb_checkpoints_verify_and_parse(case: dict[str, Any]) -> None:
    key = V["go_sumdb_checkpoints"]["key"]
    verifier = NoteVerifier.from_vkey(key["vkey"])
    assert verifier.key_hash.hex() == key["key_id_hex"]
    opened = open_note(case["note"], [verifier])
    checkpoint = parse_checkpoint(opened.text)
    assert checkpoint == Checkpoint(case["origin"], case["size"], base64.b64decode(case["root_hash_b64"]))
    assert _signer(key).sign(opened.text) == case["note"]
    assert format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root_hash) == opened.text


@pytest.mark.parametrize("case", V["go_sumdb_checkpoints"]["checkpoints"], ids=lambda c: str(c["size"]))
def test_any_change_to_a_checkpoint_body_breaks_its_signature(case: dict[str, Any]) -> None:
    verifier = NoteVerifier.from_vkey(V["go_sumdb_checkpoints"]["key"]["vkey"])
    body_end = case["note"].index("\n\n")
    for i in range(body_end):
        replacement = "x" if case["note"][i] != "x" else "y"
        if case["note"][i] == "\n":
            continue  # replacing a newline makes the note malformed rather than mis-signed
        with pytest.raises(NoteError):
            open_note(case["note"][:i] + replacement + case["note"][i + 1 :], [verifier])


def test_go_tree_note_root_is_the_leaf_hash_of_its_record() -> None:
    note = V["go_tlog_tree_note"]
    checkpoint = parse_checkpoint(note["text"])
    assert checkpoint.root_hash == leaf_hash(note["root_hash_is_leaf_hash_of"].encode())
    assert (checkpoint.origin, checkpoint.size) == (note["origin"], note["size"])
    assert format_checkpoint(note["origin"], note["size"], checkpoint.root_hash) == note["text"]


@pytest.mark.parametrize("case", V["go_tlog_tree_note"]["variants"], ids=lambda c: c["desc"])
def test_go_tree_note_variants(case: dict[str, Any]) -> None:
    if case["expect"] == "reject":
        with pytest.raises(NoteError):
            parse_checkpoint(case["text"])
        return
    checkpoint = parse_checkpoint(case["text"])
    assert checkpoint.origin == case.get("origin", V["go_tlog_tree_note"]["origin"])
    assert checkpoint.extensions == (case.get("extension_line"),) * case["extension_count"]
    text = format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root_hash, checkpoint.extensions)
    assert text == case["text"]


# --- C2SP spec examples ------------------------------------------------------------------------------


def test_c2sp_example_note_verifies() -> None:
    example = V["c2sp_signed_note"]["example"]
    verifier = NoteVerifier.from_vkey(example["key"]["vkey"])
    assert verifier.key_hash.hex() == example["key"]["key_id_hex"]
    opened = open_note(example["note"], [verifier])
    assert opened.text == example["text"]
    assert [(s.name, s.key_hash.hex()) for s in opened.signatures] == [
        (name, key_id) for name, key_id, _ in _expected_signatures(example)
    ]
    assert _parsed_signatures(example["note"]) == _expected_signatures(example)


def test_c2sp_text_with_an_empty_line_ends_at_the_last_empty_line() -> None:
    case = V["c2sp_signed_note"]["text_with_empty_line"]
    assert parse_note(case["note"]).unverified_text == case["text"]
    assert _parsed_signatures(case["note"]) == _expected_signatures(case)
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(case["note"], GO_VERIFIERS)


@pytest.mark.parametrize("group", ["c2sp_checkpoint", "c2sp_cosigned_checkpoint"])
def test_c2sp_checkpoints_parse(group: str) -> None:
    case = V[group]
    assert parse_note(case["note"]).unverified_text == case["text"]
    assert _parsed_signatures(case["note"]) == _expected_signatures(case)
    checkpoint = parse_checkpoint(case["text"])
    plain = V["c2sp_checkpoint"]
    assert checkpoint.origin == plain["origin"]
    assert checkpoint.size == plain["size"]
    assert checkpoint.root_hash.hex() == plain["root_hash_hex"]
    assert list(checkpoint.extensions) == plain["extensions"]
    assert format_checkpoint(plain["origin"], plain["size"], checkpoint.root_hash) == case["text"]


# --- own properties and limits ---------------------------------------------------------------------

_TEXT_LINE = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=40)


@given(st.lists(_TEXT_LINE, min_size=1, max_size=6))
def test_any_valid_text_round_trips_through_sign_and_open(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    signer = NoteSigner("example.com/log", SigningKey.generate())
    opened = open_note(signer.sign(text), [NoteVerifier.from_vkey(signer.verifier_key())])
    assert opened.text == text


def test_the_spec_minimum_of_16_signatures_is_accepted_and_the_limit_enforced() -> None:
    text = "many signers\n"
    signers = [NoteSigner(f"witness{i}.example", SigningKey.generate()) for i in range(MAX_SIGNATURES + 1)]
    verifiers = [NoteVerifier.from_vkey(s.verifier_key()) for s in signers]
    sixteen = text + "\n" + "".join(s.signature_line(text) for s in signers[:16])
    assert len(open_note(sixteen, verifiers).signatures) == 16
    at_limit = text + "\n" + "".join(s.signature_line(text) for s in signers[:MAX_SIGNATURES])
    assert all(s.verified for s in open_note(at_limit, verifiers).signatures)
    with pytest.raises(NoteError, match="more than"):
        open_note(at_limit + signers[-1].signature_line(text), verifiers)


def test_oversized_notes_are_rejected_before_parsing() -> None:
    signer = NoteSigner("example.com/log", SigningKey.generate())
    big = "x" * MAX_NOTE_BYTES + "\n"
    with pytest.raises(NoteError, match="larger than"):
        open_note(signer.sign(big), [NoteVerifier.from_vkey(signer.verifier_key())])
    # The limit is on UTF-8 bytes, not characters.
    with pytest.raises(NoteError, match="larger than"):
        parse_note("é" * (MAX_NOTE_BYTES // 2) + "\n\n" + signer.signature_line("x\n"))


@pytest.mark.parametrize(
    "name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u3000b", "a\u2028b", "a\x01b", "a\nb", "a\ud800b"]
)
def test_key_names_must_be_non_empty_without_spaces_plus_or_controls(name: str) -> None:
    with pytest.raises(NoteError):
        NoteSigner(name, SigningKey.generate())


@pytest.mark.parametrize("text", ["", "no final newline", "control\x07char\n", "lone \ud800 surrogate\n"])
def test_signers_refuse_texts_that_cannot_be_notes(text: str) -> None:
    with pytest.raises(NoteError):
        NoteSigner("example.com/log", SigningKey.generate()).sign(text)


def test_verifier_keys_are_checked() -> None:
    vkey = GO["keys"][0]["vkey"]
    name, key_hash, key = vkey.split("+", 2)
    for bad in [
        f"Other+{key_hash}+{key}",  # hash no longer matches the name
        f"{name}+{key_hash.upper()}+{key}",
        f"{name}+{key_hash[:7]}+{key}",
        f"{name}+{key_hash}+{key[:-1]}",  # not base64
        f"{name}+{key_hash}+",
        f"{name}+{key_hash}",
        f"{name}",
    ]:
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(bad)


def test_two_trusted_keys_with_the_same_name_and_hash_are_ambiguous() -> None:
    twin = NoteVerifier(GO_VERIFIERS[0].name, GO_VERIFIERS[0].key_hash, bytes(32))
    with pytest.raises(NoteError, match="share a key hash"):
        open_note(GO["signed_note"], [GO_VERIFIERS[0], twin])


@pytest.mark.parametrize(
    "text",
    [
        "origin\n01\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",  # leading zero
        "origin\n-1\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "origin\n\u0661\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",  # ARABIC-INDIC DIGIT ONE
        "origin\n18446744073709551616\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",  # 2**64
        "origin\n" + "9" * 5000 + "\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "origin\n5\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb1=\n",  # non-canonical base64
        "origin\n5\nTszzRgjTG6xce-z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",  # URL-safe alphabet
        "origin\n5\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0\n",  # no padding
        "origin\n5\n\n",
        "\n5\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "origin\n5\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n\nafter an empty line\n",
        "origin\n5\n",
        "",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


def test_checkpoint_bounds() -> None:
    root = leaf_hash(b"")
    assert parse_checkpoint(format_checkpoint("o", 0, root)).size == 0
    assert parse_checkpoint(format_checkpoint("o", 2**64 - 1, root)).size == 2**64 - 1


@pytest.mark.parametrize(
    "origin,size,root,extensions",
    [
        ("", 1, bytes(32), ()),
        ("two\nlines", 1, bytes(32), ()),
        ("o", -1, bytes(32), ()),
        ("o", 2**64, bytes(32), ()),
        ("o", 1, bytes(31), ()),
        ("o", 1, bytes(32), ("",)),
        ("o", 1, bytes(32), ("a\nb",)),
    ],
)
def test_format_checkpoint_refuses_what_parse_would_not_give_back(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        format_checkpoint(origin, size, root, extensions)


@given(
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=10), max_size=3),
)
def test_checkpoints_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    text = format_checkpoint(origin, size, root, extensions)
    assert parse_checkpoint(text) == Checkpoint(origin, size, root, tuple(extensions))
