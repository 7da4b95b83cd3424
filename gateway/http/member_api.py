"""The member API: a member's licensed datasets and their records, nothing beyond its licences."""

from __future__ import annotations

import asyncio
import hashlib
import math
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import cursors, delivery, licences, metering, metrics
from gateway.context import Principal, RequestContext, context
from gateway.datasets import accumulation
from gateway.delivery import DeliveryScope, Format, Position
from gateway.errors import BadRequest, NotAcceptable, NotFound, TooManyRequests
from gateway.events import EventKind, Outcome, new_event_id
from gateway.http import (
    NO_STORE,
    Direct,
    RawResponse,
    derived,
    encode_headers,
    json_response,
    path_id,
    principal,
)
from gateway.licences import Licence
from gateway.runtime import Runtime
from gateway.server_secrets import CURSOR
from gateway.types import Receive, Send

MEMBER = ("member", "sharing")
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000

NOTICE_EN = ("Limited provision data under Japan's Unfair Competition Prevention Act art. 2(7), provided to "
             "the licensee only under licence {licence}, terms version {terms}. Use or disclosure beyond the "
             "licence is not permitted.")
NOTICE_JA = ("本データは不正競争防止法第2条第7項の限定提供データであり、ライセンス {licence}（利用規約 第{terms}版）に基づき"
             "ライセンシーに限り提供されます。ライセンスの範囲を超える使用・開示は認められません。")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def notice_headers(licence: Licence) -> dict[str, str]:
    """The notice every delivery carries: the statute protects data whose restriction is made visible.

    Rendered once per licence object (an amended licence is a new object) and shared: callers copy it."""

    def render() -> dict[str, str]:
        values = {"licence": str(licence.id), "terms": licence.terms_version}
        return {
            "licence": f'{licence.id}; terms-version={licence.terms_version}',
            "data-notice": NOTICE_EN.format(**values),
            # Header values are ASCII: the Japanese notice travels percent-encoded UTF-8 (RFC 3986).
            "data-notice-ja": urllib.parse.quote(NOTICE_JA.format(**values), safe=" ()、。"),
            **NO_STORE,
        }

    return derived.get(("notice", licence.id), (licence,), render)


def terms_url(request: Request) -> Any:
    return lambda licence: str(request.url_for("licence_terms", licence=str(licence.id)))


def _licence_summary(runtime: Runtime, licence: Licence) -> dict[str, Any]:
    dataset = runtime.snapshot.datasets[licence.dataset_id]
    return {"dataset": str(dataset.id), "name": dataset.name, "description": dataset.description,
            "licence_id": str(licence.id), "status": licence.status,
            "scope": {"partitions": list(licence.partitions), "columns": list(licence.columns)},
            "valid_from": licence.valid_from.isoformat(),
            "valid_until": licence.valid_until.isoformat() if licence.valid_until else None,
            "terms_version": licence.terms_version,
            "terms_accepted": licence.terms_version in licence.accepted_terms}


async def list_datasets(request: Request) -> Response:
    caller = principal(request, EventKind.DATASETS_LIST, *MEMBER)
    runtime = _runtime(request)
    assert caller.member_id is not None
    items = [_licence_summary(runtime, lic) for lic in runtime.snapshot.licences_of(caller.member_id)
             if lic.dataset_id in runtime.snapshot.datasets]
    return json_response({"items": sorted(items, key=lambda i: i["name"])})


async def get_dataset(request: Request) -> Response:
    caller = principal(request, EventKind.DATASET_READ, *MEMBER)
    runtime = _runtime(request)
    dataset, licence = delivery.licensed(runtime.snapshot, caller, path_id(request, "dataset", "dataset"))
    _note_subject(context(request.scope), licence)

    def render() -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """The body around its quotas, and the headers: they depend on this licence and dataset only."""
        columns = [{"name": c.name, "type": c.type, "description": c.description}
                   for c in dataset.columns if c.name in licence.columns]
        head = {**_licence_summary(runtime, licence), "columns": columns,
                "partition_column": dataset.partition_column,
                "accumulation": accumulation(dataset.versions, licence.partition_set)}
        tail = {"versions": [v.to_json(licence.partition_set) for v in dataset.versions]}
        return (orjson.dumps(head)[:-1] + b',"quotas":', b"," + orjson.dumps(tail)[1:],
                [(b"content-type", b"application/json"), *encode_headers(notice_headers(licence))])

    # Rendered once per pair of snapshot objects (an amended licence or a new version is a new object);
    # only the quotas change from one request to the next. The bytes are those of one orjson.dumps.
    head, tail, headers = derived.get(("dataset", licence.id), (licence, dataset), render)
    return RawResponse(head + orjson.dumps(metering.quota_status(licence, runtime.usage)) + tail, headers)


def _note_subject(ctx: RequestContext, licence: Licence) -> None:
    ctx.fields.update(dataset_id=licence.dataset_id, licence_id=licence.id, terms_version=licence.terms_version)


def _format(request: Request) -> Format:
    asked = request.query_params.get("format")
    if asked is None:
        accept = request.headers.get("accept", "")
        asked = "csv" if "text/csv" in accept and "ndjson" not in accept else "ndjson"
    if asked not in ("ndjson", "csv"):
        raise NotAcceptable("format must be ndjson or csv")
    return asked  # type: ignore[return-value]


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    # ASCII digits only ("²".isdigit() is true but int() refuses it), and few of them (int() refuses
    # more than 4300 digits; the bounds here have at most 10).
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(text)


async def records(request: Request) -> Response:
    caller = principal(request, EventKind.RECORDS_DELIVER, *MEMBER)
    runtime = _runtime(request)
    ctx = context(request.scope)
    dataset, licence = delivery.authorise(runtime.snapshot, caller, path_id(request, "dataset", "dataset"),
                                          datetime.now(UTC), terms_url(request))
    _note_subject(ctx, licence)
    fmt = _format(request)
    limit = _int_param(request, "limit", 1, MAX_PAGE)
    cursor_text = request.query_params.get("cursor")
    after: Position | None = None
    if cursor_text is not None:
        scope, after, fmt, limit = _resume(runtime, cursor_text, dataset, licence)
    else:
        since = _int_param(request, "since_version", 0, 2**31 - 1) or 0
        scope = delivery.delivery_scope(dataset, licence, request.query_params.getlist("partition"), since)
    ctx.fields.update(partitions=list(scope.partitions),
                      versions=list(range(scope.since_version + 1, scope.upto_version + 1)))
    head_only = request.method == "HEAD"
    quota = await _admit(runtime, caller, licence, dataset, 0 if head_only else limit)
    headers = {**notice_headers(licence), **quota.headers, "content-type": delivery.MEDIA_TYPES[fmt]}
    if head_only:
        # GET without the content (RFC 9110 §9.3.2): the same checks and headers; nothing is read, and
        # the event records a delivery of no records.
        ctx.fields["records"] = 0
        return Response(b"", headers=headers)
    if quota.warning:
        ctx.fields["detail"] = {"quota_warning": quota.warning}
    if limit is None:
        return ExportResponse(runtime, ctx, scope, fmt, headers, quota)
    head = delivery.csv_header(scope) if fmt == "csv" and after is None else b""
    take = limit if quota.records is None else min(limit, quota.records)
    # Bytes a page may reserve: an estimate of `take` records within what is left, so that concurrent
    # pages of one licence do not each reserve the whole remainder.
    budget = None if quota.bytes is None else min(quota.bytes, _estimated_bytes(dataset, take))
    # Reserve before the first await: concurrent requests of this licence see the reservation.
    runtime.usage.count(licence.id, take, budget or 0)
    try:
        page = await runtime.pages.page(runtime.pool, scope, fmt, after, take)
    finally:
        runtime.usage.count(licence.id, -take, -(budget or 0))
    body, kept, more = page.body, len(page), page.more
    if budget is not None and len(head) + len(body) > budget:
        # Rare: the records are longer than the estimate. Only what fits goes out; the rest follows.
        kept = page.fitting(budget - len(head))
        body, more = page.prefix(kept), True
    size = len(head) + len(body)
    runtime.usage.count(licence.id, kept, size)
    ctx.fields["records"] = kept
    cut = more and (kept < limit) and (budget == quota.bytes or take == quota.records)
    if cut:
        headers["quota-cut"] = "this page was cut at your licence's monthly quota"
    elif more and kept:
        assert runtime.snapshot.secrets is not None
        version, key = runtime.snapshot.secrets.current(CURSOR)
        token = cursors.encode(_cursor_state(scope, fmt, limit, page.position(kept - 1)), version, key)
        headers["link"] = f'<{request.url.replace(query=urllib.parse.urlencode({"cursor": token}))}>; rel="next"'
    return Response(head + body, headers=headers)


async def _admit(runtime: Runtime, caller: Principal, licence: Licence, dataset: Any,
                 want_records: int | None) -> metering.Allowance:
    """Rate limit per credential, then the licence's monthly quotas (leasing quota for `want_records`
    records, or for everything that is left when None: a full export)."""
    wait = runtime.rate_limiter.take(caller.credential.id, licence.requests_per_second, licence.burst)
    if wait:
        metrics.QUOTA_DENIALS.labels("rate").inc()
        raise TooManyRequests(f"this key is limited to {licence.requests_per_second:g} requests per second "
                              f"(burst {licence.burst or 'none'}); retry after the Retry-After seconds",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})
    everything = max(licence.records_per_month or 0, licence.bytes_per_month or 0)
    records = everything if want_records is None else want_records
    byte_count = everything if want_records is None else _estimated_bytes(dataset, want_records)
    quota = await metering.lease_and_decide(runtime.usage, runtime.pool, licence, records, byte_count)
    if quota.exhausted:
        metrics.QUOTA_DENIALS.labels("quota").inc()
        raise TooManyRequests(quota.exhausted, headers=quota.headers)
    return quota


def _estimated_bytes(dataset: Any, records: int) -> int:
    """Bytes `records` records may take: twice the stored average, plus room for a CSV header."""
    stored = sum(v.bytes for v in dataset.versions) / max(1, sum(v.records for v in dataset.versions))
    return int(records * stored * 2) + 4096


def _cursor_state(scope: DeliveryScope, fmt: Format, limit: int, position: Position) -> dict[str, Any]:
    return {"l": str(scope.licence.id), "p": list(scope.partitions), "s": scope.since_version, "u": scope.upto_version,
            "f": fmt, "n": limit, "at": [position.partition, position.version, position.seq]}


def _well_formed(state: dict[str, Any]) -> bool:
    """The shape _cursor_state writes. The MAC proves that a gateway wrote the cursor, not which release
    (nor that the key never leaked): a cursor of another shape is invalid, not a server error."""
    p, s, u, f, n, at = (state.get(k) for k in ("p", "s", "u", "f", "n", "at"))
    return (isinstance(p, list) and all(isinstance(x, str) for x in p) and f in ("ndjson", "csv")
            and all(type(v) is int for v in (s, u, n)) and 0 <= s <= u < 2**31 and 1 <= n <= MAX_PAGE
            and isinstance(at, list) and len(at) == 3 and isinstance(at[0], str)
            and all(type(v) is int for v in at[1:]) and 0 <= at[1] < 2**31 and -1 <= at[2] < 2**63)


def _resume(runtime: Runtime, text: str, dataset: Any, licence: Licence) -> tuple[DeliveryScope, Position, Format, int]:
    assert runtime.snapshot.secrets is not None
    state = cursors.decode(text, runtime.snapshot.secrets.by_purpose[CURSOR])
    # Versions are never removed: a cursor beyond the latest one was not written by this gateway.
    if state.get("l") != str(licence.id) or not _well_formed(state) or state["u"] > dataset.latest_version:
        raise BadRequest("cursor is not valid: use the 'next' link of the previous page unchanged")
    # The scope is re-checked against the licence as it is now: a narrowed licence narrows old cursors too.
    scope = delivery.delivery_scope(dataset, licence, state["p"], state["s"], state["u"])
    partition, version, seq = state["at"]
    return scope, Position(partition, version, seq), state["f"], state["n"]


class ExportResponse(Response):
    """A full export: authorisation event committed before the first byte, completion event after the last.

    It reserves the licence's whole remaining hard quota while it runs, and stops at a record boundary
    when that is reached, saying so in the completion event.
    """

    def __init__(self, runtime: Runtime, ctx: RequestContext, scope: DeliveryScope, fmt: Format,
                 headers: dict[str, str], quota: metering.Allowance) -> None:
        self.runtime, self.ctx, self.scope, self.fmt, self.quota = runtime, ctx, scope, fmt, quota
        self.raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        ctx, writer, quota, book = self.ctx, self.runtime.writer, self.quota, self.runtime.usage
        licence_id = self.scope.licence.id
        book.count(licence_id, quota.records or 0, quota.bytes or 0)
        try:
            await writer.commit(ctx.event(Outcome.ALLOW, 200))
        except BaseException:
            book.count(licence_id, -(quota.records or 0), -(quota.bytes or 0))
            raise
        ctx.audited = True
        digest = hashlib.sha256()
        sent = metering.Tally()
        disconnected = asyncio.Event()
        cut = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        async def write(chunk: bytes, records: int | None = None) -> None:
            nonlocal cut
            if cut or disconnected.is_set():
                return
            part, count = _within(chunk, chunk.count(b"\n") if records is None else records, quota, sent)
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
                # Counted once handed to the server: a client gone midway is metered for what it got.
                digest.update(part)
                sent.records += count
                sent.bytes += len(part)
            cut = len(part) < len(chunk)

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            if self.fmt == "csv":
                await write(delivery.csv_header(self.scope), records=0)
            async with self.runtime.pool.acquire() as conn:
                await delivery.stream(conn, self.scope, self.fmt, write, lambda: cut or disconnected.is_set())
        finally:
            watcher.cancel()
            complete = not cut and not disconnected.is_set()
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            book.count(licence_id, sent.records - (quota.records or 0), sent.bytes - (quota.bytes or 0))
            # The export leased what was left of the quota; return what it did not use.
            await book.give_back(self.runtime.pool, [licence_id])
            end = ctx.event(Outcome.ALLOW, 200)
            end.kind, end.event_id = EventKind.RECORDS_STREAM_END, new_event_id()
            end.records, end.bytes, end.sha256, end.complete = sent.records, sent.bytes, digest.hexdigest(), complete
            end.detail = {"authorised_by": str(ctx.event_id), **({"quota_cut": True} if cut else {}),
                          **(ctx.fields.get("detail") or {})}
            writer.submit(end)


def _within(chunk: bytes, records: int, quota: metering.Allowance, sent: metering.Tally) -> tuple[bytes, int]:
    """The part of `chunk` (whole records) that fits in the hard quotas after what was sent."""
    if quota.records is None and quota.bytes is None:
        return chunk, records
    room_records = records if quota.records is None else min(records, quota.records - sent.records)
    room_bytes = len(chunk) if quota.bytes is None else quota.bytes - sent.bytes
    if room_records >= records and room_bytes >= len(chunk):
        return chunk, records
    end = 0
    kept = 0
    while kept < room_records:
        newline = chunk.find(b"\n", end)
        if newline < 0 or newline + 1 > room_bytes:
            break
        end = newline + 1
        kept += 1
    return chunk[:end], kept


async def usage(request: Request) -> Response:
    """The caller's usage per licence: this month and the past periods asked for (JST months)."""
    caller = principal(request, EventKind.USAGE_READ, *MEMBER)
    runtime = _runtime(request)
    assert caller.member_id is not None
    own = runtime.snapshot.licences_of(caller.member_id)
    try:
        start, end = metering.parse_period(request.query_params.get("from"), request.query_params.get("to"))
    except ValueError as exc:
        raise BadRequest(f"from and to are dates such as 2026-04-01: {exc}") from None
    rows = await metering.usage_report(runtime.pool, None, start, end, licence_ids=[lic.id for lic in own])
    return json_response({"from": start.isoformat(), "to": end.isoformat(), "periods": rows,
                          "current": [{"licence_id": str(lic.id), **metering.quota_status(lic, runtime.usage)}
                                      for lic in own]})


async def accept_terms(request: Request) -> Response:
    caller = principal(request, EventKind.TERMS_ACCEPT, *MEMBER)
    runtime = _runtime(request)
    licence = _own_licence(request, caller.member_id)
    _note_subject(context(request.scope), licence)
    accepted = await licences.accept_terms(runtime.writer, context(request.scope).actor, licence)
    context(request.scope).audited = True
    return json_response(accepted)


async def licence_terms(request: Request) -> Response:
    caller = principal(request, EventKind.TERMS_READ, *MEMBER)
    runtime = _runtime(request)
    licence = _own_licence(request, caller.member_id)
    _note_subject(context(request.scope), licence)
    terms = await licences.current_terms(runtime.pool, licence)
    return json_response(terms)


def _own_licence(request: Request, member_id: Any) -> Licence:
    licence = _runtime(request).snapshot.licences.get(path_id(request, "licence", "licence"))
    if licence is None or licence.member_id != member_id:
        raise NotFound("licence")
    return licence


routes = [
    Route("/v1/datasets", list_datasets, methods=["GET"]),
    Route("/v1/datasets/{dataset}", Direct(get_dataset), methods=["GET"], name="get_dataset"),
    Route("/v1/datasets/{dataset}/records", Direct(records), methods=["GET"], name="records"),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/licences/{licence}/terms", licence_terms, methods=["GET"], name="licence_terms"),
    Route("/v1/licences/{licence}/accept", accept_terms, methods=["POST"]),
]
