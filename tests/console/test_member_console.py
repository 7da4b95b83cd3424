"""The console's member screens: its own licences and terms (accepted by the person), usage, deliveries
with receipts, and keys without secrets."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from typing import Any

import httpx
import orjson

from gateway import licences
from gateway.actors import cli_actor
from gateway.runtime import Runtime
from keys import apikeys
from tests.conftest import client_for
from tests.console.support import console_user, post_form, sign_in, until_covered
from tests.factories import auth, licensed_member, records_path_of


def table(page: httpx.Response, table_id: str) -> str:
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', page.text, re.DOTALL)
    assert found, page.text
    return found.group(1)


async def test_a_member_sees_its_licences_and_accepts_new_terms_as_itself(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    member = demo_content["members"][0]
    vendor_id, licence_id = uuid.UUID(demo_content["vendor_id"]), uuid.UUID(member["licence_id"])
    await licences.amend(demo_runtime.writer, cli_actor(vendor_id), vendor_id, licence_id, {},
                         "第2版: <script>alert(1)</script> 再配布を禁じます。")
    for _ in range(50):
        if demo_runtime.snapshot.licences[licence_id].terms_version == 2:
            break
        await asyncio.sleep(0.05)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "member"))
        home = await browser.get("/console/member/")
        assert home.status_code == 200 and f"/console/member/licences/{licence_id}" in table(home, "licences")
        assert "未同意" in table(home, "licences")
        shown = await browser.get(f"/console/member/licences/{licence_id}")
        terms = re.search(r'<pre id="terms"[^>]*>(.*?)</pre>', shown.text, re.DOTALL)
        assert terms and "&lt;script&gt;alert(1)&lt;/script&gt;" in terms.group(1) and "<script>alert" not in shown.text
        accepted = await post_form(browser, f"/console/member/licences/{licence_id}/accept",
                                   {"version": "2", "sha256": re.search(r"<code>([0-9a-f]{64})</code>",
                                                                        shown.text).group(1)},  # type: ignore[union-attr]
                                   page=f"/console/member/licences/{licence_id}")
        assert accepted.status_code == 303 and accepted.headers["location"] == f"/console/member/licences/{licence_id}"
        after = await browser.get(accepted.headers["location"])
        assert "同意済み" in after.text and "同意する</button>" not in after.text
        # Stale terms (a version no longer current) are refused with a page, not a 500.
        stale = await post_form(browser, f"/console/member/licences/{licence_id}/accept",
                                {"version": "1", "sha256": "0" * 64}, page="/console/member/")
        assert stale.status_code == 409
    row = await demo_runtime.pool.fetchrow("SELECT entry FROM audit_events WHERE kind = 'member:terms:accept' "
                                           "AND licence_id = $1 AND outcome = 'change' ORDER BY at DESC LIMIT 1",
                                           licence_id)
    event = orjson.loads(row["entry"])
    user = await demo_runtime.pool.fetchrow("SELECT id FROM console_users WHERE email = 'member@demo.lpd.example'")
    assert event["actor"]["kind"] == "console-user" and event["actor"]["credential_id"] == str(user["id"])
    assert event["detail"]["actor_label"] == "member@demo.lpd.example"


async def test_another_members_licence_and_delivery_are_not_found_and_vendor_users_cannot_enter(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    other = demo_content["members"][1]
    pulled = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", params={"limit": 1},
                                   headers=auth(other["api_key"]))
    foreign = await licensed_member(demo_runtime, demo_client)
    theirs = await demo_client.get(records_path_of(foreign), params={"limit": 1}, headers=foreign.headers)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "member"))
        answers = [await browser.get(path) for path in (
            f"/console/member/licences/{other['licence_id']}", f"/console/member/licences/{foreign.licence['id']}",
            f"/console/member/licences/{uuid.uuid4()}", f"/console/member/deliveries/{pulled.headers['audit-event']}",
            f"/console/member/deliveries/{theirs.headers['audit-event']}", "/console/member/licences/nonsense")]
        assert {a.status_code for a in answers} == {404}
        accept = await post_form(browser, f"/console/member/licences/{other['licence_id']}/accept",
                                 {"version": "1", "sha256": "0" * 64}, page="/console/member/")
        assert accept.status_code == 404
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "compliance"))
        for path in ("/console/member/", "/console/member/keys", "/console/member/deliveries"):
            assert (await browser.get(path)).status_code == 404


async def test_a_member_sees_the_delivery_it_just_pulled_with_its_receipt(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    member = demo_content["members"][0]
    pulled = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", params={"limit": 3},
                                   headers=auth(member["api_key"]))
    event_id = pulled.headers["audit-event"]
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "member"))
        listed = await browser.get("/console/member/deliveries")
        rows = re.findall(r'href="/console/member/deliveries/([0-9a-f-]{36})"', table(listed, "deliveries"))
        assert rows[0] == event_id  # newest first
        shown = await until_covered(browser, f"/console/member/deliveries/{event_id}")
        receipt = re.search(r'<pre id="receipt"[^>]*>(.*?)</pre>', shown.text, re.DOTALL)
        assert receipt and orjson.loads(html.unescape(receipt.group(1)))["event_id"] == event_id
        assert 'id="coverage" class="ok"' in shown.text
        usage = await browser.get("/console/member/usage")
        assert usage.status_code == 200 and usage.text.count('role="img"') == 2
        assert 'aria-label="今月の配信レコード数 (ライセンス別)"' in usage.text
        keys = await browser.get("/console/member/keys")
        assert apikeys.parse(member["api_key"]).key_id in table(keys, "keys")
        assert member["api_key"].split("_")[-1] not in keys.text
        assert member["oauth_client"]["client_id"] in table(keys, "oauth-clients")
        assert member["oauth_client"]["client_secret"] not in keys.text
