"""The evidence API: delivery receipts, checkpoints, the audit public keys and bundle exports.

Members fetch receipts for their own deliveries and keep checkpoints as independent witnesses;
compliance officers (and vendor admins) export their vendor's evidence for a period; anyone may fetch
the public keys that verify it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import times
from gateway.audit import checkpoints, evidence, tiles
from gateway.audit.events import EventKind
from gateway.errors import BadRequest, NotFound
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
from keys.merkle import HASH_BYTES
from keys.tiles import parse_tile_path, tile_width

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
    caller = principal(request, EventKind.CHECKPOINT_READ, *ANY_CALLER)
    return json_response({"checkpoints": await checkpoints.latest_checkpoints(runtime_of(request).pool,
                                                                              vendor_of(caller))})


# <log_id>/checkpoint or <log_id>/tile/...: a log id is <instance>/<start time>/<6 hex digits>.
_TLOG_PATH = re.compile(r"(?P<log>.+/[0-9]{8}T[0-9]{6}Z/[0-9a-f]{6})/(?P<resource>checkpoint|tile/.+)")


async def tlog(request: Request) -> Response:
    """A log of the caller's vendor in the C2SP tlog-tiles layout: its newest checkpoint, or a hash tile
    of that checkpoint's tree. Entry tiles are not served: entries name members and paths."""
    caller = principal(request, EventKind.TILE_READ, *ANY_CALLER)
    match = _TLOG_PATH.fullmatch(request.path_params["path"])
    if match is None:
        raise NotFound("audit log resource", reason="the paths are <log>/checkpoint and <log>/tile/<L>/<N>[.p/<W>]")
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        latest = await checkpoints.vendor_log_checkpoint(conn, vendor_of(caller), match["log"])
        if match["resource"] == "checkpoint":
            return Response(latest["note"], headers=NO_STORE, media_type="text/plain; charset=utf-8")
        try:
            level, index, width = parse_tile_path(match["resource"])
        except ValueError as exc:
            raise NotFound("tile", reason=str(exc)) from None
        # Tiles of the signed tree only: a partial tile is served at the width a checkpoint has.
        signed = tile_width(latest["tree_size"], level, index)
        hashes = await tiles.tile(conn, match["log"], level, index) if width <= signed else None
    if hashes is None or len(hashes) < width * HASH_BYTES:
        raise NotFound("tile", reason=f"the newest checkpoint's tree has {signed} hashes in that tile")
    # Immutable: a tile of a given width never changes (schemas/audit-format.md §3.1).
    return Response(hashes[:width * HASH_BYTES], media_type="application/octet-stream",
                    headers={"cache-control": "private, max-age=31536000, immutable"})


async def public_keys(request: Request) -> Response:
    """Every audit signing key with its id and validity: public, so that anyone can verify."""
    context(request.scope).kind = EventKind.AUDIT_KEYS_READ
    return json_response({"keys": await checkpoints.public_keys(runtime_of(request).pool)})


def _moment(text: str | None, name: str) -> datetime:
    if text is None:
        raise BadRequest(f"{name} is required, e.g. {name}=2026-04-01T00:00:00Z")
    try:
        # A date is a calendar day in Japan (its midnight JST), as in usage reports and the CLI.
        return times.parse_moment(text, assume=times.JST)
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
    return await bundle_download(request, vendor_of(caller), start, end, member_id, dataset_id,
                                 runtime_of(request).deliveries.key_allows(caller))


async def bundle_download(request: Request, vendor_id: uuid.UUID, start: datetime, end: datetime,
                          member_id: uuid.UUID | None, dataset_id: uuid.UUID | None,
                          still_allowed: Callable[[], str | None]) -> Response:
    """The bundle for [start, end) built on disk, then streamed with its length (the API's export and
    the console's download alike); the request's event kind is set by the caller."""
    runtime = runtime_of(request)
    folder = Path(tempfile.mkdtemp(prefix="lpd-export-"))
    try:
        result, digest = await evidence.export_apart(runtime.dsn, vendor_id, start, end, member_id,
                                                     dataset_id, path=folder / "bundle.zip",
                                                     signer=checkpoints.CheckpointSigner(runtime.master))
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
    return StreamingDelivery(ctx, runtime.deliveries.bundle(path, still_allowed), 200, {
        **NO_STORE, "content-type": "application/zip", "content-length": str(path.stat().st_size),
        "content-disposition": f'attachment; filename="audit-{start:%Y%m%d}-{end:%Y%m%d}.zip"'},
        cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))  # also when the client left


routes = [
    Route("/v1/receipts/{event}", receipt, methods=["GET"]),
    Route("/v1/audit/checkpoint", latest_checkpoint, methods=["GET"]),
    Route("/v1/audit/logs/{path:path}", tlog, methods=["GET"]),
    Route("/v1/audit/export", export, methods=["GET"]),
    Route("/.well-known/lpd-audit-keys.json", public_keys, methods=["GET"]),
]
