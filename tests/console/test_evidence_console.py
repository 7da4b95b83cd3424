"""The console's evidence page: a bundle downloaded as the API exports it, and an uploaded bundle
verified, with its report rendered by the gateway from the verified figures."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.audit.verify import verify_bundle
from gateway.http.console import evidence
from gateway.runtime import Runtime
from gateway.times import JST
from tests.conftest import client_for
from tests.console.support import console_user, post_form, sign_in
from tests.factories import auth


async def _today(runtime: Runtime) -> str:
    return str((await runtime.pool.fetchval("SELECT now()")).astimezone(JST).date().isoformat())


async def _export(browser: httpx.AsyncClient, day: str) -> httpx.Response:
    return await post_form(browser, "/console/evidence/export", {"from": day, "to": day}, page="/console/evidence/")


async def _verify(browser: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await post_form(browser, "/console/evidence/verify", {}, page="/console/evidence/",
                           files={"bundle": ("bundle.zip", content, "application/zip")})


async def test_compliance_exports_a_bundle_that_verifies_and_the_console_verifies_it_too(
        demo_runtime: Runtime, demo_client: httpx.AsyncClient, demo_content: dict[str, Any], tmp_path: Path) -> None:
    member = demo_content["members"][0]
    await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", params={"limit": 2},
                          headers=auth(member["api_key"]))
    day = await _today(demo_runtime)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "compliance"))
        form = await browser.get("/console/evidence/")
        assert form.status_code == 200 and "証拠を書き出す" in form.text and 'data-progress="verify-progress"' in form.text
        download = await _export(browser, day)
        assert download.status_code == 200, download.text
        assert download.headers["content-type"] == "application/zip"
        assert download.headers["content-disposition"].startswith("attachment;")
        assert int(download.headers["content-length"]) == len(download.content)
        (tmp_path / "bundle.zip").write_bytes(download.content)
        verdict = verify_bundle(tmp_path / "bundle.zip")
        assert verdict.ok, verdict.line()
        assert verdict.events > 0

        checked = await _verify(browser, download.content)
        assert checked.status_code == 200
        assert re.search(r'id="verdict" class="ok"[^>]*>検証に成功しました<', checked.text)
        link = re.search(r'href="(/console/evidence/reports/[^"]+)"', checked.text)
        assert link
        shown = await browser.get(link.group(1))
        assert shown.status_code == 200 and "証跡レポート" in shown.text
        assert "sandbox" in shown.headers["content-security-policy"]
        with zipfile.ZipFile(io.BytesIO(download.content)) as bundle:
            assert shown.text.encode() == bundle.read("report.html")  # the gateway's own rendering, same figures
    # The download's events name the person who asked for it.
    rows = await demo_runtime.pool.fetch("SELECT kind, entry FROM audit_events WHERE kind IN "
                                         "('compliance:audit:read', 'compliance:audit-export:stream-end') ORDER BY at")
    entries = [(row["kind"], orjson.loads(row["entry"])) for row in rows]
    assert [k for k, _ in entries] == ["compliance:audit:read", "compliance:audit-export:stream-end"]
    assert {e["actor"]["kind"] for _, e in entries} == {"console-user"}
    assert entries[0][1]["detail"]["actor_label"] == "compliance@demo.lpd.example"
    # Another person cannot open the report someone else uploaded.
    async with client_for(demo_runtime) as other:
        await sign_in(other, console_user(demo_content, "vendor-admin"))
        assert (await other.get(link.group(1))).status_code == 404


async def test_a_tampered_bundle_fails_and_its_html_is_never_shown(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    day = await _today(demo_runtime)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "vendor-admin"))
        download = await _export(browser, day)
        tampered = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(download.content)) as source, zipfile.ZipFile(tampered, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename == "report.html":
                    data = data.replace(b"</main>", b"<script>alert(1)</script></main>")
                target.writestr(item, data)
        failed = await _verify(browser, tampered.getvalue())
        assert failed.status_code == 200
        assert re.search(r'id="verdict" class="failed"[^>]*>検証に失敗しました<', failed.text)
        assert "/console/evidence/reports/" not in failed.text and "<script>alert" not in failed.text
        garbage = await _verify(browser, b"not a zip at all")
        assert 'class="failed"' in garbage.text and "bundle-format" in garbage.text


async def test_an_upload_over_the_limit_is_refused_before_it_is_read(
        demo_runtime: Runtime, demo_content: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evidence, "MAX_BUNDLE_BYTES", 1000)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "compliance"))
        refused = await _verify(browser, b"x" * 200_000)
        assert refused.status_code == 413 and "gateway audit verify" in refused.text


async def test_member_users_cannot_reach_evidence(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    day = await _today(demo_runtime)
    async with client_for(demo_runtime) as browser:
        await sign_in(browser, console_user(demo_content, "member"))
        assert (await browser.get("/console/evidence/")).status_code == 404
        refused = await post_form(browser, "/console/evidence/export", {"from": day, "to": day}, page="/console/account")
        assert refused.status_code == 404 and refused.headers["content-type"].startswith("text/html")
    assert not await demo_runtime.pool.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'compliance:audit:read'")
