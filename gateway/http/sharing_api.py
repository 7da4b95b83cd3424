"""Delta Sharing routes: the open protocol's REST API over a member's licences, and signed file URLs.

Endpoints under /delta-sharing (PROTOCOL.md of delta-io/delta-sharing): shares, schemas, tables,
table version (GET, and the deprecated HEAD), metadata and query; and /delta-sharing/files/<token>,
the Parquet files a query lists. `GET /v1/delta-sharing/profile` gives a member a profile file with a
new, dedicated sharing key. The mapping of licences to shares and tables is in gateway/sharing.py.

Errors under /delta-sharing are the protocol's `{"errorCode", "message"}` (ProtocolErrors, around the
whole app so that authentication's refusals are converted too); they are audited like every other
response, with the same reason. The connector retries 429 and 5xx ten times, so a quota that is used
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
import hashlib
import math
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import credentials, licences, metering, sharing
from gateway.context import Principal, RequestContext, context
from gateway.credentials import Credential
from gateway.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
)
from gateway.events import EventKind, Outcome, new_event_id
from gateway.http import NO_STORE, json_response, principal, read_limited
from gateway.licences import Licence
from gateway.parquet_files import CACHE_FOLDER, FileSet, ParquetCache, SharingNotInstalled
from gateway.routes_member import MEMBER, notice_headers
from gateway.runtime import Runtime
from gateway.sharing import SharedTable, SharingState
from gateway.types import ASGIApp, Message, Receive, Scope, Send
from keys.apikeys import KeyKind

PREFIX = "/delta-sharing"
PROFILE_DAYS = 30
NDJSON = "application/x-ndjson; charset=utf-8"
PARQUET = "application/vnd.apache.parquet"
CAPABILITIES = {"delta-sharing-capabilities": "responseformat=parquet"}
CHUNK_BYTES = 256 * 1024

# The protocol's error codes (those of the reference server, plus QUOTA_EXCEEDED) for our problem types.
_ERROR_CODES = {"bad-request": "INVALID_PARAMETER_VALUE", "unauthenticated": "UNAUTHENTICATED",
                "forbidden": "PERMISSION_DENIED", "not-found": "RESOURCE_DOES_NOT_EXIST",
                "method-not-allowed": "UNSUPPORTED_OPERATION", "not-acceptable": "UNSUPPORTED_OPERATION",
                "conflict": "INVALID_PARAMETER_VALUE", "payload-too-large": "MALFORMED_REQUEST",
                "unsupported-media-type": "MALFORMED_REQUEST", "invalid-input": "INVALID_PARAMETER_VALUE",
                "too-many-requests": "RESOURCE_EXHAUSTED", "unavailable": "TEMPORARILY_UNAVAILABLE",
                "internal-error": "INTERNAL_ERROR"}


def is_sharing_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ProtocolErrors:
    """Pure ASGI: under /delta-sharing, rewrites problem+json bodies as {"errorCode", "message"}.

    It sits outside the audit middleware, so the event is committed (with the reason) before the
    rewritten body leaves; every other path passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_sharing_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = bytearray()

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                if headers.get(b"content-type", b"").startswith(b"application/problem+json"):
                    held = message
                    return
            if held is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            converted = protocol_error(bytes(body))
            kept = [(k, v) for k, v in held.get("headers", ()) if k not in (b"content-type", b"content-length")]
            kept += [(b"content-type", b"application/json"), (b"content-length", str(len(converted)).encode())]
            await send({**held, "headers": kept})
            await send({"type": "http.response.body", "body": converted})

        await self.app(scope, receive, rewrite)


def protocol_error(problem_body: bytes) -> bytes:
    try:
        problem = orjson.loads(problem_body)
    except orjson.JSONDecodeError:
        problem = {}
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    code = problem.get("error_code") or _ERROR_CODES.get(slug, "INTERNAL_ERROR")
    return orjson.dumps({"errorCode": code, "message": problem.get("detail") or problem.get("title") or "error"})


# -- helpers ----------------------------------------------------------------------------------------

def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _state(request: Request) -> SharingState:
    """This app's cache and charged-URL book, made on first use."""
    state: SharingState | None = getattr(request.app.state, "sharing", None)
    if state is None:
        state = SharingState(ParquetCache(_runtime(request).config.home / CACHE_FOLDER))
        request.app.state.sharing = state
    return state


def _base_url(request: Request) -> str:
    """GATEWAY_PUBLIC_URL when set (behind a proxy it must be), else the URL this request came to."""
    return _runtime(request).config.public_url.rstrip("/") or str(request.base_url).rstrip("/")


def _shares(request: Request, caller: Principal) -> dict[str, list[SharedTable]]:
    assert caller.member_id is not None
    return sharing.catalogue(_runtime(request).snapshot, caller.member_id)


def _table(request: Request, kind: EventKind) -> tuple[Principal, SharedTable]:
    caller = principal(request, kind, *MEMBER)
    p = request.path_params
    shared = sharing.find_table(_shares(request, caller), p["share"], p["schema"], p["table"])
    context(request.scope).fields.update(dataset_id=shared.dataset.id, licence_id=shared.licence.id,
                                         terms_version=shared.licence.terms_version)
    return caller, shared


def _terms_urls(request: Request, licence: Licence) -> tuple[str, str]:
    terms = str(request.url_for("licence_terms", licence=str(licence.id)))
    return terms, terms.removesuffix("/terms") + "/accept"


def _authorise(request: Request, licence: Licence) -> None:
    """The licence allows delivery now (the same decision as the member API's), or 403 with its reason."""
    runtime = _runtime(request)
    decision = licences.check(licence, runtime.snapshot.members.get(licence.member_id), datetime.now(UTC))
    if isinstance(decision, licences.Denied):
        message = decision.reason
        if decision.terms_required:
            terms, accept = _terms_urls(request, licence)
            message += f": read them at {terms} and accept them with POST {accept}"
        raise Forbidden(message, licence_id=str(licence.id))


def _credential(snapshot: Any, credential_id: uuid.UUID) -> Credential | None:
    """An API key, or the member credential view of an OAuth client (whose short-lived access tokens
    asked for the URL: the URL stays bound to the client, and dies with it)."""
    found: Credential | None = snapshot.credentials.get(credential_id)
    if found is None:
        client = getattr(snapshot, "oauth_clients", {}).get(credential_id)
        found = client.credential if client is not None else None
    return found


def _rate_limit(runtime: Runtime, credential_id: uuid.UUID, licence: Licence) -> None:
    wait = runtime.rate_limiter.take(credential_id, licence.requests_per_second, licence.burst)
    if wait:
        raise TooManyRequests(f"this key is limited to {licence.requests_per_second:g} requests per second "
                              f"(burst {licence.burst or 'none'}); retry after the Retry-After seconds",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})


async def _quota(runtime: Runtime, licence: Licence, records: int, byte_count: int) -> metering.Allowance:
    """Lease what a delivery needs under the hard quotas; 403 (not 429: the connector would retry it)
    when what is left cannot hold it. Only the units it needs count: more ranges of a file whose
    records were already counted go on after the records quota is used up, if bytes are left."""
    quota = await metering.lease_and_decide(runtime.usage, runtime.pool, licence, records, byte_count)
    for unit, needed, left, limit, what in (
            ("records", records, quota.records, licence.records_per_month, f"this file holds {records} records"),
            ("bytes", byte_count, quota.bytes, licence.bytes_per_month, f"this response is {byte_count} bytes")):
        if needed and left is not None and needed > left:
            reason = (f"monthly {unit} quota of {limit} reached; it resets at the start of next month (JST)"
                      if left == 0 else f"{what} but only {left} are left of your monthly {unit} quota of {limit}")
            raise Forbidden(reason, error_code="QUOTA_EXCEEDED", headers=quota.headers)
    quota.headers.pop("retry-after", None)  # set when one unit is used up; this delivery needs none of it
    return quota


async def _ensure(request: Request, shared_dataset: Any, version: int, partition: str,
                  columns: tuple[Any, ...]) -> FileSet:
    runtime = _runtime(request)
    vendor = runtime.snapshot.vendors.get(shared_dataset.vendor_id)
    metadata = {"lpd.dataset_id": str(shared_dataset.id), "lpd.dataset": shared_dataset.name,
                "lpd.version": str(version), "lpd.partition": partition,
                "lpd.notice": ("Limited provision data (Japan, Unfair Competition Prevention Act art. 2(7)) of "
                               f"{vendor.name if vendor else 'its vendor'}, provided only to licensees under their "
                               "licence; use or disclosure beyond the licence is not permitted.")}
    try:
        return await _state(request).cache.ensure(runtime.pool, shared_dataset.id, version, partition, columns,
                                                  metadata)
    except SharingNotInstalled as exc:
        raise BadRequest(str(exc), error_code="UNSUPPORTED_OPERATION") from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        raise ServiceUnavailable("the table's files cannot be prepared right now; retry shortly",
                                 headers={"retry-after": "2"}) from None


async def _body(request: Request) -> Any:
    """The query body: JSON, or nothing (the protocol makes Content-Type optional and `{}` the default)."""
    limit = _runtime(request).config.max_body_bytes
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
    secrets = _runtime(request).snapshot.secrets
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
        else shared.dataset.latest_version
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
    runtime = _runtime(request)
    ctx = context(request.scope)
    dataset, licence = shared.dataset, shared.licence
    _authorise(request, licence)
    query = sharing.parse_query(await _body(request))
    version = sharing.version_as_of(dataset, query.version, query.timestamp)
    _rate_limit(runtime, caller.credential.id, licence)
    quota = await _quota(runtime, licence, 1, 1)
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
        files = await _ensure(request, dataset, candidate.version, candidate.partition, shape.file_columns)
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
    ctx.fields.update(partitions=sorted({c.partition for c in chosen}),
                      versions=sorted({c.version for c in chosen}),
                      detail={"table_version": version, "files": files_listed, "listed_records": listed_records,
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
    runtime = _runtime(request)
    snapshot = runtime.snapshot
    if not snapshot.ready or snapshot.secrets is None:
        # A revocation may have been missed: fail closed, as authentication does for bearer keys.
        raise ServiceUnavailable("credentials are being reloaded; retry in a second", headers={"retry-after": "1"})
    claims = sharing.open_file_token(snapshot.secrets, request.path_params["token"])
    if claims is None:
        raise NotFound("file")
    try:
        credential_id, licence_id = uuid.UUID(claims["c"]), uuid.UUID(claims["l"])
        member_id, dataset_id = uuid.UUID(claims["m"]), uuid.UUID(claims["d"])
        version, partition, names = int(claims["v"]), str(claims["p"]), list(claims["cols"])
        index, records, size, expires = int(claims["i"]), int(claims["n"]), int(claims["s"]), int(claims["x"])
        token_id = str(claims["t"])
    except (KeyError, TypeError, ValueError):
        raise NotFound("file") from None
    credential = _credential(snapshot, credential_id)
    now = datetime.now(UTC)
    if credential is None or credential.member_id != member_id:
        raise NotFound("file")
    presented = ctx.principal
    if presented is not None and presented.credential.id != credential_id and presented.member_id != member_id:
        # Another party's URL answers exactly like a missing one (no probing); the event names the
        # caller who presented it, the URL and why.
        ctx.reason = "this file URL was issued to another party's credential"
        ctx.fields["detail"] = {"file_url": token_id}
        raise NotFound("file")
    # From here on the request acts as the credential the URL was issued to: the audit event names it.
    ctx.principal = Principal(credential)
    ctx.fields.update(dataset_id=dataset_id, licence_id=licence_id, partitions=[partition], versions=[version],
                      detail={"file_url": token_id, "part": index,
                              "url_expires_at": datetime.fromtimestamp(expires, UTC).isoformat()})
    if presented is not None and presented.credential.id != credential_id:
        raise Forbidden("this file URL was issued to another credential")
    if credential.revoked_at is not None:
        raise Forbidden("the key this file URL was issued to has been revoked")
    if credential.expires_at is not None and now >= credential.expires_at:
        raise Forbidden("the key this file URL was issued to has expired")
    if now.timestamp() >= expires:
        raise Forbidden(f"this file URL expired at {datetime.fromtimestamp(expires, UTC).isoformat()}; "
                        "query the table again for fresh URLs")
    licence = snapshot.licences.get(licence_id)
    dataset = snapshot.datasets.get(dataset_id)
    if licence is None or dataset is None or licence.member_id != member_id or licence.dataset_id != dataset_id:
        raise NotFound("file")
    ctx.fields["terms_version"] = licence.terms_version
    _authorise(request, licence)
    if partition not in licence.partition_set or not set(names) <= set(licence.columns):
        raise Forbidden("your licence no longer covers this file (its partitions or columns changed); "
                        "query the table again")
    columns = tuple(c for c in dataset.columns if c.name in names)
    if [c.name for c in columns] != names:
        raise NotFound("file")
    files = await _ensure(request, dataset, version, partition, columns)
    if index >= len(files.files) or files.files[index].size != size or files.files[index].records != records:
        raise NotFound("file")
    _rate_limit(runtime, credential_id, licence)
    headers = {**notice_headers(licence), "accept-ranges": "bytes", "content-type": PARQUET,
               "etag": f'"{sharing.file_id(files.key, index)}"'}
    if request.method == "HEAD":
        return Response(b"", headers={**headers, "content-length": str(size)})
    try:
        span = sharing.byte_range(request.headers.get("range"), size)
    except sharing.RangeNotSatisfiable:
        ctx.reason = f"range not satisfiable for a file of {size} bytes"
        return Response(b"", status_code=416, headers={**NO_STORE, "content-range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size)
    state = _state(request)
    # Records are counted on the first response of a URL that carries bytes; decided before any await.
    charge = records if state.charge(token_id, expires) else 0
    try:
        quota = await _quota(runtime, licence, charge, end - start)
    except BaseException:
        if charge:
            state.uncharge(token_id)
        raise
    headers.update(quota.headers)
    headers["content-length"] = str(end - start)
    if span is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    ctx.fields["detail"].update(range=f"{start}-{end - 1}", records_charged=charge,
                                **({"quota_warning": quota.warning} if quota.warning else {}))
    return FileDelivery(runtime, state, ctx, files.path(index), start, end, 206 if span is not None else 200,
                        headers, licence.id, token_id, charge)


class FileDelivery(Response):
    """Streams a byte range of a cached file: an authorisation event committed before the first byte,
    a completion event (records, bytes sent, SHA-256, complete or not) after the last, as ExportResponse."""

    def __init__(self, runtime: Runtime, state: SharingState, ctx: RequestContext, path: Any, start: int, end: int,
                 status: int, headers: dict[str, str], licence_id: uuid.UUID, token_id: str, charge: int) -> None:
        self.runtime, self.state, self.ctx, self.path = runtime, state, ctx, path
        self.start, self.end, self.status_code = start, end, status
        self.licence_id, self.token_id, self.charge = licence_id, token_id, charge
        self.raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        ctx, writer, book = self.ctx, self.runtime.writer, self.runtime.usage
        length = self.end - self.start
        # Reserve before the first await: concurrent deliveries of this licence see it.
        book.count(self.licence_id, self.charge, length)
        try:
            await writer.commit(ctx.event(Outcome.ALLOW, self.status_code))
        except BaseException:
            book.count(self.licence_id, -self.charge, -length)
            if self.charge:
                self.state.uncharge(self.token_id)
            raise
        ctx.audited = True
        digest = hashlib.sha256()
        sent = 0
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            handle = await asyncio.to_thread(open, self.path, "rb")
            with handle:
                handle.seek(self.start)
                while sent < length and not disconnected.is_set():
                    chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, length - sent))
                    if not chunk:
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # Counted once handed to the server: a client gone midway is metered for what it got.
                    digest.update(chunk)
                    sent += len(chunk)
        finally:
            watcher.cancel()
            try:
                if not disconnected.is_set():
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                # What was handed over is settled whatever happens to the last message.
                charged = self.charge if sent else 0
                if self.charge and not sent:
                    self.state.uncharge(self.token_id)
                book.count(self.licence_id, charged - self.charge, sent - length)
                end = ctx.event(Outcome.ALLOW, self.status_code)
                end.kind, end.event_id = EventKind.SHARING_FILE_STREAM_END, new_event_id()
                end.records, end.bytes, end.sha256, end.complete = charged, sent, digest.hexdigest(), sent == length
                end.detail = {"authorised_by": str(ctx.event_id), **(ctx.fields.get("detail") or {})}
                writer.submit(end)


# -- the profile ------------------------------------------------------------------------------------

async def profile(request: Request) -> Response:
    """A Delta Sharing profile file with a new sharing key of the caller's member (audited, revocable)."""
    caller = principal(request, EventKind.SHARING_PROFILE_ISSUE, "member")
    runtime = _runtime(request)
    ctx = context(request.scope)
    if caller.credential.id not in runtime.snapshot.credentials:
        # A five-minute OAuth access token must not mint a thirty-day key.
        raise Forbidden("a profile is issued to a member API key; OAuth access tokens cannot create keys")
    now = datetime.now(UTC)
    expires = now + timedelta(days=PROFILE_DAYS)
    # The new key never outlives, nor reaches beyond the networks and certificate of, the key asking.
    if caller.credential.expires_at is not None:
        expires = min(expires, caller.credential.expires_at)
    credential, token = await credentials.issue(
        runtime.writer, ctx.actor, runtime.hasher(), KeyKind.SHARING, caller.vendor_id, caller.member_id,
        label=f"Delta Sharing profile (asked with key {caller.credential.key_id})", expires_at=expires,
        allowed_networks=list(caller.credential.allowed_networks) or None,
        client_cert_sha256=caller.credential.client_cert_sha256)
    ctx.fields["detail"] = {"credential_id": str(credential.id), "key_id": credential.key_id,
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
