"""Revocation: a revoked OAuth client, member or API key is refused at once, here and on every other instance.

The multi-instance test starts a real second gateway (`python -m gateway.cli serve`) on the same
PostgreSQL, revokes through the in-process gateway and measures how long the second one goes on
accepting the credential. The promise is under a second; LISTEN/NOTIFY usually makes it milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.runtime import Runtime
from tests.conftest import TEST_MASTER_KEY, client_for, open_runtime
from tests.factories import auth, licensed_member, wait_for_snapshot
from tests.test_oauth import fetch_token, make_client, token_for

PUBLIC_URL = "https://gateway.test"  # the same on every instance: it is the tokens' issuer and audience
PROPAGATION_LIMIT = 1.0


async def test_a_revoked_clients_unexpired_token_is_refused_at_once(runtime: Runtime,
                                                                   client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    token = await token_for(client, oauth_client)
    assert (await client.get("/v1/datasets", headers=auth(token))).status_code == 200
    await licensed.vendor.ok("POST", f"/v1/admin/oauth-clients/{oauth_client.id}/revoke")
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.oauth_clients_by_client_id[
        oauth_client.client_id].revoked_at is not None, timeout=PROPAGATION_LIMIT)
    response = await client.get("/v1/datasets", headers=auth(token))
    assert response.status_code == 401 and response.json()["detail"] == "OAuth client revoked"
    async with runtime.pool.acquire() as conn:
        event = await conn.fetchrow("SELECT kind, credential_id FROM audit_events WHERE event_id = $1",
                                    uuid.UUID(response.headers["audit-event"]))
    assert event["kind"] == "auth:credential:reject" and str(event["credential_id"]) == oauth_client.id


async def test_a_revoked_member_loses_its_tokens_and_its_clients(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    token = await token_for(client, oauth_client)
    await licensed.vendor.ok("POST", f"/v1/admin/members/{licensed.member['id']}/revoke")
    member_id = uuid.UUID(licensed.member["id"])
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.members[member_id].status == "revoked",
                            timeout=PROPAGATION_LIMIT)
    # The member's revocation revokes its clients with it (tests/test_members.py shows the rest).
    response = await client.get("/v1/datasets", headers=auth(token))
    assert response.status_code == 401 and response.json()["detail"] == "OAuth client revoked"
    refused = await fetch_token(client, oauth_client)
    assert refused.status_code == 401 and refused.json()["error_description"] == "OAuth client revoked"
    again = await licensed.vendor.client.post("/v1/admin/oauth-clients", headers=licensed.vendor.headers,
                                              json={"member_id": licensed.member["id"]})
    assert again.status_code == 409


# -- a second gateway process -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def first(dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(dsn, tmp_path / "first", GATEWAY_PUBLIC_URL=PUBLIC_URL)
    yield rt
    await rt.close()


@pytest.fixture
async def second(dsn: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real `gateway serve` on the same database; yields its base URL, stops it whatever happens."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOST="127.0.0.1",
               GATEWAY_PORT=str(port), GATEWAY_HOME=str(tmp_path / "second"), GATEWAY_PUBLIC_URL=PUBLIC_URL,
               GATEWAY_INSTANCE="second", GATEWAY_LOG_LEVEL="WARNING")
    log = tmp_path / "second.log"
    with log.open("wb") as stderr:
        # Popen returns at once: the server runs apart, and the fixture waits for it below without blocking.
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,  # noqa: ASYNC220
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base, timeout=2) as probe:
            while True:
                try:
                    if (await probe.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the second gateway did not become ready"
                await asyncio.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _until_refused(remote: httpx.AsyncClient, headers: dict[str, str], limit: float) -> tuple[float, int]:
    """Seconds until the remote gateway answers 401 to `headers`, and how many requests it took."""
    started = time.perf_counter()
    polls = 0
    while True:
        polls += 1
        response = await remote.get("/v1/datasets", headers=headers)
        if response.status_code == 401:
            return time.perf_counter() - started, polls
        assert response.status_code == 200, response.text
        assert time.perf_counter() - started < limit * 3, "revocation never reached the second gateway"


@pytest.mark.slow
async def test_revocation_reaches_a_second_gateway_process_within_a_second(first: Runtime, second: str) -> None:
    async with client_for(first) as local, httpx.AsyncClient(base_url=second, timeout=5) as remote:
        licensed = await licensed_member(first, local)
        oauth_client = await make_client(first, licensed)
        token = await token_for(local, oauth_client)
        # The second instance verifies tokens the first issued (same keyring, issuer and audience) and
        # knows the new key and client: it heard of them by NOTIFY.
        for headers in (auth(token), licensed.headers):
            deadline = time.monotonic() + 2
            while (await remote.get("/v1/datasets", headers=headers)).status_code != 200:
                assert time.monotonic() < deadline, "the second gateway never accepted the credential"
                await asyncio.sleep(0.01)

        figures = {}
        revoked = await local.post(f"/v1/admin/oauth-clients/{oauth_client.id}/revoke",
                                   headers=licensed.vendor.headers)
        assert revoked.status_code == 200  # committed: the clock starts now
        figures["OAuth client (token)"] = await _until_refused(remote, auth(token), PROPAGATION_LIMIT)
        keys = (await local.get("/v1/admin/keys", headers=licensed.vendor.headers)).json()["items"]
        member_key = next(k for k in keys if k["kind"] == "member")
        revoked = await local.post(f"/v1/admin/keys/{member_key['id']}/revoke", headers=licensed.vendor.headers)
        assert revoked.status_code == 200
        figures["API key"] = await _until_refused(remote, licensed.headers, PROPAGATION_LIMIT)

    for what, (seconds, polls) in figures.items():
        print(f"\nrevocation of {what} seen by the second gateway process after {seconds * 1000:.1f} ms "
              f"({polls} requests)")
        assert seconds < PROPAGATION_LIMIT, f"{what}: {seconds:.3f} s"
