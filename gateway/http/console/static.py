"""The console's style sheet and script: files of this package, served by the gateway itself (the CSP
allows no other origin, and no inline script or style)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.events import EventKind
from gateway.http.console.web import HERE, NOT_FOUND, error_page
from gateway.http.context import context

TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
# Read once: a handful of small files, named here so that no request can name another path.
FILES = {path.name: (path.read_bytes(), TYPES[path.suffix]) for path in sorted((HERE / "static").iterdir())
         if path.suffix in TYPES}


async def asset(request: Request) -> Response:
    context(request.scope).kind = EventKind.CONSOLE_PAGE_READ
    found = FILES.get(request.path_params["name"])
    if found is None:
        return error_page(request, 404, *NOT_FOUND)
    body, media_type = found
    return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=3600"})


routes = [Route("/console/static/{name}", asset, methods=["GET"])]
