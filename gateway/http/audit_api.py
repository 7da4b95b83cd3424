"""The evidence API: delivery receipts, checkpoints, the audit public keys and bundle exports.

Members fetch receipts for their own deliveries and keep checkpoints as independent witnesses;
compliance officers (and vendor admins) export their vendor's evidence for a period; anyone may fetch
the public keys that verify it.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import times
from gateway.audit import checkpoints, evidence
from gateway.audit.events import EventKind
from gateway.errors import BadRequest
from gateway.http.context import context
from gateway.http.endpoints import (
    NO_STORE,
    StreamingDelivery,
    json_response,
    path_id,
    principal,
    runtime_of,
    vendor_of,
)

MEMBER = ("member", "sharing")
ANY_CALLER = ("member", "sharing", "vendor", "compliance")
EVIDENCE_READERS = ("compliance", "vendor")



async def receipt(request: Request) -> Response:
    """The caller's own delivery event, its covering checkpoint and the inclusion proof."""
    caller = principal(request, EventKind.RECEIPT_READ, *MEMBER)
    event_id = path_id(request, "event", "audit event")
    async with runtime_of(request).pool.acquire() as conn:
        body = await checkpoints.receipt(conn, event_id, member_id=caller.member_id)
    return json_response(body)


async def latest_checkpoint(request: Request) -> Response:
    principal(request, EventKind.CHECKPOINT_READ, *ANY_CALLER)
    return json_response({"checkpoints": await checkpoints.latest_checkpoints(runtime_of(request).pool)})


async def public_keys(request: Request) -> Response:
    """Every audit signing key with its id and validity: public, so that anyone can verify."""
    context(request.scope).kind = EventKind.AUDIT_KEYS_READ
    return json_response({"keys": await checkpoints.public_keys(runtime_of(request).pool)})


def _moment(text: str | None, name: str) -> datetime:
    if text is None:
        raise BadRequest(f"{name} is required, e.g. {name}=2026-04-01T00:00:00Z")
    try:
        return times.parse_moment(text)
    except times.MomentError as exc:
        raise BadRequest(f"{name} {exc}") from None


def _optional_id(text: str | None, name: str) -> uuid.UUID | None:
    try:
        return None if text is None else uuid.UUID(text)
    except ValueError:
        raise BadRequest(f"{name} must be an id") from None


async def export(request: Request) -> Response:
    """A bundle of the caller's vendor's events for [from, to), as `gateway audit export` writes it."""
    caller = principal(request, EventKind.AUDIT_READ, *EVIDENCE_READERS)
    query = request.query_params
    start, end = _moment(query.get("from"), "from"), _moment(query.get("to"), "to")
    member_id, dataset_id = _optional_id(query.get("member"), "member"), _optional_id(query.get("dataset"), "dataset")
    runtime = runtime_of(request)
    folder = Path(tempfile.mkdtemp(prefix="lpd-export-"))
    try:
        result, digest = await evidence.export_apart(runtime.dsn, vendor_of(caller), start, end, member_id,
                                                     dataset_id, path=folder / "bundle.zip")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # The event names exactly what is handed out: the bundle's digest and what it covers. As for any
    # streamed delivery it is committed before the first byte, the key is checked while the bundle
    # streams from disk (never whole in memory), and the stream-end event says how much of it left.
    # Not a FileResponse: it would answer Range requests with parts of a bundle that is built anew for
    # every request, while the event records the whole of this one.
    ctx = context(request.scope)
    ctx.facts.detail = {**result.to_json(), "path": None, "bundle_sha256": digest}
    path = folder / "bundle.zip"
    return StreamingDelivery(ctx, runtime.deliveries.bundle(caller, path), 200, {
        **NO_STORE, "content-type": "application/zip", "content-length": str(path.stat().st_size),
        "content-disposition": f'attachment; filename="audit-{start:%Y%m%d}-{end:%Y%m%d}.zip"'},
        cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))  # also when the client left


routes = [
    Route("/v1/receipts/{event}", receipt, methods=["GET"]),
    Route("/v1/audit/checkpoint", latest_checkpoint, methods=["GET"]),
    Route("/v1/audit/export", export, methods=["GET"]),
    Route("/.well-known/lpd-audit-keys.json", public_keys, methods=["GET"]),
]
