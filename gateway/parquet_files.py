"""Parquet files of licensed data for Delta Sharing: built from PostgreSQL, typed, cached on disk.

One file set per (dataset, version, partition, column set): the records of one partition in one
immutable version, restricted to a licence's columns, split into files of at most ROWS_PER_FILE
records. Versions never change once published, so that key is the whole cache key: a file set, once
built, is valid forever and is never rebuilt (FORMAT is part of the key, so a change of the writer
starts a new set). Members with the same column set share the files; the licence is enforced when a
file is listed and again when it is downloaded (gateway/sharing.py), never by the file itself.

Layout under GATEWAY_HOME: `sharing-cache/<dataset id>/<key>/manifest.json` and `part-NNNNN.parquet`.
A set is built in a temporary folder and renamed into place, so a reader sees a whole set or none,
even with several instances sharing one GATEWAY_HOME. The cache may be deleted at any time (stop
nothing: a missing set is rebuilt on the next query or download). Folders named `*.tmp-*` are left
over by a crash mid-build and may be deleted.

pyarrow is imported lazily: it is the optional `sharing` extra, and the rest of the gateway runs
without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from gateway.columns import Column, ColumnType

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

FORMAT = 1
ROWS_PER_FILE = 250_000
FETCH_ROWS = 50_000
CACHE_FOLDER = "sharing-cache"

# Our column types as Delta (Spark SQL JSON schema) types.
SPARK_TYPES: dict[ColumnType, str] = {"text": "string", "integer": "long", "number": "double",
                                      "boolean": "boolean", "date": "date", "timestamp": "timestamp"}
# PostgreSQL renders each value in the type pyarrow wants; the column names are the dataset's
# validated identifiers ([a-z][a-z0-9_]*), safe inside the quotes.
_SQL: dict[ColumnType, str] = {"text": "data ->> '{c}'", "integer": "(data ->> '{c}')::bigint",
                               "number": "(data ->> '{c}')::float8", "boolean": "(data ->> '{c}')::boolean",
                               "date": "(data ->> '{c}')::date", "timestamp": "(data ->> '{c}')::timestamptz"}


class SharingNotInstalled(RuntimeError):
    """pyarrow (the `sharing` extra) is missing."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SharingNotInstalled("Delta Sharing needs pyarrow: install the gateway with its 'sharing' extra "
                                  "(pip install 'lpd-gateway[sharing]')") from None
    return pyarrow, pyarrow.parquet


def arrow_type(kind: ColumnType) -> pa.DataType:
    pa, _ = _pyarrow()
    # Timestamps are instants (uploads normalise them to UTC): Delta's `timestamp`, adjusted to UTC.
    return {"text": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(),
            "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}[kind]


@dataclass(frozen=True, slots=True)
class PartFile:
    index: int
    name: str
    size: int
    records: int


@dataclass(frozen=True, slots=True)
class FileSet:
    key: str
    directory: Path
    files: tuple[PartFile, ...]

    def path(self, index: int) -> Path:
        return self.directory / self.files[index].name


def cache_key(dataset_id: uuid.UUID, version: int, partition: str, columns: Sequence[Column]) -> str:
    """The set's identity: everything its bytes depend on (the data of a version never changes)."""
    material = [FORMAT, str(dataset_id), version, partition, [[c.name, c.type] for c in columns]]
    return hashlib.sha256(orjson.dumps(material)).hexdigest()[:40]


class ParquetCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._building: dict[str, asyncio.Lock] = {}
        self.builds = 0  # sets built by this process (tests check that a repeated query builds nothing)

    def _directory(self, dataset_id: uuid.UUID, key: str) -> Path:
        return self.root / str(dataset_id) / key

    def cached(self, dataset_id: uuid.UUID, key: str) -> FileSet | None:
        directory = self._directory(dataset_id, key)
        try:
            manifest = orjson.loads((directory / "manifest.json").read_bytes())
        except FileNotFoundError:
            return None
        files = tuple(PartFile(f["index"], f["name"], f["size"], f["records"]) for f in manifest["files"])
        if not all((directory / f.name).is_file() for f in files):
            return None
        return FileSet(key, directory, files)

    async def ensure(self, pool: asyncpg.Pool, dataset_id: uuid.UUID, version: int, partition: str,
                     columns: Sequence[Column], metadata: dict[str, str]) -> FileSet:
        """The file set of one partition of one version with these columns, built once."""
        key = cache_key(dataset_id, version, partition, columns)
        found = self.cached(dataset_id, key)
        if found is not None:
            return found
        # One build per set in this process; concurrent queries for it wait for the first.
        async with self._building.setdefault(key, asyncio.Lock()):
            found = self.cached(dataset_id, key)
            if found is not None:
                return found
            directory = self._directory(dataset_id, key)
            if directory.exists():  # a set whose files were deleted under it: start again
                await asyncio.to_thread(shutil.rmtree, directory, True)
            temporary = directory.with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
            temporary.mkdir(parents=True)
            try:
                files = await self._build(pool, temporary, dataset_id, version, partition, columns, metadata)
                (temporary / "manifest.json").write_bytes(orjson.dumps(
                    {"format": FORMAT, "dataset_id": str(dataset_id), "version": version, "partition": partition,
                     "columns": [c.name for c in columns],
                     "files": [{"index": f.index, "name": f.name, "size": f.size, "records": f.records}
                               for f in files]}))
                try:
                    os.rename(temporary, directory)
                except OSError:
                    # Another instance sharing this GATEWAY_HOME finished the same set first: same bytes.
                    await asyncio.to_thread(shutil.rmtree, temporary, True)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, temporary, True)
                raise
            self.builds += 1
        found = self.cached(dataset_id, key)
        assert found is not None
        return found

    async def _build(self, pool: asyncpg.Pool, folder: Path, dataset_id: uuid.UUID, version: int, partition: str,
                     columns: Sequence[Column], metadata: dict[str, str]) -> list[PartFile]:
        pa, _ = _pyarrow()
        schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in columns],
                           metadata={k.encode(): v.encode() for k, v in metadata.items()})
        parts = _Parts(folder, schema)
        select = ", ".join(_SQL[c.type].format(c=c.name) for c in columns)
        sql = f"SELECT {select} FROM records WHERE dataset_id = $1 AND partition = $2 AND version = $3 ORDER BY seq"
        try:
            async with pool.acquire() as conn, conn.transaction():
                cursor = await conn.cursor(sql, dataset_id, partition, version)
                while rows := await cursor.fetch(FETCH_ROWS):
                    # Arrow conversion and compression are CPU work: off the event loop.
                    await asyncio.to_thread(parts.add, rows)
            return await asyncio.to_thread(parts.finish)
        finally:
            parts.abort()


class _Parts:
    """Writes rows into part-NNNNN.parquet files of at most ROWS_PER_FILE rows (called from a thread)."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder, self.schema = folder, schema
        self.done: list[PartFile] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, rows: list[asyncpg.Record]) -> None:
        pa, pq = _pyarrow()
        while rows:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self._path(len(self.done)), self.schema, compression="snappy")
                self.rows = 0
            room = ROWS_PER_FILE - self.rows
            chunk, rows = rows[:room], rows[room:]
            arrays = [pa.array([row[i] for row in chunk], type=field.type) for i, field in enumerate(self.schema)]
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
            self.rows += len(chunk)
            if self.rows == ROWS_PER_FILE:
                self._close()

    def _path(self, index: int) -> Path:
        return self.folder / f"part-{index:05d}.parquet"

    def _close(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self.writer = None
        index = len(self.done)
        self.done.append(PartFile(index, self._path(index).name, self._path(index).stat().st_size, self.rows))

    def finish(self) -> list[PartFile]:
        if self.writer is not None:
            self._close()
        return self.done

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
