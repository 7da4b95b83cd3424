"""The evidence report: one self-contained HTML page mapping a period's audit events to the statute.

UCPA art. 2(7) protects data provided (1) to specific parties as a business (限定提供性), (2) in
substantial accumulation (相当蓄積性) and (3) under electromagnetic management (電磁的管理性). The page
summarises the bundle's events under each heading, in Japanese and English, with inline CSS and
inline SVG only: no script, no external resource, a Content-Security-Policy that forbids loading any.
Every text from an event is escaped.

The figures come first, as report.json (formats 2 and 3): `figures()` is a pure function of the
manifest and the events whose every rule schemas/audit-format.md §6.5 writes down, so any verifier
recomputes them byte for byte; the page renders those figures (`render`). Format 3's figures
(`lpd-gateway report/3`) add withdrawals and terminations to format 2's (`lpd-gateway report/2`),
which the verifier still recomputes for bundles exported before.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import times
from gateway.audit.format import TERMINATION_KINDS

GENERATOR = "lpd-gateway report/3"  # format 3: report.json, and report.html rendered from it
GENERATOR_V2 = "lpd-gateway report/2"  # format 2: the same without withdrawals and terminations
# A delivery is authorised by one event (a page carries its records) and a stream's records come with
# its progress and end events, each repeating the stream's totals so far (audit-format.md §2.1.1: a
# stream's delivery is its last event's); Delta Sharing file downloads follow the same pattern.
DELIVERY_REQUESTS = frozenset({"member:records:deliver", "member:sharing-file:deliver"})
STREAM_EVENTS = frozenset({"member:records:stream-end", "member:sharing-file:stream-end",
                           "member:records:stream-progress", "member:sharing-file:stream-progress"})
DELIVERIES = DELIVERY_REQUESTS | STREAM_EVENTS
LICENCE_KINDS = {"vendor:licence:grant": "grant", "vendor:licence:amend": "amend",
                 "vendor:licence:suspend": "suspend", "vendor:licence:resume": "resume",
                 "vendor:licence:revoke": "revoke"}
_TOP = 40  # rows shown in long tables and charts; the rest are summed in one line
_COLOURS = ("#1f6f8b", "#c2571a", "#3b8b3b", "#8b3b7a", "#6b6b1f", "#1f3b8b")


@dataclass
class MemberRow:
    name: str | None = None
    licences: Counter[str] = field(default_factory=Counter)
    acceptances: list[tuple[str, str | None, int | None]] = field(default_factory=list)  # at, licence, version
    deliveries: int = 0
    records: int = 0
    bytes: int = 0
    denials: int = 0


@dataclass
class DatasetRow:
    name: str | None = None
    versions: list[tuple[str, int | None, int]] = field(default_factory=list)  # at, version, records
    withdrawn: list[tuple[str, int | None, int, str | None]] = field(default_factory=list)  # at, version, records, reason


@dataclass
class TerminationRow:
    licence_id: str | None = None
    member_id: str | None = None
    dataset_id: str | None = None
    terminated_at: str | None = None
    grounds: str | None = None
    attestation_due: str | None = None
    attested_at: str | None = None


@dataclass
class Summary:
    """Counts over the events whose time is in [start, end) (RFC 3339 texts compare as times)."""

    start: str
    end: str
    events: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    deliveries_by_credential: Counter[str] = field(default_factory=Counter)
    unauthenticated_deliveries: int = 0
    records: int = 0
    bytes: int = 0
    denials_by_reason: Counter[str] = field(default_factory=Counter)
    members: dict[str, MemberRow] = field(default_factory=dict)
    datasets: dict[str, DatasetRow] = field(default_factory=dict)
    terminations: dict[str, TerminationRow] = field(default_factory=dict)
    # What the streams still running in the events so far have counted: (records, bytes) by authorising event.
    streams: dict[str | None, tuple[int, int]] = field(default_factory=dict)

    def add(self, event: dict[str, Any]) -> None:
        at = event.get("at")
        if type(at) is not str or not self.start <= at < self.end:
            return
        self.events += 1
        kind, outcome = event.get("kind"), event.get("outcome")
        if type(kind) is not str:
            kind = str(kind)
        self.kinds[kind] += 1
        member_id = event.get("member_id")
        member = None
        if type(member_id) is str:
            member = self.members.get(member_id)
            if member is None:
                member = self.members[member_id] = MemberRow()
        delivery = event.get("delivery")
        if type(delivery) is not dict:
            delivery = {}
        if outcome == "allow":
            if kind in DELIVERIES:
                self._delivery(event, kind, member, delivery)
        elif outcome == "deny":
            self.denials_by_reason[str(event.get("reason") or kind)] += 1
            if member is not None:
                member.denials += 1
        elif outcome == "change":
            self._change(event, kind, at, member, delivery)

    def _delivery(self, event: dict[str, Any], kind: str, member: MemberRow | None, delivery: dict[str, Any]) -> None:
        if kind in DELIVERY_REQUESTS:
            actor = event.get("actor")
            actor = actor if type(actor) is dict else {}
            credential = actor.get("kind")
            self.deliveries_by_credential[credential if type(credential) is str else "none"] += 1
            if actor.get("credential_id") is None:
                self.unauthenticated_deliveries += 1
            if member is not None:
                member.deliveries += 1
        records, size = delivery.get("records"), delivery.get("bytes")
        records = records if type(records) is int else 0
        size = size if type(size) is int else 0
        if kind in STREAM_EVENTS:
            detail = event.get("detail")
            stream = detail.get("authorised_by") if type(detail) is dict else None
            stream = stream if type(stream) is str else None  # the stream's key: its authorising event
            counted = self.streams.pop(stream, (0, 0))
            if kind.endswith(":stream-progress"):
                self.streams[stream] = (records, size)
            records, size = records - counted[0], size - counted[1]
        self.records += records
        self.bytes += size
        if member is not None:
            member.records += records
            member.bytes += size

    def _change(self, event: dict[str, Any], kind: str, at: str, member: MemberRow | None,
                delivery: dict[str, Any]) -> None:
        detail = event.get("detail")
        name = detail.get("name") if type(detail) is dict else None
        name = name if type(name) is str and name else None  # a non-empty string, or no name
        dataset_id = event.get("dataset_id")
        if kind == "vendor:member:create" and member is not None:
            member.name = name
        elif kind in LICENCE_KINDS and member is not None:
            member.licences[LICENCE_KINDS[kind]] += 1
        elif kind == "member:terms:accept" and member is not None:
            member.acceptances.append((at, event.get("licence_id"), event.get("terms_version")))
        elif kind == "vendor:dataset:create" and type(dataset_id) is str:
            self._dataset(dataset_id).name = name
        elif kind in ("vendor:version:publish", "vendor:version:withdraw") and type(dataset_id) is str:
            versions = event.get("versions")
            version = versions[0] if type(versions) is list and versions else None
            version = version if type(version) is int else None
            if kind == "vendor:version:publish":
                self._dataset(dataset_id).versions.append((at, version, _int(delivery.get("records"))))
            else:
                reason = event.get("reason")
                self._dataset(dataset_id).withdrawn.append((at, version, _int(delivery.get("records")),
                                                            reason if type(reason) is str else None))
        elif kind in TERMINATION_KINDS and type(detail) is dict and type(detail.get("termination_id")) is str:
            row = self.terminations.get(detail["termination_id"])
            if row is None:
                row = self.terminations[detail["termination_id"]] = TerminationRow()
            row.licence_id, row.member_id, row.dataset_id = (_text(event.get(name)) for name in
                                                             ("licence_id", "member_id", "dataset_id"))
            if kind == "vendor:licence:terminate":
                row.terminated_at, row.grounds = at, _text(detail.get("grounds"))
                row.attestation_due = _text(detail.get("attestation_due"))
            else:
                row.attested_at = at

    def _member(self, member_id: str) -> MemberRow:
        row = self.members.get(member_id)
        if row is None:
            row = self.members[member_id] = MemberRow()
        return row

    def _dataset(self, dataset_id: str) -> DatasetRow:
        row = self.datasets.get(dataset_id)
        if row is None:
            row = self.datasets[dataset_id] = DatasetRow()
        return row


def shown_time(text: Any) -> str:
    """An event time as people read it: Japan time first, UTC beside it; text that is no time, as it is."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if moment.tzinfo is None:
        return str(text)
    return f"{times.jst_text(moment)} ({moment.astimezone(UTC):%H:%M:%S} UTC)"


def _text(value: Any) -> str | None:
    """A non-empty string, or null."""
    return value if type(value) is str and value else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figures(summary: Summary, manifest: dict[str, Any]) -> dict[str, Any]:
    """report.json: the report's figures, every list in the order schemas/audit-format.md §6.5 gives, of
    the report format the manifest names (format 2's lack withdrawals and terminations)."""
    current = manifest.get("report") != GENERATOR_V2
    # The names the vendor's gateway had for them at export (signed with the manifest) come first.
    names = manifest.get("names") or {}
    member_names, dataset_names = names.get("members") or {}, names.get("datasets") or {}
    members = sorted(summary.members.items(), key=lambda kv: (-kv[1].records, -kv[1].deliveries, kv[0]))
    dataset_rows = {dataset_id: dataset_names.get(dataset_id) or d.name for dataset_id, d in summary.datasets.items()}
    datasets = sorted(summary.datasets.items(), key=lambda kv: (dataset_rows[kv[0]] or "", kv[0]))
    data: dict[str, Any] = {
        "format": GENERATOR if current else GENERATOR_V2,
        "period": {"from": summary.start, "to": summary.end}, "events": summary.events,
        "logs": len(manifest.get("logs") or []),
        "deliveries_by_credential": [{"credential": k, "deliveries": n} for k, n in
                                     sorted(summary.deliveries_by_credential.items(), key=lambda kv: (-kv[1], kv[0]))],
        "unauthenticated_deliveries": summary.unauthenticated_deliveries,
        "records": summary.records, "bytes": summary.bytes,
        # Counter.most_common: by count, ties in the order of first appearance in events.jsonl.
        "denials_by_reason": [{"reason": r, "count": n} for r, n in summary.denials_by_reason.most_common()],
        "members": [{"member_id": member_id, "name": member_names.get(member_id) or m.name, "licence_changes": dict(sorted(m.licences.items())),
                     "terms_accepted": [{"at": at, "licence_id": licence_id, "terms_version": version}
                                        for at, licence_id, version in m.acceptances],
                     "deliveries": m.deliveries, "records": m.records, "bytes": m.bytes, "denials": m.denials}
                    for member_id, m in members],
        "datasets": [{"dataset_id": dataset_id, "name": dataset_rows[dataset_id], "versions": _versions(d),
                      **({"withdrawn": [{"withdrawn_at": at, "version": version, "records": records, "reason": reason}
                                        for at, version, records, reason in d.withdrawn]} if current else {})}
                     for dataset_id, d in datasets],
    }
    if current:
        data["terminations"] = [{"termination_id": termination_id, **vars(t)}
                                for termination_id, t in sorted(summary.terminations.items())]
    return data


def _versions(dataset: DatasetRow) -> list[dict[str, Any]]:
    total, rows = 0, []
    for at, version, records in sorted(dataset.versions, key=lambda v: (v[0], v[1] or 0)):  # stable
        total += records
        rows.append({"published_at": at, "version": version, "records": records, "cumulative": total})
    return rows


def figures_json(data: dict[str, Any]) -> bytes:
    """report.json's bytes: RFC 8785 (the figures hold only strings, integers, nulls, lists and objects
    with ASCII keys, for which orjson with sorted keys is exact, as for events) and a newline."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS) + b"\n"


def render(data: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The page for the figures `data` (figures()), described by the bundle's `manifest` (scope, logs;
    not file hashes)."""
    scope = manifest.get("scope") or {}
    logs = manifest.get("logs") or []
    parts = [_HEAD, "<h1>限定提供データ 証跡レポート<br><small>Limited provision data: evidence report</small></h1>",
             _scope_table(data, scope, manifest, logs),
             _management(data), _provision(data, manifest), _accumulation(data), _verification(manifest, logs),
             "</main></body></html>\n"]
    return "\n".join(parts)


_HEAD = """<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>証跡レポート / Evidence report</title>
<style>
body{font-family:system-ui,"Hiragino Sans","Noto Sans JP",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:960px;margin:0 auto;padding:1.5rem}
h1{font-size:1.5rem}h1 small{font-size:1rem;color:#555}
h2{border-bottom:2px solid #1f6f8b;padding-bottom:.2rem;margin-top:2rem}
h2 small,h3 small{color:#555;font-weight:normal}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2a7a2a}.bad{color:#b00020;font-weight:bold}
code{font-size:.85em;word-break:break-all}
svg{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
p.note{color:#555;font-size:.85rem}
</style></head><body><main>"""


def _row(*cells: Any, numeric: tuple[int, ...] = ()) -> str:
    return "<tr>" + "".join(f'<td class="n">{e(c)}</td>' if i in numeric else f"<td>{e(c)}</td>"
                            for i, c in enumerate(cells)) + "</tr>"


def _scope_table(data: dict[str, Any], scope: dict[str, Any], manifest: dict[str, Any], logs: list[Any]) -> str:
    names = manifest.get("names") or {}

    def named(what: str, subject: Any) -> str:
        name = names.get(what, {}).get(subject) if what != "vendor" else names.get("vendor")
        return f"{name} ({subject})" if name else str(subject or "—")

    rows = [("事業者 / Vendor", named("vendor", scope.get("vendor_id"))),
            ("期間 / Period", f"{shown_time(scope.get('from'))} – {shown_time(scope.get('to'))}"),
            ("会員 / Member filter", named("members", scope.get("member_id"))),
            ("データセット / Dataset filter", named("datasets", scope.get("dataset_id"))),
            ("作成 / Created", shown_time(manifest.get("created_at"))),
            ("期間内のイベント / Events in the period", f"{data['events']:,}"),
            ("監査ログ / Audit logs", f"{len(logs):,}")]
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def _management(data: dict[str, Any]) -> str:
    kinds = [(k["credential"], k["deliveries"]) for k in data["deliveries_by_credential"]]
    delivered = sum(n for _, n in kinds)
    unauthenticated = data["unauthenticated_deliveries"]
    verdict = (f'<p class="ok">全{delivered:,}件の提供が認証済み / all {delivered:,} deliveries were authenticated</p>'
               if unauthenticated == 0 else
               f'<p class="bad">{unauthenticated:,} deliveries without a credential</p>')
    denials = [(d["reason"], d["count"]) for d in data["denials_by_reason"]]
    shown, rest = denials[:_TOP], sum(n for _, n in denials[_TOP:])
    return "".join([
        "<h2>電磁的管理性 <small>Electromagnetic management</small></h2>",
        ("<p>データの提供はすべて認証を経て行われ、拒否は理由とともに記録される。<br>"
        "Every delivery is authenticated; every refusal is recorded with its reason.</p>"), verdict,
        ("<h3>認証方式別の提供 <small>Deliveries by credential kind</small></h3><table>"
        "<tr><th>Credential</th><th>Deliveries</th></tr>"),
        "".join(_row(k, f"{n:,}", numeric=(1,)) for k, n in kinds) or _row("—", 0, numeric=(1,)),
        (f"</table><p>提供レコード数 / records delivered: <b>{data['records']:,}</b>; "
        f"バイト数 / bytes: <b>{data['bytes']:,}</b></p>"),
        "<h3>拒否の理由 <small>Denials by reason</small></h3><table><tr><th>Reason</th><th>Count</th></tr>",
        "".join(_row(r, f"{n:,}", numeric=(1,)) for r, n in shown) or _row("—", 0, numeric=(1,)),
        _row(f"(other {len(denials) - _TOP} reasons)", f"{rest:,}", numeric=(1,)) if rest else "", "</table>"])


def _provision(data: dict[str, Any], manifest: dict[str, Any]) -> str:
    members = data["members"]
    rows = []
    for m in members[:_TOP * 5]:
        licences = ", ".join(f"{k} ×{n}" for k, n in sorted(m["licence_changes"].items())) or "—"
        accepted = "; ".join(f"v{a['terms_version']} {shown_time(a['at'])}" for a in m["terms_accepted"]) or "—"
        rows.append(_row(m["name"] or "—", m["member_id"], licences, accepted, f"{m['deliveries']:,}",
                         f"{m['records']:,}", f"{m['denials']:,}", numeric=(4, 5, 6)))
    bars = [(m["name"] or m["member_id"][:8], m["records"]) for m in members[:_TOP]]
    return "".join([
        "<h2>限定提供性 <small>Provision to specific parties as a business</small></h2>",
        ("<p>ライセンスを受け規約に同意した特定の会員にのみ提供される。<br>"
        "Data goes only to specific members holding a licence whose terms they accepted.</p>"),
        f"<p>会員数 / members with activity: <b>{len(members):,}</b></p>",
        ("<table><tr><th>Member</th><th>Id</th><th>Licence changes</th><th>Terms accepted</th>"
        "<th>Deliveries</th><th>Records</th><th>Denials</th></tr>"), "".join(rows) or _row("—", "", "", "", 0, 0, 0),
        "</table>", "<h3>会員別の提供レコード数 <small>Records delivered per member</small></h3>",
        bar_chart(bars) if bars else "<p>—</p>", _terminations(data, manifest)])


GROUNDS = {"contract_end": "契約期間の満了 / contract end", "breach": "契約違反 / breach",
           "member_leaving": "会員の退会 / member leaving", "other": "その他 / other"}


def _terminations(data: dict[str, Any], manifest: dict[str, Any]) -> str:
    terminations = data.get("terminations") or []
    if not terminations:
        return ""
    names = manifest.get("names") or {}
    members = {m["member_id"]: m["name"] for m in data["members"]} | (names.get("members") or {})
    datasets = {d["dataset_id"]: d["name"] for d in data["datasets"]} | (names.get("datasets") or {})
    rows, outstanding = [], 0
    for t in terminations:
        if t["terminated_at"] is not None and t["attested_at"] is None:
            outstanding += 1
        rows.append(_row(members.get(t["member_id"]) or t["member_id"] or "—",
                         datasets.get(t["dataset_id"]) or t["dataset_id"] or "—", t["licence_id"] or "—",
                         shown_time(t["terminated_at"]) if t["terminated_at"] else "—",
                         GROUNDS.get(t["grounds"], t["grounds"] or "—"), t["attestation_due"] or "—",
                         shown_time(t["attested_at"]) if t["attested_at"] else "未提出 / outstanding"))
    return "".join([
        "<h3>契約終了と削除証明 <small>Terminations and deletion attestations</small></h3>",
        ("<p>終了したライセンスには監査鍵で署名した終了通知が発行され、会員は複製の削除を証明する。<br>"
         "A terminated licence gets a termination notice signed with the audit key; the member attests that "
         "its copies are deleted.</p>"),
        f"<p>未提出の削除証明 / attestations outstanding: <b>{outstanding:,}</b></p>",
        ("<table><tr><th>Member</th><th>Dataset</th><th>Licence</th><th>Terminated</th><th>Grounds</th>"
         "<th>Attestation due (JST)</th><th>Attested</th></tr>"), "".join(rows), "</table>"])


def _accumulation(data: dict[str, Any]) -> str:
    rows, series, withdrawn = [], [], []
    for d in data["datasets"]:
        label = d["name"] or d["dataset_id"]
        points = []
        for v in d["versions"]:
            points.append((v["published_at"], v["cumulative"]))
            rows.append(_row(label, v["version"] if v["version"] is not None else "—", shown_time(v["published_at"]),
                             f"{v['records']:,}", f"{v['cumulative']:,}", numeric=(3, 4)))
        for w in d.get("withdrawn", ()):  # format 2's figures have none
            withdrawn.append(_row(label, w["version"] if w["version"] is not None else "—",
                                  shown_time(w["withdrawn_at"]), f"{w['records']:,}", w["reason"] or "—",
                                  numeric=(3,)))
        if points:
            series.append((d["name"] or d["dataset_id"][:8], points))
    return "".join([
        "<h2>相当蓄積性 <small>Substantial accumulation</small></h2>",
        ("<p>期間中に公開された版とレコード数の累積。<br>Versions published in the period and the records they "
        "added, accumulated.</p>"),
        "<table><tr><th>Dataset</th><th>Version</th><th>Published</th><th>Records</th><th>Cumulative</th></tr>",
        "".join(rows) or _row("—", "—", "—", 0, 0), "</table>",
        step_chart(series, data["period"]["from"], data["period"]["to"]) if series else "",
        *(["<h3>取り下げた版 <small>Versions withdrawn</small></h3>",
           ("<p>取り下げた版はどの提供経路からも外れ、記録と証跡は残る。<br>A withdrawn version leaves every "
            "delivery path; its records and its evidence stay.</p>"),
           "<table><tr><th>Dataset</th><th>Version</th><th>Withdrawn</th><th>Records</th><th>Reason</th></tr>",
           "".join(withdrawn), "</table>"] if withdrawn else [])])


def _verification(manifest: dict[str, Any], logs: list[Any]) -> str:
    rows = "".join(_row(entry.get("log"), f"{entry.get('events', 0):,}", entry.get("first_seq"),
                        entry.get("last_seq"), f"{entry.get('checkpoints', 0):,}", f"{entry.get('pending', 0):,}",
                        numeric=(1, 2, 3, 4, 5)) for entry in logs)
    return "".join([
        "<h2>検証 <small>Verification</small></h2>",
        ("<p>この報告書は同梱の events.jsonl から生成された。署名付きチェックポイントと包含証明により、"
        "データベースなしで検証できる。<br>This report was generated from the bundle's events.jsonl. The signed "
        "checkpoints and inclusion proofs verify it without the gateway's database:</p>"),
        "<p><code>gateway audit verify bundle.zip</code> (or <code>python -m gateway.verify bundle.zip</code>)</p>",
        (f"<p class=\"note\">Series: {e(manifest.get('series') or 'none (filtered export)')}. "
        "Specification: schemas/audit-format.md.</p>"),
        ("<table><tr><th>Log</th><th>Events</th><th>First seq</th><th>Last seq</th><th>Checkpoints</th>"
        "<th>Not yet checkpointed</th></tr>"), rows, "</table>"])


# -- charts -----------------------------------------------------------------------------------------

def bar_chart(bars: list[tuple[str, int]], width: int = 640, label: str = "records per member") -> str:
    """Horizontal bars, one per label, scaled to the largest value; `label` names the chart to a screen reader."""
    row, label_width, top = 22, 180, 10
    height = top * 2 + row * len(bars)
    largest = max((v for _, v in bars), default=0) or 1
    span = width - label_width - 90
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{e(label)}">')]
    for i, (name, value) in enumerate(bars):
        y = top + i * row
        length = max(1, round(span * value / largest)) if value else 0
        parts.append(f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{e(name[:28])}</text>'
                     f'<rect x="{label_width}" y="{y + 3}" width="{length}" height="{row - 6}" fill="{_COLOURS[0]}"/>'
                     f'<text x="{label_width + length + 4}" y="{y + 15}" font-size="12">{value:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def step_chart(series: list[tuple[str, list[tuple[str, int]]]], start: str, end: str, width: int = 640,
               height: int = 260, label: str = "cumulative records") -> str:
    """Cumulative records over the period, one step line per dataset (or member); `label` names the chart."""
    left, right, top, bottom = 70, 20, 20, 50
    t0, t1 = _seconds(start), _seconds(end)
    span = max(t1 - t0, 1.0)
    largest = max((p[-1][1] for _, p in series), default=0) or 1

    def x(at: str) -> float:
        return round(left + (width - left - right) * min(max((_seconds(at) - t0) / span, 0.0), 1.0), 1)

    def y(value: int) -> float:
        return round(height - bottom - (height - top - bottom) * value / largest, 1)

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{e(label)}">'),
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{largest:,}</text>',
             f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" font-size="11">0</text>',
             f'<text x="{left}" y="{height - bottom + 16}" font-size="11">{e(start[:10])}</text>',
             f'<text x="{width - right}" y="{height - bottom + 16}" text-anchor="end" font-size="11">{e(end[:10])}</text>']
    for i, (name, points) in enumerate(series[:len(_COLOURS)]):
        colour = _COLOURS[i % len(_COLOURS)]
        coords = [f"{left},{y(0)}"]
        previous = 0
        for at, total in points:
            coords += [f"{x(at)},{y(previous)}", f"{x(at)},{y(total)}"]
            previous = total
        coords.append(f"{width - right},{y(previous)}")
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(coords)}"/>'
                     f'<text x="{left + 8 + 150 * i}" y="{height - 12}" font-size="12" fill="{colour}">'
                     f'■ {e(name[:20])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _seconds(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0
