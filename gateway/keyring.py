"""The audit keyring's changes, each in the transaction of the event that records it (the CLI's `keys`).

The events are the signed key history a bundle carries (schemas/audit-format.md §4.3): a verifier takes
each audit key's validity from them, not from keys.json. The first key is made, with its
operator:keyring:create event, by the first audit writer that starts (gateway/audit/writer.py).
"""

from __future__ import annotations

from typing import Any

from gateway import signing_keys
from gateway.actors import Actor
from gateway.audit.events import EventKind, Outcome
from gateway.audit.format import key_created_detail, key_retired_detail
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, NotFound
from keys.sealing import MasterKey


async def rotate(writer: AuditWriter, actor: Actor, master: MasterKey) -> dict[str, Any]:
    """Make a new audit key current; the old one ends now (signing_keys.rotate) and keeps verifying.

    The key rows and the operator:keyring:rotate event commit together. Rotation locks the old key's
    row FOR UPDATE: a checkpoint being signed (FOR SHARE) finishes first, one about to be signed waits
    for this commit and then signs with the new key. The writer's append lock is taken only to write
    the event, and no signer holds it while it waits for the row, so the two cannot deadlock.
    """
    async with writer.change() as change:
        new = await signing_keys.rotate(change.conn, master, signing_keys.AUDIT)
        old = next((k for k in await signing_keys.public_keys(change.conn, signing_keys.AUDIT)
                    if k.key_id != new.key_id and k.not_after == new.not_before), None)
        detail = key_created_detail(new, old)
        change.record(actor.event(EventKind.KEYRING_ROTATE, Outcome.CHANGE, detail=detail))
    return detail


async def retire(writer: AuditWriter, actor: Actor, key_id: str) -> signing_keys.PublicKey:
    """Withdraw a rotated-out audit key now (suspected compromise): nothing it signs from now on verifies.

    Only brings the end forward: what it signed while it was valid still verifies."""
    async with writer.change() as change:
        key = await signing_keys.find(change.conn, key_id)
        if key is None or key.purpose != signing_keys.AUDIT:
            raise NotFound("audit signing key")
        if key.not_after is None:
            raise Conflict("this is the current audit key: rotate first ('gateway keys rotate --purpose audit')")
        retired = await signing_keys.retire(change.conn, key_id)
        assert retired is not None
        change.record(actor.event(EventKind.KEYRING_RETIRE, Outcome.CHANGE, detail=key_retired_detail(retired)))
    return retired
