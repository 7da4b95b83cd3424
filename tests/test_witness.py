"""Witnesses (schemas/audit-format.md §8): the tlog-witness of gateway/witness.py, the gateway's pusher
(gateway/audit/witnesses.py), cosignatures in bundles and `verify --witness ... --quorum K`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import witness_app
from gateway.audit.format import AUDIT_KEY_NAME
from gateway.audit.verify import verify_bundle
from gateway.audit.witnesses import WitnessPusher
from gateway.witness import REFUSED_FILE, SIZE_CONTENT_TYPE, Witness, WitnessedLogs, WitnessError, origin_hash
from keys.cosignatures import CosignatureVerifier, Cosigner, cosignatures, message
from keys.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from keys.notes import (
    NoteError,
    NoteSigner,
    NoteVerifier,
    format_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
)
from keys.signing import SigningKey
from tests.audit.support import (
    audited_runtime,
    edit_jsonl,
    export,
    lines,
    read_bundle,
    scenario,
    write_bundle,
)
from tests.conftest import client_for
from tests.processes import free_port

ORIGIN = "lpd-gateway/test/20260101T000000Z/abcdef"


def body(old: int, proof: list[bytes], note: str) -> bytes:
    head = "".join(f"{line}\n" for line in [f"old {old}", *(base64.b64encode(n).decode() for n in proof)])
    return (head + "\n" + note).encode()


class Log:
    """A log as the gateway signs it: a Merkle tree and checkpoints under an audit-like key."""

    def __init__(self, signer: NoteSigner, origin: str = ORIGIN, entries: int = 0) -> None:
        self.signer, self.origin, self.tree = signer, origin, MerkleTree()
        self.grow(entries)

    def grow(self, n: int, salt: bytes = b"") -> None:
        for _ in range(n):
            self.tree.append(leaf_hash(salt + b"entry %d" % self.tree.size))

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        text = format_checkpoint(self.origin, size, self.tree.root(size), ["signed-at 2026-01-01T00:00:00.000000Z"])
        return self.signer.sign(text)


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner(AUDIT_KEY_NAME, SigningKey.generate())


@pytest.fixture
def witness(tmp_path: Path, log_signer: NoteSigner) -> Iterator[Witness]:
    opened = Witness.open(tmp_path / "w", [WitnessedLogs("lpd-gateway/", (log_signer.verifier_key(),))],
                          name="witness.test/a")
    yield opened
    opened.close()


# -- tlog-cosignature/v1 ----------------------------------------------------------------------------

def test_a_cosignature_is_the_timestamp_and_signature_over_the_v1_message() -> None:
    key = SigningKey.generate()
    cosigner = Cosigner("witness.test/a", key)
    text = "lpd-gateway/x\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"
    line = cosigner.cosign(text, 1_700_000_000)
    # Key ID: SHA-256(name || 0x0A || 0x04 || public key)[:4], as tlog-cosignature defines it.
    key_id = hashlib.sha256(b"witness.test/a\n\x04" + key.public_bytes()).digest()[:4]
    assert cosigner.vkey() == (f"witness.test/a+{key_id.hex()}+"
                               + base64.b64encode(b"\x04" + key.public_bytes()).decode())
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == key_id and struct.unpack(">Q", raw[4:12])[0] == 1_700_000_000 and len(raw) == 76
    assert message(text, 1_700_000_000) == b"cosignature/v1\ntime 1700000000\n" + text.encode()
    key.private.public_key().verify(raw[12:], message(text, 1_700_000_000))  # raises if not
    verifier = CosignatureVerifier.from_vkey(cosigner.vkey())
    assert cosignatures(text + "\n" + line, [verifier]) == {cosigner.vkey(): 1_700_000_000}
    # A cosignature is no signature of the plain note: type 0x04 gives it another key ID.
    assert NoteSigner("witness.test/a", key).key_hash != cosigner.key_hash
    with pytest.raises(NoteError, match="cosignature/v1"):
        CosignatureVerifier.from_vkey(NoteSigner("witness.test/a", key).verifier_key())


# -- the witness ------------------------------------------------------------------------------------

def test_the_witness_cosigns_a_consistent_log_and_refuses_what_the_spec_says(
        witness: Witness, log_signer: NoteSigner, tmp_path: Path) -> None:
    log = Log(log_signer, entries=5)
    first = log.checkpoint()
    answer = witness.add_checkpoint(body(0, [], first))
    assert answer.status == 200, answer.body
    verifier = CosignatureVerifier.from_vkey(witness.vkey())
    assert verifier.vkey in cosignatures(first + answer.body, [verifier])

    log.grow(7)
    second = log.checkpoint()
    proof = log.tree.consistency_proof(5, 12)
    # A stale old size: 409 with the witness's size as text/x.tlog.size.
    stale = witness.add_checkpoint(body(0, [], second))
    assert (stale.status, stale.body, stale.content_type) == (409, "5\n", SIZE_CONTENT_TYPE)
    assert witness.add_checkpoint(body(5, proof, second)).status == 200
    assert witness.state[ORIGIN]["size"] == 12

    log.grow(4)
    third = log.checkpoint()
    good = log.tree.consistency_proof(12, 16)
    # old > size: 400; a malformed body: 400; too many proof lines: 400.
    assert witness.add_checkpoint(body(17, good, third)).status == 400
    assert witness.add_checkpoint(b"old 12\nnot base64!\n\n" + third.encode()).status == 400
    assert witness.add_checkpoint(b"old 012\n\n" + third.encode()).status == 400
    assert witness.add_checkpoint(body(12, [bytes(32)] * 64, third)).status == 400
    assert witness.add_checkpoint(body(12, good, "no note\n")).status == 400
    # An unknown origin: 404 (even when signed by the trusted key).
    other = Log(log_signer, origin="example.com/other-log", entries=3)
    assert witness.add_checkpoint(body(0, [], other.checkpoint())).status == 404
    # Not signed by the trusted key (only by another), or a trusted key's signature broken: 403.
    stranger = Log(NoteSigner(AUDIT_KEY_NAME, SigningKey.generate()), entries=16)
    assert witness.add_checkpoint(body(12, good, stranger.checkpoint())).status == 403
    broken = third.replace("\n16\n", "\n17\n")
    assert witness.add_checkpoint(body(12, good, broken)).status == 403
    # A proof that does not verify: 422; a proof from 0: 422 (checked after the size: 409 first).
    assert witness.add_checkpoint(body(12, [bytes(32)] * len(good), third)).status == 422
    assert witness.add_checkpoint(body(12, good[:-1], third)).status == 422
    # Nothing of that moved the witness.
    assert witness.state[ORIGIN]["size"] == 12
    assert witness.add_checkpoint(body(12, good, third)).status == 200
    # The same checkpoint again is cosigned again (old = size, same root, no proof).
    assert witness.add_checkpoint(body(16, [], third)).status == 200


def test_a_size_zero_checkpoint_needs_the_empty_root_and_a_proof_from_zero_is_empty(
        witness: Witness, log_signer: NoteSigner) -> None:
    text = format_checkpoint(ORIGIN, 0, bytes(32))
    assert witness.add_checkpoint(body(0, [], log_signer.sign(text))).status == 422
    assert witness.add_checkpoint(body(0, [], log_signer.sign(format_checkpoint(ORIGIN, 0, EMPTY_ROOT)))).status == 200
    log = Log(log_signer, entries=4)
    assert witness.add_checkpoint(body(0, [bytes(32)], log.checkpoint())).status == 422
    assert witness.add_checkpoint(body(0, [], log.checkpoint())).status == 200


def test_a_fork_is_refused_and_provable(witness: Witness, log_signer: NoteSigner) -> None:
    """Two checkpoints of one size with different roots, both signed by the log's key: the witness cosigns
    the first, refuses the second with 422 and keeps it; the pair is the proof of the fork."""
    log = Log(log_signer, entries=8)
    genuine = log.checkpoint()
    assert witness.add_checkpoint(body(0, [], genuine)).status == 200
    fork = Log(log_signer, entries=0)
    fork.grow(8, salt=b"rewritten ")
    forked = fork.checkpoint()
    refused = witness.add_checkpoint(body(8, [], forked))
    assert refused.status == 422 and "fork" in refused.body
    # A larger forked tree whose "proof" cannot link it to the cosigned root: 422 as well.
    fork.grow(8, salt=b"rewritten ")
    assert witness.add_checkpoint(body(8, fork.tree.consistency_proof(8, 16), fork.checkpoint())).status == 422
    kept = [orjson.loads(line) for line in (witness.state_dir / REFUSED_FILE).read_bytes().splitlines()]
    assert kept[0]["note"] == forked
    # The proof: both notes verify under the log's key, have one size and differ in root.
    verifier = NoteVerifier.from_vkey(log_signer.verifier_key())
    cosigned = witness.state[ORIGIN]["note"]
    a, b = (parse_checkpoint(open_note(note, [verifier]).text) for note in (cosigned, kept[0]["note"]))
    assert a.size == b.size == 8 and a.root_hash != b.root_hash
    assert kept[0]["cosigned_note"] == cosigned


async def test_the_state_and_key_survive_a_restart(tmp_path: Path, log_signer: NoteSigner) -> None:
    logs = [WitnessedLogs("lpd-gateway/", (log_signer.verifier_key(),))]
    first = Witness.open(tmp_path / "w", logs, name="witness.test/a")
    vkey = first.vkey()
    log = Log(log_signer, entries=3)
    assert first.add_checkpoint(body(0, [], log.checkpoint())).status == 200
    with pytest.raises(WitnessError, match="another witness"):
        Witness.open(tmp_path / "w", logs)  # one process per state folder
    first.close()
    assert stat.S_IMODE(os.stat(tmp_path / "w" / "witness.key").st_mode) == 0o600
    again = Witness.open(tmp_path / "w", logs)
    try:
        assert again.vkey() == vkey
        assert again.add_checkpoint(body(0, [], log.checkpoint())).content_type == SIZE_CONTENT_TYPE
        # The monitoring view: the latest cosigned checkpoint with the log's and the witness's signatures.
        transport = httpx.ASGITransport(app=witness_app(again))
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
            served = await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
            assert (await client.get(f"/{'0' * 64}/checkpoint")).status_code == 404
            stale = await client.post("/add-checkpoint", content=body(0, [], log.checkpoint()))
        assert stale.status_code == 409 and stale.headers["content-type"] == SIZE_CONTENT_TYPE and stale.text == "3\n"
        assert served.status_code == 200 and len(parse_note(served.text).signatures) == 2
    finally:
        again.close()
    with pytest.raises(WitnessError, match="named"):
        Witness.open(tmp_path / "w", logs, name="witness.test/other")


# -- the gateway's pusher, bundles and the verifier ---------------------------------------------------

def _witness_for(runtime_vkey: str, folder: Path, name: str) -> Witness:
    return Witness.open(folder, [WitnessedLogs("lpd-gateway/", (runtime_vkey,))], name=name)


async def _audit_vkey(runtime: Any) -> str:
    async with runtime.pool.acquire() as conn:
        from gateway import signing_keys

        keys = await signing_keys.public_keys(conn, "audit")
    return keys[0].vkey()


def _strip_cosignatures(files: dict[str, bytes], keep: str | None = None) -> None:
    """Remove every witness line (but those of the witness named `keep`) from the checkpoint notes."""
    def change(line: dict[str, Any]) -> None:
        parsed = parse_note(line["note"])
        kept = [s for s in line["note"].split("\n\n")[-1].splitlines(keepends=True)
                if s.startswith(f"\u2014 {AUDIT_KEY_NAME} ") or (keep and s.startswith(f"\u2014 {keep} "))]
        line["note"] = parsed.unverified_text + "\n" + "".join(kept)

    for index in range(len(lines(files["checkpoints.jsonl"]))):
        files["checkpoints.jsonl"] = edit_jsonl(files["checkpoints.jsonl"], index, change)


async def test_two_witnesses_cosign_the_gateway_log_and_verify_needs_the_quorum(
        dsn: str, tmp_path: Path) -> None:
    runtime = await audited_runtime(dsn, tmp_path, "witnessed", GATEWAY_CHECKPOINT_EVENTS="5")
    vkey = await _audit_vkey(runtime)
    w1, w2 = _witness_for(vkey, tmp_path / "w1", "witness.test/one"), _witness_for(vkey, tmp_path / "w2",
                                                                                   "witness.test/two")
    mounts = {"http://w1.test": httpx.ASGITransport(app=witness_app(w1)),
              "http://w2.test": httpx.ASGITransport(app=witness_app(w2))}
    client = httpx.AsyncClient(mounts=mounts)
    pusher = WitnessPusher(runtime.pool, [("http://w1.test", w1.vkey()), ("http://w2.test", w2.vkey())],
                           client=client)
    try:
        async with client_for(runtime) as api:
            found = await scenario(runtime, api)
            size = await runtime.writer.checkpoint()
            # Witness 2 has seen an earlier checkpoint that the gateway has no record of it cosigning
            # (its answer was lost): the pusher's old size 0 gets 409, and it retries from the witness's size.
            async with runtime.pool.acquire() as conn:
                early = await conn.fetchrow("SELECT tree_size, note FROM audit_checkpoints WHERE log_id = $1 "
                                            "ORDER BY tree_size LIMIT 1", runtime.writer.log_id)
            assert w2.add_checkpoint(body(0, [], early["note"])).status == 200
            await pusher.push_all()
            async with runtime.pool.acquire() as conn:
                rows = await conn.fetch("SELECT witness_vkey, tree_size FROM audit_cosignatures WHERE log_id = $1",
                                        runtime.writer.log_id)
                with pytest.raises(Exception, match="append-only"):
                    await conn.execute("DELETE FROM audit_cosignatures")
            assert {(r["witness_vkey"], r["tree_size"]) for r in rows} == {(w1.vkey(), size), (w2.vkey(), size)}
            assert w1.state[f"lpd-gateway/{runtime.writer.log_id}"]["size"] == size == \
                w2.state[f"lpd-gateway/{runtime.writer.log_id}"]["size"]
            # More events and a checkpoint: pushed with a consistency proof from the acknowledged size.
            await found.licensed.vendor.publish(found.licensed.dataset["id"], "north,2026-05-02,8,n\n")
            later = await runtime.writer.checkpoint()
            await pusher.push_all()
            assert later > size and w1.state[f"lpd-gateway/{runtime.writer.log_id}"]["size"] == later
        bundle = tmp_path / "bundle.zip"
        await export(runtime, bundle, found.vendor_id)
        await pusher.push_all()  # nothing new since: the bundle was exported after the last push
    finally:
        await pusher.close()
        await client.aclose()
        await runtime.close()
        w1.close()
        w2.close()
    files = read_bundle(bundle)
    newest = orjson.loads(lines(files["checkpoints.jsonl"])[-1])
    assert len(parse_note(newest["note"]).signatures) == 3  # the audit key's and two cosignatures
    keys = [w1.vkey(), w2.vkey()]
    verdict = verify_bundle(bundle, witnesses=keys, quorum=2)
    assert verdict.ok, verdict.line()
    assert verify_bundle(bundle).ok  # a verifier that knows no witness ignores the cosignatures

    # Missing cosignatures: none at all, or only one witness's, fail a quorum of 2 (one of 1 passes).
    stripped = dict(files)
    _strip_cosignatures(stripped)
    none = write_bundle(tmp_path / "none.zip", stripped)
    assert verify_bundle(none).ok
    assert verify_bundle(none, witnesses=keys, quorum=2).code == "witness"
    one = dict(files)
    _strip_cosignatures(one, keep="witness.test/one")
    partial = write_bundle(tmp_path / "one.zip", one)
    assert verify_bundle(partial, witnesses=keys, quorum=2).code == "witness"
    assert verify_bundle(partial, witnesses=keys, quorum=1).ok
    assert verify_bundle(partial, witnesses=[keys[1]]).code == "witness"

    # A forged cosignature (one signature byte flipped): refused outright, whatever the quorum.
    def forge(line: dict[str, Any]) -> None:
        head, _, block = line["note"].rpartition("\n\n")
        rows = block.splitlines(keepends=True)
        for i, row in enumerate(rows):
            if row.startswith("\u2014 witness.test/two "):
                raw = bytearray(base64.b64decode(row.split(" ")[2]))
                raw[-1] ^= 1
                rows[i] = f"\u2014 witness.test/two {base64.b64encode(bytes(raw)).decode()}\n"
        line["note"] = head + "\n\n" + "".join(rows)

    forged = dict(files)
    forged["checkpoints.jsonl"] = edit_jsonl(files["checkpoints.jsonl"], len(lines(files["checkpoints.jsonl"])) - 1,
                                             forge)
    forged_bundle = write_bundle(tmp_path / "forged.zip", forged)
    verdict = verify_bundle(forged_bundle, witnesses=keys, quorum=1)
    assert verdict.code == "witness" and "does not verify" in verdict.problem
    # Cosignatures by a key that is not among the given witnesses count for nothing.
    stranger = Cosigner("witness.test/one", SigningKey.generate()).vkey()
    assert verify_bundle(bundle, witnesses=[stranger, keys[1]], quorum=2).code == "witness"
    # The policy itself is checked.
    assert verify_bundle(bundle, witnesses=keys, quorum=3).code == "witness"
    assert verify_bundle(bundle, quorum=1).code == "witness"
    assert verify_bundle(bundle, witnesses=["not a key"]).code == "witness"


async def test_a_forked_gateway_log_is_refused_by_the_witness_and_provable(dsn: str, tmp_path: Path) -> None:
    """A checkpoint of the gateway log's size with another root, signed with the audit key (what a
    rewritten log would need): the witness that cosigned the real one answers 422 and keeps the fork."""
    runtime = await audited_runtime(dsn, tmp_path, "forked")
    vkey = await _audit_vkey(runtime)
    w1 = _witness_for(vkey, tmp_path / "w1", "witness.test/one")
    client = httpx.AsyncClient(mounts={"http://w1.test": httpx.ASGITransport(app=witness_app(w1))})
    pusher = WitnessPusher(runtime.pool, [("http://w1.test", w1.vkey())], client=client)
    try:
        async with client_for(runtime) as api:
            await scenario(runtime, api)
        size = await runtime.writer.checkpoint()
        await pusher.push_all()
        async with runtime.pool.acquire() as conn:
            real = await conn.fetchval("SELECT note FROM audit_checkpoints WHERE log_id = $1 AND tree_size = $2",
                                       runtime.writer.log_id, size)
            # Sign a forked checkpoint of the same size with the audit key, as the signer would.
            assert runtime.writer.signer is not None
            from gateway.signing_keys import note_signer, open_key

            row = await conn.fetchrow("SELECT key_id, sealed_private FROM signing_keys WHERE purpose = 'audit'")
            key = open_key(runtime.master, row["key_id"], row["sealed_private"])
        text = parse_note(real).unverified_text
        checkpoint = parse_checkpoint(text)
        forked = note_signer(key).sign(format_checkpoint(checkpoint.origin, size, hashlib.sha256(b"fork").digest(),
                                                         checkpoint.extensions))
        answer = w1.add_checkpoint(body(size, [], forked))
        assert answer.status == 422
        kept = orjson.loads((w1.state_dir / REFUSED_FILE).read_bytes().splitlines()[-1])
        verifier = NoteVerifier.from_vkey(vkey)
        a, b = (parse_checkpoint(open_note(n, [verifier]).text) for n in (kept["cosigned_note"], kept["note"]))
        assert a.size == b.size == size and a.root_hash != b.root_hash
    finally:
        await pusher.close()
        await client.aclose()
        await runtime.close()
        w1.close()


# -- real processes: `gateway witness serve` and GATEWAY_WITNESSES ------------------------------------

class WitnessProcess:
    def __init__(self, folder: Path, name: str, log_vkey: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "witness", "serve", "--state", str(folder), "--name", name,
                 "--log-key", log_vkey, "--port", str(self.port)], env=env, stdout=out, stderr=subprocess.STDOUT)

    def vkey(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.log.read_text())
            for line in self.log.read_text().splitlines():
                if ": vkey " in line:
                    return line.split(": vkey ")[1]
            time.sleep(0.05)
        raise AssertionError(f"no vkey printed: {self.log.read_text()}")

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    await client.get(f"{self.url}/{'0' * 64}/checkpoint", timeout=1)
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def test_two_witness_processes_cosign_what_a_serving_gateway_pushes(dsn: str, tmp_path: Path) -> None:
    probe = await audited_runtime(dsn, tmp_path / "probe", "probe")
    vkey = await _audit_vkey(probe)
    await probe.close()
    witnesses = [WitnessProcess(tmp_path / f"w{i}", f"witness.test/p{i}", vkey) for i in (1, 2)]
    try:
        keys = [w.vkey() for w in witnesses]
        for w in witnesses:
            await w.ready()
        setting = ",".join(f"{w.url}={k}" for w, k in zip(witnesses, keys, strict=True))
        runtime = await audited_runtime(dsn, tmp_path, "pushing", GATEWAY_WITNESSES=setting)
        try:
            async with client_for(runtime) as api:
                await scenario(runtime, api)
            size = await runtime.writer.checkpoint()  # wakes the pusher
            for _ in range(100):
                async with runtime.pool.acquire() as conn:
                    done = await conn.fetchval("SELECT count(*) FROM audit_cosignatures WHERE log_id = $1 AND "
                                               "tree_size = $2", runtime.writer.log_id, size)
                if done == 2:
                    break
                await asyncio.sleep(0.1)
            assert done == 2
        finally:
            await runtime.close()
        async with httpx.AsyncClient() as client:
            origin = f"lpd-gateway/{runtime.writer.log_id}"
            for w, k in zip(witnesses, keys, strict=True):
                served = await client.get(f"{w.url}/{origin_hash(origin)}/checkpoint")
                assert served.status_code == 200
                # The final checkpoint, signed at close, was pushed too.
                assert parse_checkpoint(parse_note(served.text).unverified_text).size == runtime.writer.size
                assert k in cosignatures(served.text, [CosignatureVerifier.from_vkey(k)])
    finally:
        for w in witnesses:
            w.stop()
