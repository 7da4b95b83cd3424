"""The vendor admin API under /v1/admin: thin routes over the domain modules the CLI uses too.

A vendor admin sees and touches only its own vendor's objects: every lookup is by (vendor, id), so
another vendor's id is answered exactly like an id that does not exist (404).

Every event of these routes names the key that acted by its id and its label (detail.actor_label): a
vendor may hold several admin keys, and the evidence says which one did what.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import (
    access_tokens,
    credentials,
    datasets,
    licences,
    members,
    metering,
    oauth,
    oauth_clients,
    terminations,
)
from gateway.actors import Actor
from gateway.audit.events import EventKind
from gateway.credentials import Principal
from gateway.errors import BadRequest, NotFound, UnsupportedMediaType
from gateway.http.context import context
from gateway.http.endpoints import (
    Field,
    fields,
    json_response,
    path_id,
    principal,
    read_json,
    runtime_of,
    vendor_of,
)
from gateway.http.idempotency import idempotent
from gateway.upload_bodies import PublishFormat

ADMIN = ("vendor",)
READERS = ("vendor", "compliance")

UPLOAD_TYPES: dict[str, PublishFormat] = {
    "text/csv": "csv", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
    "application/vnd.apache.parquet": "parquet"}
# Content-Encoding values of a publish: whether the body is gzip (identity is the absence of a coding).
UPLOAD_CODINGS = {"": False, "identity": False, "gzip": True, "x-gzip": True}

DATASET_FIELDS = {
    "name": Field("text", required=True, max_length=63),
    "description": Field("text", max_length=2000),
    "columns": Field("json", required=True),
    "partition_column": Field("text", required=True, max_length=63),
}
MEMBER_FIELDS = {"name": Field("text", required=True, max_length=200)}
MEMBER_AMEND_FIELDS = {
    "name": Field("text", max_length=200),
    "contact_name": Field("text", nullable=True, max_length=200),
    "contact_email": Field("text", nullable=True, max_length=254),
}
DATASET_AMEND_FIELDS = {"name": Field("text", max_length=63), "description": Field("text", max_length=2000),
                        "columns": Field("json")}
LICENCE_VALUE_FIELDS = {
    "partitions": Field("text_list"),
    "columns": Field("text_list"),
    "valid_from": Field("datetime"),
    "valid_until": Field("datetime", nullable=True),
    "records_per_month": Field("integer", nullable=True),
    "records_quota_hard": Field("boolean"),
    "bytes_per_month": Field("integer", nullable=True),
    "bytes_quota_hard": Field("boolean"),
    "requests_per_second": Field("number", nullable=True),
    "burst": Field("integer", nullable=True),
}
GRANT_FIELDS = {
    "member_id": Field("uuid", required=True),
    "dataset_id": Field("uuid", required=True),
    "terms_text": Field("text", required=True, max_length=100_000),
    **LICENCE_VALUE_FIELDS,
    "partitions": Field("text_list", required=True),
    "columns": Field("text_list", required=True),
}
AMEND_FIELDS = {"terms_text": Field("text", max_length=100_000), **LICENCE_VALUE_FIELDS}
STATUS_FIELDS = {"reason": Field("text", max_length=1000)}
WITHDRAW_FIELDS = {"reason": Field("text", required=True, max_length=datasets.MAX_REASON_CHARS)}
# Query parameters of a publish: how the version joins the dataset, and whether a duplicate is meant.
PUBLISH_QUERY = {"mode": datasets.PUBLISH_MODES, "duplicate": ("allow",)}
TERMINATE_FIELDS = {
    "reason": Field("text", required=True, max_length=2000),
    "grounds": Field("text", max_length=20),
    "attestation_due": Field("text", max_length=10),  # a JST day, YYYY-MM-DD (terminations.parse_due)
}
KEY_FIELDS = {
    "kind": Field("text", required=True),
    "member_id": Field("uuid"),
    "label": Field("text", max_length=200),
    "expires_at": Field("datetime", nullable=True),
    "allowed_networks": Field("text_list"),
    "client_cert_sha256": Field("text", nullable=True, max_length=95),  # 64 hex digits, or with colons
}
ROTATE_FIELDS = {"overlap_seconds": Field("integer")}
OAUTH_CLIENT_FIELDS = {"member_id": Field("uuid", required=True), "label": Field("text", max_length=200)}



async def _body(request: Request, spec: dict[str, Field]) -> dict[str, Any]:
    return fields(await read_json(request, runtime_of(request).config.max_body_bytes), spec)


async def _no_body(request: Request) -> None:
    """For routes that take no body: none, or an empty JSON object. Fields are refused, not ignored
    (no mass assignment): a client sending {"status": "active"} to a revoke must not think it set it."""
    await _optional_body(request, {})


async def _optional_body(request: Request, spec: dict[str, Field]) -> dict[str, Any]:
    """For routes whose fields are all optional: no body at all is an empty object."""
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return {}
    return await _body(request, spec)


def _caller(request: Request, kind: EventKind, *roles: str) -> Principal:
    """`principal()`, and the label of the key presented in the request's event, whatever its outcome
    (a refusal too: it names the key that tried)."""
    ctx = context(request.scope)
    if ctx.principal is not None:
        ctx.facts.note(actor_label=ctx.principal.credential.label)
    return principal(request, kind, *roles)


def _actor(request: Request) -> Actor:
    """Who acts, for the events the domain commits with a change: the request's actor with its key's label."""
    ctx = context(request.scope)
    assert ctx.principal is not None  # _caller() came first
    return dataclasses.replace(ctx.actor, credential_label=ctx.principal.credential.label)


def _changed(request: Request) -> None:
    """The domain function committed this request's event with the change itself."""
    context(request.scope).audited = True


# -- datasets -------------------------------------------------------------------------------------

async def list_datasets(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    found = await datasets.list_for_vendor(runtime_of(request).pool, vendor_of(caller))
    return json_response({"items": [d.to_json() for d in found]})


async def create_dataset(request: Request) -> Response:
    caller = _caller(request, EventKind.DATASET_CREATE, *ADMIN)
    body = await _body(request, DATASET_FIELDS)
    runtime = runtime_of(request)
    dataset = await datasets.create(runtime.writer, _actor(request), vendor_of(caller), body["name"],
                                    body.get("description", ""), body["columns"], body["partition_column"])
    _changed(request)
    return json_response(dataset.to_json(), status=201)


async def get_dataset(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    dataset = await datasets.get(runtime_of(request).pool, vendor_of(caller), path_id(request, "dataset", "dataset"))
    return json_response(dataset.to_json())


async def amend_dataset(request: Request) -> Response:
    caller = _caller(request, EventKind.DATASET_AMEND, *ADMIN)
    body = await _body(request, DATASET_AMEND_FIELDS)
    dataset = await datasets.amend(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                   path_id(request, "dataset", "dataset"), body)
    _changed(request)
    return json_response(dataset.to_json())


async def publish_version(request: Request) -> Response:
    caller = _caller(request, EventKind.VERSION_PUBLISH, *ADMIN)
    runtime = runtime_of(request)
    dataset = await datasets.get(runtime.pool, vendor_of(caller), path_id(request, "dataset", "dataset"))
    media_type, charset = _media_type(request.headers.get("content-type", ""))
    fmt = UPLOAD_TYPES.get(media_type)
    if fmt is None:
        raise UnsupportedMediaType("upload records as 'Content-Type: text/csv' (with a header row), "
                                   "'application/x-ndjson' or 'application/vnd.apache.parquet'")
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in UPLOAD_CODINGS:
        raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported; send the body as it is or "
                                   "compressed with 'Content-Encoding: gzip'")
    query = request.query_params
    for name, value in query.multi_items():
        if name not in PUBLISH_QUERY or value not in PUBLISH_QUERY[name] or len(query.getlist(name)) > 1:
            raise BadRequest("a publish takes mode=append (the default) or mode=replace, and duplicate=allow to "
                             f"publish content identical to a live version; {name}={value!r} is none of these")
    version = await datasets.publish(runtime.writer, _actor(request), dataset, request.stream(), fmt,
                                     max_bytes=runtime.config.max_upload_bytes, charset=charset,
                                     gzip=UPLOAD_CODINGS[coding],
                                     mode="replace" if query.get("mode") == "replace" else "append",
                                     allow_duplicate=query.get("duplicate") == "allow")
    _changed(request)
    return json_response(version.to_json(), status=201)


def _media_type(header: str) -> tuple[str, str | None]:
    """A Content-Type's media type, lowercase, and its charset parameter (None when it has none)."""
    media_type, *parameters = header.split(";")
    charset = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
    return media_type.strip().lower(), charset


async def withdraw_version(request: Request) -> Response:
    caller = _caller(request, EventKind.VERSION_WITHDRAW, *ADMIN)
    runtime = runtime_of(request)
    dataset = await datasets.get(runtime.pool, vendor_of(caller), path_id(request, "dataset", "dataset"))
    text = request.path_params["version"]
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and 0 < int(text) < 2**31):  # an integer column
        raise NotFound("version")
    body = await _body(request, WITHDRAW_FIELDS)
    version = await datasets.withdraw(runtime.writer, _actor(request), dataset, int(text), body["reason"])
    _changed(request)
    return json_response(version.to_json())


# -- members --------------------------------------------------------------------------------------

async def list_members(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    found = await members.list_for_vendor(runtime_of(request).pool, vendor_of(caller))
    return json_response({"items": [m.to_json() for m in found]})


async def create_member(request: Request) -> Response:
    caller = _caller(request, EventKind.MEMBER_CREATE, *ADMIN)
    body = await _body(request, MEMBER_FIELDS)
    member = await members.create(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                  body["name"])
    _changed(request)
    return json_response(member.to_json(), status=201)


async def get_member(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    member = await members.get(runtime_of(request).pool, vendor_of(caller), path_id(request, "member", "member"))
    return json_response(member.to_json())


async def amend_member(request: Request) -> Response:
    caller = _caller(request, EventKind.MEMBER_AMEND, *ADMIN)
    body = await _body(request, MEMBER_AMEND_FIELDS)
    member = await members.amend(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                 path_id(request, "member", "member"), body)
    _changed(request)
    return json_response(member.to_json())


def _member_status_route(action: str, kind: EventKind) -> Any:
    async def change_status(request: Request) -> Response:
        caller = _caller(request, kind, *ADMIN)
        body = await _optional_body(request, STATUS_FIELDS)
        member = await members.set_status(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                          path_id(request, "member", "member"), action, body.get("reason", ""))
        _changed(request)
        return json_response(member.to_json())

    change_status.__name__ = f"{action}_member"
    return change_status


# -- licences -------------------------------------------------------------------------------------

async def list_licences(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    found = await licences.list_for_vendor(runtime_of(request).pool, vendor_of(caller))
    return json_response({"items": [lic.to_json() for lic in found]})


async def grant_licence(request: Request) -> Response:
    caller = _caller(request, EventKind.LICENCE_GRANT, *ADMIN)
    body = await _body(request, GRANT_FIELDS)
    member_id, dataset_id, terms = body.pop("member_id"), body.pop("dataset_id"), body.pop("terms_text")
    licence = await licences.grant(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                   member_id, dataset_id, terms, body)
    _changed(request)
    return json_response(licence.to_json(), status=201)


async def get_licence(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    licence = await licences.get(runtime_of(request).pool, vendor_of(caller), path_id(request, "licence", "licence"))
    return json_response(licence.to_json())


async def licence_terms(request: Request) -> Response:
    """Every terms version of the licence, its text and who accepted it when (`?version=N`: that one)."""
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    text = request.query_params.get("version")
    if text is not None and not (text.isascii() and text.isdigit() and 0 < len(text) < 10 and int(text) > 0):
        raise BadRequest("version must be a terms version number such as 1")
    terms = await licences.terms_history(runtime_of(request).pool, vendor_of(caller),
                                         path_id(request, "licence", "licence"), int(text) if text else None)
    return json_response(terms)


async def amend_licence(request: Request) -> Response:
    caller = _caller(request, EventKind.LICENCE_AMEND, *ADMIN)
    body = await _body(request, AMEND_FIELDS)
    terms = body.pop("terms_text", None)
    licence = await licences.amend(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                   path_id(request, "licence", "licence"), body, terms)
    _changed(request)
    return json_response(licence.to_json())


def _status_route(action: str, kind: EventKind) -> Any:
    async def change_status(request: Request) -> Response:
        caller = _caller(request, kind, *ADMIN)
        body = await _body(request, STATUS_FIELDS)
        licence = await licences.set_status(runtime_of(request).writer, _actor(request),
                                            vendor_of(caller), path_id(request, "licence", "licence"), action,
                                            body.get("reason", ""))
        _changed(request)
        return json_response(licence.to_json())

    change_status.__name__ = f"{action}_licence"
    return change_status


async def terminate_licence(request: Request) -> Response:
    """Revoke the licence and issue its signed termination notice (gateway/terminations.py)."""
    caller = _caller(request, EventKind.LICENCE_TERMINATE, *ADMIN)
    body = await _body(request, TERMINATE_FIELDS)
    termination = await terminations.terminate(
        runtime_of(request).writer, _actor(request), vendor_of(caller), path_id(request, "licence", "licence"),
        body["reason"], body.get("grounds", "other"), terminations.parse_due(body.get("attestation_due")))
    _changed(request)
    return json_response(termination.to_json(), status=201)


async def list_terminations(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    outstanding = request.query_params.get("outstanding", "false")
    if outstanding not in ("true", "false"):
        raise BadRequest("outstanding must be true or false")
    found = await terminations.list_for_vendor(runtime_of(request).pool, vendor_of(caller),
                                               outstanding=outstanding == "true")
    return json_response({"items": [t.to_json() for t in found]})


async def get_termination(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    found = await terminations.get(runtime_of(request).pool, vendor_of(caller),
                                   path_id(request, "termination", "termination"))
    return json_response(found.to_json())


# -- keys -----------------------------------------------------------------------------------------

async def list_keys(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *ADMIN)
    found = await credentials.list_for_vendor(runtime_of(request).pool, vendor_of(caller))
    return json_response({"items": [c.to_json() for c in found]})


async def issue_key(request: Request) -> Response:
    caller = _caller(request, EventKind.KEY_ISSUE, *ADMIN)
    body = await _body(request, KEY_FIELDS)
    member_id, label = body.get("member_id"), body.get("label", "")
    kind = credentials.issuable(body["kind"], member_id is not None, label)
    runtime = runtime_of(request)
    credential, token = await credentials.issue(
        runtime.writer, _actor(request), runtime.hasher(),
        kind, vendor_of(caller), member_id, label=label, expires_at=body.get("expires_at"),
        allowed_networks=credentials.parse_networks(body.get("allowed_networks", [])),
        client_cert_sha256=body.get("client_cert_sha256"))
    _changed(request)
    return json_response({**credential.to_json(), "api_key": token}, status=201)


async def revoke_key(request: Request) -> Response:
    caller = _caller(request, EventKind.KEY_REVOKE, *ADMIN)
    await _no_body(request)
    credential = await credentials.revoke(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                          path_id(request, "key", "key"))
    _changed(request)
    return json_response(credential.to_json())


async def rotate_key(request: Request) -> Response:
    """A new key in place of the old, which keeps working for the overlap (credentials.rotate)."""
    caller = _caller(request, EventKind.KEY_ISSUE, *ADMIN)
    body = await _optional_body(request, ROTATE_FIELDS)
    runtime = runtime_of(request)
    old, new, token = await credentials.rotate(
        runtime.writer, _actor(request), runtime.hasher(), vendor_of(caller), path_id(request, "key", "key"),
        body.get("overlap_seconds", credentials.DEFAULT_OVERLAP_SECONDS))
    _changed(request)
    return json_response({**new.to_json(), "api_key": token, "replaces": old.to_json()}, status=201)


# -- OAuth clients --------------------------------------------------------------------------------

async def list_oauth_clients(request: Request) -> Response:
    caller = _caller(request, EventKind.ADMIN_READ, *ADMIN)
    try:
        member_id = uuid.UUID(request.query_params["member"]) if "member" in request.query_params else None
    except ValueError:
        raise BadRequest("member must be a member id") from None
    found = await oauth_clients.list_for_vendor(runtime_of(request).pool, vendor_of(caller), member_id)
    return json_response({"items": [c.to_json() for c in found]})


async def create_oauth_client(request: Request) -> Response:
    caller = _caller(request, EventKind.OAUTH_CLIENT_CREATE, *ADMIN)
    body = await _body(request, OAUTH_CLIENT_FIELDS)
    runtime = runtime_of(request)
    client, secret = await oauth_clients.create(runtime.writer, _actor(request), runtime.hasher(),
                                                vendor_of(caller), body["member_id"], label=body.get("label", ""))
    _changed(request)
    return json_response({**client.to_json(), "client_secret": secret,
                          "token_endpoint": access_tokens.issuer(runtime.config) + oauth.TOKEN_PATH}, status=201)


async def revoke_oauth_client(request: Request) -> Response:
    caller = _caller(request, EventKind.OAUTH_CLIENT_REVOKE, *ADMIN)
    await _no_body(request)
    client = await oauth_clients.revoke(runtime_of(request).writer, _actor(request), vendor_of(caller),
                                        path_id(request, "client", "OAuth client"))
    _changed(request)
    return json_response(client.to_json())


async def usage_report(request: Request) -> Response:
    """Usage by member, dataset and period, for vendor admins and compliance officers."""
    caller = _caller(request, EventKind.ADMIN_READ, *READERS)
    query = request.query_params
    try:
        start, end = metering.parse_period(query.get("from"), query.get("to"))
        member_id = uuid.UUID(query["member"]) if "member" in query else None
        dataset_id = uuid.UUID(query["dataset"]) if "dataset" in query else None
    except ValueError as exc:
        raise BadRequest(f"from/to are dates such as 2026-04-01, member/dataset are ids: {exc}") from None
    by = query.get("by", "month")
    if by not in ("day", "month"):
        raise BadRequest("by must be day or month")
    rows = await metering.usage_report(runtime_of(request).pool, vendor_of(caller), start, end, member_id=member_id,
                                       dataset_id=dataset_id, by=by)
    return json_response({"from": start.isoformat(), "to": end.isoformat(), "by": by, "items": rows})


_routes = [
    Route("/v1/admin/usage", usage_report, methods=["GET"]),
    Route("/v1/admin/datasets", list_datasets, methods=["GET"]),
    Route("/v1/admin/datasets", create_dataset, methods=["POST"]),
    Route("/v1/admin/datasets/{dataset}", get_dataset, methods=["GET"]),
    Route("/v1/admin/datasets/{dataset}", amend_dataset, methods=["PATCH"]),
    Route("/v1/admin/datasets/{dataset}/versions", publish_version, methods=["POST"]),
    Route("/v1/admin/datasets/{dataset}/versions/{version}/withdraw", withdraw_version, methods=["POST"]),
    Route("/v1/admin/members", list_members, methods=["GET"]),
    Route("/v1/admin/members", create_member, methods=["POST"]),
    Route("/v1/admin/members/{member}", get_member, methods=["GET"]),
    Route("/v1/admin/members/{member}", amend_member, methods=["PATCH"]),
    Route("/v1/admin/members/{member}/suspend", _member_status_route("suspend", EventKind.MEMBER_SUSPEND),
          methods=["POST"]),
    Route("/v1/admin/members/{member}/resume", _member_status_route("resume", EventKind.MEMBER_RESUME),
          methods=["POST"]),
    Route("/v1/admin/members/{member}/revoke", _member_status_route("revoke", EventKind.MEMBER_REVOKE),
          methods=["POST"]),
    Route("/v1/admin/licences", list_licences, methods=["GET"]),
    Route("/v1/admin/licences", grant_licence, methods=["POST"]),
    Route("/v1/admin/licences/{licence}", get_licence, methods=["GET"]),
    Route("/v1/admin/licences/{licence}", amend_licence, methods=["PATCH"]),
    Route("/v1/admin/licences/{licence}/terms", licence_terms, methods=["GET"]),
    Route("/v1/admin/licences/{licence}/suspend", _status_route("suspend", EventKind.LICENCE_SUSPEND), methods=["POST"]),
    Route("/v1/admin/licences/{licence}/resume", _status_route("resume", EventKind.LICENCE_RESUME), methods=["POST"]),
    Route("/v1/admin/licences/{licence}/revoke", _status_route("revoke", EventKind.LICENCE_REVOKE), methods=["POST"]),
    Route("/v1/admin/licences/{licence}/terminate", terminate_licence, methods=["POST"]),
    Route("/v1/admin/terminations", list_terminations, methods=["GET"]),
    Route("/v1/admin/terminations/{termination}", get_termination, methods=["GET"]),
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/keys", issue_key, methods=["POST"]),
    Route("/v1/admin/keys/{key}/revoke", revoke_key, methods=["POST"]),
    Route("/v1/admin/keys/{key}/rotate", rotate_key, methods=["POST"]),
    Route("/v1/admin/oauth-clients", list_oauth_clients, methods=["GET"]),
    Route("/v1/admin/oauth-clients", create_oauth_client, methods=["POST"]),
    Route("/v1/admin/oauth-clients/{client}/revoke", revoke_oauth_client, methods=["POST"]),
]
# Every change may carry an Idempotency-Key: its retry gets the first answer and changes nothing.
routes = [Route(r.path, idempotent(r.endpoint), methods=sorted(r.methods or ()))
          if r.methods and r.methods & {"POST", "PATCH"} else r for r in _routes]
