"""The web console: server-rendered pages in Japanese and English for vendor staff, compliance officers
and members' staff, over the same domain functions as the API and the CLI (README: the console).

Its routes are plain Starlette routes under /console/ in the gateway's own app, behind the same audit
middleware: every page read is an event naming the person (`console:page:read`), every change commits
its own. Nothing of it runs on the member API's path.
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.http.console import account, audit, evidence, member, sign_in, static, vendor
from gateway.http.console.web import NOT_FOUND, error_page

routes: list[Route] = [*sign_in.routes, *static.routes, *account.routes, *vendor.routes, *member.routes,
                      *audit.routes, *evidence.routes]

__all__ = ["NOT_FOUND", "error_page", "routes"]
