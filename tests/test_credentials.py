"""API key policy (expiry, client networks, client certificate), forwarding trust, audited refusals, backoff.

Client addresses come from httpx's ASGITransport(client=(ip, port)), i.e. the TCP peer as uvicorn
would report it; forwarding headers count only from GATEWAY_TRUSTED_PROXIES.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.backoff import FailureBackoff
from gateway.runtime import Runtime
from keys import apikeys
from keys.apikeys import KeyKind
from tests.conftest import TEST_MASTER_KEY, client_for, open_runtime
from tests.factories import Licensed, auth, licensed_member, wait_for_snapshot

PROXY = "10.0.0.7"
CERT = "3f" * 32


@pytest.fixture
async def proxied(dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A gateway behind a TLS terminator at 10.0.0.0/8, with a small backoff threshold."""
    rt = await open_runtime(dsn, tmp_path, GATEWAY_TRUSTED_PROXIES="10.0.0.0/8", GATEWAY_AUTH_BACKOFF_FAILURES="3")
    yield rt
    await rt.close()


async def _event(runtime: Runtime, response: httpx.Response) -> dict[str, Any]:
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT kind, outcome, credential_id, entry FROM audit_events WHERE event_id = $1",
                                  uuid.UUID(response.headers["audit-event"]))
    assert row is not None
    return {"kind": row["kind"], "outcome": row["outcome"], "credential_id": row["credential_id"],
            "entry": bytes(row["entry"]), "body": orjson.loads(row["entry"])}


async def _refused_and_audited(runtime: Runtime, response: httpx.Response, reason: str, secret: str) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == reason
    event = await _event(runtime, response)
    assert event["kind"] == "auth:credential:reject" and event["outcome"] == "deny"
    assert event["body"]["reason"] == reason
    # Neither the key nor its secret part is in the evidence.
    assert secret.encode() not in event["entry"] and secret[22:65].encode() not in event["entry"]
    return event


async def _member_key(runtime: Runtime, licensed: Licensed, **policy: Any) -> dict[str, Any]:
    return await licensed.vendor.member_key(licensed.member["id"], **policy)


async def test_an_expired_key_is_refused_and_audited(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    past = await licensed.vendor.client.post("/v1/admin/keys", headers=licensed.vendor.headers, json={
        "kind": "member", "member_id": licensed.member["id"], "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422 and past.json()["field"] == "expires_at"
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    issued = await _member_key(runtime, licensed, expires_at=soon)
    assert (await client.get("/v1/datasets", headers=auth(issued["api_key"]))).status_code == 200
    # Time passes (as far as the key is concerned): the snapshot hears of it and refuses the key.
    async with runtime.pool.acquire() as conn:
        await conn.execute("UPDATE credentials SET expires_at = now() - interval '1 second' WHERE id = $1",
                           uuid.UUID(issued["id"]))
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(issued["key_id"]).expires_at
                            < datetime.now(UTC))
    response = await client.get("/v1/datasets", headers=auth(issued["api_key"]))
    event = await _refused_and_audited(runtime, response, "API key expired", issued["api_key"])
    # The secret was right, so the event names the key that was refused.
    assert str(event["credential_id"]) == issued["id"]


async def test_allowed_networks_use_the_peer_address(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    issued = await _member_key(runtime, licensed, allowed_networks=["203.0.113.0/24", "2001:db8::/32"])
    key = issued["api_key"]
    for inside in ("203.0.113.9", "2001:db8::5"):
        async with client_for(runtime, inside) as c:
            assert (await c.get("/v1/datasets", headers=auth(key))).status_code == 200, inside
    async with client_for(runtime, "198.51.100.7") as outside:
        response = await outside.get("/v1/datasets", headers=auth(key))
        event = await _refused_and_audited(runtime, response, "API key not allowed from this client network", key)
        assert event["body"]["request"]["client"] == "198.51.100.7"
        assert str(event["credential_id"]) == issued["id"]
        # A spoofed X-Forwarded-For from a peer that is not a trusted proxy is ignored.
        spoofed = await outside.get("/v1/datasets", headers={**auth(key), "X-Forwarded-For": "203.0.113.9"})
        await _refused_and_audited(runtime, spoofed, "API key not allowed from this client network", key)
    bad = await licensed.vendor.client.post("/v1/admin/keys", headers=licensed.vendor.headers, json={
        "kind": "member", "member_id": licensed.member["id"], "allowed_networks": ["not-a-network"]})
    assert bad.status_code == 422 and bad.json()["field"] == "allowed_networks"


async def test_forwarded_client_address_counts_only_from_trusted_proxies(proxied: Runtime) -> None:
    async with client_for(proxied, PROXY) as via_proxy:
        licensed = await licensed_member(proxied, via_proxy)
        key = (await _member_key(proxied, licensed, allowed_networks=["203.0.113.0/24"]))["api_key"]
        ok = await via_proxy.get("/v1/datasets", headers={**auth(key), "X-Forwarded-For": "203.0.113.9"})
        assert ok.status_code == 200
        assert (await _event(proxied, ok))["body"]["request"]["client"] == "203.0.113.9"
        # The client the proxy names is checked, not the proxy; a chain is walked from the nearest hop.
        outside = await via_proxy.get("/v1/datasets", headers={**auth(key), "X-Forwarded-For": "198.51.100.1"})
        assert outside.status_code == 401
        chained = await via_proxy.get("/v1/datasets", headers={
            **auth(key), "X-Forwarded-For": "203.0.113.9, 198.51.100.1, 10.0.0.3"})
        assert chained.status_code == 401  # the hop the proxies saw was 198.51.100.1; the first entry is a claim
    async with client_for(proxied, "198.51.100.9") as direct:
        spoofed = await direct.get("/v1/datasets", headers={**auth(key), "X-Forwarded-For": "203.0.113.9"})
        await _refused_and_audited(proxied, spoofed, "API key not allowed from this client network", key)


async def test_a_certificate_bound_key_needs_the_certificate_from_a_trusted_proxy(proxied: Runtime) -> None:
    async with client_for(proxied, PROXY) as via_proxy:
        licensed = await licensed_member(proxied, via_proxy)
        # Accepted in openssl's colon form and upper case; stored as 64 lowercase hex digits.
        colon_form = ":".join(CERT[i:i + 2] for i in range(0, 64, 2)).upper()
        issued = await _member_key(proxied, licensed, client_cert_sha256=colon_form)
        assert issued["client_cert_sha256"] == CERT
        key = issued["api_key"]
        assert (await via_proxy.get("/v1/datasets", headers={**auth(key), "X-Client-Cert-SHA256": CERT})
                ).status_code == 200
        missing = await via_proxy.get("/v1/datasets", headers=auth(key))
        reason = "API key requires the client certificate it is bound to"
        await _refused_and_audited(proxied, missing, reason, key)
        other = await via_proxy.get("/v1/datasets", headers={**auth(key), "X-Client-Cert-SHA256": "00" * 32})
        await _refused_and_audited(proxied, other, reason, key)
        bad = await via_proxy.post("/v1/admin/keys", headers=licensed.vendor.headers, json={
            "kind": "member", "member_id": licensed.member["id"], "client_cert_sha256": "not-a-fingerprint"})
        assert bad.status_code == 422 and bad.json()["field"] == "client_cert_sha256"
    # The same header from a peer that is not a trusted proxy proves nothing.
    async with client_for(proxied, "198.51.100.9") as direct:
        spoofed = await direct.get("/v1/datasets", headers={**auth(key), "X-Client-Cert-SHA256": CERT})
        await _refused_and_audited(proxied, spoofed, reason, key)


async def test_unknown_and_malformed_keys_are_audited_without_the_secret(runtime: Runtime,
                                                                         client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    bad_checksum = licensed.key[:22] + "A" * 43 + licensed.key[-6:]
    known_id_wrong_secret = _with_checksum(licensed.key[:22] + "A" * 43)
    unknown = apikeys.generate(KeyKind.MEMBER).token
    for token, reason in [(bad_checksum, "malformed API key: API key checksum does not match"),
                          (known_id_wrong_secret, "API key not recognised"), (unknown, "API key not recognised")]:
        async with client_for(runtime, f"192.0.2.{len(token) % 7 + len(reason)}") as c:
            response = await c.get("/v1/datasets", headers=auth(token))
        event = await _refused_and_audited(runtime, response, reason, token)
        assert event["credential_id"] is None  # without the secret, the event names no key


def _with_checksum(body: str) -> str:
    value, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(apikeys.BASE62[digit])
    return body + "".join(reversed(digits))


# -- backoff --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_blocks_after_n_failures_grows_and_forgives() -> None:
    clock = Clock()
    backoff = FailureBackoff(threshold=3, window=60, max_delay=8, clock=clock)
    bad, good = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
    assert [backoff.failure(bad) for _ in range(3)] == [0, 0, 1]
    assert backoff.retry_after(bad) == 1 and backoff.retry_after(good) == 0
    waits = []
    for _ in range(5):
        clock.now += backoff.retry_after(bad)  # the client waits as told, then fails again
        assert backoff.retry_after(bad) == 0
        waits.append(backoff.failure(bad))
    assert waits == [2, 4, 8, 8, 8]  # doubling, bounded
    clock.now += 8 + 61  # quiet for a window after its last wait: forgiven
    assert backoff.retry_after(bad) == 0 and backoff.failure(bad) == 0
    # Failures spread wider than the window never add up.
    clock.now += 100
    spaced = []
    for _ in range(10):
        spaced.append(backoff.failure(good))
        clock.now += 31
    assert spaced == [0] * 10
    # IPv6 counts per /64, and the table is bounded.
    small = FailureBackoff(threshold=2, window=60, max_tracked=3, clock=clock)
    small.failure(ipaddress.ip_address("2001:db8:0:1::1"))
    assert small.failure(ipaddress.ip_address("2001:db8:0:1::2")) == 1
    assert small.retry_after(ipaddress.ip_address("2001:db8:0:1:ffff::9")) == 1
    assert small.retry_after(ipaddress.ip_address("2001:db8:0:2::1")) == 0
    for i in range(5):
        small.failure(ipaddress.ip_address(f"192.0.2.{i}"))
    assert len(small) == 3


async def test_failing_addresses_get_429_others_do_not(proxied: Runtime) -> None:
    async with client_for(proxied, PROXY) as admin_client:
        licensed = await licensed_member(proxied, admin_client)
    wrong = "lpdm_" + "x" * 66
    async with client_for(proxied, "198.51.100.20") as noisy, client_for(proxied, "198.51.100.21") as quiet:
        for _ in range(3):
            assert (await noisy.get("/v1/datasets", headers=auth(wrong))).status_code == 401
        blocked = await noisy.get("/v1/datasets", headers=auth(wrong))
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert blocked.headers["content-type"] == "application/problem+json"
        event = await _event(proxied, blocked)
        assert event["kind"] == "auth:credential:reject" and "too many failed" in event["body"]["reason"]
        # Only failures are slowed: a colleague's valid key from the same (NAT) address is served.
        assert (await noisy.get("/v1/datasets", headers=auth(licensed.key))).status_code == 200
        # The token endpoint pushes back on failures too, in its RFC 6749 JSON form.
        token = await noisy.post("/oauth/token", data={"grant_type": "client_credentials"})
        assert token.status_code == 429 and token.json()["error"] == "slow_down"
        # Another address, even one behind the same proxy, is unaffected.
        assert (await quiet.get("/v1/datasets", headers=auth(wrong))).status_code == 401
    async with client_for(proxied, PROXY) as proxy:
        forwarded = await proxy.get("/v1/datasets", headers={**auth(licensed.key), "X-Forwarded-For": "192.0.2.44"})
        assert forwarded.status_code == 200
        # Failed client authentication at the token endpoint counts as well.
        for _ in range(3):
            response = await proxy.post("/oauth/token", headers={"X-Forwarded-For": "192.0.2.45"},
                                        data={"grant_type": "client_credentials", "client_id": "lpdi_" + "A" * 16,
                                              "client_secret": "nope"})
            assert response.status_code == 400 and response.json()["error"] == "invalid_client"
        again = await proxy.get("/v1/datasets", headers={**auth(wrong), "X-Forwarded-For": "192.0.2.45"})
        assert again.status_code == 429
        served = await proxy.get("/v1/datasets", headers={**auth(licensed.key), "X-Forwarded-For": "192.0.2.45"})
        assert served.status_code == 200


def test_a_million_failures_keep_the_backoff_bounded() -> None:
    """2.0 ** (failures - 1) overflowed a float after about 1,033 failures: every later request was a 500."""
    clock = Clock()
    backoff = FailureBackoff(threshold=3, window=60, max_delay=300, clock=clock)
    address = ipaddress.ip_address("203.0.113.9")
    waits = set()
    for _ in range(1_000_000):
        waits.add(backoff.failure(address))
    assert max(waits) == 300 and backoff.retry_after(address) == 300


async def test_two_thousand_concurrent_failures_are_never_a_500_and_a_valid_key_still_passes(
        proxied: Runtime) -> None:
    async with client_for(proxied, PROXY) as admin_client:
        licensed = await licensed_member(proxied, admin_client)
    wrong = "lpdm_" + "y" * 66
    async with client_for(proxied, "198.51.100.30") as noisy:
        answers = await asyncio.gather(*(noisy.get("/v1/datasets", headers=auth(wrong)) for _ in range(2000)),
                                       noisy.get("/v1/datasets", headers=auth(licensed.key)))
    statuses = collections.Counter(a.status_code for a in answers[:-1])
    assert set(statuses) <= {401, 429} and statuses[429] > 1000, statuses
    assert answers[-1].status_code == 200


# -- the CLI --------------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def test_oauth_clients_and_the_keyring_from_the_cli(runtime: Runtime, client: httpx.AsyncClient,
                                                         tmp_path: Path) -> None:
    licensed = await licensed_member(runtime, client)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=runtime.dsn, GATEWAY_MASTER_KEY=TEST_MASTER_KEY, GATEWAY_HOME=str(tmp_path))
    vendor = str(licensed.vendor.id)
    created = orjson.loads(_cli(["oauth-client", "create", "--vendor", vendor, "--member", licensed.member["id"],
                                 "--label", "etl"], env).stdout)
    assert created["client_secret"].startswith("lpda_") and created["token_endpoint"].endswith("/oauth/token")
    listed = _cli(["oauth-client", "list", "--vendor", vendor], env).stdout
    assert created["client_id"] in listed and created["client_secret"] not in listed
    await wait_for_snapshot(runtime, lambda: created["client_id"] in runtime.snapshot.oauth_clients_by_client_id)
    token = await client.post("/oauth/token", auth=(created["client_id"], created["client_secret"]),
                              data={"grant_type": "client_credentials"})
    assert token.status_code == 200
    revoked = orjson.loads(_cli(["oauth-client", "revoke", "--vendor", vendor, created["client_id"]], env).stdout)
    assert revoked["revoked_at"] is not None

    keyring = orjson.loads(_cli(["keys", "list"], env).stdout)
    jwt_keys = [k for k in keyring["signing_keys"] if k["purpose"] == "jwt"]
    assert [k["status"] for k in jwt_keys] == ["current"]
    assert {s["purpose"] for s in keyring["server_secrets"]} >= {"api-key-hash", "cursor"}
    assert "sealed" not in str(keyring) and "private" not in str(keyring)
    rotated = orjson.loads(_cli(["keys", "rotate", "--purpose", "jwt"], env).stdout)
    assert rotated["previous_key_id"] == jwt_keys[0]["key_id"]
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.jwt.signer.key_id == rotated["key_id"])
    statuses = {k["key_id"]: k["status"] for k in orjson.loads(_cli(["keys", "list"], env).stdout)["signing_keys"]}
    assert statuses[rotated["key_id"]] == "current" and statuses[rotated["previous_key_id"]] == "verifying"
    refused = _cli(["keys", "retire", rotated["key_id"]], env, check=False)
    assert refused.returncode == 1 and "rotate first" in refused.stderr
    _cli(["keys", "retire", rotated["previous_key_id"]], env)
    await wait_for_snapshot(runtime, lambda: rotated["previous_key_id"] not in {
        k["kid"] for k in runtime.snapshot.jwt.jwks(time.time())["keys"]})

    # API key hashing: a new secret version for new keys; keys issued before keep working.
    hashing = orjson.loads(_cli(["keys", "rotate", "--purpose", "api-key-hash"], env).stdout)
    assert hashing == {"purpose": "api-key-hash", "version": 2}
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.hasher.current_version == 2)
    assert (await client.get("/v1/datasets", headers=licensed.headers)).status_code == 200
    fresh = await licensed.vendor.member_key(licensed.member["id"])
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT hash_version FROM credentials WHERE id = $1", uuid.UUID(fresh["id"])) == 2
        kinds = [r["kind"] for r in await conn.fetch(
            "SELECT kind FROM audit_events WHERE kind LIKE 'operator:keyring:%' ORDER BY at")]
    # The first: the audit key the gateway's first writer made (schemas/audit-format.md §4.3).
    assert kinds == ["operator:keyring:create", "operator:keyring:rotate", "operator:keyring:retire",
                     "operator:keyring:rotate"]
    assert (await client.get("/v1/datasets", headers=auth(fresh["api_key"]))).status_code == 200
