"""Signing in to the console in-process, as a browser would: forms, their CSRF tokens and the cookies."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from keys import totp

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, f"no CSRF token on {page.request.url}"
    return found.group(1)


def current_code(secret: str, offset_steps: int = 0) -> str:
    return totp.code_at(secret, totp.step_of(time.time()) + offset_steps)


async def post_form(client: httpx.AsyncClient, path: str, data: dict[str, Any], *, page: str | None = None,
                    files: dict[str, Any] | None = None) -> httpx.Response:
    """POST a form with the CSRF token of the page it is on (`page`, by default the form's own path)."""
    shown = await client.get(page or path)
    return await client.post(path, data={**data, "csrf": csrf_of(shown)}, files=files)


async def sign_in(client: httpx.AsyncClient, user: dict[str, Any], *, code: str | None = None) -> httpx.Response:
    """Sign in with email, password and a TOTP code; returns the answer to the code step (303 when right)."""
    answer = await post_form(client, "/console/sign-in", {"email": user["email"], "password": user["password"]})
    assert answer.status_code == 303, answer.text
    return await post_form(client, "/console/sign-in/code", {"code": code or current_code(user["totp_secret"])})


def console_user(content: dict[str, Any], role: str) -> dict[str, Any]:
    return next(u for u in content["console"]["users"] if u["role"] == role)


async def until_covered(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """The page of an event once a signed checkpoint covers it (the writer signs within seconds)."""
    for _ in range(100):
        page = await client.get(path)
        if page.status_code != 200 or 'id="receipt"' in page.text:
            return page
        await asyncio.sleep(0.1)
    raise AssertionError(f"no checkpoint covered the event of {path} in time")
