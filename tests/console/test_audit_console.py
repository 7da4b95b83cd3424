"""The console's audit log: a search of the vendor's own events, paged by keyset, and an event's entry,
receipt and coverage."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from typing import Any

import httpx
import orjson

from gateway import members
from gateway.actors import cli_actor
from gateway.audit.events import PER_REQUEST_KINDS, EventKind, Outcome
from gateway.http.console.audit import search_query
from gateway.runtime import Runtime
from gateway.times import JST
from tests.conftest import client_for
from tests.console.support import console_user, sign_in, until_covered
from tests.factories import auth, licensed_member, records_path_of

EVENT_LINK = re.compile(r'href="/console/audit/events/([0-9a-f-]{36})"')


def events_table(page: httpx.Response) -> str:
    found = re.search(r'<table id="events">(.*?)</table>', page.text, re.DOTALL)
    assert found, page.text
    return found.group(1)


async def _pull(demo_client: httpx.AsyncClient, demo_content: dict[str, Any], limit: int = 2) -> str:
    member = demo_content["members"][0]
    answer = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", params={"limit": limit},
                                   headers=auth(member["api_key"]))
    assert answer.status_code == 200, answer.text
    return str(answer.headers["audit-event"])


async def test_the_search_filters_by_kind_member_outcome_and_period(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    delivered = await _pull(demo_client, demo_content)
    denied = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", headers=auth("lpd_nonsense"))
    assert denied.status_code == 401
    member_id = demo_content["members"][0]["member_id"]
    other_member = demo_content["members"][1]["member_id"]
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "compliance"))
        by_kind = await browser.get("/console/audit/", params={"kind": "member:records:deliver", "member": member_id})
        assert by_kind.status_code == 200
        assert delivered in EVENT_LINK.findall(events_table(by_kind))
        assert all(k == "member:records:deliver" for k in re.findall(r"<td>(member:[a-z:-]+)</td>", events_table(by_kind)))
        # Another member, an outcome it never had, a period before the delivery: not there.
        for params in ({"kind": "member:records:deliver", "member": other_member},
                       {"kind": "member:records:deliver", "outcome": "error"},
                       {"from": "2020-01-01", "to": "2020-01-31"}):
            assert delivered not in (await browser.get("/console/audit/", params=params)).text
        today = (await demo_runtime.pool.fetchval("SELECT now()")).astimezone(JST).date().isoformat()
        assert delivered in (await browser.get("/console/audit/", params={"from": today, "to": today})).text
        wrong = await browser.get("/console/audit/", params={"from": "yesterday", "kind": "no such kind"})
        assert wrong.status_code == 400 and "2026-04-01" in wrong.text


async def test_pages_follow_by_keyset_newest_first(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    for _ in range(55):  # more than a page
        await _pull(demo_client, demo_content, limit=1)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "vendor-admin"))
        seen: list[str] = []
        page = await browser.get("/console/audit/")
        while True:
            ids = EVENT_LINK.findall(events_table(page))
            assert len(ids) <= 50
            seen += ids
            following = re.search(r'<a href="(/console/audit/\?[^"]+)" rel="next">次へ</a>', page.text)
            if following is None:
                break
            page = await browser.get(html.unescape(following.group(1)))
    total = await demo_runtime.pool.fetch(
        "SELECT event_id FROM audit_events WHERE vendor_id = $1 AND at >= date_trunc('day', now() AT TIME ZONE "
        "'Asia/Tokyo') AT TIME ZONE 'Asia/Tokyo' - interval '6 days' ORDER BY at DESC, event_id DESC",
        uuid.UUID(demo_content["vendor_id"]))
    # Every event of the week once, in order (those the browsing itself added came after the first page).
    assert len(seen) == len(set(seen)) and len(seen) > 50
    expected = [str(r["event_id"]) for r in total]
    assert [i for i in expected if i in set(seen)] == seen


async def test_an_event_shows_its_entry_receipt_and_coverage_and_another_vendors_is_not_found(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    delivered = await _pull(demo_client, demo_content)
    foreign = await licensed_member(demo_runtime, demo_client)
    theirs = (await demo_client.get(records_path_of(foreign), params={"limit": 1}, headers=foreign.headers))
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "compliance"))
        page = await until_covered(browser, f"/console/audit/events/{delivered}")
        assert page.status_code == 200
        entry = re.search(r'<pre id="entry"[^>]*>(.*?)</pre>', page.text, re.DOTALL)
        receipt = re.search(r'<pre id="receipt"[^>]*>(.*?)</pre>', page.text, re.DOTALL)
        assert entry and receipt and 'id="coverage" class="ok"' in page.text
        assert orjson.loads(html.unescape(entry.group(1)))["event_id"] == delivered
        assert orjson.loads(html.unescape(receipt.group(1)))["inclusion_proof"] is not None
        missing = await browser.get(f"/console/audit/events/{uuid.uuid4()}")
        other = await browser.get(f"/console/audit/events/{theirs.headers['audit-event']}")
        junk = await browser.get("/console/audit/events/not-an-id")
        assert missing.status_code == other.status_code == junk.status_code == 404
        # The same page, but for the path in its language switch.
        assert missing.text.replace(str(missing.url.path), "") == other.text.replace(str(other.url.path), "")


async def test_member_users_cannot_reach_the_audit_log_and_names_are_escaped(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    vendor_id = uuid.UUID(demo_content["vendor_id"])
    await members.create(demo_runtime.writer, cli_actor(vendor_id), vendor_id, "<script>alert(1)</script>")
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "member"))
        for path in ("/console/audit/", f"/console/audit/events/{uuid.uuid4()}"):
            assert (await browser.get(path)).status_code == 404
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "vendor-admin"))
        for _ in range(50):
            page = await browser.get("/console/audit/")
            if "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text:
                break
            await asyncio.sleep(0.05)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text


async def test_searches_for_what_few_events_have_use_the_partial_indexes(demo_runtime: Runtime) -> None:
    """Migration 0020's partial indexes leave out the per-request kinds and the outcome allow; the index's
    list must be PER_REQUEST_KINDS exactly, and a search for a rare kind or outcome must be able to use them
    (the planner proves a partial index usable only from the query's text)."""
    async with demo_runtime.pool.acquire() as conn:
        definition = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                         "'audit_events_vendor_rare_kind_at'")
        assert set(re.findall(r"'([a-z:-]+)'", definition)) == {kind.value for kind in PER_REQUEST_KINDS}
        vendor_id = await conn.fetchval("SELECT id FROM vendors LIMIT 1")
        await conn.execute("SET enable_seqscan = off")
        for asked, index in ({"kinds": (EventKind.LICENCE_GRANT,)}, "_vendor_id_kind_at_idx"), \
                ({"outcome": Outcome.DENY}, "_vendor_id_outcome_at_idx"):
            search = {"member_id": None, "dataset_id": None, "kinds": (), "outcome": None, "after": None,
                      "limit": 50, **asked}
            sql, args = search_query(vendor_id, None, None, **search)
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {sql}", *args))
            assert index in plan, plan  # the partitions' indexes are named by their columns
