"""The console in a real browser: Debian's Chromium driven by Playwright against a served gateway.

One `gateway serve` process on a clone of the demo database and one browser for all these tests, ended
after the last of them rather than kept through the rest of the suite: the pages are read far more often
than anything is changed, and every flow makes its own members and users, so the tests do not depend
on each other's order. A fresh console user signs in for each flow,
because a TOTP code of a step already used is refused (RFC 6238 §5.2) and the demo has one user per role.

No browser is ever downloaded: without /usr/bin/chromium these tests are skipped, unless
GATEWAY_TEST_REQUIRE_BROWSER=1 (CI sets it where Chromium is installed), when they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway import console_users, members
from gateway.actors import cli_actor
from gateway.runtime import Runtime
from keys import totp
from tests import REPOSITORY
from tests.conftest import Databases, make_config
from tests.processes import GatewayProcess

CHROMIUM = Path("/usr/bin/chromium")
ROOT = REPOSITORY
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
SCREENSHOTS = ROOT / "tests" / "console" / "screenshots"
HOME = {"vendor-admin": "/console/vendor/", "compliance": "/console/vendor/", "member": "/console/member/"}
XSS_NAME = "<script>window.__xss=1</script>"
DATASET_NAME = "mobile-location"  # the demo's


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium); no browser is downloaded"
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        return f"Playwright for Python is not installed: {exc}"
    return None


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    missing = _browser_missing()
    if missing:
        if os.environ.get("GATEWAY_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GATEWAY_TEST_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return CHROMIUM


@dataclass
class Console:
    """The served gateway, a runtime on the same database for setting things up through the domain
    functions, and the browser."""

    url: str
    runtime: Runtime
    content: dict[str, Any]
    browser: Any
    watchers: list[Watcher] = field(default_factory=list)

    @property
    def vendor_id(self) -> uuid.UUID:
        return uuid.UUID(self.content["vendor_id"])

    @property
    def actor(self) -> Any:
        return cli_actor(self.vendor_id)

    async def new_user(self, role: str, member_id: uuid.UUID | None = None, email: str | None = None) -> dict[str, Any]:
        """A console user enrolled in TOTP, as the demo's are, whose codes no sign-in has used yet."""
        email = email or f"{role}.{secrets.token_hex(4)}@browser.lpd.example"
        _, password, secret = await console_users.create(
            self.runtime.writer, self.runtime.master, self.actor, self.vendor_id, role, email,
            member_id=member_id, enrol_totp=True)
        return {"role": role, "email": email, "password": password, "totp_secret": secret}

    async def new_member(self, name: str) -> members.Member:
        return await members.create(self.runtime.writer, self.actor, self.vendor_id, name)

    async def context(self) -> Any:
        """A browser context as a Japanese reader's: Japanese asked for first, JST."""
        context = await self.browser.new_context(locale="ja-JP", timezone_id="Asia/Tokyo", accept_downloads=True,
                                                 viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        watcher = Watcher(self.url)
        watcher.attach(context)
        self.watchers.append(watcher)
        return context

    async def signed_in(self, user: dict[str, Any]) -> Any:
        """A new page of a new context, signed in as `user` by the forms, on their home page."""
        context = await self.context()
        page = await context.new_page()
        await sign_in(page, self.url, user)
        return page


class Watcher:
    """What a page did that no console page may: log an error, throw, or ask another origin for anything."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[str] = []
        self.foreign: list[str] = []

    def attach(self, context: Any) -> None:
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("page", self._page)

    def _response(self, response: Any) -> None:
        # A link or a form answering 4xx is the test's business; a style sheet, script or image is not.
        if response.status >= 400 and response.request.resource_type not in ("document",):
            self.errors.append(f"{response.frame.url}: {response.request.resource_type} {response.url} "
                               f"answered {response.status}")

    def _page(self, page: Any) -> None:
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: uncaught: {error}"))

    def _console(self, page: Any, message: Any) -> None:
        # Pages name an empty icon (base.html), so the browser asks for no /favicon.ico: any error counts.
        if message.type == "error":
            self.errors.append(f"{page.url}: console error: {message.text} ({message.location.get('url')})")

    def _request(self, request: Any) -> None:
        url = request.url
        if not (url.startswith((self.origin + "/", "data:")) or url == "about:blank"):
            self.foreign.append(url)

    def take(self) -> tuple[list[str], list[str]]:
        taken = (self.errors[:], self.foreign[:])
        self.errors.clear()
        self.foreign.clear()
        return taken


def code_for(user: dict[str, Any]) -> str:
    return totp.code_at(user["totp_secret"], totp.step_of(time.time()))


async def sign_in(page: Any, url: str, user: dict[str, Any]) -> None:
    """Email and password, then the TOTP code, by the forms as a person fills them in."""
    await page.goto(f"{url}/console/")
    assert urllib.parse.urlsplit(page.url).path == "/console/sign-in"
    await page.get_by_label("メールアドレス").fill(user["email"])
    await page.get_by_label("パスワード").fill(user["password"])
    await page.get_by_role("button", name="次へ").click()
    await page.wait_for_url(re.compile(r"/console/sign-in/code"))
    await page.locator("#code").fill(code_for(user))
    await page.get_by_role("button", name="サインイン", exact=True).click()
    await page.wait_for_url(re.compile(re.escape(HOME[user["role"]]) + "$"))


def path_of(page: Any) -> str:
    return urllib.parse.urlsplit(page.url).path


def artifact_name(role: str, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    text = (parts.path.strip("/").replace("/", "_") or "root") + ("_" + parts.query if parts.query else "")
    return f"{role}__{re.sub(r'[^A-Za-z0-9_.=-]+', '-', text)[:150]}.png"


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page, one line each with where they are."""
    from axe_playwright_python.async_playwright import Axe

    try:
        results = await asyncio.wait_for(Axe().run(page), 60)
    except TimeoutError:
        return [f"axe-core did not finish within 60 s on {page.url} (a sandboxed page? see assert_sound)"]
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
            for v in results.response["violations"] if v["impact"] in ("serious", "critical")]


async def assert_sound(page: Any, *, sandboxed: bool = False) -> None:
    """A page reached by a form, held to what the crawl holds every linked page to. A `sandboxed` page
    (CSP sandbox, as the evidence report is served) runs no script, axe-core's included: it is read again
    in a context that sets CSP aside, for axe only, with the same cookies."""
    checked = page
    if sandboxed:
        context = await page.context.browser.new_context(storage_state=await page.context.storage_state(),
                                                         bypass_csp=True, locale="ja-JP")
        checked = await context.new_page()
        await checked.goto(page.url)
    try:
        violations = await serious_violations(checked)
    finally:
        if sandboxed:
            await checked.context.close()
    assert not violations, f"{page.url}:\n" + "\n".join(violations)
    assert await page.evaluate("() => typeof window.__xss") == "undefined"


@contextlib.asynccontextmanager
async def served(databases: Databases, template: str, home: Path) -> AsyncIterator[tuple[str, Runtime]]:
    """`gateway serve` on a new clone of `template`, and a runtime on the same database for setting up."""
    name = await databases.create(template)
    dsn = databases.dsn(name)
    runtime = await Runtime.open(make_config(dsn, home / "setup"), serving=False)
    server = GatewayProcess(dsn, home, "console")
    try:
        await server.ready()
        yield server.url, runtime
    finally:
        server.stop()
        await runtime.close()
        await databases.drop(name)


@pytest.fixture(scope="package")
async def browser(chromium_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    playwright = await async_playwright().start()
    try:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox needs a user namespace
        launched = await playwright.chromium.launch(executable_path=str(chromium_path), args=args)
        yield launched
        await launched.close()
    finally:
        await playwright.stop()


@pytest.fixture(scope="package")
async def console(browser: Any, databases: Databases, demo_template: tuple[str, dict[str, Any]],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's pages only
    ARTIFACTS.mkdir(parents=True)
    async with served(databases, demo_template[0], tmp_path_factory.mktemp("console-browser")) as (url, runtime):
        yield Console(url, runtime, demo_template[1], browser)
