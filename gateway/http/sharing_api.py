"""Delta Sharing routes: the open protocol's REST API over a member's licences, and signed file URLs.

Endpoints under /delta-sharing (PROTOCOL.md of delta-io/delta-sharing): shares, schemas, tables,
table version (GET, and the deprecated HEAD), metadata and query; and /delta-sharing/files/<token>,
the Parquet files a query lists. `GET /v1/delta-sharing/profile` gives a member a profile file with a
new, dedicated sharing key. The mapping of licences to shares and tables is in gateway/sharing.py.

Errors under /delta-sharing are the protocol's `{"errorCode", "message"}` (gateway/http/problems.py
renders them, for authentication's refusals too); they are audited like every other response, with
the same reason. The connector retries 429 and 5xx ten times, so a quota that is used
up answers 403 (`QUOTA_EXCEEDED`) here, not the member API's 429; the rate limit still answers 429.

A file download is a delivery (member:sharing-file:deliver, then member:sharing-file:stream-end):
licence re-checked, rate-limited, quota-enforced and metered. Bytes are metered as sent. A file's
records are counted once per file URL, on the first response that carries any of its bytes (a
Parquet reader's first read is the footer; a full GET is one response): from then on the member
holds the file, whichever parts it reads, and later range requests under the same URL count bytes
only. A response that sent nothing is not charged. Each query issues new URLs, so reading the same
file through a new query counts its records again, as a new page of the member API would.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import credentials, delivery, sharing, times
from gateway.audit.events import EventKind
from gateway.credentials import Principal
from gateway.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
)
from gateway.http.context import context
from gateway.http.endpoints import (
    NO_STORE,
    StreamingDelivery,
    json_response,
    principal,
    read_limited,
    runtime_of,
)
from gateway.http.member_api import MEMBER, notice_headers
from gateway.http.problems import SHARING_PREFIX
from gateway.sharing import SharedTable
from keys.apikeys import KeyKind

PREFIX = SHARING_PREFIX
PROFILE_DAYS = 30
NDJSON = "application/x-ndjson; charset=utf-8"
PARQUET = "application/vnd.apache.parquet"
CAPABILITIES = {"delta-sharing-capabilities": "responseformat=parquet"}

# -- helpers ----------------------------------------------------------------------------------------


def _base_url(request: Request) -> str:
    """GATEWAY_PUBLIC_URL when set (behind a proxy it must be), else the URL this request came to."""
    return runtime_of(request).config.public_url.rstrip("/") or str(request.base_url).rstrip("/")


def _shares(request: Request, caller: Principal) -> dict[str, list[SharedTable]]:
    assert caller.member_id is not None
    return sharing.catalogue(runtime_of(request).snapshot, caller.member_id)


def _table(request: Request, kind: EventKind) -> tuple[Principal, SharedTable]:
    caller = principal(request, kind, *MEMBER)
    p = request.path_params
    shared = sharing.find_table(_shares(request, caller), p["share"], p["schema"], p["table"])
    delivery.note_subject(context(request.scope).facts, shared.licence)
    return caller, shared


async def _body(request: Request) -> Any:
    """The query body: JSON, or nothing (the protocol makes Content-Type optional and `{}` the default)."""
    limit = runtime_of(request).config.max_body_bytes
    raw = await read_limited(request, limit, lambda: PayloadTooLarge(f"JSON bodies are limited to {limit} bytes"))
    raw = raw.strip()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON", error_code="MALFORMED_REQUEST") from None


def _ndjson(lines: list[dict[str, Any]], headers: dict[str, str]) -> Response:
    return Response(b"".join(orjson.dumps(line) + b"\n" for line in lines), media_type=NDJSON,
                    headers={**NO_STORE, **headers})


# -- the catalogue ----------------------------------------------------------------------------------

async def list_shares(request: Request) -> Response:
    caller = principal(request, EventKind.SHARING_LIST, *MEMBER)
    shares = _shares(request, caller)
    items = [{"name": name, "id": str(tables[0].share_id)} for name, tables in shares.items()]
    q = request.query_params
    return json_response(sharing.page(items, "name", "shares", q.get("maxResults"), q.get("pageToken"),
                                      _secrets(request)))


def _secrets(request: Request) -> Any:
    secrets = runtime_of(request).snapshot.secrets
    assert secrets is not None
    return secrets


async def get_share(request: Request) -> Response:
    caller = principal(request, EventKind.SHARING_LIST, *MEMBER)
    tables = sharing.find_share(_shares(request, caller), request.path_params["share"])
    return json_response({"share": {"name": tables[0].share, "id": str(tables[0].share_id)}})


async def list_schemas(request: Request) -> Response:
    caller = principal(request, EventKind.SHARING_LIST, *MEMBER)
    tables = sharing.find_share(_shares(request, caller), request.path_params["share"])
    q = request.query_params
    return json_response(sharing.page([{"name": sharing.SCHEMA, "share": tables[0].share}], "name",
                                      f"schemas:{tables[0].share}", q.get("maxResults"), q.get("pageToken"),
                                      _secrets(request)))


async def list_tables(request: Request) -> Response:
    caller = principal(request, EventKind.SHARING_LIST, *MEMBER)
    p = request.path_params
    tables = sharing.find_schema(_shares(request, caller), p["share"], p["schema"])
    q = request.query_params
    return json_response(sharing.page([t.to_json() for t in tables], "name", f"tables:{tables[0].share}",
                                      q.get("maxResults"), q.get("pageToken"), _secrets(request)))


async def list_all_tables(request: Request) -> Response:
    caller = principal(request, EventKind.SHARING_LIST, *MEMBER)
    tables = sharing.find_share(_shares(request, caller), request.path_params["share"])
    q = request.query_params
    return json_response(sharing.page([t.to_json() for t in tables], "name", f"all-tables:{tables[0].share}",
                                      q.get("maxResults"), q.get("pageToken"), _secrets(request)))


# -- table version, metadata, query -----------------------------------------------------------------

async def table_version(request: Request) -> Response:
    _, shared = _table(request, EventKind.SHARING_TABLE_READ)
    starting = request.query_params.get("startingTimestamp")
    # Only an absent parameter means "the latest": `startingTimestamp=` (empty) is a malformed timestamp.
    version = sharing.version_starting(shared.dataset, starting) if starting is not None \
        else shared.dataset.current_version
    return Response(b"", headers={**NO_STORE, "delta-table-version": str(version)})


async def table_metadata(request: Request) -> Response:
    _, shared = _table(request, EventKind.SHARING_TABLE_READ)
    q = request.query_params
    version = sharing.version_as_of(shared.dataset, q.get("version"), q.get("timestamp"))
    shape = sharing.layout(shared.dataset, shared.licence)
    asked = q.get("version") is not None or q.get("timestamp") is not None
    lines = [sharing.PROTOCOL_ACTION, sharing.metadata_action(shared.dataset, shape, version if asked else None)]
    return _ndjson(lines, {**notice_headers(shared.licence), **CAPABILITIES, "delta-table-version": str(version)})


async def table_query(request: Request) -> Response:
    caller, shared = _table(request, EventKind.SHARING_QUERY)
    runtime = runtime_of(request)
    ctx = context(request.scope)
    dataset, licence = shared.dataset, shared.licence
    delivery.authorise(runtime.snapshot, licence, times.now())
    query = sharing.parse_query(await _body(request))
    version = sharing.version_as_of(dataset, query.version, query.timestamp)
    runtime.deliveries.rate_limit(caller.credential.id, licence)
    quota = await runtime.deliveries.sharing_lease(licence, 1, 1)
    shape = sharing.layout(dataset, licence)
    chosen = sharing.candidates(dataset, licence, shape, query, version)
    assert runtime.snapshot.secrets is not None
    expires = sharing.expiry()
    base = _base_url(request)
    historical = query.version is not None or query.timestamp is not None
    published = {v.version: v.published_at for v in dataset.versions}
    lines: list[dict[str, Any]] = [sharing.PROTOCOL_ACTION,
                                   sharing.metadata_action(dataset, shape, version if historical else None)]
    listed_records = 0
    for candidate in chosen:
        if query.limit_hint is not None and listed_records >= query.limit_hint:
            break
        files = await runtime.deliveries.parquet_files(dataset, candidate.version, candidate.partition,
                                                       shape.file_columns)
        for part in files.files:
            if query.limit_hint is not None and listed_records >= query.limit_hint:
                break
            token = sharing.sign_file_token(runtime.snapshot.secrets, sharing.file_claims(
                caller.credential.id, licence, candidate, shape.file_columns, part.index, part.records, part.size,
                expires))
            action: dict[str, Any] = {
                "url": f"{base}{PREFIX}/files/{token}", "id": sharing.file_id(files.key, part.index),
                "partitionValues": ({dataset.partition_column: sharing.partition_value(dataset, candidate.partition)}
                                    if shape.partition_columns else {}),
                "size": part.size, "stats": orjson.dumps({"numRecords": part.records}).decode(),
                "expirationTimestamp": expires * 1000}
            if historical:
                action["version"] = candidate.version
                action["timestamp"] = int(published[candidate.version].timestamp() * 1000)
            lines.append({"file": action})
            listed_records += part.records
    files_listed = len(lines) - 2
    ctx.facts.partitions = sorted({c.partition for c in chosen})
    ctx.facts.versions = sorted({c.version for c in chosen})
    ctx.facts.note(**{"table_version": version, "files": files_listed, "listed_records": listed_records,
                              "url_expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
                              **({"quota_warning": quota.warning} if quota.warning else {})})
    return _ndjson(lines, {**notice_headers(licence), **quota.headers, **CAPABILITIES,
                           "delta-table-version": str(version)})


async def table_changes(request: Request) -> Response:
    _table(request, EventKind.SHARING_TABLE_READ)
    raise BadRequest("the change data feed is not shared by this gateway; read snapshots with query",
                     error_code="UNSUPPORTED_OPERATION")


# -- files ------------------------------------------------------------------------------------------

async def file(request: Request) -> Response:
    """A Parquet file a query listed: the URL authorises itself (see gateway/sharing.py)."""
    ctx = context(request.scope)
    ctx.kind = EventKind.SHARING_FILE_DELIVER

    def act_as(credential: Principal) -> None:
        ctx.principal = credential

    try:
        answer = await runtime_of(request).deliveries.sharing_file(
            ctx.principal, ctx.facts, request.path_params["token"], act_as=act_as,
            head=request.method == "HEAD", range_header=request.headers.get("range"))
    except sharing.RangeNotSatisfiable as exc:
        ctx.reason = f"range not satisfiable for a file of {exc.size} bytes"
        return Response(b"", status_code=416, headers={**NO_STORE, "content-range": f"bytes */{exc.size}"})
    headers = {**notice_headers(answer.licence), "accept-ranges": "bytes", "content-type": PARQUET,
               "etag": f'"{answer.file_id}"', **answer.headers}
    if answer.stream is None:
        return Response(b"", headers={**headers, "content-length": str(answer.size)})
    start, end = answer.span or (0, answer.size)
    headers["content-length"] = str(end - start)
    if answer.span is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{answer.size}"
    return StreamingDelivery(ctx, answer.stream, 206 if answer.span is not None else 200, headers)


# -- the profile ------------------------------------------------------------------------------------

async def profile(request: Request) -> Response:
    """A Delta Sharing profile file with a new sharing key of the caller's member (audited, revocable)."""
    caller = principal(request, EventKind.SHARING_PROFILE_ISSUE, "member")
    runtime = runtime_of(request)
    ctx = context(request.scope)
    if caller.credential.id not in runtime.snapshot.credentials:
        # A five-minute OAuth access token must not mint a thirty-day key.
        raise Forbidden("a profile is issued to a member API key; OAuth access tokens cannot create keys")
    now = times.now()
    expires = now + timedelta(days=PROFILE_DAYS)
    # The new key never outlives, nor reaches beyond the networks and certificate of, the key asking.
    if caller.credential.expires_at is not None:
        expires = min(expires, caller.credential.expires_at)
    credential, token = await credentials.issue(
        runtime.writer, ctx.actor, runtime.hasher(), KeyKind.SHARING, caller.vendor_id, caller.member_id,
        label=f"Delta Sharing profile (asked with key {caller.credential.key_id})", expires_at=expires,
        allowed_networks=list(caller.credential.allowed_networks) or None,
        client_cert_sha256=caller.credential.client_cert_sha256)
    ctx.facts.detail = {"credential_id": str(credential.id), "key_id": credential.key_id,
                            "expires_at": expires.isoformat()}
    # Hand out the key once this instance accepts it (LISTEN/NOTIFY brings it within milliseconds).
    deadline = asyncio.get_running_loop().time() + 2.0
    while runtime.snapshot.credential(credential.key_id) is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    body = {"shareCredentialsVersion": 1, "endpoint": _base_url(request) + PREFIX, "bearerToken": token,
            "expirationTime": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
    filename = urllib.parse.quote("lpd-gateway.share")
    return json_response(body, headers={"content-disposition": f'attachment; filename="{filename}"'})


_TABLE = PREFIX + "/shares/{share}/schemas/{schema}/tables/{table}"

routes = [
    Route(PREFIX + "/shares", list_shares, methods=["GET"]),
    Route(PREFIX + "/shares/{share}", get_share, methods=["GET"]),
    Route(PREFIX + "/shares/{share}/schemas", list_schemas, methods=["GET"]),
    Route(PREFIX + "/shares/{share}/schemas/{schema}/tables", list_tables, methods=["GET"]),
    Route(PREFIX + "/shares/{share}/all-tables", list_all_tables, methods=["GET"]),
    Route(_TABLE, table_version, methods=["HEAD"]),  # the deprecated form of the version API
    Route(_TABLE + "/version", table_version, methods=["GET", "HEAD"]),
    Route(_TABLE + "/metadata", table_metadata, methods=["GET"]),
    Route(_TABLE + "/query", table_query, methods=["POST"]),
    Route(_TABLE + "/changes", table_changes, methods=["GET"]),
    Route(PREFIX + "/files/{token}", file, methods=["GET", "HEAD"]),
    Route("/v1/delta-sharing/profile", profile, methods=["GET"]),
]
