"""Every screen a role can reach by following links, from /console/: it loads, it passes axe-core with no
serious or critical violation, it logs no error, it asks no other origin for anything, and markup that
a vendor or member typed into a name or label is shown as text and never runs.

Only GET: links are followed, no form is sent. A few pages of each URL pattern are enough (one member's
page is built as another's); each is screenshotted into tests/artifacts/console/ to look at."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections import Counter

import pytest

from gateway import credentials, licences
from gateway.credentials import KeyKind
from tests.console.browser.conftest import ARTIFACTS, XSS_NAME, Console, artifact_name, serious_violations

PER_PATTERN = 2
MOST_PAGES = 45
# Not pages: the sign-out is a form, the language switch a preference, and these are downloads.
SKIPPED = re.compile(r"^/console/(sign-out|language|static/)|\.(csv|zip|json|ndjson)$")
# What a compliance officer may send: signing out, ending a session of their own, and evidence.
COMPLIANCE_POSTS = {"/console/sign-out", "/console/account/sessions/end", "/console/evidence/export",
                    "/console/evidence/verify"}
IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(?<=/)[0-9]+(?=/|$)")


def pattern_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    keys = sorted({key for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)})
    return IDS.sub("{id}", parts.path) + ("?" + "&".join(keys) if keys else "")


@pytest.fixture(scope="module")
async def marked_up(console: Console) -> str:
    """Markup where a vendor or a member types text: a member's name, a licence's terms, a key's label."""
    runtime, actor, vendor = console.runtime, console.actor, console.vendor_id
    member = await console.new_member(XSS_NAME)
    await licences.grant(runtime.writer, actor, vendor, member.id, uuid.UUID(console.content["dataset"]),
                         f"{XSS_NAME}\n<img src=x onerror=\"window.__xss=2\">", {"partitions": ["01"], "columns": ["prefecture", "hour", "population"]})
    await credentials.issue(runtime.writer, actor, runtime.hasher(), KeyKind.MEMBER, vendor, member.id, label=XSS_NAME)
    demo_member = uuid.UUID(console.content["members"][0]["member_id"])
    await credentials.issue(runtime.writer, actor, runtime.hasher(), KeyKind.MEMBER, vendor, demo_member,
                            label=XSS_NAME)
    return XSS_NAME


async def crawl(console: Console, role: str) -> tuple[list[str], list[str], str]:
    """(pages visited, problems found, the text of every page) for a fresh user of `role`."""
    member_id = uuid.UUID(console.content["members"][0]["member_id"]) if role == "member" else None
    page = await console.signed_in(await console.new_user(role, member_id))
    watcher = console.watchers[-1]
    watcher.take()
    queue, queued, per_pattern = [f"{console.url}/console/"], {f"{console.url}/console/"}, Counter[str]()
    visited: list[str] = []
    problems: list[str] = []
    texts: list[str] = []
    while queue and len(visited) < MOST_PAGES:
        url = queue.pop(0)
        response = await page.goto(url)
        here = urllib.parse.urlsplit(page.url)
        visited.append(page.url)
        if response is None or response.status != 200:
            problems.append(f"{url}: status {None if response is None else response.status}")
        await page.screenshot(path=ARTIFACTS / artifact_name(role, page.url), full_page=True)
        problems += [f"{page.url}: axe {v}" for v in await serious_violations(page)]
        if await page.evaluate("() => typeof window.__xss") != "undefined":
            problems.append(f"{page.url}: markup typed into a name ran as script")
        errors, foreign = watcher.take()
        problems += errors + [f"{page.url}: asked another origin for {u}" for u in foreign]
        texts.append(await page.locator("body").inner_text())
        if role == "compliance":
            actions = await page.eval_on_selector_all('form[method="post" i]', "forms => forms.map(f => f.action)")
            problems += [f"{page.url}: a change form for compliance, to {action}" for action in actions
                         if urllib.parse.urlsplit(action).path not in COMPLIANCE_POSTS]
        hrefs = await page.eval_on_selector_all("a[href]", "links => links.filter(a => !a.hasAttribute('download'))"
                                                           ".map(a => a.href)")
        for href in hrefs:
            link = urllib.parse.urlsplit(urllib.parse.urldefrag(href).url)
            target = urllib.parse.urlunsplit(link)
            if (f"{link.scheme}://{link.netloc}" != console.url or not link.path.startswith("/console/")
                    or SKIPPED.search(link.path) or target in queued or link.path == here.path and not link.query):
                continue
            if per_pattern[pattern_of(target)] >= PER_PATTERN:
                continue
            per_pattern[pattern_of(target)] += 1
            queued.add(target)
            queue.append(target)
    await page.context.close()
    return visited, problems, "\n".join(texts)


EXPECTED = {"vendor-admin": ["/console/vendor/", "/console/vendor/members", "/console/vendor/licences",
                             "/console/vendor/datasets", "/console/vendor/usage", "/console/audit/",
                             "/console/evidence/", "/console/account"],
            "compliance": ["/console/vendor/", "/console/vendor/members", "/console/audit/", "/console/evidence/",
                           "/console/account"],
            "member": ["/console/member/", "/console/member/usage", "/console/member/deliveries",
                       "/console/member/keys", "/console/account"]}


@pytest.mark.parametrize("role", ["vendor-admin", "compliance", "member"])
async def test_every_screen_a_role_reaches(console: Console, marked_up: str, role: str) -> None:
    visited, problems, text = await crawl(console, role)
    paths = {urllib.parse.urlsplit(url).path for url in visited}
    missing = [path for path in EXPECTED[role] if path not in paths]
    assert not missing, f"no link led to {missing} (visited {sorted(paths)})"
    assert not problems, "\n".join([f"{len(problems)} problems on {len(visited)} pages:", *problems])
    # The markup was shown as the text it is, where a page shows it.
    assert marked_up in text


async def test_markup_in_a_name_is_text_on_the_members_page(console: Console, marked_up: str) -> None:
    page = await console.signed_in(await console.new_user("vendor-admin"))
    await page.goto(f"{console.url}/console/vendor/members")
    assert await page.get_by_text(marked_up, exact=True).count() >= 1
    assert await page.evaluate("() => typeof window.__xss") == "undefined"
    await page.context.close()




async def test_the_english_link_turns_the_pages_to_english(console: Console) -> None:
    page = await console.signed_in(await console.new_user("member", uuid.UUID(console.content["members"][0]["member_id"])))
    await page.get_by_role("link", name="English").click()
    await page.wait_for_load_state()
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.get_by_role("button", name="Sign out").count() == 1
    violations = await serious_violations(page)
    assert not violations, "\n".join(violations)
    await page.goto(f"{console.url}/console/account")
    assert await page.get_attribute("html", "lang") == "en"  # a preference kept, on every page
    await page.context.close()
