"""gateway/licences.py: grant and amend take only the settable columns, whoever calls them."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from gateway import licences
from gateway.actors import cli_actor
from gateway.errors import InvalidInput
from gateway.runtime import Runtime
from tests.factories import licensed_member, make_vendor, records_path_of, wait_for_snapshot
from tests.test_members import cli


@pytest.mark.parametrize("column", ["vendor_id", "status", "terms_version", "id = id; --", "accepted_terms"])
async def test_grant_and_amend_refuse_every_column_that_is_not_settable(runtime: Runtime, client: httpx.AsyncClient,
                                                                          column: str) -> None:
    """The statements are built from the values' names: the domain itself refuses any other name, so a
    caller (API, CLI, console) can never reach a column such as the licence's vendor or status."""
    licensed = await licensed_member(runtime, client)
    vendor_id, licence_id = licensed.vendor.id, uuid.UUID(licensed.licence["id"])
    before = await runtime.pool.fetchrow("SELECT * FROM licences WHERE id = $1", licence_id)
    with pytest.raises(InvalidInput, match="unknown licence field"):
        await licences.amend(runtime.writer, cli_actor(vendor_id), vendor_id, licence_id, {column: "x"}, None)
    assert await runtime.pool.fetchrow("SELECT * FROM licences WHERE id = $1", licence_id) == before

    other = await make_vendor(runtime, client)
    dataset = await other.dataset()
    member = await other.member()
    with pytest.raises(InvalidInput, match="unknown licence field"):
        await licences.grant(runtime.writer, cli_actor(other.id), other.id, uuid.UUID(member["id"]),
                             uuid.UUID(dataset["id"]), "terms", {"partitions": ["north"], "columns": ["area"],
                                                                 column: "x"})
    assert await runtime.pool.fetchval("SELECT count(*) FROM licences WHERE vendor_id = $1", other.id) == 0


async def test_every_settable_field_is_a_column(runtime: Runtime) -> None:
    columns = {row["column_name"] for row in await runtime.pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'licences'")}
    assert set(licences.SETTABLE) <= columns


# -- issue 16: the licence dead ends -------------------------------------------------------------------

async def test_every_partition_covers_those_published_later(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, partitions=["*"])
    assert licensed.licence["partitions"] == ["*"]
    await licensed.vendor.publish(licensed.dataset["id"], "west,2026-05-01,7,note\n")
    dataset_id = uuid.UUID(licensed.dataset["id"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[dataset_id].latest_version == 2)
    export = await client.get(records_path_of(licensed), headers=licensed.headers)
    assert export.status_code == 200
    areas = {orjson.loads(line)["area"] for line in export.content.splitlines()}
    assert areas == {"north", "south", "east", "west"}
    west = await client.get(records_path_of(licensed), params={"partition": "west", "limit": 5},
                            headers=licensed.headers)
    assert west.status_code == 200 and len(west.content.splitlines()) == 1
    catalogue = (await client.get(f"/v1/datasets/{dataset_id}", headers=licensed.headers)).json()
    assert catalogue["accumulation"]["partitions"] == 4 and catalogue["scope"]["partitions"] == ["*"]
    mixed = await licensed.vendor.client.patch(f"/v1/admin/licences/{licensed.licence['id']}",
                                               json={"partitions": ["*", "north"]}, headers=licensed.vendor.headers)
    assert mixed.status_code == 422 and "not both" in mixed.json()["detail"]


async def test_unknown_partitions_and_a_validity_already_over_are_refused(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    vendor, path = licensed.vendor, f"/v1/admin/licences/{licensed.licence['id']}"
    refused = await vendor.client.patch(path, json={"partitions": ["north", "atlantis"]}, headers=vendor.headers)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert "atlantis" in problem["detail"] and "east, north, south" in problem["detail"] and '["*"]' in problem["detail"]
    assert problem["unknown_partitions"] == ["atlantis"] and problem["dataset_partitions"] == ["east", "north", "south"]
    spare = await vendor.member("spare")
    granted = await vendor.post("/v1/admin/licences", json={
        "member_id": spare["id"], "dataset_id": licensed.dataset["id"], "partitions": ["atlantis"],
        "columns": ["area"], "terms_text": "terms"})
    assert granted.status_code == 422 and "atlantis" in granted.json()["detail"]
    over = await vendor.client.patch(path, json={"valid_until": "2020-01-01T00:00:00Z"}, headers=vendor.headers)
    assert over.status_code == 422 and "already over" in over.json()["detail"]
    assert (await vendor.ok("GET", path)) == licensed.licence | {"terms_accepted": True}


async def test_a_revoked_licence_refuses_every_change(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    vendor, path = licensed.vendor, f"/v1/admin/licences/{licensed.licence['id']}"
    await vendor.ok("POST", f"{path}/revoke", json={})
    for method, suffix, body in (("PATCH", "", {"partitions": ["north"]}), ("POST", "/suspend", {}),
                                 ("POST", "/resume", {}), ("POST", "/revoke", {})):
        refused = await vendor.client.request(method, path + suffix, json=body, headers=vendor.headers)
        assert refused.status_code == 409, (suffix, refused.text)
        assert "revocation is final" in refused.json()["detail"] and "grant" in refused.json()["detail"]


async def test_an_amendment_that_changes_nothing_is_refused(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    vendor, path = licensed.vendor, f"/v1/admin/licences/{licensed.licence['id']}"
    for body in ({}, {"partitions": ["south", "north"]}, {"terms_text": "terms v1", "records_quota_hard": True}):
        refused = await vendor.client.patch(path, json=body, headers=vendor.headers)
        assert refused.status_code == 409 and "nothing to change" in refused.json()["detail"], (body, refused.text)


async def test_every_licence_answer_shows_the_accepted_terms(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    vendor, path = licensed.vendor, f"/v1/admin/licences/{licensed.licence['id']}"
    answers = [await vendor.ok("PATCH", path, json={"records_per_month": 1000}),
               await vendor.ok("POST", f"{path}/suspend", json={}), await vendor.ok("POST", f"{path}/resume", json={}),
               await vendor.ok("GET", path), *(await vendor.ok("GET", "/v1/admin/licences"))["items"]]
    assert [a["terms_accepted"] for a in answers] == [True] * 5


async def test_the_cli_clears_validity_quotas_and_soft_quotas(runtime: Runtime, client: httpx.AsyncClient,
                                                              dsn: str, tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client, valid_until="2099-01-01T00:00:00Z", records_per_month=10,
                                     bytes_per_month=10_000, requests_per_second=5, burst=10,
                                     records_quota_hard=False)
    vendor, licence_id = str(licensed.vendor.id), licensed.licence["id"]
    done = cli(dsn, tmp_path, "licence", "amend", "--vendor", vendor, licence_id, "--no-valid-until",
               "--no-records-quota", "--no-bytes-quota", "--no-rate-limit", "--hard-quotas")
    assert done.returncode == 0, done.stderr
    amended = orjson.loads(done.stdout)
    assert amended["valid_until"] is None and amended["terms_accepted"] is True
    assert amended["quotas"] == {"records_per_month": None, "records_quota_hard": True, "bytes_per_month": None,
                                 "bytes_quota_hard": True, "requests_per_second": None, "burst": None}
    again = cli(dsn, tmp_path, "licence", "amend", "--vendor", vendor, licence_id, "--no-valid-until")
    assert again.returncode == 1 and "nothing to change" in again.stderr
