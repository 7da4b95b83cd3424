"""Upload bodies: how a vendor's bytes reach the record parser, whatever their coding, charset or container.

A publish streams its body through up to three steps in front of `uploads.parse_upload`, each holding
a bounded piece at a time: `gunzip` (Content-Encoding: gzip; the size limit applies to what it
inflates, so a gzip bomb stops there), `to_utf8` (the declared charset, transcoded chunk by chunk with
an incremental decoder) and, for Parquet, `parquet_as_ndjson`. A Parquet file cannot be read from a
stream (its schema and row-group index are in the footer), so it is spooled to a temporary file, whose
size the upload limit bounds, and read one row group at a time; its rows then feed the same record
pipeline as NDJSON, each row one line, so every check and figure is the one CSV and NDJSON get.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson

from gateway.columns import Column, ColumnType
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.uploads import Row, parse_upload

if TYPE_CHECKING:
    import pyarrow as pa

PublishFormat = Literal["csv", "ndjson", "parquet"]
PUBLISH_FORMATS: tuple[PublishFormat, ...] = get_args(PublishFormat)

UTF8_BOM = b"\xef\xbb\xbf"
_INFLATED_PIECE = 1 << 20  # the most gunzip inflates at once: a tiny chunk of a bomb stays a bounded piece
PARQUET_BATCH_ROWS = 8192  # about the rows of a 1 MiB CSV chunk


@dataclass(frozen=True, slots=True)
class Charset:
    """The encoding of an upload's text: its name in messages, its Python codec, and whether it was
    declared (an undeclared upload is read as UTF-8, and its errors say how to declare another)."""

    label: str
    codec: str
    declared: bool = True


_UTF8 = Charset("UTF-8", "utf-8-sig")  # a leading byte order mark is skipped, as Excel's "CSV UTF-8" writes one
_CP932 = Charset("Shift_JIS (CP932)", "cp932")
_EUC_JP = Charset("EUC-JP", "euc_jp")
# Every Shift_JIS name means CP932, Microsoft's superset that Japanese Excel and Windows write (①, ～, Ⅰ, 髙).
CHARSETS: dict[str, Charset] = {
    "utf-8": _UTF8, "utf8": _UTF8,
    **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "cp932", "windows-31j", "ms_kanji"), _CP932),
    "euc-jp": _EUC_JP, "euc_jp": _EUC_JP, "eucjp": _EUC_JP,
}
UNDECLARED = replace(_UTF8, declared=False)
# Python's cp932 decodes the five bytes CP932 leaves undefined (0x80, 0xA0, 0xFD-0xFF) as U+0080 and
# private-use U+F8F0-U+F8F3, as Windows does; no Japanese text holds them, a file in another encoding
# (UTF-16's byte order mark is FF FE) does, so they are refused like any byte sequence invalid in CP932.
_CP932_UNDEFINED = re.compile("[\x80\uf8f0-\uf8f3]")


def charset(name: str | None) -> Charset:
    """The charset an upload declares (None: undeclared, read as UTF-8), or 415 for one not supported."""
    if name is None:
        return UNDECLARED
    found = CHARSETS.get(name.strip().lower())
    if found is None:
        raise UnsupportedMediaType(f"the encoding {name!r} is not supported; declare utf-8, shift_jis (CP932, what "
                                   "Japanese Excel saves as CSV) or euc-jp")
    return found


def check_upload(fmt: PublishFormat, declared_charset: str | None) -> Charset:
    """What the body's first byte must not wait for: a format the gateway reads, and its charset (415)."""
    if fmt == "parquet":
        if declared_charset is not None:
            raise UnsupportedMediaType("a Parquet upload declares no charset: the format's text is always UTF-8")
        _pyarrow()
    return charset(declared_charset)


def records(chunks: AsyncIterable[bytes], fmt: PublishFormat, text: Charset, columns: Sequence[Column],
            partition_column: str) -> AsyncIterator[list[Row]]:
    """Batches of (partition, record JSON) from an upload's (inflated) bytes, as `parse_upload` yields them."""
    if fmt == "parquet":
        return parse_upload(parquet_as_ndjson(chunks, columns), "ndjson", columns, partition_column)
    return parse_upload(to_utf8(chunks, text), fmt, columns, partition_column)


# -- Content-Encoding: gzip ----------------------------------------------------------------------------

async def gunzip(chunks: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The inflated bytes of a gzip stream (several members one after another, as `cat a.gz b.gz` makes,
    are one stream); 413 once they exceed `max_bytes`, 422 for a stream that is not gzip or ends early."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    started = False  # whether the current member has had a byte
    members = inflated = 0
    async for chunk in chunks:
        data = chunk
        while data or started:
            started = True
            try:
                piece = inflater.decompress(data, _INFLATED_PIECE)
            except zlib.error as exc:
                raise _not_gzip(f"it is corrupt ({exc})") from None
            inflated += len(piece)
            if inflated > max_bytes:
                raise PayloadTooLarge(f"uploads are limited to {max_bytes} bytes (GATEWAY_MAX_UPLOAD_BYTES) once "
                                      "decompressed, and this gzip body inflates to more")
            if piece:
                yield piece
            if inflater.eof:
                data, members, started = inflater.unused_data, members + 1, False
                inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            elif len(piece) < _INFLATED_PIECE:
                break  # the input is used up; what follows needs the next chunk
            else:
                data = inflater.unconsumed_tail  # the piece was cut short: more is to come from this input
    if started or not members:
        raise _not_gzip("it ends before the gzip stream does (a truncated file?)" if started else "the body is empty")


def _not_gzip(why: str) -> InvalidInput:
    return InvalidInput(f"the body is not valid gzip: {why}; send the file as gzip wrote it, or without "
                        "Content-Encoding: gzip (CLI: a file named *.gz is read as gzip)")


# -- charsets ----------------------------------------------------------------------------------------

class _Position:
    """Where the text read so far ends: its line, and the characters of that line (both counted from 1)."""

    def __init__(self) -> None:
        self.line, self.characters = 1, 0

    def advance(self, text: str) -> None:
        breaks = text.count("\n")
        if breaks:
            self.line += breaks
            self.characters = len(text) - text.rfind("\n") - 1
        else:
            self.characters += len(text)


async def to_utf8(chunks: AsyncIterable[bytes], text: Charset) -> AsyncIterator[bytes]:
    """The upload's text re-encoded as UTF-8, a chunk at a time; a byte sequence invalid in its charset
    is a 422 naming the line and the character of the line where it starts, after the text before it
    went on, so that an earlier bad line is the one reported."""
    decoder = codecs.getincrementaldecoder(text.codec)()
    position = _Position()
    # The first bytes of a non-UTF-8 upload are held until it is known whether they are a UTF-8 BOM,
    # which would say the file is UTF-8 whatever was declared.
    head, bom_checked = b"", text.codec == _UTF8.codec
    async for chunk in chunks:
        if not bom_checked:
            head += chunk
            if len(head) < len(UTF8_BOM):
                continue
            if head.startswith(UTF8_BOM):
                raise InvalidInput(f"line 1, character 1: the upload starts with a UTF-8 byte order mark but "
                                   f"declares {text.label}; declare utf-8 (or no encoding)", line=1, column=None,
                                   character=1)
            chunk, head, bom_checked = head, b"", True
        good, error = _decoded(decoder, chunk, False, position, text)
        if good:
            yield good
        if error is not None:
            raise error
    good, error = _decoded(decoder, head, True, position, text)
    if good:
        yield good
    if error is not None:
        raise error


def _decoded(decoder: codecs.IncrementalDecoder, data: bytes, final: bool, position: _Position,
             text: Charset) -> tuple[bytes, InvalidInput | None]:
    """`data` decoded and re-encoded as UTF-8, up to the first invalid byte sequence, and its error."""
    try:
        decoded = decoder.decode(data, final)
    except UnicodeDecodeError as exc:
        # exc.object is what the decoder held back from the previous chunk and this one; all before
        # exc.start decoded (a BOM is not in it).
        decoded = exc.object[:exc.start].decode(text.codec.removesuffix("-sig"))
        bad = exc.object[exc.start:exc.start + 2]
        problem = ("the upload ends inside a character" if final and exc.end == len(exc.object)
                   else f"not valid {text.label} (byte{'s' if len(bad) > 1 else ''} "
                        f"{' '.join(f'0x{b:02X}' for b in bad)})")
        return _invalid(decoded, position, text, problem)
    if text.codec == _CP932.codec:
        undefined = _CP932_UNDEFINED.search(decoded)
        if undefined:
            byte = undefined.group().encode(text.codec)
            return _invalid(decoded[:undefined.start()], position, text,
                            f"not valid {text.label} (byte 0x{byte[0]:02X} is undefined in it)")
    position.advance(decoded)
    return decoded.encode(), None


def _invalid(decoded: str, position: _Position, text: Charset, problem: str) -> tuple[bytes, InvalidInput]:
    position.advance(decoded)
    if text.declared:
        advice = f"save the file as {text.label}, or declare the encoding it is in (utf-8, shift_jis or euc-jp)"
    else:
        advice = ("an upload that declares no encoding is read as UTF-8; a CSV from Japanese Excel is Shift_JIS: "
                  "declare it (Content-Type: text/csv; charset=shift_jis, or the CLI's --encoding shift_jis) or save "
                  "it as CSV UTF-8")
    line, character = position.line, position.characters + 1
    return decoded.encode(), InvalidInput(f"line {line}, character {character}: {problem}; {advice}", line=line,
                                          column=None, character=character)


# -- Parquet -----------------------------------------------------------------------------------------

def _pyarrow() -> tuple[Any, Any, Any]:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise UnsupportedMediaType("this gateway cannot read Parquet: install it with its 'sharing' extra "
                                   "(pip install 'lpd-gateway[sharing]'), or upload CSV or NDJSON") from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


# The Arrow types each declared type takes, as the message that lists them says. As strict as CSV: a
# value must already be of the declared type (an integer column takes no doubles, text no numbers).
_ARROW_TYPES: dict[ColumnType, str] = {
    "text": "string", "integer": "an integer type (int8 to int64, uint8 to uint64)",
    "number": "a floating-point or integer type", "boolean": "bool", "date": "date32 or date64",
    "timestamp": "a timestamp with a time zone (e.g. timestamp[us, tz=UTC])"}


async def parquet_as_ndjson(chunks: AsyncIterable[bytes], columns: Sequence[Column]) -> AsyncIterator[bytes]:
    """A Parquet upload's rows as NDJSON lines (row N of the file is line N), a row group at a time."""
    pa, pq, pc = _pyarrow()
    names = [c.name for c in columns]
    with tempfile.NamedTemporaryFile(prefix="lpd-upload-", suffix=".parquet") as spool:
        async for chunk in chunks:
            spool.write(chunk)
        spool.flush()
        try:
            parquet = pq.ParquetFile(spool.name)
            _check_schema(parquet.schema_arrow, columns, pa)
            batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=names, use_threads=False)
            row = 0
            # Row groups are read and decoded off the event loop, a batch of about a CSV chunk's rows at a time.
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                arrays = [batch.column(name) for name in names]
                arrays = [a.dictionary_decode() if pa.types.is_dictionary(a.type) else a for a in arrays]
                bad, column = _first_non_finite(arrays, names, pa, pc)
                values = [_values(a.slice(0, bad), c, pa, pc) for a, c in zip(arrays, columns, strict=True)]
                # Appended one by one: orjson's output buffers, freed at once, are reused, where a list
                # of 8192 of them costs a fresh allocation each (about 4 times the time).
                lines = bytearray()
                for record in zip(*values):
                    lines += orjson.dumps(dict(zip(names, record)), option=orjson.OPT_APPEND_NEWLINE)
                if lines:
                    yield bytes(lines)
                if column is not None:
                    line = row + bad + 1
                    raise InvalidInput(f"line {line}, column {column}: NaN and infinities are not numbers the gateway "
                                       "stores; write null for a missing value", line=line, column=column)
                row += bad
        except pa.ArrowException as exc:
            raise InvalidInput(f"the upload is not a Parquet file the gateway can read ({exc}); send the file as "
                               "written, with Content-Type: application/vnd.apache.parquet") from None


def _check_schema(schema: pa.Schema, columns: Sequence[Column], pa: Any) -> None:
    """422 naming the column when the file's columns are not the declared ones, or of another type."""
    counts = Counter(schema.names)
    declared = [c.name for c in columns]
    missing = [n for n in declared if n not in counts]
    unknown = [n for n in counts if n not in declared]
    repeated = [n for n, count in counts.items() if count > 1]
    if missing or unknown or repeated:
        found = [f"{what} {', '.join(names)}" for what, names in
                 (("missing", missing), ("unknown", unknown), ("repeated", repeated)) if names]
        raise InvalidInput(f"the Parquet file must have each declared column once, in any order ({', '.join(declared)})"
                           f": {'; '.join(found)}", column=(missing + unknown + repeated)[0])
    for column in columns:
        kind = schema.field(column.name).type
        value = kind.value_type if pa.types.is_dictionary(kind) else kind  # pandas' category: read as its values
        accepted = {
            "text": pa.types.is_string(value) or pa.types.is_large_string(value),
            "integer": pa.types.is_integer(value),
            "number": pa.types.is_floating(value) or pa.types.is_integer(value),
            "boolean": pa.types.is_boolean(value),
            "date": pa.types.is_date(value),
            "timestamp": pa.types.is_timestamp(value) and value.tz is not None,
        }[column.type]
        if not accepted:
            raise InvalidInput(f"column {column.name} is {kind} in the Parquet file, but the dataset declares it "
                               f"{column.type}: write it as {_ARROW_TYPES[column.type]}", column=column.name)


def _values(array: pa.Array, column: Column, pa: Any, pc: Any) -> list[Any]:
    """An array's values as the JSON values NDJSON would give (dates and timestamps as their ISO text, which
    Arrow writes far faster than Python builds date objects)."""
    if column.type == "date":
        return array.cast(pa.string()).to_pylist()
    if column.type == "timestamp":
        try:
            utc = array.cast(pa.timestamp("us", tz="UTC"))  # safe: finer than a microsecond is refused, not cut
        except pa.ArrowInvalid as exc:
            raise InvalidInput(f"column {column.name} cannot be read as microseconds ({exc}); timestamps are kept "
                               "to the microsecond", column=column.name) from None
        return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()
    if pa.types.is_float16(array.type):
        array = array.cast(pa.float64())
    return array.to_pylist()


def _first_non_finite(arrays: list[pa.Array], names: list[str], pa: Any, pc: Any) -> tuple[int, str | None]:
    """The first row holding NaN or an infinity (which JSON cannot carry) and its column, else (len, None)."""
    found: tuple[int, str | None] = (len(arrays[0]) if arrays else 0, None)
    for array, name in zip(arrays, names, strict=True):
        if pa.types.is_floating(array.type):
            at = pc.index(pc.is_finite(array), False).as_py()
            if 0 <= at < found[0]:
                found = (at, name)
    return found
