"""What the README's "Web console" section shows and tells: its two screenshots, taken by the browser
from the demo (again with GATEWAY_TEST_UPDATE_SCREENSHOTS=1, before they are checked), and the TOTP code
command it gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from keys import totp
from tests.conftest import Databases, bearer
from tests.console.browser.conftest import ROOT, SCREENSHOTS, Console, served

SHOTS = {"vendor-dashboard.png": ("vendor-admin", "/console/vendor/", "vendor.admin@demo.lpd.example"),
         "member-licences.png": ("member", "/console/member/", "staff@shibuya-analytics.example")}
MOST_BYTES = 200 * 1024
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(os.environ.get("GATEWAY_TEST_UPDATE_SCREENSHOTS") != "1",
                    reason="the README's screenshots are taken again with GATEWAY_TEST_UPDATE_SCREENSHOTS=1")
async def test_the_readme_screenshots_are_taken_from_the_demo(
        browser: Any, databases: Databases, demo_template: tuple[str, dict[str, Any]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # A demo of its own, untouched by the other tests' members and licences.
    async with served(databases, demo_template[0], tmp_path_factory.mktemp("screenshots")) as (url, runtime):
        console = Console(url, runtime, demo_template[1], browser)
        member_id = uuid.UUID(demo_template[1]["members"][0]["member_id"])
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # Something delivered, for the dashboard's charts: each demo member pulls a page or two.
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for member, pages in zip(demo_template[1]["members"], (3, 1), strict=True):
                for _ in range(pages):
                    pulled = await client.get(f"/v1/datasets/{demo_template[1]['dataset']}/records",
                                              params={"limit": 1000}, headers=bearer(member["api_key"]))
                    assert pulled.status_code == 200, pulled.text
        for name, (role, path, email) in SHOTS.items():
            page = await console.signed_in(await console.new_user(role, member_id if role == "member" else None,
                                                                  email=email))
            await page.goto(f"{url}{path}")
            shot: Path = SCREENSHOTS / name
            await page.screenshot(path=shot)
            await page.context.close()
            assert shot.stat().st_size <= MOST_BYTES, f"{shot} is {shot.stat().st_size} bytes: make the view smaller"


def test_the_readme_shows_its_screenshots() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in SHOTS:
        shot = SCREENSHOTS / name
        assert f"tests/console/screenshots/{name}" in readme, f"the README does not show {name}"
        assert shot.read_bytes()[:8] == PNG and shot.stat().st_size <= MOST_BYTES, f"{shot} is no PNG of ≤ 200 KB"


def test_the_readme_command_prints_the_code_an_app_shows() -> None:
    secret = totp.new_secret()
    before = totp.step_of(time.time())
    shown = subprocess.run([sys.executable, "-m", "keys.totp", secret], capture_output=True, text=True, check=True,
                           cwd=ROOT).stdout.strip()
    assert shown in {totp.code_at(secret, step) for step in (before, before + 1)}
    assert "python -m keys.totp" in (ROOT / "README.md").read_text(encoding="utf-8")
