"""The page cache: a page asked for again comes from memory, and never outlives what it may show."""

from __future__ import annotations

import uuid

import httpx
import orjson

from gateway import delivery, metrics
from gateway.page_cache import PageCache
from gateway.runtime import Runtime
from tests.factories import licensed_member, records_path_of, wait_for_snapshot


def served(result: str) -> float:
    return float(metrics.PAGE_CACHE.labels(result)._value.get())


def lines(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines()]


async def test_a_page_asked_for_again_is_served_from_memory_with_the_same_bytes(runtime: Runtime,
                                                                               client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    hits, misses = served("hit"), served("miss")
    first = await client.get(path, params={"limit": 4}, headers=licensed.headers)
    again = await client.get(path, params={"limit": 4}, headers=licensed.headers)
    assert (served("miss") - misses, served("hit") - hits) == (1, 1)
    assert again.content == first.content and len(lines(again)) == 4
    # Each delivery is still metered and audited on its own, with the digest of what it carried.
    assert again.headers["audit-event"] != first.headers["audit-event"]
    csv = await client.get(path, params={"limit": 4, "format": "csv"}, headers=licensed.headers)
    assert served("miss") - misses == 2 and csv.content.startswith(b"area,day,count\n")  # another key


async def test_a_publish_shows_in_new_pages_and_leaves_old_cursors_pinned(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    first = await client.get(path, params={"limit": 20}, headers=licensed.headers)
    assert {row["area"] for row in lines(first)} == {"north", "south"} and len(lines(first)) == 20
    following = first.links["next"]["url"]
    before = (await client.get(following, headers=licensed.headers)).content
    await licensed.vendor.publish(licensed.dataset["id"], "north,2026-05-01,999,late\n")
    dataset_id = uuid.UUID(licensed.dataset["id"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[dataset_id].latest_version == 2)
    everything = lines(await client.get(path, params={"limit": 100}, headers=licensed.headers))
    assert {"area": "north", "day": "2026-05-01", "count": 999} in everything
    # The cursor pinned version 1: its page is what it was, with or without the cache.
    assert (await client.get(following, headers=licensed.headers)).content == before


async def test_a_narrowed_or_revoked_licence_never_gets_a_cached_page(runtime: Runtime,
                                                                      client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    path = records_path_of(licensed)
    assert "count" in lines(await client.get(path, params={"limit": 5}, headers=licensed.headers))[0]
    licence_path = f"/v1/admin/licences/{licensed.licence['id']}"
    licence_id = uuid.UUID(licensed.licence["id"])
    await licensed.vendor.ok("PATCH", licence_path, json={"columns": ["area", "day"], "partitions": ["south"]})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].columns == ("area", "day"))
    narrowed = lines(await client.get(path, params={"limit": 5}, headers=licensed.headers))
    assert narrowed and all(set(row) == {"area", "day"} and row["area"] == "south" for row in narrowed)
    await licensed.vendor.ok("POST", f"{licence_path}/revoke", json={"reason": "contract ended"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].status == "revoked")
    refused = await client.get(path, params={"limit": 5}, headers=licensed.headers)
    assert refused.status_code == 403 and b"south" not in refused.content


async def test_the_cache_holds_at_most_its_bytes_and_drops_the_least_recently_used(runtime: Runtime,
                                                                                   client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    dataset = runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
    licence = runtime.snapshot.licences[uuid.UUID(licensed.licence["id"])]
    scope = delivery.delivery_scope(dataset, licence, [], 0)
    reference = await PageCache(0).page(runtime.pool, scope, "ndjson", None, 1)
    cache = PageCache(3 * (len(reference.body) + 24 + 400) + 100)  # room for three one-record pages
    pages = [await cache.page(runtime.pool, scope, "ndjson", None, 1)]
    for _ in range(4):
        pages.append(await cache.page(runtime.pool, scope, "ndjson", pages[-1].position(0), 1))
    assert pages[0] == reference and cache.bytes <= cache.max_bytes
    assert len({page.body for page in pages}) == 5  # five pages, each the record after the last
    hits = served("hit")
    assert await cache.page(runtime.pool, scope, "ndjson", None, 1) == reference  # dropped: read again
    assert served("hit") == hits
    assert await cache.page(runtime.pool, scope, "ndjson", pages[3].position(0), 1) == pages[4]  # still kept
    assert served("hit") == hits + 1
