"""The delivery service: every decision about what a member receives, for the member API and Delta
Sharing alike.

Routes parse a request and write the response; in between, this module decides. It finds the
licence governing the dataset and checks that it allows delivery now (one check, terms included).
It applies the rate limit and the hard quotas, leased before the first await. It resolves a page's
scope and cursor, and fills in what the request's audit event records (`EventFacts`), as the
decision goes, so that a refusal midway still names the licence.

A streamed delivery (a full export, a Delta Sharing file) is a `Stream`. It reserves its quota,
commits the authorisation event before the first byte and streams, leasing hard quota as it goes and
recording its progress durably. It stops when the client leaves, its access ends or the gateway
stops, settles what was sent and writes the stream-end event.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from gateway import cursors, database, licences, metering, metrics, records, sharing, times
from gateway.audit.events import AuditEvent, EventFacts, EventKind, new_event_id
from gateway.audit.writer import AuditUnavailable, AuditWriter
from gateway.columns import Column
from gateway.credentials import Credential, Principal
from gateway.datasets import Dataset, Version
from gateway.errors import (
    BadRequest,
    Forbidden,
    Gone,
    NotAcceptable,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from gateway.licences import Licence
from gateway.metering import Allowance, RateLimiter, Tally, UsageBook
from gateway.page_cache import PageCache
from gateway.parquet_files import CACHE_FOLDER, FileSet, ParquetCache, SharingNotInstalled
from gateway.records import UTF8, DeliveryScope, Format, Position, TextEncoding
from gateway.server_secrets import CURSOR
from gateway.sharing import SharingState
from gateway.snapshot import Snapshot

MAX_PAGE = 10_000
FILE_CHUNK_BYTES = 256 * 1024
# An export reads this many records per query: about 1 MB of the demo's records, on a connection held
# for that query only.
EXPORT_CHUNK_RECORDS = 5_000
# How often a running stream checks that its credential, member and licence still allow it: well
# within the second in which a revocation must take effect on every instance.
GUARD_SECONDS = 0.1
# A stream commits a progress event before it hands over more than this since its last one, so a
# process killed mid-stream leaves at most this much delivered and unmetered (plus one chunk, when a
# chunk alone is larger): schemas/audit-format.md §2.1.1.
PROGRESS_BYTES = 4 * 1024 * 1024
PROGRESS_RECORDS = 20_000


class TermsNotAccepted(Forbidden):
    """The licence's current terms are not accepted yet; the HTTP layer points the member at them."""

    def __init__(self, reason: str, licence: Licence) -> None:
        super().__init__(reason, licence_id=str(licence.id))
        self.licence = licence


def licensed(snapshot: Snapshot, caller: Principal, dataset_id: uuid.UUID) -> tuple[Dataset, Licence]:
    """The dataset and the licence governing it for this member; 404 when there is none (no existence leak)."""
    if caller.member_id is None:
        raise NotFound("dataset")
    licence = snapshot.licence_for(caller.member_id, dataset_id)
    dataset = snapshot.datasets.get(dataset_id)
    if licence is None or dataset is None:
        raise NotFound("dataset")
    return dataset, licence


def authorise(snapshot: Snapshot, licence: Licence, now: datetime) -> None:
    """The licence allows delivery now (status, validity, member, accepted terms), or 403 with the reason."""
    decision = licences.check(licence, snapshot.members.get(licence.member_id), now)
    if isinstance(decision, licences.Denied):
        if decision.terms_required:
            raise TermsNotAccepted(decision.reason, licence)
        raise Forbidden(decision.reason, licence_id=str(licence.id))


def note_subject(facts: EventFacts, licence: Licence) -> None:
    """The event names the dataset, the licence and the terms version the request concerns."""
    facts.dataset_id, facts.licence_id, facts.terms_version = licence.dataset_id, licence.id, licence.terms_version


def withdrawn(version: Version, what_next: str) -> Gone:
    """410 for a version its vendor withdrew, naming when and why, and what the member can do instead."""
    assert version.withdrawn_at is not None
    return Gone(f"version {version.version} of this dataset was withdrawn by its vendor at "
                f"{times.jst_text(version.withdrawn_at)} (reason: {version.withdrawal_reason}); {what_next}",
                version=version.version, withdrawn_at=version.withdrawn_at.isoformat(),
                withdrawal_reason=version.withdrawal_reason)


def delivery_scope(dataset: Dataset, licence: Licence, requested: list[str], since_version: int,
                   upto_version: int | None = None, *, exact: bool = False) -> DeliveryScope:
    """The scope of a read: the licence's partitions (or those asked, within it), its columns, and the
    deliverable versions after `since_version` as of `upto_version` (default: the latest), or exactly
    `upto_version` when `exact` and it is live."""
    if requested:
        outside = sorted(p for p in set(requested) if not licence.covers(p))
        if outside:
            raise Forbidden(f"partition {outside[0]!r} is outside your licence", partition=outside[0])
        partitions = tuple(sorted(set(requested)))
    else:
        partitions = licence.partitions_of(dataset.partitions())  # "*": the dataset's partitions as they are now
    columns = tuple(c for c in dataset.column_names if c in licence.columns)
    upto = dataset.latest_version if upto_version is None else upto_version
    if since_version < 0:
        raise BadRequest("since_version must be 0 or a published version number")
    if exact:
        found = dataset.version(upto)
        versions: tuple[int, ...] = (upto,) if found is not None and found.live else ()
    else:
        versions = tuple(n for n in dataset.deliverable(upto) if n > since_version)
    return DeliveryScope(dataset, licence, partitions, columns, since_version, upto, exact, versions)


@dataclass(frozen=True, slots=True)
class RecordsRequest:
    """What a member asked of a dataset's records, as the route parsed it."""

    fmt: Format
    limit: int | None          # None: a full export, streamed
    cursor: str | None
    since_version: int
    partitions: list[str]
    head_only: bool = False    # HEAD: the same checks and headers, no record read
    version: int | None = None  # exactly this live version, replaced or not
    encoding: TextEncoding = UTF8  # of CSV; a cursor's pages are read in the encoding each asks for


@dataclass(frozen=True, slots=True)
class FileAnswer:
    """A Delta Sharing file download as decided: its licence, size and id, the quota's headers, the byte
    range asked for (None: the whole file) and, for GET, the stream of its bytes."""

    licence: Licence
    size: int
    file_id: str
    headers: dict[str, str]
    span: tuple[int, int] | None = None
    stream: Stream | None = None


@dataclass(frozen=True, slots=True)
class RecordsAnswer:
    """A page (`body`, and the cursor of the next one) or an export (`stream`), with its quota headers."""

    licence: Licence
    fmt: Format
    encoding: TextEncoding
    headers: dict[str, str]
    body: bytes = b""
    next_cursor: str | None = None
    stream: Stream | None = None


class Deliveries:
    """The service the delivery routes call: one per process, over its snapshot, usage book and pool."""

    def __init__(self, snapshot: Snapshot, usage: UsageBook, pool: asyncpg.Pool, rate_limiter: RateLimiter,
                 pages: PageCache, writer: AuditWriter, home: Path) -> None:
        self.snapshot, self.usage, self.pool = snapshot, usage, pool
        self.rate_limiter, self.pages, self.writer = rate_limiter, pages, writer
        # Set when the process is told to stop (SIGTERM): running streams end at once, recorded, so that
        # their stream-end events are written and their leases returned within the graceful timeout.
        self.stopping = False
        # Delta Sharing's Parquet files and which file URLs have had their records counted (this process).
        self.sharing = SharingState(ParquetCache(home / CACHE_FOLDER))

    def rate_limit(self, credential_id: uuid.UUID, licence: Licence) -> None:
        """The licence's per-credential request rate, or 429 with the seconds to wait."""
        wait = self.rate_limiter.take(credential_id, licence.requests_per_second, licence.burst)
        if wait:
            metrics.QUOTA_DENIALS.labels("rate").inc()
            raise TooManyRequests(f"this key is limited to {licence.requests_per_second:g} requests per second "
                                  f"(burst {licence.burst or 'none'}); retry after the Retry-After seconds",
                                  headers={"retry-after": str(max(1, math.ceil(wait)))})

    async def lease(self, licence: Licence, records: int, byte_count: int) -> Allowance:
        """Lease what a delivery needs under the hard quotas, and what is left of them."""
        return await metering.lease_and_decide(self.usage, self.pool, licence, records, byte_count)

    async def records(self, caller: Principal, facts: EventFacts, dataset_id: uuid.UUID,
                      asked: RecordsRequest) -> RecordsAnswer:
        """A page of a dataset's records within the caller's licence, or its full export."""
        dataset, licence = licensed(self.snapshot, caller, dataset_id)
        authorise(self.snapshot, licence, times.now())
        note_subject(facts, licence)
        fmt, limit, after = asked.fmt, asked.limit, None
        if asked.cursor is not None:
            scope, after, fmt, limit = self._resume(asked.cursor, dataset, licence)
        elif asked.version is not None:
            scope = delivery_scope(dataset, licence, asked.partitions, asked.version - 1,
                                   _one_version(dataset, asked), exact=True)
        else:
            scope = delivery_scope(dataset, licence, asked.partitions, asked.since_version)
        facts.partitions = list(scope.partitions)
        facts.versions = list(scope.versions)
        encoding = asked.encoding
        if fmt == "ndjson" and encoding != UTF8:
            raise NotAcceptable("NDJSON is always UTF-8 without a byte order mark: charset and bom apply to "
                                "format=csv")
        if encoding.bom and encoding.charset != "utf-8":
            raise NotAcceptable(f"bom=true is for UTF-8; {encoding.charset.upper()} has no byte order mark")
        self.rate_limit(caller.credential.id, licence)
        quota = await self._admit(licence, dataset, 0 if asked.head_only else limit)
        if asked.head_only:
            facts.records = 0  # a delivery of no records (RFC 9110 §9.3.2: GET without the content)
            return RecordsAnswer(licence, fmt, encoding, quota.headers)
        if quota.warning:
            facts.note(quota_warning=quota.warning)
        if limit is None:
            stream = await self._export(caller, scope, fmt, encoding, quota)
            return RecordsAnswer(licence, fmt, encoding, quota.headers, stream=stream)
        return await self._page(facts, scope, fmt, encoding, after, limit, quota)

    async def _admit(self, licence: Licence, dataset: Dataset, want_records: int | None) -> Allowance:
        """The licence's monthly quotas: lease for `want_records` records, or an export's first chunk
        (None; it leases the rest as it goes); 429 when a hard quota is reached."""
        wanted = EXPORT_CHUNK_RECORDS if want_records is None else want_records
        quota = await self.lease(licence, wanted, _estimated_bytes(dataset, wanted))
        if quota.exhausted:
            metrics.QUOTA_DENIALS.labels("quota").inc()
            raise TooManyRequests(quota.exhausted, headers=quota.headers)
        return quota

    async def _page(self, facts: EventFacts, scope: DeliveryScope, fmt: Format, encoding: TextEncoding,
                    after: Position | None, limit: int, quota: Allowance) -> RecordsAnswer:
        licence_id = scope.licence.id
        head = records.csv_header(scope, encoding) if fmt == "csv" and after is None else b""
        take = limit if quota.records is None else min(limit, quota.records)
        # Bytes a page may reserve: an estimate of `take` records within what is left, so that concurrent
        # pages of one licence do not each reserve the whole remainder.
        budget = None if quota.bytes is None else min(quota.bytes, _estimated_bytes(scope.dataset, take))
        # Reserve before the first await: concurrent requests of this licence see the reservation.
        self.usage.count(licence_id, take, budget or 0)
        try:
            page = _encoded(await self.pages.page(self.pool, scope, fmt, after, take), scope, encoding, "this page")
        finally:
            self.usage.count(licence_id, -take, -(budget or 0))
        body, kept, more = page.body, len(page), page.more
        if budget is not None and len(head) + len(body) > budget:
            # Rare: the records are longer than the estimate. Only what fits goes out; the rest follows.
            kept = page.fitting(budget - len(head))
            body, more = page.prefix(kept), True
        self.usage.count(licence_id, kept, len(head) + len(body))
        facts.records = kept
        headers = dict(quota.headers)
        next_cursor = None
        if more and kept < limit and (budget == quota.bytes or take == quota.records):
            headers["quota-cut"] = "this page was cut at your licence's monthly quota"
        elif more and kept:
            assert self.snapshot.secrets is not None
            version, key = self.snapshot.secrets.current(CURSOR)
            next_cursor = cursors.encode(_cursor_state(scope, fmt, limit, page.position(kept - 1)), version, key)
        return RecordsAnswer(scope.licence, fmt, encoding, headers, head + body, next_cursor)

    def _resume(self, text: str, dataset: Dataset, licence: Licence) -> tuple[DeliveryScope, Position, Format, int]:
        assert self.snapshot.secrets is not None
        state = cursors.decode(text, self.snapshot.secrets.by_purpose[CURSOR])
        # Versions are never removed: a cursor beyond the latest one was not written by this gateway.
        if state.get("l") != str(licence.id) or not _well_formed(state) or state["u"] > dataset.latest_version:
            raise BadRequest("cursor is not valid: use the 'next' link of the previous page unchanged")
        # A version of the cursor's range withdrawn since it was written: the pages already read held its
        # records, so going on would leave the member a mix; it must start again (the cursor names the
        # versions already withdrawn when it was written, which its pages never held).
        known = set(state["w"])
        newly = [v for v in dataset.withdrawn_between(state["s"], state["u"]) if v.version not in known]
        if newly:
            raise withdrawn(newly[0], "this cursor's pages included it: start again without a cursor")
        # The scope is re-checked against the licence as it is now: a narrowed licence narrows old cursors too.
        scope = delivery_scope(dataset, licence, state["p"], state["s"], state["u"], exact=state["x"])
        partition, version, seq = state["at"]
        return scope, Position(partition, version, seq), state["f"], state["n"]

    async def sharing_lease(self, licence: Licence, records: int, byte_count: int) -> Allowance:
        """Lease what a Delta Sharing delivery needs under the hard quotas; 403 (not 429: the connector
        would retry it) when what is left cannot hold it. Only the units it needs count: more ranges of a
        file whose records were already counted go on after the records quota is used up, if bytes are left."""
        quota = await self.lease(licence, records, byte_count)
        for unit, needed, left, limit, what in (
                ("records", records, quota.records, licence.records_per_month, f"this file holds {records} records"),
                ("bytes", byte_count, quota.bytes, licence.bytes_per_month, f"this response is {byte_count} bytes")):
            if needed and left is not None and needed > left:
                reason = (f"monthly {unit} quota of {limit} reached; it resets at the start of next month (JST)"
                          if left == 0 else f"{what} but only {left} are left of your monthly {unit} quota of {limit}")
                raise Forbidden(reason, error_code="QUOTA_EXCEEDED", headers=quota.headers)
        quota.headers.pop("retry-after", None)  # set when one unit is used up; this delivery needs none of it
        return quota

    async def parquet_files(self, dataset: Dataset, version: int, partition: str,
                            columns: tuple[Column, ...]) -> FileSet:
        """The Parquet files of one version and partition with these columns, made on first use."""
        vendor = self.snapshot.vendors.get(dataset.vendor_id)
        metadata = {"lpd.dataset_id": str(dataset.id), "lpd.dataset": dataset.name,
                    "lpd.version": str(version), "lpd.partition": partition,
                    "lpd.notice": ("Limited provision data (Japan, Unfair Competition Prevention Act art. 2(7)) of "
                                   f"{vendor.name if vendor else 'its vendor'}, provided only to licensees under "
                                   "their licence; use or disclosure beyond the licence is not permitted.")}
        try:
            return await self.sharing.cache.ensure(self.pool, dataset.id, version, partition, columns, metadata)
        except SharingNotInstalled as exc:
            raise BadRequest(str(exc), error_code="UNSUPPORTED_OPERATION") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            raise ServiceUnavailable("the table's files cannot be prepared right now; retry shortly",
                                     headers={"retry-after": "2"}) from None

    async def sharing_file(self, presented: Principal | None, facts: EventFacts, token: str, *,
                           act_as: Callable[[Principal], None], head: bool, range_header: str | None) -> FileAnswer:
        """A file a query listed, by its signed URL: the URL names the credential, licence and file it was
        issued for, and each is checked again as it is now. From the moment the URL is known to be genuine
        the request acts as that credential (`act_as`), so that the event names it."""
        snapshot = self.snapshot
        if not snapshot.ready or snapshot.secrets is None:
            # A revocation may have been missed: fail closed, as authentication does for bearer keys.
            raise ServiceUnavailable("credentials are being reloaded; retry in a second", headers={"retry-after": "1"})
        claims = sharing.open_file_token(snapshot.secrets, token)
        if claims is None:
            raise NotFound("file")
        try:
            credential_id, licence_id = uuid.UUID(claims["c"]), uuid.UUID(claims["l"])
            member_id, dataset_id = uuid.UUID(claims["m"]), uuid.UUID(claims["d"])
            version, partition, names = int(claims["v"]), str(claims["p"]), list(claims["cols"])
            index, count, size, expires = int(claims["i"]), int(claims["n"]), int(claims["s"]), int(claims["x"])
            token_id = str(claims["t"])
        except (KeyError, TypeError, ValueError):
            raise NotFound("file") from None
        credential = _member_credential(snapshot, credential_id)
        now = times.now()
        if credential is None or credential.member_id != member_id:
            raise NotFound("file")
        if presented is not None and presented.credential.id != credential_id and presented.member_id != member_id:
            # Another party's URL answers exactly like a missing one (no probing); the event names the
            # caller who presented it, the URL and why.
            facts.detail = {"file_url": token_id}
            raise NotFound("file", reason="this file URL was issued to another party's credential")
        act_as(Principal(credential))
        expiry = datetime.fromtimestamp(expires, UTC).isoformat()
        facts.dataset_id, facts.licence_id, facts.partitions, facts.versions = dataset_id, licence_id, [partition], [version]
        facts.detail = {"file_url": token_id, "part": index, "url_expires_at": expiry}
        if presented is not None and presented.credential.id != credential_id:
            raise Forbidden("this file URL was issued to another credential")
        if credential.revoked_at is not None:
            raise Forbidden("the key this file URL was issued to has been revoked")
        if credential.expires_at is not None and now >= credential.expires_at:
            raise Forbidden("the key this file URL was issued to has expired")
        if now.timestamp() >= expires:
            raise Forbidden(f"this file URL expired at {expiry}; query the table again for fresh URLs")
        licence = snapshot.licences.get(licence_id)
        dataset = snapshot.datasets.get(dataset_id)
        if licence is None or dataset is None or licence.member_id != member_id or licence.dataset_id != dataset_id:
            raise NotFound("file")
        facts.terms_version = licence.terms_version
        authorise(snapshot, licence, now)
        if not licence.covers(partition) or not set(names) <= set(licence.columns):
            raise Forbidden("your licence no longer covers this file (its partitions or columns changed); "
                            "query the table again")
        published = dataset.version(version)
        if published is None:
            raise NotFound("file")
        if not published.live:
            raise withdrawn(published, "query the table again for the files it holds now")
        columns = tuple(c for c in dataset.columns if c.name in names)
        if [c.name for c in columns] != names:
            raise NotFound("file")
        files = await self.parquet_files(dataset, version, partition, columns)
        if index >= len(files.files) or files.files[index].size != size or files.files[index].records != count:
            raise NotFound("file")
        self.rate_limit(credential_id, licence)
        file_id = sharing.file_id(files.key, index)
        if head:
            return FileAnswer(licence, size, file_id, {})
        span = sharing.byte_range(range_header, size)
        start, end = span if span is not None else (0, size)
        # Records are counted on the first response of a URL that carries bytes; decided before any await.
        charge = count if self.sharing.charge(token_id, expires) else 0
        try:
            quota = await self.sharing_lease(licence, charge, end - start)
        except BaseException:
            if charge:
                self.sharing.uncharge(token_id)
            raise
        facts.note(range=f"{start}-{end - 1}", records_charged=charge,
                   **({"quota_warning": quota.warning} if quota.warning else {}))
        stream = self.file(licence.id, files.path(index), start, end, charge, lambda: self.sharing.uncharge(token_id),
                           self._still_allowed(credential_id, licence_id, [partition], names, [version]))
        return FileAnswer(licence, size, file_id, quota.headers, span, stream)

    async def _export(self, caller: Principal, scope: DeliveryScope, fmt: Format, encoding: TextEncoding,
                      quota: Allowance) -> Stream:
        pool, charset, deadline = self.pool, encoding.charset, self.writer.deadline
        opening: records.Page | None = None
        if charset != "utf-8":
            # Before the status is sent, a record the charset cannot encode is still a 406: the first
            # chunk is read and encoded now. Past it the status is sent, and such a record ends the
            # stream there, as an error whose stream-end event names it (like any other cut).
            opening = await database.within(pool, deadline, records.page, scope, fmt, None, EXPORT_CHUNK_RECORDS)
            _encoded(opening, scope, encoding, "this export")

        async def produce(write: Write, stopped: Callable[[], bool]) -> None:
            if fmt == "csv":
                await write(records.csv_header(scope, encoding), ())
            written = 0
            # A chunk takes milliseconds to read; one that takes the audit deadline ends the stream as an
            # error while this process can still record it (before it is taken for dead, DEAD_AFTER_SECONDS).
            async for chunk in records.chunks(pool, scope, fmt, EXPORT_CHUNK_RECORDS, read_seconds=deadline,
                                              first=opening):
                if stopped():
                    return
                try:
                    chunk = records.encoded(chunk, scope, charset)
                except records.Unencodable as exc:
                    await write(exc.encoded, exc.sizes)  # the records before it
                    raise StreamCut(exc.reason(charset, written + exc.index + 1, "this export")
                                    + " (the export stopped before it)") from None
                await write(chunk.body, chunk.sizes)
                written += len(chunk)

        first = Tally(min(quota.records, EXPORT_CHUNK_RECORDS) if quota.records is not None else 0,
                      min(quota.bytes, _estimated_bytes(scope.dataset, EXPORT_CHUNK_RECORDS))
                      if quota.bytes is not None else 0)
        return Stream(self, scope.licence.id, EventKind.RECORDS_STREAM_END, produce, first,
                      self._still_allowed(caller.credential.id, scope.licence.id, scope.partitions, scope.columns,
                                          scope.versions),
                      hard=scope.licence if (quota.records, quota.bytes) != (None, None) else None)

    def _still_allowed(self, credential_id: uuid.UUID, licence_id: uuid.UUID, partitions: Iterable[str],
                       columns: Iterable[str], versions: Iterable[int]) -> Callable[[], str | None]:
        """What a running stream asks of the snapshot as it goes: None while its credential, member and
        licence still allow exactly what it delivers and none of its versions is withdrawn, else the
        reason it must stop."""
        partitions, columns, numbers = frozenset(partitions), frozenset(columns), frozenset(versions)
        credential_allows = self._credential_allows(credential_id)

        def refusal() -> str | None:
            reason = credential_allows()
            if reason is not None or not self.snapshot.ready:
                return reason
            snapshot, now = self.snapshot, times.now()
            licence = snapshot.licences.get(licence_id)
            if licence is None:
                return "the licence was withdrawn during the delivery"
            decision = licences.check(licence, snapshot.members.get(licence.member_id), now)
            if isinstance(decision, licences.Denied):
                return f"{decision.reason} (during the delivery)"
            if not all(map(licence.covers, partitions)) or not columns <= set(licence.columns):
                return "the licence was narrowed during the delivery and no longer covers what it delivers"
            dataset = snapshot.datasets.get(licence.dataset_id)
            gone = [] if dataset is None else [v for v in dataset.versions if not v.live and v.version in numbers]
            if gone:
                return (f"version {gone[0].version} was withdrawn by its vendor during the delivery "
                        f"(reason: {gone[0].withdrawal_reason}); read the dataset again for what it holds now")
            return None

        return refusal

    def _credential_allows(self, credential_id: uuid.UUID) -> Callable[[], str | None]:
        """The part of a running stream's check that every stream makes: the gateway is not stopping and
        the credential is neither revoked nor expired."""

        def refusal() -> str | None:
            snapshot = self.snapshot
            if self.stopping:
                return "the gateway is shutting down"
            if not snapshot.ready:
                return None  # reloading in full: decided at the next look, within a second
            credential = _member_credential(snapshot, credential_id)
            if credential is None or credential.revoked_at is not None:
                return "the key was revoked during the delivery"
            if credential.expires_at is not None and times.now() >= credential.expires_at:
                return "the key expired during the delivery"
            return None

        return refusal

    def bundle(self, path: Path, still_allowed: Callable[[], str | None]) -> Stream:
        """An evidence bundle built on disk, streamed to a compliance officer or vendor admin while
        `still_allowed` (their key: `key_allows`; a console person: `running`); the stream-end event
        records how much of it left and its digest."""

        async def produce(write: Write, stopped: Callable[[], bool]) -> None:
            handle = await asyncio.to_thread(open, path, "rb")
            with handle:
                while not stopped() and (chunk := await asyncio.to_thread(handle.read, FILE_CHUNK_BYTES)):
                    await write(chunk, ())

        return Stream(self, None, EventKind.AUDIT_EXPORT_STREAM_END, produce, Tally(), still_allowed,
                      length=path.stat().st_size)

    def key_allows(self, caller: Principal) -> Callable[[], str | None]:
        """While the gateway runs and the caller's key is neither revoked nor expired."""
        return self._credential_allows(caller.credential.id)

    def running(self) -> Callable[[], str | None]:
        """While the gateway runs (a console session is a database row, checked at the person's next request)."""
        return lambda: "the gateway is shutting down" if self.stopping else None

    def file(self, licence_id: uuid.UUID, path: Path, start: int, end: int, charge: int,
             uncharge: Callable[[], None], still_allowed: Callable[[], str | None]) -> Stream:
        """A byte range of a cached Parquet file. Its `charge` records are billed once the first byte
        leaves; when nothing does, `uncharge` gives the URL's charge back."""

        async def produce(write: Write, stopped: Callable[[], bool]) -> None:
            handle = await asyncio.to_thread(open, path, "rb")
            with handle:
                handle.seek(start)
                sent = 0
                while sent < end - start and not stopped():
                    chunk = await asyncio.to_thread(handle.read, min(FILE_CHUNK_BYTES, end - start - sent))
                    if not chunk:
                        break
                    await write(chunk, ())
                    sent += len(chunk)

        return Stream(self, licence_id, EventKind.SHARING_FILE_STREAM_END, produce, Tally(charge, end - start),
                      still_allowed, charge=charge, length=end - start, uncharge=uncharge)


# A stream source hands over chunks with the byte sizes of the records in them, in order (none for bytes
# that hold no record: a CSV header, a file). Records are counted by these sizes, never by line breaks:
# a text value may hold line breaks, and a CSV record with one spans several lines.
Write = Callable[[bytes, Sequence[int]], Awaitable[None]]


class Transport(Protocol):
    """How a stream reaches its client (an HTTP response): the HTTP layer implements it. A stream that
    is not complete never calls `end`: the HTTP layer then closes the connection without the last
    chunk, which every client reports as an error."""

    gone: asyncio.Event  # set when the client has left

    async def start(self) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self) -> None: ...


class StreamCut(Exception):
    """Raised by a stream's producer that must stop before what is left: the stream ends there, as an
    error, with this reason in its stream-end event (its status was sent with its first byte)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stream:
    """One streamed delivery, from the authorisation event before its first byte to its stream-end event.

    It reserves `reserved` of the licence's usage while it runs (a stream with no licence, an evidence
    bundle, meters nothing). With `hard` (an export under a hard
    quota) it leases more as it goes, a chunk's worth at a time (the lease rounds up to a share), and
    stops at the record boundary where the quota is reached, saying so. With `charge` (a file) those
    records are billed when any byte left, and `complete` means all `length` bytes did.

    Access is enforced while it runs, not only when it starts: every `GUARD_SECONDS` it asks
    `still_allowed` (the snapshot, which LISTEN/NOTIFY keeps current on every instance), and a key
    revoked, a licence suspended, narrowed or expired, or the gateway stopping, stops it. A stream ends
    cleanly only when it is complete; cut for any reason (revocation, quota, a failed read, shutdown)
    it ends as an error, so no client mistakes a cut stream for a whole file. Whatever ends it, what
    was handed to the transport is settled and recorded, with the reason it stopped: a client gone
    midway is metered for what it got. Before more than PROGRESS_BYTES or PROGRESS_RECORDS leave
    unmetered, and before each new lease, a progress event commits what was sent so far.
    """

    def __init__(self, service: Deliveries, licence_id: uuid.UUID | None, end_kind: EventKind,
                 produce: Callable[[Write, Callable[[], bool]], Awaitable[None]], reserved: Tally,
                 still_allowed: Callable[[], str | None], *, hard: Licence | None = None,
                 charge: int | None = None, length: int | None = None,
                 uncharge: Callable[[], None] | None = None) -> None:
        self.service, self.licence_id, self.end_kind, self.produce = service, licence_id, end_kind, produce
        self.reserved, self.still_allowed, self.hard = Tally(reserved.records, reserved.bytes), still_allowed, hard
        self.charge, self.length, self.uncharge = charge, length, uncharge
        self.progress_kind = _PROGRESS_KINDS.get(end_kind)

    def delivered(self, sent: Tally) -> int:
        """The records a stream that handed over `sent` has delivered (a file: its charge, once a byte left)."""
        if self.charge is None:
            return sent.records
        return self.charge if sent.bytes else 0

    async def run(self, authorisation: AuditEvent, transport: Transport) -> None:
        writer, reserved = self.service.writer, self.reserved
        # Reserve before the first await: concurrent deliveries of this licence see it.
        self._count(reserved.records, reserved.bytes)
        try:
            await writer.commit(authorisation)
        except BaseException:
            self._count(-reserved.records, -reserved.bytes)
            if self.uncharge is not None:
                self.uncharge()
            raise
        digest = hashlib.sha256()
        sent, metered = Tally(), Tally()
        cut = False
        stopped_because: str | None = None

        def stopped() -> bool:
            return cut or stopped_because is not None or transport.gone.is_set()

        async def record_progress() -> None:
            """Commit what was sent so far: a process killed after this leaves it metered."""
            records = self.delivered(sent)
            if self.progress_kind is None or (records, sent.bytes) == (metered.records, metered.bytes):
                return  # nothing metered (an evidence bundle), or nothing new
            await writer.commit(self._event(authorisation, self.progress_kind, records, sent.bytes,
                                            digest.copy().hexdigest(), False, None, metered))
            metered.records, metered.bytes = records, sent.bytes

        async def write(chunk: bytes, sizes: Sequence[int]) -> None:
            nonlocal cut, stopped_because
            if stopped():
                return
            # Asked again before each chunk, not only by the guard: no chunk leaves after the snapshot
            # learnt that what it carries may not (a withdrawn version's records above all).
            reason = self.still_allowed()
            if reason is not None:
                stopped_because = reason
                return
            count = len(sizes)
            part = chunk
            if self.hard is not None:
                await self._make_room(count, len(chunk), sent, record_progress)
                part, count = _within(chunk, sizes, self._limits(), sent)
            if part:
                if (sent.bytes - metered.bytes + len(part) > PROGRESS_BYTES
                        or sent.records - metered.records + count > PROGRESS_RECORDS):
                    await record_progress()
                await transport.write(part)
                # Counted once handed to the server: a client gone midway is metered for what it got.
                digest.update(part)
                sent.records += count
                sent.bytes += len(part)
            cut = len(part) < len(chunk)

        async def guard(producing: asyncio.Task[None]) -> None:
            nonlocal stopped_because
            while not producing.done():
                await asyncio.sleep(GUARD_SECONDS)
                reason = self.still_allowed()
                if reason is not None:
                    stopped_because = reason
                    producing.cancel()  # also when it waits on a slow client's socket
                    return

        await transport.start()
        producing = asyncio.create_task(self.produce(write, stopped))
        guarding = asyncio.create_task(guard(producing))
        try:
            await producing
        except asyncio.CancelledError:
            if stopped_because is None:
                stopped_because = "the gateway stopped the delivery (shutting down)"
                raise
        except StreamCut as exc:
            stopped_because = exc.reason
        except AuditUnavailable:
            stopped_because = "the audit log could not record the delivery's progress"
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ServiceUnavailable):
            stopped_because = "the quota could not be leased or the records read (the database did not answer)"
        except Exception as exc:  # noqa: BLE001 - whatever broke the read, the stream records it and ends as an error
            stopped_because = f"the delivery failed: {type(exc).__name__}"
        finally:
            guarding.cancel()
            producing.cancel()
            if cut and stopped_because is None:
                stopped_because = "the licence's monthly quota was reached"
            await self._finish(authorisation, transport, sent, digest.hexdigest(), stopped_because, cut, metered)

    def _count(self, records: int, byte_count: int) -> None:
        if self.licence_id is not None:
            self.service.usage.count(self.licence_id, records, byte_count)

    def _limits(self) -> tuple[int | None, int | None]:
        """How far the stream may go under its hard quotas: what it has reserved of the lease."""
        assert self.hard is not None
        return (self.reserved.records if self.hard.records_quota_hard and self.hard.records_per_month is not None
                else None,
                self.reserved.bytes if self.hard.bytes_quota_hard and self.hard.bytes_per_month is not None else None)

    async def _make_room(self, records: int, byte_count: int, sent: Tally,
                         record_progress: Callable[[], Awaitable[None]]) -> None:
        """Reserve enough of the lease for the next chunk, leasing more when this instance holds too
        little; what the grant cannot give is left out, and the stream is cut at the quota."""
        assert self.hard is not None
        records_limit, bytes_limit = self._limits()
        need = Tally(0 if records_limit is None else max(sent.records + records - records_limit, 0),
                     0 if bytes_limit is None else max(sent.bytes + byte_count - bytes_limit, 0))
        if not need.records and not need.bytes:
            return
        await record_progress()  # what was sent is metered before more is leased
        book = self.service.usage
        room = book.room(self.hard.id)
        if room.records < need.records or room.bytes < need.bytes:
            await book.lease(self.service.pool, self.hard, need.records, need.bytes)
            room = book.room(self.hard.id)
        # Synchronous from here: the reservation is taken before another delivery can see the room.
        take = Tally(min(need.records, max(room.records, 0)), min(need.bytes, max(room.bytes, 0)))
        book.count(self.hard.id, take.records, take.bytes)
        self.reserved.records += take.records
        self.reserved.bytes += take.bytes

    def _event(self, authorisation: AuditEvent, kind: EventKind, records: int, byte_count: int, sha256: str,
               complete: bool, reason: str | None, metered: Tally, **detail: Any) -> AuditEvent:
        return replace(authorisation, kind=kind, event_id=new_event_id(), at=times.now(), reason=reason,
                       records=records, bytes=byte_count, sha256=sha256, complete=complete,
                       detail={"authorised_by": str(authorisation.event_id), **detail, **(authorisation.detail or {})},
                       metered_before=(metered.records, metered.bytes))

    async def _finish(self, authorisation: AuditEvent, transport: Transport, sent: Tally, sha256: str,
                      stopped_because: str | None, quota_cut: bool, metered: Tally) -> None:
        """End the response (cleanly only when complete), then settle usage and leases and record the end."""
        gone = transport.gone.is_set()
        if gone and stopped_because is None:
            stopped_because = "the client disconnected"
        delivered = self.delivered(sent)
        complete = stopped_because is None and (self.length is None or sent.bytes == self.length)
        try:
            if complete:
                await transport.end()
        finally:
            book = self.service.usage
            if self.charge and not sent.bytes and self.uncharge is not None:
                self.uncharge()
            self._count(delivered - self.reserved.records, sent.bytes - self.reserved.bytes)
            self.service.writer.submit(self._event(authorisation, self.end_kind, delivered, sent.bytes, sha256,
                                                   complete, stopped_because, metered,
                                                   **({"quota_cut": True} if quota_cut else {})))
            if self.hard is not None:
                # Return what this instance leased for the export and did not use (a share at most).
                try:
                    await book.give_back(self.service.pool, [self.hard.id])
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    pass  # returned when idle, or when the log ends


_PROGRESS_KINDS = {EventKind.RECORDS_STREAM_END: EventKind.RECORDS_STREAM_PROGRESS,
                   EventKind.SHARING_FILE_STREAM_END: EventKind.SHARING_FILE_STREAM_PROGRESS}


def _member_credential(snapshot: Snapshot, credential_id: uuid.UUID) -> Credential | None:
    """An API key, or the member credential view of an OAuth client (whose short-lived access tokens
    asked for the URL: the URL stays bound to the client, and dies with it)."""
    found = snapshot.credentials.get(credential_id)
    if found is None:
        client = snapshot.oauth_clients.get(credential_id)
        found = client.credential if client is not None else None
    return found


def _within(chunk: bytes, sizes: Sequence[int], limits: tuple[int | None, int | None],
            sent: Tally) -> tuple[bytes, int]:
    """The part of `chunk` (whole records, of `sizes` bytes each) that fits in the (records, bytes) limits
    after what was sent, and how many records it holds."""
    records_limit, bytes_limit = limits
    count = len(sizes)
    room_records = count if records_limit is None else max(0, min(count, records_limit - sent.records))
    room_bytes = len(chunk) if bytes_limit is None else bytes_limit - sent.bytes
    if room_records >= count and room_bytes >= len(chunk):
        return chunk, count
    ends = list(itertools.accumulate(sizes[:room_records]))
    kept = bisect.bisect_right(ends, room_bytes)
    return chunk[:ends[kept - 1] if kept else 0], kept


def _encoded(page: records.Page, scope: DeliveryScope, encoding: TextEncoding, where: str) -> records.Page:
    """A page as delivered in the encoding asked for, or 406 naming the record that cannot be."""
    try:
        return records.encoded(page, scope, encoding.charset)
    except records.Unencodable as exc:
        at = exc.position
        raise NotAcceptable(exc.reason(encoding.charset, exc.index + 1, where), record=exc.index + 1,
                            partition=at.partition, version=at.version, column=exc.column,
                            code_point=f"U+{ord(exc.character):04X}") from None


def _estimated_bytes(dataset: Dataset, count: int) -> int:
    """Bytes `count` records may take: twice the stored average, plus room for a CSV header."""
    stored = sum(v.bytes for v in dataset.versions) / max(1, sum(v.records for v in dataset.versions))
    return int(count * stored * 2) + 4096


def _one_version(dataset: Dataset, asked: RecordsRequest) -> int:
    """The version a records request named with version=N: published and live, or why not."""
    assert asked.version is not None
    if asked.since_version:
        raise BadRequest("give version (exactly one version) or since_version (the versions after it), not both")
    found = dataset.version(asked.version)
    if found is None:
        raise BadRequest(f"version {asked.version} does not exist; the latest is {dataset.latest_version}")
    if not found.live:
        raise withdrawn(found, "read the dataset without version= for what it holds now")
    return asked.version


def _cursor_state(scope: DeliveryScope, fmt: Format, limit: int, position: Position) -> dict[str, Any]:
    # Small whatever the scope: its bounds, not its versions, and the versions between them already
    # withdrawn (usually none), so that a later withdrawal is told apart on resume.
    withdrawn_then = [v.version for v in scope.dataset.withdrawn_between(scope.since_version, scope.upto_version)]
    return {"l": str(scope.licence.id), "p": list(scope.partitions), "s": scope.since_version, "u": scope.upto_version,
            "x": scope.exact, "w": withdrawn_then, "f": fmt, "n": limit,
            "at": [position.partition, position.version, position.seq]}


def _well_formed(state: dict[str, Any]) -> bool:
    """The shape _cursor_state writes. The MAC proves that a gateway wrote the cursor, not which release
    (nor that the key never leaked): a cursor of another shape is invalid, not a server error."""
    p, s, u, exact, w, f, n, at = (state.get(k) for k in ("p", "s", "u", "x", "w", "f", "n", "at"))
    return (isinstance(p, list) and all(isinstance(x, str) for x in p) and f in ("ndjson", "csv")
            and type(exact) is bool and isinstance(w, list) and all(type(v) is int for v in w)
            and all(type(v) is int for v in (s, u, n)) and 0 <= s <= u < 2**31 and 1 <= n <= MAX_PAGE
            and isinstance(at, list) and len(at) == 3 and isinstance(at[0], str)
            and all(type(v) is int for v in at[1:]) and 0 <= at[1] < 2**31 and -1 <= at[2] < 2**63)
