"""Reading a delivery scope's records from PostgreSQL: the scope, pages, and exports as runs of pages.

PostgreSQL renders the records, over the licensed columns only and in their declared order: NDJSON
lines are objects whose values are jsonb's own text, CSV fields are quoted by `csv_field` (migration
0007), and a `number` keeps its form by `number_text` (migration 0017: an integer as an integer, a
float as its shortest text). Records are never decoded and re-encoded in Python, but for CSV in CP932,
asked for by Japanese Excel users. A text value may hold line breaks (NDJSON escapes them; a CSV field
holding one is quoted and spans lines), so a page carries each record's size and deliveries count
records by those sizes, never by line breaks.
"""

from __future__ import annotations

import bisect
import csv
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import asyncpg

from gateway import database
from gateway.columns import Column
from gateway.datasets import Dataset
from gateway.licences import Licence

Format = Literal["ndjson", "csv"]
Charset = Literal["utf-8", "cp932"]
CHARSETS: tuple[Charset, ...] = ("utf-8", "cp932")
# CP932 under its IANA name; Python's codec for it is "cp932" ("shift_jis" lacks its extensions).
_CHARSET_NAMES: dict[Charset, str] = {"utf-8": "utf-8", "cp932": "Windows-31J"}
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class TextEncoding:
    """How a CSV delivery's text is encoded: UTF-8, with a byte order mark before the header when `bom`
    (which Excel needs to read the file as UTF-8), or CP932, Japanese Excel's own encoding. NDJSON is
    always plain UTF-8 (RFC 8259)."""

    charset: Charset = "utf-8"
    bom: bool = False

    def media_type(self, fmt: Format) -> str:
        if fmt == "ndjson":
            return "application/x-ndjson"
        return f"text/csv; charset={_CHARSET_NAMES[self.charset]}"


UTF8 = TextEncoding()


class Unencodable(Exception):
    """A record holds a character its delivery's charset cannot encode (or not exactly). `encoded` is
    the records of the page before it, in that charset, and `sizes` theirs; `index` is its place in the
    page."""

    def __init__(self, page: Page, index: int, parts: list[bytes], column: str, character: str) -> None:
        self.index, self.column, self.character = index, column, character
        self.encoded, self.sizes = b"".join(parts), [len(part) for part in parts]
        self.position = page.position(index)
        super().__init__(f"record {index} cannot be encoded")

    def reason(self, charset: Charset, ordinal: int, where: str) -> str:
        """Why the record cannot be delivered, naming it as the member can find it."""
        at = self.position
        return (f"record {ordinal:,} of {where} (partition {at.partition!r}, version {at.version}) holds "
                f"{self.character!r} (U+{ord(self.character):04X}) in column {self.column!r}, which "
                f"{charset.upper()} cannot encode exactly; ask for charset=utf-8 instead (with bom=true for Excel)")


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
# aggregated into a single value (no row per record to decode in Python). The deliverable versions are
# a filter (array_position), not `version = ANY(...)`: PostgreSQL 17 and later make that an index
# search array, and the scan then starts at the partition's first record instead of at the keyset
# (version, seq), which made an export's pages cost more the further they were (5.4 s instead of 0.9 s
# of PostgreSQL for a 1,000,000-record export).
_PAGE_SQL = (
    "SELECT convert_to(string_agg(line, '' ORDER BY version, seq), 'UTF8') AS body, "
    "array_agg(octet_length(line) ORDER BY version, seq) AS sizes, "
    "array_agg(version ORDER BY version, seq) AS versions, array_agg(seq ORDER BY version, seq) AS seqs "
    "FROM (SELECT version, seq, {render} || E'\\n' AS line FROM records "
    "WHERE dataset_id = $1 AND partition = $2 AND version BETWEEN $3 AND $4 AND array_position($5::int[], version) IS NOT NULL "
    "AND (version, seq) > ($6, $7) ORDER BY version, seq LIMIT $8) AS page")


def _render(scope: DeliveryScope, fmt: Format) -> str:
    """The SQL text of one record as a line without its newline, over the licensed columns in declared
    order. The column names come from the dataset's validated declaration ([a-z][a-z0-9_]*), safe
    inside quotes; records hold every declared column (uploads write nulls), the COALESCEs aside."""
    columns = [c for c in scope.dataset.columns if c.name in scope.columns]
    if fmt == "csv":
        # csv_field (migration 0007) quotes as COPY's CSV writer does. Only text can hold what needs
        # quoting, or be empty: the other types are stored in canonical forms (no comma, quote or line
        # break), so they are written as they are, NULL as an empty field, as COPY writes them too.
        return " || ',' || ".join(f"csv_field({_text(c)})" if c.type == "text" else f"COALESCE({_text(c)}, '')"
                                  for c in columns)
    # Spaced as jsonb's own text ({"a": 1, "b": 2}), in declared order rather than jsonb's key order
    # (shortest key first). The text of a jsonb value is its JSON; a number's is number_text.
    pieces = [f"'{'{' if i == 0 else ', '}\"{c.name}\": ' || "
              + (f"COALESCE({_text(c)}, 'null')" if c.type == "number" else
                 f"COALESCE((data -> '{c.name}')::text, 'null')")
              for i, c in enumerate(columns)]
    return " || ".join(pieces) + " || '}'" if pieces else "'{}'"


def _text(column: Column) -> str:
    """A column's value as SQL text, NULL for null: a number in the form it was given (number_text)."""
    if column.type == "number":
        return f"number_text(data -> '{column.name}')"
    return f"data ->> '{column.name}'"


async def page(conn: asyncpg.Connection, scope: DeliveryScope, fmt: Format, after: Position | None,
               limit: int) -> Page:
    """Up to `limit` records of the scope after `after`, in (partition, version, seq) order."""
    if not scope.versions:
        return Page(b"", [], [], [], [], False)
    sql = _PAGE_SQL.format(render=_render(scope, fmt))
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
                                  list(scope.versions), version, seq, room + 1)
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
                 read_seconds: float, first: Page | None = None) -> AsyncIterator[Page]:
    """Every record of the scope in keyset order, as pages of up to `size` records, each read on a
    connection held for that one query only. A delivery waiting on a slow client therefore holds no
    connection, no statement runs long enough to meet the pool's command timeout, and a stream can stop
    between two pages at no cost (cancelling a long COPY mid-way can stall its connection). A chunk not
    read within `read_seconds` raises DatabaseUnavailable (its connection closed, not pooled); the
    stream then ends as an error, recorded, never as a clean end. `first`: the first chunk, already read."""
    after: Position | None = None
    while True:
        if first is None:
            chunk = await database.within(pool, read_seconds, page, scope, fmt, after, size)
        else:
            chunk, first = first, None
        if len(chunk):
            yield chunk
        if not chunk.more:
            return
        after = chunk.position(len(chunk) - 1)


def csv_header(scope: DeliveryScope, encoding: TextEncoding) -> bytes:
    """The header line of a CSV delivery, after the byte order mark when one is asked for. Column names
    are ASCII, the same bytes in either charset."""
    return (_BOM if encoding.bom else b"") + (",".join(scope.columns) + "\n").encode()


def encoded(page: Page, scope: DeliveryScope, charset: Charset) -> Page:
    """The page in `charset`, each record's size counted in it (what metering and quotas count);
    Unencodable at the first record holding a character the charset cannot hold exactly, never a
    substitute."""
    if charset == "utf-8" or not page.sizes:
        return page
    parts: list[bytes] = []
    offset = 0
    for index, size in enumerate(page.sizes):
        text = page.body[offset:offset + size].decode()
        offset += size
        part, inexact = _exactly(text, charset)
        if inexact is not None:
            raise Unencodable(page, index, parts, _column_at(text, charset, scope.columns),
                              text[inexact])
        parts.append(part)
    return Page(b"".join(parts), [len(p) for p in parts], page.versions, page.seqs, page.spans, page.more)


def _exactly(text: str, charset: Charset) -> tuple[bytes, int | None]:
    """`text` in `charset`, and where its first character is that the charset cannot hold (None:
    none). Python's cp932 also maps six characters one way (〜 U+301C comes back as ～ U+FF5E, − U+2212
    as － U+FF0D, ¢ £ ¬ ‖ likewise): a member would read another character than the vendor published."""
    try:
        part = text.encode(charset)
    except UnicodeEncodeError as exc:
        return b"", exc.start
    back = part.decode(charset)
    if back == text:
        return part, None
    # Each one-way character is one character either way, so the texts align up to the first.
    return b"", next((at for at, (given, read) in enumerate(zip(text, back, strict=False)) if given != read),
                     min(len(text), len(back)))


def _column_at(line: str, charset: Charset, columns: tuple[str, ...]) -> str:
    """The column of a CSV record's first field that `charset` cannot hold exactly: the field of the
    record's first such character."""
    for name, field in zip(columns, next(csv.reader([line])), strict=True):
        if _exactly(field, charset)[1] is not None:
            return name
    raise AssertionError("a record the charset cannot hold has a field it cannot hold")
