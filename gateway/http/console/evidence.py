"""Evidence: a bundle of the vendor's events for a period, downloaded as the API's export makes it, and
the verification of a bundle someone uploads, with its report.

The download is built on disk first and then streamed with its Content-Length (the same function as
GET /v1/audit/export): the browser's own download bar shows true progress, and the request's event,
committed before the first byte, names the bundle's digest. While it is being built the browser
waits on the form's answer (seconds per hundred thousand events); no progress is invented for that.

An uploaded bundle is untrusted: it is spooled to a temporary file (at most MAX_BUNDLE_BYTES, refused
from its Content-Length before anything is read), verified on a thread by gateway.audit.verify, and
deleted. Its report is never the bundle's report.html: it is rendered anew by gateway.audit.report from
the figures the verifier recomputed and found equal to report.json, and only for a bundle that passed.
It is the answer to the upload itself (the form's second button), not a page kept for later: nothing of
an uploaded bundle outlives its request, and any instance answers alike.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.audit import checkpoints, report
from gateway.audit.events import EventKind
from gateway.audit.verify import Verdict, verify_bundle
from gateway.console_users import Session
from gateway.http.audit_api import bundle_download
from gateway.http.console.audit import Period, period
from gateway.http.console.web import SECURITY_HEADERS, PageError, acting, bounded_upload, page, render
from gateway.http.endpoints import runtime_of

READERS = ("vendor-admin", "compliance")
MAX_BUNDLE_BYTES = 1 << 30  # 1 GiB: several million events; a bigger one is for `gateway audit verify FILE`
_COPY_CHUNK = 1 << 20
# The report is a page of its own, with the CSP it declares itself (its styles are inline, in one
# <style> element), sandboxed: it runs nothing and submits nothing.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
              "form-action 'none'; sandbox")


def _form_page(request: Request, session: Session, status: int = 200, errors: list[tuple[str, str]] | None = None,
               chosen: Period | None = None) -> Response:
    chosen = chosen or period({}, [])
    return render(request, "evidence.html", session=session, status=status, errors=errors or [],
                  first=chosen.first.isoformat(), last=chosen.last.isoformat(), max_bytes=MAX_BUNDLE_BYTES)


@page(*READERS)
async def evidence(request: Request, session: Session) -> Response:
    return _form_page(request, session)


@page(*READERS)
async def export(request: Request, session: Session) -> Response:
    errors: list[tuple[str, str]] = []
    chosen = period(request.state.form, errors)
    if errors:
        return _form_page(request, session, 400, errors, chosen)
    acting(request, EventKind.AUDIT_READ)
    runtime = runtime_of(request)
    return await bundle_download(request, session.user.vendor_id, chosen.start, chosen.end, None, None,
                                 runtime.deliveries.running())


def _spool(upload: UploadFile, target: Path) -> int:
    """Copy the upload to `target`; its size (the form parser has spooled it already)."""
    size = 0
    upload.file.seek(0)
    with target.open("wb") as out:
        while chunk := upload.file.read(_COPY_CHUNK):
            size += len(chunk)
            if size > MAX_BUNDLE_BYTES:
                raise PageError(413, "ファイルが大きすぎます。", f"The bundle is larger than {MAX_BUNDLE_BYTES:,} bytes.")
            out.write(chunk)
    return size


def _verify(path: Path, trusted_keys: list[str]) -> tuple[Verdict, str | None]:
    """The verdict, and the report rendered by this gateway's code from what the verifier checked."""
    verdict = verify_bundle(path, trusted_keys=trusted_keys)
    if not verdict.ok:
        return verdict, None
    with zipfile.ZipFile(path) as bundle:
        listed = set(bundle.namelist())
        if "report.json" not in listed:
            return verdict, None  # format 1: no figures to render from
        # The verifier recomputed report.json from events.jsonl and the manifest and found it equal,
        # byte for byte: these are the figures, not the uploader's claims.
        figures = json.loads(bundle.read("report.json"))
        manifest = json.loads(bundle.read("manifest.json"))
    return verdict, report.render(figures, manifest)


@page(*READERS)
async def verify(request: Request, session: Session) -> Response:
    upload = request.state.form.get("bundle")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _form_page(request, session, 400, [("検証するファイルを選んでください。", "Choose a bundle file to verify.")])
    # Verified against this gateway's own audit keys, not only the keys.json the bundle brings along:
    # the console vouches for evidence this gateway signed.
    trusted = [key["vkey"] for key in await checkpoints.public_keys(runtime_of(request).pool)]
    folder = Path(tempfile.mkdtemp(prefix="lpd-verify-"))
    try:
        size = await asyncio.to_thread(_spool, upload, folder / "bundle.zip")
        verdict, html = await asyncio.to_thread(_verify, folder / "bundle.zip", trusted)
    finally:
        await upload.close()
        shutil.rmtree(folder, ignore_errors=True)
    if html is not None and request.state.form.get("show") == "report":
        return HTMLResponse(html, headers={**SECURITY_HEADERS, "content-security-policy": REPORT_CSP})
    return render(request, "evidence_verdict.html", session=session, verdict=verdict, has_report=html is not None,
                  size=size, filename=upload.filename)


routes = [Route("/console/evidence/", evidence, methods=["GET"]),
          Route("/console/evidence/export", export, methods=["POST"]),
          Route("/console/evidence/verify", bounded_upload(
              lambda request: MAX_BUNDLE_BYTES, "ファイルが大きすぎます(上限 {limit:,} バイト)。大きな証拠は gateway audit verify で検証してください。",
              "The bundle is larger than {limit:,} bytes: verify it with `gateway audit verify FILE`.")(verify), methods=["POST"])]
