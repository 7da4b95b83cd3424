"""Evidence bundles: exported from real API traffic, verified offline, and every tampering caught."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway import keyring, signing_keys
from gateway.actors import cli_actor
from gateway.audit import report, verify
from gateway.audit.format import PublicKey, b64
from gateway.audit.verify import verify_bundle
from keys.merkle import MerkleTree
from keys.notes import format_checkpoint, parse_note
from keys.sealing import MasterKey
from keys.signing import SigningKey
from tests.audit.support import (
    Scenario,
    audited_runtime,
    edit_jsonl,
    export,
    lines,
    read_bundle,
    restate_report,
    scenario,
    synthetic,
    write_bundle,
)
from tests.conftest import TEST_MASTER_KEY, client_for

MASTER = MasterKey.from_text(TEST_MASTER_KEY)


@dataclass
class Case:
    dsn: str
    bundle: Path
    files: dict[str, bytes]
    scenario: Scenario


@pytest.fixture(scope="module")
async def case(databases: Any, migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Case]:
    """One vendor's real traffic through the API, checkpointed every 5 events, exported once."""
    name = await databases.create(migrated_template)
    dsn = databases.dsn(name)
    home = tmp_path_factory.mktemp("bundle")
    runtime = await audited_runtime(dsn, home, GATEWAY_CHECKPOINT_EVENTS="5")
    try:
        async with client_for(runtime) as client:
            found = await scenario(runtime, client)
        bundle = home / "bundle.zip"
        result = await export(runtime, bundle, found.vendor_id)
        assert result.events >= 15 and result.checkpoints >= 3 and not result.warnings
        yield Case(dsn, bundle, read_bundle(bundle), found)
    finally:
        await runtime.close()
        await databases.drop(name)


def tampered(case: Case, tmp_path: Path, change: Callable[[dict[str, bytes]], None], *, rehash: bool = True) -> Path:
    files = dict(case.files)
    change(files)
    return write_bundle(tmp_path / "tampered.zip", files, rehash=rehash)


def events_of(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(files["events.jsonl"])]


def middle_delivery(files: dict[str, bytes]) -> int:
    events = events_of(files)
    return next(i for i, e in enumerate(events) if e["kind"] == "member:records:deliver" and 0 < i < len(events) - 2)


def drop_line(files: dict[str, bytes], index: int) -> None:
    for name in ("events.jsonl", "proofs.jsonl"):
        rows = lines(files[name])
        del rows[index]
        files[name] = b"".join(rows)


# -- the untouched bundle -------------------------------------------------------------------------------

async def test_an_untouched_bundle_verifies(case: Case) -> None:
    verdict = verify_bundle(case.bundle)
    assert verdict.ok, verdict.line()
    assert verdict.events == len(lines(case.files["events.jsonl"])) and verdict.logs == 1
    assert verdict.checkpoints >= 3 and verdict.series == "vendor"
    assert verdict.line().startswith(f"OK: {verdict.events} events in 1 logs")
    # The bundle is the scenario's: deliveries, the denial, terms acceptance and the publish are in it.
    kinds = {e["kind"] for e in events_of(case.files)}
    assert {"member:records:deliver", "member:records:stream-end", "member:terms:accept",
            "vendor:version:publish", "vendor:licence:grant"} <= kinds
    assert all(e["vendor_id"] == str(case.scenario.vendor_id) for e in events_of(case.files))


def test_the_report_maps_the_period_to_the_three_conditions(case: Case) -> None:
    page = case.files["report.html"].decode()
    for heading in ("電磁的管理性", "Electromagnetic management", "限定提供性", "Provision to specific parties",
                    "相当蓄積性", "Substantial accumulation"):
        assert heading in page
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "default-src 'none'" in page and "all 4 deliveries were authenticated" in page
    assert "member-a" in page and "footfall" in page


# -- tampering: each case names the check that catches it --------------------------------------------

def _modify_event(files: dict[str, bytes]) -> None:
    index = middle_delivery(files)
    files["events.jsonl"] = edit_jsonl(files["events.jsonl"], index,
                                       lambda e: e.update(delivery={**e["delivery"], "records": 1}))


def _swap(files: dict[str, bytes], names: tuple[str, ...]) -> None:
    index = middle_delivery(files)
    for name in names:
        rows = lines(files[name])
        rows[index], rows[index + 1] = rows[index + 1], rows[index]
        files[name] = b"".join(rows)


def _insert_copy(files: dict[str, bytes]) -> None:
    index = middle_delivery(files)
    for name in ("events.jsonl", "proofs.jsonl"):
        rows = lines(files[name])
        rows.insert(index + 1, rows[index])
        files[name] = b"".join(rows)


def _insert_forged(files: dict[str, bytes]) -> None:
    """A made-up delivery after the last event, with the last event's proof."""
    events, proofs = lines(files["events.jsonl"]), lines(files["proofs.jsonl"])
    event, proof = orjson.loads(events[-1]), orjson.loads(proofs[-1])
    event.update(seq=event["seq"] + 1, vendor_seq=event["vendor_seq"] + 1, event_id=str(uuid.uuid4()))
    proof.update(seq=event["seq"])
    files["events.jsonl"] += orjson.dumps(event, option=orjson.OPT_SORT_KEYS) + b"\n"
    files["proofs.jsonl"] += orjson.dumps(proof) + b"\n"


def _relabel_log(files: dict[str, bytes]) -> None:
    index = middle_delivery(files)
    files["events.jsonl"] = edit_jsonl(files["events.jsonl"], index, lambda e: e.update(log=e["log"] + "x"))


def _forge_signature(files: dict[str, bytes]) -> None:
    rows = lines(files["checkpoints.jsonl"])
    line = orjson.loads(rows[0])
    text, _, signatures = line["note"].partition("\n\n")
    origin, size, _root, *rest = text.split("\n")
    line["note"] = "\n".join([origin, size, b64(bytes(32)), *rest]) + "\n\n" + signatures
    rows[0] = orjson.dumps(line) + b"\n"
    files["checkpoints.jsonl"] = b"".join(rows)


def _resign(files: dict[str, bytes], key: SigningKey, root: bytes | None = None, index: int = 0) -> None:
    """Replace checkpoint `index` by one signed with `key`, optionally over another root."""
    rows = lines(files["checkpoints.jsonl"])
    line = orjson.loads(rows[index])
    parsed = parse_note(line["note"]).unverified_text.split("\n")
    text = format_checkpoint(parsed[0], int(parsed[1]), root or base64.b64decode(parsed[2]),
                             [parsed[3]])
    line["note"] = signing_keys.note_signer(key).sign(text)
    rows[index] = orjson.dumps(line) + b"\n"
    files["checkpoints.jsonl"] = b"".join(rows)


def _report(files: dict[str, bytes]) -> None:
    files["report.html"] = files["report.html"].replace(b"all 4 deliveries", b"all 5 deliveries")


TAMPERING: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "modified event": (_modify_event, "inclusion"),
    "deleted event": (lambda f: drop_line(f, middle_delivery(f)), "gap"),
    "inserted copy of an event": (_insert_copy, "order"),
    "inserted forged event": (_insert_forged, "inclusion"),
    # Swapped with their proofs, each still proves itself: the vendor series sees the disorder first.
    "two events swapped with their proofs": (lambda f: _swap(f, ("events.jsonl", "proofs.jsonl")), "gap"),
    "two events swapped": (lambda f: _swap(f, ("events.jsonl",)), "log-mismatch"),
    "event relabelled to another log": (_relabel_log, "log-mismatch"),
    "checkpoint root changed, signature kept": (_forge_signature, "bad-signature"),
    "checkpoint signed by an unknown key": (lambda f: _resign(f, SigningKey.generate()), "unknown-key"),
    "report rewritten": (_report, "report"),
    "file added": (lambda f: f.update({"extra.txt": b"x"}), "bundle-format"),
    "series switched off in the manifest": (
        lambda f: f.update({"manifest.json": f["manifest.json"].replace(b'"series": "vendor"', b'"series": null')}),
        "bundle-format"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_is_caught_even_with_a_recomputed_manifest(case: Case, tmp_path: Path, name: str) -> None:
    change, code = TAMPERING[name]
    verdict = verify_bundle(tampered(case, tmp_path, change))
    assert not verdict.ok and verdict.code == code, verdict.line()
    assert verdict.line().startswith(f"FAILED [{code}]")


@pytest.mark.parametrize("name", ["modified event", "deleted event", "report rewritten", "inserted copy of an event"])
def test_tampering_without_a_new_manifest_is_a_manifest_mismatch(case: Case, tmp_path: Path, name: str) -> None:
    verdict = verify_bundle(tampered(case, tmp_path, TAMPERING[name][0], rehash=False))
    assert verdict.code == "manifest-mismatch", verdict.line()


def _drop_last(rows: list[bytes]) -> None:
    del rows[-1]


def _cut_newline(rows: list[bytes]) -> None:
    rows[-1] = rows[-1].rstrip(b"\n")


PROOF_LINES: dict[str, tuple[Callable[[list[bytes]], None], str]] = {
    "last proof line deleted": (_drop_last, "has no proof line"),
    "proof line added": (lambda rows: rows.append(rows[-1]), "proofs.jsonl has more lines than events.jsonl"),
    "last newline cut": (_cut_newline, "proofs.jsonl: the last line has no newline"),
}


@pytest.mark.parametrize("name", list(PROOF_LINES))
def test_events_and_proofs_must_pair_line_for_line(case: Case, tmp_path: Path, name: str) -> None:
    change, problem = PROOF_LINES[name]

    def edit(files: dict[str, bytes]) -> None:
        rows = lines(files["proofs.jsonl"])
        change(rows)
        files["proofs.jsonl"] = b"".join(rows)

    verdict = verify_bundle(tampered(case, tmp_path, edit))
    assert verdict.code == "bundle-format" and problem in verdict.line(), verdict.line()


@pytest.mark.parametrize("rehash, code", [(True, "inclusion"), (False, "manifest-mismatch")])
def test_verdicts_do_not_depend_on_how_the_files_are_chunked(case: Case, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, rehash: bool,
                                                             code: str) -> None:
    """Lines cut across many chunks, inflater threads blocked on a parser one chunk behind: the same
    verdicts; and when the parser stops early, the threads still finish the hashes for the manifest."""
    monkeypatch.setattr(verify, "_CHUNK", 100)
    monkeypatch.setattr(verify, "_AHEAD", 1)
    assert verify_bundle(case.bundle).ok
    verdict = verify_bundle(tampered(case, tmp_path, _modify_event, rehash=rehash))
    assert verdict.code == code, verdict.line()


def test_a_bad_crc_found_by_an_inflater_thread_is_a_format_problem(case: Case, tmp_path: Path) -> None:
    """events.jsonl is read on a thread of its own, which sees the CRC only at the end: the verdict still
    names it."""
    data = bytearray(case.bundle.read_bytes())
    at = struct.unpack_from("<I", data, len(data) - 22 + 16)[0]  # the central directory (no ZIP comment)
    while data[at:at + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46:at + 46 + name_length] == b"events.jsonl":
            data[at + 16] ^= 1  # the CRC-32 the inflated bytes are checked against
        at += 46 + name_length + extra_length + comment_length
    broken = tmp_path / "crc.zip"
    broken.write_bytes(bytes(data))
    verdict = verify_bundle(broken)
    assert verdict.code == "bundle-format" and "Bad CRC-32 for file 'events.jsonl'" in verdict.line(), verdict.line()


def test_deleting_the_first_events_is_caught(case: Case, tmp_path: Path) -> None:
    """The series starts at vendor_seq 0: cutting its head leaves a series with nothing before it."""
    def cut_head(files: dict[str, bytes]) -> None:
        drop_line(files, 0)
        restate(files)

    verdict = verify_bundle(tampered(case, tmp_path, cut_head))
    assert verdict.code == "gap", verdict.line()


def restate(files: dict[str, bytes]) -> None:
    """What a thorough attacker does after deleting lines: fix the manifest's counts and the report."""
    manifest = orjson.loads(files["manifest.json"])
    events = events_of(files)
    manifest["logs"][0].update(events=len(events), first_seq=events[0]["seq"], last_seq=events[-1]["seq"])
    restate_report(files, manifest)
    files["manifest.json"] = orjson.dumps(manifest)


def test_deleting_the_newest_events_is_caught_only_while_a_later_event_witnesses_the_end(case: Case,
                                                                                        tmp_path: Path) -> None:
    """The documented limit: with no later event of the vendor yet, a cut tail looks complete."""
    def cut_tail(files: dict[str, bytes]) -> None:
        drop_line(files, len(lines(files["events.jsonl"])) - 1)

    assert verify_bundle(tampered(case, tmp_path, cut_tail, rehash=False)).code == "manifest-mismatch"
    assert verify_bundle(tampered(case, tmp_path, cut_tail)).code == "count"
    verdict = verify_bundle(tampered(case, tmp_path, lambda f: (cut_tail(f), restate(f))))
    assert verdict.ok and "the series' end is not witnessed" in verdict.line()


async def test_an_inconsistent_log_is_caught(case: Case, tmp_path: Path) -> None:
    """The log's own key signs a second, different tree: the consistency proofs expose it."""
    conn = await asyncpg.connect(case.dsn)
    try:
        key = await signing_keys.current(conn, MASTER)
    finally:
        await conn.close()
    verdict = verify_bundle(tampered(case, tmp_path, lambda f: _resign(f, key, bytes(range(32)), index=1)))
    assert verdict.code == "consistency", verdict.line()


def test_trusted_keys_pin_the_signer(case: Case) -> None:
    vkey = orjson.loads(case.files["keys.json"])["keys"][0]["vkey"]
    assert verify_bundle(case.bundle, trusted_keys=[vkey]).ok
    other = PublicKey("0" * 16, "audit", SigningKey.generate().public_bytes(),
                                   *[None] * 3).vkey()  # type: ignore[arg-type]
    # The manifest's signature is checked first: it is by the same key (tests/audit/test_bundle_v2.py
    # has a format 1 bundle refused with unknown-key at its checkpoints).
    assert verify_bundle(case.bundle, trusted_keys=[other]).code == "manifest-signature"


def test_a_checkpoint_outside_its_keys_validity_is_caught(case: Case, tmp_path: Path) -> None:
    def shorten_validity(files: dict[str, bytes]) -> None:
        keys = orjson.loads(files["keys.json"])
        keys["keys"][0]["not_after"] = keys["keys"][0]["not_before"]
        files["keys.json"] = orjson.dumps(keys)

    # Format 2 takes validity from the signed key history, which keys.json must state exactly (a format 1
    # bundle reaches the checkpoints with keys.json's validity: tests/audit/test_bundle_v2.py).
    assert verify_bundle(tampered(case, tmp_path, shorten_validity)).code == "key-history"


# -- filters, several logs, trusted checkpoints ---------------------------------------------------------

async def test_a_one_member_export_verifies_by_its_member_series(case: Case, tmp_path: Path) -> None:
    runtime = await audited_runtime(case.dsn, tmp_path, instance="second")
    try:
        path = tmp_path / "member.zip"
        result = await export(runtime, path, case.scenario.vendor_id, member_id=case.scenario.member_id)
    finally:
        await runtime.close()
    verdict = verify_bundle(path)
    assert verdict.ok and verdict.series == "member" and verdict.events == result.events, verdict.line()
    events = events_of(read_bundle(path))
    assert {e["member_id"] for e in events} == {str(case.scenario.member_id)}
    assert [e["member_seq"] for e in events] == list(range(len(events)))
    deleted = tampered(Case(case.dsn, path, read_bundle(path), case.scenario), tmp_path,
                       lambda f: drop_line(f, 2))
    assert verify_bundle(deleted).code == "gap"


async def test_a_dataset_filtered_export_proves_each_event_but_not_completeness(case: Case, tmp_path: Path) -> None:
    runtime = await audited_runtime(case.dsn, tmp_path, instance="third")
    try:
        path = tmp_path / "dataset.zip"
        dataset_id = uuid.UUID(case.scenario.licensed.dataset["id"])
        await export(runtime, path, case.scenario.vendor_id, dataset_id=dataset_id)
    finally:
        await runtime.close()
    verdict = verify_bundle(path)
    assert verdict.ok and verdict.series is None and "omissions not detectable" in verdict.line()
    files = read_bundle(path)
    assert {e["dataset_id"] for e in events_of(files)} == {str(dataset_id)}
    modified = tampered(Case(case.dsn, path, files, case.scenario), tmp_path, _modify_event)
    assert verify_bundle(modified).code == "inclusion"


async def test_two_writers_make_two_logs_verified_from_one_export(dsn: str, tmp_path: Path) -> None:
    first = await audited_runtime(dsn, tmp_path / "a", instance="gw-a")
    second = await audited_runtime(dsn, tmp_path / "b", instance="gw-b")
    try:
        vendor = uuid.uuid4()
        for i in range(30):
            await (first if i % 3 else second).writer.commit(synthetic(vendor, uuid.uuid4()))
            await first.writer.commit(synthetic(uuid.uuid4()))  # another vendor's traffic in between
        await second.writer.checkpoint()
        path = tmp_path / "two.zip"
        await export(first, path, vendor)
    finally:
        await asyncio.gather(first.close(), second.close())
    verdict = verify_bundle(path)
    assert verdict.ok and verdict.logs == 2 and verdict.events == 30, verdict.line()
    files = read_bundle(path)
    logs = sorted({e["log"] for e in events_of(files)})
    moved = tampered(Case(dsn, path, files, None), tmp_path,  # type: ignore[arg-type]
                     lambda f: f.update({"events.jsonl": edit_jsonl(f["events.jsonl"], 0,
                                                                    lambda e: e.update(log=logs[1]))}))
    assert verify_bundle(moved).code == "log-mismatch"


async def test_a_trusted_checkpoint_exposes_a_log_rewritten_and_re_signed(dsn: str, tmp_path: Path) -> None:
    runtime = await audited_runtime(dsn, tmp_path)
    vendor = uuid.uuid4()
    try:
        for _ in range(10):
            await runtime.writer.commit(synthetic(vendor))
        await runtime.writer.checkpoint()
        log_id = runtime.writer.log_id
        kept = await runtime.pool.fetchval("SELECT note FROM audit_checkpoints WHERE log_id = $1 "
                                           "ORDER BY tree_size DESC LIMIT 1", log_id)
        assert verify_bundle((await export(runtime, tmp_path / "before.zip", vendor)).path, kept).ok
        # The attacker holds the database and the master key: rewrites event 3, re-signs every checkpoint.
        await _rewrite_and_resign(runtime.pool, log_id, 3)
        rewritten = (await export(runtime, tmp_path / "after.zip", vendor)).path
    finally:
        await runtime.close()
    assert verify_bundle(rewritten).ok, "internally consistent: only an outside anchor can tell"
    verdict = verify_bundle(rewritten, kept)
    assert verdict.code == "trusted-checkpoint" and "rewritten" in verdict.problem  # type: ignore[operator]


async def _rewrite_and_resign(pool: asyncpg.Pool, log_id: str, seq: int) -> None:
    from gateway.audit.checkpoints import CheckpointSigner
    from gateway.audit.tiles import leaf_hashes

    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
        await conn.execute("ALTER TABLE audit_checkpoints DISABLE TRIGGER audit_checkpoints_no_update")
        # The hash tiles are rebuilt from the rewritten events, as a forger would.
        await conn.execute("ALTER TABLE audit_tiles DISABLE TRIGGER audit_tiles_grow_only")
        await conn.execute("DELETE FROM audit_tiles WHERE log_id = $1", log_id)
        await conn.execute("UPDATE audit_logs SET tiled_size = 0 WHERE log_id = $1", log_id)
        entry = orjson.loads(await conn.fetchval("SELECT entry FROM audit_events WHERE log_id = $1 AND seq = $2",
                                                 log_id, seq))
        entry["delivery"]["records"] = 0
        await conn.execute("UPDATE audit_events SET entry = $3 WHERE log_id = $1 AND seq = $2", log_id, seq,
                           orjson.dumps(entry, option=orjson.OPT_SORT_KEYS))
        sizes = [r["tree_size"] for r in await conn.fetch(
            "DELETE FROM audit_checkpoints WHERE log_id = $1 RETURNING tree_size", log_id)]
        leaves = await leaf_hashes(conn, log_id, max(sizes))
        tree = MerkleTree([leaves[i:i + 32] for i in range(0, len(leaves), 32)])
        for size in sorted(sizes):
            await CheckpointSigner(MASTER).sign(conn, log_id, size, tree.root(size))


async def test_a_checkpoint_signed_with_a_rotated_out_key_is_caught(dsn: str, tmp_path: Path) -> None:
    """Someone holding the old key after a rotation signs a checkpoint: it is outside the key's validity."""
    runtime = await audited_runtime(dsn, tmp_path)
    vendor = uuid.uuid4()
    try:
        for _ in range(4):
            await runtime.writer.commit(synthetic(vendor))
        await runtime.writer.checkpoint()
        async with runtime.pool.acquire() as conn:
            old = await signing_keys.current(conn, MASTER)
        await keyring.rotate(runtime.writer, cli_actor(), MASTER)
        for _ in range(4):
            await runtime.writer.commit(synthetic(vendor))
        path = (await export(runtime, tmp_path / "rotated.zip", vendor)).path
    finally:
        await runtime.close()
    assert verify_bundle(path).ok, "checkpoints by the old key before the rotation still verify"
    files = read_bundle(path)

    def forge(files: dict[str, bytes]) -> None:
        rows = lines(files["checkpoints.jsonl"])
        line = orjson.loads(rows[-1])
        text = parse_note(line["note"]).unverified_text
        late = text.rsplit("signed-at ", 1)[0] + f"signed-at {datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}\n"
        line["note"] = signing_keys.note_signer(old).sign(late)
        rows[-1] = orjson.dumps(line) + b"\n"
        files["checkpoints.jsonl"] = b"".join(rows)

    verdict = verify_bundle(tampered(Case(dsn, path, files, None), tmp_path, forge))  # type: ignore[arg-type]
    assert verdict.code == "key-validity", verdict.line()


def test_the_report_counts_a_stream_once_as_its_last_event_says() -> None:
    def event(kind: str, records: int, size: int, stream: str) -> dict[str, object]:
        return {"at": "2026-06-01T00:00:00.000000Z", "kind": kind, "outcome": "allow", "member_id": "m",
                "delivery": {"records": records, "bytes": size}, "detail": {"authorised_by": stream}}

    summary = report.Summary("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z")
    # A stream that progressed twice and ended, and one whose process died after one progress event.
    for kind, records, size, stream in [("member:records:stream-progress", 20_000, 4_000_000, "a"),
                                        ("member:records:stream-progress", 40_000, 8_000_000, "a"),
                                        ("member:records:stream-progress", 20_000, 4_100_000, "b"),
                                        ("member:records:stream-end", 45_000, 9_000_000, "a")]:
        summary.add(event(kind, records, size, stream))
    assert (summary.records, summary.bytes) == (65_000, 13_100_000)
    assert summary.members["m"].records == 65_000


def test_the_report_lists_a_termination_whose_attestation_is_outstanding() -> None:
    termination, licence, member = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
    summary = report.Summary("2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z")
    summary.add({"at": "2026-06-01T01:00:00.000000Z", "kind": "vendor:licence:terminate", "outcome": "change",
                 "member_id": member, "licence_id": licence, "dataset_id": None,
                 "detail": {"termination_id": termination, "grounds": "breach", "attestation_due": "2026-07-01"}})
    # A refused attestation names nothing.
    summary.add({"at": "2026-06-02T00:00:00.000000Z", "kind": "member:deletion:attest", "outcome": "deny",
                 "member_id": member, "licence_id": licence, "detail": {"termination_id": termination}})
    manifest = {"report": report.GENERATOR, "scope": {}, "logs": []}
    figures = report.figures(summary, manifest)
    assert figures["terminations"] == [{
        "termination_id": termination, "licence_id": licence, "member_id": member, "dataset_id": None,
        "terminated_at": "2026-06-01T01:00:00.000000Z", "grounds": "breach", "attestation_due": "2026-07-01",
        "attested_at": None}]
    page = report.render(figures, manifest)
    assert "attestations outstanding: <b>1</b>" in page and "未提出 / outstanding" in page
    assert "2026-06-01 10:00:00 JST" in page  # the termination's time, in Japan first
    # Format 2's figures have no terminations, whatever the events say.
    assert "terminations" not in report.figures(summary, {"report": report.GENERATOR_V2})
