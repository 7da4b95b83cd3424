"""The demo: seeded through the real publish path, idempotent, and readable by its members within scope."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from gateway import demo
from gateway.runtime import Runtime
from tests.conftest import client_for, open_runtime
from tests.factories import auth


async def test_demo_members_read_only_their_prefectures(demo_client: httpx.AsyncClient, demo_content: dict) -> None:
    assert set(demo_content) >= {"base_url", "dataset", "vendor_admin_key", "compliance_key", "members"}
    for member in demo_content["members"]:
        listed = await demo_client.get("/v1/datasets", headers=auth(member["api_key"]))
        assert [d["dataset"] for d in listed.json()["items"]] == [demo_content["dataset"]]
        response = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records",
                                         headers=auth(member["api_key"]))
        assert response.status_code == 200
        records = [orjson.loads(line) for line in response.content.splitlines()]
        assert records and {r["prefecture"] for r in records} == set(member["partitions"])
        expected_columns = set(demo.COLUMNS_BY_MEMBER[member["name"]])
        assert all(set(r) == expected_columns for r in records)


async def test_seeding_twice_changes_nothing(demo_runtime: Runtime, tmp_path: Path) -> None:
    # The template was seeded with demo.json in another home; put it where this runtime looks.
    async with demo_runtime.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM audit_events")
    path = demo.demo_file(demo_runtime)
    path.write_bytes(b'{"members": []}')
    content, created = await demo.seed(demo_runtime)
    assert not created and content == {"members": []}
    async with demo_runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_events") == before


async def test_demo_json_is_private(dsn: str, tmp_path: Path) -> None:
    runtime = await open_runtime(dsn, tmp_path)
    try:
        content, created = await demo.seed(runtime, records=2_000)
        assert created
        path = demo.demo_file(runtime)
        assert path.stat().st_mode & 0o077 == 0
        assert orjson.loads(path.read_bytes()) == content
        async with client_for(runtime) as client:
            member = content["members"][1]
            response = await client.get(f"/v1/datasets/{content['dataset']}", headers=auth(member["api_key"]))
            assert response.status_code == 200
            assert response.json()["scope"]["partitions"] == ["27"]
    finally:
        await runtime.close()
