"""Everything a running gateway process holds: database pool, audit writer, snapshot and secrets.

The HTTP app and the CLI open the same Runtime, so a CLI command runs exactly the domain code, the
migrations and the audit path that the API runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from gateway import database, migrations, server_secrets
from gateway.audit.witnesses import WitnessPusher
from gateway.audit.writer import OWN_CONNECTIONS, AuditWriter, new_log_id
from gateway.backoff import FailureBackoff
from gateway.config import Config
from gateway.delivery import Deliveries
from gateway.liveness import Liveness, hold_shared_log
from gateway.metering import RateLimiter, UsageBook, UsageSync
from gateway.page_cache import PageCache
from gateway.server_secrets import ServerSecrets
from gateway.snapshot import Snapshot, SnapshotRefresher
from keys.hashing import KeyHasher
from keys.sealing import MasterKey


@dataclass
class Runtime:
    config: Config
    dsn: str
    pool: asyncpg.Pool
    writer: AuditWriter
    master: MasterKey
    secrets: ServerSecrets
    snapshot: Snapshot
    usage: UsageBook
    refresher: SnapshotRefresher | None = None
    liveness: Liveness | None = None
    # The command line's: the connection holding the shared log's lock while this command writes to it.
    shared_lock: asyncpg.Connection | None = None
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    usage_sync: UsageSync | None = None
    # Failed authentications per client address (API keys, tokens, OAuth clients), on this instance.
    backoff: FailureBackoff = field(default_factory=FailureBackoff)
    pages: PageCache = field(default_factory=lambda: PageCache(0))
    # Pushes each new checkpoint to GATEWAY_WITNESSES (serving processes only) and keeps their cosignatures.
    witnesses: WitnessPusher | None = None
    _deliveries: Deliveries | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, config: Config, *, serving: bool, role: str = "gateway",
                   on_ended: Callable[[], None] | None = None) -> Runtime:
        """Connect (starting the embedded PostgreSQL if configured so), migrate, and start the audit writer
        and the heartbeat (gateway/liveness.py).

        `serving` also loads the snapshot and keeps it current, and ends the logs of dead processes; the
        CLI reads the database directly. `on_ended` is called if another process ends this one's log
        (it was taken for dead): nothing more can be written, and the process should stop.
        """
        dsn = await database.resolve_dsn(config)
        master = server_secrets.load_master_key(config)
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.apply(conn)
            secrets = await server_secrets.load(conn, master)
        finally:
            await conn.close()
        pool = await database.create_pool(dsn, config.pool_size, config.statement_timeout_seconds)
        instance = config.instance if role == "gateway" else f"{config.instance}-{role}"
        # The command line appends to one shared log, a command at a time; every other process to its own.
        shared = role == "cli"
        log_id, shared_lock = await hold_shared_log(dsn, instance) if shared else (new_log_id(instance), None)
        # The audit writer's own connections: deliveries holding or awaiting the shared pool never starve it.
        writer = AuditWriter(pool, log_id, instance, batch_max=config.audit_batch_max,
                             own_pool=await database.create_pool(dsn, OWN_CONNECTIONS,
                                                                  config.statement_timeout_seconds),
                             deadline=config.audit_deadline_seconds, master=master,
                             checkpoint_events=config.checkpoint_events, checkpoint_seconds=config.checkpoint_seconds)
        await writer.start(shared=shared)
        liveness = Liveness(dsn, writer.log_id, writer.signer, reaps=serving, on_ended=on_ended, shared=shared)
        await liveness.start()
        snapshot = Snapshot()
        runtime = cls(config, dsn, pool, writer, master, secrets, snapshot, usage=UsageBook(writer.log_id, writer.instance, config.audit_deadline_seconds),
                      backoff=FailureBackoff(config.auth_backoff_failures, config.auth_backoff_window_seconds,
                                             config.auth_backoff_max_seconds),
                      pages=PageCache(config.page_cache_bytes, config.audit_deadline_seconds), liveness=liveness,
                      shared_lock=shared_lock)
        if serving:
            runtime.refresher = SnapshotRefresher(snapshot, dsn, master)
            await runtime.refresher.start()
            runtime.usage_sync = UsageSync(runtime.usage, pool, snapshot.licences)
            await runtime.usage_sync.start()
            if config.witnesses:
                runtime.witnesses = WitnessPusher(pool, config.witnesses)
                writer.on_checkpoint = runtime.witnesses.wake
                await runtime.witnesses.start()
        return runtime

    @property
    def deliveries(self) -> Deliveries:
        """The delivery service over this process's snapshot, usage, pool and audit writer."""
        if self._deliveries is None:
            self._deliveries = Deliveries(self.snapshot, self.usage, self.pool, self.rate_limiter, self.pages,
                                          self.writer, self.config.home)
        return self._deliveries

    async def push_to_witnesses(self) -> None:
        """One round of pushing every log's newest checkpoint to GATEWAY_WITNESSES now (e.g. before an
        export, so that the bundle carries the cosignatures of the checkpoint just signed)."""
        if self.witnesses is not None:
            await self.witnesses.push_all()
        elif self.config.witnesses:
            pusher = WitnessPusher(self.pool, self.config.witnesses)
            try:
                await pusher.push_all()
            finally:
                await pusher.client.aclose()

    def hasher(self) -> KeyHasher:
        """The API key hasher: the snapshot's (kept current on rotation) when serving, else the one loaded."""
        return self.snapshot.hasher or self.secrets.hasher()

    async def close(self) -> None:
        """Drain the audit writer first: events of answered requests must reach the database. Then end
        the log, which returns this process's unspent quota leases."""
        await self.writer.close()
        if self.witnesses is not None:
            await self.witnesses.close()  # after the writer's final checkpoint, which it pushes too
        if self.usage_sync is not None:
            await self.usage_sync.close()
        if self.liveness is not None:
            await self.liveness.close()
        if self.refresher is not None:
            await self.refresher.close()
        await self.pool.close()
        if self.writer.own is not self.pool:
            await self.writer.own.close()
        if self.shared_lock is not None:
            await self.shared_lock.close()  # the next command may append to the shared log
