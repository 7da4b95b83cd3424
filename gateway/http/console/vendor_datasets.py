"""The vendor's datasets: their versions, publishing a version by upload and withdrawing one."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import datasets
from gateway.audit.events import EventKind
from gateway.console_users import Session
from gateway.datasets import Dataset
from gateway.errors import InvalidInput, UnsupportedMediaType
from gateway.http.admin_api import UPLOAD_TYPES
from gateway.http.console.vendor_common import (
    ADMIN,
    READERS,
    actor,
    may_change,
    path_number,
    path_uuid,
    refused,
    text,
    vendor_id,
)
from gateway.http.console.web import acting, bounded_upload, changed, page, render, see_other
from gateway.http.endpoints import runtime_of
from gateway.upload_bodies import CHARSETS, PublishFormat

CHUNK = 64 * 1024
# A file's format by its name when the browser names no media type the API knows (most send CSV as
# text/csv, NDJSON and Parquet as application/octet-stream).
SUFFIXES: dict[str, PublishFormat] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".parquet": "parquet"}
CHARSET_CHOICES = ("utf-8", "shift_jis", "euc-jp")


@page(*READERS)
async def list_datasets(request: Request, session: Session) -> Response:
    found = await datasets.list_for_vendor(runtime_of(request).pool, vendor_id(session))
    return render(request, "vendor_datasets.html", session=session, datasets=found,
                  accumulation={d.id: datasets.accumulation(d.versions) for d in found})


async def _show(request: Request, session: Session, dataset: Dataset, *, status: int = 200,
                message: tuple[str, str] | None = None, typed: dict[str, str] | None = None) -> Response:
    return render(request, "vendor_dataset.html", session=session, status=status, dataset=dataset,
                  accumulation=datasets.accumulation(dataset.versions), may_change=may_change(session),
                  message=message, typed=typed or {}, modes=datasets.PUBLISH_MODES, charsets=CHARSET_CHOICES)


@page(*READERS)
async def show_dataset(request: Request, session: Session) -> Response:
    dataset = await datasets.get(runtime_of(request).pool, vendor_id(session), path_uuid(request, "dataset_id"))
    return await _show(request, session, dataset)


def _format(upload: UploadFile) -> tuple[PublishFormat, bool]:
    """The upload's format and whether it is gzip, from its media type or else its file name."""
    name = (upload.filename or "").lower()
    gzip = name.endswith(".gz")
    stem = name[:-3] if gzip else name
    media_type = (upload.content_type or "").split(";")[0].strip().lower()
    fmt = UPLOAD_TYPES.get(media_type) or next((f for s, f in SUFFIXES.items() if stem.endswith(s)), None)
    if fmt is None:
        raise UnsupportedMediaType("choose a .csv (with a header row), .ndjson or .parquet file, optionally .gz")
    return fmt, gzip


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    # The multipart parser spooled the file (to disk past 1 MiB): it goes to COPY a chunk at a time.
    while chunk := await upload.read(CHUNK):
        yield chunk


@bounded_upload(lambda request: runtime_of(request).config.max_upload_bytes,
                "ファイルが大きすぎます(上限 {limit:,} バイト)。",
                "The upload is too large: at most {limit:,} bytes (GATEWAY_MAX_UPLOAD_BYTES).")
@page(*ADMIN)
async def publish(request: Request, session: Session) -> Response:
    acting(request, EventKind.VERSION_PUBLISH)
    runtime = runtime_of(request)
    dataset = await datasets.get(runtime.pool, vendor_id(session), path_uuid(request, "dataset_id"))
    upload = request.state.form.get("upload")
    mode, charset = text(request, "mode") or "append", text(request, "charset") or None
    typed = {"mode": mode, "charset": charset or ""}
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _show(request, session, dataset, status=400, typed=typed,
                           message=refused(request, "アップロードするファイルを選んでください。", "Choose a file to upload."))
    if mode not in datasets.PUBLISH_MODES or (charset is not None and charset not in CHARSETS):
        return await _show(request, session, dataset, status=400, typed=typed,
                           message=refused(request, "公開方法または文字コードが正しくありません。",
                                           "Choose a publish mode and an encoding from the lists."))
    try:
        fmt, gzip = _format(upload)
        version = await datasets.publish(runtime.writer, actor(request, session), dataset, _chunks(upload), fmt,
                                         max_bytes=runtime.config.max_upload_bytes,
                                         charset=None if fmt == "parquet" else charset, gzip=gzip,
                                         mode="replace" if mode == "replace" else "append")
    except (InvalidInput, UnsupportedMediaType) as exc:
        # The file's fault (a bad row, a wrong type): the form again, with what the gateway found.
        return await _show(request, session, dataset, status=400, typed=typed,
                           message=refused(request, "ファイルを公開できませんでした。", exc.detail))
    finally:
        await upload.close()
    changed(request)
    return see_other(f"/console/vendor/datasets/{dataset.id}?published={version.version}")


@page(*ADMIN)
async def withdraw(request: Request, session: Session) -> Response:
    acting(request, EventKind.VERSION_WITHDRAW)
    runtime = runtime_of(request)
    dataset = await datasets.get(runtime.pool, vendor_id(session), path_uuid(request, "dataset_id"))
    number = path_number(request, "number")
    reason = text(request, "reason").strip()
    if not reason or len(reason) > datasets.MAX_REASON_CHARS:
        return await _show(request, session, dataset, status=400,
                           message=refused(request, "取り下げの理由を入力してください(1000文字まで)。",
                                           "Give the reason for the withdrawal (at most 1,000 characters)."))
    await datasets.withdraw(runtime.writer, actor(request, session), dataset, number, reason)
    changed(request)
    return see_other(f"/console/vendor/datasets/{dataset.id}")


routes = [
    Route("/console/vendor/datasets", list_datasets, methods=["GET"]),
    Route("/console/vendor/datasets/{dataset_id}", show_dataset, methods=["GET"]),
    Route("/console/vendor/datasets/{dataset_id}/versions", publish, methods=["POST"]),
    Route("/console/vendor/datasets/{dataset_id}/versions/{number}/withdraw", withdraw, methods=["POST"]),
]
