"""What each role comes to the console for, done in the browser and checked where it matters: at the
member API, in `gateway audit verify`, on the pages that must no longer show a secret."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from gateway import licences
from tests.conftest import bearer
from tests.console.browser.conftest import DATASET_NAME, Console, assert_sound, path_of

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TERMS = "ブラウザ試験用の利用規約 / Terms for the browser test\n第1条 利用目的は統計分析に限る。"


def _id_in(page: Any, pattern: str) -> uuid.UUID:
    found = re.fullmatch(pattern, path_of(page))
    assert found, f"{page.url} is not {pattern}"
    return uuid.UUID(found.group(1))


async def _pull(url: str, key: str, dataset: str, **headers: str) -> httpx.Response:
    """Records by the member API, as the member's software asks for them; a change made through the
    console reaches every instance's snapshot within a second, so a refusal is asked again that long."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 5
        while True:
            answer = await client.get(f"/v1/datasets/{dataset}/records", params={"limit": 5},
                                      headers={**bearer(key), **headers})
            if answer.status_code == 200 or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.2)


async def test_vendor_admin_grants_a_licence_and_issues_a_key_shown_once(console: Console) -> None:
    page = await console.signed_in(await console.new_user("vendor-admin"))
    name = f"ブラウザ試験 {secrets.token_hex(3)} 株式会社"
    await page.goto(f"{console.url}/console/vendor/members")
    await page.locator('input[name="name"]').fill(name)
    await page.get_by_role("button", name="会員を追加").click()
    await page.wait_for_url(re.compile(f"/console/vendor/members/{UUID}$"))
    member_id = _id_in(page, f"/console/vendor/members/({UUID})")

    await page.goto(f"{console.url}/console/vendor/licences/new")
    await page.locator('select[name="member_id"]').select_option(label=name)
    await page.locator('select[name="dataset_id"]').select_option(label=DATASET_NAME)
    await page.locator('input[name="partitions"][value="13"]').check()
    await page.locator('textarea[name="terms"]').fill(TERMS)
    await page.get_by_role("button", name="ライセンスを付与").click()
    await page.wait_for_url(re.compile(f"/console/vendor/licences/{UUID}$"))
    licence_id = _id_in(page, f"/console/vendor/licences/({UUID})")
    assert name in await page.locator("main").inner_text()

    await page.goto(f"{console.url}/console/vendor/members/{member_id}")
    key_form = page.locator("form").filter(has=page.get_by_role("button", name="APIキーを発行"))
    await key_form.locator('input[name="label"]').fill("browser test key")
    await key_form.get_by_role("button", name="APIキーを発行").click()
    token = (await page.locator("code#secret").inner_text()).strip()
    assert len(token) > 20
    await assert_sound(page)

    # The member's software: reads and accepts the terms with the new key, then pulls Tokyo's records.
    dataset = console.content["dataset"]
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as client:
        terms = (await client.get(f"/v1/licences/{licence_id}/terms", headers=bearer(token))).json()
        assert terms["text"] == TERMS
        accepted = await client.post(f"/v1/licences/{licence_id}/accept", headers=bearer(token),
                                     json={"terms_version": terms["version"], "terms_sha256": terms["sha256"]})
        assert accepted.status_code == 200, accepted.text
    pulled = await _pull(console.url, token, dataset)
    assert pulled.status_code == 200, pulled.text
    rows = [orjson.loads(line) for line in pulled.content.splitlines() if line.strip()]
    assert rows and {str(r["prefecture"]) for r in rows} == {"13"}

    # Never again: not on the member's page, not on any other.
    await page.goto(f"{console.url}/console/vendor/members/{member_id}")
    assert await page.locator("#secret").count() == 0
    assert token not in await page.content()
    await page.context.close()
    errors, foreign = console.watchers[-1].take()
    assert not errors and not foreign, (errors, foreign)


async def test_member_accepts_new_terms_pulls_and_sees_the_delivery(console: Console) -> None:
    demo_member = console.content["members"][0]
    licence_id = uuid.UUID(demo_member["licence_id"])
    new_terms = f"利用規約 第2版 ({secrets.token_hex(3)}) / Terms v2\n第1条 第三者への提供を禁ずる。"
    await licences.amend(console.runtime.writer, console.actor, console.vendor_id, licence_id, {}, new_terms)
    page = await console.signed_in(await console.new_user("member", uuid.UUID(demo_member["member_id"])))

    assert await page.locator(f'table#licences a[href="/console/member/licences/{licence_id}"]').count() >= 1
    await page.goto(f"{console.url}/console/member/deliveries")
    newest = page.locator('table#deliveries a[href^="/console/member/deliveries/"]').first
    before = await newest.get_attribute("href") if await newest.count() else None

    await page.goto(f"{console.url}/console/member/licences/{licence_id}")
    assert "第三者への提供を禁ずる" in await page.locator("#terms").inner_text()
    await page.get_by_role("button", name="同意する").click()
    await page.wait_for_url(re.compile(f"/console/member/licences/{licence_id}$"))
    assert "同意済み" in await page.locator("main").inner_text()

    pulled = await _pull(console.url, demo_member["api_key"], console.content["dataset"])
    assert pulled.status_code == 200, pulled.text

    await page.goto(f"{console.url}/console/member/deliveries")
    newest = page.locator('table#deliveries a[href^="/console/member/deliveries/"]').first
    after = await newest.get_attribute("href")
    assert after and after != before, "the delivery just made is not the newest row"
    await newest.click()
    await page.wait_for_url(re.compile("/console/member/deliveries/.+"))
    # Its receipt is there once a checkpoint is signed (GATEWAY_CHECKPOINT_SECONDS, 2 s by default).
    deadline = time.monotonic() + 15
    while not await page.locator("pre#receipt").count() and time.monotonic() < deadline:
        await page.wait_for_timeout(500)
        await page.reload()
    assert (await page.locator("pre#receipt").inner_text()).strip()
    await page.context.close()
    errors, foreign = console.watchers[-1].take()
    assert not errors and not foreign, (errors, foreign)


async def test_compliance_exports_evidence_that_the_verifier_accepts(console: Console, tmp_path: Path) -> None:
    page = await console.signed_in(await console.new_user("compliance"))
    await page.goto(f"{console.url}/console/evidence/")
    today = datetime.now(ZoneInfo("Asia/Tokyo")).date()
    await page.locator('input[name="from"]').fill((today - timedelta(days=1)).isoformat())
    await page.locator('input[name="to"]').fill(today.isoformat())
    async with page.expect_download() as started:
        await page.get_by_role("button", name="証拠を書き出す").click()
    download = await started.value
    bundle = tmp_path / (download.suggested_filename or "evidence.zip")
    await download.save_as(bundle)

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    verifier = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "gateway"), "audit", "verify", str(bundle), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    said, _ = await verifier.communicate()
    assert verifier.returncode == 0, said.decode()

    await page.goto(f"{console.url}/console/evidence/")
    await page.locator('input[name="bundle"]').set_input_files(bundle)
    await page.get_by_role("button", name="検証する").click()
    verdict = page.locator("#verdict")
    await verdict.wait_for()
    assert "ok" in (await verdict.get_attribute("class") or "").split()
    assert "検証に成功しました" in await verdict.inner_text()
    await assert_sound(page)
    # The report is the answer to an upload of its own: the gateway keeps nothing of an upload.
    await page.goto(f"{console.url}/console/evidence/")
    await page.locator('input[name="bundle"]').set_input_files(bundle)
    await page.get_by_role("button", name="検証してレポートを表示").click()
    await page.get_by_text("証跡レポート").first.wait_for()
    await assert_sound(page, sandboxed=True)
    await page.context.close()
    errors, foreign = console.watchers[-1].take()
    assert not errors and not foreign, (errors, foreign)
