"""Property-based: whatever a member asks of the records route, it gets its licence's scope and nothing else.

Any combination of `partition` values (licensed, unlicensed, repeated, near misses), `since_version`,
format (parameter or Accept), `limit`, and cursors followed, edited, taken from a wider licence or
forged with the server's own key, answers either exactly the licensed records in delivery order, or a
refusal; a forbidden column name or value, or an unlicensed partition, never appears in a body, a
header or a cursor's payload, and a partition outside the licence is a 403 naming that partition only.
"""

from __future__ import annotations

import base64
import csv
import io
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import cursors
from gateway.runtime import Runtime
from gateway.server_secrets import CURSOR
from tests.factories import accept_terms, auth, make_vendor, wait_for_snapshot

LICENSED = ("p-north", "p-south")
UNLICENSED = ("p-east", "p-west")
COLUMNS = ("area", "day", "count")  # the licence's columns; the dataset also has secret_note
# Nothing of these may reach the member, anywhere (the 403 for an asked partition names that one only).
FORBIDDEN = ("secret_note", "SECRET-", *UNLICENSED)
PER_CELL = 4
# Version v holds PER_CELL rows for each of these partitions; its rows' day is in month 3 + v.
VERSIONS = {1: ("p-north", "p-south", "p-east", "p-west"), 2: ("p-north", "p-east"), 3: ("p-south", "p-west")}


def rows_of(version: int) -> str:
    return "".join(f"{area},2026-0{3 + version}-0{i + 1},{version * 100 + i},SECRET-{area}-{version}-{i}\n"
                   for area in VERSIONS[version] for i in range(PER_CELL))


@dataclass
class World:
    path: str
    key: str
    licence_id: str
    wide_key: str
    vendor_key: str


_WORLDS: dict[str | None, World] = {}


async def world(runtime: Runtime, client: httpx.AsyncClient) -> World:
    """Built once per test (hypothesis runs the body once per example against the same database)."""
    database = runtime.config.database_url  # one per test: the cache never outlives its database
    if database in _WORLDS:
        return _WORLDS[database]
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset()
    for version in VERSIONS:
        await vendor.publish(dataset["id"], rows_of(version))
    keys, licences = [], []
    for name, partitions, columns in (("narrow", LICENSED, COLUMNS),
                                      ("wide", LICENSED + UNLICENSED, (*COLUMNS, "secret_note"))):
        member = await vendor.member(name)
        keys.append((await vendor.member_key(member["id"]))["api_key"])
        licences.append(await vendor.licence(member["id"], dataset["id"], list(partitions), list(columns)))
    for key, licence in zip(keys, licences, strict=True):
        licence_id = uuid.UUID(licence["id"])
        await wait_for_snapshot(runtime, lambda lid=licence_id: lid in runtime.snapshot.licences)
        await accept_terms(client, licence["id"], key)
        await wait_for_snapshot(runtime, lambda lid=licence_id: runtime.snapshot.licences[lid].accepted_terms)
    dataset_id = uuid.UUID(dataset["id"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[dataset_id].latest_version == 3)
    _WORLDS.clear()
    _WORLDS[database] = found = World(f"/v1/datasets/{dataset['id']}/records", keys[0], licences[0]["id"], keys[1],
                                      vendor.key)
    return found


def expected(partitions: tuple[str, ...], since: int) -> list[tuple[str, str, str]]:
    """The records of the scope in delivery order (partition, version, seq), as text."""
    return [(area, f"2026-0{3 + version}-0{i + 1}", str(version * 100 + i))
            for area in partitions for version in sorted(VERSIONS) if version > since and area in VERSIONS[version]
            for i in range(PER_CELL)]


def next_cursor(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    query = urllib.parse.urlsplit(link.split(">")[0].lstrip("<")).query
    return urllib.parse.parse_qs(query)["cursor"][0]


def cursor_payload(cursor: str) -> dict[str, Any]:
    blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    payload: dict[str, Any] = orjson.loads(blob[2 + 16:])
    return payload


def everything_shown(response: httpx.Response) -> str:
    """Body, headers and the payload of any cursor handed out, as one text to search."""
    parts = [response.content.decode("utf-8", "replace")]
    parts += [f"{k}: {urllib.parse.unquote(v)}" for k, v in response.headers.multi_items()]
    cursor = next_cursor(response)
    if cursor is not None:
        parts.append(orjson.dumps(cursor_payload(cursor)).decode())
    return "\n".join(parts)


def records_of(response: httpx.Response, fmt: str, first: bool) -> list[tuple[str, str, str]]:
    """The page's records as text triples, checking each carries exactly the licensed columns."""
    if fmt == "csv":
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(response.text)))
        if first:
            assert rows and rows[0] == list(COLUMNS), rows[:1]
            rows = rows[1:]
        assert all(len(row) == len(COLUMNS) for row in rows)
        return [tuple(row) for row in rows]  # type: ignore[misc]
    assert response.headers["content-type"] == "application/x-ndjson"
    found = []
    for line in response.content.splitlines():
        record = orjson.loads(line)
        assert set(record) == set(COLUMNS), record  # jsonb orders keys its own way
        found.append((record["area"], record["day"], str(record["count"])))
    return found


def check_clean(response: httpx.Response, named: str | None = None) -> None:
    shown = everything_shown(response)
    if named is not None:
        shown = shown.replace(named, "")
    leaked = [token for token in FORBIDDEN if token in shown]
    assert not leaked, (response.status_code, leaked, shown[:2000])
    assert response.status_code != 500


PARTITIONS = st.sampled_from([*LICENSED, *UNLICENSED, "", "P-NORTH", "p-north ", "north", "p-north,p-east", "p-%"])
FORMATS = st.sampled_from([None, "ndjson", "csv", "accept:text/csv", "accept:application/x-ndjson"])
CURSOR_USES = st.sampled_from(["follow", "follow", "edit", "cut", "wide", "forged", "forged-outside",
                               "with-partition"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(partitions=st.one_of(st.lists(st.sampled_from(LICENSED), max_size=4), st.lists(PARTITIONS, max_size=4)), since=st.one_of(st.none(), st.integers(0, 4)),
       fmt=FORMATS, limit=st.one_of(st.sampled_from([None, 10_000]), st.integers(1, 15), st.integers(1, 15)), use=CURSOR_USES,
       at=st.integers(0, 200))
async def test_any_request_gets_the_licensed_scope_or_a_clean_refusal(
        runtime: Runtime, client: httpx.AsyncClient, partitions: list[str], since: int | None, fmt: str | None,
        limit: int | None, use: str, at: int) -> None:
    w = await world(runtime, client)
    params: list[tuple[str, str | int]] = [("partition", p) for p in partitions]
    headers = auth(w.key)
    if since is not None:
        params.append(("since_version", since))
    if limit is not None:
        params.append(("limit", limit))
    if fmt is not None and fmt.startswith("accept:"):
        headers["accept"] = fmt.split(":", 1)[1]
    elif fmt is not None:
        params.append(("format", fmt))
    shape = "csv" if fmt in ("csv", "accept:text/csv") else "ndjson"

    response = await client.get(w.path, params=params, headers=headers)
    event(f"first answer {response.status_code}, cursor {'given' if 'link' in response.headers else 'none'}")
    outside = sorted(set(partitions) - set(LICENSED))
    if outside:
        assert response.status_code == 403, response.text
        problem = response.json()
        assert problem["partition"] == outside[0] and repr(outside[0]) in problem["detail"]
        check_clean(response, named=outside[0])  # no other partition asked for is named
        return
    assert response.status_code == 200, response.text
    check_clean(response)
    scope = tuple(sorted(set(partitions))) or LICENSED
    want = expected(scope, since or 0)
    seen = records_of(response, shape, first=True)
    cursor = next_cursor(response)
    if limit is None or cursor is None:
        assert cursor is None
        assert seen == want
        return
    assert len(seen) == limit and seen == want[:limit]
    payload = cursor_payload(cursor)
    assert set(payload["p"]) <= set(LICENSED) and payload["l"] == w.licence_id

    event(f"cursor use: {use}")
    if use in ("follow", "with-partition"):
        # Following the links gives exactly the rest; extra parameters beside a cursor change nothing.
        extra = [("partition", "p-east"), ("since_version", "0")] if use == "with-partition" else []
        while cursor is not None:
            page = await client.get(w.path, params=[("cursor", cursor), *extra], headers=auth(w.key))
            assert page.status_code == 200, page.text
            check_clean(page)
            seen += records_of(page, shape, first=False)
            cursor = next_cursor(page)
        assert seen == want
        return
    if use == "edit":
        i = at % len(cursor)
        edited = cursor[:i] + ("A" if cursor[i] != "A" else "B") + cursor[i + 1:]
        refused = await client.get(w.path, params={"cursor": edited}, headers=auth(w.key))
        assert refused.status_code == 400, refused.text
    elif use == "cut":
        refused = await client.get(w.path, params={"cursor": cursor[:at % len(cursor)]}, headers=auth(w.key))
        assert refused.status_code == 400, refused.text
    elif use == "wide":
        # A genuine cursor of a wider licence (all partitions and columns) is not this licence's.
        wide = await client.get(w.path, params={"limit": 1, "partition": "p-east"}, headers=auth(w.wide_key))
        refused = await client.get(w.path, params={"cursor": next_cursor(wide)}, headers=auth(w.key))
        assert refused.status_code == 400, refused.text
    else:
        # Forged with the server's own key (a leaked key, or a cursor older than a narrowed licence):
        # the scope is checked against the licence again.
        secrets_ = runtime.snapshot.secrets
        assert secrets_ is not None
        version, key = secrets_.current(CURSOR)
        state = {**payload, "s": 0}
        if use == "forged-outside":
            state["p"] = sorted({*payload["p"], UNLICENSED[at % 2]})
        forged = cursors.encode(state, version, key)
        answer = await client.get(w.path, params={"cursor": forged}, headers=auth(w.key))
        if use == "forged-outside":
            assert answer.status_code == 403 and answer.json()["partition"] == UNLICENSED[at % 2], answer.text
            check_clean(answer, named=UNLICENSED[at % 2])
            return
        assert answer.status_code == 200, answer.text
        records_of(answer, shape, first=False)
        refused = answer
    check_clean(refused)


async def test_a_narrowed_licence_narrows_cursors_issued_before(runtime: Runtime, client: httpx.AsyncClient) -> None:
    w = await world(runtime, client)
    first = await client.get(w.path, params={"limit": 2, "partition": "p-north"}, headers=auth(w.key))
    both = await client.get(w.path, params={"limit": 2}, headers=auth(w.key))
    # Narrow the licence through the admin API: one partition, two columns.
    amended = await client.patch(f"/v1/admin/licences/{w.licence_id}", json={"partitions": ["p-north"],
                                                                             "columns": ["area", "day"]},
                                 headers=auth(w.vendor_key))
    assert amended.status_code == 200, amended.text
    licence_id = uuid.UUID(w.licence_id)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].partitions == ("p-north",))
    # Columns were narrowed too: the old cursor delivers the new columns only.
    page = await client.get(w.path, params={"cursor": next_cursor(first)}, headers=auth(w.key))
    assert page.status_code == 200, page.text
    assert all(set(orjson.loads(line)) == {"area", "day"} for line in page.content.splitlines())
    assert b'"count"' not in page.content
    # A cursor over a partition the licence no longer has is refused, naming it.
    refused = await client.get(w.path, params={"cursor": next_cursor(both)}, headers=auth(w.key))
    assert refused.status_code == 403 and refused.json()["partition"] == "p-south", refused.text

