"""Helpers shared by the audit tests (tests/audit/, tests/test_cli_audit.py); no tests here."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway import signing_keys
from gateway.audit import evidence, report
from gateway.audit.checkpoints import CheckpointSigner
from gateway.audit.events import AuditEvent, EventKind, Outcome
from gateway.audit.format import MANIFEST_SIG, manifest_signature_text
from gateway.runtime import Runtime
from keys.notes import NoteSigner, parse_note
from tests.conftest import client_for, open_runtime
from tests.factories import Licensed, auth, licensed_member, wait_for_snapshot

PERIOD_START = datetime.now(UTC) - timedelta(days=1)
PERIOD_END = datetime.now(UTC) + timedelta(days=1)


async def audited_runtime(dsn: str, home: Path, instance: str = "test", **overrides: str) -> Runtime:
    """A serving Runtime (its writer signs checkpoints) under its own instance name."""
    return await open_runtime(dsn, home, GATEWAY_INSTANCE=instance, **overrides)


@dataclass
class Scenario:
    """A vendor with two members: deliveries (paged and streamed), terms acceptance, denials; the second
    member's licence terminated and its deletion attested."""

    licensed: Licensed
    other_member: dict[str, Any]
    other_key: str

    @property
    def vendor_id(self) -> uuid.UUID:
        return self.licensed.vendor.id

    @property
    def member_id(self) -> uuid.UUID:
        return uuid.UUID(self.licensed.member["id"])


async def scenario(runtime: Runtime, client: httpx.AsyncClient) -> Scenario:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    for _ in range(3):
        assert (await client.get(path, params={"limit": 10}, headers=licensed.headers)).status_code == 200
    assert (await client.get(path, headers=licensed.headers)).status_code == 200  # streamed export
    # A denial: a partition outside the licence.
    assert (await client.get(path, params={"partition": "east"}, headers=licensed.headers)).status_code == 403
    vendor = licensed.vendor
    other = await vendor.member("member-b")
    other_key = (await vendor.member_key(other["id"]))["api_key"]
    assert (await client.get(path, headers=auth(other_key))).status_code in (403, 404)
    # The other member's licence ends: a signed notice, and the member's deletion attestation.
    ended = await vendor.licence(other["id"], licensed.dataset["id"], ["north"])
    await wait_for_snapshot(runtime, lambda: uuid.UUID(ended["id"]) in runtime.snapshot.licences)
    await vendor.ok("POST", f"/v1/admin/licences/{ended['id']}/terminate",
                    json={"reason": "contract ended", "grounds": "contract_end"})
    attested = await client.post(f"/v1/licences/{ended['id']}/deletion-attestation", headers=auth(other_key), json={
        "deleted_at": "2026-01-05T10:00:00+09:00", "deleted": "every copy", "statement": "All copies were deleted.",
        "signatory": "Hanako Yamada, CISO"})
    assert attested.status_code == 201, attested.text
    await vendor.publish(licensed.dataset["id"], "north,2026-05-01,7,n\n")
    return Scenario(licensed, other, other_key)


# The audit keys that signed the tests' bundles, by signed-note key hash: write_bundle re-signs a
# tampered manifest with them, playing an attacker who holds the key, so that a test reaches the check
# behind the manifest's signature (tests/audit/test_bundle_v2.py tampers without the key).
_AUDIT_SIGNERS: dict[bytes, NoteSigner] = {}


async def export(runtime: Runtime, path: Path, vendor_id: uuid.UUID, **filters: Any) -> evidence.ExportResult:
    """Checkpoint what this runtime wrote, then export the vendor's events of the test period."""
    await runtime.writer.checkpoint()
    result = await evidence.export(runtime.pool, vendor_id, PERIOD_START, PERIOD_END, path=path,
                                   signer=CheckpointSigner(runtime.master), **filters)
    async with runtime.pool.acquire() as conn:
        signer = signing_keys.note_signer(await signing_keys.current(conn, runtime.master))
    _AUDIT_SIGNERS[signer.key_hash] = signer
    return result


def synthetic(vendor_id: uuid.UUID, member_id: uuid.UUID | None = None, **fields: Any) -> AuditEvent:
    return AuditEvent(kind=EventKind.RECORDS_DELIVER, outcome=Outcome.ALLOW, vendor_id=vendor_id,
                      member_id=member_id, actor="member", credential_id=uuid.uuid4(), records=10, bytes=100,
                      **fields)


# -- taking bundles apart ----------------------------------------------------------------------------

def read_bundle(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def write_bundle(path: Path, files: dict[str, bytes], *, rehash: bool = True, resign: bool = True) -> Path:
    """Write `files` as a bundle; with `rehash` the manifest is recomputed, as a careful attacker would,
    and (`resign`) manifest.sig signed again over it by the key that signed it, if a test exported it."""
    if rehash:
        import hashlib

        manifest = orjson.loads(files["manifest.json"])
        for name in manifest["files"]:
            manifest["files"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "bytes": len(files[name])}
        files = {**files, "manifest.json": orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"}
        if resign and MANIFEST_SIG in files:
            files[MANIFEST_SIG] = sign_manifest(files[MANIFEST_SIG], files["manifest.json"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def sign_manifest(signature: bytes, manifest_json: bytes, signer: NoteSigner | None = None,
                  bundle_format: str | None = None) -> bytes:
    """manifest.sig over `manifest_json` (its created_at as the export time, `bundle_format` or else its
    format as the format), by `signer` or else by the audit key that made `signature`; `signature`
    unchanged when no such key is known."""
    import hashlib

    if signer is None:
        signer = next((_AUDIT_SIGNERS[s.key_hash] for s in parse_note(signature.decode()).signatures
                       if s.key_hash in _AUDIT_SIGNERS), None)
        if signer is None:
            return signature
    manifest = orjson.loads(manifest_json)
    text = manifest_signature_text(hashlib.sha256(manifest_json).hexdigest(), manifest["created_at"],
                                   bundle_format or manifest["format"])
    return signer.sign(text).encode()


def restate_report(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """report.json (formats 2 and 3) and report.html recomputed from the bundle's events, as a careful attacker would."""
    summary = report.Summary(manifest["scope"]["from"], manifest["scope"]["to"])
    for line in lines(files["events.jsonl"]):
        summary.add(orjson.loads(line))
    figures = report.figures(summary, manifest)
    if "report.json" in files:
        files["report.json"] = report.figures_json(figures)
    files["report.html"] = report.render(figures, manifest).encode()


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def edit_jsonl(data: bytes, index: int, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Parse line `index`, change it, and put it back (not canonical any more: its hash changes anyway)."""
    rows = lines(data)
    value = orjson.loads(rows[index])
    change(value)
    rows[index] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS) + b"\n"
    return b"".join(rows)


async def client_of(runtime: Runtime) -> httpx.AsyncClient:
    return client_for(runtime)
