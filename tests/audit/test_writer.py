"""The audit writer's checkpoints, series numbers, partitions and failure behaviour; keys; receipts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import asyncpg
import orjson
import pytest

from gateway import migrations, signing_keys
from gateway.audit import checkpoints, tiles
from gateway.audit.events import AuditEvent
from gateway.audit.format import CheckpointError, open_checkpoint, public_key_from_json
from gateway.audit.writer import AuditUnavailable, AuditWriter, new_log_id
from gateway.errors import NotFound, ServiceUnavailable
from keys.merkle import MerkleTree, leaf_hash, verify_inclusion
from keys.sealing import MasterKey
from tests.audit.support import synthetic

MASTER = MasterKey.generate()


@contextlib.asynccontextmanager
async def writer_on(dsn: str, **options: object) -> AsyncIterator[AuditWriter]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    # The deployment's first writer makes the audit key, with its operator:keyring:create event in its
    # own log (tests/audit/test_key_history.py): a writer of its own here, so the log under test holds
    # only the test's events.
    first = AuditWriter(pool, new_log_id("keys"), "keys", master=MASTER)
    await first.start()
    await first.close()
    writer = AuditWriter(pool, new_log_id("unit"), "unit", master=MASTER, **options)  # type: ignore[arg-type]
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()
        await pool.close()


async def stored(dsn: str, log_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM audit_checkpoints WHERE log_id = $1 ORDER BY tree_size", log_id)
    finally:
        await conn.close()


async def checked_entries(dsn: str, log_id: str) -> list[dict[str, Any]]:
    """The log's entries in seq order, once `gateway audit check` finds every log in the database sound."""
    conn = await asyncpg.connect(dsn)
    try:
        assert (await checkpoints.check(conn)).ok
        return [orjson.loads(r["entry"]) for r in
                await conn.fetch("SELECT entry FROM audit_events WHERE log_id = $1 ORDER BY seq", log_id)]
    finally:
        await conn.close()


async def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_checkpoints_every_n_events_and_at_close_verify_against_the_events(dsn: str) -> None:
    vendor = uuid.uuid4()
    async with writer_on(dsn, checkpoint_events=100, checkpoint_seconds=60) as writer:
        log_id = writer.log_id
        for _ in range(5):
            await asyncio.gather(*(writer.commit(synthetic(vendor)) for _ in range(50)))
        await wait_for(lambda: _has_size(dsn, log_id, 200))
        await writer.commit(synthetic(vendor))
    rows = await stored(dsn, log_id)
    sizes = [row["tree_size"] for row in rows]
    assert sizes[-1] == 251, "close() signs a final checkpoint over every event"
    assert sizes == sorted(set(sizes)) and any(s >= 200 for s in sizes[:-1])
    conn = await asyncpg.connect(dsn)
    try:
        keys = await signing_keys.public_keys(conn)
        leaves = await tiles.leaf_hashes(conn, log_id, 251)
        result = await checkpoints.check(conn)
    finally:
        await conn.close()
    tree = MerkleTree([leaves[i:i + 32] for i in range(0, len(leaves), 32)])
    for row in rows:
        opened = open_checkpoint(row["note"], keys, log_id)
        assert opened.root == tree.root(row["tree_size"]) == bytes(row["root_hash"])
        assert opened.signed_at == row["signed_at"]
        assert row["note"].startswith(f"lpd-gateway/{log_id}\n{row['tree_size']}\n")
    assert result.ok, result.to_json()


async def _has_size(dsn: str, log_id: str, size: int) -> bool:
    return any(row["tree_size"] >= size for row in await stored(dsn, log_id))


async def test_a_checkpoint_follows_within_t_seconds_while_events_arrive(dsn: str) -> None:
    async with writer_on(dsn, checkpoint_events=1_000_000, checkpoint_seconds=0.1) as writer:
        for _ in range(3):
            await writer.commit(synthetic(uuid.uuid4()))
        await wait_for(lambda: _has_size(dsn, writer.log_id, 3), timeout=3)
        assert writer.checkpointed == 3


async def test_a_slow_checkpoint_never_holds_up_requests(dsn: str) -> None:
    """Signing waits for the key row (as during a rotation); commits go on meanwhile."""
    async with writer_on(dsn, checkpoint_events=10, checkpoint_seconds=0.05) as writer:
        await writer.commit(synthetic(uuid.uuid4()))  # the audit key exists from here on
        blocker = await asyncpg.connect(dsn)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT 1 FROM signing_keys WHERE purpose = 'audit' FOR UPDATE")
            started = asyncio.get_running_loop().time()
            for _ in range(100):
                await writer.commit(synthetic(uuid.uuid4()))
            assert asyncio.get_running_loop().time() - started < 2.0
            assert writer.checkpointed < 101, "the checkpoint is still waiting for the key"
            await transaction.rollback()
        finally:
            await blocker.close()
        await wait_for(lambda: _has_size(dsn, writer.log_id, 101))


async def test_events_are_numbered_per_vendor_and_member_without_gaps(dsn: str) -> None:
    vendors, members = [uuid.uuid4(), uuid.uuid4()], [uuid.uuid4(), uuid.uuid4(), None]
    async with writer_on(dsn) as writer:
        await asyncio.gather(*(writer.commit(synthetic(vendors[i % 2], members[i % 3])) for i in range(60)))
        log_id = writer.log_id
    conn = await asyncpg.connect(dsn)
    try:
        entries = [orjson.loads(r["entry"]) for r in
                   await conn.fetch("SELECT entry FROM audit_events WHERE log_id = $1 ORDER BY seq", log_id)]
    finally:
        await conn.close()
    assert [e["seq"] for e in entries] == list(range(60))
    for vendor in vendors:
        assert [e["vendor_seq"] for e in entries if e["vendor_id"] == str(vendor)] == list(range(30))
    for member in members[:2]:
        assert [e["member_seq"] for e in entries if e["member_id"] == str(member)] == list(range(20))
    assert all(e["member_seq"] is None for e in entries if e["member_id"] is None)


async def test_the_log_is_registered_and_monthly_partitions_exist_ahead(dsn: str) -> None:
    async with writer_on(dsn) as writer:
        await writer.commit(synthetic(uuid.uuid4()))
        log_id = writer.log_id
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT instance FROM audit_logs WHERE log_id = $1", log_id) == "unit"
        now = datetime.now(UTC)
        after = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
        partitions = {r["name"] for r in await conn.fetch(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_events'::regclass")}
        assert {f"audit_events_{now:%Y%m}", f"audit_events_{after:%Y%m}"} <= partitions
        assert await conn.fetchval("SELECT count(*) FROM audit_events_default") == 0
        assert await conn.fetchval(f"SELECT count(*) FROM audit_events_{now:%Y%m} WHERE log_id = $1", log_id) == 1
    finally:
        await conn.close()


async def test_migration_moves_events_from_before_it_into_monthly_partitions(databases) -> None:  # type: ignore[no-untyped-def]
    name = await databases.create()
    conn = await asyncpg.connect(databases.dsn(name))
    try:
        everything = migrations.discover()
        await migrations.apply(conn, everything[:1])
        await conn.execute("INSERT INTO audit_events (at, log_id, seq, event_id, kind, outcome, entry) VALUES "
                           "('2025-03-15T10:00:00Z', 'old', 0, gen_random_uuid(), 'k', 'allow', '\\x7b7d')")
        await migrations.apply(conn, everything)
        assert await conn.fetchval("SELECT count(*) FROM audit_events_202503") == 1
        assert await conn.fetchval("SELECT count(*) FROM audit_events_default") == 0
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_events")
    finally:
        await conn.close()
        await databases.drop(name)


async def test_an_unreachable_database_makes_commit_fail_closed(dsn: str) -> None:
    async with _Proxy(dsn) as proxy:
        pool = await asyncpg.create_pool(proxy.dsn, min_size=1, max_size=2)
        writer = AuditWriter(pool, new_log_id("unit"), "unit", master=MASTER, deadline=1.0)
        await writer.start()
        try:
            await writer.commit(synthetic(uuid.uuid4()))
            await proxy.cut()
            with pytest.raises(AuditUnavailable):
                await writer.commit(synthetic(uuid.uuid4()))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.close(), 5)
            pool.terminate()


async def test_close_writes_every_submitted_event_and_a_final_checkpoint(dsn: str) -> None:
    vendor = uuid.uuid4()
    async with writer_on(dsn, batch_max=500, checkpoint_seconds=60, checkpoint_events=10**6) as writer:
        futures = [writer.submit(synthetic(vendor)) for _ in range(5000)]
        log_id = writer.log_id
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(AuditUnavailable):
        writer.submit(synthetic(vendor))
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_events WHERE log_id = $1", log_id) == 5000
        assert await conn.fetchval("SELECT max(tree_size) FROM audit_checkpoints WHERE log_id = $1", log_id) == 5000
        assert (await checkpoints.check(conn)).ok
    finally:
        await conn.close()


# -- keys ---------------------------------------------------------------------------------------------

async def test_instances_starting_together_share_one_audit_key(dsn: str) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(signing_keys.current(c, MASTER) for c in conns))
        assert len({k.key_id for k in keys}) == 1
        assert len(await signing_keys.public_keys(conns[0])) == 1
    finally:
        for conn in conns:
            await conn.close()


async def test_rotation_makes_a_new_current_key_and_the_old_one_keeps_verifying(dsn: str) -> None:
    async with writer_on(dsn, checkpoint_seconds=60) as writer:
        await writer.commit(synthetic(uuid.uuid4()))
        await writer.checkpoint()
        conn = await asyncpg.connect(dsn)
        try:
            old = (await signing_keys.public_keys(conn))[0]
            new = await signing_keys.rotate(conn, MASTER)
            await writer.commit(synthetic(uuid.uuid4()))
            await writer.checkpoint()
            keys = await signing_keys.public_keys(conn)
            rows = await conn.fetch("SELECT note, key_id FROM audit_checkpoints WHERE log_id = $1 ORDER BY tree_size",
                                    writer.log_id)
        finally:
            await conn.close()
    assert [k.key_id for k in keys] == [old.key_id, new.key_id]
    assert keys[0].not_after == keys[1].not_before and keys[1].not_after is None
    assert [r["key_id"] for r in rows] == [old.key_id, new.key_id]
    for row in rows:
        assert open_checkpoint(row["note"], keys).key.key_id == row["key_id"]
    # The old key's checkpoint is signed before its not_after; a note by it after that is refused.
    stolen = signing_keys.open_key(MASTER, old.key_id, await _sealed(dsn, old.key_id))
    late = datetime.now(UTC) + timedelta(seconds=1)
    text = f"lpd-gateway/{writer.log_id}\n1\n{base64.b64encode(bytes(32)).decode()}\nsigned-at " \
           f"{late:%Y-%m-%dT%H:%M:%S.%fZ}\n"
    with pytest.raises(CheckpointError) as raised:
        open_checkpoint(signing_keys.note_signer(stolen).sign(text), keys)
    assert raised.value.code == "key-validity"


async def _sealed(dsn: str, key_id: str) -> bytes:
    conn = await asyncpg.connect(dsn)
    try:
        return bytes(await conn.fetchval("SELECT sealed_private FROM signing_keys WHERE key_id = $1", key_id))
    finally:
        await conn.close()


async def test_public_keys_and_latest_checkpoints_are_published(dsn: str) -> None:
    vendor = uuid.uuid4()
    async with writer_on(dsn) as writer:
        await writer.commit(synthetic(vendor))
        await writer.checkpoint()
        conn = await asyncpg.connect(dsn)
        try:
            [key] = await checkpoints.public_keys(conn)
            latest = await checkpoints.latest_checkpoints(conn, vendor)
            assert await checkpoints.latest_checkpoints(conn, uuid.uuid4()) == [], "only the vendor's logs"
        finally:
            await conn.close()
    assert key["vkey"].startswith("lpd-gateway-audit+") and key["not_after"] is None
    [mine] = [c for c in latest if c["log"] == writer.log_id]
    assert mine["tree_size"] == 1 and mine["origin"] == f"lpd-gateway/{writer.log_id}"
    keys = [public_key_from_json(key)]
    assert open_checkpoint(mine["note"], keys).root == base64.b64decode(mine["root_hash"])


async def test_a_receipt_proves_an_event_offline(dsn: str) -> None:
    member = uuid.uuid4()
    async with writer_on(dsn, checkpoint_seconds=60, checkpoint_events=10**6) as writer:
        events = [synthetic(uuid.uuid4(), member) for _ in range(37)]
        await asyncio.gather(*(writer.commit(e) for e in events))
        await writer.checkpoint()
        late = synthetic(uuid.uuid4())
        await writer.commit(late)
        conn = await asyncpg.connect(dsn)
        try:
            receipt = await checkpoints.receipt(conn, events[20].event_id, member_id=member)
            with pytest.raises(NotFound):  # another member's event is as absent as a missing one
                await checkpoints.receipt(conn, events[20].event_id, member_id=uuid.uuid4())
            with pytest.raises(ServiceUnavailable):
                await checkpoints.receipt(conn, late.event_id)
            with pytest.raises(NotFound):
                await checkpoints.receipt(conn, uuid.uuid4())
        finally:
            await conn.close()
    # What a member does with it, knowing only the public key:
    key = public_key_from_json(receipt["key"])
    opened = open_checkpoint(receipt["checkpoint"]["note"], [key])
    entry = receipt["entry"].encode()
    assert orjson.loads(entry)["event_id"] == str(events[20].event_id)
    verify_inclusion(leaf_hash(entry), receipt["seq"], opened.size, [base64.b64decode(h) for h in
                                                                      receipt["inclusion_proof"]], opened.root)
    assert opened.size == 37 and receipt["seq"] < 37


class _Proxy:
    """A TCP proxy in front of the test PostgreSQL whose connections can all be cut at once."""

    def __init__(self, dsn: str) -> None:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        self.host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        self.port = parts.port or 5432
        self.user, self.database = parts.username or "postgres", parts.path.lstrip("/")
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.dsn = f"postgresql://{self.user}@127.0.0.1:{port}/{self.database}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self.tasks.add(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()


async def test_a_failed_batch_leaves_no_gap_in_the_batches_numbered_behind_it(dsn: str) -> None:
    """Numbers are given only to what commits: the groups behind a failed one take its numbers."""
    vendor = uuid.uuid4()
    async with writer_on(dsn, batch_max=5, checkpoint_seconds=60) as writer:
        events = [synthetic(vendor) for _ in range(40)]
        events[7].event_id = None  # type: ignore[assignment] - NOT NULL: the second group's COPY fails
        events[23].at = None  # type: ignore[assignment] - cannot even be serialised: the fifth group fails
        futures = [writer.submit(e) for e in events]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        log_id = writer.log_id
    failed = {i for i, outcome in enumerate(outcomes) if isinstance(outcome, AuditUnavailable)}
    assert failed == set(range(5, 10)) | set(range(20, 25))
    entries = await checked_entries(dsn, log_id)
    assert [e["seq"] for e in entries] == list(range(30))
    assert [e["vendor_seq"] for e in entries] == list(range(30))
    assert [e["event_id"] for e in entries] == [str(events[i].event_id) for i in range(40) if i not in failed]


async def test_changes_get_their_turn_under_sustained_request_traffic(dsn: str) -> None:
    async with writer_on(dsn, batch_max=50) as writer:
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await writer.commit(synthetic(uuid.uuid4()))

        clients = [asyncio.create_task(traffic()) for _ in range(200)]
        await asyncio.sleep(0.2)

        async def change() -> None:
            async with writer.change() as change:
                change.record(synthetic(uuid.uuid4()))

        try:
            await asyncio.wait_for(change(), 2.0)  # starved, it would wait as long as the traffic lasts
        finally:
            stop.set()
            await asyncio.gather(*clients)


async def test_changes_between_pipelined_groups_leave_one_gap_free_log(dsn: str) -> None:
    """Groups numbered ahead while another commits are numbered again when a change got in between."""
    vendor = uuid.uuid4()
    async with writer_on(dsn, batch_max=8, checkpoint_seconds=60) as writer:
        log_id = writer.log_id

        async def requests() -> None:
            for _ in range(30):
                await asyncio.gather(*(writer.commit(synthetic(vendor)) for _ in range(40)))  # 5 groups queued

        async def changes() -> None:
            for _ in range(30):
                async with writer.change() as change:
                    change.record(synthetic(vendor))
                await asyncio.sleep(0)

        await asyncio.gather(requests(), changes())
    entries = await checked_entries(dsn, log_id)
    assert [e["seq"] for e in entries] == list(range(30 * 40 + 30))
    assert [e["vendor_seq"] for e in entries] == list(range(30 * 40 + 30))


async def test_small_groups_in_one_statement_and_large_ones_by_copy_make_the_same_log_and_usage(dsn: str) -> None:
    vendor, dataset, member, licence = (uuid.uuid4() for _ in range(4))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO vendors (id, name) VALUES ($1, 'v')", vendor)
        await conn.execute("INSERT INTO datasets (id, vendor_id, name, columns, partition_column) "
                           "VALUES ($1, $2, 'd', '[]', 'area')", dataset, vendor)
        await conn.execute("INSERT INTO members (id, vendor_id, name) VALUES ($1, $2, 'm')", member, vendor)
        await conn.execute("INSERT INTO licences (id, vendor_id, member_id, dataset_id, partitions, columns, "
                           "valid_from) VALUES ($1, $2, $3, $4, '{n}', '{a}', now())", licence, vendor, member, dataset)
    finally:
        await conn.close()

    def delivery() -> AuditEvent:
        return synthetic(vendor, member, dataset_id=dataset, licence_id=licence)

    async with writer_on(dsn, checkpoint_seconds=60) as writer:
        await asyncio.gather(*(writer.commit(delivery()) for _ in range(300)))  # one group of 300: by COPY
        for _ in range(5):
            await asyncio.gather(*(writer.commit(delivery()) for _ in range(10)))  # groups of 10: one statement
        log_id = writer.log_id
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT seq, xmin::text AS tx, entry FROM audit_events WHERE log_id = $1 ORDER BY seq",
                                log_id)
        usage = await conn.fetchrow("SELECT requests, records, bytes FROM usage_daily WHERE licence_id = $1 "
                                    "AND log_id = $2", licence, log_id)
        assert (await checkpoints.check(conn)).ok
    finally:
        await conn.close()
    assert [r["seq"] for r in rows] == list(range(350))
    assert [orjson.loads(r["entry"])["member_seq"] for r in rows] == list(range(350))
    assert len({r["tx"] for r in rows[:300]}) == 1 and len({r["tx"] for r in rows[300:]}) == 5
    assert tuple(usage) == (350, 3500, 35000)
