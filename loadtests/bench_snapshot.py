"""Snapshot benchmark: a full load of 100,000 credentials and 100,000 licences, its memory, and the cost
of authenticating and authorising one request from it.

Every request is authenticated and authorised from the in-memory snapshot (gateway/snapshot.py) with no
database round trip. This measures what that costs at the scale of a large deployment:

1. Builds a throwaway database (see loadtests/common.py) with one vendor and dataset made through the
   domain code, then N members, N member API keys (real keys: prefix, id, secret, checksum, HMAC under
   the server secret) and N licences with accepted terms, inserted in bulk with COPY.
2. Times a full snapshot load (SnapshotRefresher.start: connect, LISTEN, load every section) --repeat
   times, then measures its memory: tracemalloc's count of what the loaded snapshot retains (and the
   peak while loading), and the process's resident set before and after.
3. Times the request path per request over a sample of the keys: parse (prefix, checksum), snapshot
   lookup, HMAC verify, policy checks (credentials.check), the licence lookup and licences.check; and
   the same through the real ApiKeyAuthenticator; and an OAuth access token through JwtAuthenticator
   (Ed25519 signature and claims).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from gateway import access_tokens, credentials, licences, oauth_clients
from gateway.actors import cli_actor
from gateway.http.authentication import ApiKeyAuthenticator, JwtAuthenticator
from gateway.http.context import RequestContext
from gateway.http.forwarding import Forwarding
from gateway.snapshot import Snapshot, SnapshotRefresher
from keys import apikeys
from keys.apikeys import KeyKind
from loadtests.common import (
    RESULTS_DIR,
    bench_database,
    check_database_url,
    create_demo_dataset,
    finish,
    machine_info,
    new_master_key,
    open_runtime,
    run,
    say,
)

EXAMPLES = """examples:
  python -m loadtests.bench_snapshot                       # 100,000 credentials and licences
  python -m loadtests.bench_snapshot --rows 10000 --repeat 1   # a quick run
"""
MB = 1_000_000
MEMORY_TARGET_MB = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_snapshot", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, metavar="N",
                        help="members, each with one API key and one licence (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="K",
                        help="full snapshot loads to time; the median is reported (default 3)")
    parser.add_argument("--requests", type=int, default=100_000, metavar="M",
                        help="authentications to time per path (default 100000)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "snapshot.json", metavar="FILE",
                        help="where to write the figures as JSON (default loadtests/results/snapshot.json)")
    return parser.parse_args(argv)


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def populate(conn: asyncpg.Connection, hasher: Any, vendor_id: uuid.UUID, dataset_id: uuid.UUID,
                   rows: int) -> list[str]:
    """N members, keys and accepted licences by COPY; returns the member API keys (tokens)."""
    now = datetime.now(UTC)
    rng = random.Random(2026)
    # Like the demo: 47 prefectures, each licence one to three of them, and one of a few column sets.
    prefectures = [f"{code:02d}" for code in range(1, 48)]
    column_sets = [["prefecture", "mesh_code", "hour", "population"], ["prefecture", "hour", "population"],
                   ["prefecture", "population"]]
    member_ids = [uuid.uuid4() for _ in range(rows)]
    licence_ids = [uuid.uuid4() for _ in range(rows)]
    tokens, credential_rows = [], []
    say(f"generating {rows:,} member API keys and their HMACs")
    for member_id in member_ids:
        key = apikeys.generate(KeyKind.MEMBER)
        version, digest = hasher.hash(key.token)
        tokens.append(key.token)
        credential_rows.append((uuid.uuid4(), key.key_id, "member", vendor_id, member_id, version, digest,
                                f"key {len(tokens) % 7}", now - timedelta(seconds=len(tokens))))
    say("copying members, credentials, licences, terms and acceptances")
    async with conn.transaction():
        await conn.copy_records_to_table("members", columns=["id", "vendor_id", "name"], records=[
            (m, vendor_id, f"member-{i:07d}") for i, m in enumerate(member_ids)])
        await conn.copy_records_to_table(
            "credentials", columns=["id", "key_id", "kind", "vendor_id", "member_id", "hash_version", "hash",
                                    "label", "created_at"], records=credential_rows)
        await conn.copy_records_to_table(
            "licences", columns=["id", "vendor_id", "member_id", "dataset_id", "partitions", "columns", "valid_from",
                                 "records_per_month", "bytes_per_month", "requests_per_second", "burst"],
            records=[(lic, vendor_id, m, dataset_id, sorted(rng.sample(prefectures, rng.randint(1, 3))),
                      rng.choice(column_sets), now - timedelta(days=rng.randint(1, 900)), 5_000_000,
                      2_000_000_000, 50.0, 100)
                     for lic, m in zip(licence_ids, member_ids, strict=True)])
        digest = b"\x00" * 32
        await conn.copy_records_to_table("licence_terms", columns=["licence_id", "version", "text", "sha256"],
                                         records=[(lic, 1, "terms v1", digest) for lic in licence_ids])
        await conn.copy_records_to_table(
            "terms_acceptances", columns=["licence_id", "terms_version", "credential_id", "terms_sha256"],
            records=[(lic, 1, row[0], digest) for lic, row in zip(licence_ids, credential_rows, strict=True)])
    await conn.execute("VACUUM (ANALYZE) members, credentials, licences, terms_acceptances")
    return tokens


def per_request(seconds: float, count: int) -> float:
    return round(seconds / count * 1e6, 2)


def time_path(label: str, action: Any, inputs: list[Any], count: int) -> dict[str, Any]:
    """Mean µs per call over `count` calls (in 5 rounds; the median round is reported)."""
    rounds = []
    per_round = max(count // 5, 1)
    for _ in range(5):
        started = time.perf_counter()
        for i in range(per_round):
            action(inputs[i % len(inputs)])
        rounds.append(per_request(time.perf_counter() - started, per_round))
    say(f"  {label}: {statistics.median(rounds)} µs")
    return {"us_per_request": statistics.median(rounds), "rounds_us": rounds}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    master_key = new_master_key()
    async with bench_database() as db:
        runtime = await open_runtime(db, master_key)
        try:
            vendor, dataset = await create_demo_dataset(runtime)
            # One OAuth client for the access-token path (its member and licence are made by COPY below).
            async with runtime.pool.acquire() as conn:
                tokens = await populate(conn, runtime.hasher(), vendor.id, dataset.id, args.rows)
                first_member = await conn.fetchval("SELECT member_id FROM credentials WHERE key_id = $1",
                                                   apikeys.parse(tokens[0]).key_id)
            oauth_client, _ = await oauth_clients.create(runtime.writer, cli_actor(vendor.id), runtime.hasher(),
                                                         vendor.id, first_member, label="bench")
        finally:
            await runtime.close()
        return await measure_snapshot(args, db.dsn, master_key, tokens, dataset.id, oauth_client, runtime.config)


async def measure_snapshot(args: argparse.Namespace, dsn: str, master_key: str, tokens: list[str],
                           dataset_id: uuid.UUID, oauth_client: oauth_clients.OAuthClient,
                           config: Any) -> dict[str, Any]:
    from keys.sealing import MasterKey

    master = MasterKey.from_text(master_key)
    loads = []
    for i in range(args.repeat):
        snapshot = Snapshot()
        refresher = SnapshotRefresher(snapshot, dsn, master)
        gc.collect()
        started = time.perf_counter()
        await refresher.start()
        loads.append(round(time.perf_counter() - started, 3))
        await refresher.close()
        say(f"full snapshot load {i + 1}/{args.repeat}: {loads[-1]:.2f} s")
        del snapshot, refresher

    # Memory: what a loaded snapshot retains (tracemalloc), and the peak while loading.
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    snapshot = Snapshot()
    refresher = SnapshotRefresher(snapshot, dsn, master)
    await refresher.start()
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = rss_bytes()
    counts = {"credentials": len(snapshot.credentials), "licences": len(snapshot.licences),
              "members": len(snapshot.members), "oauth_clients": len(snapshot.oauth_clients),
              "jwt_keys": len(snapshot.jwt.keys)}
    assert counts["credentials"] >= args.rows and counts["licences"] == args.rows, counts
    say(f"snapshot holds {counts}")

    # The request path, per request.
    hasher = snapshot.hasher
    assert hasher is not None
    now = datetime.now(UTC)
    sample = random.Random(7).sample(tokens, min(len(tokens), 10_000))

    def parse(token: str) -> Any:
        return apikeys.parse(token)

    parsed = [apikeys.parse(t) for t in sample]

    def lookup(key: Any) -> Any:
        return snapshot.credential(key.key_id)

    found = [(t, snapshot.credential(k.key_id)) for t, k in zip(sample, parsed, strict=True)]

    def hmac_verify(pair: Any) -> bool:
        token, credential = pair
        return hasher.verify(token, credential.hash_version, credential.hash)

    def licence_check(pair: Any) -> Any:
        _, credential = pair
        licence = snapshot.licence_for(credential.member_id, dataset_id)
        return licences.check(licence, snapshot.members.get(credential.member_id), now)

    def whole_path(token: str) -> Any:
        key = apikeys.parse(token)
        credential = snapshot.credential(key.key_id)
        assert credential is not None and key.kind == credential.kind
        refusal = credentials.check(credential, token, hasher, datetime.now(UTC), None, None)
        assert refusal is None
        licence = snapshot.licence_for(credential.member_id, dataset_id)
        decision = licences.check(licence, snapshot.members.get(credential.member_id), datetime.now(UTC))
        assert isinstance(decision, licences.Allowed)
        return decision

    scope = {"type": "http", "method": "GET", "path": "/v1/datasets", "headers": [], "client": ("127.0.0.1", 1)}
    api_key_authenticator = ApiKeyAuthenticator(snapshot, Forwarding())

    def authenticator(token: str) -> Any:
        ctx = RequestContext("bench", "GET", "/v1/datasets", None, None)
        principal = api_key_authenticator(token, scope, ctx)
        assert principal is not None
        return licences.check(snapshot.licence_for(principal.member_id, dataset_id),
                              snapshot.members.get(principal.member_id), datetime.now(UTC))

    signer = snapshot.jwt.signer
    assert signer is not None
    stamp = int(time.time())
    access_token = access_tokens.sign(signer, {
        "iss": access_tokens.issuer(config), "sub": str(oauth_client.member_id), "aud": access_tokens.audience(config),
        "exp": stamp + 300, "iat": stamp, "nbf": stamp, "jti": str(uuid.uuid4()),
        "client_id": oauth_client.client_id, "scope": ""})
    jwt_authenticator = JwtAuthenticator(snapshot, access_tokens.issuer(config), access_tokens.audience(config), 300)

    def access_token_path(token: str) -> Any:
        ctx = RequestContext("bench", "GET", "/v1/datasets", None, None)
        principal = jwt_authenticator(token, scope, ctx)
        assert principal is not None
        return licences.check(snapshot.licence_for(principal.member_id, dataset_id),
                              snapshot.members.get(principal.member_id), datetime.now(UTC))

    say(f"timing {args.requests:,} requests per path")
    paths = {
        "parse (prefix, base62, CRC32)": time_path("parse", parse, sample, args.requests),
        "snapshot lookup (dict by key id)": time_path("lookup", lookup, parsed, args.requests),
        "HMAC-SHA256 verify (constant-time compare)": time_path("hmac", hmac_verify, found, args.requests),
        "licence lookup and check": time_path("licence", licence_check, found, args.requests),
        "whole API key path (parse + lookup + HMAC + policy + licence)": time_path(
            "whole", whole_path, sample, args.requests),
        "ApiKeyAuthenticator + licence check": time_path("authenticator", authenticator, sample, args.requests),
        "JwtAuthenticator (Ed25519 + claims) + licence check": time_path(
            "jwt", access_token_path, [access_token], args.requests // 4),
    }
    await refresher.close()
    return {
        "machine": machine_info(), "rows": args.rows, "counts": counts,
        "full_load_seconds": {"median": statistics.median(loads), "runs": loads},
        "memory": {"retained_mb": round((retained - before) / MB, 1), "peak_while_loading_mb": round(peak / MB, 1),
                   "rss_delta_mb": round((rss_after - rss_before) / MB, 1), "target_mb": MEMORY_TARGET_MB},
        "per_request": paths,
    }


def report(results: dict[str, Any]) -> str:
    memory = results["memory"]
    counts, loads = results["counts"], results["full_load_seconds"]
    lines = [
        (f"snapshot of {counts['credentials']:,} credentials, {counts['licences']:,} licences, "
         f"{counts['members']:,} members ({results['machine']['cpus']} CPUs, Python {results['machine']['python']})"),
        f"  full load:           {loads['median']:.2f} s (median of {len(loads['runs'])}: {loads['runs']})",
        (f"  memory retained:     {memory['retained_mb']} MB (tracemalloc; target < {memory['target_mb']} MB), "
         f"peak while loading {memory['peak_while_loading_mb']} MB, RSS grew {memory['rss_delta_mb']} MB"),
        "  per request:",
    ]
    for label, figures in results["per_request"].items():
        lines.append(f"    {figures['us_per_request']:8.2f} µs  {label}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_database_url()
    results = run(measure(args))
    return finish(args.output, results, report)


if __name__ == "__main__":
    sys.exit(main())
