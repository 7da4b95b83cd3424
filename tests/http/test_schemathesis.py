"""Schemathesis against the real app, in-process, once per role: the app answers as schemas/openapi.yaml says.

Every default check runs (server errors, status codes, content types, response schemas and headers,
positive and negative data, missing headers, unsupported methods and Allow, ignored auth, ...), in every
phase Schemathesis's engine has (examples, coverage, fuzzing, and stateful sequences along the document's
links), against the demo (each role gets its own database cloned from the seeded template). The app runs
in Schemathesis's ASGI transport with its real lifespan, so it opens its own Runtime (pool, snapshot,
audit writer) on the transport's event loop, exactly as under uvicorn; the streamed export, the upload
and the file downloads run like every other operation.

Generation is steered, never loosened: half of the ids and names drawn are the demo's real objects (the
caller's own and other parties'), so requests get past the 404s; and a small dictionary of values that
break servers (NUL, non-ASCII digits, date-times with no UTC time) is mixed in, as a fuzzer's dictionary.
No check is turned off. The one exception is narrower than an operation: positive_data_acceptance is
excused for the refusals listed in INEXPRESSIBLE, each a rule JSON Schema cannot state, matched by
operation, status and the refusal's own reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import events
from schemathesis.python import asgi

from gateway.app import GatewayApp
from tests.conftest import make_config

ROLES = ("member", "vendor", "compliance", "none")
# Bounded so that the four roles together stay well within two minutes on two cores (about 50 s alone).
MAX_EXAMPLES = 20
# Fixed, so that a failure reproduces; change it locally to explore further.
SEED = 20260401


def _key(role: str, demo: dict[str, Any]) -> str | None:
    return {"member": demo["members"][0]["api_key"], "vendor": demo["vendor_admin_key"],
            "compliance": demo["compliance_key"], "none": None}[role]


# Rules JSON Schema cannot state (a relation between two fields, or with the database, or with the clock).
# A schema-valid request that breaks one is rightly refused; positive_data_acceptance is excused for
# exactly that refusal - this operation, this status, this reason - and for nothing else.
INEXPRESSIBLE: list[tuple[str, int, str, str]] = [
    # (operationId, status, text the refusal's detail or message contains, why JSON Schema cannot say it)
    ("adminCreateDataset", 422, "must be one of the declared columns", "partition_column names a sibling's value"),
    ("adminCreateDataset", 422, "is declared twice", "unique column names: uniqueItems compares whole objects"),
    ("adminAmendDataset", 422, "is declared twice", "unique column names: uniqueItems compares whole objects"),
    ("adminAmendDataset", 422, "not their names, types or order", "columns must be the stored ones, in order"),
    # A column's declared spellings (gateway/columns.py): relations between its fields, or with the
    # time zone database.
    ("*", 422, "cannot spell both true and false", "the true and false lists are disjoint"),
    ("*", 422, "appears twice", "each format directive at most once"),
    ("*", 422, "format needs %", "a format holds the directives its type requires"),
    ("*", 422, "(fractions of a second) needs %S", "%f only beside %S"),
    ("*", 422, "a format without %z needs a time_zone", "a zone-less format needs time_zone"),
    ("*", 422, "time_zone would never apply", "time_zone is refused beside a %z"),
    ("*", 422, "is not an IANA time zone name", "time_zone names an entry of the time zone database"),
    ("adminGrantLicence", 422, "list of the dataset's columns", "columns must be those the dataset declares"),
    ("adminAmendLicence", 422, "list of the dataset's columns", "columns must be those the dataset declares"),
    ("adminGrantLicence", 422, "licence values are inconsistent", "valid_until after valid_from"),
    ("adminAmendLicence", 422, "licence values are inconsistent", "valid_until after the stored valid_from"),
    ("adminGrantLicence", 422, "no version of dataset", "partitions must be those the dataset's versions hold"),
    ("adminAmendLicence", 422, "no version of dataset", "partitions must be those the dataset's versions hold"),
    ("adminGrantLicence", 422, "is already over", "valid_until in the future: the clock"),
    ("adminAmendLicence", 422, "is already over", "valid_until in the future: the clock"),
    ("adminGrantLicence", 422, "or a list of named partitions, not both", '"*" alone or named partitions'),
    ("adminAmendLicence", 422, "or a list of named partitions, not both", '"*" alone or named partitions'),
    ("adminPublishVersion", 422, "line ", "every record must match the dataset's declared columns"),
    ("adminPublishVersion", 422, "not valid gzip", "a body sent with Content-Encoding: gzip must be gzip"),
    ("adminPublishVersion", 422, "Parquet", "a Parquet body must be a Parquet file of the declared columns"),
    ("adminIssueKey", 422, "must be a future date-time", "expires_at in the future: the clock"),
    ("exportAuditBundle", 422, "the period must end after it starts", "to after from"),
    ("getUsage", 400, "'to' must be after 'from'", "to after from, both given"),
    ("adminUsage", 400, "'to' must be after 'from'", "to after from, both given"),
    ("getRecords", 400, "cursor is not valid", "a cursor is a MACed token only the gateway can make"),
    ("getRecords", 400, "does not exist; the latest is", "version at most the dataset's latest"),
    ("getRecords", 400, "or since_version (the versions after it), not both", "two query parameters exclude each other"),
    ("getRecords", 406, "NDJSON is always UTF-8", "charset and bom are for CSV, chosen by format, Accept or the cursor"),
    ("getRecords", 406, "has no byte order mark", "two query parameters exclude each other"),
    ("getRecords", 406, "cannot encode", "CP932 lacks characters a record may hold: the data decides"),
    ("sharingListShares", 400, "pageToken is not valid", "a page token is a MACed token only the gateway makes"),
    ("sharingListSchemas", 400, "pageToken is not valid", "a page token is a MACed token only the gateway makes"),
    ("sharingListTables", 400, "pageToken is not valid", "a page token is a MACed token only the gateway makes"),
    ("sharingListAllTables", 400, "pageToken is not valid", "a page token is a MACed token only the gateway makes"),
    ("sharingTableMetadata", 400, "does not exist; the latest is", "version at most the table's latest"),
    ("sharingTableMetadata", 400, "no version was published at or before", "timestamp after the first version"),
    ("sharingTableMetadata", 400, "give version or timestamp, not both", "two query parameters exclude each other"),
    ("sharingQueryTable", 400, "does not exist; the latest is", "version at most the table's latest"),
    ("sharingQueryTable", 400, "no version was published at or before", "timestamp after the first version"),
    ("sharingTableVersion", 400, "no version was published at or after", "startingTimestamp before the latest"),
    # HEAD answers carry no body to tell the reason by; a schema-valid HEAD has no other 400 than this one.
    ("sharingTableVersionHead", 400, "", "startingTimestamp before the latest"),
    ("sharingTableVersionDeprecated", 400, "", "startingTimestamp before the latest"),
    ("sharingTableChanges", 400, "change data feed is not shared", "the operation exists only to refuse"),
    # Every date-time input: 0001-01-01T00:00:00+05:00 is a valid RFC 3339 date-time with no UTC time
    # in years 1-9999, where the gateway stores and compares moments (arithmetic across one string's parts).
    ("*", 400, "between the years 1 and 9999 in UTC", "the UTC equivalent must exist"),
    ("*", 422, "between the years 1 and 9999 in UTC", "the UTC equivalent must exist"),
]


# A refusal that is inexpressible only when the request carries all these query parameters: a lone `from`
# or `to` always gives a period (metering.parse_period), so a lone bound refused is a finding.
ONLY_WITH_QUERY = {"'to' must be after 'from'": ("from", "to")}


def _excused(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """filter_failure: False drops the failure (an INEXPRESSIBLE refusal); True keeps it."""
    if "positive_data_acceptance" not in type(failure).checks:
        return True
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    said = str(body.get("detail") or body.get("message") or "") if isinstance(body, dict) else ""
    operation_id = case.operation.definition.raw.get("operationId")
    query = case.query or {}
    return not any(op in (operation_id, "*") and response.status_code == status and text in said
                   and all(name in query for name in ONLY_WITH_QUERY.get(text, ()))
                   for op, status, text, _ in INEXPRESSIBLE)


# Values that break servers and that generators draw rarely: NUL (PostgreSQL text cannot hold it),
# non-ASCII and overlong digit strings (str.isdigit() accepts "²", int() does not), date-times without a
# UTC time in years 1-9999, int32 and int64 edges. Mixed into generated values, as a fuzzer's dictionary.
HOSTILE_TEXT = ["\x00", "a\x00b", "²", "١٢", "9" * 30, "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
                "0001-01-01", "9999-12-31", "-1", " 1", "1e3", "ＡＢ"]
HOSTILE_INTEGERS = [0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63]
# For the integer query parameters, which arrive as text: what str.isdigit() or int() accept and should not.
DIGIT_LOOKALIKES = ["²", "١٢", "9" * 30, "+1", "1_0", " 1"]


def _config(role: str, demo: dict[str, Any]) -> schemathesis.Config:
    key = _key(role, demo)
    members = demo["members"]
    # The demo's real objects, drawn for ids and names half of the time (random ones the other half): so
    # that requests reach real datasets, licences, members and tables - the caller's own and another's -
    # and not only 404s. Ids of objects the caller does not own must answer like missing ones.
    known = {
        "datasets": [demo["dataset"]],
        "licences": [m["licence_id"] for m in members],
        "members": [m["member_id"] for m in members],
        "shares": ["example-mobile"], "schemas": ["default"], "tables": ["mobile-location"],
        "partitions": [p for m in members for p in m["partitions"]] + ["01", "47"],
    }
    real = {
        "path.dataset": "datasets", "query.dataset": "datasets", "body.dataset_id": "datasets",
        "path.licence": "licences",
        "path.member": "members", "query.member": "members", "body.member_id": "members",
        "path.share": "shares", "path.schema": "schemas", "path.table": "tables",
        "query.partition": "partitions", "body.partitions[*]": "partitions",
    }
    project: dict[str, Any] = {
        "seed": SEED,
        "dictionaries": {
            "hostile-text": {"values": HOSTILE_TEXT}, "hostile-integers": {"values": HOSTILE_INTEGERS},
            "digit-lookalikes": {"values": DIGIT_LOOKALIKES},
            **{name: {"values": values} for name, values in known.items()}},
        "parameters": {
            **{f"query.{name}": {"dictionary": "digit-lookalikes", "probability": 0.5}
               for name in ("maxResults", "limit", "since_version", "version")},
            **{where: {"dictionary": name, "probability": 0.5} for where, name in real.items()}},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "dictionaries": {
            "string": {"dictionary": "hostile-text", "probability": 0.2},
            "integer": {"dictionary": "hostile-integers", "probability": 0.2}}},
    }
    if key is not None:
        # Only operations whose `security` names apiKey get the key: public ones are called without.
        project["auth"] = {"openapi": {"apiKey": {"bearer": key}}}
    return schemathesis.Config.from_dict(project)


@pytest.fixture
def gateway(demo_dsn: str, tmp_path: Path) -> Iterator[GatewayApp]:
    """The app as uvicorn serves it; Schemathesis runs its lifespan on the transport's event loop."""
    app = GatewayApp(make_config(demo_dsn, tmp_path))
    try:
        yield app
    finally:
        # Closes the Runtime (drains the audit writer) before the database is dropped.
        asgi.shutdown_lifespans()


def _describe(recorder: Any) -> list[str]:
    found = []
    for checks in recorder.checks.values():
        for check in checks:
            if check.failure_info is None:
                continue
            failure = check.failure_info.failure
            found.append(f"[{check.name}] {recorder.label}: {failure.title}\n{failure.message}\n"
                         f"{check.failure_info.code_sample}")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_the_app_answers_as_its_openapi_document_says(role: str, gateway: GatewayApp,
                                                        demo_content: dict[str, Any]) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_asgi("/openapi.json", gateway, config=_config(role, demo_content))
    schema.hook("filter_failure")(_excused)
    problems: list[str] = []
    scenarios = 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            problems += _describe(event.recorder)
        elif isinstance(event, events.NonFatalError):
            problems.append(f"[error] {event.label}: {event.info.title}\n{event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            problems += [f"[after run] {f.title}\n{f.message}" for f in event.failures]
    assert scenarios, "Schemathesis ran nothing"
    print(f"{role}: {scenarios} scenarios in {time.monotonic() - started:.1f} s")
    assert not problems, f"{len(problems)} failures as {role}:\n\n" + "\n\n".join(problems)
