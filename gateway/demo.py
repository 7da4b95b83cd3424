"""The demo: METI's own example of limited provision data, seeded through the same code a vendor uses.

A mobile carrier ("Example Mobile") accumulates nationwide location aggregates and sells them per
area: one member licensed for Tokyo and Kanagawa, another for Osaka. Seeding is deterministic and
idempotent: with the demo in place and its demo.json present, running it again changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway import console_users, credentials, datasets, licences, members, oauth_clients, vendors
from gateway.actors import Actor, cli_actor
from gateway.columns import to_json
from gateway.demo_data import DEMO_COLUMNS, DEMO_PARTITIONS_BY_MEMBER, demo_csv_chunks
from gateway.errors import NotFound
from gateway.runtime import Runtime
from keys.apikeys import KeyKind

VENDOR = "Example Mobile"
DATASET = "mobile-location"
DESCRIPTION = ("Hourly population estimates per 1 km mesh from mobile network location data, nationwide, "
               "sold per prefecture (人口流動統計: 携帯電話位置情報に基づくメッシュ別推計人口)")
TERMS = ("Licence terms v1 / 利用規約 第1版\n"
         "1. The data is limited provision data (限定提供データ, UCPA art. 2(7)) of Example Mobile.\n"
         "2. Use only within your organisation for the licensed prefectures; no disclosure to third parties.\n"
         "3. Keep your API keys secret; report a suspected leak at once.\n")
# Namba's licence leaves out mesh_code: column scoping is part of the demo.
COLUMNS_BY_MEMBER = {"Shibuya Analytics": ("prefecture", "mesh_code", "hour", "population"),
                     "Namba Retail Research": ("prefecture", "hour", "population")}
DEMO_RECORDS = 120_000


def demo_file(runtime: Runtime) -> Path:
    return runtime.config.home / "demo.json"


async def seed(runtime: Runtime, *, records: int = DEMO_RECORDS) -> tuple[dict[str, Any], bool]:
    """Seed the demo if it is not there; returns demo.json's content and whether anything was created."""
    path = demo_file(runtime)
    try:
        vendor = await vendors.find(runtime.pool, VENDOR)
    except NotFound:
        vendor = None
    if vendor is not None and path.exists():
        return orjson.loads(path.read_bytes()), False
    if vendor is not None:
        raise RuntimeError(f"the demo vendor exists but {path} is missing, so its keys are unknown; "
                           f"remove {runtime.config.home} to start the demo afresh")
    operator = cli_actor()
    writer = runtime.writer
    vendor = await vendors.create(writer, operator, VENDOR)
    actor = cli_actor(vendor.id)
    hasher = runtime.hasher()
    _, admin_key = await credentials.issue(writer, actor, hasher, KeyKind.VENDOR, vendor.id, label="demo admin")
    _, compliance_key = await credentials.issue(writer, actor, hasher, KeyKind.COMPLIANCE, vendor.id,
                                                label="demo compliance officer")
    dataset = await datasets.create(writer, actor, vendor.id, DATASET, DESCRIPTION, to_json(DEMO_COLUMNS),
                                    "prefecture")

    async def upload() -> AsyncIterator[bytes]:
        for chunk in demo_csv_chunks(records):
            yield chunk

    await datasets.publish(writer, actor, dataset, upload(), "csv", max_bytes=runtime.config.max_upload_bytes)
    entries = []
    for name, partitions in DEMO_PARTITIONS_BY_MEMBER.items():
        member = await members.create(writer, actor, vendor.id, name)
        credential, key = await credentials.issue(writer, actor, hasher, KeyKind.MEMBER, vendor.id, member.id,
                                                  label="demo member key")
        licence = await licences.grant(
            writer, actor, vendor.id, member.id, dataset.id, TERMS,
            {"partitions": list(partitions), "columns": list(COLUMNS_BY_MEMBER[name]),
             "valid_from": datetime(2020, 4, 1, tzinfo=UTC), "records_per_month": 5_000_000,
             "bytes_per_month": 2_000_000_000, "requests_per_second": 50.0, "burst": 100})
        # The demo member accepts the terms with its own key, as a real member would before its first pull.
        member_actor = Actor(kind="member", vendor_id=vendor.id, member_id=member.id, credential_id=credential.id)
        await licences.accept_terms(writer, member_actor, licence, 1, licences.terms_sha256(TERMS))
        entry = {"name": name, "member_id": str(member.id), "api_key": key, "licence_id": str(licence.id),
                 "partitions": list(partitions)}
        if not entries:
            # The first member's software may also use OAuth client credentials (POST /oauth/token).
            client, secret = await oauth_clients.create(writer, actor, hasher, vendor.id, member.id,
                                                        label="demo OAuth client")
            entry["oauth_client"] = {"client_id": client.client_id, "client_secret": secret}
        entries.append(entry)
    content = {"base_url": runtime.config.base_url, "dataset": str(dataset.id), "vendor_id": str(vendor.id),
               "vendor_admin_key": admin_key, "compliance_key": compliance_key, "members": entries,
               "console": await _console_users(runtime, actor, vendor.id, uuid.UUID(entries[0]["member_id"]))}
    _write_private(path, orjson.dumps(content, option=orjson.OPT_INDENT_2))
    return content, True


async def _console_users(runtime: Runtime, actor: Actor, vendor_id: uuid.UUID,
                         member_id: uuid.UUID) -> dict[str, Any]:
    """The demo's console users, enrolled in TOTP already (their secrets are in demo.json for an app)."""
    users = []
    for role, email, member in (("vendor-admin", "admin@demo.lpd.example", None),
                                ("compliance", "compliance@demo.lpd.example", None),
                                ("member", "member@demo.lpd.example", member_id)):
        _, password, secret = await console_users.create(runtime.writer, runtime.master, actor, vendor_id, role,
                                                         email, member_id=member, enrol_totp=True)
        users.append({"role": role, "email": email, "password": password, "totp_secret": secret})
    return {"url": f"{runtime.config.base_url}/console/", "users": users}


def _write_private(path: Path, content: bytes) -> None:
    """demo.json holds live keys: readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    temporary.touch(mode=0o600)
    temporary.write_bytes(content)
    temporary.replace(path)
