"""Rendered record pages kept in memory, so that a page asked for again costs no database round trip.

A page is fully determined by what it selects: the dataset, partitions, columns, the explicit set of
versions, the format, the position it starts after and how many records it takes. Published
records never change (migration 0006 refuses UPDATE, DELETE and TRUNCATE on `records`) and the key
names every version a page reads, so a cached page is correct for as long as it is kept; a publish
adds versions and a withdrawal takes one out of later scopes' sets: either way another key, and a
withdrawn version's pages are never looked up again. Nothing about the caller is in the
key and nothing in the cache decides anything: authentication, the licence check, quotas and the
audit event all run per request, before a page is looked up. A narrowed or revoked licence never
reaches the cache, and a narrowed one selects other partitions or columns: another key.

Bounded by the bytes of the rendered records it holds (GATEWAY_PAGE_CACHE_BYTES), least recently
used first out; 0 turns it off.

A page not in memory is read within `read_seconds` (the audit deadline, GATEWAY_AUDIT_DEADLINE_SECONDS),
the wait for a connection included: on a stalled PostgreSQL or an exhausted pool the request fails
closed with 503 at that deadline (gateway/database.py `within`), as it would if its audit event
could not be committed, instead of waiting for the pool's 60 s command timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import asyncpg

from gateway import database, metrics, records
from gateway.records import DeliveryScope, Format, Page, Position


class PageCache:
    def __init__(self, max_bytes: int, read_seconds: float = 2.0) -> None:
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds
        self.bytes = 0
        self._pages: OrderedDict[Hashable, tuple[Page, int]] = OrderedDict()
        self._hit = metrics.PAGE_CACHE.labels("hit")
        self._miss = metrics.PAGE_CACHE.labels("miss")

    async def page(self, pool: asyncpg.Pool, scope: DeliveryScope, fmt: Format, after: Position | None,
                   limit: int) -> Page:
        """`records.page` of these arguments: from memory when it was read before, else from PostgreSQL."""
        if self.max_bytes <= 0:
            return await self._read(pool, scope, fmt, after, limit)
        key = (scope.dataset.id.int, scope.partitions, scope.columns, tuple(scope.dataset.column_names),
               scope.versions, fmt,
               None if after is None else (after.partition, after.version, after.seq), limit)
        kept = self._pages.get(key)
        if kept is not None:
            self._pages.move_to_end(key)
            self._hit.inc()
            return kept[0]
        self._miss.inc()
        page = await self._read(pool, scope, fmt, after, limit)
        size = len(page.body) + 24 * len(page) + 400  # the body, its three lists of numbers, the objects
        if size <= self.max_bytes and key not in self._pages:  # a concurrent miss may have kept it already
            self._pages[key] = (page, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._pages.popitem(last=False)
                self.bytes -= dropped
        return page

    async def _read(self, pool: asyncpg.Pool, scope: DeliveryScope, fmt: Format, after: Position | None,
                    limit: int) -> Page:
        return await database.within(pool, self.read_seconds, records.page, scope, fmt, after, limit)
