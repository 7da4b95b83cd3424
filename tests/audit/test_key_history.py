"""The signed key history (schemas/audit-format.md §4.3): audit keys are made, rotated and retired by
logged events, a bundle carries them with their proofs, and the verifier takes each key's validity from
them, never from keys.json's unsigned fields."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import keyring, signing_keys
from gateway.actors import cli_actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.format import PublicKey
from gateway.audit.verify import verify_bundle
from keys.notes import parse_note
from keys.sealing import MasterKey
from keys.signing import SigningKey
from tests.audit.support import (
    audited_runtime,
    export,
    lines,
    read_bundle,
    sign_manifest,
    synthetic,
    write_bundle,
)
from tests.conftest import TEST_MASTER_KEY

MASTER = MasterKey.from_text(TEST_MASTER_KEY)


@dataclass
class History:
    bundle: Path
    files: dict[str, bytes]
    first: SigningKey   # made by the first writer, rotated out, then retired
    second: SigningKey  # rotated out
    third: PublicKey    # current at export


@pytest.fixture(scope="module")
async def history(databases: Any, migrated_template: str, tmp_path_factory: pytest.TempPathFactory,
                  ) -> AsyncIterator[History]:
    """A log of vendor events across two rotations and a retirement, made by another process (the
    operator's), so that the key events live in two logs."""
    name = await databases.create(migrated_template)
    home = tmp_path_factory.mktemp("key-history")
    dsn = databases.dsn(name)
    runtime = await audited_runtime(dsn, home)
    vendor = uuid.uuid4()
    try:
        async with runtime.pool.acquire() as conn:
            first = await signing_keys.current(conn, MASTER)
        operator = await audited_runtime(dsn, home / "operator", instance="operator")
        try:
            for _ in range(3):
                await runtime.writer.commit(synthetic(vendor))
            await runtime.writer.checkpoint()
            await keyring.rotate(operator.writer, cli_actor(), MASTER)
            async with runtime.pool.acquire() as conn:
                second = await signing_keys.current(conn, MASTER)
            for _ in range(3):
                await runtime.writer.commit(synthetic(vendor))
            await runtime.writer.checkpoint()
            rotated = await keyring.rotate(operator.writer, cli_actor(), MASTER)
            await keyring.retire(operator.writer, cli_actor(), first.key_id)
            for _ in range(3):
                await runtime.writer.commit(synthetic(vendor))
        finally:
            await operator.close()  # its final checkpoint covers the operator's key events
        result = await export(runtime, home / "bundle.zip", vendor)
        assert not result.warnings, result.warnings
        third = await signing_keys.find(runtime.pool, rotated["key_id"])
        assert third is not None
        yield History(home / "bundle.zip", read_bundle(home / "bundle.zip"), first, second, third)
    finally:
        await runtime.close()
        await databases.drop(name)


def _key_events(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(orjson.loads(line)["entry"]) for line in lines(files["key-events.jsonl"])]


def _refused(files: dict[str, bytes], tmp_path: Path, code: str) -> str:
    verdict = verify_bundle(write_bundle(tmp_path / "tampered.zip", files))
    assert not verdict.ok and verdict.code == code, verdict.line()
    return verdict.problem or ""


def _keys(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def edit(files: dict[str, bytes]) -> dict[str, bytes]:
        keys = orjson.loads(files["keys.json"])
        change(keys["keys"])
        return dict(files, **{"keys.json": orjson.dumps(keys, option=orjson.OPT_INDENT_2) + b"\n"})
    return edit


def _key(keys: list[dict[str, Any]], key_id: str) -> dict[str, Any]:
    return next(k for k in keys if k["key_id"] == key_id)


def test_a_genuine_bundle_after_rotations_and_a_retirement_verifies(history: History) -> None:
    verdict = verify_bundle(history.bundle)
    assert verdict.ok, verdict.line()
    assert "key validity from 4 signed key events" in verdict.notes
    # Checkpoints by all three keys, each valid when it signed by the history.
    assert set(verdict.keys) == {history.first.key_id, history.second.key_id, history.third.key_id}
    events = _key_events(history.files)
    assert [e["kind"] for e in events if e["log"].startswith("test/")] == ["operator:keyring:create"]
    assert sorted(e["kind"] for e in events if e["log"].startswith("operator/")) == [
        "operator:keyring:retire", "operator:keyring:rotate", "operator:keyring:rotate"]
    create = next(e for e in events if e["kind"] == "operator:keyring:create")
    listed = {k["key_id"]: k for k in orjson.loads(history.files["keys.json"])["keys"]}
    first = listed[history.first.key_id]
    assert create["detail"] == {"purpose": "audit", "key_id": first["key_id"], "public_key": first["public_key"],
                                "vkey": first["vkey"], "not_before": first["not_before"]}
    retire = next(e for e in events if e["kind"] == "operator:keyring:retire")
    assert retire["detail"] == {"purpose": "audit", "key_id": first["key_id"], "retired_at": first["retired_at"]}
    rotations = [e["detail"] for e in events if e["kind"] == "operator:keyring:rotate"]
    assert {r["replaces"]["key_id"]: r["key_id"] for r in rotations} == {
        history.first.key_id: history.second.key_id, history.second.key_id: history.third.key_id}
    assert all(r["replaces"]["not_after"] == r["not_before"] == listed[r["key_id"]]["not_before"]
               == listed[r["replaces"]["key_id"]]["not_after"] for r in rotations)
    # Pinned keys: the history is still read from the bundle's signed events.
    assert verify_bundle(history.bundle, trusted_keys=[k["vkey"] for k in listed.values()]).ok


@pytest.mark.parametrize("field, value", [
    ("not_after", None), ("not_after", "2999-01-01T00:00:00.000000Z"), ("retired_at", None),
    ("retired_at", "2999-01-01T00:00:00.000000Z"), ("not_before", "2000-01-01T00:00:00.000000Z"),
])
def test_a_validity_edited_in_keys_json_is_refused(history: History, tmp_path: Path, field: str,
                                                   value: str | None) -> None:
    """Every unsigned validity field of the rotated-out, retired key, moved either way; the manifest
    re-signed (by the current key, as someone holding it would)."""
    files = _keys(lambda keys: _key(keys, history.first.key_id).update({field: value}))(history.files)
    assert "otherwise than its signed history" in _refused(files, tmp_path, "key-history")


def test_a_key_edited_back_to_valid_in_every_field_is_refused(history: History, tmp_path: Path) -> None:
    def revive(keys: list[dict[str, Any]]) -> None:
        _key(keys, history.first.key_id).update(not_after=None, retired_at=None)
    _refused(_keys(revive)(history.files), tmp_path, "key-history")


@pytest.mark.parametrize("kind", ["operator:keyring:create", "operator:keyring:rotate", "operator:keyring:retire"])
def test_a_dropped_key_event_is_refused(history: History, tmp_path: Path, kind: str) -> None:
    rows = lines(history.files["key-events.jsonl"])
    kept = [row for row in rows if orjson.loads(orjson.loads(row)["entry"])["kind"] != kind or
            row is not next(r for r in rows if orjson.loads(orjson.loads(r)["entry"])["kind"] == kind)]
    assert len(kept) == len(rows) - 1
    files = dict(history.files, **{"key-events.jsonl": b"".join(kept)})
    _refused(files, tmp_path, "key-history")
    # Without the key, the manifest cannot be signed again over the changed file.
    verdict = verify_bundle(write_bundle(tmp_path / "unsigned.zip", files, resign=False))
    assert verdict.code == "manifest-signature", verdict.line()


def test_a_key_event_altered_is_refused(history: History, tmp_path: Path) -> None:
    rows = lines(history.files["key-events.jsonl"])
    line = orjson.loads(rows[-1])
    entry = orjson.loads(line["entry"])
    if entry["kind"] == "operator:keyring:retire":
        entry["detail"]["retired_at"] = "2999-01-01T00:00:00.000000Z"
    else:
        entry["detail"]["not_before"] = entry["detail"]["not_before"].replace("20", "19", 1)
    line["entry"] = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode()
    rows[-1] = orjson.dumps(line) + b"\n"
    _refused(dict(history.files, **{"key-events.jsonl": b"".join(rows)}), tmp_path, "key-history")


def _signed_by_retired_key(history: History) -> dict[str, bytes]:
    """The last checkpoint of the vendor's log signed again, now, by the retired first key."""
    files = dict(history.files)
    rows = lines(files["checkpoints.jsonl"])
    line = orjson.loads(rows[-1])
    text = parse_note(line["note"]).unverified_text
    late = text.rsplit("signed-at ", 1)[0] + f"signed-at {datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}\n"
    line["note"] = signing_keys.note_signer(history.first).sign(late)
    rows[-1] = orjson.dumps(line) + b"\n"
    files["checkpoints.jsonl"] = b"".join(rows)
    return files


def test_a_checkpoint_signed_by_a_retired_key_is_refused_even_with_keys_json_edited(history: History,
                                                                                  tmp_path: Path) -> None:
    files = _signed_by_retired_key(history)
    assert "was not valid" in _refused(files, tmp_path, "key-validity")
    # keys.json edited to make the retired key valid again: the signed history says otherwise.
    revived = _keys(lambda keys: _key(keys, history.first.key_id).update(not_after=None, retired_at=None))(files)
    _refused(revived, tmp_path, "key-history")
    # ... and with its rotation and retirement events left out too: the keys after it lose their creation.
    rows = [row for row in lines(files["key-events.jsonl"])
            if orjson.loads(orjson.loads(row)["entry"])["kind"] == "operator:keyring:create"]
    _refused(dict(revived, **{"key-events.jsonl": b"".join(rows)}), tmp_path, "key-history")


def test_a_manifest_signed_by_the_retired_key_is_refused(history: History, tmp_path: Path) -> None:
    files = dict(history.files)
    signer = signing_keys.note_signer(history.first)
    manifest = orjson.loads(files["manifest.json"])
    manifest["created_at"] = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
    files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    files["manifest.sig"] = sign_manifest(files["manifest.sig"], files["manifest.json"], signer)
    verdict = verify_bundle(write_bundle(tmp_path / "tampered.zip", files, resign=False))
    assert verdict.code == "manifest-signature" and "not valid" in (verdict.problem or ""), verdict.line()


async def test_the_first_writer_makes_the_key_with_its_event_and_others_do_not(dsn: str, tmp_path: Path) -> None:
    first = await audited_runtime(dsn, tmp_path / "a", instance="a")
    try:
        second = await audited_runtime(dsn, tmp_path / "b", instance="b")
        await second.close()
        rows = await first.pool.fetch("SELECT log_id, entry FROM audit_events WHERE kind = 'operator:keyring:create'")
        keys = await signing_keys.public_keys(first.pool)
    finally:
        await first.close()
    assert len(keys) == 1 and len(rows) == 1 and rows[0]["log_id"].startswith("a/")
    assert orjson.loads(rows[0]["entry"])["detail"]["key_id"] == keys[0].key_id


async def test_the_command_line_rotates_and_retires_the_audit_key_into_the_history(dsn: str, tmp_path: Path) -> None:
    """`gateway keys rotate --purpose audit` and `gateway keys retire` record the history's events."""
    from gateway import cli

    runtime = await audited_runtime(dsn, tmp_path)
    vendor = uuid.uuid4()

    async def command(*argv: str) -> Any:
        args = cli.build_parser().parse_args(list(argv))
        return await args.handler(runtime, args)

    try:
        old = (await signing_keys.public_keys(runtime.pool))[0]
        await runtime.writer.commit(synthetic(vendor))
        rotated = await command("keys", "rotate", "--purpose", "audit")
        assert rotated["replaces"]["key_id"] == old.key_id and rotated["vkey"].startswith("lpd-gateway-audit+")
        retired = await command("keys", "retire", old.key_id)
        assert retired["status"] == "retired"
        await runtime.writer.commit(synthetic(vendor))
        path = (await export(runtime, tmp_path / "bundle.zip", vendor)).path
    finally:
        await runtime.close()
    verdict = verify_bundle(path)
    assert verdict.ok and "key validity from 3 signed key events" in verdict.notes, verdict.line()
    kinds = [e["kind"] for e in _key_events(read_bundle(path))]
    assert kinds == ["operator:keyring:create", "operator:keyring:rotate", "operator:keyring:retire"]


async def test_keys_made_before_the_history_are_recorded_by_the_next_writer(dsn: str, tmp_path: Path) -> None:
    """A deployment upgraded with audit keys and a rotation (its event in the old form) but no history:
    the first writer to start records the keyring's rows as the history, and its bundles verify."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        old = await signing_keys.current(conn, MASTER)
        await signing_keys.rotate(conn, MASTER)
        await signing_keys.retire(conn, old.key_id)
    finally:
        await conn.close()
    runtime = await audited_runtime(dsn, tmp_path)
    vendor = uuid.uuid4()
    try:
        async with runtime.writer.change() as change:  # what `gateway keys rotate --purpose audit` logged before
            change.record(cli_actor().event(EventKind.KEYRING_ROTATE, Outcome.CHANGE,
                                            detail={"purpose": "audit", "key_id": old.key_id}))
        await runtime.writer.commit(synthetic(vendor))
        path = (await export(runtime, tmp_path / "bundle.zip", vendor)).path
        second = await audited_runtime(dsn, tmp_path / "second", instance="second")  # finds the history
        await second.close()
        recorded = await runtime.pool.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'operator:keyring:create'")
    finally:
        await runtime.close()
    verdict = verify_bundle(path)
    assert verdict.ok and "key validity from 3 signed key events" in verdict.notes, verdict.line()
    assert [e["kind"] for e in _key_events(read_bundle(path))] == [
        "operator:keyring:create", "operator:keyring:rotate", "operator:keyring:retire"]
    assert recorded == 1
