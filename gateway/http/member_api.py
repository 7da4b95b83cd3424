"""The member API: a member's licensed datasets and their records, nothing beyond its licences."""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import delivery, licences, metering, terminations
from gateway.audit.events import EventKind
from gateway.datasets import accumulation
from gateway.delivery import MAX_PAGE, RecordsRequest
from gateway.errors import BadRequest, Forbidden, InvalidInput, NotAcceptable, NotFound
from gateway.http.context import context
from gateway.http.endpoints import (
    NO_STORE,
    Direct,
    Field,
    RawResponse,
    StreamingDelivery,
    derived,
    encode_headers,
    fields,
    json_response,
    path_id,
    principal,
    read_json,
    runtime_of,
)
from gateway.licences import Licence
from gateway.records import CHARSETS, Format, TextEncoding
from gateway.runtime import Runtime

MEMBER = ("member", "sharing")

NOTICE_EN = ("Limited provision data under Japan's Unfair Competition Prevention Act art. 2(7), provided to "
             "the licensee only under licence {licence}, terms version {terms}. Use or disclosure beyond the "
             "licence is not permitted.")
NOTICE_JA = ("本データは不正競争防止法第2条第7項の限定提供データであり、ライセンス {licence}（利用規約 第{terms}版）に基づき"
             "ライセンシーに限り提供されます。ライセンスの範囲を超える使用・開示は認められません。")



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
    runtime = runtime_of(request)
    assert caller.member_id is not None
    items = [_licence_summary(runtime, lic) for lic in runtime.snapshot.licences_of(caller.member_id)
             if lic.dataset_id in runtime.snapshot.datasets]
    return json_response({"items": sorted(items, key=lambda i: i["name"])})


async def get_dataset(request: Request) -> Response:
    caller = principal(request, EventKind.DATASET_READ, *MEMBER)
    runtime = runtime_of(request)
    dataset, licence = delivery.licensed(runtime.snapshot, caller, path_id(request, "dataset", "dataset"))
    delivery.note_subject(context(request.scope).facts, licence)

    def render() -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """The body around its quotas, and the headers: they depend on this licence and dataset only."""
        columns = [{"name": c.name, "type": c.type, "description": c.description}
                   for c in dataset.columns if c.name in licence.columns]
        head = {**_licence_summary(runtime, licence), "columns": columns,
                "partition_column": dataset.partition_column,
                "accumulation": accumulation(dataset.versions, licence.partition_filter)}
        tail = {"deliverable_versions": list(dataset.deliverable()),
                "versions": [v.to_json(licence.partition_filter) for v in dataset.versions]}
        return (orjson.dumps(head)[:-1] + b',"quotas":', b"," + orjson.dumps(tail)[1:],
                [(b"content-type", b"application/json"), *encode_headers(notice_headers(licence))])

    # Rendered once per pair of snapshot objects (an amended licence or a new version is a new object);
    # only the quotas change from one request to the next. The bytes are those of one orjson.dumps.
    head, tail, headers = derived.get(("dataset", licence.id), (licence, dataset), render)
    return RawResponse(head + orjson.dumps(metering.quota_status(licence, runtime.usage)) + tail, headers)



def _format(request: Request) -> Format:
    asked = request.query_params.get("format")
    if asked is None:
        accept = request.headers.get("accept", "")
        asked = "csv" if "text/csv" in accept and "ndjson" not in accept else "ndjson"
    if asked not in ("ndjson", "csv"):
        raise NotAcceptable("format must be ndjson or csv")
    return asked  # type: ignore[return-value]


def _encoding(request: Request) -> TextEncoding:
    """How CSV text is encoded: `charset=utf-8|cp932` and `bom=true|false` (a byte order mark before
    the header, for Excel)."""
    charset, bom = request.query_params.get("charset", "utf-8"), request.query_params.get("bom", "false")
    if charset not in CHARSETS:
        raise NotAcceptable("charset must be utf-8 or cp932 (Japanese Excel's encoding)")
    if bom not in ("true", "false"):
        raise BadRequest("bom must be true or false")
    return TextEncoding(charset, bom == "true")  # type: ignore[arg-type]


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
    ctx = context(request.scope)
    asked = RecordsRequest(_format(request), _int_param(request, "limit", 1, MAX_PAGE),
                           request.query_params.get("cursor"),
                           _int_param(request, "since_version", 0, 2**31 - 1) or 0,
                           request.query_params.getlist("partition"), head_only=request.method == "HEAD",
                           version=_int_param(request, "version", 1, 2**31 - 1), encoding=_encoding(request))
    answer = await runtime_of(request).deliveries.records(caller, ctx.facts, path_id(request, "dataset", "dataset"),
                                                       asked)
    headers = {**notice_headers(answer.licence), **answer.headers, "content-type": answer.encoding.media_type(answer.fmt)}
    if answer.stream is not None:
        return StreamingDelivery(ctx, answer.stream, 200, headers)
    if answer.next_cursor is not None:
        # The cursor holds the query; the encoding goes on as asked (the BOM only ever precedes the header).
        kept = {name: request.query_params[name] for name in ("charset", "bom") if name in request.query_params}
        next_page = request.url.replace(query=urllib.parse.urlencode({"cursor": answer.next_cursor, **kept}))
        headers["link"] = f'<{next_page}>; rel="next"'
    return Response(answer.body, headers=headers)


async def usage(request: Request) -> Response:
    """The caller's usage per licence: this month and the past periods asked for (JST months)."""
    caller = principal(request, EventKind.USAGE_READ, *MEMBER)
    runtime = runtime_of(request)
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


ACCEPT_FIELDS = {"terms_version": Field("integer", required=True), "terms_sha256": Field("text", required=True)}


async def accept_terms(request: Request) -> Response:
    caller = principal(request, EventKind.TERMS_ACCEPT, *MEMBER)
    runtime = runtime_of(request)
    ctx = context(request.scope)
    licence = _own_licence(request, caller.member_id, live=True)
    delivery.note_subject(ctx.facts, licence)
    body = await _member_body(request, ACCEPT_FIELDS)
    digest = body["terms_sha256"]
    if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise InvalidInput("terms_sha256 must be the 64 hex digits of the SHA-256 of the terms text you read "
                           f"(the sha256 of GET /v1/licences/{licence.id}/terms)", field="terms_sha256")
    # A refusal's event says what the member named, beside the licence's current version it names anyway.
    ctx.facts.note(terms_version_named=body["terms_version"], terms_sha256_named=digest.lower())
    accepted = await licences.accept_terms(runtime.writer, ctx.actor, licence, body["terms_version"], digest)
    ctx.audited = True
    return json_response(accepted)


async def licence_terms(request: Request) -> Response:
    caller = principal(request, EventKind.TERMS_READ, *MEMBER)
    runtime = runtime_of(request)
    licence = _own_licence(request, caller.member_id, live=True)
    delivery.note_subject(context(request.scope).facts, licence)
    terms = await licences.current_terms(runtime.pool, licence)
    return json_response(terms)


async def termination_notice(request: Request) -> Response:
    """The notice of a terminated licence: still served to its member after the cut-off, like nothing else of it."""
    caller = principal(request, EventKind.TERMINATION_READ, *MEMBER)
    licence = _own_licence(request, caller.member_id, live=False)
    delivery.note_subject(context(request.scope).facts, licence)
    found = await terminations.of_licence(runtime_of(request).pool, licence.member_id, licence.id)
    context(request.scope).facts.note(termination_id=str(found.id), notice_sha256=found.notice_sha256.hex())
    return json_response(found.to_json())


ATTESTATION_FIELDS = {
    "deleted_at": Field("datetime", required=True),
    "deleted": Field("text", required=True, max_length=10_000),
    "statement": Field("text", required=True, max_length=10_000),
    "signatory": Field("text", required=True, max_length=500),
}


async def attest_deletion(request: Request) -> Response:
    caller = principal(request, EventKind.DELETION_ATTEST, *MEMBER)
    ctx = context(request.scope)
    licence = _own_licence(request, caller.member_id, live=False)
    delivery.note_subject(ctx.facts, licence)
    body = await _member_body(request, ATTESTATION_FIELDS)
    found = await terminations.attest(runtime_of(request).writer, ctx.actor, licence.id, body["deleted_at"],
                                      body["deleted"], body["statement"], body["signatory"])
    ctx.audited = True
    return json_response(found.to_json(), status=201)


async def _member_body(request: Request, spec: dict[str, Field]) -> dict[str, Any]:
    """A JSON body of `spec`; none at all is an empty object, whose missing fields are named (422)."""
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return fields({}, spec)
    return fields(await read_json(request, runtime_of(request).config.max_body_bytes), spec)


def _own_licence(request: Request, member_id: Any, *, live: bool) -> Licence:
    """The caller's licence named in the path (404 for any other). A revoked one is found too, for the
    routes that serve what outlives it (its termination notice, the deletion attestation); `live` routes
    refuse it, saying where its notice is."""
    licence = runtime_of(request).snapshot.licences.get(path_id(request, "licence", "licence"))
    if licence is None or licence.member_id != member_id:
        raise NotFound("licence")
    if live and not licence.live:
        raise Forbidden(f"licence revoked{': ' + licence.status_reason if licence.status_reason else ''}; "
                        f"a termination notice, if one was issued, is at GET /v1/licences/{licence.id}/termination",
                        licence_id=str(licence.id))
    return licence


routes = [
    Route("/v1/datasets", list_datasets, methods=["GET"]),
    Route("/v1/datasets/{dataset}", Direct(get_dataset), methods=["GET"], name="get_dataset"),
    Route("/v1/datasets/{dataset}/records", Direct(records), methods=["GET"], name="records"),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/licences/{licence}/terms", licence_terms, methods=["GET"], name="licence_terms"),
    Route("/v1/licences/{licence}/accept", accept_terms, methods=["POST"]),
    Route("/v1/licences/{licence}/termination", termination_notice, methods=["GET"]),
    Route("/v1/licences/{licence}/deletion-attestation", attest_deletion, methods=["POST"]),
]
