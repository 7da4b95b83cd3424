"""Delivery under licences: incremental pulls, stable cursors, metering, quotas and rate limits."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import uuid
from typing import Any

import httpx
import orjson
import pytest

from gateway import cli
from gateway.runtime import Runtime
from tests.factories import Licensed, licensed_member, serve, wait_for_snapshot


def lines(response: httpx.Response) -> list[dict]:
    return [orjson.loads(line) for line in response.content.splitlines()]


def records_path(licensed: Licensed) -> str:
    return f"/v1/datasets/{licensed.dataset['id']}/records"


async def usage_rows(runtime: Runtime, licence_id: str) -> tuple[int, int, int]:
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT coalesce(sum(requests), 0) AS q, coalesce(sum(records), 0) AS r, "
                                  "coalesce(sum(bytes), 0) AS b FROM usage_daily WHERE licence_id = $1",
                                  uuid.UUID(licence_id))
    return row["q"], row["r"], row["b"]


async def test_incremental_pulls_return_exactly_the_new_version(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    await licensed.vendor.publish(licensed.dataset["id"], "north,2026-05-01,999,new\nsouth,2026-05-02,998,new\n"
                                                          "east,2026-05-03,997,new\n")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    response = await client.get(records_path(licensed), params={"since_version": 1}, headers=licensed.headers)
    assert sorted(r["count"] for r in lines(response)) == [998, 999]


async def test_a_cursor_stays_on_its_versions_while_new_ones_are_published(runtime: Runtime,
                                                                           client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    first = await client.get(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    await licensed.vendor.publish(licensed.dataset["id"], "north,2026-05-01,999,new\n")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    seen = lines(first)
    response = first
    while "link" in response.headers:
        response = await client.get(response.headers["link"].split(">")[0].lstrip("<"), headers=licensed.headers)
        seen.extend(lines(response))
    assert len(seen) == 30 and 999 not in {r["count"] for r in seen}
    assert len({(r["area"], r["day"], r["count"]) for r in seen}) == 30


async def test_pages_are_metered_exactly(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    delivered = 0
    for limit in (4, 9):
        response = await client.get(records_path(licensed), params={"limit": limit}, headers=licensed.headers)
        delivered += len(response.content)
    response = await client.get(records_path(licensed), headers=licensed.headers)  # a full stream
    delivered += len(response.content)
    await runtime.writer.close()  # drain: the stream's completion event is queued without waiting
    requests, records, byte_count = await usage_rows(runtime, licensed.licence["id"])
    assert (requests, records, byte_count) == (3, 4 + 9 + 30, delivered)


async def test_hard_records_quota_cuts_then_refuses_with_headers(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, records_per_month=12)
    first = await client.get(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    assert len(lines(first)) == 10 and "remaining=12" in first.headers["ratelimit-records"]
    second = await client.get(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    assert len(lines(second)) == 2 and "quota" in second.headers["quota-cut"] and "link" not in second.headers
    third = await client.get(records_path(licensed), headers=licensed.headers)
    assert third.status_code == 429 and "quota of 12 reached" in third.json()["detail"]
    assert int(third.headers["retry-after"]) > 0 and "remaining=0" in third.headers["ratelimit-records"]


async def test_a_stream_cut_at_the_hard_quota_ends_as_an_error_and_says_why(runtime: Runtime,
                                                                            client: httpx.AsyncClient) -> None:
    """Seven records fit the quota: they are delivered, and then the response breaks off (no last chunk)
    instead of ending as if the export were whole."""
    licensed = await licensed_member(runtime, client, records_per_month=7)
    received = b""
    async with serve(runtime) as served, httpx.AsyncClient(base_url=served.base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", records_path(licensed), headers=licensed.headers) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    received += chunk
    assert received.count(b"\n") == 7
    await runtime.writer.close()
    async with runtime.pool.acquire() as conn:
        entry = await conn.fetchval("SELECT entry FROM audit_events WHERE kind = 'member:records:stream-end'")
    event = orjson.loads(entry)
    assert event["delivery"]["records"] == 7 and event["delivery"]["complete"] is False
    assert event["detail"]["quota_cut"] is True and event["reason"] == "the licence's monthly quota was reached"


async def test_concurrent_pages_never_exceed_a_hard_quota(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, records_per_month=17)
    responses = await asyncio.gather(*(client.get(records_path(licensed), params={"limit": 3},
                                                  headers=licensed.headers) for _ in range(12)))
    delivered = sum(len(lines(r)) for r in responses if r.status_code == 200)
    assert delivered == 17
    assert any(r.status_code == 429 for r in responses)


async def test_soft_quota_delivers_warns_and_flags_usage(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, records_per_month=5, records_quota_hard=False)
    first = await client.get(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    assert len(lines(first)) == 10 and "quota-warning" not in first.headers
    second = await client.get(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    assert second.status_code == 200 and len(lines(second)) == 10
    assert "soft quota of 5 exceeded" in second.headers["quota-warning"]
    report = await licensed.vendor.ok("GET", "/v1/admin/usage")
    [row] = report["items"]
    assert row["records"] == 20 and row["over_soft_quota"] is True


async def test_the_usage_csv_writes_booleans_as_true_and_false(runtime: Runtime, client: httpx.AsyncClient,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    licensed = await licensed_member(runtime, client)
    await client.get(records_path(licensed), params={"limit": 2}, headers=licensed.headers)
    vendor = runtime.snapshot.vendors[licensed.vendor.id].name
    await cli.cmd_usage_report(runtime, argparse.Namespace(vendor=vendor, member=None, dataset=None, start=None,
                                                           end=None, by="month", format="csv"))
    [row] = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["records"] == "2" and row["over_soft_quota"] == "false"


async def test_rate_limit_per_credential(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, requests_per_second=0.5, burst=2)
    statuses = [(await client.get(records_path(licensed), params={"limit": 1}, headers=licensed.headers))
                for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1


async def test_usage_for_members_and_vendors(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client, records_per_month=1000)
    await client.get(records_path(licensed), params={"limit": 5}, headers=licensed.headers)
    mine = (await client.get("/v1/usage", headers=licensed.headers)).json()
    assert mine["periods"][0]["records"] == 5 and mine["current"][0]["records_left"] == 995
    metadata = (await client.get(f"/v1/datasets/{licensed.dataset['id']}", headers=licensed.headers)).json()
    assert metadata["quotas"]["records_used"] == 5
    assert [c["name"] for c in metadata["columns"]] == ["area", "day", "count"]
    report = await licensed.vendor.ok("GET", "/v1/admin/usage", params={"by": "day"})
    assert report["items"][0]["member"] == "member-a" and report["items"][0]["records"] == 5
    bad = await client.get("/v1/admin/usage", params={"from": "yesterday"}, headers=licensed.vendor.headers)
    assert bad.status_code == 400


async def test_a_client_that_disconnects_midway_is_metered_for_what_was_sent(runtime: Runtime,
                                                                             client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    big = "".join(f"north,2026-06-01,{i},{'x' * 200}\n" for i in range(60_000))
    await licensed.vendor.publish(licensed.dataset["id"], big)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    async with serve(runtime) as served:
        received = 0
        async with httpx.AsyncClient() as http, http.stream(
                "GET", f"{served.base}{records_path(licensed)}", headers=licensed.headers) as response:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > 200_000:
                    break
        await asyncio.sleep(0.5)
    await runtime.writer.close()
    async with runtime.pool.acquire() as conn:
        entry = orjson.loads(await conn.fetchval(
            "SELECT entry FROM audit_events WHERE kind = 'member:records:stream-end'"))
    _, records, byte_count = await usage_rows(runtime, licensed.licence["id"])
    delivery = entry["delivery"]
    assert delivery["complete"] is False and entry["reason"] == "the client disconnected"
    assert received <= delivery["bytes"] < len(big)  # what the server handed over, not what was planned
    assert (records, byte_count) == (delivery["records"], delivery["bytes"])


async def test_the_accept_header_chooses_the_format(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    csv_page = await client.get(records_path(licensed), params={"limit": 2},
                                headers={**licensed.headers, "Accept": "text/csv"})
    assert csv_page.headers["content-type"].startswith("text/csv")
    assert csv_page.text.splitlines()[0] == "area,day,count"
    unknown = await client.get(records_path(licensed), params={"format": "xml"}, headers=licensed.headers)
    assert unknown.status_code == 406


async def test_head_on_records_checks_and_answers_headers_but_delivers_and_meters_no_record(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    response = await client.head(records_path(licensed), params={"limit": 10}, headers=licensed.headers)
    assert response.status_code == 200 and response.content == b""
    assert "Limited provision data" in response.headers["data-notice"]
    await runtime.writer.checkpoint()
    assert await usage_rows(runtime, licensed.licence["id"]) == (1, 0, 0)  # a request, no records or bytes
    async with runtime.pool.acquire() as conn:
        entry = orjson.loads(await conn.fetchval("SELECT entry FROM audit_events WHERE event_id = $1",
                                                 uuid.UUID(response.headers["audit-event"])))
    assert entry["request"]["method"] == "HEAD" and entry["delivery"]["records"] == 0
    # Refused as GET would be: a revoked licence gets no headers of a delivery either.
    await licensed.vendor.ok("POST", f"/v1/admin/licences/{licensed.licence['id']}/revoke", json={"reason": "end"})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licensed.licence["id"])].status
                            == "revoked")
    refused = await client.head(records_path(licensed), headers=licensed.headers)
    assert refused.status_code == 403 and "data-notice" not in refused.headers


# Text holding line breaks and TABs: a record is counted once on every path, however many lines it spans.

NOTES = ["一行目\n二行目", "tab\there\tand there", "\n\nblank lines inside\n", 'quoted "x",\nand a comma']
ALL_COLUMNS = ["area", "day", "count", "secret_note"]


async def _with_multiline_notes(runtime: Runtime, client: httpx.AsyncClient, **licence: Any) -> Licensed:
    """30 plain records of north and south, then 4 of north whose notes hold line breaks and TABs."""
    licensed = await licensed_member(runtime, client, columns=ALL_COLUMNS, **licence)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(
        ["north", "2026-05-01", 900 + i, note] for i, note in enumerate(NOTES))
    await licensed.vendor.publish(licensed.dataset["id"], buffer.getvalue())
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.datasets[uuid.UUID(licensed.dataset["id"])]
                            .latest_version == 2)
    return licensed


def _csv_records(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(), newline="")))


async def _all_pages(client: httpx.AsyncClient, licensed: Licensed, fmt: str) -> bytes:
    response = await client.get(records_path(licensed), params={"format": fmt, "limit": 3}, headers=licensed.headers)
    body = response.content
    while "next" in response.links:
        response = await client.get(response.links["next"]["url"], headers=licensed.headers)
        body += response.content
    return body


async def test_text_with_line_breaks_arrives_exactly_and_each_record_is_metered_once_on_every_path(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await _with_multiline_notes(runtime, client)
    ndjson = await client.get(records_path(licensed), headers=licensed.headers)
    assert ndjson.status_code == 200
    received = lines(ndjson)  # NDJSON escapes the line breaks: one record a line
    assert len(received) == 34 and [r["secret_note"] for r in received if r["count"] >= 900] == NOTES
    assert b"\t" not in ndjson.content and ndjson.content.count(b"\n") == 34
    csv_stream = await client.get(records_path(licensed), params={"format": "csv"}, headers=licensed.headers)
    rows = _csv_records(csv_stream.content)  # CSV quotes them: a record spans lines
    assert rows[0] == ALL_COLUMNS and len(rows) == 35
    assert [row[3] for row in rows[1:] if int(row[2]) >= 900] == NOTES
    assert csv_stream.content.count(b"\n") > 35
    ndjson_pages = await _all_pages(client, licensed, "ndjson")
    csv_pages = await _all_pages(client, licensed, "csv")
    assert ndjson_pages == ndjson.content and csv_pages == csv_stream.content
    await runtime.writer.close()  # drain: the streams' completion events are queued without waiting
    requests, records, byte_count = await usage_rows(runtime, licensed.licence["id"])
    assert records == 4 * 34  # two streams and two runs of pages, each of 34 records
    assert byte_count == len(ndjson.content) + len(csv_stream.content) + len(ndjson_pages) + len(csv_pages)
    assert requests == 2 + 2 * 12  # 34 records in pages of 3: 12 pages each


async def test_a_csv_export_cut_at_the_hard_quota_cuts_between_records_that_span_lines(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """North's 15 plain records, then two whose notes hold line breaks, fill the quota of 17: the cut
    falls after the second of them, whole, not at one of their line breaks."""
    licensed = await _with_multiline_notes(runtime, client, records_per_month=17)
    received = b""
    async with serve(runtime) as served, httpx.AsyncClient(base_url=served.base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", records_path(licensed), params={"format": "csv"},
                                   headers=licensed.headers) as response:
                async for chunk in response.aiter_raw():
                    received += chunk
    rows = _csv_records(received)
    assert len(rows) == 1 + 17 and [row[3] for row in rows[-2:]] == NOTES[:2]
    await runtime.writer.close()
    _, records, byte_count = await usage_rows(runtime, licensed.licence["id"])
    assert (records, byte_count) == (17, len(received))
