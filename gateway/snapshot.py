"""The in-memory snapshot that authenticates and authorises every request without a database round trip.

Loaded whole at start, then kept current by LISTEN/NOTIFY: every change to a row the snapshot holds
fires a trigger (schemas/migrations/0001) that names the row, and the refresher reloads exactly those
rows, usually within milliseconds of the commit, on every instance.

If the listening connection is lost, notifications may have been missed: the snapshot turns
not-ready, which makes every authenticated request fail closed with 503 (a revocation is never
missed), until it has reconnected and reloaded in full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.pgproto.pgproto import UUID as PgUUID

from gateway import (
    access_tokens,
    credentials,
    datasets,
    licences,
    members,
    metrics,
    oauth_clients,
    server_secrets,
    tasks,
    vendors,
)
from gateway.access_tokens import JwtKeyring
from gateway.credentials import Credential
from gateway.datasets import Dataset
from gateway.licences import Licence
from gateway.members import Member
from gateway.oauth_clients import OAuthClient
from gateway.server_secrets import ServerSecrets
from gateway.vendors import Vendor
from keys.hashing import KeyHasher
from keys.sealing import MasterKey

log = logging.getLogger(__name__)

CHANNEL = "gateway_changes"


@dataclass
class Snapshot:
    vendors: dict[uuid.UUID, Vendor] = field(default_factory=dict)
    datasets: dict[uuid.UUID, Dataset] = field(default_factory=dict)
    members: dict[uuid.UUID, Member] = field(default_factory=dict)
    licences: dict[uuid.UUID, Licence] = field(default_factory=dict)
    credentials: dict[uuid.UUID, Credential] = field(default_factory=dict)
    credentials_by_key_id: dict[str, Credential] = field(default_factory=dict)
    oauth_clients: dict[uuid.UUID, OAuthClient] = field(default_factory=dict)
    oauth_clients_by_client_id: dict[str, OAuthClient] = field(default_factory=dict)
    # The JWT keys that verify access tokens (looked up by kid only here) and the current one that signs.
    jwt: JwtKeyring = field(default_factory=JwtKeyring)
    # (member id, dataset id) -> the licence that governs it (the live one, else the latest revoked), and
    # member id -> all its licences. Flat dicts and tuples, not a dict per member: at 100,000 members
    # that is the difference of ~35 MB (loadtests/bench_snapshot.py).
    _governing: dict[tuple[uuid.UUID, uuid.UUID], Licence] = field(default_factory=dict)
    _licences_of_member: dict[uuid.UUID, tuple[Licence, ...]] = field(default_factory=dict)
    secrets: ServerSecrets | None = None
    hasher: KeyHasher | None = None
    ready: bool = False
    # Bumped on every change, so caches keyed by it never serve a view older than the snapshot.
    generation: int = 0

    def credential(self, key_id: str) -> Credential | None:
        return self.credentials_by_key_id.get(key_id)

    def licence_for(self, member_id: uuid.UUID, dataset_id: uuid.UUID) -> Licence | None:
        return self._governing.get((member_id, dataset_id))

    def licences_of(self, member_id: uuid.UUID) -> list[Licence]:
        """The governing licence of each dataset the member has (had) a licence for."""
        return list(_governing(self._licences_of_member.get(member_id, ())).values())

    # -- applying loaded rows -------------------------------------------------------------------

    def put_vendors(self, rows: list[Vendor], ids: list[uuid.UUID] | None) -> None:
        _replace(self.vendors, rows, ids)

    def put_datasets(self, rows: list[Dataset], ids: list[uuid.UUID] | None) -> None:
        _replace(self.datasets, rows, ids)

    def put_members(self, rows: list[Member], ids: list[uuid.UUID] | None) -> None:
        _replace(self.members, rows, ids)

    def put_credentials(self, rows: list[Credential], ids: list[uuid.UUID] | None) -> None:
        stale = self.credentials.values() if ids is None else [self.credentials[i] for i in ids if i in self.credentials]
        for old in list(stale):
            self.credentials_by_key_id.pop(old.key_id, None)
        _replace(self.credentials, rows, ids)
        for credential in rows:
            self.credentials_by_key_id[credential.key_id] = credential

    def put_oauth_clients(self, rows: list[OAuthClient], ids: list[uuid.UUID] | None) -> None:
        stale = self.oauth_clients.values() if ids is None else [
            self.oauth_clients[i] for i in ids if i in self.oauth_clients]
        for old in list(stale):
            self.oauth_clients_by_client_id.pop(old.client_id, None)
        _replace(self.oauth_clients, rows, ids)
        for client in rows:
            self.oauth_clients_by_client_id[client.client_id] = client

    def put_licences(self, rows: list[Licence], ids: list[uuid.UUID] | None) -> None:
        if ids is None:
            self.licences.clear()
            self._licences_of_member.clear()
            self._governing.clear()
            ids = []
        rows = _share_licence_values(rows)
        replaced = set(ids)
        loaded: dict[uuid.UUID, list[Licence]] = {}
        for licence_id in ids:
            old = self.licences.pop(licence_id, None)
            if old is not None:
                loaded.setdefault(old.member_id, [])
        for licence in rows:
            self.licences[licence.id] = licence
            loaded.setdefault(licence.member_id, []).append(licence)
        for member_id, fresh in loaded.items():
            before = self._licences_of_member.pop(member_id, ())
            for licence in before:
                self._governing.pop((member_id, licence.dataset_id), None)
            after = tuple(lic for lic in before if lic.id not in replaced) + tuple(fresh)
            if after:
                self._licences_of_member[member_id] = after
            for dataset_id, licence in _governing(after).items():
                self._governing[(member_id, dataset_id)] = licence

    def put_secrets(self, secrets: ServerSecrets) -> None:
        self.secrets = secrets
        self.hasher = secrets.hasher()


def _share_licence_values(rows: list[Licence]) -> list[Licence]:
    """The licences with equal partition and column lists, term sets and their items as one object each.

    Many licences share a column set, partitions (prefecture codes) and accepted terms ({1}), but each
    arrives as fresh tuples, strings and frozensets (text arrays escape _SharedValues): sharing them saves
    ~75 MB at 100,000 licences for ~0.4 s of load time (loadtests/bench_snapshot.py). Cheaper still in
    Licence.from_row itself, which would make this pass a no-op.
    """
    shared: dict[Any, Any] = {}

    def share(value: Any) -> Any:
        return shared.setdefault(value, value)

    out = []
    for licence in rows:
        partitions = share(tuple(share(p) for p in licence.partitions))
        out.append(dataclasses.replace(
            licence, partitions=partitions, columns=share(tuple(share(c) for c in licence.columns)),
            accepted_terms=share(licence.accepted_terms), partition_set=share(frozenset(partitions))))
    return out


def _governing(licences: tuple[Licence, ...]) -> dict[uuid.UUID, Licence]:
    """Per dataset, the licence that governs: the live one, else the latest revoked."""
    governing: dict[uuid.UUID, Licence] = {}
    for licence in sorted(licences, key=lambda lic: (lic.live, lic.valid_from)):
        governing[licence.dataset_id] = licence  # later (live) ones win
    return governing


def _replace(table: dict[uuid.UUID, Any], rows: list[Any], ids: list[uuid.UUID] | None) -> None:
    if ids is None:
        table.clear()
    else:
        for row_id in ids:
            table.pop(row_id, None)
    for row in rows:
        table[row.id] = row


_SECTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "vendors": (vendors.load, "put_vendors"),
    "datasets": (datasets.load, "put_datasets"),
    "members": (members.load, "put_members"),
    "licences": (licences.load, "put_licences"),
    "credentials": (credentials.load, "put_credentials"),
    "oauth_clients": (oauth_clients.load, "put_oauth_clients"),
}


class _SharedValues:
    """Decodes uuid and text columns on the snapshot's connection so that equal values are one object.

    The same vendor, dataset and member ids recur in hundreds of thousands of rows (a member's id is in
    its row, in each of its keys and in each of its licences), as do short texts (statuses, labels), and
    asyncpg's UUID objects grow to ~150 bytes once hashed. Sharing them saves ~75 MB at 100,000 members
    (loadtests/bench_snapshot.py). The tables live for one load only, so values of rows long gone are not
    kept. (Text arrays keep asyncpg's own decoder: codecs do not reach array elements.)
    """

    def __init__(self) -> None:
        self.ids: dict[bytes, uuid.UUID] = {}
        self.texts: dict[str, str] = {}

    def decode_uuid(self, data: bytes) -> uuid.UUID:
        found = self.ids.get(data)
        if found is None:
            # asyncpg's own UUID type (what every other query returns): built in C, hashed in C.
            found = self.ids[data] = PgUUID(data)
        return found

    def decode_text(self, text: str) -> str:
        return self.texts.setdefault(text, text)

    @staticmethod
    def encode_uuid(value: uuid.UUID | str) -> bytes:
        return (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).bytes

    async def install(self, conn: asyncpg.Connection) -> None:
        await conn.set_type_codec("uuid", schema="pg_catalog", encoder=self.encode_uuid, decoder=self.decode_uuid,
                                  format="binary")
        await conn.set_type_codec("text", schema="pg_catalog", encoder=str, decoder=self.decode_text, format="text")

    def clear(self) -> None:
        self.ids.clear()
        self.texts.clear()


class SnapshotRefresher:
    """Owns one connection that LISTENs for changes and reloads what they name into the snapshot."""

    def __init__(self, snapshot: Snapshot, dsn: str, master: MasterKey) -> None:
        self.snapshot = snapshot
        self.dsn = dsn
        self.master = master
        self._conn: asyncpg.Connection | None = None
        self._changed: dict[str, set[uuid.UUID]] = {}
        self._secrets_changed = False
        self._signing_keys_changed = False
        self._wakeup = asyncio.Event()
        self._heard_at: float | None = None  # when the oldest change not yet applied was announced
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shared = _SharedValues()

    async def start(self) -> None:
        await self._connect_and_load()
        self._task = asyncio.create_task(self._run(), name="snapshot-refresher")

    async def close(self) -> None:
        await tasks.stop(self._task)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _connect_and_load(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        await self._shared.install(conn)
        # Listen before loading: a change committed during the load is then heard and reloaded after it.
        await conn.add_listener(CHANNEL, self._on_notify)
        # Only the current connection's end matters; an old one we closed ourselves says nothing.
        conn.add_termination_listener(lambda ended: self._on_lost() if ended is self._conn else None)
        self._conn = conn
        self._changed.clear()
        snapshot = self.snapshot
        snapshot.put_secrets(await server_secrets.load(conn, self.master))
        snapshot.jwt = await access_tokens.load_keyring(conn, self.master)
        # The cyclic garbage collector would walk the whole growing heap again and again while a full
        # load allocates millions of objects, none of them in cycles: paused, the load takes ~45% less
        # time at 100,000 members (loadtests/bench_snapshot.py). Reference counting still frees garbage.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for loader, put in _SECTIONS.values():
                getattr(snapshot, put)(await loader(conn), None)
        finally:
            self._shared.clear()
            if collecting:
                gc.enable()
        snapshot.generation += 1
        snapshot.ready = True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        section, _, row_id = payload.partition(":")
        if section == "server_secrets":
            self._secrets_changed = True
        elif section == "signing_keys":  # named by a text key id, not a uuid: the (small) keyring reloads whole
            self._signing_keys_changed = True
        elif section in _SECTIONS:
            self._changed.setdefault(section, set()).add(uuid.UUID(row_id))
        if self._heard_at is None:
            self._heard_at = time.perf_counter()
        self._wakeup.set()

    def _on_lost(self) -> None:
        self.snapshot.ready = False
        self._lost.set()
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._lost.is_set():
                await self._reconnect()
                continue
            try:
                await self._apply_changes()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("snapshot refresh failed, reloading in full: %s", exc)
                self._on_lost()

    async def _apply_changes(self) -> None:
        assert self._conn is not None
        changed, self._changed = self._changed, {}
        heard_at, self._heard_at = self._heard_at, None
        if self._secrets_changed:
            self._secrets_changed = False
            self.snapshot.put_secrets(await server_secrets.load(self._conn, self.master))
        if self._signing_keys_changed:
            self._signing_keys_changed = False
            self.snapshot.jwt = await access_tokens.load_keyring(self._conn, self.master)
        try:
            for section, ids in changed.items():
                loader, put = _SECTIONS[section]
                id_list = list(ids)
                getattr(self.snapshot, put)(await loader(self._conn, id_list), id_list)
        finally:
            self._shared.clear()
        self.snapshot.generation += 1
        if heard_at is not None:
            metrics.SNAPSHOT_LAG.observe(time.perf_counter() - heard_at)

    async def _reconnect(self) -> None:
        delay = 0.1
        while True:
            try:
                if self._conn is not None and not self._conn.is_closed():
                    self._conn.terminate()
                await self._connect_and_load()
                self._lost.clear()
                log.info("snapshot reconnected and reloaded")
                return
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("snapshot cannot reconnect yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
