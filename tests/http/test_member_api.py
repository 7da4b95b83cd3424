"""The member read path: licensed datasets and records, scoped to the licence, with 401/403/404 semantics."""

from __future__ import annotations

import csv
import io
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson

from gateway.runtime import Runtime
from tests.factories import accept_terms, auth, licensed_member, make_vendor, wait_for_snapshot


def ndjson(response: httpx.Response) -> list[dict]:
    return [orjson.loads(line) for line in response.content.splitlines()]


async def test_member_lists_its_licensed_datasets(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    response = await client.get("/v1/datasets", headers=licensed.headers)
    assert response.status_code == 200
    [item] = response.json()["items"]
    assert item["dataset"] == licensed.dataset["id"] and item["licence_id"] == licensed.licence["id"]
    assert item["scope"] == {"partitions": ["north", "south"], "columns": ["area", "day", "count"]}


async def test_records_are_only_the_licensed_partitions_and_columns(runtime: Runtime,
                                                                     client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    response = await client.get(f"/v1/datasets/{licensed.dataset['id']}/records", headers=licensed.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    records = ndjson(response)
    assert len(records) == 30
    assert {r["area"] for r in records} == {"north", "south"}
    assert all(set(r) == {"area", "day", "count"} for r in records)
    assert b"secret_note" not in response.content and b"note-" not in response.content
    # The notice that makes the restriction visible travels with the data.
    assert licensed.licence["id"] in response.headers["licence"]
    assert "Limited provision data" in response.headers["data-notice"]
    assert response.headers["cache-control"] == "no-store"


async def test_csv_pages_and_streams_carry_licensed_columns_only(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    streamed = await client.get(path, params={"format": "csv"}, headers=licensed.headers)
    paged = await client.get(path, params={"format": "csv", "limit": 1000}, headers=licensed.headers)
    assert streamed.status_code == paged.status_code == 200
    assert streamed.content == paged.content
    rows = list(csv.reader(io.StringIO(streamed.text)))
    assert rows[0] == ["area", "day", "count"] and len(rows) == 31


async def test_csv_pages_quote_as_the_stream_does(runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Pages are rendered by PostgreSQL's csv_field, streams by COPY: the same bytes for every value."""
    licensed = await licensed_member(runtime, client, columns=["area", "day", "count", "secret_note"])
    await licensed.vendor.publish(licensed.dataset["id"], 'west,2026-04-01,1,"a,b"\nwest,2026-04-02,2,"say ""hi"""\n'
                                  'west,2026-04-03,3,\nwest,2026-04-04,4,""\nwest,2026-04-05,5,plain\n')
    # Licensed once a version holds it (a licence for a partition no version holds is refused).
    await licensed.vendor.ok("PATCH", f"/v1/admin/licences/{licensed.licence['id']}", json={"partitions": ["west"]})
    dataset_id, licence_id = uuid.UUID(licensed.dataset["id"]), uuid.UUID(licensed.licence["id"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[dataset_id].latest_version == 2
                            and runtime.snapshot.licences[licence_id].partitions == ("west",))
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    streamed = await client.get(path, params={"format": "csv"}, headers=licensed.headers)
    paged = await client.get(path, params={"format": "csv", "limit": 3}, headers=licensed.headers)
    rest = await client.get(paged.links["next"]["url"], headers=licensed.headers)
    assert streamed.status_code == paged.status_code == rest.status_code == 200
    assert paged.content + rest.content == streamed.content
    notes = [row[3] for row in csv.reader(io.StringIO(streamed.text))][1:]
    assert notes[0] == "a,b" and notes[1] == 'say "hi"' and notes[4] == "plain"


async def test_pages_follow_next_links_to_the_same_records_as_the_stream(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    everything = ndjson(await client.get(path, headers=licensed.headers))
    seen: list[dict] = []
    response = await client.get(path, params={"limit": 7}, headers=licensed.headers)
    while True:
        assert response.status_code == 200
        seen.extend(ndjson(response))
        if "link" not in response.headers:
            break
        next_url = response.headers["link"].split(">")[0].lstrip("<")
        response = await client.get(next_url, headers=licensed.headers)
    assert seen == everything


async def test_a_tampered_cursor_is_refused(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    first = await client.get(path, params={"limit": 5}, headers=licensed.headers)
    cursor = parse_qs(urlsplit(first.headers["link"].split(">")[0].lstrip("<")).query)["cursor"][0]
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    response = await client.get(path, params={"cursor": flipped}, headers=licensed.headers)
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


async def test_401_403_404_semantics(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers=auth("lpdm_" + "x" * 66))).status_code == 401
    # A partition outside the licence is named in the refusal.
    outside = await client.get(path, params={"partition": "east"}, headers=licensed.headers)
    assert outside.status_code == 403 and "east" in outside.json()["detail"]
    # Another vendor's dataset, an unlicensed dataset of the same vendor and a random id look the same.
    other = await make_vendor(runtime, client)
    foreign = await other.dataset()
    unlicensed = await licensed.vendor.dataset(name="other-data")
    bodies = set()
    for dataset_id in (foreign["id"], unlicensed["id"], str(uuid.uuid4()), "not-an-id"):
        response = await client.get(f"/v1/datasets/{dataset_id}/records", headers=licensed.headers)
        assert response.status_code == 404
        bodies.add(response.content)
    assert len(bodies) == 1


async def test_terms_must_be_accepted_and_accepted_again_after_a_change(runtime: Runtime,
                                                                       client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, accept=False)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    refused = await client.get(path, headers=licensed.headers)
    assert refused.status_code == 403 and "terms" in refused.json()["detail"]
    terms_link = refused.json()["terms"]
    terms = await client.get(terms_link, headers=licensed.headers)
    assert terms.status_code == 200 and terms.json()["text"] == "terms v1"
    await accept_terms(client, licensed.licence["id"], licensed.key)
    licence_id = uuid.UUID(licensed.licence["id"])
    await wait_for_snapshot(runtime, lambda: 1 in runtime.snapshot.licences[licence_id].accepted_terms)
    assert (await client.get(path, headers=licensed.headers)).status_code == 200
    await licensed.vendor.ok("PATCH", f"/v1/admin/licences/{licensed.licence['id']}", json={"terms_text": "terms v2"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].terms_version == 2)
    assert (await client.get(path, headers=licensed.headers)).status_code == 403


async def test_suspended_revoked_and_expired_licences_are_403_with_reason(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = f"/v1/datasets/{licensed.dataset['id']}/records"
    licence_path = f"/v1/admin/licences/{licensed.licence['id']}"
    licence_id = uuid.UUID(licensed.licence["id"])
    await licensed.vendor.ok("POST", f"{licence_path}/suspend", json={"reason": "invoice overdue"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].status == "suspended")
    response = await client.get(path, headers=licensed.headers)
    assert response.status_code == 403 and response.json()["detail"] == "licence suspended: invoice overdue"
    await licensed.vendor.ok("POST", f"{licence_path}/resume", json={})
    # A validity already over is refused (tests/test_licences.py): the licence's time runs out instead.
    await runtime.pool.execute("UPDATE licences SET valid_from = '2020-01-01Z', valid_until = '2020-02-01Z' "
                               "WHERE id = $1", licence_id)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].valid_until is not None)
    response = await client.get(path, headers=licensed.headers)
    assert response.status_code == 403 and "expired" in response.json()["detail"]


async def test_a_revoked_key_stops_working(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    keys = (await licensed.vendor.ok("GET", "/v1/admin/keys"))["items"]
    member_key = next(k for k in keys if k["kind"] == "member")
    await licensed.vendor.ok("POST", f"/v1/admin/keys/{member_key['id']}/revoke")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(member_key["key_id"]).revoked_at is not None)
    response = await client.get("/v1/datasets", headers=licensed.headers)
    assert response.status_code == 401 and response.json()["detail"] == "API key revoked"
