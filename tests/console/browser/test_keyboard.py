"""The console by keyboard alone: Tab, Shift+Tab, Enter, Space, arrow keys and typing, no pointer; and
wherever focus lands, it can be seen (WCAG 2.4.7)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from tests.console.browser.conftest import DATASET_NAME, HOME, Console, code_for, path_of

FOCUS_SEEN = """() => {
  const element = document.activeElement;
  if (!element || element === document.body) { return ""; }  // past the last stop, on the way round
  // A date input's focus is on one of its fields (year, month, day), which Chromium highlights itself.
  if (element.matches("input[type=date], input[type=time], input[type=datetime-local]")) { return ""; }
  const style = getComputedStyle(element);
  const ring = (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== "none";
  return ring ? "" : `no focus indicator on ${element.outerHTML.slice(0, 120)}`;
}"""


async def tab_to(page: Any, predicate: str, arg: str, limit: int = 80) -> None:
    """Tab until the focused element satisfies the JS `predicate(element, arg)`, checking on the way that
    every stop shows its focus."""
    test = f"arg => {{ const e = document.activeElement; return !!e && ({predicate})(e, arg); }}"
    if await page.evaluate(test, arg):
        return
    for _ in range(limit):
        await page.keyboard.press("Tab")
        unseen = await page.evaluate(FOCUS_SEEN)
        assert not unseen, f"{page.url}: {unseen}"
        if await page.evaluate(test, arg):
            return
    raise AssertionError(f"{page.url}: Tab never reached the element ({predicate}, {arg!r})")


MATCHES = "(e, selector) => e.matches(selector)"
BUTTON = "(e, text) => e.tagName === 'BUTTON' && e.textContent.trim() === text"


async def choose(page: Any, selector: str, label: str) -> None:
    """Pick an option of a focused <select> with the arrow keys."""
    await tab_to(page, MATCHES, selector)
    await page.keyboard.press("Home")
    options = await page.locator(f"{selector} option").count()
    for _ in range(options):
        chosen = await page.evaluate("s => { const e = document.querySelector(s); return e.options[e.selectedIndex].text; }",
                                     selector)
        if chosen.strip() == label:
            return
        await page.keyboard.press("ArrowDown")
    raise AssertionError(f"no option {label!r} in {selector}")


async def keyboard_sign_in(page: Any, url: str, user: dict[str, Any]) -> None:
    await page.goto(f"{url}/console/sign-in")
    await tab_to(page, MATCHES, "#email")
    await page.keyboard.type(user["email"])
    await tab_to(page, MATCHES, "#password")
    await page.keyboard.type(user["password"])
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile("/console/sign-in/code"))
    await tab_to(page, MATCHES, "#code")
    await page.keyboard.type(code_for(user))
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(re.escape(HOME[user["role"]]) + "$"))


async def test_signing_in_and_granting_a_licence_by_keyboard(console: Console) -> None:
    context = await console.context()
    page = await context.new_page()
    await keyboard_sign_in(page, console.url, await console.new_user("vendor-admin"))
    # The first Tab on a page reaches the skip link, visibly, and Enter takes focus to the content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.classList.contains('skip')")
    assert not await page.evaluate(FOCUS_SEEN)
    await page.keyboard.press("Enter")
    assert await page.evaluate("() => document.activeElement.id") == "main"

    name = f"キーボード試験 {secrets.token_hex(3)}"
    await console.new_member(name)
    await page.goto(f"{console.url}/console/vendor/licences/new")
    await choose(page, 'select[name="member_id"]', name)
    await choose(page, 'select[name="dataset_id"]', DATASET_NAME)
    await tab_to(page, MATCHES, 'input[name="partitions"][value="27"]')
    await page.keyboard.press("Space")
    assert await page.locator('input[name="partitions"][value="27"]').is_checked()
    await tab_to(page, MATCHES, 'textarea[name="terms"]')
    await page.keyboard.type("キーボードで入力した利用規約 / Terms typed by keyboard")
    await tab_to(page, BUTTON, "ライセンスを付与")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"/console/vendor/licences/[0-9a-f-]{36}$"))
    assert name in await page.locator("main").inner_text()
    assert path_of(page).startswith("/console/vendor/licences/")
    await context.close()
    errors, foreign = console.watchers[-1].take()
    assert not errors and not foreign, (errors, foreign)
