"""Pushing checkpoints to witnesses (c2sp.org/tlog-witness) and keeping their cosignatures.

For each witness of GATEWAY_WITNESSES and each log whose newest checkpoint the witness has not
cosigned, the pusher sends `POST <url>/add-checkpoint`: `old <size>` (the largest size the witness
cosigned, from `audit_cosignatures`, or what it last said it holds), the consistency proof from that
size read from the log's tiles, and the checkpoint note. A 409 names the witness's size: the request
is made again from it. The cosignature line that comes back is verified with the witness's configured
key before it is stored (any other line is ignored); evidence bundles append the stored lines to the
checkpoint's note (schemas/audit-format.md §8).

A round runs when the writer signs a checkpoint (AuditWriter.on_checkpoint) and at least every
`interval` seconds, which also picks up the final checkpoints survivors sign for dead logs and the
CLI's logs. Instances of one deployment share the work: a round for a witness takes a PostgreSQL
advisory lock, and an instance that does not get it leaves that witness to the one that did.
Only a log's newest checkpoint is pushed: a witness that was away is brought up to date in one step.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx

from gateway.audit import tiles
from keys.cosignatures import CosignatureVerifier, cosignature_lines
from keys.notes import NoteError

log = logging.getLogger(__name__)

SIZE_CONTENT_TYPE = "text/x.tlog.size"

# Per log: the newest checkpoint, and the largest size this witness cosigned (0: none).
_PENDING = """
    SELECT l.log_id, c.tree_size, c.note, coalesce(a.size, 0) AS acked
    FROM audit_logs l
    CROSS JOIN LATERAL (SELECT tree_size, note FROM audit_checkpoints
                        WHERE log_id = l.log_id ORDER BY tree_size DESC LIMIT 1) c
    LEFT JOIN LATERAL (SELECT max(tree_size) AS size FROM audit_cosignatures
                       WHERE witness_vkey = $1 AND log_id = l.log_id) a ON true
    WHERE c.tree_size > coalesce(a.size, 0)
    ORDER BY l.log_id"""

_STORE = ("INSERT INTO audit_cosignatures (log_id, tree_size, witness_vkey, signature_line, cosigned_at) "
          "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")


@dataclass(frozen=True)
class WitnessConfig:
    url: str
    verifier: CosignatureVerifier

    @property
    def vkey(self) -> str:
        return self.verifier.vkey


class WitnessRefused(Exception):
    """A witness answered add-checkpoint with an error status."""


class WitnessPusher:
    def __init__(self, pool: asyncpg.Pool, witnesses: Sequence[tuple[str, str]], *,
                 client: httpx.AsyncClient | None = None, interval: float = 5.0, timeout: float = 10.0) -> None:
        self.pool = pool
        self.witnesses = [WitnessConfig(url.rstrip("/"), CosignatureVerifier.from_vkey(vkey)) for url, vkey in witnesses]
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None
        self.interval = interval
        # What a witness said it holds (409), by (witness vkey, log): the next request starts there.
        self._sizes: dict[tuple[str, str], int] = {}
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing: set[str] = set()  # witnesses whose last round failed: logged once, not every round
        self._round_lock = asyncio.Lock()  # one round at a time in this process (a wake and an export's)

    def wake(self) -> None:
        """A checkpoint was signed: push it now."""
        self._due.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="audit-witnesses")

    async def close(self, final_round_seconds: float = 5.0) -> None:
        """Stop, after a last round for what the writer signed when it closed."""
        self._closing = True
        self._due.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            async with asyncio.timeout(final_round_seconds):
                await self.push_all()
        except TimeoutError:
            log.warning("witnesses: the last round did not finish within %.0f s", final_round_seconds)
        if self._own_client:
            await self.client.aclose()

    async def _forever(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._due.wait(), self.interval)
            except TimeoutError:
                pass
            self._due.clear()
            if self._closing:
                return
            await self.push_all()

    async def push_all(self) -> None:
        """One round: every witness brought up to every log's newest checkpoint, as far as it agrees."""
        async with self._round_lock:
            await asyncio.gather(*(self._round(witness) for witness in self.witnesses))

    async def _round(self, witness: WitnessConfig) -> None:
        try:
            async with self.pool.acquire() as conn:
                # One instance per witness at a time: two would race each other into 409s.
                if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext('audit_witness'), hashtext($1))",
                                           witness.vkey):
                    return
                try:
                    for row in await conn.fetch(_PENDING, witness.vkey):
                        await self._push(conn, witness, row["log_id"], row["tree_size"], row["note"], row["acked"])
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext('audit_witness'), hashtext($1))",
                                       witness.vkey)
        except (httpx.HTTPError, WitnessRefused, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                TimeoutError) as exc:
            if witness.url not in self._failing:
                log.warning("witness %s: %s; retrying every %.0f s", witness.url, exc, self.interval)
            self._failing.add(witness.url)
        else:
            if witness.url in self._failing:
                log.info("witness %s: cosigning again", witness.url)
            self._failing.discard(witness.url)

    async def _push(self, conn: asyncpg.Connection, witness: WitnessConfig, log_id: str, size: int, note: str,
                    acked: int) -> None:
        old = self._sizes.get((witness.vkey, log_id), acked)
        for _ in range(3):  # a 409 says where to start; the second request from there should hold
            if old > size:
                # The witness holds a larger tree of this log than the gateway ever signed: a fork, or the
                # state of another deployment. Nothing to push that it could accept.
                raise WitnessRefused(f"it holds {old} entries of log {log_id}, more than the newest checkpoint's "
                                     f"{size}: investigate (schemas/audit-format.md §8)")
            proof = [] if old in (0, size) else await tiles.prove(
                conn, log_id, size, lambda tree, old=old: tree.consistency_proof(old, size))
            response = await self.client.post(f"{witness.url}/add-checkpoint", content=_body(old, proof, note))
            if response.status_code == 409:
                old = _size(response)
                self._sizes[(witness.vkey, log_id)] = old
                continue
            if response.status_code != 200:
                raise WitnessRefused(f"add-checkpoint of log {log_id} at size {size} (old {old}) answered "
                                     f"{response.status_code}: {response.text.strip()[:200]}")
            await self._store(conn, witness, log_id, size, note, response.text)
            self._sizes[(witness.vkey, log_id)] = size
            return
        raise WitnessRefused(f"add-checkpoint of log {log_id}: the witness's size kept changing")

    @staticmethod
    async def _store(conn: asyncpg.Connection, witness: WitnessConfig, log_id: str, size: int, note: str,
                     answer: str) -> None:
        """Keep the witness's cosignature if it verifies with the configured key; other lines are ignored.
        As tlog-witness suggests, the answer's lines are read as signatures of the checkpoint note."""
        try:
            found = cosignature_lines(note + answer, [witness.verifier])
        except NoteError as exc:
            raise WitnessRefused(f"add-checkpoint of log {log_id} at size {size}: the answer is not a valid "
                                 f"cosignature: {exc.reason}") from None
        if witness.vkey not in found:
            raise WitnessRefused(f"add-checkpoint of log {log_id} at size {size}: no cosignature by "
                                 f"{witness.verifier.name} in the answer")
        timestamp, line = found[witness.vkey]
        await conn.execute(_STORE, log_id, size, witness.vkey, line, datetime.fromtimestamp(timestamp, UTC))


def _body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(node).decode("ascii") for node in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")


def _size(response: httpx.Response) -> int:
    """The witness's size from a 409 answer: `text/x.tlog.size`, a decimal and a newline."""
    text = response.text
    if response.headers.get("content-type", "").split(";")[0].strip() != SIZE_CONTENT_TYPE \
            or not text.endswith("\n") or not text[:-1].isdigit() or not text[:-1].isascii():
        raise WitnessRefused(f"a 409 answer is not a {SIZE_CONTENT_TYPE} size: {text[:40]!r}")
    return int(text[:-1])
