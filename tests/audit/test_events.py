"""Event bodies: canonical bytes equal RFC 8785's, and the JSON Schema describes every field."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.events import AuditEvent, EventKind, Outcome, canonical, new_event_id, utc_text
from tests import REPOSITORY

SCHEMAS = REPOSITORY / "schemas"
# Any text but lone surrogates (a str that cannot be UTF-8 at all): controls, U+2028, emoji, RTL marks...
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ODD = st.sampled_from(["", "\u2028\u2029", "\x00\x1f\x7f", "日本語のUA/1.0", "\U0001f600 emoji", "\u202e rtl",
                       "quote\" back\\slash", "\ufeff bom", "e\u0301 combining", "\uffff"])
SAFE_INT = st.integers(min_value=0, max_value=2**53 - 1)
IDS = st.none() | st.uuids()
# Detail objects have ASCII keys (events.py); values may be anything JSON holds but floats.
JSON_VALUE = st.recursive(st.none() | st.booleans() | SAFE_INT | TEXT | ODD,
                          lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=8), inner,
                                          max_size=3), max_leaves=8)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event = AuditEvent(
        kind=draw(st.sampled_from(list(EventKind))), outcome=draw(st.sampled_from(list(Outcome))),
        reason=draw(st.none() | TEXT | ODD),
        at=draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))),
        event_id=draw(st.uuids()), request_id=draw(st.none() | st.text("abc123._:-", min_size=8, max_size=20)),
        method=draw(st.none() | st.sampled_from(["GET", "POST"])), path=draw(st.none() | TEXT),
        status=draw(st.none() | st.integers(100, 599)), client=draw(st.none() | st.ip_addresses().map(str)),
        user_agent=draw(st.none() | TEXT | ODD), credential_id=draw(IDS), actor=draw(st.none() | TEXT),
        vendor_id=draw(IDS), member_id=draw(IDS), dataset_id=draw(IDS), licence_id=draw(IDS),
        terms_version=draw(st.none() | SAFE_INT), versions=draw(st.none() | st.lists(SAFE_INT, max_size=4)),
        partitions=draw(st.none() | st.lists(TEXT | ODD, max_size=4)), records=draw(st.none() | SAFE_INT),
        bytes=draw(st.none() | SAFE_INT), sha256=draw(st.none() | st.text("0123456789abcdef", min_size=64,
                                                                             max_size=64)),
        complete=draw(st.none() | st.booleans()),
        detail=draw(st.none() | st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=8), JSON_VALUE,
                                                max_size=4)))
    body = event.body(draw(TEXT.filter(bool)), draw(SAFE_INT), draw(TEXT))
    # The writer's series numbers (gateway/audit/writer.py).
    body["vendor_seq"] = draw(st.none() | SAFE_INT)
    body["member_seq"] = draw(st.none() | SAFE_INT)
    return body


@settings(max_examples=400, deadline=None)
@given(events())
def test_canonical_bytes_are_rfc8785(body: dict[str, Any]) -> None:
    assert canonical(body) == rfc8785.dumps(body)


@settings(max_examples=500)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))])))
def test_event_times_are_rfc3339_utc_with_microseconds(moment: datetime) -> None:
    utc = moment.astimezone(UTC)
    assert utc_text(moment) == utc.isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert datetime.fromisoformat(utc_text(moment)) == moment


def test_event_ids_are_uuid7_ordered_by_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids) and len(set(ids)) == len(ids)
    stamps = [i.int >> 80 for i in ids]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    assert AuditEvent(kind=EventKind.DATASET_READ, outcome=Outcome.ALLOW).event_id.version == 7


def test_the_event_schema_names_every_field_of_an_event() -> None:
    schema = json.loads((SCHEMAS / "audit-event.schema.json").read_text(encoding="utf-8"))
    body = AuditEvent(kind=EventKind.RECORDS_DELIVER, outcome=Outcome.ALLOW, request_id="r" * 8, records=1,
                      vendor_id=uuid.uuid4()).body("log", 0, "instance")
    body.update(vendor_seq=0, member_seq=None)
    assert set(schema["properties"]) == set(body) == set(schema["required"])
    assert schema["additionalProperties"] is False
    known, later = schema["properties"]["kind"]["anyOf"]
    assert set(known["enum"]) == {k.value for k in EventKind}
    # Kinds a later version adds are valid too (audit-format.md §2.1): every known tag has their shape.
    assert all(re.fullmatch(later["pattern"].strip("^$"), k.value) for k in EventKind)
    assert set(schema["properties"]["outcome"]["enum"]) == {o.value for o in Outcome}
    assert set(schema["properties"]["request"]["anyOf"][1]["properties"]) == set(body["request"])
    assert set(schema["properties"]["delivery"]["anyOf"][1]["properties"]) == set(body["delivery"])


def test_every_bundle_schema_is_json() -> None:
    for name in ("audit-event", "audit-manifest", "audit-proof-line", "audit-checkpoint-line",
                 "audit-consistency-line", "audit-keys"):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
        assert schema["$schema"].startswith("https://json-schema.org/") and schema["title"]


def test_the_readme_lists_every_event_kind() -> None:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("### Audit event kinds"):readme.index("## Development")]
    named = set(re.findall(r"`([a-z-]+:[a-z-]+:[a-z-]+)`", listed)) - {"subject:object:action"}
    assert named == {k.value for k in EventKind}, "README.md's list of event kinds and EventKind differ"
