"""No secret leaks: a scenario issues every kind of credential, uses them, fails with them, and then every
place a secret could end up is searched for every one of them.

Issued: a vendor admin key, member and compliance keys, a network-bound key, a Delta Sharing key, two
OAuth clients (secret) and their access tokens. Presented and refused: wrong, revoked, malformed and
misplaced keys, wrong and revoked client secrets, tampered and revoked access tokens. Searched: every
response body and header the test saw (except the one response that shows a new secret once), every
row of every table (the audit events above all), the Prometheus text and the gateway's logs at DEBUG.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway import metering
from gateway.app import build_app
from gateway.runtime import Runtime
from keys import apikeys
from tests.conftest import open_runtime
from tests.factories import auth, licensed_member, records_path_of, wait_for_snapshot


def with_checksum(body: str) -> str:
    value, digits = zlib.crc32(body.encode()), []
    for _ in range(apikeys.CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(apikeys.BASE62[digit])
    return body + "".join(reversed(digits))


def parts(secret: str) -> list[str]:
    """The secret and the parts of it that are secret on their own."""
    if secret.count(".") == 2:  # a JWT: the whole, and its signature
        return [secret, secret.rsplit(".", 1)[1]]
    if secret.count("_") >= 2:  # lpdX_<key id>_<secret><checksum>: the id is public, the rest is not
        tail = secret.split("_", 2)[2]
        return [secret, tail, tail[:apikeys.SECRET_LENGTH]]
    return [secret]


class Recorder:
    """Every response the test's client received, read in full."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.responses.append(response)


@pytest.fixture
async def runtime(dsn: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    # Many refusals from one address on purpose: the backoff would stop them before the credential is read.
    rt = await open_runtime(dsn, tmp_path, GATEWAY_AUTH_BACKOFF_FAILURES="100000", GATEWAY_LOG_LEVEL="DEBUG")
    yield rt
    await rt.close()


async def test_no_secret_reaches_responses_logs_metrics_or_the_database(
        runtime: Runtime, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("gateway", "keys", "asyncpg", "starlette", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    recorder = Recorder()
    transport = httpx.ASGITransport(app=build_app(runtime), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test",
                                 event_hooks={"response": [recorder]}) as client:
        secrets: list[str] = []  # every secret issued or presented
        shown_once: dict[str, httpx.Response] = {}  # secret -> the response that legitimately showed it

        def issued(response: httpx.Response, secret: str) -> str:
            assert response.status_code in (200, 201), response.text
            secrets.append(secret)
            shown_once[secret] = response
            return secret

        licensed = await licensed_member(runtime, client)
        secrets += [licensed.vendor.key]  # issued by the domain code, as the operator's CLI does
        vendor = licensed.vendor
        member_key = licensed.key
        secrets.append(member_key)
        shown_once[member_key] = next(r for r in recorder.responses if member_key in r.text)
        path = records_path_of(licensed)

        async def issue_key(**body: object) -> tuple[dict[str, str], str]:
            response = await client.post("/v1/admin/keys", json=body, headers=vendor.headers)
            key = issued(response, response.json()["api_key"])
            await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(response.json()["key_id"]) is not None)
            return response.json(), key

        _, compliance = await issue_key(kind="compliance")
        _, bound = await issue_key(kind="member", member_id=licensed.member["id"], allowed_networks=["10.0.0.0/8"])
        doomed, doomed_key = await issue_key(kind="member", member_id=licensed.member["id"], label="to revoke")
        profile = await client.get("/v1/delta-sharing/profile", headers=auth(member_key))
        sharing_key = issued(profile, profile.json()["bearerToken"])
        await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(sharing_key.split("_")[1]) is not None)

        clients = []
        for label in ("etl", "to revoke"):
            created = await client.post("/v1/admin/oauth-clients", headers=vendor.headers,
                                        json={"member_id": licensed.member["id"], "label": label})
            issued(created, created.json()["client_secret"])
            clients.append(created.json())
        await wait_for_snapshot(runtime, lambda: all(c["client_id"] in runtime.snapshot.oauth_clients_by_client_id
                                                     for c in clients))
        tokens = []
        for oauth_client in clients:
            response = await client.post("/oauth/token", auth=(oauth_client["client_id"], oauth_client["client_secret"]),
                                         data={"grant_type": "client_credentials"})
            tokens.append(issued(response, response.json()["access_token"]))

        # -- use them ---------------------------------------------------------------------------------
        for key in (member_key, sharing_key, tokens[0], tokens[1], doomed_key):
            assert (await client.get("/v1/datasets", headers=auth(key))).status_code == 200
            assert (await client.get(path, params={"limit": 3}, headers=auth(key))).status_code == 200
        assert (await client.get(path, headers=auth(member_key))).status_code == 200
        assert (await client.get(path, params={"format": "csv"}, headers=auth(tokens[0]))).status_code == 200
        assert (await client.get("/v1/admin/members", headers=auth(compliance))).status_code == 200
        assert (await client.get("/delta-sharing/shares", headers=auth(sharing_key))).status_code == 200
        assert (await client.get("/v1/usage", headers=auth(member_key))).status_code == 200

        # -- revoke some ------------------------------------------------------------------------------
        assert (await client.post(f"/v1/admin/keys/{doomed['id']}/revoke", headers=vendor.headers)).status_code == 200
        assert (await client.post(f"/v1/admin/oauth-clients/{clients[1]['id']}/revoke",
                                  headers=vendor.headers)).status_code == 200
        await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(doomed["key_id"]).revoked_at is not None
                                and runtime.snapshot.oauth_clients_by_client_id[clients[1]["client_id"]].revoked_at)

        # -- fail with them ---------------------------------------------------------------------------
        key_id = member_key.split("_")[1]
        wrong_secret = with_checksum(f"lpdm_{key_id}_{'Q' * apikeys.SECRET_LENGTH}")
        bad_checksum = member_key[:-1] + ("A" if member_key[-1] != "A" else "B")
        wrong_client_secret = with_checksum(f"lpda_{clients[0]['client_id'][5:]}_{'Q' * apikeys.SECRET_LENGTH}")
        tampered_jwt = tokens[0][:-2] + ("AA" if not tokens[0].endswith("AA") else "BB")
        secrets += [wrong_secret, wrong_client_secret]
        variants = {bad_checksum: member_key, member_key[:-1]: member_key, member_key + "x": member_key,
                    "lpdv_" + member_key[5:]: member_key, member_key.upper(): member_key, tampered_jwt: tokens[0]}
        for variant, original in variants.items():  # the issuing response shows their secret part too
            secrets.append(variant)
            shown_once[variant] = shown_once[original]
        refused_bearers = [wrong_secret, *variants, doomed_key, tokens[1], clients[0]["client_secret"]]
        for token in refused_bearers:
            response = await client.get(path, headers=auth(token))
            assert response.status_code == 401, (token[:5], response.text)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=transport.app, client=("192.0.2.9", 50000)),
                                     base_url="http://gateway.test", event_hooks={"response": [recorder]}) as outside:
            assert (await outside.get(path, headers=auth(bound))).status_code == 401  # wrong network
        misplaced = [
            client.get(path, params={"api_key": member_key}),
            client.get(path, params={"access_token": tokens[0]}),
            client.get(path, headers={"Authorization": f"Basic {member_key}"}),
            client.get(path, headers={"X-Api-Key": member_key}),
            client.get(path, headers=[("Authorization", f"Bearer {member_key}"), ("Authorization", f"Bearer {compliance}")]),
            client.post("/oauth/token", params={"client_secret": clients[0]["client_secret"]},
                        data={"grant_type": "client_credentials"}),
        ]
        for call in misplaced:
            assert (await call).status_code in (400, 401)
        for client_id, secret in [(clients[0]["client_id"], wrong_client_secret),
                                  (clients[0]["client_id"], clients[0]["client_secret"][:-1]
                                   + ("0" if clients[0]["client_secret"][-1] != "0" else "1")),
                                  (clients[1]["client_id"], clients[1]["client_secret"]),
                                  (clients[1]["client_id"], clients[0]["client_secret"]),
                                  (clients[0]["client_id"], member_key)]:
            for how in ("basic", "form"):
                form = {"grant_type": "client_credentials"}
                if how == "form":
                    response = await client.post("/oauth/token", data={**form, "client_id": client_id,
                                                                       "client_secret": secret})
                else:
                    response = await client.post("/oauth/token", auth=(client_id, secret), data=form)
                assert response.status_code in (400, 401), response.text

        # -- errors with good credentials ---------------------------------------------------------------
        errors = [
            client.get(f"/v1/datasets/{uuid.uuid4()}/records", headers=auth(member_key)),
            client.get(path, params={"cursor": "x" * 40}, headers=auth(member_key)),
            client.get(path, params={"format": "xml"}, headers=auth(tokens[0])),
            client.get(path, params={"partition": "east"}, headers=auth(sharing_key)),
            client.get(path, params={"limit": "-1"}, headers=auth(member_key)),
            client.get("/v1/admin/members", headers=auth(member_key)),
            client.post("/v1/admin/keys", json={"kind": "vendor"}, headers=vendor.headers),
            client.post("/v1/admin/members", json={"name": "x", "api_key": member_key}, headers=vendor.headers),
            client.post("/v1/admin/members", content=b"{not json", headers={**vendor.headers,
                                                                             "content-type": "application/json"}),
            client.delete(path, headers=auth(member_key)),
            # A key pasted where a client's text ends up in the audit event: the path, the request id, the agent.
            client.get(f"/v1/datasets/{member_key}", headers={**auth(member_key), "X-Request-Id": member_key,
                                                               "User-Agent": f"script/1.0 {clients[0]['client_secret']}"}),
        ]
        for call in errors:
            assert 400 <= (await call).status_code < 500

        # A failure of the gateway itself while a credential is in hand: logged with its traceback.
        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the usage report failed")

        monkeypatch.setattr(metering, "usage_report", broken)
        # Starlette answers 500 and then re-raises for the server to log: the transport must not raise it.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=transport.app, raise_app_exceptions=False),
                                     base_url="http://gateway.test", event_hooks={"response": [recorder]}) as lenient:
            assert (await lenient.get("/v1/usage", headers=auth(member_key))).status_code == 500
        monkeypatch.undo()
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "gateway_responses_total" in metrics.text

    # -- search everywhere ----------------------------------------------------------------------------
    await runtime.writer.close()  # every audit event committed
    assert any("unhandled error" in r.getMessage() for r in caplog.records)
    places: dict[str, str] = {}
    for i, response in enumerate(recorder.responses):
        request = response.request
        text = "\n".join([response.text, *(f"{k}: {v}" for k, v in response.headers.multi_items())])
        places[f"response {i} to {request.method} {request.url.path}"] = text
    async with runtime.pool.acquire() as conn:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            rows = await conn.fetch(f'SELECT * FROM "{table}"')
            places[f"table {table}"] = "\n".join(
                " | ".join(bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else str(v)
                           for v in row.values()) for row in rows)
        events = await conn.fetchval("SELECT count(*) FROM audit_events")
        refusals = await conn.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'auth:credential:reject'")
    assert events > 50 and refusals >= len(refused_bearers)
    places["metrics"] = metrics.text
    places["logs"] = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)

    found = []
    for secret in secrets:
        for part in parts(secret):
            for place, text in places.items():
                if part in text and not (place.startswith("response") and shown_once.get(secret) is not None
                                         and recorder.responses[int(place.split()[1])] is shown_once[secret]):
                    found.append((secret[:5] + "…", place))
    assert not found, f"secrets found: {found}"
    # The search works: each issuing response does show its secret (to its caller, once).
    assert all(secret in response.text for secret, response in shown_once.items() if secret not in variants)
    # And each issuing response showed its own secret only.
    for secret, response in shown_once.items():
        others = [s for s in secrets if shown_once.get(s) is not response and any(p in response.text for p in parts(s))]
        assert not others, (secret[:5], others)
