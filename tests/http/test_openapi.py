"""The OpenAPI document (schemas/openapi.yaml) against the app: every route in it, nothing else, and served.

Whether the answers match the document is tests/http/test_schemathesis.py's part.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import yaml
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway.app import build_app
from gateway.http import openapi
from gateway.runtime import Runtime
from tests import REPOSITORY

ROOT = REPOSITORY
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text(encoding="utf-8"))
    return document


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item if method in METHODS}


def served(runtime: Runtime) -> set[tuple[str, str]]:
    """(path, method) of every route of the real app. Starlette answers HEAD wherever there is GET (RFC 9110
    §9.3.2: HEAD is GET without the content); that implied HEAD is the GET's, not an operation of its own."""
    found = set()
    for route in build_app(runtime).routes:
        if route.path.startswith("/console/"):
            continue  # the web console's HTML pages are not the API (README: the console)
        assert isinstance(route, Route), f"{route!r}: only plain routes are expected; document any other kind"
        assert route.methods, f"{route.path}: a route without methods answers every method"
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} is documented as {path}
        found |= {(path, method) for method in route.methods}
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    validate(document)
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_every_route_is_documented_and_nothing_else(runtime: Runtime) -> None:
    document = documented(_document())
    app = served(runtime)
    # An implied HEAD (of a GET route) needs no entry of its own; an explicit HEAD-only route does.
    undocumented = {(path, method) for path, method in app - document
                    if not (method == "HEAD" and (path, "GET") in document)}
    assert not undocumented, f"routes missing from schemas/openapi.yaml: {sorted(undocumented)}"
    assert not document - app, f"schemas/openapi.yaml lists routes the app does not have: {sorted(document - app)}"


def test_every_operation_says_who_may_call_it_and_how_it_fails() -> None:
    document = _document()
    schemes = set(document["components"]["securitySchemes"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            assert "security" in operation, f"{where}: declare its security, [] when public"
            for requirement in operation["security"]:
                assert set(requirement) <= schemes, where
            statuses = set(operation["responses"])
            # The change data feed is listed only to say that it refuses (400 UNSUPPORTED_OPERATION).
            if operation["operationId"] != "sharingTableChanges":
                assert any(s.startswith("2") for s in statuses), f"{where}: no success response"
            if path in ("/healthz", "/readyz", "/metrics"):
                continue  # not audited, hence never authenticated: nothing but their own answers
            assert {"400", "401", "429", "500", "503"} <= statuses, f"{where}: errors of the middleware missing"
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45" and "$ref" in r}
            refs = {r["$ref"].rsplit("/", 1)[-1] for r in errors.values()}
            # Delta Sharing answers in the protocol's error form, every other route with problems.
            if path.startswith("/delta-sharing"):
                assert all(r.startswith("Sharing") for r in refs), f"{where}: {refs}"
            else:
                assert not any(r.startswith("Sharing") for r in refs), f"{where}: {refs}"


def test_every_admin_change_takes_an_idempotency_key() -> None:
    """Every POST and PATCH of the admin API honours Idempotency-Key (gateway/http/idempotency.py), and
    says so with its 409 (still running, or the key used for another request)."""
    for path, item in _document()["paths"].items():
        for method in ("post", "patch"):
            operation = item.get(method)
            if operation is None or not path.startswith("/v1/admin/"):
                continue
            names = {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation.get("parameters", [])}
            assert "IdempotencyKey" in names, f"{method.upper()} {path}: add the IdempotencyKey parameter"
            assert "409" in operation["responses"], f"{method.upper()} {path}: 409 missing"


async def test_the_document_is_served_as_json_and_audited(runtime: Runtime, client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == _document() == openapi.DOCUMENT
    event_id = uuid.UUID(response.headers["audit-event"])
    async with runtime.pool.acquire() as conn:
        kind = await conn.fetchval("SELECT kind FROM audit_events WHERE event_id = $1", event_id)
    assert kind == "api:openapi:read"


async def test_a_method_a_path_lacks_answers_405_naming_exactly_the_documented_methods(
        client: httpx.AsyncClient) -> None:
    """Allow lists every method of the resource, also where several routes serve one path (RFC 9110 §15.5.6)."""
    for path, item in _document()["paths"].items():
        methods = {method.upper() for method in item if method in METHODS}
        expected = methods | ({"HEAD"} if "GET" in methods else set())
        response = await client.request("OPTIONS", re.sub(r"\{[^}]+\}", "x", path))
        assert response.status_code == 405, path
        assert set(response.headers["allow"].split(", ")) == expected, path


async def test_delta_sharing_errors_are_documented_in_the_protocol_form(client: httpx.AsyncClient) -> None:
    """The document's SharingError is what the gateway really sends under /delta-sharing."""
    from jsonschema import Draft202012Validator

    schema = _document()["components"]["schemas"]["SharingError"]
    response = await client.get("/delta-sharing/shares")
    assert response.status_code == 401 and response.headers["content-type"] == "application/json"
    Draft202012Validator(schema).validate(response.json())
