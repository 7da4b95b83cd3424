"""The evidence bundle's JSON documents as schemas/*.schema.json declare them (schemas/audit-format.md §6.1).

Parsing is strict: no object may name a property twice (orjson, like most parsers, silently keeps
the last, so two readers of one file could see different values). Every object is closed: a property
its schema does not name is refused, as `additionalProperties: false` says, and every property has
its declared type, range and spelling.

The checks are written out rather than run by a JSON Schema library: the verifier checks every event
of bundles holding millions, where a generic validator would cost more than the rest of verification,
and the offline verifier should need nothing beyond orjson. tests/audit/test_verify_strict.py holds
them to the schema files with `jsonschema`, on genuine documents and on every single-property change
of them. Each check raises ShapeError saying what is wrong; the caller adds where and the step's code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from gateway.audit.format import FILES_OF, FORMAT, FORMAT_V2
from gateway.audit.report import GENERATOR, GENERATOR_V2

MAX_INT = 2**53 - 1  # every integer of the format is below 2^53 (§2.2)

# JSON Schema patterns are ECMA-262 regular expressions anchored by ^ and $; fullmatch is the same
# (a Python `$` would also match before a final newline).
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z").fullmatch
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_HEX64 = re.compile(r"[0-9a-f]{64}").fullmatch
_KEY_ID = re.compile(r"[0-9a-f]{16}").fullmatch
# A hash of a proof: the canonical base64 of 32 bytes, 43 characters and "=", the last of the 43
# carrying two bits of the hash and four zero bits (so one of these 16).
NODE_LAST = frozenset("AEIMQUYcgkosw048")
_NODE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=").fullmatch
# An event kind: subject:object:action, lowercase words joined by hyphens. Later versions add kinds,
# so any tag of this shape is accepted (§2.1), not only gateway.audit.events.EventKind's.
KIND = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*(:[a-z][a-z0-9]*(-[a-z0-9]+)*){2}").fullmatch
OUTCOMES = frozenset({"allow", "change", "deny", "invalid", "error"})


class ShapeError(ValueError):
    """A JSON document is not what its schema allows; the message says which property and why."""


# -- parsing ----------------------------------------------------------------------------------------

def loads(data: bytes) -> Any:
    """Parse JSON, refusing a property named twice in any object."""
    value = orjson.loads(data)  # the grammar: orjson refuses NaN, lone surrogates, trailing text...
    check_unique(data)
    return value


def check_unique(data: bytes) -> None:
    """Refuse JSON (already parsed by orjson) in which an object names a property twice.

    orjson has no hook for this; the standard library's parser has, at about three times orjson's cost,
    so the verifier calls it only for lines that do not re-serialise to their own bytes (see verify.py).
    """
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except RecursionError:
        raise ShapeError("nested too deeply") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        raise ShapeError(f"an object names {twice!r} twice")
    return value


# -- values -----------------------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


def _str(value: Any) -> bool:
    return type(value) is str


def _pattern(match: Callable[[str], Any]) -> Check:
    return lambda value: type(value) is str and match(value) is not None


def _nullable(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _const(constant: Any) -> Check:
    # type() too: in Python True == 1, in JSON they differ.
    return lambda value: type(value) is type(constant) and value == constant


def _array(check: Check) -> Check:
    return lambda value: type(value) is list and all(check(item) for item in value)


_time, _uuid, _hex64 = _pattern(_TIME), _pattern(_UUID), _pattern(_HEX64)
_nodes = _array(_pattern(_NODE))


def closed(value: Any, fields: dict[str, tuple[Check, str]], what: str) -> dict[str, Any]:
    """`value` as an object with exactly the properties of `fields`, each passing its check."""
    if type(value) is not dict:
        raise ShapeError(f"{what} is not a JSON object")
    if value.keys() != fields.keys():
        unknown, missing = sorted(value.keys() - fields.keys()), sorted(fields.keys() - value.keys())
        raise ShapeError(f"{what}: " + "; ".join(
            ([f"unknown properties {unknown}"] if unknown else []) + ([f"missing properties {missing}"] if missing
                                                                      else [])))
    for name, (check, expected) in fields.items():
        try:
            ok = check(value[name])
        except ShapeError as e:  # from a nested object
            raise ShapeError(f"{what}: {e}") from None
        if not ok:
            raise ShapeError(f"{what}: {name} must be {expected}, not {_show(value[name])}")
    return value


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(fields: dict[str, tuple[Check, str]], what: str) -> Check:
    """A check of a nested object, which raises ShapeError itself to say what is wrong inside it."""
    return lambda value: closed(value, fields, what) is value


INT = (_int, "an integer from 0 to 2^53-1")
STR = (_str, "a string")
TIME = (_time, "a time like 2026-04-01T09:30:00.000000Z")
UUID = (_uuid, "a lowercase UUID")
NULL_STR = (_nullable(_str), "null or a string")
NULL_TEXT = (_nullable(lambda v: type(v) is str and v != ""), "null or a non-empty string")
NULL_INT = (_nullable(_int), "null or an integer from 0 to 2^53-1")
NULL_TIME = (_nullable(_time), "null or a time like 2026-04-01T09:30:00.000000Z")
NULL_UUID = (_nullable(_uuid), "null or a lowercase UUID")
NODES = (_nodes, "a list of base64 hashes (44 characters each)")


# -- the documents ----------------------------------------------------------------------------------

_FILE = {"sha256": (_hex64, "64 lowercase hex digits"), "bytes": INT}
_SCOPE = {"vendor_id": UUID, "from": TIME, "to": TIME, "member_id": NULL_UUID, "dataset_id": NULL_UUID}
_MANIFEST_LOG = {"log": STR, "origin": STR, "events": INT, "first_seq": INT, "last_seq": INT, "checkpoints": INT,
                 "pending": INT}
_PENDING_LOG = {"log": STR, "pending": INT}
_NAMED = (lambda v: type(v) is dict and all(_uuid(k) and type(n) is str for k, n in v.items()),
          "an object of names by lowercase UUID")
_NAMES = {"vendor": STR, "members": _NAMED, "datasets": _NAMED}


# The report generator a signed format's manifest names: the one whose figures report.json holds.
REPORT_OF = {FORMAT_V2: GENERATOR_V2, FORMAT: GENERATOR}


def manifest(value: Any) -> dict[str, Any]:
    """manifest.json (schemas/audit-manifest.schema.json), of format 1, 2 or 3: the format decides which
    files it lists, from 2 that `report` names the report generator whose figures are checked, and from
    3 that it holds `names`."""
    version = value.get("format") if type(value) is dict else None
    if type(version) is not str or version not in FILES_OF:
        version = FORMAT  # refused below, saying which formats there are
    files = FILES_OF[version]
    return closed(value, {
        "format": (lambda v: type(v) is str and v in FILES_OF, " or ".join(map(repr, FILES_OF))),
        "created_at": TIME,
        "scope": (_object(_SCOPE, "scope"), "an object"),
        "series": (lambda v: v in ("vendor", "member", None), '"vendor", "member" or null'),
        "report": (_const(REPORT_OF[version]), repr(REPORT_OF[version])) if version in REPORT_OF else STR,
        "logs": (_array(_object(_MANIFEST_LOG, "an entry of logs")), "a list of objects"),
        "pending_logs": (_array(_object(_PENDING_LOG, "an entry of pending_logs")), "a list of objects"),
        "files": (_object({name: (_object(_FILE, f"files.{name}"), "an object") for name in files}, "files"),
                  "an object"),
        **({"names": (_object(_NAMES, "names"), "an object")} if version == FORMAT else {}),
    }, "manifest.json")


_KEY = {"key_id": (_pattern(_KEY_ID), "16 lowercase hex digits"), "purpose": (_const("audit"), '"audit"'),
        "algorithm": (_const("Ed25519"), '"Ed25519"'), "public_key": STR, "vkey": STR, "not_before": TIME,
        "not_after": NULL_TIME, "retired_at": NULL_TIME}


def keys(value: Any) -> list[dict[str, Any]]:
    """keys.json (schemas/audit-keys.schema.json): its list of keys."""
    found = closed(value, {"keys": (lambda v: type(v) is list, "a list")}, "keys.json")["keys"]
    return [closed(item, _KEY, f"keys.json key {number}") for number, item in enumerate(found, 1)]


_CHECKPOINT_LINE = {"log": STR, "tree_size": INT, "note": STR}
_CONSISTENCY_LINE = {"log": STR, "old_size": INT, "new_size": INT, "proof": NODES}
_PROOF_LINE = {"log": STR, "seq": INT, "tree_size": INT, "proof": NODES}


_KEY_EVENT_LINE = {"log": STR, "seq": INT, "entry": STR, "tree_size": INT, "note": STR, "proof": NODES}


def key_event_line(value: Any, what: str) -> dict[str, Any]:
    """A line of key-events.jsonl (schemas/audit-key-event-line.schema.json); its entry is an event."""
    return closed(value, _KEY_EVENT_LINE, what)


_TERMS_LINE = {"licence_id": UUID, "version": INT, "sha256": (_hex64, "64 lowercase hex digits"), "text": STR}


def terms_line(value: Any, what: str) -> dict[str, Any]:
    """A line of terms.jsonl (schemas/audit-terms-line.schema.json)."""
    return closed(value, _TERMS_LINE, what)


# A 64-byte Ed25519 signature in canonical base64: 85 characters, one carrying two bits and four zero
# bits (so one of these 4), and "==".
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{85}[AQgw]==").fullmatch
_TERMINATIONS_LINE = {
    "termination_id": UUID, "licence_id": UUID, "notice": STR, "notice_sha256": (_hex64, "64 lowercase hex digits"),
    "key_id": (_pattern(_KEY_ID), "16 lowercase hex digits"),
    "signature": (_pattern(_SIGNATURE), "the canonical base64 of 64 bytes"),
    "attestation": NULL_STR, "attestation_sha256": (_nullable(_hex64), "null or 64 lowercase hex digits")}


def terminations_line(value: Any, what: str) -> dict[str, Any]:
    """A line of terminations.jsonl (schemas/audit-terminations-line.schema.json)."""
    return closed(value, _TERMINATIONS_LINE, what)


# report.json (schemas/audit-report.schema.json). Records and bytes are differences of a stream's
# totals (§2.1.1), so a signed but strange log could make them negative: any integer of the format.
_SIGNED = (lambda v: type(v) is int and -MAX_INT <= v <= MAX_INT, "an integer from -(2^53-1) to 2^53-1")
_CREDENTIAL_ROW = {"credential": STR, "deliveries": INT}
_DENIAL_ROW = {"reason": STR, "count": INT}
_ACCEPTANCE = {"at": TIME, "licence_id": NULL_UUID, "terms_version": NULL_INT}
_LICENCE_CHANGES = ("grant", "amend", "suspend", "resume", "revoke")
_MEMBER_ROW = {
    "member_id": UUID, "name": NULL_TEXT,
    "licence_changes": (lambda v: type(v) is dict and all(k in _LICENCE_CHANGES and type(n) is int and 0 < n <= MAX_INT
                                                          for k, n in v.items()),
                        f"an object of counts above 0 named {list(_LICENCE_CHANGES)}"),
    "terms_accepted": (_array(_object(_ACCEPTANCE, "an entry of terms_accepted")), "a list of objects"),
    "deliveries": INT, "records": _SIGNED, "bytes": _SIGNED, "denials": INT}
_VERSION_ROW = {"published_at": TIME, "version": NULL_INT, "records": INT, "cumulative": INT}
_WITHDRAWAL_ROW = {"withdrawn_at": TIME, "version": NULL_INT, "records": INT, "reason": NULL_STR}
_DATASET_ROW_V2 = {"dataset_id": UUID, "name": NULL_TEXT,
                   "versions": (_array(_object(_VERSION_ROW, "an entry of versions")), "a list of objects")}
_DATASET_ROW = {**_DATASET_ROW_V2,
                "withdrawn": (_array(_object(_WITHDRAWAL_ROW, "an entry of withdrawn")), "a list of objects")}
_TERMINATION_ROW = {"termination_id": UUID, "licence_id": NULL_UUID, "member_id": NULL_UUID, "dataset_id": NULL_UUID,
                    "terminated_at": NULL_TIME, "grounds": NULL_TEXT, "attestation_due": NULL_TEXT,
                    "attested_at": NULL_TIME}
_REPORT_V2 = {
    "format": (_const(GENERATOR_V2), repr(GENERATOR_V2)),
    "period": (_object({"from": TIME, "to": TIME}, "period"), "an object"),
    "events": INT, "logs": INT,
    "deliveries_by_credential": (_array(_object(_CREDENTIAL_ROW, "an entry of deliveries_by_credential")),
                                 "a list of objects"),
    "unauthenticated_deliveries": INT, "records": _SIGNED, "bytes": _SIGNED,
    "denials_by_reason": (_array(_object(_DENIAL_ROW, "an entry of denials_by_reason")), "a list of objects"),
    "members": (_array(_object(_MEMBER_ROW, "an entry of members")), "a list of objects"),
    "datasets": (_array(_object(_DATASET_ROW_V2, "an entry of datasets")), "a list of objects"),
}
_REPORT = {
    **_REPORT_V2,
    "format": (_const(GENERATOR), repr(GENERATOR)),
    "datasets": (_array(_object(_DATASET_ROW, "an entry of datasets")), "a list of objects"),
    "terminations": (_array(_object(_TERMINATION_ROW, "an entry of terminations")), "a list of objects"),
}


def report_figures(value: Any) -> dict[str, Any]:
    """report.json (schemas/audit-report.schema.json), by the report format its `format` names."""
    v2 = type(value) is dict and value.get("format") == GENERATOR_V2
    return closed(value, _REPORT_V2 if v2 else _REPORT, "report.json")


def node_valid(value: Any) -> bool:
    """Whether `value` is a proof node as the schemas spell it: canonical base64 of 32 bytes."""
    return type(value) is str and _NODE(value) is not None


def proof_line_valid(value: Any) -> bool:
    """Whether proof_line(value) would pass, but for the proof's nodes, which the verifier checks as it
    decodes them (it compares most with the nodes of the proof before instead: see verify._ProofCache)."""
    if type(value) is not dict or len(value) != 4:
        return False
    try:  # four properties, these four
        log, seq, size, proof = value["log"], value["seq"], value["tree_size"], value["proof"]
    except KeyError:
        return False
    return (type(log) is str and type(seq) is int and type(size) is int and 0 <= seq <= MAX_INT
            and 0 <= size <= MAX_INT and type(proof) is list)


def checkpoint_line(value: Any, what: str) -> dict[str, Any]:
    """A line of checkpoints.jsonl (schemas/audit-checkpoint-line.schema.json)."""
    return closed(value, _CHECKPOINT_LINE, what)


def consistency_line(value: Any, what: str) -> dict[str, Any]:
    """A line of consistency.jsonl (schemas/audit-consistency-line.schema.json)."""
    return closed(value, _CONSISTENCY_LINE, what)


def proof_line(value: Any, what: str) -> dict[str, Any]:
    """A line of proofs.jsonl (schemas/audit-proof-line.schema.json)."""
    return closed(value, _PROOF_LINE, what)


_REQUEST = {"id": STR, "method": NULL_STR, "path": NULL_STR, "status": (lambda v: v is None or type(v) is int,
                                                                        "null or an integer"),
            "client": NULL_STR, "user_agent": NULL_STR}
_ACTOR = {"credential_id": NULL_UUID, "kind": NULL_STR}
_DELIVERY = {"records": NULL_INT, "bytes": NULL_INT, "sha256": (_nullable(_hex64), "null or 64 lowercase hex digits"),
             "complete": (lambda v: v is None or type(v) is bool, "null or a boolean")}
_EVENT = {
    "v": (_const(1), "1"), "log": (lambda v: type(v) is str and v != "", "a non-empty string"), "seq": INT,
    "instance": STR, "event_id": UUID, "at": TIME,
    "kind": (_pattern(KIND), "a tag subject:object:action"),
    "outcome": (lambda v: type(v) is str and v in OUTCOMES, f"one of {sorted(OUTCOMES)}"),
    "reason": NULL_STR,
    "request": (_nullable(_object(_REQUEST, "request")), "null or an object"),
    "actor": (_object(_ACTOR, "actor"), "an object"),
    "vendor_id": NULL_UUID, "member_id": NULL_UUID, "dataset_id": NULL_UUID, "licence_id": NULL_UUID,
    "terms_version": NULL_INT,
    "versions": (_nullable(_array(_int)), "null or a list of integers from 0 to 2^53-1"),
    "partitions": (_nullable(_array(_str)), "null or a list of strings"),
    "delivery": (_nullable(_object(_DELIVERY, "delivery")), "null or an object"),
    "detail": (lambda v: v is None or type(v) is dict, "null or an object"),
    "vendor_seq": NULL_INT, "member_seq": NULL_INT,
}


def event(value: Any, what: str) -> dict[str, Any]:
    """An event (schemas/audit-event.schema.json): a line of events.jsonl."""
    return closed(value, _EVENT, what)


_EVENT_SIZE = len(_EVENT)


def event_valid(e: Any) -> bool:
    """Whether event(e) would pass: the same checks unrolled, without messages, for the verifier's loop.

    Written for speed (no generator, no call per property), so it is long: every event of a bundle
    passes here. Ids found valid once are remembered: a log names the same members, datasets,
    licences and keys over and over, so most events cost two regular expressions (event_id and at).
    """
    try:
        return _event_valid(e)
    except KeyError:  # a property missing: with the count right, an unknown one is there instead
        return False


def _event_valid(e: Any) -> bool:
    # Closed objects: the right number of properties, each of them read below (a missing one raises
    # KeyError), is the same as the right set of names, and cheaper than comparing the sets.
    if type(e) is not dict or len(e) != _EVENT_SIZE:
        return False
    ids, n, uuid, none, string, integer = _IDS, MAX_INT, _UUID, None, str, int
    for value in (e["vendor_id"], e["member_id"], e["dataset_id"], e["licence_id"]):
        if value is not none:
            if type(value) is not string:
                return False
            if value not in ids:
                if uuid(value) is None:
                    return False
                _remember(value)
    actor = e["actor"]
    if type(actor) is not dict or len(actor) != 2:
        return False
    value = actor["credential_id"]
    if value is not none:
        if type(value) is not string:
            return False
        if value not in ids:
            if uuid(value) is None:
                return False
            _remember(value)
    value = actor["kind"]
    if value is not none and type(value) is not string:
        return False
    request = e["request"]
    if request is not none:
        if type(request) is not dict or len(request) != 6 or type(request["id"]) is not string:
            return False
        value = request["method"]
        if value is not none and type(value) is not string:
            return False
        value = request["path"]
        if value is not none and type(value) is not string:
            return False
        value = request["client"]
        if value is not none and type(value) is not string:
            return False
        value = request["user_agent"]
        if value is not none and type(value) is not string:
            return False
        value = request["status"]
        if value is not none and type(value) is not integer:
            return False
    delivery = e["delivery"]
    if delivery is not none:
        if type(delivery) is not dict or len(delivery) != 4:
            return False
        value = delivery["records"]
        if value is not none and not (type(value) is integer and 0 <= value <= n):
            return False
        value = delivery["bytes"]
        if value is not none and not (type(value) is integer and 0 <= value <= n):
            return False
        value = delivery["sha256"]
        if value is not none and (type(value) is not string or _HEX64(value) is None):
            return False
        value = delivery["complete"]
        if value is not none and type(value) is not bool:
            return False
    for value in (e["terms_version"], e["vendor_seq"], e["member_seq"]):
        if value is not none and not (type(value) is integer and 0 <= value <= n):
            return False
    value = e["versions"]
    if value is not none:
        if type(value) is not list:
            return False
        for item in value:
            if not (type(item) is integer and 0 <= item <= n):
                return False
    value = e["partitions"]
    if value is not none:
        if type(value) is not list:
            return False
        for item in value:
            if type(item) is not string:
                return False
    value = e["reason"]
    if value is not none and type(value) is not string:
        return False
    value = e["detail"]
    if value is not none and type(value) is not dict:
        return False
    value, seq, log, kind = e["v"], e["seq"], e["log"], e["kind"]
    if not (type(value) is integer and value == 1 and type(seq) is integer and 0 <= seq <= n
            and type(log) is string and log and type(e["instance"]) is string):
        return False
    value = e["event_id"]
    if type(value) is not string or uuid(value) is None:
        return False
    value = e["at"]
    if type(value) is not string or _TIME(value) is None:
        return False
    if type(kind) is not string or (kind not in _KINDS and not _kind(kind)):
        return False
    value = e["outcome"]
    return type(value) is string and value in OUTCOMES


_IDS: set[str] = set()
_KINDS: set[str] = set()


def _remember(value: str) -> None:
    if len(_IDS) > 100_000:  # bounded: an export naming very many members stays a cache, not a copy of them
        _IDS.clear()
    _IDS.add(value)


def _kind(kind: str) -> bool:
    if KIND(kind) is None:
        return False
    if len(_KINDS) < 1000:
        _KINDS.add(kind)
    return True
