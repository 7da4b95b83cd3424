"""OAuth 2.0 client credentials: the token endpoint, RFC 9068 access tokens, the JWKS and the attacks on them.

Tokens are fetched with authlib's own client and checked with PyJWT, an independent JOSE library,
against the published JWKS; attack tokens are made with PyJWT or by hand, never by our signer alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway import access_tokens
from gateway.actors import cli_actor
from gateway.app import build_app
from gateway.runtime import Runtime
from keys.apikeys import BASE62
from tests.conftest import client_for
from tests.factories import Licensed, auth, licensed_member, wait_for_snapshot

TOKEN_URL = "https://gateway.test/oauth/token"


@dataclass
class Client:
    id: str
    client_id: str
    client_secret: str


async def make_client(runtime: Runtime, licensed: Licensed) -> Client:
    created = await licensed.vendor.ok("POST", "/v1/admin/oauth-clients", json={"member_id": licensed.member["id"],
                                                                                "label": "etl"})
    await wait_for_snapshot(runtime, lambda: created["client_id"] in runtime.snapshot.oauth_clients_by_client_id)
    return Client(created["id"], created["client_id"], created["client_secret"])


async def fetch_token(client: httpx.AsyncClient, oauth_client: Client, **form: str) -> httpx.Response:
    return await client.post("/oauth/token", auth=(oauth_client.client_id, oauth_client.client_secret),
                             data={"grant_type": "client_credentials", **form})


async def token_for(client: httpx.AsyncClient, oauth_client: Client) -> str:
    response = await fetch_token(client, oauth_client)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def well_formed_wrong_secret(client_id: str) -> str:
    """A client secret of the right form and checksum for `client_id`, but not its secret."""
    body = f"lpda_{client_id[5:]}_{'W' * 43}"
    value, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return body + "".join(reversed(digits))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _claims(runtime: Runtime, oauth_client: Client, member_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": access_tokens.issuer(runtime.config), "sub": member_id, "aud": access_tokens.audience(runtime.config),
              "exp": now + 300, "iat": now, "nbf": now, "jti": str(uuid.uuid4()), "client_id": oauth_client.client_id,
              "scope": ""}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# -- the flow -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The httpx module is deprecated:DeprecationWarning")
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials_flow_with_authlib_and_an_independent_jwt_check(
        runtime: Runtime, client: httpx.AsyncClient, method: str) -> None:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    transport = httpx.ASGITransport(app=build_app(runtime), client=("127.0.0.1", 50001))
    async with AsyncOAuth2Client(oauth_client.client_id, oauth_client.client_secret, token_endpoint_auth_method=method,
                                 transport=transport) as session:
        token = await session.fetch_token(TOKEN_URL, grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer" and token["expires_in"] == runtime.config.token_ttl_seconds
        assert token["scope"] == f"licence:{licensed.licence['id']}"
        # The token works wherever the member's API key works, licences checked per request.
        listed = await session.get("https://gateway.test/v1/datasets")
        assert listed.status_code == 200, listed.text
        assert [d["licence_id"] for d in listed.json()["items"]] == [licensed.licence["id"]]
        records = await session.get(f"https://gateway.test/v1/datasets/{licensed.dataset['id']}/records")
        assert records.status_code == 200 and records.headers["licence"].startswith(licensed.licence["id"])
        outside = await session.get(f"https://gateway.test/v1/datasets/{licensed.dataset['id']}/records",
                                    params={"partition": "east"})
        assert outside.status_code == 403 and "east" in outside.json()["detail"]
        admin = await session.get("https://gateway.test/v1/admin/members")
        assert admin.status_code == 403

    # PyJWT, against the JWKS as published, with the RFC 9068 profile's requirements.
    access_token = token["access_token"]
    header = jwt.get_unverified_header(access_token)
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt" and header["kid"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(access_token, key=key.key, algorithms=["EdDSA"], issuer=access_tokens.issuer(runtime.config),
                        audience=access_tokens.audience(runtime.config),
                        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})
    assert claims["sub"] == licensed.member["id"] and claims["client_id"] == oauth_client.client_id
    assert claims["scope"] == f"licence:{licensed.licence['id']}"
    assert claims["exp"] - claims["iat"] == runtime.config.token_ttl_seconds
    assert claims["iss"] == "http://127.0.0.1:8080" and claims["aud"] == "http://127.0.0.1:8080/v1"


async def test_the_token_endpoint_and_token_use_are_audited_naming_the_client(runtime: Runtime,
                                                                             client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    issued = await fetch_token(client, oauth_client)
    jti = jwt.decode(issued.json()["access_token"], options={"verify_signature": False})["jti"]
    used = await client.get("/v1/datasets", headers=auth(issued.json()["access_token"]))
    assert used.status_code == 200
    wrong = await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                              auth=(oauth_client.client_id, well_formed_wrong_secret(oauth_client.client_id)))
    assert wrong.status_code == 401
    async with runtime.pool.acquire() as conn:
        events = {row["event_id"]: row for row in await conn.fetch(
            "SELECT event_id, kind, outcome, credential_id, entry FROM audit_events WHERE event_id = ANY($1)",
            [uuid.UUID(r.headers["audit-event"]) for r in (issued, used, wrong)])}
    issue_event = events[uuid.UUID(issued.headers["audit-event"])]
    assert issue_event["kind"] == "oauth:token:issue" and issue_event["outcome"] == "allow"
    assert str(issue_event["credential_id"]) == oauth_client.id
    assert orjson.loads(issue_event["entry"])["detail"]["jti"] == jti
    use_event = events[uuid.UUID(used.headers["audit-event"])]
    assert use_event["kind"] == "member:datasets:list" and str(use_event["credential_id"]) == oauth_client.id
    reject = events[uuid.UUID(wrong.headers["audit-event"])]
    assert reject["kind"] == "auth:credential:reject" and reject["outcome"] == "deny"
    assert orjson.loads(reject["entry"])["reason"] == "invalid_client: client secret not recognised"
    for row in events.values():
        text = bytes(row["entry"]).decode()
        assert oauth_client.client_secret[5:] not in text and issued.json()["access_token"] not in text


async def test_token_endpoint_errors_follow_rfc6749(runtime: Runtime, client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    creds = (oauth_client.client_id, oauth_client.client_secret)

    async def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body: dict[str, Any] = response.json()
        assert body["error"] == code
        return body

    await error(await client.post("/oauth/token", auth=creds, data={"grant_type": "password", "username": "x",
                                                                     "password": "y"}), 400, "unsupported_grant_type")
    await error(await client.post("/oauth/token", auth=creds, data={}), 400, "invalid_request")
    await error(await client.post("/oauth/token", auth=creds, json={"grant_type": "client_credentials"}),
                400, "invalid_request")
    await error(await client.post("/oauth/token", auth=creds, content=b"grant_type=client_credentials&grant_type=x",
                                  headers={"content-type": "application/x-www-form-urlencoded"}), 400, "invalid_request")
    await error(await client.post("/oauth/token", auth=creds, data={"grant_type": "client_credentials",
                                                                     "scope": "licence:someone-else"}),
                400, "invalid_scope")
    # HTTP Basic failures are 401 with a Basic challenge (§5.2); form credentials 400.
    basic = await error(await client.post("/oauth/token", auth=(oauth_client.client_id, "wrong"),
                                          data={"grant_type": "client_credentials"}), 401, "invalid_client")
    assert "malformed client credentials" in basic["error_description"]
    posted = await client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": creds[0],
                                                     "client_secret": creds[1][:-1] + ("B" if creds[1][-1] != "B" else "C")})
    assert "checksum" in (await error(posted, 400, "invalid_client"))["error_description"]
    unauthenticated = await client.post("/oauth/token", data={"grant_type": "client_credentials"})
    await error(unauthenticated, 401, "invalid_client")
    assert unauthenticated.headers["www-authenticate"].startswith("Basic")
    # A secret from another client does not fit this client_id, whatever the checksum says.
    other = await make_client(runtime, licensed)
    await error(await client.post("/oauth/token", auth=(oauth_client.client_id, other.client_secret),
                                  data={"grant_type": "client_credentials"}), 401, "invalid_client")
    both = await client.post("/oauth/token", auth=creds, data={"grant_type": "client_credentials",
                                                               "client_id": creds[0], "client_secret": creds[1]})
    await error(both, 400, "invalid_request")
    # The secret is never accepted in the URL, and the scope narrowing a client asks for is a subset check.
    in_url = await client.post("/oauth/token", params={"client_secret": creds[1]}, data={"grant_type": "x"})
    assert in_url.status_code == 400
    narrowed = await client.post("/oauth/token", auth=creds, data={"grant_type": "client_credentials",
                                                                    "scope": f"licence:{licensed.licence['id']}"})
    assert narrowed.status_code == 200


async def test_admins_create_list_and_revoke_clients_and_never_see_secrets_again(runtime: Runtime,
                                                                                client: httpx.AsyncClient) -> None:
    licensed = await licensed_member(runtime, client)
    oauth_client = await make_client(runtime, licensed)
    assert oauth_client.client_id.startswith("lpdi_") and oauth_client.client_secret.startswith("lpda_")
    assert oauth_client.client_secret[5:21] == oauth_client.client_id[5:]
    listed = await licensed.vendor.client.get("/v1/admin/oauth-clients", headers=licensed.vendor.headers)
    assert listed.status_code == 200 and oauth_client.client_secret not in listed.text
    assert [c["client_id"] for c in listed.json()["items"]] == [oauth_client.client_id]
    async with runtime.pool.acquire() as conn:
        stored = await conn.fetchrow("SELECT * FROM oauth_clients WHERE id = $1", uuid.UUID(oauth_client.id))
    assert oauth_client.client_secret.encode() not in b"".join(
        v if isinstance(v, bytes) else str(v).encode() for v in stored.values())
    # A client secret is not a bearer credential, and member or compliance keys cannot manage clients.
    assert (await client.get("/v1/datasets", headers=auth(oauth_client.client_secret))).status_code == 401
    member_create = await client.post("/v1/admin/oauth-clients", headers=licensed.headers,
                                      json={"member_id": licensed.member["id"]})
    assert member_create.status_code == 403
    # Another vendor cannot see or revoke it.
    from tests.factories import make_vendor

    other = await make_vendor(runtime, client)
    assert (await other.post(f"/v1/admin/oauth-clients/{oauth_client.id}/revoke")).status_code == 404
    assert (await other.ok("GET", "/v1/admin/oauth-clients"))["items"] == []
    revoked = await licensed.vendor.ok("POST", f"/v1/admin/oauth-clients/{oauth_client.id}/revoke")
    assert revoked["revoked_at"] is not None
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.oauth_clients_by_client_id[
        oauth_client.client_id].revoked_at is not None)
    refused = await fetch_token(client, oauth_client)
    assert refused.status_code == 401 and refused.json()["error_description"] == "OAuth client revoked"


async def test_metadata_and_jwks_are_published(runtime: Runtime, client: httpx.AsyncClient) -> None:
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

    metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
    checked = AuthorizationServerMetadata(metadata)
    # Every registered field authlib knows, except response_types_supported: with no authorization
    # endpoint the honest value is [], which authlib's validator takes for a missing field.
    for key in checked.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(checked, f"validate_{key}")()
    assert metadata["response_types_supported"] == []
    assert metadata["issuer"] == access_tokens.issuer(runtime.config)
    assert metadata["token_endpoint"] == metadata["issuer"] + "/oauth/token"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert len(jwks["keys"]) == 1
    key = jwks["keys"][0]
    assert key == {"kty": "OKP", "crv": "Ed25519", "x": key["x"], "kid": runtime.snapshot.jwt.signer.key_id,
                   "alg": "EdDSA", "use": "sig"}
    assert "d" not in key


# -- attacks on the resource server ---------------------------------------------------------------


@pytest.fixture
async def setting(runtime: Runtime, client: httpx.AsyncClient) -> tuple[Licensed, Client]:
    licensed = await licensed_member(runtime, client)
    return licensed, await make_client(runtime, licensed)


def _gateway_key(runtime: Runtime) -> Any:
    signer = runtime.snapshot.jwt.signer
    assert signer is not None
    return signer


ATTACKS = {
    # name: (how to make the token, the reason the gateway gives)
    "alg none": "algorithm not accepted",
    "HS256 keyed with the public key": "algorithm not accepted",
    "HS256 keyed with the JWK x": "algorithm not accepted",
    "unknown kid": "unknown key",
    "kid with a path": "unknown key",
    "kid with SQL": "unknown key",
    "our kid, a foreign key and an embedded jwk": "signature invalid",
    "jku and x5u pointing elsewhere, foreign key": "unknown key",
    "wrong iss": "issuer not accepted",
    "wrong aud": "audience is not this gateway",
    "typ JWT": "typ must be at+jwt",
    "no typ": "typ must be at+jwt",
    "expired": "expired",
    "nbf in the future": "not valid yet",
    "no jti": "jti claim missing",
    "no client_id": "client_id claim missing",
    "no exp": "exp claim missing",
    "longer lifetime than issued": "lifetime longer",
    "crit header": "critical header",
    "tampered claims": "signature invalid",
    "not a JWT": "credential not recognised",
    "garbage in JWT form": "not base64url",
}


def make_attack(name: str, runtime: Runtime, oauth_client: Client, member_id: str, genuine: str) -> str:
    ours = _gateway_key(runtime)
    kid = ours.key_id
    public = ours.public_bytes()
    claims = _claims(runtime, oauth_client, member_id)
    at = {"typ": "at+jwt"}
    foreign = Ed25519PrivateKey.generate()

    def pyjwt_ours(claims: dict[str, Any], headers: dict[str, Any]) -> str:
        return jwt.encode(claims, ours.private, algorithm="EdDSA", headers=headers)

    def hs256(secret: bytes) -> Any:
        return lambda data: hmac.new(secret, data, hashlib.sha256).digest()

    if name == "alg none":
        return _compact({"alg": "none", "kid": kid, **at}, claims, lambda data: b"")
    if name == "HS256 keyed with the public key":
        pem = ours.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        return _compact({"alg": "HS256", "kid": kid, **at}, claims, hs256(pem))
    if name == "HS256 keyed with the JWK x":
        return _compact({"alg": "HS256", "kid": kid, **at}, claims, hs256(_b64(public).encode()))
    if name == "unknown kid":
        return jwt.encode(claims, foreign, algorithm="EdDSA", headers={"kid": "00000000deadbeef", **at})
    if name == "kid with a path":
        return jwt.encode(claims, foreign, algorithm="EdDSA", headers={"kid": "../../../../etc/passwd", **at})
    if name == "kid with SQL":
        return jwt.encode(claims, foreign, algorithm="EdDSA",
                          headers={"kid": "x' UNION SELECT public_key FROM signing_keys --", **at})
    if name == "our kid, a foreign key and an embedded jwk":
        x = _b64(foreign.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        return jwt.encode(claims, foreign, algorithm="EdDSA", headers={
            "kid": kid, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": x}, **at})
    if name == "jku and x5u pointing elsewhere, foreign key":
        return jwt.encode(claims, foreign, algorithm="EdDSA", headers={
            "kid": "attacker-key", "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem", **at})
    if name == "wrong iss":
        return pyjwt_ours({**claims, "iss": "https://attacker.example"}, {"kid": kid, **at})
    if name == "wrong aud":
        return pyjwt_ours({**claims, "aud": "https://other-api.example"}, {"kid": kid, **at})
    if name == "typ JWT":
        return pyjwt_ours(claims, {"kid": kid, "typ": "JWT"})
    if name == "no typ":
        return _compact({"alg": "EdDSA", "kid": kid}, claims, ours.sign)
    if name == "expired":
        return pyjwt_ours({**claims, "iat": claims["iat"] - 400, "nbf": claims["iat"] - 400,
                           "exp": claims["iat"] - 100}, {"kid": kid, **at})
    if name == "nbf in the future":
        return pyjwt_ours({**claims, "nbf": claims["iat"] + 120}, {"kid": kid, **at})
    if name == "no jti":
        return pyjwt_ours({k: v for k, v in claims.items() if k != "jti"}, {"kid": kid, **at})
    if name == "no client_id":
        return pyjwt_ours({k: v for k, v in claims.items() if k != "client_id"}, {"kid": kid, **at})
    if name == "no exp":
        return pyjwt_ours({k: v for k, v in claims.items() if k != "exp"}, {"kid": kid, **at})
    if name == "longer lifetime than issued":
        return pyjwt_ours({**claims, "exp": claims["iat"] + 86400}, {"kid": kid, **at})
    if name == "crit header":
        return _compact({"alg": "EdDSA", "kid": kid, "crit": ["exp"], **at}, claims, ours.sign)
    if name == "tampered claims":
        header, payload, signature = genuine.split(".")
        decoded = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        decoded["sub"] = str(uuid.uuid4())
        return f"{header}.{_b64(orjson.dumps(decoded))}.{signature}"
    if name == "not a JWT":
        return "a.b"
    if name == "garbage in JWT form":
        return "e30=.e30.%00"
    raise AssertionError(name)


async def test_every_jwt_attack_is_refused_with_its_reason(runtime: Runtime, client: httpx.AsyncClient,
                                                          setting: tuple[Licensed, Client]) -> None:
    licensed, oauth_client = setting
    genuine = await token_for(client, oauth_client)
    assert (await client.get("/v1/datasets", headers=auth(genuine))).status_code == 200
    for i, (name, reason) in enumerate(ATTACKS.items()):
        token = make_attack(name, runtime, oauth_client, licensed.member["id"], genuine)
        # Each from its own address: from one, the failures would soon meet the backoff (429).
        async with client_for(runtime, f"198.51.100.{i + 1}") as attacker:
            response = await attacker.get("/v1/datasets", headers=auth(token))
        assert response.status_code == 401, name
        assert reason in response.json()["detail"], (name, response.json()["detail"])
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_jku_x5u_and_jwk_headers_are_ignored(runtime: Runtime, client: httpx.AsyncClient,
                                                  setting: tuple[Licensed, Client]) -> None:
    """A token signed by our key with headers naming other keys verifies against our key only."""
    licensed, oauth_client = setting
    foreign = Ed25519PrivateKey.generate()
    foreign_x = _b64(foreign.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    claims = _claims(runtime, oauth_client, licensed.member["id"])
    ours = _gateway_key(runtime)
    headers = {"kid": ours.key_id, "typ": "at+jwt", "jku": "https://attacker.example/jwks.json",
               "x5u": "https://attacker.example/cert.pem", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": foreign_x}}
    accepted = jwt.encode(claims, ours.private, algorithm="EdDSA", headers=headers)
    assert (await client.get("/v1/datasets", headers=auth(accepted))).status_code == 200
    refused = jwt.encode(claims, foreign, algorithm="EdDSA", headers=headers)
    response = await client.get("/v1/datasets", headers=auth(refused))
    assert response.status_code == 401 and response.json()["detail"] == "access token signature invalid"


async def test_a_token_names_its_clients_member_only(runtime: Runtime, client: httpx.AsyncClient,
                                                    setting: tuple[Licensed, Client]) -> None:
    licensed, oauth_client = setting
    ours = _gateway_key(runtime)
    other_member = str(uuid.uuid4())
    forged_sub = jwt.encode(_claims(runtime, oauth_client, other_member), ours.private, algorithm="EdDSA",
                            headers={"kid": ours.key_id, "typ": "at+jwt"})
    response = await client.get("/v1/datasets", headers=auth(forged_sub))
    assert response.status_code == 401 and "subject" in response.json()["detail"]
    unknown_client = jwt.encode(_claims(runtime, Client("x", "lpdi_" + "Z" * 16, ""), licensed.member["id"]),
                                ours.private, algorithm="EdDSA", headers={"kid": ours.key_id, "typ": "at+jwt"})
    response = await client.get("/v1/datasets", headers=auth(unknown_client))
    assert response.status_code == 401 and "client not recognised" in response.json()["detail"]


# -- rotation -------------------------------------------------------------------------------------


async def test_rotation_overlaps_then_retirement_ends_the_old_key(runtime: Runtime, client: httpx.AsyncClient,
                                                                 setting: tuple[Licensed, Client]) -> None:
    _, oauth_client = setting
    before = await token_for(client, oauth_client)
    old_kid = jwt.get_unverified_header(before)["kid"]
    rotated = await access_tokens.rotate_key(runtime.writer, cli_actor(), runtime.master, timedelta(seconds=330))
    assert rotated["previous_key_id"] == old_kid and rotated["previous_retired_at"] is not None
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.jwt.signer.key_id == rotated["key_id"])
    after = await token_for(client, oauth_client)
    assert jwt.get_unverified_header(after)["kid"] == rotated["key_id"] != old_kid
    # Overlap: tokens of both keys verify, and both keys are published.
    for token in (before, after):
        assert (await client.get("/v1/datasets", headers=auth(token))).status_code == 200
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {old_kid, rotated["key_id"]}
    # Retired (e.g. compromised): the old key's tokens stop at once and it leaves the JWKS.
    await access_tokens.retire_key(runtime.writer, cli_actor(), old_kid)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.jwt.keys[old_kid].retired(time.time()))
    response = await client.get("/v1/datasets", headers=auth(before))
    assert response.status_code == 401 and response.json()["detail"] == "access token signing key retired"
    assert (await client.get("/v1/datasets", headers=auth(after))).status_code == 200
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {rotated["key_id"]}
    from gateway.errors import Conflict

    with pytest.raises(Conflict):
        await access_tokens.retire_key(runtime.writer, cli_actor(), rotated["key_id"])


async def test_a_rotated_out_key_signs_nothing_new(runtime: Runtime, client: httpx.AsyncClient,
                                                  setting: tuple[Licensed, Client]) -> None:
    """A leaked old key is no use for minting: a token claiming an iat after its rotation is refused."""
    licensed, oauth_client = setting
    old = _gateway_key(runtime)
    await access_tokens.rotate_key(runtime.writer, cli_actor(), runtime.master, timedelta(seconds=330))
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.jwt.signer.key_id != old.key_id)
    later = int(time.time()) + 25  # inside the leeway for iat, outside it for the key's period
    claims = _claims(runtime, oauth_client, licensed.member["id"], iat=later + 60, nbf=later, exp=later + 300)
    minted = jwt.encode(claims, old.private, algorithm="EdDSA", headers={"kid": old.key_id, "typ": "at+jwt"})
    response = await client.get("/v1/datasets", headers=auth(minted))
    assert response.status_code == 401
    assert response.json()["detail"] in ("access token issued outside its signing key's period",
                                         "access token issued in the future (iat)")


async def test_the_demos_first_member_has_an_oauth_client(demo_client: httpx.AsyncClient,
                                                          demo_content: dict[str, Any]) -> None:
    first, second = demo_content["members"]
    assert "oauth_client" not in second
    credentials = first["oauth_client"]
    response = await demo_client.post("/oauth/token", auth=(credentials["client_id"], credentials["client_secret"]),
                                      data={"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == f"licence:{first['licence_id']}"
    records = await demo_client.get(f"/v1/datasets/{demo_content['dataset']}/records", params={"limit": 5},
                                    headers=auth(response.json()["access_token"]))
    assert records.status_code == 200 and len(records.content.splitlines()) == 5
