"""Console benchmark: every console page's latency with 1,000 members, 10,000 keys and 1,000,000 audit
events, against a target of 100 ms at p95; and proof that the console adds nothing to the member API.

1. **Seeds** a throwaway database (loadtests/common.py) with one vendor, one dataset (a demo version of
   --records records published by `datasets.publish`), --members members (`members.create`), --keys
   member API keys spread evenly over them (`credentials.issue`), a licence per member
   (`licences.grant`, one to three of the version's prefectures, one of three column sets) with its
   terms accepted by the member's first key (`licences.accept_terms`), and an OAuth client for the
   first member (`oauth_clients.create`): every object through the domain functions the API and the
   CLI call, with their audit events.
2. **Writes --events audit events through the real `AuditWriter`** (numbering, vendor and member
   series, canonical JSON, leaf hashes, the Merkle tree, the usage they count, signed checkpoints),
   in a log of its own as a gateway instance that ran for the previous 60 days would have left. The
   writer is fast enough for this (10,000–15,000 events/s on this machine's PostgreSQL 15: a million
   in 65–100 s; bench_audit gets ~50,000 on the embedded PostgreSQL 18), so no row is forged: what
   the console reads is what a running gateway writes. The events are shaped like the member API's
   (request, actor, licence, versions, partitions, delivery and its digest): 80 %
   `member:records:deliver` allowed, 10 % `member:dataset:read`, 4 % deliveries refused (a quota, an
   unlicensed partition), 3 % `member:usage:read`, 3 % `auth:credential:reject`. Their times run
   evenly from 60 days ago to a minute ago, in the order they are numbered (the month partitions are
   made first with `audit_events_ensure_month`, the function the writer calls). Members are drawn
   with a skew (u³): the first member has about 10 % of all events, the last a few hundred, as real
   traffic falls off. Then `VACUUM (ANALYZE)`, as autovacuum would after a bulk load.
3. **Creates console users** with `console_users.create`: a vendor admin, a compliance officer, the
   busiest member's user (`member`) and the quietest member's (`member-quiet`: a list of its events
   must not walk everyone else's). Starts a real `gateway serve` process on 127.0.0.1 (as
   tests/processes.py does; a port the OS picks, log level WARNING) and signs each user in over HTTP
   as a browser does: the sign-in form with its CSRF token, the password, then a TOTP code
   (keys/totp.py).
4. **Discovers the pages** from `gateway.http.console.routes`: every GET route under /console/, its
   path parameters filled by name with ids of the seeded data (dataset_id, member_id, licence_id,
   credential_id, event_id — a delivery in the middle of the 60 days —, number, user_id, client_id,
   name for the static files; a member user gets its own licence and delivery, the vendor's people
   the busiest member's); the audit search also with its filters (60 days, the busiest
   and the quietest member, a kind and outcome, a dataset and a member); and each list's next page,
   by its own link. The roles a page admits are read from its `page(*roles)` decorator; a route
   without it is measured for every user. A user whose role a page refuses asks it once and must
   get the 404 page. A route with a parameter no value is known for is listed as skipped.
5. **Measures** each page --repeat times per user (after --warm-up requests), one request at a time
   (httpx, keep-alive; time from sending to the last byte of the body; every page read commits its
   `console:page:read` event). Prints page, user, p50, p95 and max in ms, PASS or FAIL against
   100 ms at p95 with the expected status (200; 303 too for the routes outside page()); exit status
   1 if any page fails, a refused role does not get the 404 page, or the hot-path check fails.
6. **Nothing on the hot path**, shown structurally and measured: the app's middleware stack holds no
   console code; every member API route precedes every console route, so a member request is matched
   before any console pattern is tried; and a profiler hook counts the calls into console code
   (gateway/http/console/, gateway/console_users.py) during --hot-path member requests through the
   in-process app (ASGITransport): zero, against a control console page that makes many.

Figures go to stdout and loadtests/results/console.json; progress to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import itertools
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a file (python loadtests/bench_console.py): this checkout's gateway and loadtests, not
    # whichever checkout the environment has installed.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from starlette.routing import Route

from gateway import config as config_module
from gateway import console_users, credentials, datasets, licences, members, oauth_clients, times
from gateway.actors import Actor, cli_actor
from gateway.app import build_app
from gateway.audit.events import AuditEvent, EventKind, Outcome
from gateway.audit.writer import AuditWriter, new_log_id
from gateway.demo_data import DEMO_COLUMNS, demo_csv_chunks
from gateway.runtime import Runtime
from keys import totp
from keys.apikeys import KeyKind
from loadtests.common import (
    RESULTS_DIR,
    BenchDatabase,
    Progress,
    bench_database,
    check_database_url,
    create_demo_dataset,
    finish,
    gateway_env,
    machine_info,
    new_master_key,
    open_runtime,
    run,
    say,
)

EXAMPLES = """examples:
  python -m loadtests.bench_console                        # 1,000 members, 10,000 keys, 1,000,000 events
  python -m loadtests.bench_console --events 100000 --repeat 20   # a quicker run
"""
TARGET_P95_MS = 100.0
ROLES = console_users.ROLES
PASSWORD = "bench-console-password"  # a throwaway database's users
HISTORY_DAYS = 60
ROOT = Path(__file__).resolve().parent.parent
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
TERMS = "bench terms: the records are used for analytics only, and not passed on"
COLUMN_SETS = [[c.name for c in DEMO_COLUMNS], ["prefecture", "hour", "population"], ["prefecture", "population"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_console", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000, metavar="N", help="members (default 1000)")
    parser.add_argument("--keys", type=int, default=10_000, metavar="N",
                        help="member API keys, spread evenly over the members (default 10000)")
    parser.add_argument("--events", type=int, default=1_000_000, metavar="N",
                        help="audit events over the last 60 days (default 1000000)")
    parser.add_argument("--records", type=int, default=20_000, metavar="N",
                        help="records of the dataset's version (default 20000)")
    parser.add_argument("--repeat", type=int, default=50, metavar="K",
                        help="timed requests per page and role (default 50)")
    parser.add_argument("--warm-up", type=int, default=3, metavar="K",
                        help="untimed requests per page and role first (default 3)")
    parser.add_argument("--hot-path", type=int, default=200, metavar="K",
                        help="member API requests traced for console calls (default 200)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "console.json", metavar="FILE",
                        help="where to write the figures as JSON (default loadtests/results/console.json)")
    args = parser.parse_args(argv)
    if args.members < 1 or args.keys < args.members or args.events < 1000 or args.repeat < 1:
        parser.error("at least one member, a key per member, 1,000 events and one request per page")
    return args


# -- seeding ----------------------------------------------------------------------------------------

@dataclass
class Seeded:
    vendor_id: uuid.UUID
    dataset_id: uuid.UUID
    partitions: list[str]
    member_ids: list[uuid.UUID]
    licence_ids: list[uuid.UUID]
    keys: dict[uuid.UUID, list[uuid.UUID]]          # member -> its credentials
    first_token: str                                # the first member's first API key
    client_id: str = ""
    deliveries: dict[int, uuid.UUID] = field(default_factory=dict)  # mid-history: member 0's and the last's
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


async def gather_limited(coroutines: Iterator[Any], limit: int, progress: Progress | None = None) -> list[Any]:
    """Run the coroutines `limit` at a time, in order; their results in order."""
    results: list[Any] = []
    pending = list(coroutines)
    done = 0
    for start in range(0, len(pending), limit):
        results += await asyncio.gather(*pending[start:start + limit])
        done += len(pending[start:start + limit])
        if progress is not None:
            progress(done)
    if progress is not None:
        progress.finish()
    return results


async def seed_objects(runtime: Runtime, args: argparse.Namespace) -> Seeded:
    writer, hasher = runtime.writer, runtime.hasher()
    started = time.perf_counter()
    vendor, dataset = await create_demo_dataset(runtime)
    actor = cli_actor(vendor.id)

    async def upload() -> AsyncIterator[bytes]:
        for chunk in demo_csv_chunks(args.records):
            yield chunk

    say(f"publishing {args.records:,} demo records (datasets.publish)")
    version = await datasets.publish(writer, actor, dataset, upload(), "csv", max_bytes=runtime.config.max_upload_bytes)
    partitions = sorted(version.partitions)
    rng = random.Random(2026)

    say(f"creating {args.members:,} members (members.create)")
    member_list = await gather_limited(
        (members.create(writer, actor, vendor.id, f"Bench Member {i:04d} 株式会社") for i in range(args.members)),
        8, Progress("members", args.members, unit="members", scale=1))
    member_ids = [m.id for m in member_list]

    say(f"issuing {args.keys:,} member API keys (credentials.issue)")
    owners = [member_ids[i % len(member_ids)] for i in range(args.keys)]
    issued = await gather_limited(
        (credentials.issue(writer, actor, hasher, KeyKind.MEMBER, vendor.id, owner, label=f"key {i // len(member_ids)}")
         for i, owner in enumerate(owners)), 8, Progress("keys", args.keys, unit="keys", scale=1))
    keys: dict[uuid.UUID, list[uuid.UUID]] = {m: [] for m in member_ids}
    for owner, (credential, _) in zip(owners, issued, strict=True):
        keys[owner].append(credential.id)
    first_token = issued[0][1]

    say(f"granting {args.members:,} licences and accepting their terms (licences.grant, licences.accept_terms)")

    async def licence_for(member_id: uuid.UUID, chosen: list[str], columns: list[str]) -> uuid.UUID:
        licence = await licences.grant(writer, actor, vendor.id, member_id, dataset.id, TERMS, {
            "partitions": chosen, "columns": columns, "valid_from": datetime(2026, 4, 1, tzinfo=UTC),
            "records_per_month": 5_000_000, "bytes_per_month": 2_000_000_000, "requests_per_second": 50.0,
            "burst": 100})
        member_actor = Actor(kind="member", vendor_id=vendor.id, member_id=member_id, credential_id=keys[member_id][0])
        await licences.accept_terms(writer, member_actor, licence, 1, licences.terms_sha256(TERMS))
        return licence.id

    choices = [(sorted(rng.sample(partitions, min(len(partitions), rng.randint(1, 3)))), rng.choice(COLUMN_SETS))
               for _ in member_ids]
    licence_ids = await gather_limited(
        (licence_for(m, chosen, columns) for m, (chosen, columns) in zip(member_ids, choices, strict=True)),
        8, Progress("licences", args.members, unit="licences", scale=1))
    client, _ = await oauth_clients.create(writer, actor, hasher, vendor.id, member_ids[0], label="bench OAuth client")
    seeded = Seeded(vendor.id, dataset.id, partitions, member_ids, licence_ids, keys, first_token, client.client_id)
    seeded.seconds["objects"] = round(time.perf_counter() - started, 1)
    return seeded


def history(seeded: Seeded, count: int, licence_partitions: dict[uuid.UUID, list[str]],
            end: datetime) -> Iterator[AuditEvent]:
    """`count` member-API events from 60 days before `end` to `end`, in time order (see the docstring)."""
    rng = random.Random(18)
    start = end - timedelta(days=HISTORY_DAYS)
    step = (end - start) / count
    members_n = len(seeded.member_ids)
    # The deliveries the event pages show, mid-history: the busiest member's and the quietest one's.
    shown_at = {count // 2: 0, count // 2 + 1: members_n - 1}
    for i in range(count):
        at = start + step * i
        index = min(int(members_n * rng.random() ** 3), members_n - 1)
        roll = rng.random()
        if i in shown_at:
            index, roll = shown_at[i], 0.0
        member, licence = seeded.member_ids[index], seeded.licence_ids[index]
        credential = seeded.keys[member][i % len(seeded.keys[member])]
        common: dict[str, Any] = {
            "at": at, "request_id": f"bench-{i:012d}", "method": "GET", "client": "203.0.113.7",
            "user_agent": "analytics-client/2.1 (python-httpx)", "credential_id": credential, "actor": "member",
            "vendor_id": seeded.vendor_id, "member_id": member}
        dataset_path = f"/v1/datasets/{seeded.dataset_id}"
        if roll < 0.80:
            records = rng.choice((100, 1000, 1000, 5000))
            event = AuditEvent(kind=EventKind.RECORDS_DELIVER, outcome=Outcome.ALLOW, path=dataset_path + "/records",
                               status=200, dataset_id=seeded.dataset_id, licence_id=licence, terms_version=1,
                               versions=[1], partitions=licence_partitions[licence], records=records,
                               bytes=records * 48, sha256=rng.randbytes(32).hex(), complete=True, **common)
            if i in shown_at:
                seeded.deliveries[0 if index == 0 else -1] = event.event_id
        elif roll < 0.90:
            event = AuditEvent(kind=EventKind.DATASET_READ, outcome=Outcome.ALLOW, path=dataset_path, status=200,
                               dataset_id=seeded.dataset_id, licence_id=licence, terms_version=1, **common)
        elif roll < 0.94:
            quota = roll < 0.925
            event = AuditEvent(kind=EventKind.RECORDS_DELIVER, outcome=Outcome.DENY,
                               reason="the licence's monthly record quota is used up" if quota else
                               "partition 47 is not licensed", path=dataset_path + "/records",
                               status=429 if quota else 403, dataset_id=seeded.dataset_id, licence_id=licence,
                               terms_version=1, **common)
        elif roll < 0.97:
            event = AuditEvent(kind=EventKind.USAGE_READ, outcome=Outcome.ALLOW, path="/v1/usage", status=200,
                               **common)
        else:
            common.update(credential_id=None, actor=None, vendor_id=None, member_id=None)
            event = AuditEvent(kind=EventKind.AUTH_REJECT, outcome=Outcome.DENY, reason="unknown API key",
                               path=dataset_path + "/records", status=401, **common)
        yield event


async def seed_history(runtime: Runtime, seeded: Seeded, count: int) -> dict[str, Any]:
    """The events through a writer of their own (a log of its own, as a past gateway process left it)."""
    pool = runtime.pool
    end = times.now() - timedelta(minutes=1)
    start = end - timedelta(days=HISTORY_DAYS)
    months = {datetime(d.year, d.month, 1, tzinfo=UTC)
              for d in (start + timedelta(days=k) for k in range(HISTORY_DAYS + 1))}
    for month in sorted(months):
        await pool.execute("SELECT audit_events_ensure_month($1)", month)
    rows = await pool.fetch("SELECT id, partitions FROM licences WHERE vendor_id = $1", seeded.vendor_id)
    licence_partitions = {row["id"]: list(row["partitions"]) for row in rows}
    writer = AuditWriter(pool, new_log_id("bench-history"), "bench-history", batch_max=2000, deadline=120,
                         master=runtime.master, checkpoint_events=10_000, checkpoint_seconds=2.0)
    await writer.start()
    queue = history(seeded, count, licence_partitions, end)
    progress = Progress("audit events", count, unit="events", scale=1)
    written = 0

    async def request() -> None:
        nonlocal written
        for event in queue:
            await writer.commit(event)
            written += 1
            progress(written)

    say(f"writing {count:,} audit events over {HISTORY_DAYS} days (AuditWriter, 4,000 concurrent commits)")
    started = time.perf_counter()
    await asyncio.gather(*(request() for _ in range(4000)))
    seconds = time.perf_counter() - started
    await writer.close()
    progress.finish()
    say(f"  {count / seconds:,.0f} events/s")
    return {"events": count, "seconds": round(seconds, 1), "events_per_s": round(count / seconds),
            "log_id": writer.log_id, "from": start.isoformat(), "to": end.isoformat()}


# Who is measured: the vendor's two roles, the busiest member's user (about 10 % of all events) and the
# quietest member's (a few hundred events in 60 days: a list of its events must not walk everyone's).
USERS = (("vendor-admin", "vendor-admin", None), ("compliance", "compliance", None), ("member", "member", 0),
         ("member-quiet", "member", -1))


async def create_users(runtime: Runtime, seeded: Seeded) -> None:
    actor = cli_actor(seeded.vendor_id)
    for label, role, index in USERS:
        user, password, secret = await console_users.create(
            runtime.writer, runtime.master, actor, seeded.vendor_id, role, f"bench-{label}@example.com",
            member_id=None if index is None else seeded.member_ids[index], display_name=f"Bench {label}",
            password=PASSWORD, enrol_totp=True)
        seeded.users[label] = {"id": user.id, "email": user.email, "password": password, "totp_secret": secret,
                               "role": role, "member_index": index}


# -- the gateway ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # A session of its own, so that the gateway and anything it starts are stopped together.
    with log_path.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.asynccontextmanager
async def gateway_serve(db: BenchDatabase, master_key: str) -> AsyncIterator[str]:
    """`gateway serve` in a child process of its own session on 127.0.0.1, stopped at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(gateway_env(db, master_key, GATEWAY_PORT=str(port)))
    log_path = db.home / "gateway.log"
    process = start_process(env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"gateway serve exited: {log_path.read_text()}")
                try:
                    if (await client.get(f"{url}/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway serve not ready: {log_path.read_text()}")
                await asyncio.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def sign_in(url: str, user: dict[str, Any]) -> httpx.AsyncClient:
    """A browser's sign-in: the form and its CSRF token, the password, then a fresh TOTP code."""
    client = httpx.AsyncClient(base_url=url, timeout=30)
    shown = await client.get("/console/sign-in")
    answer = await client.post("/console/sign-in", data={"email": user["email"], "password": user["password"],
                                                         "csrf": csrf_of(shown)})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in of {user['email']}: {answer.status_code}")
    shown = await client.get("/console/sign-in/code")
    code = totp.code_at(user["totp_secret"], totp.step_of(time.time()))
    answer = await client.post("/console/sign-in/code", data={"code": code, "csrf": csrf_of(shown)})
    if answer.status_code != 303:
        raise RuntimeError(f"second factor of {user['email']}: {answer.status_code} {answer.text[:300]}")
    return client


# -- the pages --------------------------------------------------------------------------------------

def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    if found is None:
        raise RuntimeError(f"no CSRF token on {page.request.url}")
    return found.group(1)


def page_roles(route: Route) -> tuple[tuple[str, ...], bool]:
    """The roles `page(*roles)` admits (its endpoint's `console_roles`), and whether the route is a page()
    at all: a route without it (sign-in, static files, the home redirect) is open to every visitor and
    measured for every role."""
    roles = getattr(route.endpoint, "console_roles", None)
    return (tuple(roles), True) if roles is not None else (ROLES, False)


@dataclass(frozen=True)
class Spec:
    """A GET route under /console/ and the roles its page() admits."""

    route: str
    names: tuple[str, ...]     # its path parameters
    roles: tuple[str, ...]
    decorated: bool


# A list's link to its next page: rel="next", or failing that a console link carrying a keyset position.
NEXT_LINK = (re.compile(r'<a\s[^>]*href="([^"]+)"[^>]*\brel="next"'), re.compile(r'<a\s[^>]*\brel="next"[^>]*href="([^"]+)"'),
             re.compile(r'href="(/console/[^"]*[?&;](?:after|before|cursor)=[^"]*)"'))


def next_link(url: str, body: str) -> str | None:
    for pattern in NEXT_LINK:
        found = pattern.search(body)
        if found:
            link = html.unescape(found.group(1))
            return urllib.parse.urljoin(url, link) if link.startswith(("?", "/console/")) else None
    return None


def discover() -> tuple[list[Spec], list[str]]:
    """Every GET route under /console/ (gateway.http.console.routes) and the roles it admits."""
    from gateway.http import console

    specs = []
    for route in console.routes:
        if isinstance(route, Route) and "GET" in (route.methods or ()) and route.path.startswith("/console/"):
            roles, decorated = page_roles(route)
            specs.append(Spec(route.path, tuple(route.param_convertors), roles, decorated))
    return specs, []


def values_for(seeded: Seeded, label: str) -> dict[str, list[str]]:
    """Path parameters by name for one user: a member user's own licence and delivery, and for the
    vendor's people the measured member's (the busiest)."""
    from gateway.http.console import static

    user = seeded.users[label]
    index = user["member_index"] if user["role"] == "member" else 0
    member = seeded.member_ids[index]
    return {"dataset_id": [str(seeded.dataset_id)], "member_id": [str(member)],
            "licence_id": [str(seeded.licence_ids[index])], "credential_id": [str(seeded.keys[member][0])],
            "event_id": [str(seeded.deliveries[index])], "number": ["1"], "version": ["1"],
            "user_id": [str(seeded.users["member"]["id"])], "client_id": [seeded.client_id],
            "name": sorted(static.FILES)}


def queries(seeded: Seeded, route: str) -> list[str]:
    """The audit search with its filters too: 60 days, the busiest and the quietest member, a kind and outcome."""
    if route != "/console/audit/":
        return [""]
    today = times.jst_day(times.now())
    first = today - timedelta(days=HISTORY_DAYS)
    busy, quiet = seeded.member_ids[0], seeded.member_ids[-1]
    return ["", f"?from={first}&to={today}", f"?member={busy}", f"?from={first}&to={today}&member={quiet}",
            f"?kind={EventKind.RECORDS_DELIVER.value}&outcome=deny",
            f"?from={first}&to={today}&dataset={seeded.dataset_id}&member={seeded.member_ids[1]}"]


def urls(spec: Spec, values: dict[str, list[str]], extra: list[str]) -> list[str] | None:
    if any(name not in values for name in spec.names):
        return None
    found = []
    for combination in itertools.product(*(values[n] for n in spec.names)):
        path = spec.route
        for name, value in zip(spec.names, combination, strict=True):
            path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
        found += [path + query for query in extra]
    return found


def percentile(sorted_ms: list[float], share: float) -> float:
    return sorted_ms[max(0, math.ceil(share * len(sorted_ms)) - 1)]


async def timed_page(client: httpx.AsyncClient, spec: Spec, url: str, label: str, role: str,
                     args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    for _ in range(args.warm_up):
        await client.get(url)
    # A page is timed to its last byte; a download (Content-Disposition: attachment, e.g. usage.csv) to
    # its first, when the browser's download starts, and its whole transfer is reported beside.
    timings, whole, statuses = [], [], set()
    for _ in range(args.repeat):
        started = time.perf_counter()
        async with client.stream("GET", url) as answer:
            first = None
            body = bytearray()
            async for chunk in answer.aiter_raw():
                first = first or time.perf_counter()
                body += chunk
        ended = time.perf_counter()
        download = answer.headers.get("content-disposition", "").startswith("attachment")
        timings.append(1000 * (((first or ended) if download else ended) - started))
        whole.append(1000 * (ended - started))
        statuses.add(answer.status_code)
    timings.sort()
    whole.sort()
    expected = {200} if spec.decorated else {200, 303}
    row = {"route": spec.route, "url": url, "user": label, "role": role, "statuses": sorted(statuses),
           "bytes": len(body), "type": answer.headers.get("content-type", "").split(";")[0],
           "timed_to": "first byte" if download else "last byte",
           "p50_ms": round(percentile(timings, 0.5), 1), "p95_ms": round(percentile(timings, 0.95), 1),
           "max_ms": round(timings[-1], 1), "whole_p95_ms": round(percentile(whole, 0.95), 1)}
    row["pass"] = row["p95_ms"] <= TARGET_P95_MS and statuses <= expected
    say(f"  {label:14} {shown(url)}: p95 {row['p95_ms']} ms to its {row['timed_to']} {sorted(statuses)}")
    return row, body.decode("utf-8", "replace")


async def measure_pages(url: str, seeded: Seeded, args: argparse.Namespace) -> dict[str, Any]:
    specs, _ = discover()
    clients = {label: await sign_in(url, user) for label, user in seeded.users.items()}
    rows, refusals, skipped = [], [], []
    try:
        for spec in specs:
            for label, user in seeded.users.items():
                found = urls(spec, values_for(seeded, label), queries(seeded, spec.route))
                if found is None:
                    if label == "vendor-admin":
                        missing = [n for n in spec.names if n not in values_for(seeded, label)]
                        skipped.append(f"{spec.route}: no value for {', '.join(missing)}")
                    continue
                client = clients[label]
                if user["role"] not in spec.roles:
                    answer = await client.get(found[0])
                    refusals.append({"url": found[0], "user": label, "status": answer.status_code,
                                     "ok": answer.status_code == 404})
                    continue
                for page_url in found:
                    row, body = await timed_page(client, spec, page_url, label, user["role"], args)
                    rows.append(row)
                    following = next_link(page_url, body)
                    if following is not None:  # the list's next page, by its own link
                        row, _ = await timed_page(client, spec, following, label, user["role"], args)
                        rows.append(row)
    finally:
        for client in clients.values():
            await client.aclose()
    return {"pages": rows, "refused": refusals, "skipped": sorted(set(skipped))}


# -- the member API's hot path ----------------------------------------------------------------------

def console_calls() -> tuple[dict[str, int], Any]:
    """A profiler hook counting calls into the console's code: its package and console_users."""
    from gateway.http import console

    code = (str(Path(console.__file__).parent), str(Path(console_users.__file__)))
    counts: dict[str, int] = {}

    def profile(frame: Any, event: str, _: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(code):
            name = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
            counts[name] = counts.get(name, 0) + 1

    return counts, profile


async def hot_path(db: BenchDatabase, master_key: str, seeded: Seeded, requests: int) -> dict[str, Any]:
    """The member API in-process: the middleware stack, the route order, and console calls per request."""
    from gateway.http import console, member_api

    config = config_module.load(gateway_env(db, master_key))
    runtime = await Runtime.open(config, serving=True, role="bench-hot-path")
    try:
        app = build_app(runtime)
        middleware = [f"{m.cls.__module__}.{m.cls.__name__}" for m in app.user_middleware]
        routes = list(app.routes)
        member_positions = [i for i, r in enumerate(routes) if r in member_api.routes]
        console_positions = [i for i, r in enumerate(routes) if r in console.routes]
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        headers = {"authorization": f"Bearer {seeded.first_token}"}
        member_paths = ["/v1/datasets", f"/v1/datasets/{seeded.dataset_id}",
                        f"/v1/datasets/{seeded.dataset_id}/records?limit=10", "/v1/usage"]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path in member_paths:  # warm: imports and caches before the count
                await client.get(path, headers=headers)
            statuses: dict[str, set[int]] = {p: set() for p in member_paths}
            counts, profile = console_calls()
            sys.setprofile(profile)
            try:
                for i in range(requests):
                    path = member_paths[i % len(member_paths)]
                    statuses[path].add((await client.get(path, headers=headers)).status_code)
            finally:
                sys.setprofile(None)
            member_counts = dict(counts)
            control, profile = console_calls()
            sys.setprofile(profile)
            try:
                control_status = (await client.get("/console/sign-in")).status_code
            finally:
                sys.setprofile(None)
    finally:
        await runtime.close()
    return {"middleware": middleware, "member_routes": [min(member_positions), max(member_positions)],
            "console_routes": [min(console_positions), max(console_positions)],
            "member_before_console": max(member_positions) < min(console_positions),
            "console_code_in_middleware": [m for m in middleware if ".console" in m or "console_users" in m],
            "member_requests": requests, "member_statuses": {p: sorted(s) for p, s in statuses.items()},
            "console_calls_during_member_requests": member_counts,
            "control_console_page": {"status": control_status, "console_calls": sum(control.values())}}


# -- the run ----------------------------------------------------------------------------------------

async def measure(args: argparse.Namespace) -> dict[str, Any]:
    master_key = new_master_key()
    async with bench_database() as db:
        runtime = await open_runtime(db, master_key)
        try:
            seeded = await seed_objects(runtime, args)
            writer_figures = await seed_history(runtime, seeded, args.events)
            await create_users(runtime, seeded)
            say("VACUUM (ANALYZE)")
            started = time.perf_counter()
            async with runtime.pool.acquire() as conn:
                await conn.execute("VACUUM (ANALYZE)")
                counts = dict(await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM members) AS members, (SELECT count(*) FROM credentials) AS keys, "
                    "(SELECT count(*) FROM licences) AS licences, (SELECT count(*) FROM audit_events) AS events"))
            seeded.seconds["vacuum"] = round(time.perf_counter() - started, 1)
        finally:
            await runtime.close()
        say(f"seeded {counts}")
        async with gateway_serve(db, master_key) as url:
            say(f"gateway serve on {url}; measuring the console pages ({args.repeat} requests each)")
            pages = await measure_pages(url, seeded, args)
        say(f"the member API in-process: {args.hot_path} requests traced for console calls")
        hot = await hot_path(db, master_key, seeded, args.hot_path)
        return {"benchmark": "console", "database": db.describe(), "machine": machine_info(),
                "sizes": counts, "seeding": {"objects_seconds": seeded.seconds["objects"],
                                             "vacuum_seconds": seeded.seconds["vacuum"], "writer": writer_figures},
                "repeat": args.repeat, "target_p95_ms": TARGET_P95_MS, **pages, "hot_path": hot}


UUID_TEXT = re.compile(r"([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def shown(url: str) -> str:
    """A page's URL for the table: ids cut to their first 8 digits, a keyset position to its name."""
    url = re.sub(r"((?:after|before|cursor)=)[^&]*", r"\1…", urllib.parse.unquote(url))
    return UUID_TEXT.sub(r"\1…", url)


def report(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = [(f"{results['database']}, {results['machine']['cpus']} CPUs; {sizes['members']:,} members, "
              f"{sizes['keys']:,} keys, {sizes['licences']:,} licences, {sizes['events']:,} audit events "
              f"(writer {results['seeding']['writer']['events_per_s']:,} events/s); "
              f"{results['repeat']} requests per page and role"),
             f"{'page':<72} {'user':<14} {'p50':>7} {'p95':>7} {'max':>7}  verdict"]
    for row in results["pages"]:
        status = "" if row["statuses"] in ([200], [303]) else f" (status {row['statuses']})"
        if row["type"] not in ("text/html", ""):
            status += f" ({row['type']}, {row['bytes'] / 1e6:.1f} MB"
            status += f"; to its first byte, the whole {row['whole_p95_ms']} ms at p95)" \
                if row["timed_to"] == "first byte" else ")"
        lines.append(f"{shown(row['url']):<72} {row['user']:<14} {row['p50_ms']:7.1f} {row['p95_ms']:7.1f} "
                     f"{row['max_ms']:7.1f}  {'PASS' if row['pass'] else 'FAIL'}{status}")
    slowest = sorted(results["pages"], key=lambda r: -r["p95_ms"])[:3]
    lines.append("slowest at p95: " + "; ".join(f"{shown(r['url'])} ({r['user']}) {r['p95_ms']} ms" for r in slowest))
    bad = [r for r in results["refused"] if not r["ok"]]
    lines.append(f"roles a page refuses: {len(results['refused'])} asked, "
                 f"{len(results['refused']) - len(bad)} got the 404 page"
                 + "".join(f"\n  NOT 404: {r['user']} {r['url']} -> {r['status']}" for r in bad))
    for item in results["skipped"]:
        lines.append(f"skipped {item}")
    hot = results["hot_path"]
    calls = hot["console_calls_during_member_requests"]
    lines.append(f"hot path: middleware {', '.join(m.rsplit('.', 1)[1] for m in hot['middleware'])} "
                 f"(console code in it: {hot['console_code_in_middleware'] or 'none'}); member API routes at "
                 f"{hot['member_routes']}, console routes at {hot['console_routes']} of the route list "
                 f"(member first: {hot['member_before_console']}); console calls during "
                 f"{hot['member_requests']} member requests: {sum(calls.values())} {calls or ''}"
                 f" (control, one console page: {hot['control_console_page']['console_calls']})")
    failed = [r for r in results["pages"] if not r["pass"]]
    lines.append(f"target p95 <= {results['target_p95_ms']:.0f} ms: "
                 + ("all pages PASS" if not failed else f"{len(failed)} of {len(results['pages'])} FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    results = run(measure(args))
    finish(args.output, results, report)
    hot = results["hot_path"]
    ok = (all(r["pass"] for r in results["pages"]) and all(r["ok"] for r in results["refused"])
          and not hot["console_calls_during_member_requests"] and hot["member_before_console"]
          and hot["control_console_page"]["console_calls"] > 0
          and all(s == [200] for s in hot["member_statuses"].values()))  # else the probe saw nothing at all
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
