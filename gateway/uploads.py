"""Uploads: a vendor's CSV or NDJSON body, checked against the declared columns while it streams in.

`parse_upload` turns byte chunks into batches of (partition, record JSON) for COPY. It holds one chunk
and one unfinished line at a time, so memory stays bounded whatever the upload's size, and it raises
UploadRejected at the first bad line so that the caller rolls the whole version back.

The per-row path is the hot one (hundreds of thousands of rows a second): each column gets its
converter once, before the first row, and a row is one list comprehension over them.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson

from gateway.columns import Column, ColumnType

UploadFormat = Literal["csv", "ndjson"]

MAX_TEXT_CHARS = 10_000
MAX_PARTITION_CHARS = 200
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_BOM = b"\xef\xbb\xbf"

# Records must stay single-line: deliveries are NDJSON or CSV and are metered exactly by counting lines,
# which holds only if no value can carry a line break, or any other control character a client's line
# reader might take for one.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# ASCII digits only: int() and float() also take " 1", "1_000", "١٢" and "nan", which no column should.
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The subset of ISO 8601 that says exactly which instant it means: a full date, a time to the minute at
# least and to the microsecond at most (the precision of PostgreSQL and of datetime), and a zone.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                        r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)")
_TIMESTAMP_CACHE_SIZE = 4096
_BOOLEANS = {"true": True, "false": False}

Convert = Callable[[Any], Any]
Row = tuple[str, str]


class UploadRejected(Exception):
    """A bad upload, reported at its first bad line; the HTTP layer answers 422 and the caller rolls back."""

    def __init__(self, line: int, column: str | None, problem: str) -> None:
        self.line = line
        self.column = column
        self.detail = f"line {line}, column {column}: {problem}" if column else f"line {line}: {problem}"
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
    records = _FORMATS[fmt](columns, partition_column)
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
    """What both formats share: the declared columns and turning converted values into a row."""

    def __init__(self, columns: Sequence[Column], partition_column: str) -> None:
        self._names = tuple(c.name for c in columns)
        self._partition = self._names.index(partition_column)
        self._partition_name = partition_column

    def _row(self, values: list[Any], line: int) -> Row:
        key = values[self._partition]
        if key is None:
            raise UploadRejected(line, self._partition_name, "the partition column must have a value")
        if type(key) is not str:
            key = orjson.dumps(key).decode()
        if len(key) > MAX_PARTITION_CHARS:
            raise UploadRejected(line, self._partition_name,
                                 f"a partition value may have at most {MAX_PARTITION_CHARS} characters")
        return key, orjson.dumps(dict(zip(self._names, values))).decode()


class _CsvRecords(_Records):
    def __init__(self, columns: Sequence[Column], partition_column: str) -> None:
        super().__init__(columns, partition_column)
        self._converters = [_CSV_CONVERTERS[c.type](c.name) for c in columns]
        # (position in the CSV row, converter), in declared order; known once the header is read.
        self._plan: list[tuple[int, Convert]] = []

    def convert(self, lines: list[str], first: int) -> list[Row]:
        if not self._plan and lines:
            self._read_header(lines[0])
            lines, first = lines[1:], first + 1
        rows: list[Row] = []
        plan, width, row = self._plan, len(self._plan), self._row
        line = first - 1
        reader = csv.reader(lines, strict=True)
        try:
            for fields in reader:
                line += 1
                if reader.line_num != line - first + 1:
                    # The record ran on past its line: a quote left open, which no valid value needs.
                    raise UploadRejected(line, None, _malformed(lines[line - first]))
                if len(fields) != width:
                    raise UploadRejected(line, None, f"{len(fields)} fields where the header has {width}"
                                         if fields else "empty line; remove blank lines")
                try:
                    values = [convert(field) if (field := fields[at]) else None for at, convert in plan]
                except _Invalid as exc:
                    raise UploadRejected(line, exc.column, exc.problem) from None
                rows.append(row(values, line))
        except csv.Error:
            raise UploadRejected(line + 1, None, _malformed(lines[line + 1 - first])) from None
        return rows

    def _read_header(self, text: str) -> None:
        try:
            header = next(csv.reader([text], strict=True))
        except csv.Error:
            raise UploadRejected(1, None, _malformed(text)) from None
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


def _malformed(text: str) -> str:
    """Why a line is not one CSV record, from parsing that line alone: the reason must not depend on
    which lines happened to arrive in the same chunk."""
    reason = "a quoted field is not closed"
    try:
        next(csv.reader([text], strict=True))
    except csv.Error as exc:
        reason = str(exc)
    return (f"malformed CSV ({reason}); quote a field that holds a comma or a quote, double the quotes "
            'inside it ("say ""hi"""), and keep every record on one line')


class _NdjsonRecords(_Records):
    def __init__(self, columns: Sequence[Column], partition_column: str) -> None:
        super().__init__(columns, partition_column)
        self._known = frozenset(self._names)
        self._plan = [(c.name, _JSON_CONVERTERS[c.type](c.name)) for c in columns]

    def convert(self, lines: list[str], first: int) -> list[Row]:
        rows: list[Row] = []
        plan, known, row = self._plan, self._known, self._row
        for line, text in enumerate(lines, first):
            if not text:
                raise UploadRejected(line, None, "empty line; NDJSON has one JSON object on every line")
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise UploadRejected(line, None,
                                     f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
            if type(record) is not dict:
                raise UploadRejected(line, None, f"expected a JSON object, not {_show(record)}")
            if not record.keys() <= known:
                unknown = [k for k in record if k not in known]
                raise UploadRejected(line, None, f"unknown key(s) {_listing(unknown)}; the declared columns "
                                     f"are {', '.join(self._names)}")
            try:
                values = [None if (value := record.get(name)) is None else convert(value)
                          for name, convert in plan]
            except _Invalid as exc:
                raise UploadRejected(line, exc.column, exc.problem) from None
            rows.append(row(values, line))
        return rows


def _show(value: object) -> str:
    """A bad value quoted in a message, cut short: it may be as long as a line."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:40] + "…"


# Converters: each column gets one, made for its name, that takes a CSV field (a non-empty string) or a
# JSON value (not null) and returns the record's JSON value or raises _Invalid.

def _text(name: str) -> Convert:
    def convert(value: str) -> str:
        if len(value) > MAX_TEXT_CHARS:
            raise _Invalid(name, f"text of {len(value)} characters; at most {MAX_TEXT_CHARS} are allowed")
        control = _CONTROL.search(value)
        if control:
            raise _Invalid(name, f"{_show(value)} contains the control character "
                           f"U+{ord(control.group()):04X}; text must be one line without control characters")
        return value
    return convert


def _int64(digits: str) -> int | None:
    """The integer that `digits` (matched by _INTEGER) spells, or None outside the signed 64-bit range."""
    # Past 19 significant digits it is out of range anyway, and int() of a huge string is slow.
    if len(digits) > 20 and len(digits.lstrip("-").lstrip("0")) > 19:
        return None
    number = int(digits)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _csv_integer(name: str) -> Convert:
    def convert(value: str) -> int:
        if not _INTEGER.fullmatch(value):
            raise _Invalid(name, f"{_show(value)} is not an integer "
                           "(expected digits with an optional '-', e.g. 42)")
        number = _int64(value)
        if number is None:
            raise _Invalid(name, f"{_show(value)} is outside the 64-bit integer range")
        return number
    return convert


def _json_integer(name: str) -> Convert:
    def convert(value: object) -> int:
        if type(value) is not int:
            raise _Invalid(name, f"{_show(value)} is not an integer "
                           "(expected a JSON number without a fraction, e.g. 42)")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Invalid(name, f"{_show(value)} is outside the 64-bit integer range")
        return value
    return convert


def _csv_number(name: str) -> Convert:
    def convert(value: str) -> int | float:
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


def _json_number(name: str) -> Convert:
    def convert(value: object) -> int | float:
        # orjson never yields NaN or infinity: it rejects them and numbers that overflow a double.
        if type(value) is float:
            return _stored_float(value)
        if type(value) is int:
            return value if _INT64_MIN <= value <= _INT64_MAX else _stored_float(float(value))
        raise _Invalid(name, f"{_show(value)} is not a number (expected a JSON number, e.g. 42 or -2.5)")
    return convert


def _stored_float(real: float) -> float | orjson.Fragment:
    """A float as the record's JSON holds it: jsonb keeps a number as numeric, which drops an exponent,
    so orjson's 1e+16 (it writes an exponent from 1e16 up) would be stored as an integer. Written out
    with a fraction, as orjson writes smaller floats, it stays a float (a double this large is a whole
    number, exactly); the deliveries' number_text (migration 0017) gives its shortest form back."""
    if -1e16 < real < 1e16:
        return real
    return orjson.Fragment(f"{int(real)}.0")


def _csv_boolean(name: str) -> Convert:
    def convert(value: str) -> bool:
        boolean = _BOOLEANS.get(value)
        if boolean is None:
            raise _Invalid(name, f"{_show(value)} is not a boolean (expected true or false)")
        return boolean
    return convert


def _json_boolean(name: str) -> Convert:
    def convert(value: object) -> bool:
        if type(value) is not bool:
            raise _Invalid(name, f"{_show(value)} is not a boolean (expected true or false)")
        return value
    return convert


def _date(name: str) -> Convert:
    def convert(value: str) -> str:
        if not _DATE.fullmatch(value):
            raise _Invalid(name, f"{_show(value)} is not a date (expected YYYY-MM-DD, e.g. 2020-04-01)")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise _Invalid(name, f"{_show(value)} is not a calendar date") from None
        return value
    return convert


def _timestamp(name: str) -> Convert:
    # Timestamps repeat heavily in aggregate data (one per hour for thousands of areas), and parsing one
    # costs more than the rest of the row; a small per-upload cache makes the repeats nearly free.
    seen: dict[str, str] = {}

    def convert(value: str) -> str:
        known = seen.get(value)
        if known is not None:
            return known
        if not _TIMESTAMP.fullmatch(value):
            raise _Invalid(name, f"{_show(value)} is not a timestamp with a time zone (expected ISO 8601, "
                           "e.g. 2020-04-01T09:00:00+09:00 or 2020-04-01T00:00:00Z)")
        try:
            moment = datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError):
            raise _Invalid(name, f"{_show(value)} is not a valid date, time and zone") from None
        normal = moment.isoformat()[:-6] + "Z"  # "+00:00" off the end, cheaper than replace(tzinfo=None)
        if len(seen) >= _TIMESTAMP_CACHE_SIZE:
            seen.clear()
        seen[value] = normal
        return normal
    return convert


def _json_string(make: Callable[[str], Convert], expected: str) -> Callable[[str], Convert]:
    """A JSON converter for a type that JSON writes as a string (text, date, timestamp)."""
    def for_column(name: str) -> Convert:
        convert = make(name)

        def from_json(value: object) -> Any:
            if type(value) is not str:
                raise _Invalid(name, f"{_show(value)} is not {expected} (expected a JSON string)")
            return convert(value)
        return from_json
    return for_column


_FORMATS: dict[UploadFormat, type[_CsvRecords | _NdjsonRecords]] = {"csv": _CsvRecords,
                                                                     "ndjson": _NdjsonRecords}
_CSV_CONVERTERS: dict[ColumnType, Callable[[str], Convert]] = {
    "text": _text, "integer": _csv_integer, "number": _csv_number, "boolean": _csv_boolean,
    "date": _date, "timestamp": _timestamp}
_JSON_CONVERTERS: dict[ColumnType, Callable[[str], Convert]] = {
    "text": _json_string(_text, "text"), "integer": _json_integer, "number": _json_number,
    "boolean": _json_boolean, "date": _json_string(_date, "a date"),
    "timestamp": _json_string(_timestamp, "a timestamp")}
