"""Small builders for tests: vendors with admin keys, datasets, members and licences, through the domain code."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from gateway import credentials, vendors
from gateway.actors import cli_actor
from gateway.app import build_app
from gateway.runtime import Runtime
from gateway.sharing import SharingState
from keys.apikeys import KeyKind

COLUMNS = [
    {"name": "area", "type": "text", "description": "partition"},
    {"name": "day", "type": "date"},
    {"name": "count", "type": "integer"},
    {"name": "secret_note", "type": "text", "description": "a column no licence in these tests includes"},
]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class VendorFixture:
    id: uuid.UUID
    key: str
    client: httpx.AsyncClient
    runtime: Runtime

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.key)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, json=json, headers=self.headers, **kwargs)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def dataset(self, name: str = "footfall", rows: str | None = None) -> dict[str, Any]:
        dataset = await self.ok("POST", "/v1/admin/datasets", json={
            "name": name, "columns": COLUMNS, "partition_column": "area"})
        if rows is not None:
            await self.publish(dataset["id"], rows)
        return dataset

    async def publish(self, dataset_id: str, rows: str) -> dict[str, Any]:
        return await self.ok("POST", f"/v1/admin/datasets/{dataset_id}/versions",
                             content=("area,day,count,secret_note\n" + rows).encode(),
                             headers={"content-type": "text/csv"})

    async def member(self, name: str = "member-a") -> dict[str, Any]:
        return await self.ok("POST", "/v1/admin/members", json={"name": name})

    async def member_key(self, member_id: str, **extra: Any) -> dict[str, Any]:
        issued = await self.ok("POST", "/v1/admin/keys", json={"kind": "member", "member_id": member_id, **extra})
        await wait_for_snapshot(self.runtime, lambda: self.runtime.snapshot.credential(issued["key_id"]) is not None)
        return issued

    async def licence(self, member_id: str, dataset_id: str, partitions: list[str],
                      columns: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        return await self.ok("POST", "/v1/admin/licences", json={
            "member_id": member_id, "dataset_id": dataset_id, "partitions": partitions,
            "columns": columns or ["area", "day", "count"], "terms_text": "terms v1", **extra})


async def make_vendor(runtime: Runtime, client: httpx.AsyncClient, name: str | None = None) -> VendorFixture:
    vendor = await vendors.create(runtime.writer, cli_actor(), name or f"vendor-{uuid.uuid4().hex[:8]}")
    _, key = await credentials.issue(runtime.writer, cli_actor(vendor.id), runtime.hasher(), KeyKind.VENDOR,
                                     vendor.id)
    await wait_for_snapshot(runtime, lambda: runtime.snapshot.credential(key.split("_")[1]) is not None)
    return VendorFixture(vendor.id, key, client, runtime)


async def wait_for_snapshot(runtime: Runtime, condition: Any, timeout: float = 2.0) -> None:
    """Wait until LISTEN/NOTIFY has brought a change into the snapshot (within the 1 s promise)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the snapshot did not see the change in time")
        await asyncio.sleep(0.005)


@dataclass
class Licensed:
    """A vendor, a dataset with rows, a member with a key and an accepted licence."""

    vendor: VendorFixture
    dataset: dict[str, Any]
    member: dict[str, Any]
    key: str
    licence: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.key)


ROWS = "".join(f"{area},2026-04-0{d},{d * 10 + i},note-{area}-{d}-{i}\n"
               for area in ("north", "south", "east") for d in range(1, 4) for i in range(5))


async def licensed_member(runtime: Runtime, client: httpx.AsyncClient, partitions: list[str] | None = None,
                          accept: bool = True, **licence_extra: Any) -> Licensed:
    vendor = await make_vendor(runtime, client)
    dataset = await vendor.dataset(rows=ROWS)
    member = await vendor.member()
    key = (await vendor.member_key(member["id"]))["api_key"]
    licence = await vendor.licence(member["id"], dataset["id"], partitions or ["north", "south"], **licence_extra)
    await wait_for_snapshot(runtime, lambda: uuid.UUID(licence["id"]) in runtime.snapshot.licences)
    if accept:
        await accept_terms(client, licence["id"], key)
        await wait_for_snapshot(runtime, lambda: runtime.snapshot.licences[uuid.UUID(licence["id"])].accepted_terms)
    return Licensed(vendor, dataset, member, key, licence)


async def accept_terms(client: httpx.AsyncClient, licence_id: str, key: str) -> dict[str, Any]:
    """Read the licence's current terms and accept exactly those, as a member's software does."""
    terms = await client.get(f"/v1/licences/{licence_id}/terms", headers=auth(key))
    assert terms.status_code == 200, terms.text
    response = await client.post(f"/v1/licences/{licence_id}/accept", headers=auth(key),
                                 json={"terms_version": terms.json()["version"], "terms_sha256": terms.json()["sha256"]})
    assert response.status_code == 200, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def records_path_of(licensed: Licensed) -> str:
    return f"/v1/datasets/{licensed.dataset['id']}/records"


@dataclass
class Served:
    base: str
    app: Starlette

    @property
    def state(self) -> SharingState:
        state: SharingState = self.app.state.runtime.deliveries.sharing
        return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(runtime: Runtime) -> AsyncIterator[Served]:
    """The gateway on 127.0.0.1 over real HTTP (uvicorn, real sockets), in this event loop."""
    port = _free_port()
    app = build_app(runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        await serving
