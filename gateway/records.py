"""Reading a delivery scope's records from PostgreSQL: the scope, pages, and exports as runs of pages.

PostgreSQL renders the records: NDJSON lines are `(data - <columns outside the licence>)::text` and
CSV fields are quoted by `csv_field` (migration 0007) over the licensed columns only, so records are
never decoded and re-encoded in Python. A text value may hold line breaks (NDJSON escapes them; a CSV
field holding one is quoted and spans lines), so a page carries each record's size and deliveries count
records by those sizes, never by line breaks.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import asyncpg

from gateway import database
from gateway.datasets import Dataset
from gateway.licences import Licence

Format = Literal["ndjson", "csv"]
MEDIA_TYPES: dict[Format, str] = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}

@dataclass(frozen=True, slots=True)
class DeliveryScope:
    """Exactly what one request may receive: a licence's partitions and columns, and an explicit set of
    versions (`versions`, ascending: the deliverable ones within what was asked). What was asked is kept
    too, for the cursor: versions after `since_version` up to `upto_version` (pinned when the first page
    was read), or `upto_version` alone when `exact` (the records route's version=N)."""

    dataset: Dataset
    licence: Licence
    partitions: tuple[str, ...]
    columns: tuple[str, ...]
    since_version: int
    upto_version: int
    exact: bool
    versions: tuple[int, ...]

    @property
    def excluded_columns(self) -> list[str]:
        return [c for c in self.dataset.column_names if c not in self.columns]


@dataclass(frozen=True, slots=True)
class Position:
    """Keyset position: the last record delivered, in (partition, version, seq) order."""

    partition: str
    version: int
    seq: int


@dataclass(frozen=True, slots=True)
class Page:
    """Up to `limit` records after a position, rendered by PostgreSQL as one body, with each record's
    size and position, and whether more follow. A handful of objects whatever the page's length: a
    page cache full of them costs the garbage collector next to nothing."""

    body: bytes
    sizes: list[int]
    versions: list[int]
    seqs: list[int]
    spans: list[tuple[int, str]]  # (index of the first record, its partition), per partition in the page
    more: bool

    def __len__(self) -> int:
        return len(self.sizes)

    def position(self, index: int) -> Position:
        partition = next(name for first, name in reversed(self.spans) if first <= index)
        return Position(partition, self.versions[index], self.seqs[index])

    def fitting(self, budget: int) -> int:
        """How many of the first records fit in `budget` bytes."""
        return bisect.bisect_right(list(itertools.accumulate(self.sizes)), budget)

    def prefix(self, count: int) -> bytes:
        return self.body[:sum(self.sizes[:count])]


# One partition's part of a page as one row: the records in keyset order, each rendered as a line,
# aggregated into a single value (no row per record to decode in Python).
_PAGE_SQL = (
    "SELECT convert_to(string_agg(line, '' ORDER BY version, seq), 'UTF8') AS body, "
    "array_agg(octet_length(line) ORDER BY version, seq) AS sizes, "
    "array_agg(version ORDER BY version, seq) AS versions, array_agg(seq ORDER BY version, seq) AS seqs "
    "FROM (SELECT version, seq, {render} || E'\\n' AS line FROM records "
    "WHERE dataset_id = $1 AND partition = $2 AND version BETWEEN $3 AND $4 AND version = ANY($5::int[]) "
    "AND (version, seq) > ($6, $7) ORDER BY version, seq LIMIT $8) AS page")


async def page(conn: asyncpg.Connection, scope: DeliveryScope, fmt: Format, after: Position | None,
               limit: int) -> Page:
    """Up to `limit` records of the scope after `after`, in (partition, version, seq) order."""
    if not scope.versions:
        return Page(b"", [], [], [], [], False)
    if fmt == "ndjson":
        sql, extra = _PAGE_SQL.format(render="(data - $9::text[])::text"), [scope.excluded_columns]
    else:
        # csv_field (migration 0007) quotes as COPY's CSV writer does, so pages and streams are
        # byte-identical. The column names come from the dataset's validated declaration ([a-z][a-z0-9_]*).
        render = " || ',' || ".join(f"csv_field(data ->> '{c}')" for c in scope.columns)
        sql, extra = _PAGE_SQL.format(render=render), []
    bodies: list[bytes] = []
    sizes: list[int] = []
    versions: list[int] = []
    seqs: list[int] = []
    spans: list[tuple[int, str]] = []
    for partition in scope.partitions:
        if after is not None and partition < after.partition:
            continue
        version, seq = (after.version, after.seq) if after is not None and partition == after.partition else (0, -1)
        room = limit - len(sizes)
        # One record more than there is room for says whether more follow.
        # The bounds keep the primary key's order usable (a replace version skips what it replaced);
        # the set leaves out withdrawn versions between them.
        row = await conn.fetchrow(sql, scope.dataset.id, partition, scope.versions[0], scope.versions[-1],
                                  list(scope.versions), version, seq, room + 1, *extra)
        if row["body"] is None:
            continue
        more = len(row["sizes"]) > room
        taken = row["sizes"][:room]
        if taken:
            spans.append((len(sizes), partition))
            bodies.append(row["body"][:sum(taken)] if more else row["body"])
            sizes += taken
            versions += row["versions"][:room]
            seqs += row["seqs"][:room]
        if more:
            return Page(b"".join(bodies), sizes, versions, seqs, spans, True)
    return Page(b"".join(bodies), sizes, versions, seqs, spans, False)


async def chunks(pool: asyncpg.Pool, scope: DeliveryScope, fmt: Format, size: int, *,
                 read_seconds: float) -> AsyncIterator[Page]:
    """Every record of the scope in keyset order, as pages of up to `size` records, each read on a
    connection held for that one query only. A delivery waiting on a slow client therefore holds no
    connection, no statement runs long enough to meet the pool's command timeout, and a stream can stop
    between two pages at no cost (cancelling a long COPY mid-way can stall its connection). A chunk not
    read within `read_seconds` raises DatabaseUnavailable (its connection closed, not pooled); the
    stream then ends as an error, recorded, never as a clean end."""
    after: Position | None = None
    while True:
        chunk = await database.within(pool, read_seconds, page, scope, fmt, after, size)
        if len(chunk):
            yield chunk
        if not chunk.more:
            return
        after = chunk.position(len(chunk) - 1)


def csv_header(scope: DeliveryScope) -> bytes:
    return (",".join(scope.columns) + "\n").encode()
