"""Fuzzing the parsers with hypothesis: each either parses or refuses with its own error, never anything else.

API keys and OAuth client credentials (keys/apikeys.py: MalformedKey only), page cursors
(gateway/cursors.py: BadRequest only, even for payloads that carry a valid MAC), the records route's
query parameters (200/400/403/404/406, never 500) and the JSON bodies of every admin route (never
500). Uploads are fuzzed in tests/test_uploads.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import cursors
from gateway.errors import BadRequest
from gateway.http import admin_api
from gateway.runtime import Runtime
from gateway.server_secrets import CURSOR
from keys import apikeys
from keys.apikeys import KeyKind
from tests.factories import auth, licensed_member, make_vendor, records_path_of

FAST = settings(max_examples=500, deadline=None)
APP = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

BASE62 = st.sampled_from(apikeys.BASE62)
NEAR_BASE62 = st.one_of(BASE62, st.sampled_from("_-+/=.~ \t\n\x00é٣²ＡΩ"))
PREFIXES = st.sampled_from(["lpdm_", "lpdv_", "lpdc_", "lpdo_", "lpds_", "lpda_", "lpdi_", "lpdx_", "LPDM_", ""])


@st.composite
def key_like(draw: st.DrawFn) -> str:
    """Text shaped like a token (prefix, id, separator, secret, checksum) with anything changed."""
    if draw(st.booleans()):
        token = apikeys.generate(draw(st.sampled_from(list(KeyKind)))).token
    else:
        token = apikeys.generate_client().secret
    chars = list(token)
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        index = draw(st.integers(0, max(0, len(chars) - 1)))
        if action == "replace" and chars:
            chars[index] = draw(NEAR_BASE62)
        elif action == "insert":
            chars.insert(index, draw(NEAR_BASE62))
        elif chars:
            del chars[index]
    text = "".join(chars)
    if draw(st.booleans()):
        text = draw(PREFIXES) + text[5:]
    return text


TOKENS = st.one_of(st.text(max_size=200), key_like(),
                   st.builds(lambda p, rest: p + rest, PREFIXES,
                             st.text(NEAR_BASE62, min_size=apikeys.TOKEN_LENGTH - 5, max_size=apikeys.TOKEN_LENGTH - 5)))


@FAST
@given(TOKENS)
def test_api_key_parsing_parses_or_says_malformed(text: str) -> None:
    try:
        key = apikeys.parse(text)
    except apikeys.MalformedKey as exc:
        assert len(text) < 8 or text not in exc.reason  # the reason never echoes what was presented
        return
    assert key.token == text and text.startswith("lpd") and len(text) == apikeys.TOKEN_LENGTH
    assert text[5:5 + apikeys.KEY_ID_LENGTH] == key.key_id


@FAST
@given(TOKENS, TOKENS)
def test_client_credential_parsing_parses_or_says_malformed(client_id: str, secret: str) -> None:
    for parse, text in ((apikeys.parse_client_id, client_id), (apikeys.parse_client_secret, secret),
                        (apikeys.parse_client_id, "lpdi_" + secret[5:21])):
        try:
            key_id = parse(text)
        except apikeys.MalformedKey:
            continue
        assert len(key_id) == apikeys.KEY_ID_LENGTH and set(key_id) <= set(apikeys.BASE62)


# -- cursors ----------------------------------------------------------------------------------------

KEYS = {1: b"k" * 32, 7: b"q" * 32}


def signed(payload: bytes, version: int = 1) -> str:
    """A cursor with a valid MAC around any payload: what only a holder of the key (or an older
    release of the gateway, with another cursor shape) can produce."""
    mac = hmac.new(KEYS[version], payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(version.to_bytes(2, "big") + mac + payload).decode().rstrip("=")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
CURSOR_TEXT = st.one_of(
    st.text(max_size=1100),
    st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b"\x00\x01" + b).decode()),
    st.binary(max_size=200).map(signed),
    JSON.map(lambda v: signed(json.dumps(v).encode())),
)


@FAST
@given(CURSOR_TEXT)
def test_cursor_decoding_decodes_or_says_bad_request(text: str) -> None:
    try:
        state = cursors.decode(text, KEYS)
    except BadRequest as exc:
        assert exc.status == 400
        return
    assert isinstance(state, dict)


# -- the records route's query parameters --------------------------------------------------------------

@dataclass
class Member:
    path: str
    key: str
    licence_id: str


_MEMBERS: dict[str | None, Member] = {}


async def member(runtime: Runtime, client: httpx.AsyncClient) -> Member:
    """Made once per test: hypothesis runs the body once per example against the same database."""
    database = runtime.config.database_url  # one per test: the cache never outlives its database
    if database not in _MEMBERS:
        licensed = await licensed_member(runtime, client)
        _MEMBERS.clear()
        _MEMBERS[database] = Member(records_path_of(licensed), licensed.key, licensed.licence["id"])
    return _MEMBERS[database]


NUMBERISH = st.one_of(st.text(max_size=12), st.integers(-5, 20_000).map(str),
                      st.sampled_from(["²", "١٢", "٣", "𝟗", "1_000", " 1", "1 ", "+1", "0x10", "1e3", "9" * 5000,
                                       "00000000000000000000001", "4294967296", "-0", ""]))
FUZZ_PARAMS = st.fixed_dictionaries({}, optional={
    "limit": st.one_of(NUMBERISH, st.integers(1, 60).map(str)),
    "since_version": st.one_of(NUMBERISH, st.integers(0, 3).map(str)),
    "format": st.one_of(st.text(max_size=10), st.sampled_from(["CSV", "json", "parquet", ""]),
                        st.sampled_from(["csv", "ndjson"]), st.sampled_from(["csv", "ndjson"])),
    "partition": st.lists(st.one_of(st.text(max_size=30), st.sampled_from(["north", "south", "east", ""])),
                          max_size=4),
    "cursor": st.one_of(st.text(max_size=60), CURSOR_TEXT),
})


@APP
@given(params=FUZZ_PARAMS, accept=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                                max_size=40),
                                            st.sampled_from(["text/csv", "application/x-ndjson", "*/*"])))
async def test_records_query_parameters_never_make_a_server_error(
        runtime: Runtime, client: httpx.AsyncClient, params: dict[str, Any], accept: str | None) -> None:
    m = await member(runtime, client)
    headers = auth(m.key)
    if accept is not None:
        headers["accept"] = accept
    query = [(name, v) for name, value in params.items() for v in (value if isinstance(value, list) else [value])]
    response = await client.get(m.path, params=query, headers=headers)
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400, 403, 404, 406), (query, response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"


JSON64 = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)
STATE_PARTITIONS = st.sampled_from(["north", "south", "east", "", "zzz", "north "])
STATE_VALUES = st.one_of(JSON64, st.sampled_from([
    [], ["north"], ["east"], ["north", "east"], ["north", "north"], [""], 0, 1, -1, 2, 3, 2**31 - 1, 2**31, 2**40,
    10_000, 10_001, "csv", "ndjson", "xml", "1", ["north", 0, 0], ["north", 1, -1], ["north", "1", "x"],
    ["zzz", 1, 0], ["", 0, 0], ["north", 2**31, 2**62], [None, 1, 1], None]))


STATE_FIELDS = {
    "p": st.lists(STATE_PARTITIONS, max_size=3),
    "s": st.one_of(st.integers(-2, 4), st.sampled_from([2**31 - 1, 2**31, 2**62])),
    "u": st.one_of(st.integers(-2, 4), st.sampled_from([2**31 - 1, 2**31, 2**62])),
    "f": st.sampled_from(["csv", "ndjson", "xml", "CSV"]),
    "n": st.integers(-1, 10_001),
    "at": st.tuples(STATE_PARTITIONS, st.integers(-2, 2**31), st.integers(-2, 2**63 - 1)).map(list),
    "l": st.sampled_from([str(uuid.UUID(int=0)), ""]),
    "x": STATE_VALUES,
}


@st.composite
def state_changes(draw: st.DrawFn) -> dict[str, Any]:
    """One to three fields of a cursor's state, each of its own type (mostly) or anything."""
    names = draw(st.lists(st.sampled_from(sorted(STATE_FIELDS)), min_size=1, max_size=3, unique=True))
    return {name: draw(st.one_of(STATE_FIELDS[name], STATE_FIELDS[name], STATE_FIELDS[name], STATE_VALUES))
            for name in names}


@APP
@given(changes=state_changes(), drop=st.lists(st.sampled_from(["p", "s", "u", "f", "n", "at"]), max_size=1))
async def test_a_cursor_with_a_valid_mac_but_any_state_never_makes_a_server_error(
        runtime: Runtime, client: httpx.AsyncClient, changes: dict[str, Any], drop: list[str]) -> None:
    """A real cursor's state with fields changed or missing, under a valid MAC: what a cursor of another
    release of the gateway (another shape), or one forged with a leaked key, looks like."""
    m = await member(runtime, client)
    secrets_ = runtime.snapshot.secrets
    assert secrets_ is not None
    version, key = secrets_.current(CURSOR)
    first = await client.get(m.path, params={"limit": 1}, headers=auth(m.key))
    real = first.headers["link"].split("cursor=")[1].split(">")[0]
    state = {k: v for k, v in {**cursors.decode(real, secrets_.by_purpose[CURSOR]), **changes}.items()
             if k not in drop}
    response = await client.get(m.path, params={"cursor": cursors.encode(state, version, key)}, headers=auth(m.key))
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400, 403), (state, response.status_code, response.text)
    if response.status_code == 403:
        assert response.json()["partition"] not in ("north", "south")


# -- JSON bodies of the admin routes --------------------------------------------------------------

EDGE_VALUES = st.sampled_from([
    0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 1e-300, 1e300, 0.5, True, False, None, "", " ",
    "member", "compliance", "vendor", "2026-04-01T00:00:00Z", "2026-04-01", "2026-02-30T00:00:00Z",
    "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00+00:00", "1970-01-01T00:00:00-23:59", str(uuid.uuid4()),
    "not-a-uuid", ["north"], ["north", "north"], [""], ["0.0.0.0/0"], ["::/0"], ["10.0.0.1/8"], ["x" * 300],
    "x" * 200_000, "\x00", "a\u2028b", "ab" * 40, "a" * 64, [{"name": "a", "type": "text"}],
    [{"name": "a", "type": "text"}, {"name": "a", "type": "text"}], {"name": "a"}, ["\x00"], ["north\x00"],
    [{"name": "area", "type": "text", "description": "\x00"}], [{"name": "area", "type": "text", "description": 1}],
    [{"name": "area", "type": ["text"]}], [{"name": ["area"], "type": "text"}], [{"name": "area", "type": "text", 1: 2}],
    "ab:cd", "AB" * 32, ":" * 95, "0" * 64])


# Each JSON admin route, its fields, and a body it accepts (from which the fuzzer strays a field or two).
ADMIN_JSON_ROUTES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("POST", "/v1/admin/datasets"): (admin_api.DATASET_FIELDS, lambda ids: {
        "name": "d" + uuid.uuid4().hex[:8], "columns": [{"name": "area", "type": "text"}], "partition_column": "area"}),
    ("POST", "/v1/admin/members"): (admin_api.MEMBER_FIELDS, lambda ids: {"name": uuid.uuid4().hex}),
    ("POST", "/v1/admin/licences"): (admin_api.GRANT_FIELDS, lambda ids: {
        "member_id": ids["spare"], "dataset_id": ids["dataset"], "partitions": ["north"], "columns": ["area"],
        "terms_text": "t"}),
    ("PATCH", "/v1/admin/licences/{licence}"): (admin_api.AMEND_FIELDS, lambda ids: {"partitions": ["north"]}),
    ("POST", "/v1/admin/licences/{licence}/suspend"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("POST", "/v1/admin/licences/{licence}/resume"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("POST", "/v1/admin/licences/{licence}/revoke"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("POST", "/v1/admin/keys"): (admin_api.KEY_FIELDS, lambda ids: {"kind": "member", "member_id": ids["member"]}),
    ("POST", "/v1/admin/oauth-clients"): (admin_api.OAUTH_CLIENT_FIELDS, lambda ids: {"member_id": ids["member"]}),
    ("POST", "/v1/admin/members/{member}/revoke"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("POST", "/v1/admin/members/{member}/suspend"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("POST", "/v1/admin/members/{member}/resume"): (admin_api.STATUS_FIELDS, lambda ids: {}),
    ("PATCH", "/v1/admin/members/{member}"): (admin_api.MEMBER_AMEND_FIELDS,
                                              lambda ids: {"contact_name": uuid.uuid4().hex}),
    ("PATCH", "/v1/admin/datasets/{dataset}"): (admin_api.DATASET_AMEND_FIELDS,
                                                lambda ids: {"description": uuid.uuid4().hex}),
    ("POST", "/v1/admin/keys/{key}/revoke"): ({}, lambda ids: {}),
    ("POST", "/v1/admin/keys/{key}/rotate"): (admin_api.ROTATE_FIELDS, lambda ids: {"overlap_seconds": 60}),
    ("POST", "/v1/admin/oauth-clients/{client}/revoke"): ({}, lambda ids: {}),
}
FIELD_NAMES = sorted({name for spec, _ in ADMIN_JSON_ROUTES.values() for name in spec})


@st.composite
def admin_bodies(draw: st.DrawFn, route: tuple[str, str], ids: dict[str, str]) -> Any:
    """Any JSON; or fields of any admin route; or a body the route accepts with a field or two changed."""
    spec, valid = ADMIN_JSON_ROUTES[route]
    values = st.one_of(EDGE_VALUES, EDGE_VALUES, JSON, st.sampled_from(list(ids.values())),
                       st.lists(st.one_of(st.text(string.ascii_lowercase, max_size=8),
                                          st.sampled_from(["area", "day", "count", "north", "east"])), max_size=4))
    mode = draw(st.integers(0, 5))
    if mode == 0:
        return draw(JSON)
    names = st.sampled_from(sorted(spec) or FIELD_NAMES) if mode > 1 else st.one_of(
        st.sampled_from(FIELD_NAMES), st.text(max_size=6))
    changed = draw(st.dictionaries(names, values, min_size=1, max_size=2 if mode > 1 else 6))
    return {**valid(ids), **changed} if mode > 1 else changed


@dataclass
class Vendor:
    key: str
    ids: dict[str, str]


_VENDORS: dict[str | None, Vendor] = {}


async def vendor(runtime: Runtime, client: httpx.AsyncClient) -> Vendor:
    database = runtime.config.database_url
    if database not in _VENDORS:
        licensed = await licensed_member(runtime, client)
        v = licensed.vendor
        other = await make_vendor(runtime, client)
        compliance = await v.ok("POST", "/v1/admin/keys", json={"kind": "compliance"})
        oauth_client = await v.ok("POST", "/v1/admin/oauth-clients", json={"member_id": licensed.member["id"]})
        spare, doomed = await v.member("spare"), await v.member("doomed")
        # Status changes and revocations act on objects of their own, so that the others stay usable.
        second = await v.dataset("second", rows="north,2026-04-01,1,x\n")
        status_licence = await v.licence(doomed["id"], second["id"], ["north"])
        _VENDORS.clear()
        _VENDORS[database] = Vendor(v.key, {
            "member": licensed.member["id"], "spare": spare["id"], "doomed": doomed["id"],
            "dataset": licensed.dataset["id"], "licence": licensed.licence["id"], "status_licence": status_licence["id"],
            "key": compliance["id"], "client": oauth_client["id"], "other_vendor": str(other.id)})
    return _VENDORS[database]


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
async def test_admin_json_bodies_never_make_a_server_error(runtime: Runtime, client: httpx.AsyncClient,
                                                          data: st.DataObject) -> None:
    v = await vendor(runtime, client)
    method, template = data.draw(st.sampled_from(sorted(ADMIN_JSON_ROUTES)), label="route")
    body = data.draw(admin_bodies((method, template), v.ids), label="body")
    content = json.dumps(body).encode()  # stdlib: also numbers orjson would not write (NaN, 2**70)
    ids = {**v.ids, "member": v.ids["doomed"] if template.endswith("/revoke") else v.ids["member"],
           "licence": v.ids["status_licence"] if template.endswith(("/suspend", "/resume", "/revoke"))
           else v.ids["licence"]}
    response = await client.request(method, template.format(**ids), content=content, headers={
        **auth(v.key), "content-type": "application/json"})
    event(f"{response.status_code}")
    assert response.status_code in (200, 201, 400, 404, 409, 413, 422), (method, template, response.text)
    assert response.headers["content-type"] in ("application/json", "application/problem+json")
