"""Object-, function- and property-level authorisation (OWASP API1, API5 and API3 of 2023) on every route.

The routes come from the application itself (`app.routes`). Every path parameter must be named in
ID_PARAMS, which says how to name another party's object of that kind and a random one; a route added
later with a parameter this file cannot classify fails `test_every_path_parameter_is_classified` until
it gets an entry, and from then on it is probed like the others. Likewise every write route under
/v1/admin needs an entry in ADMIN_WRITES (a request that would succeed for the vendor admin).

Two parties: member A of vendor V1, member B of vendor V2, each with a dataset, a licence, an OAuth
client, a compliance key, a delivery (its audit event) and a Delta Sharing file URL.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from gateway.app import build_app
from gateway.audit.writer import AuditWriter, new_log_id
from gateway.runtime import Runtime
from tests.audit.support import synthetic
from tests.factories import COLUMNS, ROWS, VendorFixture, accept_terms, auth, make_vendor, wait_for_snapshot

# Usage is written behind the deliveries of the setup, on its own schedule: not compared.
METERED = frozenset({"usage_daily", "quota_grants", "quota_leases"})
# Values that differ from one request to the next by design; everything else must be identical.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "audit-event", "date"})
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class Party:
    """A vendor with one member, and every kind of object a path can name, as that member and vendor see them."""

    vendor: VendorFixture
    dataset: dict[str, Any]
    member: dict[str, Any]
    key: str
    licence: dict[str, Any]
    compliance: dict[str, Any]
    oauth_client: dict[str, Any]
    access_token: str
    sharing_key: str
    share: str
    delivery_event: str
    file_token: str
    log: str  # an audit log holding events of this party's vendor only
    termination: str  # the termination of a second member's licence


async def make_party(runtime: Runtime, client: httpx.AsyncClient, dataset_name: str) -> Party:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset(dataset_name, rows=ROWS)
    member = await vendor.member()
    key = (await vendor.member_key(member["id"]))["api_key"]
    licence = await vendor.licence(member["id"], dataset["id"], ["north", "south"])
    licence_id = uuid.UUID(licence["id"])
    await wait_for_snapshot(runtime, lambda: licence_id in runtime.snapshot.licences)
    await accept_terms(client, licence["id"], key)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[licence_id].accepted_terms)
    compliance = await vendor.ok("POST", "/v1/admin/keys", json={"kind": "compliance", "label": "auditor"})
    oauth_client = await vendor.ok("POST", "/v1/admin/oauth-clients", json={"member_id": member["id"]})
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(compliance["key_id"]) is not None
                            and oauth_client["client_id"] in runtime.snapshot.oauth_clients_by_client_id)
    issued = await client.post("/oauth/token", auth=(oauth_client["client_id"], oauth_client["client_secret"]),
                               data={"grant_type": "client_credentials"})
    assert issued.status_code == 200, issued.text
    profile = await client.get("/v1/delta-sharing/profile", headers=auth(key))
    assert profile.status_code == 200, profile.text
    sharing_key = profile.json()["bearerToken"]
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(sharing_key.split("_")[1]) is not None)
    shares = await client.get("/delta-sharing/shares", headers=auth(key))
    [share] = [s["name"] for s in shares.json()["items"]]
    delivery = await client.get(f"/v1/datasets/{dataset['id']}/records", params={"limit": 1}, headers=auth(key))
    assert delivery.status_code == 200, delivery.text
    query = await client.post(f"/delta-sharing/shares/{share}/schemas/default/tables/{dataset_name}/query",
                              json={}, headers=auth(key))
    assert query.status_code == 200, query.text
    url = next(line["file"]["url"] for line in (httpx.Response(200, content=raw).json()
                                                  for raw in query.content.splitlines()) if "file" in line)
    leaving = await vendor.member("leaving")
    ended_licence = await vendor.licence(leaving["id"], dataset["id"], ["north"])
    ended = await vendor.ok("POST", f"/v1/admin/licences/{ended_licence['id']}/terminate", json={"reason": "ended"})
    return Party(vendor, dataset, member, key, licence, compliance, oauth_client, issued.json()["access_token"],
                 sharing_key, share, delivery.headers["audit-event"], url.rsplit("/", 1)[1],
                 await _log_of_its_own(runtime, vendor.id), ended["id"])


async def _log_of_its_own(runtime: Runtime, vendor_id: uuid.UUID) -> str:
    """A second process's log (as another instance writes it) with one checkpointed event of the vendor."""
    writer = AuditWriter(runtime.pool, new_log_id("other-instance"), "other-instance", master=runtime.master)
    await writer.start()
    try:
        await writer.commit(synthetic(vendor_id))
        await writer.checkpoint()
    finally:
        await writer.close()
    return writer.log_id


def _random_uuid() -> str:
    return str(uuid.uuid4())


def _random_name() -> str:
    return f"x{secrets.token_hex(6)}"


def _random_file_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(160)).decode().rstrip("=")


@dataclass(frozen=True)
class IdParam:
    """How to name a party's object for one path parameter, and an object that does not exist."""

    of: Callable[[Party], str]
    random: Callable[[], str]
    fixed: bool = False  # the same value for every party: not an object anyone owns


# Every path parameter of the app. A new one fails test_every_path_parameter_is_classified until added.
ID_PARAMS: dict[str, IdParam] = {
    "dataset": IdParam(lambda p: p.dataset["id"], _random_uuid),
    # A version is named within its dataset: version 1 of another party's dataset (or of a random one).
    "version": IdParam(lambda p: "1", lambda: "1", fixed=True),
    "member": IdParam(lambda p: p.member["id"], _random_uuid),
    "licence": IdParam(lambda p: p.licence["id"], _random_uuid),
    "key": IdParam(lambda p: p.compliance["id"], _random_uuid),
    "client": IdParam(lambda p: p.oauth_client["id"], _random_uuid),
    "event": IdParam(lambda p: p.delivery_event, _random_uuid),
    "termination": IdParam(lambda p: p.termination, _random_uuid),
    # Delta Sharing names: a share per vendor, tables by dataset name, one schema for everybody.
    "share": IdParam(lambda p: p.share, _random_name),
    "schema": IdParam(lambda p: "default", lambda: "default", fixed=True),
    "table": IdParam(lambda p: p.dataset["name"], _random_name),
    # A log of the party's vendor in the tlog-tiles layout (its checkpoint; tiles are probed in tests/audit).
    "path": IdParam(lambda p: f"{p.log}/checkpoint", lambda: f"x/20260101T000000Z/{secrets.token_hex(3)}/checkpoint"),
    # A signed file URL issued to the party's member key.
    "token": IdParam(lambda p: p.file_token, _random_file_token),
}

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?\}")


def app_routes(runtime: Runtime) -> list[tuple[str, str, list[str]]]:
    """(method, path template, parameter names) for every route and method the API serves.

    The web console's pages are left out: they take a person's session and a CSRF token, not an API
    credential, and their other-party 404s are probed by tests/console/ (test_vendor.py,
    test_audit_console.py, test_member_console.py) with two vendors' and two members' objects."""
    found = []
    for route in build_app(runtime).routes:
        if route.path.startswith("/console/"):
            continue
        assert isinstance(route, Route), f"{route!r}: not a plain Route; teach this file how to probe it"
        assert route.methods, f"{route.path}: a route without methods"
        for method in sorted(route.methods):
            found.append((method, route.path, list(route.param_convertors)))
    return found


def fill(template: str, values: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: values[m[1]], template)


def variants(params: list[str], own: Party, foreign: Party) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(label, path values naming the foreign party's object, path values naming nothing) for one route.

    All parameters foreign (against all random); and, with several, each one foreign in a path that is
    otherwise the caller's own (against the same path with that one random)."""
    specs = {name: ID_PARAMS[name] for name in params}
    found = [("all", {n: s.of(foreign) for n, s in specs.items()},
              {n: s.of(foreign) if s.fixed else s.random() for n, s in specs.items()})]
    ids = [n for n, s in specs.items() if not s.fixed]
    if len(ids) > 1:
        for name in ids:
            base = {n: s.of(own) for n, s in specs.items()}
            found.append((name, {**base, name: specs[name].of(foreign)}, {**base, name: specs[name].random()}))
    return found


# Bodies that get a write past its own validation to the object lookup (JSON {} otherwise).
PROBE_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/admin/licences/{licence}"): {"terms_text": "terms v2"},
    ("PATCH", "/v1/admin/members/{member}"): {"contact_name": "probe"},
    ("PATCH", "/v1/admin/datasets/{dataset}"): {"description": "probe"},
    ("POST", "/v1/admin/licences/{licence}/suspend"): {"reason": "probe"},
    ("POST", "/v1/admin/licences/{licence}/resume"): {"reason": "probe"},
    ("POST", "/v1/admin/licences/{licence}/revoke"): {"reason": "probe"},
    ("POST", "/v1/admin/datasets/{dataset}/versions/{version}/withdraw"): {"reason": "probe"},
    ("POST", "/v1/admin/licences/{licence}/terminate"): {"reason": "probe"},
}


# What the owner gets where it is not a plain success: the object was found all the same.
OWNER_STATUS: dict[str, set[int]] = {
    "/v1/admin/datasets/{dataset}/versions": {415},  # found, then the JSON probe body is not an upload
    "/v1/receipts/{event}": {200, 503},  # 503 until a signed checkpoint covers the event
    "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/changes": {400},  # found, not offered
    "/v1/licences/{licence}/accept": {422},  # found, then the probe body names no terms
    "/v1/licences/{licence}/termination": {404},  # found, and not terminated: no notice to serve
    "/v1/licences/{licence}/deletion-attestation": {422},  # found, then the probe body names no deletion
    "/v1/admin/licences/{licence}/terminate": {409},  # found, and revoked by the revoke just before
}


def expected_status(kind: str, method: str, path: str) -> int:
    """What a caller of `kind` gets for another party's object: 404, or 403 where its role has no access."""
    if path.startswith("/v1/admin/"):
        return 404 if kind == "vendor" or (kind == "compliance" and method in READ_METHODS) else 403
    if path.startswith("/delta-sharing/files/"):
        return 404  # the URL authorises itself, whoever presents it
    if path.startswith("/v1/audit/logs/"):
        return 404  # every role reads its own vendor's logs; another vendor's log is not there
    return 404 if kind == "member" else 403


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k.lower(), v) for k, v in response.headers.multi_items() if k.lower() not in PER_REQUEST_HEADERS)
    return response.status_code, response.content, headers


async def database_state(runtime: Runtime, skip: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Every row of every table but the append-only audit log (which records the refusals themselves)."""
    state = {}
    async with runtime.pool.acquire() as conn:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        for table in tables:
            if table.startswith("audit_") or table in skip:
                continue
            state[table] = sorted(repr(tuple(row)) for row in await conn.fetch(f'SELECT * FROM "{table}"'))
    return state


async def request(client: httpx.AsyncClient, method: str, path: str, token: str | None, body: Any = None,
                  **kwargs: Any) -> httpx.Response:
    headers = auth(token) if token else {}
    if method in READ_METHODS:
        return await client.request(method, path, headers=headers, **kwargs)
    return await client.request(method, path, headers=headers, json={} if body is None else body, **kwargs)


# -- BOLA: another party's ids --------------------------------------------------------------------

async def test_every_path_parameter_is_classified(runtime: Runtime) -> None:
    routes = app_routes(runtime)
    unknown = sorted({(path, name) for _, path, params in routes for name in params if name not in ID_PARAMS})
    assert not unknown, f"add these path parameters to ID_PARAMS (how to name another party's object): {unknown}"
    unused = set(ID_PARAMS) - {name for _, _, params in routes for name in params}
    assert not unused, f"ID_PARAMS names parameters no route has any more: {unused}"
    writes = {(m, p) for m, p, _ in routes if p.startswith("/v1/admin/") and m not in READ_METHODS}
    assert writes == set(ADMIN_WRITES), (f"admin write routes without an entry in ADMIN_WRITES: "
                                         f"{sorted(writes - set(ADMIN_WRITES))}; stale entries: "
                                         f"{sorted(set(ADMIN_WRITES) - writes)}")


async def test_another_partys_objects_answer_exactly_like_missing_ones(runtime: Runtime,
                                                                       client: httpx.AsyncClient) -> None:
    a = await make_party(runtime, client, "footfall")
    b = await make_party(runtime, client, "visits")
    callers = {"member A's key": ("member", a.key), "member A's sharing key": ("member", a.sharing_key),
               "member A's OAuth access token": ("member", a.access_token),
               "vendor V1's admin key": ("vendor", a.vendor.key),
               "vendor V1's compliance key": ("compliance", a.compliance["api_key"])}
    routes = [(m, p, params) for m, p, params in app_routes(runtime) if params]
    before = await database_state(runtime, skip=METERED)
    probes = 0
    for method, template, params in routes:
        body = PROBE_BODIES.get((method, template))
        for label, foreign_values, random_values in variants(params, a, b):
            for caller, (kind, token) in callers.items():
                foreign = await request(client, method, fill(template, foreign_values), token, body)
                unknown = await request(client, method, fill(template, random_values), token, body)
                where = f"{method} {template} ({label} foreign) as {caller}"
                assert foreign.status_code == expected_status(kind, method, template), (where, foreign.text)
                assert comparable(foreign) == comparable(unknown), where
                probes += 1
    assert probes >= 150
    assert await database_state(runtime, skip=METERED) == before

    # The foreign ids were real: their owners reach them (reads first, revocations, then termination, last).
    def order(route: tuple[str, str, list[str]]) -> tuple[bool, bool, bool, bool, bool]:
        method, path, _ = route
        return (path.startswith("/v1/admin/"), method not in READ_METHODS, path.endswith("/terminate"),
                path.endswith("/revoke"), path.startswith("/v1/admin/members/"))

    for method, template, params in sorted(routes, key=order):
        values = {name: ID_PARAMS[name].of(b) for name in params}
        token = b.vendor.key if template.startswith("/v1/admin/") else b.key
        response = await request(client, method, fill(template, values), token, PROBE_BODIES.get((method, template)))
        allowed = OWNER_STATUS.get(template, {200, 201})
        assert response.status_code in allowed, (method, template, response.status_code, response.text)


# -- BFLA: roles on admin routes ------------------------------------------------------------------

@dataclass(frozen=True)
class AdminWrite:
    """A request the vendor admin may make on its own objects; None body: the route takes none."""

    body: Callable[[Party, dict[str, Any]], Any] | None = None
    upload: bytes | None = None


ADMIN_WRITES: dict[tuple[str, str], AdminWrite] = {
    ("POST", "/v1/admin/datasets"): AdminWrite(lambda p, x: {"name": "intruder", "columns": COLUMNS,
                                                             "partition_column": "area"}),
    ("POST", "/v1/admin/datasets/{dataset}/versions"): AdminWrite(
        upload=b"area,day,count,secret_note\nwest,2026-05-01,1,x\n"),
    ("POST", "/v1/admin/datasets/{dataset}/versions/{version}/withdraw"): AdminWrite(
        lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/members"): AdminWrite(lambda p, x: {"name": "intruder"}),
    ("POST", "/v1/admin/members/{member}/revoke"): AdminWrite(),
    ("POST", "/v1/admin/members/{member}/suspend"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/members/{member}/resume"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("PATCH", "/v1/admin/members/{member}"): AdminWrite(lambda p, x: {"contact_name": "intruder"}),
    ("PATCH", "/v1/admin/datasets/{dataset}"): AdminWrite(lambda p, x: {"description": "intruder"}),
    ("POST", "/v1/admin/licences"): AdminWrite(lambda p, x: {
        "member_id": x["spare_member"], "dataset_id": p.dataset["id"], "partitions": ["east"], "columns": ["area"],
        "terms_text": "terms"}),
    ("PATCH", "/v1/admin/licences/{licence}"): AdminWrite(lambda p, x: {"partitions": ["north"]}),
    ("POST", "/v1/admin/licences/{licence}/suspend"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/licences/{licence}/resume"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/licences/{licence}/revoke"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/licences/{licence}/terminate"): AdminWrite(lambda p, x: {"reason": "intruder"}),
    ("POST", "/v1/admin/keys"): AdminWrite(lambda p, x: {"kind": "member", "member_id": p.member["id"]}),
    ("POST", "/v1/admin/keys/{key}/revoke"): AdminWrite(),
    ("POST", "/v1/admin/keys/{key}/rotate"): AdminWrite(lambda p, x: {"overlap_seconds": 60}),
    ("POST", "/v1/admin/oauth-clients"): AdminWrite(lambda p, x: {"member_id": p.member["id"]}),
    ("POST", "/v1/admin/oauth-clients/{client}/revoke"): AdminWrite(),
}


async def send_admin_write(client: httpx.AsyncClient, method: str, template: str, party: Party, extra: dict[str, Any],
                           token: str, body: Any = None, upload: bytes | None = None) -> httpx.Response:
    path = fill(template, {name: ID_PARAMS[name].of(party) for name in _PARAM.findall(template)})
    if upload is not None:
        return await client.request(method, path, content=upload, headers={**auth(token), "content-type": "text/csv"})
    return await client.request(method, path, headers=auth(token), **({} if body is None else {"json": body}))


async def test_members_and_compliance_keys_are_refused_every_admin_write_and_change_nothing(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    a = await make_party(runtime, client, "footfall")
    extra = {"spare_member": (await a.vendor.member("spare"))["id"]}
    callers = {"member key": a.key, "sharing key": a.sharing_key, "OAuth access token": a.access_token,
               "compliance key": a.compliance["api_key"]}
    before = await database_state(runtime, skip=METERED)
    for (method, template), write in ADMIN_WRITES.items():
        body = write.body(a, extra) if write.body else None
        for caller, token in callers.items():
            response = await send_admin_write(client, method, template, a, extra, token, body, write.upload)
            assert response.status_code == 403, (method, template, caller, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    # Reads of the admin API: none for members; compliance reads all but keys and OAuth clients.
    for method, template, params in app_routes(runtime):
        if not template.startswith("/v1/admin/") or method not in READ_METHODS:
            continue
        path = fill(template, {name: ID_PARAMS[name].of(a) for name in params})
        for caller in ("member key", "sharing key", "OAuth access token"):
            assert (await client.request(method, path, headers=auth(callers[caller]))).status_code == 403, path
        compliance = await client.request(method, path, headers=auth(callers["compliance key"]))
        assert compliance.status_code == (403 if template.startswith(("/v1/admin/keys", "/v1/admin/oauth-clients"))
                                          else 200), (path, compliance.text)
    assert await database_state(runtime, skip=METERED) == before
    # The same requests are the vendor admin's to make (so the 403s above were about the role). Revocations
    # last: a termination after the licence's revocation (it is found, and refused as revoked already), the
    # member's after both (a member's revocation revokes its licences with it).
    last = {"/v1/admin/licences/{licence}/terminate": 2, "/v1/admin/members/{member}/revoke": 3}
    for (method, template), write in sorted(ADMIN_WRITES.items(),
                                            key=lambda item: last.get(item[0][1], item[0][1].endswith("/revoke"))):
        body = write.body(a, extra) if write.body else None
        response = await send_admin_write(client, method, template, a, extra, a.vendor.key, body, write.upload)
        allowed = {409} if template.endswith("/terminate") else {200, 201}
        assert response.status_code in allowed, (method, template, response.text)


# -- BOPLA: mass assignment -----------------------------------------------------------------------

# Fields no admin body may set, whatever the route: the server owns them.
PRIVILEGED: dict[str, Callable[[Party, Party], Any]] = {
    "id": lambda a, b: str(uuid.uuid4()),
    "vendor_id": lambda a, b: str(b.vendor.id),
    "status": lambda a, b: "active",
    "status_reason": lambda a, b: "",
    "hash": lambda a, b: "00" * 32,
    "hash_version": lambda a, b: 1,
    "key_id": lambda a, b: "A" * 16,
    "client_id": lambda a, b: "lpdi_" + "A" * 16,
    "api_key": lambda a, b: b.key,
    "client_secret": lambda a, b: "lpda_" + "A" * 66,
    "credential_id": lambda a, b: b.compliance["id"],
    "terms_version": lambda a, b: 1,
    "accepted_terms": lambda a, b: [1, 2, 3],
    "terms_accepted": lambda a, b: True,
    "latest_version": lambda a, b: 99,
    "version": lambda a, b: 1,
    "created_at": lambda a, b: "2020-01-01T00:00:00Z",
    "updated_at": lambda a, b: "2020-01-01T00:00:00Z",
    "revoked_at": lambda a, b: None,
    "role": lambda a, b: "vendor",
    "is_admin": lambda a, b: True,
    # Legitimate on some routes only (where the valid body has them, they are not injected).
    "member_id": lambda a, b: b.member["id"],
    "dataset_id": lambda a, b: b.dataset["id"],
    "kind": lambda a, b: "vendor",
}


async def test_unknown_and_privileged_fields_in_admin_bodies_are_422_and_change_nothing(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    a = await make_party(runtime, client, "footfall")
    b = await make_party(runtime, client, "visits")
    extra = {"spare_member": (await a.vendor.member("spare"))["id"]}
    before = await database_state(runtime, skip=METERED)
    tried = 0
    for (method, template), write in ADMIN_WRITES.items():
        if write.upload is not None:
            # An upload's fields are its columns: one the dataset does not declare is refused likewise.
            for column in ("vendor_id", "version", "seq", "partition"):
                upload = write.upload.replace(b"\n", f",{column}\n".encode(), 1).replace(b",x\n", b",x,1\n")
                response = await send_admin_write(client, method, template, a, extra, a.vendor.key, upload=upload)
                assert response.status_code == 422, (template, column, response.text)
                tried += 1
            continue
        valid = write.body(a, extra) if write.body else {}
        for name, value in PRIVILEGED.items():
            if name in valid:
                continue
            body = {**valid, name: value(a, b)}
            response = await send_admin_write(client, method, template, a, extra, a.vendor.key, body)
            where = f"{method} {template} with {name!r}"
            assert response.status_code == 422, (where, response.text)
            assert response.json()["field"] == name, where
            tried += 1
    # Values that would raise a privilege are refused too: a vendor admin issues member, compliance and (named,
    # for its own vendor) vendor admin keys only; operator and sharing keys never.
    for kind in ("operator", "sharing", "VENDOR", "compliance ", "vendor "):
        response = await a.vendor.post("/v1/admin/keys", json={"kind": kind})
        assert response.status_code == 422 and response.json()["field"] == "kind", (kind, response.text)
    assert tried >= 200
    assert await database_state(runtime, skip=METERED) == before


@pytest.mark.parametrize("template", ["/v1/admin/members/{member}/revoke", "/v1/admin/keys/{key}/revoke",
                                      "/v1/admin/oauth-clients/{client}/revoke"])
async def test_routes_that_take_no_body_still_act_with_none_or_an_empty_object(
        runtime: Runtime, client: httpx.AsyncClient, template: str) -> None:
    a = await make_party(runtime, client, "footfall")
    path = fill(template, {name: ID_PARAMS[name].of(a) for name in _PARAM.findall(template)})
    bare = await client.post(path, headers=a.vendor.headers)
    assert bare.status_code == 200, bare.text
    again = await client.post(path, json={}, headers=a.vendor.headers)
    assert again.status_code in (200, 409), again.text  # already revoked: the body was not the problem
