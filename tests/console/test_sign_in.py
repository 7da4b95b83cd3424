"""Signing in and out of the console: password and TOTP, enrolment, backoff, sessions, CSRF, headers."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from gateway import console_users
from gateway.actors import cli_actor
from gateway.runtime import Runtime
from keys import totp
from tests.conftest import client_for
from tests.console.support import console_user, csrf_of, current_code, post_form, sign_in


async def _events(runtime: Runtime, kind: str) -> list[dict[str, Any]]:
    rows = await runtime.pool.fetch("SELECT entry FROM audit_events WHERE kind = $1 ORDER BY at", kind)
    return [orjson.loads(row["entry"]) for row in rows]


async def test_each_role_signs_in_with_password_and_code_and_lands_on_its_home(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    for role, home in (("member", "/console/member/"), ("vendor-admin", "/console/vendor/"),
                       ("compliance", "/console/vendor/")):
        async with client_for(demo_runtime) as client:
            answer = await sign_in(client, console_user(demo_content, role))
            assert (answer.status_code, answer.headers["location"]) == (303, home)
    signed_in = await _events(demo_runtime, "console:session:sign-in")
    # The person is the actor: their id where a key's would be, their email as its label.
    assert [(e["actor"]["kind"], e["detail"]["actor_label"]) for e in signed_in] == [
        ("console-user", console_user(demo_content, role)["email"]) for role in ("member", "vendor-admin", "compliance")]


async def test_a_wrong_password_or_code_is_refused_alike_and_audited(
        demo_client: httpx.AsyncClient, demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    user = console_user(demo_content, "vendor-admin")
    wrong = await post_form(demo_client, "/console/sign-in", {"email": user["email"], "password": "not the password"})
    unknown = await post_form(demo_client, "/console/sign-in", {"email": "nobody@demo.lpd.example", "password": "x" * 12})
    assert wrong.status_code == unknown.status_code == 401
    assert "正しくありません" in wrong.text and "正しくありません" in unknown.text
    answer = await sign_in(demo_client, user, code="000000" if current_code(user["totp_secret"]) != "000000" else "111111")
    assert answer.status_code == 401
    reasons = [e["reason"] for e in await _events(demo_runtime, "console:session:reject")]
    assert reasons == ["wrong password", "unknown email", "wrong or reused TOTP code"]


async def test_a_totp_code_works_once(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    user = console_user(demo_content, "member")
    code = current_code(user["totp_secret"])
    async with client_for(demo_runtime) as first, client_for(demo_runtime) as second:
        assert (await sign_in(first, user, code=code)).status_code == 303
        replayed = await sign_in(second, user, code=code)
        assert replayed.status_code == 401
        assert (await second.get("/console/account")).status_code == 303  # still not signed in


async def test_failures_in_a_row_make_the_account_wait_on_every_instance(
        demo_runtime: Runtime, demo_content: dict[str, Any], tmp_path: Any) -> None:
    user = console_user(demo_content, "compliance")
    async with client_for(demo_runtime) as client:
        for _ in range(console_users.FREE_FAILURES):
            await post_form(client, "/console/sign-in", {"email": user["email"], "password": "wrong password!"})
        waiting = await post_form(client, "/console/sign-in", {"email": user["email"], "password": user["password"]})
    assert waiting.status_code == 429 and int(waiting.headers["retry-after"]) > 0
    assert "秒後" in waiting.text


async def test_the_cookie_before_sign_in_is_worth_nothing_after_it(
        demo_client: httpx.AsyncClient, demo_content: dict[str, Any]) -> None:
    """Session fixation: every step issues a new token, and the password step's token ends with it."""
    user = console_user(demo_content, "member")
    await demo_client.get("/console/sign-in")
    planted = demo_client.cookies.get("lpd-session")
    assert planted is None
    answer = await post_form(demo_client, "/console/sign-in", {"email": user["email"], "password": user["password"]})
    pending = demo_client.cookies.get("lpd-session")
    assert answer.status_code == 303 and pending
    assert (await demo_client.get("/console/account")).status_code == 303  # the password alone opens nothing
    await post_form(demo_client, "/console/sign-in/code", {"code": current_code(user["totp_secret"])})
    signed_in = demo_client.cookies.get("lpd-session")
    assert signed_in and signed_in != pending
    demo_client.cookies.set("lpd-session", pending)
    assert (await demo_client.get("/console/account")).status_code == 303


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
        demo_client: httpx.AsyncClient, demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    user = console_user(demo_content, "member")
    await demo_client.get("/console/sign-in")
    for token in (None, "0" * 64):
        data = {"email": user["email"], "password": user["password"]} | ({"csrf": token} if token else {})
        refused = await demo_client.post("/console/sign-in", data=data)
        assert refused.status_code == 403 and "lpd-session" not in refused.headers.get("set-cookie", "")
    assert await demo_runtime.pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    # A token shown to another browser is no good either.
    async with client_for(demo_runtime) as other:
        token = csrf_of(await other.get("/console/sign-in"))
    refused = await demo_client.post("/console/sign-in", data={"email": user["email"], "password": user["password"],
                                                               "csrf": token})
    assert refused.status_code == 403
    await sign_in(demo_client, user)
    refused = await demo_client.post("/console/sign-out", data={})
    assert refused.status_code == 403
    assert (await demo_client.get("/console/account")).status_code != 303  # still signed in


async def test_signing_out_ends_the_session_on_every_instance(
        demo_runtime: Runtime, demo_dsn: str, demo_content: dict[str, Any], tmp_path: Any) -> None:
    from tests.conftest import open_runtime
    other = await open_runtime(demo_dsn, tmp_path / "other")
    try:
        async with client_for(demo_runtime) as here, client_for(other) as there:
            await sign_in(here, console_user(demo_content, "member"))
            there.cookies.set("lpd-session", here.cookies["lpd-session"])
            assert (await there.get("/console/account")).status_code != 303
            page = await here.get("/console/account")
            assert (await here.post("/console/sign-out", data={"csrf": csrf_of(page)})).status_code == 303
            assert (await there.get("/console/account")).status_code == 303
        assert len(await _events(demo_runtime, "console:session:sign-out")) == 1
    finally:
        await other.close()


async def test_a_suspended_user_is_signed_out_at_once(demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    user = console_user(demo_content, "compliance")
    async with client_for(demo_runtime) as client:
        await sign_in(client, user)
        assert (await client.get("/console/account")).status_code != 303
        vendor_id = (await console_users.find(demo_runtime.pool, _vendor(demo_content), user["email"])).vendor_id
        found = await console_users.find(demo_runtime.pool, vendor_id, user["email"])
        await console_users.set_status(demo_runtime.writer, cli_actor(vendor_id), vendor_id, found.id, "suspend")
        assert (await client.get("/console/account")).status_code == 303
        refused = await post_form(client, "/console/sign-in", {"email": user["email"], "password": user["password"]})
        assert refused.status_code == 401


def _vendor(content: dict[str, Any]) -> Any:
    import uuid
    return uuid.UUID(content["vendor_id"])


async def test_a_user_without_a_second_factor_enrols_one_from_a_qr_code(
        demo_runtime: Runtime, demo_content: dict[str, Any]) -> None:
    vendor_id = _vendor(demo_content)
    _, password, _ = await console_users.create(demo_runtime.writer, demo_runtime.master, cli_actor(vendor_id),
                                                vendor_id, "compliance", "new.officer@demo.lpd.example")
    async with client_for(demo_runtime) as client:
        await post_form(client, "/console/sign-in", {"email": "new.officer@demo.lpd.example", "password": password})
        page = await client.get("/console/sign-in/code")
        assert "<svg" in page.text and "qr" in page.text
        secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text).group(1).replace(" ", "")
        answer = await client.post("/console/sign-in/code", data={"csrf": csrf_of(page),
                                                                   "code": totp.code_at(secret, totp.step_of(__import__("time").time()))})
        assert answer.status_code == 303
    assert len(await _events(demo_runtime, "console:totp:enrol")) == 1


async def test_pages_forbid_framing_and_inline_script(demo_client: httpx.AsyncClient) -> None:
    page = await demo_client.get("/console/sign-in")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert '<html lang="ja">' in page.text
    english = await demo_client.get("/console/sign-in", headers={"accept-language": "en-GB,en;q=0.9,ja;q=0.5"})
    assert '<html lang="en">' in english.text


async def test_off_loopback_the_console_needs_https(demo_runtime: Runtime) -> None:
    async with client_for(demo_runtime, client_ip="203.0.113.9") as client:
        for path in ("/console/sign-in", "/console/"):
            page = await client.get(path)
            assert page.status_code == 403 and "HTTPS" in page.text, path
