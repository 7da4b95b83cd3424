"""Uploads: a vendor's CSV or NDJSON body, checked against the declared columns while it streams in.

`parse_upload` turns byte chunks into batches of (partition, record JSON) for COPY. It holds one chunk
and one unfinished line at a time, so memory stays bounded whatever the upload's size, and it raises
UploadRejected at the first bad line so that the caller rolls the whole version back.

The per-row path is the hot one (hundreds of thousands of rows a second): each column gets its
converter once, before the first row, and a row is one list comprehension over them. A column's declared
spellings (gateway/columns.py: TRUE/FALSE, %Y/%m/%d, 1,234, a time zone) are part of its converter.

Text may hold line breaks and TABs: a CSV record then runs over several lines inside a quoted field
(RFC 4180), and an error in it names the line where the record starts. Blank lines at the end of an
upload are ignored; a blank line with records after it is refused.
"""

from __future__ import annotations

import csv
import json
import math
import re
import zoneinfo
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from itertools import repeat
from typing import Any, Literal

import orjson

from gateway.columns import Column, ColumnType, format_tokens

UploadFormat = Literal["csv", "ndjson"]

MAX_TEXT_CHARS = 10_000
MAX_PARTITION_CHARS = 200
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_BOM = b"\xef\xbb\xbf"

# Text may hold LF and TAB (NDJSON escapes them, CSV quotes them; deliveries count records, not lines),
# but no other control character: a lone CR ends a line for some readers and not for others, and
# jsonb cannot hold U+0000.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_PARTITION_CONTROL = re.compile("[\t\n]")
_CHECKED_PARTITIONS = 4096
# ASCII digits only: int() and float() also take " 1", "1_000", "١٢" and "nan", which no column should.
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The subset of ISO 8601 that says exactly which instant it means: a full date, a time to the minute at
# least and to the microsecond at most (the precision of PostgreSQL and of datetime), and a zone.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                        r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)")
# The same with the zone left out, for a column that declares the time zone of zone-less timestamps.
_TIMESTAMP_ZONE_OPTIONAL = re.compile(_TIMESTAMP.pattern + "?")
_TIMESTAMP_CACHE_SIZE = 4096

Convert = Callable[[Any], Any]
StoredNumber = int | float | orjson.Fragment  # a number as the record's JSON will hold it (_stored_float)
Row = tuple[str, str]


class UploadRejected(Exception):
    """A bad upload, reported at its first bad line; the HTTP layer answers 422 and the caller rolls back."""

    def __init__(self, line: int, column: str | None, problem: str, *, last_line: int | None = None) -> None:
        self.line = line
        self.column = column
        self.problem = problem
        # A record over several lines is reported at the line where it starts, saying how far it went.
        where = f"line {line}"
        if last_line is not None and last_line > line:
            where += f" (a record over lines {line}-{last_line})"
        self.detail = f"{where}, column {column}: {problem}" if column else f"{where}: {problem}"
        super().__init__(self.detail)


class _Invalid(Exception):
    """A bad value, raised by a converter; the line loop knows the line and turns it into UploadRejected."""

    def __init__(self, column: str, problem: str) -> None:
        self.column = column
        self.problem = problem


async def parse_upload(chunks: AsyncIterable[bytes], fmt: UploadFormat, columns: Sequence[Column],
                       partition_column: str, *, batch_rows: int = 5000,
                       max_line_bytes: int = 1 << 20) -> AsyncIterator[list[Row]]:
    """Yields batches of (partition value, record as compact JSON text) in upload order.

    Every line of a batch is checked before the batch is yielded; batches yielded before a rejection
    are the caller's to roll back.
    """
    records = _FORMATS[fmt](columns, partition_column, max_line_bytes)
    lines = _Lines(max_line_bytes)
    batch: list[Row] = []
    produced = 0
    async for chunk in chunks:
        block = lines.feed(chunk)
        rows = records.convert(block.lines, block.first)
        # Lines before a bad byte sequence or an overlong line are checked first, so the error reported
        # is always the first in the upload, however it was cut into chunks.
        if block.error is not None:
            raise block.error
        produced += len(rows)
        batch += rows
        while len(batch) >= batch_rows:
            yield batch[:batch_rows]
            del batch[:batch_rows]
    block = lines.end()
    rows = records.convert(block.lines, block.first)
    if block.error is not None:
        raise block.error
    records.finish()
    produced += len(rows)
    batch += rows
    if not produced:
        raise UploadRejected(lines.next_line, None, "no records: the upload is empty"
                             + (" but for its header" if fmt == "csv" and lines.next_line > 1 else ""))
    if batch:
        yield batch


@dataclass(slots=True)
class _Block:
    lines: list[str]
    first: int  # line number of lines[0]
    error: UploadRejected | None = None  # a problem right after the last of `lines`


class _Lines:
    """Cuts byte chunks into decoded lines, holding back the unfinished last one."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.next_line = 1

    def feed(self, chunk: bytes) -> _Block:
        cut = chunk.rfind(b"\n") + 1
        if cut:
            # A list of pieces rather than `pending + chunk`, which would be quadratic in tiny chunks.
            block = self._split(b"".join([*self._pending, chunk[:cut]]))
            self._pending = []
            self._pending_bytes = 0
        else:
            block = _Block([], self.next_line)
        if cut < len(chunk):
            self._pending.append(chunk[cut:])
            self._pending_bytes += len(chunk) - cut
            if self._pending_bytes > self._max and block.error is None:
                block.error = self._too_long(self.next_line)
        return block

    def end(self) -> _Block:
        return self._split(b"".join(self._pending)) if self._pending else _Block([], self.next_line)

    def _split(self, data: bytes) -> _Block:
        """Lines of `data`, which ends with a newline unless it is the upload's last line."""
        first = self.next_line
        error = None
        # Line lengths count raw bytes (a BOM and a CR included), as the pending check above does.
        if len(data) > self._max + 1:
            offset = 0
            for index, raw in enumerate(data.split(b"\n")):
                if len(raw) > self._max:
                    data, error = data[:offset], self._too_long(first + index)
                    break
                offset += len(raw) + 1
        if first == 1 and data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            line_start = data.rfind(b"\n", 0, exc.start) + 1
            error = UploadRejected(first + data.count(b"\n", 0, exc.start), None,
                                   f"not valid UTF-8 (byte {exc.start - line_start + 1} of the line); "
                                   "save the file as UTF-8")
            text = data[:line_start].decode()
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            # A lone CR ends a line for some readers and not for others; no value may hold one anyway.
            cr = text.find("\r")
            if cr >= 0:
                error = UploadRejected(first + text.count("\n", 0, cr), None,
                                       "a carriage return (CR) inside the line; lines end with LF or CRLF")
                text = text[:text.rfind("\n", 0, cr) + 1]
        lines = text.split("\n")
        if not lines[-1]:
            lines.pop()  # the newline ending the last line does not start another
        self.next_line = first + len(lines)
        return _Block(lines, first, error)

    def _too_long(self, line: int) -> UploadRejected:
        return UploadRejected(line, None, f"line is longer than {self._max} bytes")


class _Records:
    """What both formats share: the declared columns, turning converted values into a row, and blank lines
    (ignored at the end of an upload, refused before a record)."""

    _BLANK = "empty line; remove blank lines (blank lines at the end of an upload are ignored)"

    def __init__(self, columns: Sequence[Column], partition_column: str, max_record_bytes: int) -> None:
        self._names = tuple(c.name for c in columns)
        self._partition = self._names.index(partition_column)
        self._partition_name = partition_column
        self._max_record_bytes = max_record_bytes
        self._checked: set[str] = set()  # partition values found good (they repeat on most rows)
        self._blank = 0  # the first of the blank lines since the last record (0: none)

    def _row(self, values: list[Any], line: int) -> Row:
        key = values[self._partition]
        if type(key) is not str:
            if key is None:
                raise UploadRejected(line, self._partition_name, "the partition column must have a value")
            key = orjson.dumps(key).decode()
        elif key not in self._checked:
            self._check_partition(key, line)
        return key, orjson.dumps(dict(zip(self._names, values))).decode()

    def _check_partition(self, key: str, line: int) -> None:
        """Licences and Delta Sharing name partitions exactly, so a value that differs from another only by
        spaces (' 関東' beside '関東') would be a partition of its own that no licence of 関東 covers."""
        problem = None
        if not key:
            problem = "the partition column must have a value"
        elif len(key) > MAX_PARTITION_CHARS:
            problem = f"a partition value may have at most {MAX_PARTITION_CHARS} characters"
        elif key[0].isspace() or key[-1].isspace():
            problem = (f"the partition value {_show(key)} starts or ends with a space; remove it (licences name "
                       "partitions exactly, so it would be a partition of its own)")
        elif _PARTITION_CONTROL.search(key):
            problem = f"the partition value {_show(key)} holds a line break or a TAB, which a partition may not"
        if problem is not None:
            raise UploadRejected(line, self._partition_name, problem)
        if len(self._checked) >= _CHECKED_PARTITIONS:
            self._checked.clear()
        self._checked.add(key)

    def _blank_before(self) -> None:
        """A record follows blank lines: the first of them is the error."""
        raise UploadRejected(self._blank, None, self._BLANK)

    def finish(self) -> None:
        """The upload ended: trailing blank lines are ignored."""


class _CsvRecords(_Records):
    def __init__(self, columns: Sequence[Column], partition_column: str, max_record_bytes: int) -> None:
        super().__init__(columns, partition_column, max_record_bytes)
        self._converters = [_CSV_CONVERTERS[c.type](c) for c in columns]
        # (position in the CSV row, converter), in declared order; known once the header is read.
        self._plan: list[tuple[int, Convert]] = []
        # A record whose quoted field was still open at the end of the lines given so far, and its line.
        self._open: list[str] = []
        self._open_first = 0

    def convert(self, lines: list[str], first: int) -> list[Row]:
        if self._open:
            lines, first, self._open = self._open + lines, self._open_first, []
        if not self._plan and lines:
            self._read_header(lines[0])
            lines, first = lines[1:], first + 1
        rows: list[Row] = []
        # Most records are one line each: read as they are, the fast way, up to a record over several
        # lines (or a CSV error), and from that record on with the lines' line breaks given back, which
        # a quoted field holding one needs (csv drops a line end inside a quoted field it is not given).
        at = self._records(lines, first, rows, one_line=True)
        if at is not None:
            self._records(lines[at:], first + at, rows, one_line=False)
        return rows

    def _records(self, lines: list[str], first: int, rows: list[Row], *, one_line: bool) -> int | None:
        """Appends the records of `lines` to `rows`. With `one_line`, stops before the first record over
        several lines, or a CSV error, and says at which of the lines (0-based) it starts."""
        plan, width, row = self._plan, len(self._plan), self._row
        reader = csv.reader(lines if one_line else map(str.__add__, lines, repeat("\n")), strict=True)
        end = 0  # lines read by the records so far
        try:
            for fields in reader:
                start, end = end, reader.line_num
                if end - start > 1 and one_line:
                    return start
                line = first + start  # where the record starts
                if not fields:
                    self._blank = self._blank or line
                    continue
                if self._blank:
                    self._blank_before()
                try:
                    if len(fields) != width:
                        raise UploadRejected(line, None, f"{len(fields)} fields where the header has {width}")
                    try:
                        values = [convert(field) if (field := fields[at]) else None for at, convert in plan]
                    except _Invalid as exc:
                        raise UploadRejected(line, exc.column, exc.problem) from None
                    rows.append(row(values, line))
                except UploadRejected as exc:
                    if end - start == 1:
                        raise
                    raise UploadRejected(line, exc.column, exc.problem, last_line=first + end - 1) from None
        except csv.Error as exc:
            if one_line:
                return end
            rest = lines[end:]
            # Out of lines inside a quoted field: the record goes on in the lines still to come. (A bad
            # quote on the last line may look the same; it is found once the record is read again whole.)
            if reader.line_num == len(lines) and sum(text.count('"') for text in rest) % 2:
                self._keep_open(rest, first + end)
            else:
                raise UploadRejected(first + end, None, _malformed(str(exc)),
                                     last_line=first + reader.line_num - 1) from None
        return None

    def _keep_open(self, lines: list[str], first: int) -> None:
        if sum(len(text.encode()) + 1 for text in lines) > self._max_record_bytes:
            raise UploadRejected(first, None, f"the record starting on this line runs on for more than "
                                 f"{self._max_record_bytes} bytes; is a quoted field left open?")
        self._open, self._open_first = lines, first

    def finish(self) -> None:
        if self._open:
            lines, first, self._open = self._open, self._open_first, []
            try:
                for _ in csv.reader(map(str.__add__, lines, repeat("\n")), strict=True):
                    pass
            except csv.Error as exc:
                reason = "a quoted field is not closed" if str(exc) == "unexpected end of data" else str(exc)
                raise UploadRejected(first, None, _malformed(reason), last_line=first + len(lines) - 1) from None
            raise AssertionError("a record kept open parses whole")  # pragma: no cover

    def _read_header(self, text: str) -> None:
        try:
            header = next(csv.reader([text], strict=True), [])
        except csv.Error as exc:
            raise UploadRejected(1, None, _malformed(str(exc))) from None
        counts = Counter(header)
        missing = [n for n in self._names if n not in counts]
        unknown = [n for n in counts if n not in self._names]
        repeated = [n for n, count in counts.items() if count > 1]
        if missing or unknown or repeated:
            found = [f"{what} {_listing(names)}" for what, names in
                     (("missing", missing), ("unknown", unknown), ("repeated", repeated)) if names]
            raise UploadRejected(1, None, "the header must name each declared column once, in any order "
                                 f"({', '.join(self._names)}): {'; '.join(found)}")
        self._plan = [(header.index(name), convert)
                      for name, convert in zip(self._names, self._converters, strict=True)]


def _listing(names: list[str]) -> str:
    """Names for a message, cut short: a bad header line may hold thousands."""
    shown = ", ".join(_show(n) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _malformed(reason: str) -> str:
    return (f"malformed CSV ({reason}); quote a field that holds a comma, a quote or a line break, and double "
            'the quotes inside it ("say ""hi""")')


class _NdjsonRecords(_Records):
    _BLANK = "empty line; NDJSON has one JSON object on every line (blank lines at the end are ignored)"

    def __init__(self, columns: Sequence[Column], partition_column: str, max_record_bytes: int) -> None:
        super().__init__(columns, partition_column, max_record_bytes)
        self._known = frozenset(self._names)
        self._plan = [(c.name, _JSON_CONVERTERS[c.type](c)) for c in columns]
        # Quotes a line without a repeated key has at least (see convert), but for two per null value.
        self._quotes = 2 * (len(self._names) + sum(c.type in _JSON_STRING_TYPES for c in columns)) + 1

    def convert(self, lines: list[str], first: int) -> list[Row]:
        rows: list[Row] = []
        plan, known, width, row, quotes = self._plan, self._known, len(self._plan), self._row, self._quotes
        for line, text in enumerate(lines, first):
            if not text:
                self._blank = self._blank or line
                continue
            if self._blank:
                self._blank_before()
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise UploadRejected(line, None,
                                     f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
            if type(record) is not dict:
                raise UploadRejected(line, None, f"expected a JSON object, not {_show(record)}")
            if record.keys() != known:
                self._wrong_keys(record, text, line)
            try:
                values = [None if (value := record[name]) is None else convert(value) for name, convert in plan]
            except _Invalid as exc:
                self._repeated_key(text, line)  # the repeat is the mistake to report, if there is one
                raise UploadRejected(line, exc.column, exc.problem) from None
            # orjson keeps the last of repeated keys. Every '"' of a line opens or closes a string or is
            # escaped in one, so a line has 2 per key and per string value, and more only for escaped
            # quotes and repeated keys (with their values). Converted, every value of a text, date or
            # timestamp column is a string or null: a line with no more quotes than 2 per key and per such
            # column, less 2 per null, repeats no key; the others are counted exactly, then looked at key
            # by key if still in doubt (an escaped quote, a declared spelling read from a string).
            if text.count('"') > quotes - 2 * values.count(None) and text.count('"') != 2 * (
                    width + [*map(type, record.values())].count(str)):
                self._repeated_key(text, line)
            rows.append(row(values, line))
        return rows

    def _wrong_keys(self, record: dict[str, Any], text: str, line: int) -> None:
        self._repeated_key(text, line)
        unknown = [k for k in record if k not in self._known]
        if unknown:
            raise UploadRejected(line, None, f"unknown key(s) {_listing(unknown)}; the declared columns "
                                 f"are {', '.join(self._names)}")
        missing = [n for n in self._names if n not in record]
        raise UploadRejected(line, missing[0], f"missing key(s) {_listing(missing)}; every line gives every "
                             f"declared column ({', '.join(self._names)}), null where it has no value")

    def _repeated_key(self, text: str, line: int) -> None:
        # The standard library's parser hands over every key of the object, repeats included; the line is
        # valid JSON (orjson read it), and the slow way is taken only for lines that may repeat a key.
        seen: set[str] = set()
        for key, _ in json.loads(text, object_pairs_hook=list):
            if key in seen:
                raise UploadRejected(line, key if key in self._known else None,
                                     f"key {_show(key)} is given twice; give each key once (readers differ on "
                                     "which of the values counts)")
            seen.add(key)


def _show(value: object) -> str:
    """A bad value quoted in a message, cut short: it may be as long as a line."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:40] + "…"


# Converters: each column gets one, made for it, that takes a CSV field (a non-empty string) or a JSON
# value (not null) and returns the record's JSON value or raises _Invalid. A column's declared spellings
# are read here; the values they give are the canonical ones (true, 1234, "2026-05-01", UTC instants).

def _text(column: Column) -> Convert:
    name = column.name

    def convert(value: str) -> str:
        if len(value) > MAX_TEXT_CHARS:
            raise _Invalid(name, f"text of {len(value)} characters; at most {MAX_TEXT_CHARS} are allowed")
        control = _CONTROL.search(value)
        if control:
            raise _Invalid(name, f"{_show(value)} contains the control character U+{ord(control.group()):04X}; "
                           "text may hold line breaks (LF) and TABs, but no other control character")
        return value
    return convert


def _int64(digits: str) -> int | None:
    """The integer that `digits` (matched by _INTEGER) spells, or None outside the signed 64-bit range."""
    # Past 19 significant digits it is out of range anyway, and int() of a huge string is slow.
    if len(digits) > 20 and len(digits.lstrip("-").lstrip("0")) > 19:
        return None
    number = int(digits)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _csv_integer(column: Column) -> Convert:
    name = column.name

    def convert(value: str) -> int:
        if not _INTEGER.fullmatch(value):
            raise _Invalid(name, f"{_show(value)} is not an integer "
                           "(expected digits with an optional '-', e.g. 42)")
        number = _int64(value)
        if number is None:
            raise _Invalid(name, f"{_show(value)} is outside the 64-bit integer range")
        return number
    return convert


def _json_integer(column: Column) -> Convert:
    name = column.name

    def convert(value: object) -> int:
        if type(value) is not int:
            raise _Invalid(name, f"{_show(value)} is not an integer "
                           "(expected a JSON number without a fraction, e.g. 42)")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Invalid(name, f"{_show(value)} is outside the 64-bit integer range")
        return value
    return convert


def _csv_number(column: Column) -> Convert:
    name = column.name

    def convert(value: str) -> StoredNumber:
        match = _NUMBER.fullmatch(value)
        if not match:
            raise _Invalid(name, f"{_show(value)} is not a number (expected e.g. 42, -2.5 or 1e3)")
        # Integers stay exact, as JSON numbers without a fraction do in NDJSON (below); past 64 bits
        # both formats give a float, as orjson does for NDJSON.
        if match.lastindex is None:
            number = _int64(value)
            if number is not None:
                return number
        real = float(value)
        if not math.isfinite(real):
            raise _Invalid(name, f"{_show(value)} is too large for a finite number")
        return _stored_float(real)
    return convert


def _json_number(column: Column) -> Convert:
    name = column.name

    def convert(value: object) -> StoredNumber:
        # orjson never yields NaN or infinity: it rejects them and numbers that overflow a double.
        if type(value) is float:
            return _stored_float(value)
        if type(value) is int:
            return value if _INT64_MIN <= value <= _INT64_MAX else _stored_float(float(value))
        raise _Invalid(name, f"{_show(value)} is not a number (expected a JSON number, e.g. 42 or -2.5)")
    return convert


def _stored_float(real: float) -> StoredNumber:
    """A float as the record's JSON holds it: jsonb keeps a number as numeric, which drops an exponent,
    so orjson's 1e+16 (it writes an exponent from 1e16 up) would be stored as an integer. Written out
    with a fraction, as orjson writes smaller floats, it stays a float (a double this large is a whole
    number, exactly); the deliveries' number_text (migration 0017) gives its shortest form back."""
    if -1e16 < real < 1e16:
        return real
    return orjson.Fragment(f"{int(real)}.0")


def _grouped(make: Callable[[Column], Convert]) -> Callable[[Column], Convert]:
    """A number converter that also reads digits grouped by the column's declared thousands separator
    (1,234,567), strictly in threes: '12,34' is a mistake, not a number."""
    def for_column(column: Column) -> Convert:
        convert, separator = make(column), column.thousands_separator
        if separator is None:
            return convert
        grouped = re.compile(rf"-?[0-9]{{1,3}}(?:{re.escape(separator)}[0-9]{{3}})+"
                             r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

        def convert_grouped(value: str) -> StoredNumber:
            if separator in value:
                if not grouped.fullmatch(value):
                    raise _Invalid(column.name, f"{_show(value)} is not a number with its digits grouped in threes "
                                   f"by {separator!r} (e.g. 1{separator}234{separator}567)")
                value = value.replace(separator, "")
            result: StoredNumber = convert(value)
            return result
        return convert_grouped
    return for_column


def _csv_boolean(column: Column) -> Convert:
    name = column.name
    words = {"true": True, "false": False, **dict.fromkeys(column.true, True), **dict.fromkeys(column.false, False)}
    expected = " or ".join(["true", *column.true] + ["false", *column.false]) if column.true else "true or false"

    def convert(value: str) -> bool:
        boolean = words.get(value)
        if boolean is None:
            raise _Invalid(name, f"{_show(value)} is not a boolean (expected {expected})")
        return boolean
    return convert


def _json_boolean(column: Column) -> Convert:
    name = column.name

    def convert(value: object) -> bool:
        if type(value) is not bool:
            raise _Invalid(name, f"{_show(value)} is not a boolean (expected true or false)")
        return value
    return convert


def _spelt(native: Callable[[Column], Convert], from_text: Callable[[Column], Convert],
           declared: Callable[[Column], object]) -> Callable[[Column], Convert]:
    """An NDJSON converter that also reads the column's declared spellings from JSON strings ("1,234",
    "はい"); JSON numbers and booleans keep their meaning."""
    def for_column(column: Column) -> Convert:
        convert = native(column)
        if not declared(column):
            return convert
        spelt = from_text(column)

        def either(value: object) -> Any:
            return spelt(value) if type(value) is str else convert(value)
        return either
    return for_column


# A format's directives as patterns: %m %d %H %M %S take one or two digits, as strptime does (Excel
# writes 2026/5/1), except right before another number, where only two are unambiguous (%Y%m%d).
_FIELD_PATTERNS = {"Y": "[0-9]{4}", "m": "[0-9]{1,2}", "d": "[0-9]{1,2}", "H": "[0-9]{1,2}", "M": "[0-9]{1,2}",
                   "S": "[0-9]{1,2}", "f": "[0-9]{1,6}", "z": "Z|[+-][0-9]{2}(?::?[0-9]{2})?"}
_FIXED_PATTERNS = {**_FIELD_PATTERNS, "m": "[0-9]{2}", "d": "[0-9]{2}", "H": "[0-9]{2}", "M": "[0-9]{2}",
                   "S": "[0-9]{2}", "f": "[0-9]{6}"}
_NUMBER_DIRECTIVES = frozenset(f"%{d}" for d in "YmdHMSf")
_EXAMPLE_MOMENT = datetime(2026, 5, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=9)))


def _format_pattern(fmt: str) -> re.Pattern[str]:
    tokens = format_tokens(fmt)
    parts: list[str] = []
    for index, token in enumerate(tokens):
        if token == "%%":
            parts.append("%")
        elif token.startswith("%"):
            after = tokens[index + 1] if index + 1 < len(tokens) else ""
            patterns = _FIXED_PATTERNS if after in _NUMBER_DIRECTIVES or after.isdigit() else _FIELD_PATTERNS
            parts.append(f"(?P<{token[1]}>{patterns[token[1]]})")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def _offset(text: str) -> tzinfo:
    """A %z offset: Z, +09, +0900 or +09:00."""
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))


def _date(column: Column) -> Convert:
    name = column.name
    if column.format is not None:
        pattern, fmt = _format_pattern(column.format), column.format

        def convert_formatted(value: str) -> str:
            match = pattern.fullmatch(value)
            if not match:
                raise _Invalid(name, f"{_show(value)} is not a date in the declared format {fmt!r} "
                               f"(e.g. {_EXAMPLE_MOMENT.strftime(fmt)})")
            try:
                return date(int(match["Y"]), int(match["m"]), int(match["d"])).isoformat()
            except ValueError:
                raise _Invalid(name, f"{_show(value)} is not a calendar date") from None
        return convert_formatted

    def convert(value: str) -> str:
        if not _DATE.fullmatch(value):
            raise _Invalid(name, f"{_show(value)} is not a date (expected YYYY-MM-DD, e.g. 2020-04-01)")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise _Invalid(name, f"{_show(value)} is not a calendar date") from None
        return value
    return convert


def _timestamp(column: Column) -> Convert:
    name = column.name
    zone = zoneinfo.ZoneInfo(column.time_zone) if column.time_zone is not None else None
    read = _formatted_moment(column, zone) if column.format is not None else _iso_moment(column, zone)
    # Timestamps repeat heavily in aggregate data (one per hour for thousands of areas), and parsing one
    # costs more than the rest of the row; a small per-upload cache makes the repeats nearly free.
    seen: dict[str, str] = {}

    def convert(value: str) -> str:
        known = seen.get(value)
        if known is not None:
            return known
        moment = read(value)
        try:
            moment = moment.astimezone(UTC)
        except (ValueError, OverflowError):
            raise _Invalid(name, f"{_show(value)} is not a valid date, time and zone") from None
        normal = moment.isoformat()[:-6] + "Z"  # "+00:00" off the end, cheaper than replace(tzinfo=None)
        if len(seen) >= _TIMESTAMP_CACHE_SIZE:
            seen.clear()
        seen[value] = normal
        return normal
    return convert


def _iso_moment(column: Column, zone: tzinfo | None) -> Callable[[str], datetime]:
    """ISO 8601 with its zone, or, where the column declares a time zone, without one (meaning that zone)."""
    name = column.name
    pattern = _TIMESTAMP if zone is None else _TIMESTAMP_ZONE_OPTIONAL

    def read(value: str) -> datetime:
        if not pattern.fullmatch(value):
            expected = ("with a time zone (expected ISO 8601, e.g. 2020-04-01T09:00:00+09:00 or "
                        "2020-04-01T00:00:00Z)" if zone is None else
                        f"(expected ISO 8601, e.g. 2020-04-01T09:00:00, in {column.time_zone}, or with its offset)")
            raise _Invalid(name, f"{_show(value)} is not a timestamp {expected}")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(name, f"{_show(value)} is not a valid date, time and zone") from None
        return moment if moment.tzinfo is not None else _in_zone(column, zone, moment, value)
    return read


def _formatted_moment(column: Column, zone: tzinfo | None) -> Callable[[str], datetime]:
    name, fmt = column.name, column.format
    assert fmt is not None
    pattern = _format_pattern(fmt)

    def read(value: str) -> datetime:
        match = pattern.fullmatch(value)
        if not match:
            raise _Invalid(name, f"{_show(value)} is not a timestamp in the declared format {fmt!r} "
                           f"(e.g. {_EXAMPLE_MOMENT.strftime(fmt)})")
        fields = match.groupdict()
        try:
            second, fraction, offset = fields.get("S"), fields.get("f"), fields.get("z")
            moment = datetime(int(fields["Y"]), int(fields["m"]), int(fields["d"]), int(fields["H"]),
                              int(fields["M"]), int(second or 0), int((fraction or "0").ljust(6, "0")),
                              _offset(offset) if offset else None)
        except ValueError:
            raise _Invalid(name, f"{_show(value)} is not a valid date, time and zone") from None
        return moment if moment.tzinfo is not None else _in_zone(column, zone, moment, value)
    return read


def _in_zone(column: Column, zone: tzinfo | None, local: datetime, value: str) -> datetime:
    """A zone-less time in the column's declared zone; a time a clock change makes ambiguous or skips is
    refused rather than guessed."""
    assert zone is not None  # parse_columns: a zone-less form needs a declared time zone
    moment = local.replace(tzinfo=zone)
    if moment.utcoffset() != local.replace(tzinfo=zone, fold=1).utcoffset():
        raise _Invalid(column.name, f"{_show(value)} is ambiguous or does not exist in {column.time_zone} (a clock "
                       "change); give this one with its UTC offset")
    return moment


def _json_string(make: Callable[[Column], Convert], expected: str) -> Callable[[Column], Convert]:
    """A JSON converter for a type that JSON writes as a string (text, date, timestamp)."""
    def for_column(column: Column) -> Convert:
        convert = make(column)

        def from_json(value: object) -> Any:
            if type(value) is not str:
                raise _Invalid(column.name, f"{_show(value)} is not {expected} (expected a JSON string)")
            return convert(value)
        return from_json
    return for_column


_JSON_STRING_TYPES = frozenset({"text", "date", "timestamp"})
_FORMATS: dict[UploadFormat, type[_CsvRecords | _NdjsonRecords]] = {"csv": _CsvRecords,
                                                                     "ndjson": _NdjsonRecords}
_CSV_CONVERTERS: dict[ColumnType, Callable[[Column], Convert]] = {
    "text": _text, "integer": _grouped(_csv_integer), "number": _grouped(_csv_number), "boolean": _csv_boolean,
    "date": _date, "timestamp": _timestamp}
_JSON_CONVERTERS: dict[ColumnType, Callable[[Column], Convert]] = {
    "text": _json_string(_text, "text"),
    "integer": _spelt(_json_integer, _CSV_CONVERTERS["integer"], lambda c: c.thousands_separator),
    "number": _spelt(_json_number, _CSV_CONVERTERS["number"], lambda c: c.thousands_separator),
    "boolean": _spelt(_json_boolean, _csv_boolean, lambda c: c.true),
    "date": _json_string(_date, "a date"),
    "timestamp": _json_string(_timestamp, "a timestamp")}
