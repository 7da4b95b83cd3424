"""Delta Sharing over licences: the catalogue a member sees, table layouts, query planning, file URLs.

The mapping (README "Delta Sharing"):

- one **share** per vendor the member holds a licence from, named after the vendor (lowercase ASCII
  letters, digits, '-' and '_'; `vendor-<id prefix>` when the name has none of those; the vendor id
  suffixes both names if two of the member's vendors would share one); its `id` is the vendor id;
- one **schema**, `default`, per share;
- one **table** per licensed dataset (a licence that is not revoked), named by the dataset name, `id`
  the dataset id. Its schema has the licence's columns only; the dataset's partition column is the
  table's partition column (when licensed, and not the only licensed column);
- the **table version** is the dataset's latest live (not withdrawn) version; a snapshot at version V
  is every record of the versions deliverable as of V (gateway/datasets.py `deliverable`: no withdrawn
  version, nothing a replace version replaced) in the licensed partitions, one or more Parquet files
  per (version, partition). A withdrawal changes what every version's snapshot holds from then on, and
  the file URLs of a withdrawn version answer 410.

Names are matched case-insensitively, as the protocol requires. Nothing here touches the network:
gateway/http/sharing_api.py is the HTTP layer, gateway/parquet_files.py builds the files.

File URLs. The connector fetches each file URL with no Authorization header, so the URL is the
authorisation: `/delta-sharing/files/<token>`, where the token names the member, the credential that
asked, the licence, the file (dataset, version, partition, columns, part) and an expiry, MACed with
HMAC-SHA256 under a key derived from the server secret of purpose `cursor` (derivation label
_TOKEN_LABEL, so a page cursor can never pass for a file token nor the reverse; rotating that secret
keeps older versions verifying until they are retired, like cursors). A download re-checks from the
snapshot that the credential is still valid, the licence still allows delivery and still covers the
file's partition and columns: a revocation or a narrowed licence stops outstanding URLs at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import operator
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import cursors, times
from gateway.columns import Column
from gateway.datasets import Dataset
from gateway.errors import BadRequest, NotFound
from gateway.licences import Licence
from gateway.parquet_files import SPARK_TYPES, ParquetCache
from gateway.server_secrets import CURSOR, ServerSecrets
from gateway.snapshot import Snapshot

SCHEMA = "default"
FILE_URL_SECONDS = 15 * 60
MAX_PAGE = 1000
_TOKEN_LABEL = b"lpd-gateway delta-sharing file url v1"
_MAC_BYTES = 16
MAX_TOKEN_LENGTH = 4096


# -- the catalogue ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SharedTable:
    share: str
    share_id: uuid.UUID
    dataset: Dataset
    licence: Licence

    @property
    def name(self) -> str:
        return self.dataset.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "schema": SCHEMA, "share": self.share, "shareId": str(self.share_id),
                "id": str(self.dataset.id)}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:200]


def catalogue(snapshot: Snapshot, member_id: uuid.UUID) -> dict[str, list[SharedTable]]:
    """Share name -> the member's tables in it, each sorted by name."""
    by_vendor: dict[uuid.UUID, list[tuple[Dataset, Licence]]] = {}
    for licence in snapshot.licences_of(member_id):
        dataset = snapshot.datasets.get(licence.dataset_id)
        if dataset is None or not licence.live:
            continue
        by_vendor.setdefault(dataset.vendor_id, []).append((dataset, licence))
    names = {}
    for vendor_id in by_vendor:
        vendor = snapshot.vendors.get(vendor_id)
        names[vendor_id] = _slug(vendor.name) if vendor is not None else ""
    taken = [n for n in names.values()]
    for vendor_id, name in names.items():
        if not name or taken.count(name) > 1:
            names[vendor_id] = f"{name or 'vendor'}-{vendor_id.hex[:8]}"
    shares: dict[str, list[SharedTable]] = {}
    for vendor_id, entries in by_vendor.items():
        shares[names[vendor_id]] = sorted((SharedTable(names[vendor_id], vendor_id, d, lic) for d, lic in entries),
                                          key=lambda t: t.name)
    return dict(sorted(shares.items()))


def find_share(shares: dict[str, list[SharedTable]], share: str) -> list[SharedTable]:
    tables = shares.get(share.lower())
    if tables is None:
        raise NotFound("share")
    return tables


def find_schema(shares: dict[str, list[SharedTable]], share: str, schema: str) -> list[SharedTable]:
    tables = find_share(shares, share)
    if schema.lower() != SCHEMA:
        raise NotFound("schema")
    return tables


def find_table(shares: dict[str, list[SharedTable]], share: str, schema: str, table: str) -> SharedTable:
    for shared in find_schema(shares, share, schema):
        if shared.name == table.lower():
            return shared
    raise NotFound("table")


# -- pages of lists ---------------------------------------------------------------------------------

def _whole_number(value: Any) -> Any:
    """A JSON number that is whole as an int (JSON has one kind of number: 3.0 is the version 3); else as is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole(text: str) -> bool:
    """ASCII digits, at most 20 of them: "²".isdigit() is true but int() refuses it (and over 4300 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def page(items: list[dict[str, Any]], key: str, scope: str, max_results: str | None, page_token: str | None,
         secrets_: ServerSecrets) -> dict[str, Any]:
    """One page of `items` (sorted by item[key]) as {"items", "nextPageToken"?}; the token is MACed and
    bound to the list it came from."""
    limit = MAX_PAGE
    if max_results is not None:
        if not _whole(max_results) or int(max_results) > 2**31 - 1:
            raise BadRequest("maxResults must be a whole number of 0 or more", error_code="INVALID_PARAMETER_VALUE")
        limit = min(int(max_results), MAX_PAGE)
    start = 0
    if page_token:
        try:
            state = cursors.decode(page_token, secrets_.by_purpose[CURSOR])
        except BadRequest:
            state = {}
        if state.get("s") != scope or not isinstance(state.get("a"), str):
            raise BadRequest("pageToken is not valid: pass the nextPageToken of the previous page unchanged",
                             error_code="INVALID_PARAMETER_VALUE")
        start = next((i for i, item in enumerate(items) if item[key] > state["a"]), len(items))
    chosen = items[start:start + limit]
    body: dict[str, Any] = {"items": chosen}
    if start + limit < len(items):
        version, secret = secrets_.current(CURSOR)
        after = chosen[-1][key] if chosen else (items[start - 1][key] if start else "")
        body["nextPageToken"] = cursors.encode({"s": scope, "a": after}, version, secret)
    return body


# -- a table's layout -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Layout:
    """What a licence shows of a dataset: the table schema, its partition column, the columns in files."""

    columns: tuple[Column, ...]            # the table's schema, in dataset order
    partition_columns: tuple[str, ...]     # () or (dataset.partition_column,)
    file_columns: tuple[Column, ...]       # what the Parquet files hold: the others

    def schema_string(self) -> str:
        return orjson.dumps({"type": "struct", "fields": [
            {"name": c.name, "type": SPARK_TYPES[c.type], "nullable": True,
             "metadata": {"comment": c.description} if c.description else {}} for c in self.columns]}).decode()


def layout(dataset: Dataset, licence: Licence) -> Layout:
    licensed = tuple(c for c in dataset.columns if c.name in licence.columns)
    others = tuple(c for c in licensed if c.name != dataset.partition_column)
    # Delta keeps partition values out of the data files (the reader fills them from partitionValues);
    # a licence to the partition column alone still needs a column in the file, so it stays one.
    if others and len(others) < len(licensed):
        return Layout(licensed, (dataset.partition_column,), others)
    return Layout(licensed, (), licensed)


def metadata_action(dataset: Dataset, shape: Layout, version: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"id": str(dataset.id), "name": dataset.name, "format": {"provider": "parquet"},
                            "schemaString": shape.schema_string(), "partitionColumns": list(shape.partition_columns),
                            "configuration": {}}
    if dataset.description:
        meta["description"] = dataset.description
    if version is not None:
        meta["version"] = version
    return {"metaData": meta}


PROTOCOL_ACTION = {"protocol": {"minReaderVersion": 1}}


def partition_value(dataset: Dataset, value: str) -> str:
    """A partition key as Delta serialises it (timestamps as `YYYY-MM-DD HH:MM:SS[.ffffff]`, in UTC)."""
    kind = next(c.type for c in dataset.columns if c.name == dataset.partition_column)
    if kind == "timestamp":
        return value.replace("T", " ").removesuffix("Z")
    return value


# -- versions ---------------------------------------------------------------------------------------

def _moment(text: str, name: str) -> datetime:
    """A protocol timestamp; without an offset it is UTC."""
    try:
        return times.parse_moment(text, assume=UTC, days_in=UTC, example="2026-04-01T00:00:00Z")
    except times.MomentError as exc:
        raise BadRequest(f"{name} {exc}", error_code="INVALID_PARAMETER_VALUE") from None


def version_as_of(dataset: Dataset, version: Any = None, timestamp: Any = None) -> int:
    """The table version a read is for: the latest live one, `version` (≤ the latest published), or the one
    current at `timestamp`."""
    if version is not None and timestamp is not None:
        raise BadRequest("give version or timestamp, not both", error_code="INVALID_PARAMETER_VALUE")
    if version is not None:
        if isinstance(version, str) and _whole(version):
            version = int(version)
        version = _whole_number(version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise BadRequest("version must be a whole number of 0 or more", error_code="INVALID_PARAMETER_VALUE")
        if version > dataset.latest_version:
            raise BadRequest(f"version {version} does not exist; the latest is {dataset.latest_version}",
                             error_code="INVALID_PARAMETER_VALUE")
        return version
    if timestamp is not None:
        if not isinstance(timestamp, str):
            raise BadRequest("timestamp must be a string", error_code="INVALID_PARAMETER_VALUE")
        moment = _moment(timestamp, "timestamp")
        published = [v.version for v in dataset.versions if v.published_at <= moment]
        if not published:
            raise BadRequest(f"no version was published at or before {timestamp}", error_code="INVALID_PARAMETER_VALUE")
        return published[-1]
    return dataset.current_version


def version_starting(dataset: Dataset, timestamp: str) -> int:
    """The earliest version published at or after `timestamp` (the version API's startingTimestamp)."""
    moment = _moment(timestamp, "startingTimestamp")
    later = [v.version for v in dataset.versions if v.published_at >= moment]
    if not later:
        raise BadRequest(f"no version was published at or after {timestamp}; the latest is "
                         f"{dataset.latest_version}", error_code="INVALID_PARAMETER_VALUE")
    return later[0]


# -- predicate hints: partition pruning, best effort ------------------------------------------------
#
# Hints only ever narrow what the licence already allows, and only on the partition column. Evaluation
# is three-valued: True (the file's partition matches), False (it cannot match: prune) and None
# (unknown: another column, an op or a value we do not understand). Only False prunes, so a hint we
# cannot read returns every licensed file, as the protocol asks.

Truth = bool | None


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "equal": operator.eq, "notEqual": operator.ne, "lessThan": operator.lt, "lessThanOrEqual": operator.le,
    "greaterThan": operator.gt, "greaterThanOrEqual": operator.ge}


def _compare(op: str, left: Any, right: Any) -> Truth:
    try:
        return bool(_COMPARISONS[op](left, right))
    except (KeyError, TypeError):
        return None


def _typed(value: Any, kind: str) -> Any:
    """A literal or a partition value (both strings in the protocol) as `kind`; None when it is not one."""
    try:
        if kind in ("int", "long", "integer"):
            return int(value)
        if kind in ("float", "double", "number"):
            return float(value)
        if kind in ("bool", "boolean"):
            return {"true": True, "false": False}.get(str(value).lower())
        if kind == "timestamp":
            return _moment(str(value).replace(" ", "T"), "value")
        return str(value)  # string, date (ISO dates order as strings)
    except (ValueError, BadRequest):
        return None


@dataclass(frozen=True, slots=True)
class PartitionColumn:
    name: str   # lowercase
    kind: str   # our column type


def _and(values: Iterable[Truth]) -> Truth:
    values = list(values)
    return False if False in values else (True if values and all(v is True for v in values) else None)


def _or(values: Iterable[Truth]) -> Truth:
    values = list(values)
    return True if True in values else (False if values and all(v is False for v in values) else None)


def json_hint(tree: Any, column: PartitionColumn, value: str) -> Truth:
    """Evaluate a jsonPredicateHints tree for a file whose partition value is `value`."""
    if not isinstance(tree, dict):
        return None
    op, children = tree.get("op"), tree.get("children") or []
    if not isinstance(children, list):
        return None
    if op == "and":
        return _and(json_hint(c, column, value) for c in children)
    if op == "or":
        return _or(json_hint(c, column, value) for c in children)
    if op == "not" and len(children) == 1:
        inner = json_hint(children[0], column, value)
        return None if inner is None else not inner
    if op == "isNull" and len(children) == 1:
        return False if _leaf(children[0], column, value) is not _UNKNOWN else None  # partition keys are never null
    if op == "in" and len(children) >= 2:  # not in the spec's list; some clients send it
        return _or(json_hint({"op": "equal", "children": [children[0], c]}, column, value) for c in children[1:])
    if op in ("equal", "lessThan", "lessThanOrEqual", "greaterThan", "greaterThanOrEqual") and len(children) == 2:
        left, right = (_leaf(c, column, value) for c in children)
        if left is _UNKNOWN or right is _UNKNOWN or left is None or right is None:
            return None
        return _compare(op, left, right)
    return None


_UNKNOWN = object()


def _leaf(node: Any, column: PartitionColumn, value: str) -> Any:
    if not isinstance(node, dict):
        return _UNKNOWN
    kind = node.get("valueType") or ("string" if column.kind == "text" else column.kind)
    if node.get("op") == "column":
        if str(node.get("name", "")).lower() != column.name:
            return _UNKNOWN
        return _typed(value, kind)
    if node.get("op") == "literal" and "value" in node:
        return _typed(node["value"], kind)
    return _UNKNOWN


# The SQL hints of the protocol's restricted subset: `col <op> literal` (either side), `col IN (...)`,
# `col IS [NOT] NULL`. Literals are 'quoted' (with '' for a quote) or numbers.
_LITERAL = r"'(?:[^']|'')*'|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false"
_NAME = r"`?([A-Za-z_][A-Za-z0-9_]*)`?"
_SQL_OPS = {"=": "equal", "<": "lessThan", "<=": "lessThanOrEqual", ">": "greaterThan", ">=": "greaterThanOrEqual",
            "<>": "notEqual", "!=": "notEqual"}
_SQL_FLIPPED = {"equal": "equal", "lessThan": "greaterThan", "lessThanOrEqual": "greaterThanOrEqual",
                "greaterThan": "lessThan", "greaterThanOrEqual": "lessThanOrEqual", "notEqual": "notEqual"}
_SQL_COMPARE = re.compile(rf"^\s*(?:{_NAME}\s*(<=|>=|<>|!=|=|<|>)\s*({_LITERAL})|({_LITERAL})\s*(<=|>=|<>|!=|=|<|>)\s*"
                          rf"{_NAME})\s*$", re.IGNORECASE)
_SQL_IN = re.compile(rf"^\s*{_NAME}\s+(NOT\s+)?IN\s*\(((?:\s*(?:{_LITERAL})\s*,?)+)\)\s*$", re.IGNORECASE)
_SQL_NULL = re.compile(rf"^\s*{_NAME}\s+IS\s+(NOT\s+)?NULL\s*$", re.IGNORECASE)


def _sql_literal(text: str, column: PartitionColumn) -> Any:
    if text.startswith("'"):
        text = text[1:-1].replace("''", "'")
    elif text.lower() in ("true", "false"):
        return _typed(text, "boolean")
    kind = {"text": "string"}.get(column.kind, column.kind)
    return _typed(text, kind)


def sql_hint(hint: Any, column: PartitionColumn, value: str) -> Truth:
    if not isinstance(hint, str):
        return None
    kind = {"text": "string"}.get(column.kind, column.kind)
    if match := _SQL_COMPARE.match(hint):
        if match.group(1):
            name, op, literal = match.group(1), _SQL_OPS[match.group(2)], match.group(3)
        else:
            literal, op, name = match.group(4), _SQL_FLIPPED[_SQL_OPS[match.group(5)]], match.group(6)
        if name.lower() != column.name:
            return None
        left, right = _typed(value, kind), _sql_literal(literal, column)
        return None if left is None or right is None else _compare(op, left, right)
    if match := _SQL_IN.match(hint):
        if match.group(1).lower() != column.name:
            return None
        options = [_sql_literal(m.group(0), column) for m in re.finditer(_LITERAL, match.group(3), re.IGNORECASE)]
        mine = _typed(value, kind)
        if mine is None or any(o is None for o in options):
            return None
        found = mine in options
        return not found if match.group(2) else found
    if match := _SQL_NULL.match(hint):
        if match.group(1).lower() != column.name:
            return None
        return bool(match.group(2))  # never null: IS NOT NULL holds, IS NULL does not
    return None


def keeps(hints: list[Any], json_tree: Any, column: PartitionColumn | None, value: str) -> bool:
    """Whether a file with partition `value` may match the hints (only a certain False prunes)."""
    if column is None:
        return True
    verdicts = [sql_hint(h, column, value) for h in hints]
    if json_tree is not None:
        verdicts.append(json_hint(json_tree, column, value))
    return _and(verdicts) is not False


# -- the query body ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Query:
    predicate_hints: list[Any] = field(default_factory=list)
    json_hints: Any = None
    limit_hint: int | None = None
    version: Any = None
    timestamp: Any = None


def parse_query(body: Any) -> Query:
    """The query body. Hints are best effort: unreadable hints are ignored, as the protocol asks;
    unknown fields are ignored too (the protocol grows); streaming and CDF fields are refused."""
    if body is None:
        return Query()
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", error_code="MALFORMED_REQUEST")
    for name in ("startingVersion", "endingVersion", "startingTimestamp"):
        if body.get(name) is not None:
            raise BadRequest(f"{name} (streaming and change data feed) is not supported by this gateway; "
                             "read snapshots with version or timestamp", error_code="UNSUPPORTED_OPERATION")
    hints = body.get("predicateHints") or []
    json_tree = None
    if isinstance(body.get("jsonPredicateHints"), str):
        try:
            json_tree = orjson.loads(body["jsonPredicateHints"])
        except orjson.JSONDecodeError:
            json_tree = None
    elif isinstance(body.get("jsonPredicateHints"), dict):
        json_tree = body["jsonPredicateHints"]
    limit = _whole_number(body.get("limitHint"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise BadRequest("limitHint must be a whole number of 0 or more", error_code="INVALID_PARAMETER_VALUE")
    return Query(hints if isinstance(hints, list) else [], json_tree, limit, body.get("version"),
                 body.get("timestamp"))


@dataclass(frozen=True, slots=True)
class Candidate:
    """Records of one licensed partition of one version: one file set."""

    version: int
    partition: str
    records: int


def candidates(dataset: Dataset, licence: Licence, shape: Layout, query: Query, upto: int) -> list[Candidate]:
    """The (version, partition) sets a query reads: licensed partitions with records, the versions
    deliverable as of `upto` (no withdrawn one, none a later replace version replaced),
    pruned by the hints on the partition column (only when the licence shows that column)."""
    column = None
    if dataset.partition_column in (c.name for c in shape.columns):
        kind = next(c.type for c in dataset.columns if c.name == dataset.partition_column)
        column = PartitionColumn(dataset.partition_column.lower(), kind)
    found = []
    deliverable = set(dataset.deliverable(upto))
    for version in dataset.versions:
        if version.version not in deliverable:
            continue
        for partition, stats in sorted(version.partitions.items()):
            if stats.records and licence.covers(partition) \
                    and keeps(query.predicate_hints, query.json_hints, column, partition_value(dataset, partition)):
                found.append(Candidate(version.version, partition, stats.records))
    return found


# -- file tokens ------------------------------------------------------------------------------------

def _token_key(secret: bytes) -> bytes:
    return hmac.new(secret, _TOKEN_LABEL, hashlib.sha256).digest()


def sign_file_token(server_secrets: ServerSecrets, claims: dict[str, Any]) -> str:
    version, secret = server_secrets.current(CURSOR)
    payload = orjson.dumps(claims)
    mac = hmac.new(_token_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(version.to_bytes(2, "big") + mac + payload).decode().rstrip("=")


def open_file_token(server_secrets: ServerSecrets, text: str) -> dict[str, Any] | None:
    """The claims of an untampered token (expired or not: the caller says which), else None."""
    if len(text) > MAX_TOKEN_LENGTH:
        return None
    try:
        blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    if len(blob) < 2 + _MAC_BYTES:
        return None
    secret = server_secrets.by_purpose.get(CURSOR, {}).get(int.from_bytes(blob[:2], "big"))
    payload = blob[2 + _MAC_BYTES:]
    if secret is None or not hmac.compare_digest(
            blob[2:2 + _MAC_BYTES], hmac.new(_token_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]):
        return None
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return claims if isinstance(claims, dict) else None


def file_claims(credential_id: uuid.UUID, licence: Licence, candidate: Candidate, columns: tuple[Column, ...],
                index: int, records: int, size: int, expires: int) -> dict[str, Any]:
    return {"t": secrets.token_hex(8), "c": str(credential_id), "m": str(licence.member_id), "l": str(licence.id),
            "d": str(licence.dataset_id), "v": candidate.version, "p": candidate.partition,
            "cols": [c.name for c in columns], "i": index, "n": records, "s": size, "x": expires}


def file_id(key: str, index: int) -> str:
    """Stable across queries for the same bytes (the protocol lets clients cache by it)."""
    return str(uuid.UUID(hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:32]))


def expiry(now: float | None = None) -> int:
    return int((now if now is not None else times.timestamp()) + FILE_URL_SECONDS)


# -- byte ranges ------------------------------------------------------------------------------------

class RangeNotSatisfiable(Exception):
    """No byte of the range asked for lies within the file's `size` bytes (RFC 9110 §15.5.17)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a file of {size} bytes")
        self.size = size


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single `bytes=` range, None for the whole file. RFC 9110 §14."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise BadRequest("send one byte range per request, e.g. 'Range: bytes=0-1023'",
                         error_code="INVALID_PARAMETER_VALUE")
    first, dash, last = spec.strip().partition("-")
    if not dash or not (_whole(first) or (first == "" and _whole(last))) or (last and not _whole(last)):
        raise BadRequest("malformed Range header; e.g. 'Range: bytes=0-1023'", error_code="INVALID_PARAMETER_VALUE")
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - count), size
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(size)
    end = size if not last else min(int(last) + 1, size)
    if end <= start:
        raise RangeNotSatisfiable(size)
    return start, end


# -- per-process state ------------------------------------------------------------------------------

@dataclass
class SharingState:
    """The Parquet cache and which file URLs have had their records counted (this process)."""

    cache: ParquetCache
    charged: dict[str, int] = field(default_factory=dict)  # token id -> URL expiry

    def charge(self, token_id: str, expires: int) -> bool:
        """True the first time a URL delivers bytes: its file's records are counted then, once.
        Synchronous, so that concurrent first requests of one URL cannot both be charged."""
        now = times.timestamp()
        if len(self.charged) > 10_000:
            self.charged = {t: x for t, x in self.charged.items() if x > now}
        if token_id in self.charged:
            return False
        self.charged[token_id] = expires
        return True

    def uncharge(self, token_id: str) -> None:
        self.charged.pop(token_id, None)
