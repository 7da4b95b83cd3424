"""Delta Sharing: the official `delta-sharing` connector from PyPI against the real gateway over HTTP.

The gateway is served by uvicorn in the test's event loop; the connector is synchronous (requests for
the API, fsspec/aiohttp for the files), so it runs in a thread. Nothing is mocked: the connector opens
the signed file URLs without any Authorization header, exactly as it would against a real server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import delta_sharing
import httpx
import orjson
import pytest
from delta_sharing.protocol import DeltaSharingProfile, Table
from delta_sharing.rest_client import DataSharingRestClient
from requests.exceptions import HTTPError

from gateway import demo, parquet_files, sharing
from gateway.runtime import Runtime
from tests.factories import Served, auth, licensed_member, records_path_of, serve, wait_for_snapshot

T = TypeVar("T")
SHARE = "example-mobile"
TABLE = demo.DATASET


async def in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, *args, **kwargs)


async def profile_file(served: Served, api_key: str, folder: Path) -> Path:
    async with httpx.AsyncClient(base_url=served.base) as http:
        response = await http.get("/v1/delta-sharing/profile", headers=auth(api_key))
    assert response.status_code == 200, response.text
    profile = response.json()
    assert profile["shareCredentialsVersion"] == 1 and profile["endpoint"] == served.base + "/delta-sharing"
    assert profile["bearerToken"].startswith("lpds_") and profile["expirationTime"].endswith("Z")
    path = folder / f"{uuid.uuid4().hex[:8]}.share"
    path.write_text(json.dumps(profile))
    return path


def rest_client(profile: Path) -> DataSharingRestClient:
    client = DataSharingRestClient(DeltaSharingProfile.read_from_file(str(profile)))
    client._sleeper = lambda _ms: None  # no backoff waits in tests (and 403s are not retried anyway)
    return client


def normalised(frame: Any) -> collections.Counter[tuple[Any, ...]]:
    """Rows of a connector DataFrame in the native API's JSON values (timestamps as RFC 3339 UTC)."""
    rows = []
    for record in frame.to_dict("records"):
        row = []
        for name in frame.columns:
            value = record[name]
            if hasattr(value, "tz_convert"):
                value = value.tz_convert("UTC").isoformat().replace("+00:00", "Z")
            elif hasattr(value, "isoformat"):
                value = value.isoformat()
            elif hasattr(value, "item"):
                value = value.item()
            row.append(value)
        rows.append(tuple(row))
    return collections.Counter(rows)


async def native_records(served: Served, path: str, api_key: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=served.base) as http:
        response = await http.get(path, headers=auth(api_key))
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines()]


async def audit_entries(runtime: Runtime, kind: str) -> list[dict[str, Any]]:
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT entry FROM audit_events WHERE kind = $1 ORDER BY seq", kind)
    return [orjson.loads(row["entry"]) for row in rows]


async def test_the_connector_reads_exactly_the_licensed_partitions_and_columns(
        demo_runtime: Runtime, demo_content: dict[str, Any], tmp_path: Path) -> None:
    async with serve(demo_runtime) as served:
        for member in demo_content["members"]:
            profile = await profile_file(served, member["api_key"], tmp_path)
            client = delta_sharing.SharingClient(str(profile))
            tables = await in_thread(client.list_all_tables)
            assert tables == [Table(name=TABLE, share=SHARE, schema="default")]
            assert [s.name for s in await in_thread(client.list_shares)] == [SHARE]
            frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{SHARE}.default.{TABLE}")
            columns = list(demo.COLUMNS_BY_MEMBER[member["name"]])
            assert list(frame.columns) == columns
            assert set(frame["prefecture"]) == set(member["partitions"])
            native = await native_records(served, f"/v1/datasets/{demo_content['dataset']}/records",
                                          member["api_key"])
            assert normalised(frame) == collections.Counter(tuple(r[c] for c in columns) for r in native)
            assert str(frame["hour"].dtype).startswith("datetime64") and str(frame["population"].dtype) == "int64"


async def test_usage_and_audit_show_each_file_delivery(demo_runtime: Runtime, demo_content: dict[str, Any],
                                                       tmp_path: Path) -> None:
    member = demo_content["members"][0]
    async with serve(demo_runtime) as served:
        profile = await profile_file(served, member["api_key"], tmp_path)
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{SHARE}.default.{TABLE}")
        listed = await in_thread(rest_client(profile).list_files_in_table, Table(TABLE, SHARE, "default"))
    await demo_runtime.writer.close()  # drain: completion events are queued without waiting
    ends = await audit_entries(demo_runtime, "member:sharing-file:stream-end")
    starts = await audit_entries(demo_runtime, "member:sharing-file:deliver")
    # Every file was delivered, each under its own URL, and its records were counted exactly once.
    assert {e["detail"]["file_url"] for e in ends} and len({e["detail"]["file_url"] for e in ends}) == len(listed.add_files)
    assert sum(e["delivery"]["records"] for e in ends) == len(frame)
    assert all(e["licence_id"] == member["licence_id"] for e in ends)
    # Each file went out whole at least once. (The connector also opens streaming GETs that it closes
    # unread: those are recorded incomplete, metered for what was sent, and charge no records.)
    assert {e["detail"]["file_url"] for e in ends if e["delivery"]["complete"]} == {e["detail"]["file_url"] for e in ends}
    assert all(e["delivery"]["records"] == 0 for e in ends if not e["delivery"]["bytes"])
    assert all(e["actor"]["kind"] == "sharing" and e["member_id"] == member["member_id"] for e in ends)
    assert {e["event_id"] for e in starts if e["request"]["method"] == "GET"} == \
        {e["detail"]["authorised_by"] for e in ends}
    async with demo_runtime.pool.acquire() as conn:
        usage = await conn.fetchrow("SELECT sum(records)::bigint AS records, sum(bytes)::bigint AS bytes, "
                                    "sum(requests)::bigint AS requests FROM usage_daily WHERE licence_id = $1",
                                    uuid.UUID(member["licence_id"]))
    assert usage["records"] == len(frame)
    assert usage["bytes"] == sum(e["delivery"]["bytes"] for e in ends) > 0
    queries = await audit_entries(demo_runtime, "member:sharing-table:query")
    assert queries and all(q["outcome"] == "allow" for q in queries)
    assert set(queries[0]["partitions"]) == set(member["partitions"])


async def test_a_second_member_sees_only_its_own(demo_runtime: Runtime, demo_content: dict[str, Any],
                                                 tmp_path: Path) -> None:
    shibuya, namba = demo_content["members"]
    async with serve(demo_runtime) as served:
        mine, theirs = [await profile_file(served, m["api_key"], tmp_path) for m in (shibuya, namba)]
        table = Table(TABLE, SHARE, "default")
        listed = await in_thread(rest_client(theirs).list_files_in_table, table)
        assert {f.partition_values["prefecture"] for f in listed.add_files} == {"27"}
        assert "mesh_code" not in listed.metadata.schema_string
        # Asking for another member's prefecture prunes to nothing: hints only narrow the licence.
        tokyo = json.dumps({"op": "equal", "children": [{"op": "column", "name": "prefecture", "valueType": "string"},
                                                        {"op": "literal", "value": "13", "valueType": "string"}]})
        assert (await in_thread(rest_client(theirs).list_files_in_table, table, jsonPredicateHints=tokyo)).add_files == []
        frame = await in_thread(delta_sharing.load_as_pandas, f"{theirs}#{SHARE}.default.{TABLE}",
                                jsonPredicateHints=tokyo)
        assert len(frame) == 0 and list(frame.columns) == ["prefecture", "hour", "population"]
        # A file URL of the first member presented with the second member's key is refused, as a missing one.
        url = (await in_thread(rest_client(mine).list_files_in_table, table)).add_files[0].url
        async with httpx.AsyncClient() as http:
            other = await http.get(url, headers=auth(namba["api_key"]))
            assert other.status_code == 404 and other.json() == {"errorCode": "RESOURCE_DOES_NOT_EXIST",
                                                                 "message": "no such file"}
            assert (await http.get(url)).status_code == 200


async def test_predicate_hints_prune_partitions(demo_runtime: Runtime, demo_content: dict[str, Any],
                                                tmp_path: Path) -> None:
    member = demo_content["members"][0]  # Tokyo (13) and Kanagawa (14)
    table = Table(TABLE, SHARE, "default")

    def partitions(response: Any) -> set[str]:
        return {f.partition_values["prefecture"] for f in response.add_files}

    async with serve(demo_runtime) as served:
        profile = await profile_file(served, member["api_key"], tmp_path)
        client = rest_client(profile)
        everything = await in_thread(client.list_files_in_table, table)
        assert partitions(everything) == {"13", "14"}
        kanagawa = json.dumps({"op": "equal", "children": [
            {"op": "column", "name": "prefecture", "valueType": "string"},
            {"op": "literal", "value": "14", "valueType": "string"}]})
        assert partitions(await in_thread(client.list_files_in_table, table, jsonPredicateHints=kanagawa)) == {"14"}
        either = json.dumps({"op": "or", "children": [json.loads(kanagawa), {"op": "equal", "children": [
            {"op": "column", "name": "prefecture", "valueType": "string"},
            {"op": "literal", "value": "27", "valueType": "string"}]}]})
        assert partitions(await in_thread(client.list_files_in_table, table, jsonPredicateHints=either)) == {"14"}
        for hint, expected in ((["prefecture = '13'"], {"13"}), (["prefecture IN ('14', '27')"], {"14"}),
                               (["'13' = prefecture"], {"13"}), (["prefecture <> '13'"], {"14"}),
                               (["population > 5"], {"13", "14"}),   # another column: not pruned
                               (["prefecture LIKE '1%'"], {"13", "14"})):  # not understood: not pruned
            assert partitions(await in_thread(client.list_files_in_table, table, predicateHints=hint)) == expected, hint
        not_json = await in_thread(client.list_files_in_table, table, jsonPredicateHints="{not json")
        assert partitions(not_json) == {"13", "14"}
        limited = await in_thread(client.list_files_in_table, table, limitHint=1)
        assert len(limited.add_files) == 1
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{SHARE}.default.{TABLE}",
                                jsonPredicateHints=kanagawa)
        assert set(frame["prefecture"]) == {"14"}


async def test_tampered_expired_and_revoked_file_urls_are_refused(
        demo_runtime: Runtime, demo_content: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = demo_content["members"][0]
    table = Table(TABLE, SHARE, "default")
    async with serve(demo_runtime) as served, httpx.AsyncClient() as http:
        profile = await profile_file(served, member["api_key"], tmp_path)
        url = (await in_thread(rest_client(profile).list_files_in_table, table)).add_files[0].url
        head, token = url.rsplit("/", 1)
        tampered = head + "/" + token[:30] + ("A" if token[30] != "A" else "B") + token[31:]
        refused = await http.get(tampered)
        assert refused.status_code == 404 and refused.json() == {"errorCode": "RESOURCE_DOES_NOT_EXIST",
                                                                 "message": "no such file"}
        monkeypatch.setattr(sharing, "FILE_URL_SECONDS", -1)
        expired_url = (await in_thread(rest_client(profile).list_files_in_table, table)).add_files[0].url
        expired = await http.get(expired_url)
        assert expired.status_code == 403 and "expired" in expired.json()["message"]
        # The connector turns the refusal into an error rather than data.
        with pytest.raises(FileNotFoundError):  # fsspec's reading of the 403 on the file URL
            await in_thread(delta_sharing.load_as_pandas, f"{profile}#{SHARE}.default.{TABLE}")
        monkeypatch.setattr(sharing, "FILE_URL_SECONDS", 900)
        # Revoking the key that obtained a URL stops the URL at once.
        fresh = (await in_thread(rest_client(profile).list_files_in_table, table)).add_files[0].url
        assert (await http.head(fresh)).status_code == 200
        keys = await http.get(served.base + "/v1/admin/keys", headers=auth(demo_content["vendor_admin_key"]))
        sharing_key = next(k for k in keys.json()["items"] if k["kind"] == "sharing")
        revoked = await http.post(served.base + f"/v1/admin/keys/{sharing_key['id']}/revoke",
                                  headers=auth(demo_content["vendor_admin_key"]))
        assert revoked.status_code == 200, revoked.text
        await wait_for_snapshot(demo_runtime, lambda: demo_runtime.snapshot.credentials[
            uuid.UUID(sharing_key["id"])].revoked_at is not None)
        gone = await http.get(fresh)
        assert gone.status_code == 403 and "revoked" in gone.json()["message"]
        with pytest.raises(HTTPError) as failure:
            await in_thread(delta_sharing.SharingClient(str(profile)).list_shares)
        assert failure.value.response.status_code == 401
    await demo_runtime.writer.close()
    denied = [e for e in await audit_entries(demo_runtime, "member:sharing-file:deliver") if e["outcome"] == "deny"]
    reasons = [e["reason"] for e in denied]
    assert "no such file" in reasons and any("expired" in r for r in reasons) and any("revoked" in r for r in reasons)
    # A refused URL that named a credential is recorded against it; a tampered one against nobody.
    assert {e["actor"]["kind"] for e in denied if e["reason"] == "no such file"} == {"anonymous"}
    assert all(e["member_id"] == member["member_id"] for e in denied if e["reason"] != "no such file")


async def test_files_answer_head_and_ranges_and_are_built_once(
        demo_runtime: Runtime, demo_content: dict[str, Any], tmp_path: Path) -> None:
    member = demo_content["members"][1]
    table = Table(TABLE, SHARE, "default")
    async with serve(demo_runtime) as served, httpx.AsyncClient() as http:
        client = rest_client(await profile_file(served, member["api_key"], tmp_path))
        [part] = (await in_thread(client.list_files_in_table, table)).add_files
        builds = served.state.cache.builds
        assert builds == 1
        again = await in_thread(client.list_files_in_table, table)
        assert served.state.cache.builds == builds and again.add_files[0].id == part.id
        assert again.add_files[0].url != part.url  # every query issues its own URLs
        head = await http.head(part.url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == part.size
        assert head.headers["accept-ranges"] == "bytes" and member["licence_id"] in head.headers["licence"]
        first = await http.get(part.url, headers={"Range": "bytes=0-99"})
        assert first.status_code == 206 and first.content[:4] == b"PAR1" and len(first.content) == 100
        assert first.headers["content-range"] == f"bytes 0-99/{part.size}"
        tail = await http.get(part.url, headers={"Range": "bytes=-8"})
        assert tail.status_code == 206 and tail.content[4:] == b"PAR1"
        whole = await http.get(part.url)
        assert whole.status_code == 200 and len(whole.content) == part.size
        assert whole.content[:100] == first.content and whole.content[-8:] == tail.content
        beyond = await http.get(part.url, headers={"Range": f"bytes={part.size}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{part.size}"
        cached = list((demo_runtime.config.home / parquet_files.CACHE_FOLDER).rglob("*.parquet"))
        assert len(cached) == 1 and cached[0].stat().st_size == part.size
    await demo_runtime.writer.close()
    ends = await audit_entries(demo_runtime, "member:sharing-file:stream-end")
    assert len({e["detail"]["file_url"] for e in ends}) == 1
    # Three ranged or full GETs of one URL: its records were counted on the first only; bytes on each.
    assert [e["delivery"]["records"] for e in ends] == [json.loads(part.stats)["numRecords"], 0, 0]
    assert [e["delivery"]["bytes"] for e in ends] == [100, 8, part.size]


async def test_table_version_metadata_and_history(runtime: Runtime, client: httpx.AsyncClient,
                                                  tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    await licensed.vendor.publish(licensed.dataset["id"], "north,2026-05-01,999,new\neast,2026-05-02,998,new\n")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    share = licensed.vendor.runtime.snapshot.vendors[licensed.vendor.id].name
    async with serve(runtime) as served:
        profile = await profile_file(served, licensed.key, tmp_path)
        [table] = await in_thread(delta_sharing.SharingClient(str(profile)).list_all_tables)
        assert table.name == "footfall" and table.share == share and table.schema == "default"
        url = f"{profile}#{table.share}.default.footfall"
        assert await in_thread(delta_sharing.get_table_version, url) == 2
        prefix = f"{served.base}/delta-sharing/shares/{share.upper()}/schemas/DEFAULT/tables/footfall"
        bearer = auth(json.loads(profile.read_text())["bearerToken"])
        async with httpx.AsyncClient() as http:
            head = await http.head(prefix, headers=bearer)
            assert head.status_code == 200 and head.headers["delta-table-version"] == "2"
            metadata = await http.get(prefix + "/metadata", headers=bearer)
        protocol, meta = (json.loads(line) for line in metadata.text.splitlines())
        assert protocol == {"protocol": {"minReaderVersion": 1}}
        assert meta["metaData"]["partitionColumns"] == ["area"]
        assert [f["name"] for f in json.loads(meta["metaData"]["schemaString"])["fields"]] == ["area", "day", "count"]
        assert [f["type"] for f in json.loads(meta["metaData"]["schemaString"])["fields"]] == ["string", "date", "long"]
        latest = await in_thread(delta_sharing.load_as_pandas, url)
        first = await in_thread(delta_sharing.load_as_pandas, url, version=1)
        assert len(latest) == 31 and len(first) == 30 and 999 in set(latest["count"]) and 999 not in set(first["count"])
        listed = await in_thread(rest_client(profile).list_files_in_table, Table("footfall", share, "default"),
                                 version=1)
        assert listed.delta_table_version == 1 and {f.version for f in listed.add_files} == {1}
        with pytest.raises(HTTPError) as failure:
            await in_thread(delta_sharing.load_as_pandas, url, version=7)
        assert failure.value.response.status_code == 400


async def test_many_files_per_partition_read_back_exactly(runtime: Runtime, client: httpx.AsyncClient,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet_files, "ROWS_PER_FILE", 4)
    licensed = await licensed_member(runtime, client)
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    async with serve(runtime) as served:
        profile = await profile_file(served, licensed.key, tmp_path)
        listed = await in_thread(rest_client(profile).list_files_in_table, Table("footfall", share, "default"))
        assert len(listed.add_files) == 8  # 15 records in each of 2 partitions: 4 + 4 + 4 + 3
        assert sum(json.loads(f.stats)["numRecords"] for f in listed.add_files) == 30
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.footfall")
        native = await native_records(served, records_path_of(licensed), licensed.key)
    assert list(frame.columns) == ["area", "day", "count"]
    assert normalised(frame) == collections.Counter((r["area"], r["day"], r["count"]) for r in native)


async def test_quota_and_terms_refusals_are_403_in_the_protocols_format(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, records_per_month=20)
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    profile = (await client.get("/v1/delta-sharing/profile", headers=licensed.headers)).json()
    bearer = auth(profile["bearerToken"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(profile["bearerToken"].split("_")[1]))
    query = f"/delta-sharing/shares/{share}/schemas/default/tables/footfall/query"
    listed = await client.post(query, json={}, headers=bearer)
    assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/x-ndjson")
    urls = [json.loads(line)["file"]["url"].removeprefix("http://gateway.test") for line in listed.text.splitlines()[2:]]
    assert len(urls) == 2  # 15 records each, under a quota of 20
    first = await client.get(urls[0])
    assert first.status_code == 200
    second = await client.get(urls[1])
    assert second.status_code == 403 and second.json()["errorCode"] == "QUOTA_EXCEEDED"
    assert "15 records but only 5 are left" in second.json()["message"]
    await client.get(records_path_of(licensed), params={"limit": 5}, headers=licensed.headers)
    refused = await client.post(query, json={}, headers=bearer)
    assert refused.status_code == 403 and refused.json()["errorCode"] == "QUOTA_EXCEEDED"
    assert "quota of 20 reached" in refused.json()["message"]

    pending = await licensed_member(runtime, client, accept=False)
    share = runtime.snapshot.vendors[pending.vendor.id].name
    profile = (await client.get("/v1/delta-sharing/profile", headers=pending.headers)).json()
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(profile["bearerToken"].split("_")[1]))
    terms = await client.post(f"/delta-sharing/shares/{share}/schemas/default/tables/footfall/query",
                              headers=auth(profile["bearerToken"]))
    assert terms.status_code == 403 and terms.json()["errorCode"] == "PERMISSION_DENIED"
    assert f"/v1/licences/{pending.licence['id']}/accept" in terms.json()["message"]


async def test_errors_are_in_the_protocols_format_and_audited(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    cases = [
        ("/delta-sharing/shares", {}, 401, "UNAUTHENTICATED"),
        ("/delta-sharing/shares", auth("lpdm_" + "x" * 70), 401, "UNAUTHENTICATED"),
        ("/delta-sharing/shares", licensed.vendor.headers, 403, "PERMISSION_DENIED"),
        ("/delta-sharing/shares/nobody", licensed.headers, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("/delta-sharing/shares?maxResults=-1", licensed.headers, 400, "INVALID_PARAMETER_VALUE"),
        ("/delta-sharing/shares?pageToken=forged", licensed.headers, 400, "INVALID_PARAMETER_VALUE"),
        ("/delta-sharing/nowhere", licensed.headers, 404, "RESOURCE_DOES_NOT_EXIST"),
    ]
    for path, headers, status, code in cases:
        response = await client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
        body = response.json()
        assert set(body) == {"errorCode", "message"} and body["errorCode"] == code, (path, body)
        assert response.headers["content-type"] == "application/json" and "audit-event" in response.headers
    # Elsewhere errors stay problem+json.
    assert (await client.get("/v1/delta-sharing/profile")).headers["content-type"] == "application/problem+json"
    await runtime.writer.close()
    async with runtime.pool.acquire() as conn:
        kinds = collections.Counter(await conn.fetchval(
            "SELECT array_agg(kind) FROM audit_events "
            "WHERE convert_from(entry, 'UTF8')::jsonb #>> '{request,path}' LIKE '/delta-sharing%'"))
    assert kinds["member:sharing:list"] >= 4 and kinds["auth:credential:reject"] >= 1


async def test_shares_page_and_the_profile_key_is_a_revocable_sharing_key(runtime: Runtime,
                                                                          client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    second = await licensed.vendor.dataset("visits", rows="north,2026-04-01,1,x\n")
    await licensed.vendor.licence(licensed.member["id"], second["id"], ["north"])
    await wait_for_snapshot(runtime, lambda: len(runtime.snapshot.licences_of(uuid.UUID(licensed.member["id"]))) == 2)
    response = await client.get("/v1/delta-sharing/profile", headers=licensed.headers)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    token = response.json()["bearerToken"]
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(token.split("_")[1]))
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    seen, page_token = [], None
    while True:
        params = {"maxResults": 1, **({"pageToken": page_token} if page_token else {})}
        page = (await client.get(f"/delta-sharing/shares/{share}/all-tables", params=params, headers=auth(token))).json()
        seen += [t["name"] for t in page["items"]]
        page_token = page.get("nextPageToken")
        if not page_token:
            break
    assert seen == ["footfall", "visits"]
    # A sharing key cannot mint more keys; the vendor sees and can revoke it like any key.
    assert (await client.get("/v1/delta-sharing/profile", headers=auth(token))).status_code == 403
    keys = await licensed.vendor.ok("GET", "/v1/admin/keys")
    [issued] = [k for k in keys["items"] if k["kind"] == "sharing"]
    assert issued["member_id"] == licensed.member["id"] and issued["expires_at"]
    await licensed.vendor.ok("POST", f"/v1/admin/keys/{issued['id']}/revoke")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(token.split("_")[1]).revoked_at)
    assert (await client.get("/delta-sharing/shares", headers=auth(token))).status_code == 401
    await runtime.writer.close()
    async with runtime.pool.acquire() as conn:
        issued_events = await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE kind = 'vendor:key:issue' "
            "AND convert_from(entry, 'UTF8')::jsonb #>> '{actor,kind}' = 'member'")
        profile_events = await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE kind = 'member:sharing-profile:issue' "
            "AND convert_from(entry, 'UTF8')::jsonb ->> 'outcome' = 'allow'")
    assert issued_events == 1 and profile_events == 1


def test_predicates_are_best_effort_and_never_widen() -> None:
    column = sharing.PartitionColumn("area", "text")
    eq = {"op": "equal", "children": [{"op": "column", "name": "AREA", "valueType": "string"},
                                      {"op": "literal", "value": "north", "valueType": "string"}]}
    assert sharing.json_hint(eq, column, "north") is True and sharing.json_hint(eq, column, "south") is False
    assert sharing.json_hint({"op": "not", "children": [eq]}, column, "south") is True
    other = {"op": "lessThan", "children": [{"op": "column", "name": "count", "valueType": "int"},
                                            {"op": "literal", "value": "3", "valueType": "int"}]}
    assert sharing.json_hint({"op": "and", "children": [eq, other]}, column, "south") is False
    assert sharing.json_hint({"op": "and", "children": [eq, other]}, column, "north") is None
    assert sharing.json_hint({"op": "or", "children": [eq, other]}, column, "south") is None
    assert sharing.json_hint({"op": "in", "children": [eq["children"][0], eq["children"][1],
                                                       {"op": "literal", "value": "east"}]}, column, "east") is True
    assert sharing.json_hint({"op": "mystery"}, column, "north") is None
    number = sharing.PartitionColumn("year", "integer")
    assert sharing.sql_hint("year >= 2020", number, "2021") is True and sharing.sql_hint("year < 10", number, "2021") is False
    assert sharing.sql_hint("year IN (1, 2)", number, "3") is False and sharing.sql_hint("year IS NULL", number, "3") is False
    assert sharing.sql_hint("year = 'x'", number, "3") is None
    assert sharing.keeps(["area = 'north'", "nonsense"], None, column, "north")
    assert not sharing.keeps(["area = 'north'"], None, column, "south")
    assert sharing.byte_range("bytes=5-", 10) == (5, 10) and sharing.byte_range("bytes=-3", 10) == (7, 10)
    assert sharing.byte_range("bytes=2-400", 10) == (2, 10) and sharing.byte_range(None, 10) is None
    with pytest.raises(sharing.RangeNotSatisfiable):
        sharing.byte_range("bytes=10-", 10)


async def test_an_oauth_access_token_reads_through_the_connector(runtime: Runtime, client: httpx.AsyncClient,
                                                                 tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    created = await licensed.vendor.ok("POST", "/v1/admin/oauth-clients",
                                       json={"member_id": licensed.member["id"], "label": "etl"})
    await wait_for_snapshot(runtime, lambda: created["client_id"] in runtime.snapshot.oauth_clients_by_client_id)
    issued = await client.post("/oauth/token", auth=(created["client_id"], created["client_secret"]),
                               data={"grant_type": "client_credentials"})
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    async with serve(runtime) as served:
        profile = tmp_path / "oauth.share"
        profile.write_text(json.dumps({"shareCredentialsVersion": 1, "endpoint": served.base + "/delta-sharing",
                                       "bearerToken": token}))
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.footfall")
        assert len(frame) == 30 and set(frame["area"]) == {"north", "south"}
        async with httpx.AsyncClient() as http:
            minted = await http.get(served.base + "/v1/delta-sharing/profile", headers=auth(token))
        assert minted.status_code == 403  # a short-lived token does not mint a thirty-day key
    await runtime.writer.close()
    ends = await audit_entries(runtime, "member:sharing-file:stream-end")
    assert ends and {e["actor"]["credential_id"] for e in ends} == {created["id"]}
    assert sum(e["delivery"]["records"] for e in ends) == 30


async def test_files_whose_records_fill_the_quota_are_still_read_whole(runtime: Runtime, client: httpx.AsyncClient,
                                                                       tmp_path: Path) -> None:
    # Two files of 15 records under a hard quota of 30: the later ranges of each file (the connector
    # reads a file with several requests) need bytes only, so the read completes, and the next stops.
    licensed = await licensed_member(runtime, client, records_per_month=30)
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    async with serve(runtime) as served:
        profile = await profile_file(served, licensed.key, tmp_path)
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.footfall")
        assert len(frame) == 30
        with pytest.raises(HTTPError) as failure:
            await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.footfall")
        assert failure.value.response.status_code == 403
        assert failure.value.response.json()["errorCode"] == "QUOTA_EXCEEDED"


async def test_text_with_line_breaks_and_tabs_reads_back_exactly_and_is_counted_once(
        runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path) -> None:
    notes = ["一行目\n二行目", "tab\there", "\n\nblank lines inside\n", 'quoted "x",\nand a comma']
    licensed = await licensed_member(runtime, client, columns=["area", "day", "count", "secret_note"])
    rows = "".join(f'north,2026-05-01,{900 + i},"{note.replace(chr(34), chr(34) * 2)}"\n' for i, note in enumerate(notes))
    await licensed.vendor.publish(licensed.dataset["id"], rows)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    share = runtime.snapshot.vendors[licensed.vendor.id].name
    async with serve(runtime) as served:
        profile = await profile_file(served, licensed.key, tmp_path)
        frame = await in_thread(delta_sharing.load_as_pandas, f"{profile}#{share}.default.footfall")
        native = await native_records(served, records_path_of(licensed), licensed.key)
    assert len(frame) == len(native) == 34
    assert sorted(frame[frame["count"] >= 900]["secret_note"]) == sorted(notes)
    assert normalised(frame) == collections.Counter(
        (r["area"], r["day"], r["count"], r["secret_note"]) for r in native)
    await runtime.writer.close()  # drain: completion events are queued without waiting
    ends = await audit_entries(runtime, "member:sharing-file:stream-end")
    assert sum(e["delivery"]["records"] for e in ends) == 34
    async with runtime.pool.acquire() as conn:
        metered = await conn.fetchval("SELECT sum(records) FROM usage_daily WHERE licence_id = $1",
                                      uuid.UUID(licensed.licence["id"]))
    assert metered == 34 + 34  # the connector's files, and the native read beside them
