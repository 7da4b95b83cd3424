"""GET /openapi.json: the hand-written OpenAPI 3.1 document (schemas/openapi.yaml), served as JSON.

The YAML is read and rendered once, at import: a document that does not load stops the start rather
than the first request. It is public, like the OAuth metadata, and audited like every request that
reaches the gateway (kind api:openapi:read): one small static read per client, not a flood.
tests/http/test_openapi.py keeps it in step with the routes; tests/http/test_schemathesis.py with the answers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.events import EventKind
from gateway.http.context import context

PATH = "/openapi.json"


def _document_path() -> Path:
    """schemas/openapi.yaml of a source checkout, or the copy a wheel installs under share/ (pyproject.toml)."""
    checkout = Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
    return checkout if checkout.is_file() else Path(sys.prefix) / "share" / "lpd-gateway" / "openapi.yaml"


def load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_document_path().read_text(encoding="utf-8"))
    return document


DOCUMENT = load()
_BODY = orjson.dumps(DOCUMENT)
_HEADERS = {"cache-control": "public, max-age=300"}


async def openapi(request: Request) -> Response:
    context(request.scope).kind = EventKind.OPENAPI_READ
    return Response(_BODY, media_type="application/json", headers=_HEADERS)


routes = [Route(PATH, openapi, methods=["GET"])]
