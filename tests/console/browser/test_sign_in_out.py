"""Every role signs in with its password and a TOTP code and signs out again, in the browser."""

from __future__ import annotations

import pytest

from tests.console.browser.conftest import HOME, Console, path_of, sign_in
from tests.console.support import console_user


@pytest.mark.parametrize("role", ["vendor-admin", "compliance", "member"])
async def test_each_demo_user_signs_in_and_out(console: Console, role: str) -> None:
    user = console_user(console.content, role)  # demo.json's own: each signs in once in this session
    context = await console.context()
    page = await context.new_page()
    await sign_in(page, console.url, user)
    assert path_of(page) == HOME[role]
    await page.goto(f"{console.url}/console/account")
    assert user["email"] in await page.locator("header .who").inner_text()
    await page.get_by_role("button", name="サインアウト").click()
    await page.wait_for_url("**/console/sign-in")
    await page.goto(f"{console.url}/console/account")
    assert path_of(page) == "/console/sign-in"  # the session is over, not just its cookie gone
    await context.close()
    errors, foreign = console.watchers[-1].take()
    assert not errors and not foreign, (errors, foreign)
