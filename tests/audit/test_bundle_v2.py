"""Signed bundles (schemas/audit-format.md §6.1, §6.4 steps 1a, 8a, 8b and 9, §6.5), format 3 as exported
now: the manifest is signed, the report's figures are report.json, recomputed by the verifier, and the
terms texts and termination documents the events name travel with them. Format 2 bundles (no
terminations, report/2) and format 1 bundles (tests/audit/fixtures/bundle-v1.zip, exported by the
gateway before format 2) still verify."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit import report
from gateway.audit.format import FORMAT, FORMAT_V2, PublicKey
from gateway.audit.verify import verify_bundle
from keys.notes import NoteSigner
from keys.signing import SigningKey
from tests.audit.support import (
    audited_runtime,
    edit_jsonl,
    export,
    lines,
    read_bundle,
    scenario,
    sign_manifest,
    write_bundle,
)
from tests.conftest import client_for

V1_BUNDLE = Path(__file__).parent / "fixtures" / "bundle-v1.zip"


@dataclass
class Case:
    bundle: Path
    files: dict[str, bytes]
    member_files: dict[str, bytes]  # the licensed member's events alone: no termination among them


@pytest.fixture(scope="module")
async def case(databases: Any, migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Case]:
    name = await databases.create(migrated_template)
    home = tmp_path_factory.mktemp("bundle-v2")
    runtime = await audited_runtime(databases.dsn(name), home, GATEWAY_CHECKPOINT_EVENTS="5")
    try:
        async with client_for(runtime) as client:
            found = await scenario(runtime, client)
        result = await export(runtime, home / "bundle.zip", found.vendor_id)
        assert not result.warnings
        await export(runtime, home / "member.zip", found.vendor_id, member_id=uuid.UUID(found.licensed.member["id"]))
        yield Case(home / "bundle.zip", read_bundle(home / "bundle.zip"), read_bundle(home / "member.zip"))
    finally:
        await runtime.close()
        await databases.drop(name)


def tampered(case: Case, tmp_path: Path, change: Callable[[dict[str, bytes]], None], *, resign: bool = True) -> Path:
    """The bundle changed, its manifest's hashes recomputed and (`resign`) signed again by the audit key,
    as someone holding it would; without `resign`, manifest.sig stays the exporter's."""
    files = dict(case.files)
    change(files)
    return write_bundle(tmp_path / "tampered.zip", files, resign=resign)


def refused(path: Path, code: str, **options: Any) -> None:
    verdict = verify_bundle(path, **options)
    assert not verdict.ok and verdict.code == code, verdict.line()


def _manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        manifest = orjson.loads(files["manifest.json"])
        change(manifest)
        files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    return edit


# -- the genuine bundle ---------------------------------------------------------------------------------

def test_a_genuine_bundle_is_format_3_and_verifies(case: Case) -> None:
    assert {"manifest.sig", "terms.jsonl", "terminations.jsonl", "report.json"} <= case.files.keys()
    manifest = orjson.loads(case.files["manifest.json"])
    assert manifest["format"] == FORMAT == "lpd-gateway-evidence/3" and manifest["report"] == "lpd-gateway report/3"
    signed = case.files["manifest.sig"].decode()
    assert signed.startswith(f"{FORMAT}\nmanifest-sha256 {hashlib.sha256(case.files['manifest.json']).hexdigest()}\n"
                             f"exported-at {manifest['created_at']}\n\n— lpd-gateway-audit ")
    verdict = verify_bundle(case.bundle)
    assert verdict.ok, verdict.line()
    assert any(note.startswith("manifest signed by key ") for note in verdict.notes)
    vkey = orjson.loads(case.files["keys.json"])["keys"][0]["vkey"]
    assert verify_bundle(case.bundle, trusted_keys=[vkey], require_signed=True).ok


def test_report_json_holds_the_figures_and_the_page_shows_them(case: Case) -> None:
    figures = orjson.loads(case.files["report.json"])
    assert case.files["report.json"] == orjson.dumps(figures, option=orjson.OPT_SORT_KEYS) + b"\n"  # RFC 8785
    assert figures["deliveries_by_credential"] == [{"credential": "member", "deliveries": 4}]
    assert figures["unauthenticated_deliveries"] == 0 and figures["records"] > 0
    names = {m["name"] for m in figures["members"]}
    assert "member-a" in names and [d["name"] for d in figures["datasets"]] == ["footfall"]
    page = case.files["report.html"].decode()
    assert f"records delivered: <b>{figures['records']:,}</b>" in page
    # The second member's terminated licence, under 限定提供性, its attestation received.
    events = [orjson.loads(line) for line in lines(case.files["events.jsonl"])]
    [ended] = [e for e in events if e["kind"] == "vendor:licence:terminate"]
    [attested] = [e for e in events if e["kind"] == "member:deletion:attest"]
    assert figures["terminations"] == [{
        "termination_id": ended["detail"]["termination_id"], "licence_id": ended["licence_id"],
        "member_id": ended["member_id"], "dataset_id": ended["dataset_id"], "terminated_at": ended["at"],
        "grounds": "contract_end", "attestation_due": ended["detail"]["attestation_due"],
        "attested_at": attested["at"]}]
    provision = page[page.index("<h2>限定提供性"):page.index("<h2>相当蓄積性")]
    assert "契約終了と削除証明" in provision and "attestations outstanding: <b>0</b>" in provision
    assert "member-b" in provision and "契約期間の満了 / contract end" in provision


def test_terms_jsonl_holds_each_named_terms_text_with_its_digest(case: Case) -> None:
    rows = [orjson.loads(line) for line in lines(case.files["terms.jsonl"])]
    assert rows and all(r["sha256"] == hashlib.sha256(r["text"].encode()).hexdigest() for r in rows)
    events = [orjson.loads(line) for line in lines(case.files["events.jsonl"])]
    named = {(e["licence_id"], e["terms_version"]) for e in events if e["licence_id"] and e["terms_version"]}
    assert [(r["licence_id"], r["version"]) for r in rows] == sorted(named)
    # Each acceptance's (licence, version) is there, with the very text whose digest the member named.
    accepted = [e for e in events if e["kind"] == "member:terms:accept" and e["outcome"] == "change"]
    texts = {(r["licence_id"], r["version"]): r["sha256"] for r in rows}
    assert accepted and all(texts[(e["licence_id"], e["terms_version"])] == e["detail"]["terms_sha256"]
                            for e in accepted)


# -- the manifest's signature -----------------------------------------------------------------------------

MANIFEST_FLIPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "report marker renamed": lambda m: m.update({"reports": m.pop("report")}),
    "report marker changed": lambda m: m.update(report="someone else's report/1"),
    "created_at changed": lambda m: m.update(created_at="2020-01-01T00:00:00.000000Z"),
    "scope's period widened": lambda m: m["scope"].update({"from": "2000-01-01T00:00:00.000000Z"}),
    "scope's vendor changed": lambda m: m["scope"].update(vendor_id="00000000-0000-0000-0000-000000000001"),
    "a log's pending count changed": lambda m: m["logs"][0].update(pending=m["logs"][0]["pending"] + 1),
    "series switched off": lambda m: m.update(series=None),
    "format set back to 1": lambda m: m.update(format="lpd-gateway-evidence/1"),
}


@pytest.mark.parametrize("name", list(MANIFEST_FLIPS))
def test_any_manifest_field_changed_is_refused(case: Case, tmp_path: Path, name: str) -> None:
    refused(tampered(case, tmp_path, _manifest(MANIFEST_FLIPS[name]), resign=False), "manifest-signature")


def test_a_manifest_re_signed_by_another_key_is_refused(case: Case, tmp_path: Path) -> None:
    def resign(files: dict[str, bytes]) -> None:
        _manifest(MANIFEST_FLIPS["report marker changed"])(files)
        files["manifest.json"] = write_bundle_manifest(files)
        files["manifest.sig"] = sign_manifest(files["manifest.sig"], files["manifest.json"],
                                              NoteSigner("lpd-gateway-audit", SigningKey.generate()))

    files = dict(case.files)
    resign(files)
    refused(write_bundle(tmp_path / "other-key.zip", files, rehash=False), "manifest-signature")


def write_bundle_manifest(files: dict[str, bytes]) -> bytes:
    manifest = orjson.loads(files["manifest.json"])
    for name in manifest["files"]:
        manifest["files"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "bytes": len(files[name])}
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def test_a_signature_outside_its_keys_validity_or_untrusted_is_refused(case: Case, tmp_path: Path) -> None:
    other = PublicKey("0" * 16, "audit", SigningKey.generate().public_bytes(),
                      *[None] * 3).vkey()  # type: ignore[arg-type]
    refused(case.bundle, "manifest-signature", trusted_keys=[other])

    def retire_before_export(files: dict[str, bytes]) -> None:
        keys = orjson.loads(files["keys.json"])
        keys["keys"][0]["retired_at"] = orjson.loads(files["manifest.json"])["created_at"]
        files["keys.json"] = orjson.dumps(keys)

    # keys.json's validity is the signed key history's, or the bundle is refused before any signature is
    # judged by it (tests/audit/test_key_history.py).
    refused(tampered(case, tmp_path, retire_before_export), "key-history")


def test_manifest_sig_removed_or_damaged_is_refused(case: Case, tmp_path: Path) -> None:
    refused(tampered(case, tmp_path, lambda f: f.pop("manifest.sig"), resign=False), "bundle-format")
    refused(tampered(case, tmp_path, lambda f: f.update({"manifest.sig": b"not a note\n"}), resign=False),
            "manifest-signature")


# -- report.json ------------------------------------------------------------------------------------------

def _figure(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        figures = orjson.loads(files["report.json"])
        change(figures)
        files["report.json"] = orjson.dumps(figures, option=orjson.OPT_SORT_KEYS) + b"\n"
    return edit


REPORT_CHANGES: dict[str, Callable[[dict[str, bytes]], None]] = {
    "records delivered": _figure(lambda f: f.update(records=f["records"] + 1)),
    "a member's deliveries": _figure(lambda f: f["members"][0].update(deliveries=f["members"][0]["deliveries"] + 1)),
    "a member renamed": _figure(lambda f: f["members"][0].update(name="someone else")),
    "a denial dropped": _figure(lambda f: f["denials_by_reason"].pop()),
    "the same figures, other bytes": lambda files: files.update(
        {"report.json": orjson.dumps(orjson.loads(files["report.json"]), option=orjson.OPT_INDENT_2) + b"\n"}),
    "report.html alone": lambda files: files.update(
        {"report.html": files["report.html"].replace(b"deliveries were authenticated", b"deliveries were checked")}),
}


@pytest.mark.parametrize("name", list(REPORT_CHANGES))
def test_a_report_changed_is_refused_even_with_the_manifest_re_signed(case: Case, tmp_path: Path, name: str) -> None:
    refused(tampered(case, tmp_path, REPORT_CHANGES[name]), "report")


def test_report_json_with_an_unknown_property_is_a_format_problem(case: Case, tmp_path: Path) -> None:
    refused(tampered(case, tmp_path, _figure(lambda f: f.update(comment="x"))), "bundle-format")


# -- terms.jsonl ------------------------------------------------------------------------------------------

def _accepted_terms_line(files: dict[str, bytes]) -> int:
    """The index in terms.jsonl of the terms the member accepted (the other member's were never accepted)."""
    accepted = next(orjson.loads(e)["licence_id"] for e in lines(files["events.jsonl"])
                    if orjson.loads(e)["kind"] == "member:terms:accept")
    return next(i for i, t in enumerate(lines(files["terms.jsonl"])) if orjson.loads(t)["licence_id"] == accepted)


def test_a_terms_text_changed_is_refused(case: Case, tmp_path: Path) -> None:
    index = _accepted_terms_line(case.files)
    text_only = lambda f: f.update(
        {"terms.jsonl": edit_jsonl(f["terms.jsonl"], index, lambda t: t.update(text=t["text"] + " (amended)"))})
    refused(tampered(case, tmp_path, text_only), "terms")

    def text_and_digest(t: dict[str, Any]) -> None:
        t["text"] += " (amended)"
        t["sha256"] = hashlib.sha256(t["text"].encode()).hexdigest()

    # Consistent in itself, but not the text the member accepted: the acceptance event names its digest.
    refused(tampered(case, tmp_path, lambda f: f.update({"terms.jsonl": edit_jsonl(f["terms.jsonl"], index,
                                                                                   text_and_digest)})), "terms")


def test_a_terms_text_left_out_or_added_is_refused(case: Case, tmp_path: Path) -> None:
    refused(tampered(case, tmp_path, lambda f: f.update({"terms.jsonl": b""})), "terms")
    extra = orjson.dumps({"licence_id": "00000000-0000-0000-0000-000000000001", "version": 1,
                          "sha256": hashlib.sha256(b"x").hexdigest(), "text": "x"}) + b"\n"
    refused(tampered(case, tmp_path, lambda f: f.update({"terms.jsonl": extra + f["terms.jsonl"]})), "terms")


# -- format 1 ---------------------------------------------------------------------------------------------

def test_a_format_1_bundle_still_verifies(tmp_path: Path) -> None:
    files = read_bundle(V1_BUNDLE)
    assert "manifest.sig" not in files and orjson.loads(files["manifest.json"])["format"] == "lpd-gateway-evidence/1"
    verdict = verify_bundle(V1_BUNDLE)
    assert verdict.ok, verdict.line()
    assert any(note.startswith("format 1 bundle: its manifest is not signed") for note in verdict.notes)
    refused(V1_BUNDLE, "manifest-signature", require_signed=True)
    other = PublicKey("0" * 16, "audit", SigningKey.generate().public_bytes(),
                      *[None] * 3).vkey()  # type: ignore[arg-type]
    refused(V1_BUNDLE, "unknown-key", trusted_keys=[other])  # format 1: the checkpoints are the first signatures


def test_a_format_1_bundle_keeps_its_key_checks_and_says_its_page_is_not_rechecked(tmp_path: Path) -> None:
    files = read_bundle(V1_BUNDLE)
    keys = orjson.loads(files["keys.json"])
    keys["keys"][0]["not_after"] = keys["keys"][0]["not_before"]
    refused(write_bundle(tmp_path / "keys.zip", dict(files, **{"keys.json": orjson.dumps(keys)})), "key-validity")
    # Format 1's page is unsigned and its renderer retired: the verdict says it was not compared.
    page = dict(files, **{"report.html": files["report.html"].replace(b"deliveries were", b"deliveries are")})
    verdict = verify_bundle(write_bundle(tmp_path / "page.zip", page))
    assert verdict.ok and any("not re-checked" in note for note in verdict.notes), verdict.line()


def test_a_format_2_bundle_stripped_to_format_1_is_refused_when_signatures_are_required(case: Case,
                                                                                       tmp_path: Path) -> None:
    def downgrade(files: dict[str, bytes]) -> None:
        for name in ("manifest.sig", "key-events.jsonl", "terms.jsonl", "terminations.jsonl", "report.json"):
            files.pop(name)
        manifest = orjson.loads(files["manifest.json"])
        manifest.update(format="lpd-gateway-evidence/1", report="another report/1")
        manifest.pop("names")  # format 1 had no names
        for name in ("key-events.jsonl", "terms.jsonl", "terminations.jsonl", "report.json"):
            manifest["files"].pop(name)
        files["manifest.json"] = orjson.dumps(manifest)

    path = tampered(case, tmp_path, downgrade)
    assert verify_bundle(path).ok  # as format 1 says: nothing signs its manifest
    refused(path, "manifest-signature", require_signed=True)


# -- format 2, as exported before format 3 -----------------------------------------------------------------

def as_format_2(files: dict[str, bytes]) -> None:
    """The bundle as the exporter of format 2 wrote it: no terminations.jsonl, no names, report/2."""
    files.pop("terminations.jsonl")
    manifest = orjson.loads(files["manifest.json"])
    manifest.update(format=FORMAT_V2, report="lpd-gateway report/2")
    manifest.pop("names")
    manifest["files"].pop("terminations.jsonl")
    figures = orjson.loads(files["report.json"])
    figures["format"] = "lpd-gateway report/2"
    figures.pop("terminations")
    for dataset in figures["datasets"]:
        dataset.pop("withdrawn")
    files["report.json"] = report.figures_json(figures)
    files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def test_a_format_2_bundle_still_verifies_its_figures_and_says_its_page_is_not_rechecked(case: Case,
                                                                                         tmp_path: Path) -> None:
    files = dict(case.member_files)
    as_format_2(files)
    files["report.html"] = files["report.html"].replace(b"records delivered", b"records handed over")
    path = write_bundle(tmp_path / "v2.zip", files)  # manifest.sig re-signed by the audit key, as format 2's
    assert read_bundle(path)["manifest.sig"].startswith(b"lpd-gateway-evidence/2\n")
    verdict = verify_bundle(path, require_signed=True)
    assert verdict.ok and any("report.html of format 2" in note for note in verdict.notes), verdict.line()
    # Its figures are still recomputed: by format 2's rules, which have no terminations.
    figures = orjson.loads(files["report.json"])
    figures["records"] += 1
    refused(write_bundle(tmp_path / "figures.zip", dict(files, **{"report.json": report.figures_json(figures)})),
            "report")
    figures["records"] -= 1
    figures["terminations"] = []
    refused(write_bundle(tmp_path / "terminations.zip", dict(files, **{"report.json": report.figures_json(figures)})),
            "bundle-format")


def test_a_format_2_bundle_cannot_name_a_termination_nor_pass_for_format_3(case: Case, tmp_path: Path) -> None:
    files = dict(case.files)
    as_format_2(files)
    refused(write_bundle(tmp_path / "terminated.zip", files), "terminations")
    # A format 3 bundle's manifest rewritten as format 2, manifest.sig still saying format 3.
    files = dict(case.member_files)
    as_format_2(files)
    path = write_bundle(tmp_path / "relabelled.zip", files, resign=False)
    relabelled = read_bundle(path)
    relabelled["manifest.sig"] = sign_manifest(case.member_files["manifest.sig"], relabelled["manifest.json"],
                                               bundle_format=FORMAT)
    refused(write_bundle(tmp_path / "mislabelled.zip", relabelled, rehash=False), "manifest-signature")


# -- terminations.jsonl -----------------------------------------------------------------------------------

def _termination(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, bytes]], None]:
    return lambda files: files.update({"terminations.jsonl": edit_jsonl(files["terminations.jsonl"], 0, change)})


def _notice(change: Callable[[dict[str, Any]], None], *, rehash: bool) -> Callable[[dict[str, Any]], None]:
    """The line's notice changed (and, with `rehash`, its line's digest made to match again)."""
    def edit(line: dict[str, Any]) -> None:
        notice = orjson.loads(line["notice"])
        change(notice)
        line["notice"] = orjson.dumps(notice, option=orjson.OPT_SORT_KEYS).decode()
        if rehash:
            line["notice_sha256"] = hashlib.sha256(line["notice"].encode()).hexdigest()
    return edit


def test_terminations_jsonl_holds_the_signed_notice_and_the_attestation_the_events_name(case: Case) -> None:
    [line] = [orjson.loads(row) for row in lines(case.files["terminations.jsonl"])]
    events = [orjson.loads(row) for row in lines(case.files["events.jsonl"])]
    ended = next(e for e in events if e["kind"] == "vendor:licence:terminate" and e["outcome"] == "change")
    attested = next(e for e in events if e["kind"] == "member:deletion:attest" and e["outcome"] == "change")
    assert line["termination_id"] == ended["detail"]["termination_id"] == attested["detail"]["termination_id"]
    assert line["notice_sha256"] == ended["detail"]["notice_sha256"] == hashlib.sha256(line["notice"].encode()).hexdigest()
    assert line["attestation_sha256"] == attested["detail"]["attestation_sha256"]
    notice = orjson.loads(line["notice"])
    assert notice["grounds"] == "contract_end" and notice["effective_at"]["utc"] == ended["detail"]["effective_at"]
    key = next(k for k in orjson.loads(case.files["keys.json"])["keys"] if k["key_id"] == line["key_id"])
    assert key and orjson.loads(line["attestation"])["notice_sha256"] == line["notice_sha256"]


TERMINATION_CHANGES: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    # The notice edited, its line's digest left: the document is not the one the line names.
    "a notice's reason edited": (_termination(_notice(lambda n: n.update(reason="none given"), rehash=False)),
                                 "does not have the SHA-256 the line names (the notice was changed)"),
    # Edited consistently in the file: the event's signed digest, and the signature, still tell.
    "a notice's due date moved, its digest restated": (
        _termination(_notice(lambda n: n.update(attestation_due="2099-12-31"), rehash=True)),
        "does not verify under key"),
    "a signature's byte changed": (
        _termination(lambda t: t.update(signature=base64.b64encode(
            bytes([base64.b64decode(t["signature"])[0] ^ 1]) + base64.b64decode(t["signature"])[1:]).decode())),
        "does not verify under key"),
    "a notice left out": (lambda files: files.update({"terminations.jsonl": b""}),
                          "whose documents terminations.jsonl lacks"),
    "an attestation left out": (_termination(lambda t: t.update(attestation=None, attestation_sha256=None)),
                                "attestation_sha256"),
    "an attestation edited": (_termination(lambda t: t.update(attestation=t["attestation"].replace("All", "Some"))),
                              "does not have the SHA-256 the line names (the attestation was changed)"),
    "a notice signed by an unknown key": (_termination(lambda t: t.update(key_id="0" * 16)),
                                          "not an audit key of the bundle"),
}


@pytest.mark.parametrize("name", list(TERMINATION_CHANGES))
def test_a_termination_document_changed_or_left_out_is_refused(case: Case, tmp_path: Path, name: str) -> None:
    change, reason = TERMINATION_CHANGES[name]
    verdict = verify_bundle(tampered(case, tmp_path, change))
    assert not verdict.ok and verdict.code == "terminations" and reason in (verdict.problem or ""), verdict.line()


def test_a_notice_restated_with_its_event_still_fails_its_signature(case: Case, tmp_path: Path) -> None:
    """Whoever rewrites a notice and every digest naming it still lacks a signature over the new bytes."""
    def restate(files: dict[str, bytes]) -> None:
        _termination(_notice(lambda n: n.update(reason="breach"), rehash=True))(files)
        digest = orjson.loads(lines(files["terminations.jsonl"])[0])["notice_sha256"]
        rows = [orjson.loads(row) for row in lines(files["events.jsonl"])]
        for row in rows:
            if row["kind"] in ("vendor:licence:terminate", "member:deletion:attest") and row["outcome"] == "change":
                row["detail"]["notice_sha256"] = digest
        files["events.jsonl"] = b"".join(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n" for row in rows)

    refused(tampered(case, tmp_path, restate), "inclusion")  # the events are signed into the log
