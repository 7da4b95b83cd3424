"""Version lifecycle (gateway/datasets.py): withdrawal, append and replace, duplicate uploads."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from gateway.runtime import Runtime
from tests.factories import Licensed, licensed_member, records_path_of, wait_for_snapshot
from tests.processes import GatewayProcess
from tests.test_admin_keys import _cli

HEADER = "area,day,count,secret_note\n"


def counts(body: bytes) -> list[int]:
    return sorted(orjson.loads(line)["count"] for line in body.splitlines())


async def publish(licensed: Licensed, rows: str, query: str = "") -> httpx.Response:
    vendor = licensed.vendor
    return await vendor.client.post(f"/v1/admin/datasets/{licensed.dataset['id']}/versions{query}",
                                    content=(HEADER + rows).encode(),
                                    headers={**vendor.headers, "content-type": "text/csv"})


async def withdraw(licensed: Licensed, version: Any, body: Any) -> httpx.Response:
    return await licensed.vendor.post(f"/v1/admin/datasets/{licensed.dataset['id']}/versions/{version}/withdraw",
                                      json=body)


async def settled(runtime: Runtime, licensed: Licensed, check: Any) -> None:
    dataset_id = uuid.UUID(licensed.dataset["id"])
    await wait_for_snapshot(runtime, lambda: dataset_id in runtime.snapshot.datasets
                            and check(runtime.snapshot.datasets[dataset_id]))


async def sharing_query(client: httpx.AsyncClient, licensed: Licensed) -> list[dict[str, Any]]:
    shares = (await client.get("/delta-sharing/shares", headers=licensed.headers)).json()
    [share] = [s["name"] for s in shares["items"]]
    response = await client.post(f"/delta-sharing/shares/{share}/schemas/default/tables/"
                                 f"{licensed.dataset['name']}/query", json={}, headers=licensed.headers)
    assert response.status_code == 200, response.text
    return [orjson.loads(line)["file"] for line in response.content.splitlines()[2:]]


async def state(runtime: Runtime) -> list[tuple[str, int]]:
    async with runtime.pool.acquire() as conn:
        return [(t, await conn.fetchval(f"SELECT count(*) FROM {t}"))
                for t in ("records", "dataset_versions", "dataset_partitions")] + [
            ("withdrawn", await conn.fetchval("SELECT count(*) FROM dataset_versions WHERE withdrawn_at IS NOT NULL"))]


async def test_a_withdrawn_version_leaves_pages_exports_and_sharing_and_its_cursors_answer_410(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    second = await publish(licensed, "north,2026-05-01,1000,x\nnorth,2026-05-02,1001,x\n")
    assert second.status_code == 201, second.text
    await settled(runtime, licensed, lambda d: d.latest_version == 2)
    before = counts((await client.get(path, headers=licensed.headers)).content)
    assert 1000 in before and len(before) == 32
    page = await client.get(path, params={"limit": 3}, headers=licensed.headers)
    cursor = page.links["next"]["url"]
    files_before = await sharing_query(client, licensed)
    url_of_v2 = next(f["url"] for f in files_before if "1000" not in f["url"]
                     and f["partitionValues"].get("area") == "north" and f["stats"] == '{"numRecords":2}')

    withdrawn = await withdraw(licensed, 2, {"reason": "wrong month / 誤った月"})
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["withdrawal_reason"] == "wrong month / 誤った月" and withdrawn.json()["withdrawn_at"]
    await settled(runtime, licensed, lambda d: not d.version(2).live)

    export = await client.get(path, headers=licensed.headers)
    assert counts(export.content) == [c for c in before if c < 1000]
    gone = await client.get(cursor, headers=licensed.headers)
    assert gone.status_code == 410, gone.text
    problem = gone.json()
    assert problem["version"] == 2 and problem["withdrawal_reason"] == "wrong month / 誤った月"
    assert "JST" in problem["detail"] and "start again without a cursor" in problem["detail"]
    # A cursor written after the withdrawal goes on: its versions are the same as when it was written.
    fresh = await client.get(path, params={"limit": 3}, headers=licensed.headers)
    assert (await client.get(fresh.links["next"]["url"], headers=licensed.headers)).status_code == 200
    assert (await client.get(path, params={"version": 2}, headers=licensed.headers)).status_code == 410
    files_after = await sharing_query(client, licensed)
    assert len(files_after) == len(files_before) - 1 and url_of_v2 not in {f["url"] for f in files_after}
    file_gone = await client.get(httpx.URL(url_of_v2).path)
    assert file_gone.status_code == 410 and file_gone.json()["errorCode"] == "RESOURCE_DOES_NOT_EXIST"
    assert "withdrawn" in file_gone.json()["message"]
    shares = (await client.get("/delta-sharing/shares", headers=licensed.headers)).json()
    table = f"/delta-sharing/shares/{shares['items'][0]['name']}/schemas/default/tables/{licensed.dataset['name']}"
    assert (await client.get(table + "/version", headers=licensed.headers)).headers["delta-table-version"] == "1"

    # The vendor sees the figures apart; the member sees the version listed as withdrawn, without figures.
    shown = await licensed.vendor.ok("GET", f"/v1/admin/datasets/{licensed.dataset['id']}")
    assert shown["accumulation"]["records"] == 45 and shown["accumulation"]["withdrawn"] == {
        "versions": [2], "records": 2, "bytes": shown["versions"][1]["bytes"]}
    assert shown["deliverable_versions"] == [1]
    member_view = (await client.get(f"/v1/datasets/{licensed.dataset['id']}", headers=licensed.headers)).json()
    assert "records" not in member_view["versions"][1] and member_view["versions"][1]["withdrawn_at"]
    # The records stay in storage; the evidence names the withdrawal.
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM records WHERE version = 2") == 2
        event = orjson.loads(await conn.fetchval(
            "SELECT convert_from(entry, 'UTF8') FROM audit_events WHERE kind = 'vendor:version:withdraw'"))
    assert event["versions"] == [2] and event["partitions"] == ["north"] and event["delivery"]["records"] == 2
    assert event["reason"] == "wrong month / 誤った月"


async def test_withdraw_refuses_a_second_withdrawal_unknown_versions_and_bad_input(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    before = await state(runtime)
    for version, body, status in [(1, {}, 422), (1, {"reason": "   "}, 422), (1, {"reason": "x", "at": 1}, 422),
                                  (1, {"reason": "x" * 1001}, 422), (2, {"reason": "x"}, 404),
                                  ("one", {"reason": "x"}, 404), (0, {"reason": "x"}, 404)]:
        response = await withdraw(licensed, version, body)
        assert response.status_code == status, (version, body, response.text)
    assert await state(runtime) == before
    assert (await withdraw(licensed, 1, {"reason": "duplicate upload"})).status_code == 200
    again = await withdraw(licensed, 1, {"reason": "again"})
    assert again.status_code == 409 and "already withdrawn at" in again.json()["detail"]
    assert "duplicate upload" in again.json()["detail"] and again.json()["withdrawal_reason"] == "duplicate upload"
    # The database itself refuses an un-withdraw and any other change to a version.
    async with runtime.pool.acquire() as conn:
        for statement in ("UPDATE dataset_versions SET withdrawn_at = NULL, withdrawal_reason = NULL",
                          "UPDATE dataset_versions SET withdrawn_at = now(), withdrawal_reason = 'other'",
                          "DELETE FROM dataset_versions", "UPDATE dataset_partitions SET records = 0"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)


async def test_a_replace_version_delivers_only_itself_and_version_reads_an_earlier_one(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    replaced = await publish(licensed, "north,2026-06-01,500,x\nsouth,2026-06-01,501,x\n", "?mode=replace")
    assert replaced.status_code == 201 and replaced.json()["mode"] == "replace", replaced.text
    assert (await publish(licensed, "north,2026-06-02,600,x\n")).status_code == 201
    await settled(runtime, licensed, lambda d: d.latest_version == 3)
    assert counts((await client.get(path, headers=licensed.headers)).content) == [500, 501, 600]
    assert counts((await client.get(path, params={"since_version": 2}, headers=licensed.headers)).content) == [600]
    earlier = await client.get(path, params={"version": 1, "limit": 4}, headers=licensed.headers)
    assert len(counts(earlier.content)) == 4 and max(counts(earlier.content)) < 500
    rest = await client.get(earlier.links["next"]["url"], headers=licensed.headers)
    assert len(counts(earlier.content) + counts(rest.content)) <= 30 and max(counts(rest.content)) < 500
    for params in ({"version": 1, "since_version": 1}, {"version": 9}):
        assert (await client.get(path, params=params, headers=licensed.headers)).status_code == 400
    # Withdrawing the replace version makes what it replaced deliverable again.
    assert (await withdraw(licensed, 2, {"reason": "replaced too early"})).status_code == 200
    await settled(runtime, licensed, lambda d: d.deliverable() == (1, 3))
    again = counts((await client.get(path, headers=licensed.headers)).content)
    assert len(again) == 31 and 600 in again and 500 not in again


async def test_a_duplicate_publish_is_refused_through_api_and_cli_and_leaves_nothing(
        runtime: Runtime, client: httpx.AsyncClient, dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    rows = "north,2026-07-01,1,x\n"
    assert (await publish(licensed, rows)).status_code == 201
    before = await state(runtime)
    duplicate = await publish(licensed, rows)
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["duplicate_of"] == 2 and "duplicate=allow" in duplicate.json()["detail"]
    for query in ("?mode=prepend", "?duplicate=yes", "?other=1", "?mode=append&mode=replace"):
        assert (await publish(licensed, "north,2026-07-09,9,x\n", query)).status_code == 400, query
    upload = tmp_path / "again.csv"
    upload.write_text(HEADER + rows)
    vendor = await runtime.pool.fetchval("SELECT name FROM vendors WHERE id = $1", licensed.vendor.id)
    refused = await asyncio.to_thread(_cli, ["dataset", "publish", "--vendor", vendor, licensed.dataset["name"],
                                             str(upload)], dsn, tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "version 2" in refused.stderr and "--allow-duplicate" in refused.stderr
    assert await state(runtime) == before
    allowed = await asyncio.to_thread(_cli, ["dataset", "publish", "--vendor", vendor, licensed.dataset["name"],
                                             str(upload), "--allow-duplicate", "--replace"], dsn, tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert orjson.loads(allowed.stdout)["mode"] == "replace"
    assert (await publish(licensed, rows, "?duplicate=allow")).status_code == 201
    # The CLI withdraws too, and says what to do on a second try.
    withdrawn = await asyncio.to_thread(_cli, ["dataset", "withdraw", "--vendor", vendor, licensed.dataset["name"],
                                               "4", "--reason", "published twice"], dsn, tmp_path)
    assert withdrawn.returncode == 0 and orjson.loads(withdrawn.stdout)["withdrawal_reason"] == "published twice"
    twice = await asyncio.to_thread(_cli, ["dataset", "withdraw", "--vendor", vendor, licensed.dataset["name"],
                                           "4", "--reason", "again"], dsn, tmp_path)
    assert twice.returncode == 1 and "already withdrawn" in twice.stderr and twice.stderr.count("\n") == 1


@pytest.mark.slow
async def test_a_withdrawal_reaches_two_instances_within_a_second(runtime: Runtime, client: httpx.AsyncClient,
                                                                  dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    assert (await publish(licensed, "north,2026-08-01,9000,x\nnorth,2026-08-02,9001,x\n")).status_code == 201
    path = records_path_of(licensed)
    gateways = [GatewayProcess(dsn, tmp_path, f"gw{i}") for i in range(2)]
    try:
        await asyncio.gather(*(g.ready() for g in gateways))
        async with httpx.AsyncClient(timeout=10) as http:
            cursors = []
            for g in gateways:
                while len(counts((await http.get(g.url + path, headers=licensed.headers)).content)) != 32:
                    await asyncio.sleep(0.01)
                page = await http.get(g.url + path, params={"limit": 2}, headers=licensed.headers)
                cursors.append(page.links["next"]["url"])
            response = await http.post(
                f"{gateways[0].url}/v1/admin/datasets/{licensed.dataset['id']}/versions/2/withdraw",
                json={"reason": "wrong area"}, headers=licensed.vendor.headers)
            assert response.status_code == 200, response.text
            committed = asyncio.get_running_loop().time()
            for g, cursor in zip(gateways, cursors, strict=True):
                while (await http.get(cursor, headers=licensed.headers)).status_code != 410:
                    assert asyncio.get_running_loop().time() - committed < 1.0, g.url
                    await asyncio.sleep(0.01)
                took = asyncio.get_running_loop().time() - committed
                export = await http.get(g.url + path, headers=licensed.headers)
                assert len(counts(export.content)) == 30 and 9000 not in counts(export.content)
                shares = (await http.get(g.url + "/delta-sharing/shares", headers=licensed.headers)).json()
                query = await http.post(f"{g.url}/delta-sharing/shares/{shares['items'][0]['name']}/schemas/default/"
                                        f"tables/{licensed.dataset['name']}/query", json={}, headers=licensed.headers)
                assert query.headers["delta-table-version"] == "1"
                print(f"\nwithdrawal seen by {g.url} after {took * 1000:.0f} ms")
        assert [await asyncio.to_thread(g.terminate) for g in gateways] == [0, 0]
    finally:
        for g in gateways:
            g.stop()
