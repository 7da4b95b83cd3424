"""gateway/licences.py: grant and amend take only the settable columns, whoever calls them."""

from __future__ import annotations

import uuid

import httpx
import pytest

from gateway import licences
from gateway.actors import cli_actor
from gateway.errors import InvalidInput
from gateway.runtime import Runtime
from tests.factories import licensed_member, make_vendor


@pytest.mark.parametrize("column", ["vendor_id", "status", "terms_version", "id = id; --", "accepted_terms"])
async def test_grant_and_amend_refuse_every_column_that_is_not_settable(runtime: Runtime, client: httpx.AsyncClient,
                                                                          column: str) -> None:
    """The statements are built from the values' names: the domain itself refuses any other name, so a
    caller (API, CLI, console) can never reach a column such as the licence's vendor or status."""
    licensed = await licensed_member(runtime, client)
    vendor_id, licence_id = licensed.vendor.id, uuid.UUID(licensed.licence["id"])
    before = await runtime.pool.fetchrow("SELECT * FROM licences WHERE id = $1", licence_id)
    with pytest.raises(InvalidInput, match="unknown licence field"):
        await licences.amend(runtime.writer, cli_actor(vendor_id), vendor_id, licence_id, {column: "x"}, None)
    assert await runtime.pool.fetchrow("SELECT * FROM licences WHERE id = $1", licence_id) == before

    other = await make_vendor(runtime, client)
    dataset = await other.dataset()
    member = await other.member()
    with pytest.raises(InvalidInput, match="unknown licence field"):
        await licences.grant(runtime.writer, cli_actor(other.id), other.id, uuid.UUID(member["id"]),
                             uuid.UUID(dataset["id"]), "terms", {"partitions": ["north"], "columns": ["area"],
                                                                 column: "x"})
    assert await runtime.pool.fetchval("SELECT count(*) FROM licences WHERE vendor_id = $1", other.id) == 0


async def test_every_settable_field_is_a_column(runtime: Runtime) -> None:
    columns = {row["column_name"] for row in await runtime.pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'licences'")}
    assert set(licences.SETTABLE) <= columns
