"""The verifier is as strict as schemas/audit-format.md: what the specification forbids is refused with
the code §6.4 names, even where nothing else in the bundle would give it away.

Every case starts from a genuine bundle of real API traffic and changes one thing, recomputing the
manifest's hashes as a careful attacker would. A genuine bundle still passes, and the checks of
gateway/audit/schema.py are held to the JSON Schemas under schemas/.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import io
import json
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from gateway import signing_keys
from gateway.audit import schema, verify
from gateway.audit.events import EventKind
from gateway.audit.format import ORIGIN_PREFIX, SIGNED_AT
from gateway.audit.verify import Verdict, verify_bundle
from keys.notes import format_checkpoint, parse_note
from keys.sealing import MasterKey
from keys.signing import SigningKey
from tests import REPOSITORY
from tests.audit.support import (
    Scenario,
    audited_runtime,
    export,
    lines,
    read_bundle,
    restate_report,
    scenario,
    sign_manifest,
    synthetic,
    write_bundle,
)
from tests.conftest import TEST_MASTER_KEY, client_for

MASTER = MasterKey.from_text(TEST_MASTER_KEY)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass
class Genuine:
    bundle: Path
    files: dict[str, bytes]
    key: SigningKey  # the audit key that signed the bundle's checkpoints
    scenario: Scenario
    endpoint: bytes  # the body of GET /v1/audit/checkpoint, fetched before the export


@pytest.fixture(scope="module")
async def genuine(databases: Any, migrated_template: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Genuine]:
    name = await databases.create(migrated_template)
    home = tmp_path_factory.mktemp("strict")
    runtime = await audited_runtime(databases.dsn(name), home, GATEWAY_CHECKPOINT_EVENTS="5")
    try:
        async with client_for(runtime) as client:
            found = await scenario(runtime, client)
            await runtime.writer.checkpoint()
            response = await client.get("/v1/audit/checkpoint", headers=found.licensed.headers)
            assert response.status_code == 200
        bundle = home / "bundle.zip"
        result = await export(runtime, bundle, found.vendor_id)
        assert result.checkpoints >= 3 and not result.warnings
        async with runtime.pool.acquire() as conn:
            key = await signing_keys.current(conn, MASTER)
        yield Genuine(bundle, read_bundle(bundle), key, found, response.content)
    finally:
        await runtime.close()
        await databases.drop(name)


def tampered(genuine: Genuine, tmp_path: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    files = dict(genuine.files)
    change(files)
    return write_bundle(tmp_path / "tampered.zip", files)


def refused(verdict: Verdict, code: str) -> None:
    assert not verdict.ok and verdict.code == code, verdict.line()
    assert verdict.line().startswith(f"FAILED [{code}]: ")


def edit_json(files: dict[str, bytes], name: str, change: Callable[[Any], None]) -> None:
    value = orjson.loads(files[name])
    change(value)
    files[name] = orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def edit_line(files: dict[str, bytes], name: str, index: int, change: Callable[[dict[str, Any]], None],
              *, sort: bool = False) -> None:
    rows = lines(files[name])
    value = orjson.loads(rows[index])
    change(value)
    rows[index] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0) + b"\n"
    files[name] = b"".join(rows)


def misspell(text: str) -> str:
    """The same bytes in non-canonical base64: the padding bits of the last character set."""
    body = text.rstrip("=")
    assert len(body) < len(text), "only padded base64 has padding bits"
    last = _ALPHABET.index(body[-1])
    assert last & 1 == 0
    spelt = body[:-1] + _ALPHABET[last | 1] + text[len(body):]
    assert base64.b64decode(spelt) == base64.b64decode(text) and spelt != text
    return spelt


def test_a_genuine_bundle_passes(genuine: Genuine) -> None:
    verdict = verify_bundle(genuine.bundle)
    assert verdict.ok and verdict.series == "vendor", verdict.line()


# -- base64: one spelling per value ---------------------------------------------------------------------

def _key_spelling(files: dict[str, bytes]) -> None:
    edit_json(files, "keys.json", lambda k: k["keys"][0].update(public_key=misspell(k["keys"][0]["public_key"])))


def _consistency_spelling(files: dict[str, bytes]) -> None:
    def change(line: dict[str, Any]) -> None:
        line["proof"][0] = misspell(line["proof"][0])
    edit_line(files, "consistency.jsonl", 0, change)


def _inclusion_spelling(index: int) -> Callable[[dict[str, bytes]], None]:
    def tamper(files: dict[str, bytes]) -> None:
        def change(line: dict[str, Any]) -> None:
            line["proof"][0] = misspell(line["proof"][0])
        edit_line(files, "proofs.jsonl", index, change)
    return tamper


def _signature_spelling(files: dict[str, bytes]) -> None:
    def change(line: dict[str, Any]) -> None:
        text, _, signature = line["note"].rstrip("\n").rpartition(" ")
        line["note"] = f"{text} {misspell(signature)}\n"
    edit_line(files, "checkpoints.jsonl", 0, change)


SPELLINGS: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "keys.json public_key": (_key_spelling, "keys"),
    "a consistency-proof node": (_consistency_spelling, "bundle-format"),
    "an inclusion-proof node of the first event": (_inclusion_spelling(0), "bundle-format"),
    "an inclusion-proof node of the last event": (_inclusion_spelling(-1), "bundle-format"),
    "a checkpoint's signature": (_signature_spelling, "checkpoint-format"),
}


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_base64_with_padding_bits_set_is_refused(genuine: Genuine, tmp_path: Path, name: str) -> None:
    change, code = SPELLINGS[name]
    refused(verify_bundle(tampered(genuine, tmp_path, change)), code)


# -- checkpoints: exactly one extension line ---------------------------------------------------------

@pytest.mark.parametrize("where", ["after", "before"])
def test_a_validly_signed_checkpoint_with_a_second_extension_line_is_refused(genuine: Genuine, tmp_path: Path,
                                                                            where: str) -> None:
    def resign(files: dict[str, bytes]) -> None:
        def change(line: dict[str, Any]) -> None:
            origin, size, root, signed_at = parse_note(line["note"]).unverified_text.rstrip("\n").split("\n")
            assert signed_at.startswith(SIGNED_AT)
            extensions = [signed_at, "note an extra line"] if where == "after" else ["note an extra line", signed_at]
            text = format_checkpoint(origin, int(size), base64.b64decode(root), extensions)
            line["note"] = signing_keys.note_signer(genuine.key).sign(text)
        edit_line(files, "checkpoints.jsonl", 0, change)

    refused(verify_bundle(tampered(genuine, tmp_path, resign)), "checkpoint-format")


def test_a_checkpoint_line_whose_size_is_not_its_notes_is_a_checkpoint_format_problem(genuine: Genuine,
                                                                                     tmp_path: Path) -> None:
    def resize(files: dict[str, bytes]) -> None:
        edit_line(files, "checkpoints.jsonl", 0, lambda line: line.update(tree_size=line["tree_size"] + 1))

    refused(verify_bundle(tampered(genuine, tmp_path, resize)), "checkpoint-format")


# -- JSON: closed objects, each name once -------------------------------------------------------------

def _extra(target: Callable[[Any], dict[str, Any]]) -> Callable[[Any], None]:
    return lambda value: target(value).update(comment="added")


UNKNOWN: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "manifest.json": (lambda f: edit_json(f, "manifest.json", _extra(lambda m: m)), "bundle-format"),
    "manifest.json scope": (lambda f: edit_json(f, "manifest.json", _extra(lambda m: m["scope"])), "bundle-format"),
    "manifest.json logs entry": (lambda f: edit_json(f, "manifest.json", _extra(lambda m: m["logs"][0])),
                                 "bundle-format"),
    "keys.json": (lambda f: edit_json(f, "keys.json", _extra(lambda k: k)), "keys"),
    "keys.json entry": (lambda f: edit_json(f, "keys.json", _extra(lambda k: k["keys"][0])), "keys"),
    "checkpoints.jsonl": (lambda f: edit_line(f, "checkpoints.jsonl", 0, _extra(lambda c: c)), "bundle-format"),
    "consistency.jsonl": (lambda f: edit_line(f, "consistency.jsonl", 0, _extra(lambda c: c)), "bundle-format"),
    "proofs.jsonl": (lambda f: edit_line(f, "proofs.jsonl", 2, _extra(lambda p: p)), "bundle-format"),
    "events.jsonl": (lambda f: edit_line(f, "events.jsonl", 2, _extra(lambda e: e), sort=True), "bundle-format"),
    "events.jsonl actor": (lambda f: edit_line(f, "events.jsonl", 2, _extra(lambda e: e["actor"]), sort=True),
                              "bundle-format"),
    "terminations.jsonl": (lambda f: edit_line(f, "terminations.jsonl", 0, _extra(lambda t: t)), "bundle-format"),
}


@pytest.mark.parametrize("name", list(UNKNOWN))
def test_an_unknown_property_is_refused(genuine: Genuine, tmp_path: Path, name: str) -> None:
    change, code = UNKNOWN[name]
    refused(verify_bundle(tampered(genuine, tmp_path, change)), code)


def _twice(data: bytes, name: str) -> bytes:
    """`data` (one JSON object) with its property `name` written a second time, first."""
    value = orjson.loads(data)
    return b"{" + orjson.dumps(name) + b":" + orjson.dumps(value[name]) + b"," + data.lstrip()[1:]


def _line_twice(file: str, index: int, name: str) -> Callable[[dict[str, bytes]], None]:
    def change(files: dict[str, bytes]) -> None:
        rows = lines(files[file])
        rows[index] = _twice(rows[index], name)
        files[file] = b"".join(rows)
    return change


DUPLICATES: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "keys.json": (lambda f: f.update({"keys.json": _twice(f["keys.json"], "keys")}), "keys"),
    "checkpoints.jsonl": (_line_twice("checkpoints.jsonl", 0, "tree_size"), "bundle-format"),
    "consistency.jsonl": (_line_twice("consistency.jsonl", 0, "log"), "bundle-format"),
    "proofs.jsonl": (_line_twice("proofs.jsonl", 1, "log"), "bundle-format"),
    "events.jsonl": (_line_twice("events.jsonl", 1, "vendor_id"), "bundle-format"),
}


@pytest.mark.parametrize("name", list(DUPLICATES))
def test_a_property_named_twice_is_refused(genuine: Genuine, tmp_path: Path, name: str) -> None:
    change, code = DUPLICATES[name]
    refused(verify_bundle(tampered(genuine, tmp_path, change)), code)


def _after_hashing(genuine: Genuine, tmp_path: Path, change: Callable[[bytes], bytes]) -> Path:
    """A bundle whose manifest is changed after its hashes were recomputed (it is not hashed itself)."""
    files = read_bundle(tampered(genuine, tmp_path, lambda f: None))
    files["manifest.json"] = change(files["manifest.json"])
    files["manifest.sig"] = sign_manifest(files["manifest.sig"], files["manifest.json"])  # by the key's holder
    return write_bundle(tmp_path / "after.zip", files, rehash=False)


def test_a_manifest_naming_a_property_twice_is_refused(genuine: Genuine, tmp_path: Path) -> None:
    refused(verify_bundle(_after_hashing(genuine, tmp_path, lambda m: _twice(m, "series"))), "bundle-format")


def test_a_manifest_files_entry_with_an_unknown_property_is_refused(genuine: Genuine, tmp_path: Path) -> None:
    def change(data: bytes) -> bytes:
        manifest = orjson.loads(data)
        manifest["files"]["keys.json"]["comment"] = "added"
        return orjson.dumps(manifest)

    refused(verify_bundle(_after_hashing(genuine, tmp_path, change)), "bundle-format")


# -- the manifest against the bundle --------------------------------------------------------------------

def test_a_changed_log_origin_in_the_manifest_is_refused(genuine: Genuine, tmp_path: Path) -> None:
    def change(files: dict[str, bytes]) -> None:
        edit_json(files, "manifest.json", lambda m: m["logs"][0].update(origin=ORIGIN_PREFIX + "another/log"))

    refused(verify_bundle(tampered(genuine, tmp_path, change)), "count")


def test_pending_logs_naming_a_log_with_events_is_refused(genuine: Genuine, tmp_path: Path) -> None:
    def change(files: dict[str, bytes]) -> None:
        edit_json(files, "manifest.json", lambda m: m["pending_logs"].append({"log": m["logs"][0]["log"],
                                                                              "pending": 3}))

    refused(verify_bundle(tampered(genuine, tmp_path, change)), "count")


# -- malformed input: always a verdict ----------------------------------------------------------------

MALFORMED: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "keys.json is a list": (lambda f: f.update({"keys.json": b"[]"}), "keys"),
    "keys.json keys is an object": (lambda f: f.update({"keys.json": b'{"keys": {}}'}), "keys"),
    "keys.json is not JSON": (lambda f: f.update({"keys.json": b"{"}), "keys"),
    "a key's not_after is a number": (lambda f: edit_json(f, "keys.json", lambda k: k["keys"][0].update(not_after=5)),
                                      "keys"),
    "a key's vkey is missing": (lambda f: edit_json(f, "keys.json", lambda k: k["keys"][0].pop("vkey")), "keys"),
    "a key listed twice": (lambda f: edit_json(f, "keys.json", lambda k: k["keys"].append(k["keys"][0])), "keys"),
    "a log's event count is a string": (
        lambda f: edit_json(f, "manifest.json", lambda m: m["logs"][0].update(events=str(m["logs"][0]["events"]))),
        "bundle-format"),
    "a proof is a string": (lambda f: edit_line(f, "proofs.jsonl", 0, lambda p: p.update(proof="x")),
                            "bundle-format"),
    "an event's seq is true": (lambda f: edit_line(f, "events.jsonl", 1, lambda e: e.update(seq=True), sort=True),
                               "bundle-format"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_content_gets_a_verdict_with_its_steps_code(genuine: Genuine, tmp_path: Path, name: str) -> None:
    change, code = MALFORMED[name]
    refused(verify_bundle(tampered(genuine, tmp_path, change)), code)


def _local_header(data: bytes, name: bytes) -> int:
    at = data.index(b"PK\x03\x04")
    while data[at + 30:at + 30 + len(name)] != name:
        at = data.index(b"PK\x03\x04", at + 4)
    return at


def _central_header(data: bytes, name: bytes) -> int:
    at = data.index(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(name)] != name:
        at = data.index(b"PK\x01\x02", at + 4)
    return at


def _damage_deflate(data: bytearray) -> None:
    """Bytes in the middle of events.jsonl's deflate stream overwritten: zlib finds no valid code there."""
    at = _local_header(bytes(data), b"events.jsonl")
    name_length, extra_length = struct.unpack_from("<HH", data, at + 26)
    start = at + 30 + name_length + extra_length
    data[start + 20:start + 60] = b"\xff" * 40


def _unknown_method(data: bytearray) -> None:
    """events.jsonl said to be compressed by a method zipfile does not implement."""
    for at in (_local_header(bytes(data), b"events.jsonl") + 8, _central_header(bytes(data), b"events.jsonl") + 10):
        struct.pack_into("<H", data, at, 97)


@pytest.mark.parametrize("damage", [_damage_deflate, _unknown_method, lambda d: d.__delitem__(slice(len(d) // 2, None)),
                                    lambda d: d.__delitem__(slice(len(d) - 30, None))],
                         ids=["damaged deflate data", "unknown compression method", "cut in half",
                              "end of central directory cut"])
def test_a_damaged_zip_gets_a_verdict(genuine: Genuine, tmp_path: Path, damage: Callable[[bytearray], None]) -> None:
    data = bytearray(genuine.bundle.read_bytes())
    damage(data)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bytes(data))
    refused(verify_bundle(broken), "bundle-format")


def test_a_malformed_trusted_key_is_a_keys_problem(genuine: Genuine) -> None:
    refused(verify_bundle(genuine.bundle, trusted_keys=["lpd-gateway-audit+00000000+AAAA"]), "keys")


# -- trusted checkpoints as notes or as the API's JSON ------------------------------------------------

def test_the_json_of_get_audit_checkpoint_is_a_trusted_checkpoint(genuine: Genuine) -> None:
    verdict = verify_bundle(genuine.bundle, genuine.endpoint.decode())
    assert verdict.ok and "consistent with the trusted checkpoint of log" in verdict.line(), verdict.line()
    one = orjson.loads(genuine.endpoint)["checkpoints"][0]
    assert verify_bundle(genuine.bundle, json.dumps(one)).ok  # one checkpoint object, as a receipt holds
    assert verify_bundle(genuine.bundle, one["note"]).ok


def test_a_trusted_checkpoints_json_must_agree_with_its_note(genuine: Genuine) -> None:
    body = orjson.loads(genuine.endpoint)
    body["checkpoints"][0]["root_hash"] = base64.b64encode(bytes(32)).decode()
    refused(verify_bundle(genuine.bundle, json.dumps(body)), "trusted-checkpoint")
    refused(verify_bundle(genuine.bundle, '{"checkpoints": [{"note": 5}]}'), "trusted-checkpoint")
    refused(verify_bundle(genuine.bundle, "{not json"), "trusted-checkpoint")


def test_trusted_checkpoints_of_logs_the_bundle_does_not_hold_are_noted(genuine: Genuine) -> None:
    """GET /v1/audit/checkpoint lists every log of the deployment: those without events here are noted."""
    now = f"{SIGNED_AT}{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
    other = signing_keys.note_signer(genuine.key).sign(format_checkpoint(
        ORIGIN_PREFIX + "elsewhere/20260101T000000Z/abcdef", 7, bytes(range(32)), [now]))
    body = orjson.loads(genuine.endpoint)
    body["checkpoints"].append({"note": other})
    verdict = verify_bundle(genuine.bundle, json.dumps(body))
    assert verdict.ok and "elsewhere/20260101T000000Z/abcdef (size 7) is of a log the bundle does not hold" in \
        verdict.line(), verdict.line()
    refused(verify_bundle(genuine.bundle, other), "trusted-checkpoint")  # alone, it anchors nothing


def test_an_unreadable_trusted_checkpoint_file_is_a_verdict(genuine: Genuine, tmp_path: Path) -> None:
    out = io.StringIO()
    status = verify.main([str(genuine.bundle), "--trusted-checkpoint", str(tmp_path / "missing.txt")], out=out)
    assert status == 1 and out.getvalue().startswith("FAILED [trusted-checkpoint]: cannot read"), out.getvalue()


# -- the unwitnessed end, per log ---------------------------------------------------------------------

def restate(files: dict[str, bytes]) -> None:
    """After deleting events: every log's counts in the manifest and the report, made to fit."""
    manifest = orjson.loads(files["manifest.json"])
    events = [orjson.loads(line) for line in lines(files["events.jsonl"])]
    for entry in manifest["logs"]:
        seqs = [e["seq"] for e in events if e["log"] == entry["log"]]
        entry.update(events=len(seqs), first_seq=seqs[0], last_seq=seqs[-1])
    restate_report(files, manifest)
    files["manifest.json"] = orjson.dumps(manifest)


async def test_the_unwitnessed_end_note_is_per_log(dsn: str, tmp_path: Path) -> None:
    """An ended log followed by a later log of the same instance: the later one witnesses nothing about
    the earlier one's tail, so a tail cut from the earlier log is still noted."""
    vendor = uuid.uuid4()
    for run in ("a", "b"):
        runtime = await audited_runtime(dsn, tmp_path / run, instance="gw")
        try:
            for _ in range(6):
                await runtime.writer.commit(synthetic(vendor, uuid.uuid4()))
                await runtime.writer.commit(synthetic(uuid.uuid4()))
            if run == "b":
                path = (await export(runtime, tmp_path / "two.zip", vendor)).path
        finally:
            await runtime.close()  # ends the log: its final checkpoint covers every event
        await asyncio.sleep(1.1)  # log ids carry their start second
    genuine = read_bundle(path)
    first, second = (entry["log"] for entry in orjson.loads(genuine["manifest.json"])["logs"])
    verdict = verify_bundle(path)
    assert verdict.ok and verdict.logs == 2, verdict.line()
    for log_id in (first, second):
        assert f"log {log_id}: no later event of the vendor yet" in verdict.line()

    def cut_first_logs_tail(files: dict[str, bytes]) -> None:
        index = max(i for i, line in enumerate(lines(files["events.jsonl"])) if orjson.loads(line)["log"] == first)
        for name in ("events.jsonl", "proofs.jsonl"):
            rows = lines(files[name])
            del rows[index]
            files[name] = b"".join(rows)
        restate(files)

    files = dict(genuine)
    cut_first_logs_tail(files)
    verdict = verify_bundle(write_bundle(tmp_path / "cut.zip", files))
    assert verdict.ok and f"log {first}: no later event of the vendor yet, so the series' end is not witnessed" \
        in verdict.line(), verdict.line()


# -- kinds: a later version's are valid ---------------------------------------------------------------

async def test_an_event_of_a_kind_this_version_does_not_know_verifies(dsn: str, tmp_path: Path) -> None:
    vendor = uuid.uuid4()
    runtime = await audited_runtime(dsn, tmp_path)
    try:
        await runtime.writer.commit(synthetic(vendor))
        later = synthetic(vendor)
        later.kind = enum.Enum("LaterKind", {"FROBNICATE": "vendor:widget:frobnicate"}).FROBNICATE  # type: ignore[assignment]
        await runtime.writer.commit(later)
        path = (await export(runtime, tmp_path / "later.zip", vendor)).path
    finally:
        await runtime.close()
    verdict = verify_bundle(path)
    assert verdict.ok and verdict.events == 2, verdict.line()
    kinds = {orjson.loads(line)["kind"] for line in lines(read_bundle(path)["events.jsonl"])}
    assert "vendor:widget:frobnicate" in kinds


# -- gateway/audit/schema.py against schemas/*.schema.json ---------------------------------------------

def _validator(name: str) -> jsonschema.protocols.Validator:
    document = json.loads((REPOSITORY / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(document, format_checker=None)


ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 2**53, 1.5, "", "x", "audit", [], ["x"], [1], {}, {"a": 1},
                         "2026-04-01T09:30:00.000000Z", "2026-04-01T09:30:00Z", "0" * 64, "0" * 16,
                         str(uuid.UUID(int=1)), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                         "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", "vendor:widget:frobnicate", "Vendor:x:y",
                         "allow", "vendor", "lpd-gateway-evidence/1"]


def _variants(value: Any, depth: int = 0) -> list[Any]:
    """`value` and every copy of it with one property removed, added or replaced by an odd value, at any
    depth of nested objects (and the first item of lists)."""
    found: list[Any] = [value]
    if isinstance(value, dict):
        found.append({**value, "unknown": 1})
        for name, item in value.items():
            found.append({k: v for k, v in value.items() if k != name})
            found += [{**value, name: odd} for odd in ODD_VALUES]
            if depth < 3:
                found += [{**value, name: variant} for variant in _variants(item, depth + 1)[1:]]
    elif isinstance(value, list) and value and depth < 3:
        found += [[variant, *value[1:]] for variant in _variants(value[0], depth + 1)[1:]]
        found += [[*value, odd] for odd in ODD_VALUES[:12]]
    return found


def _agrees(check: Callable[[Any], Any], validator: jsonschema.protocols.Validator, documents: list[Any]) -> None:
    for document in documents:
        try:
            check(document)
            ours = True
        except schema.ShapeError:
            ours = False
        assert ours == validator.is_valid(document), (ours, document)


def _documents(genuine: Genuine, name: str) -> list[Any]:
    return [orjson.loads(line) for line in lines(genuine.files[name])[:3]]


def test_the_manifest_and_keys_checks_are_the_schemas(genuine: Genuine) -> None:
    _agrees(schema.manifest, _validator("audit-manifest"), _variants(orjson.loads(genuine.files["manifest.json"])))
    _agrees(schema.keys, _validator("audit-keys"), _variants(orjson.loads(genuine.files["keys.json"])))
    _agrees(schema.report_figures, _validator("audit-report"), _variants(orjson.loads(genuine.files["report.json"])))


@pytest.mark.parametrize("file, name, check", [
    ("checkpoints.jsonl", "audit-checkpoint-line", schema.checkpoint_line),
    ("consistency.jsonl", "audit-consistency-line", schema.consistency_line),
    ("proofs.jsonl", "audit-proof-line", schema.proof_line),
    ("events.jsonl", "audit-event", schema.event),
    ("terms.jsonl", "audit-terms-line", schema.terms_line),
    ("terminations.jsonl", "audit-terminations-line", schema.terminations_line),
    ("key-events.jsonl", "audit-key-event-line", schema.key_event_line),
])
def test_each_line_check_is_its_schema(genuine: Genuine, file: str, name: str, check: Any) -> None:
    documents = [variant for document in _documents(genuine, file) for variant in _variants(document)]
    _agrees(lambda value: check(value, "line"), _validator(name), documents)
    if file == "events.jsonl":  # the verifier's unrolled copy says the same
        for document in documents:
            try:
                schema.event(document, "line")
                valid = True
            except schema.ShapeError:
                valid = False
            assert schema.event_valid(document) == valid, document


def test_every_kind_this_version_writes_and_any_later_tag_is_valid() -> None:
    validator = _validator("audit-event")
    kind = validator.schema["properties"]["kind"]
    for value in [k.value for k in EventKind] + ["vendor:widget:frobnicate", "a-b:c-d:e"]:
        assert jsonschema.Draft202012Validator(kind).is_valid(value) and schema.KIND(value), value
    for value in ["vendor:widget", "Vendor:x:y", "a:b:c:d", "a::b", 5]:
        assert not jsonschema.Draft202012Validator(kind).is_valid(value), value
    # ECMA-262's $ matches only at the end (Python's `re`, which jsonschema uses, also before a final
    # newline): the verifier follows ECMA-262.
    assert not schema.KIND("a:b:c\n")
