"""The `gateway` command: serve, migrate, the demo, and every vendor action of the admin API.

Each command opens the same Runtime as the server and calls the same domain functions as the API,
so a rule enforced in one is enforced in the other. Output is JSON on stdout (for scripts); progress
and messages go to stderr, and progress only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway import (
    access_tokens,
    cli_audit,
    credentials,
    datasets,
    licences,
    members,
    metering,
    oauth,
    oauth_clients,
    server_secrets,
    signing_keys,
    times,
    vendors,
)
from gateway import config as config_module
from gateway.actors import cli_actor
from gateway.audit.events import EventKind, Outcome
from gateway.errors import GatewayError
from gateway.runtime import Runtime
from keys.apikeys import KeyKind

Handler = Callable[[Runtime, argparse.Namespace], Awaitable[Any]]


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


class Progress:
    """A one-line progress display on a terminal; silent when stderr is piped or redirected."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.enabled = sys.stderr.isatty()
        self.started = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6) / 1e6
        share = f" {100 * done / self.total:5.1f}%" if self.total else ""
        sys.stderr.write(f"\r{self.label}:{share} {done / 1e6:,.1f} MB ({rate:,.1f} MB/s)")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# -- commands ---------------------------------------------------------------------------------------

async def cmd_vendor_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await vendors.create(runtime.writer, cli_actor(), args.name)
    _, key = await credentials.issue(runtime.writer, cli_actor(vendor.id), runtime.hasher(), KeyKind.VENDOR,
                                     vendor.id, label=args.label)
    return {"vendor_id": str(vendor.id), "name": vendor.name, "vendor_admin_key": key,
            "note": "the key is shown this once; store it in a secret manager"}


async def _vendor(runtime: Runtime, args: argparse.Namespace) -> vendors.Vendor:
    return await vendors.find(runtime.pool, args.vendor)


async def cmd_dataset_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    declared = orjson.loads(Path(args.columns).read_bytes())
    dataset = await datasets.create(runtime.writer, cli_actor(vendor.id), vendor.id, args.name, args.description,
                                    declared, args.partition_column)
    return dataset.to_json()


async def cmd_dataset_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [d.to_json() for d in await datasets.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_dataset_publish(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
    path = Path(args.file)
    fmt = args.format or ("ndjson" if path.suffix in (".ndjson", ".jsonl") else "csv")
    progress = Progress(f"publishing {path.name}", path.stat().st_size)

    async def chunks() -> AsyncIterator[bytes]:
        # The command line's own loop serves nothing else: a blocking read of the local file is fine.
        with path.open("rb") as handle:  # noqa: ASYNC230
            while chunk := handle.read(1 << 20):
                yield chunk

    version = await datasets.publish(runtime.writer, cli_actor(vendor.id), dataset, chunks(), fmt,
                                     max_bytes=runtime.config.max_upload_bytes, progress=progress)
    progress.finish()
    return version.to_json()


async def cmd_member_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return (await members.create(runtime.writer, cli_actor(vendor.id), vendor.id, args.name)).to_json()


async def cmd_member_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [m.to_json() for m in await members.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_member_revoke(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member = await members.find(runtime.pool, vendor.id, args.member)
    return (await members.revoke(runtime.writer, cli_actor(vendor.id), vendor.id, member.id)).to_json()


def _licence_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("partitions", "columns"):
        if getattr(args, name, None):
            values[name] = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
    for name in ("valid_from", "valid_until"):
        if getattr(args, name, None):
            values[name] = times.parse_moment(getattr(args, name), assume=UTC)
    for name in ("records_per_month", "bytes_per_month", "burst"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "requests_per_second", None) is not None:
        values["requests_per_second"] = args.requests_per_second
    if getattr(args, "soft_quotas", False):
        values["records_quota_hard"] = values["bytes_quota_hard"] = False
    return values


async def cmd_licence_grant(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member = await members.find(runtime.pool, vendor.id, args.member)
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
    licence = await licences.grant(runtime.writer, cli_actor(vendor.id), vendor.id, member.id, dataset.id,
                                   Path(args.terms).read_text(encoding="utf-8"), _licence_values(args))
    return licence.to_json()


async def cmd_licence_amend(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    terms = Path(args.terms).read_text(encoding="utf-8") if args.terms else None
    licence = await licences.amend(runtime.writer, cli_actor(vendor.id), vendor.id, _uuid(args.licence),
                                   _licence_values(args), terms)
    return licence.to_json()


def _status_command(action: str) -> Handler:
    async def run(runtime: Runtime, args: argparse.Namespace) -> Any:
        vendor = await _vendor(runtime, args)
        licence = await licences.set_status(runtime.writer, cli_actor(vendor.id), vendor.id, _uuid(args.licence),
                                            action, args.reason)
        return licence.to_json()

    return run


async def cmd_licence_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [lic.to_json() for lic in await licences.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_key_issue(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    kind = KeyKind(args.kind)
    member_id = (await members.find(runtime.pool, vendor.id, args.member)).id if args.member else None
    if (kind == KeyKind.MEMBER) != (member_id is not None):
        raise SystemExit("member keys need --member; compliance keys take none")
    credential, token = await credentials.issue(
        runtime.writer, cli_actor(vendor.id), runtime.hasher(), kind, vendor.id, member_id, label=args.label,
        expires_at=times.parse_moment(args.expires_at, assume=UTC) if args.expires_at else None,
        allowed_networks=credentials.parse_networks(args.allowed_networks.split(",") if args.allowed_networks else []),
        client_cert_sha256=args.client_cert_sha256)
    return {**credential.to_json(), "api_key": token}


async def cmd_key_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [c.to_json() for c in await credentials.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_key_revoke(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return (await credentials.revoke(runtime.writer, cli_actor(vendor.id), vendor.id, _uuid(args.key))).to_json()


async def cmd_oauth_client_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member = await members.find(runtime.pool, vendor.id, args.member)
    client, secret = await oauth_clients.create(runtime.writer, cli_actor(vendor.id), runtime.hasher(), vendor.id,
                                                member.id, label=args.label)
    return {**client.to_json(), "client_secret": secret,
            "token_endpoint": access_tokens.issuer(runtime.config) + oauth.TOKEN_PATH,
            "note": "the client secret is shown this once; store it in a secret manager"}


async def cmd_oauth_client_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member_id = (await members.find(runtime.pool, vendor.id, args.member)).id if args.member else None
    return {"items": [c.to_json() for c in await oauth_clients.list_for_vendor(runtime.pool, vendor.id, member_id)]}


async def cmd_oauth_client_revoke(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    client = await oauth_clients.find(runtime.pool, vendor.id, args.client)
    return (await oauth_clients.revoke(runtime.writer, cli_actor(vendor.id), vendor.id, client.id)).to_json()


KEYRING_PURPOSES = (signing_keys.JWT, signing_keys.AUDIT, server_secrets.API_KEY_HASH)


async def cmd_keys_rotate(runtime: Runtime, args: argparse.Namespace) -> Any:
    """A new key or secret version for one purpose; what it made before keeps verifying (see --help)."""
    actor = cli_actor()
    if args.purpose == signing_keys.JWT:
        default_overlap = runtime.config.token_ttl_seconds + access_tokens.LEEWAY_SECONDS
        overlap = timedelta(seconds=default_overlap if args.overlap_seconds is None else args.overlap_seconds)
        return await access_tokens.rotate_key(runtime.writer, actor, runtime.master, overlap)
    if args.purpose == server_secrets.API_KEY_HASH:
        # New keys are hashed with the new version; issued keys name their version and keep verifying.
        async with runtime.writer.change() as change:
            version = await server_secrets.rotate(change.conn, runtime.master, server_secrets.API_KEY_HASH)
            detail = {"purpose": server_secrets.API_KEY_HASH, "version": version}
            change.record(actor.event(EventKind.KEYRING_ROTATE, Outcome.CHANGE, detail=detail))
        return detail
    # Audit keys: rotated by signing_keys.rotate in its own transaction, which waits for any checkpoint
    # being signed (see its docstring); the event follows in a change of its own.
    async with runtime.pool.acquire() as conn:
        new = await signing_keys.rotate(conn, runtime.master, signing_keys.AUDIT)
    detail = {"purpose": signing_keys.AUDIT, "key_id": new.key_id}
    async with runtime.writer.change() as change:
        change.record(actor.event(EventKind.KEYRING_ROTATE, Outcome.CHANGE, detail=detail))
    return detail


async def cmd_keys_retire(runtime: Runtime, args: argparse.Namespace) -> Any:
    retired = await access_tokens.retire_key(runtime.writer, cli_actor(), args.key_id)
    return _key_json(retired, datetime.now().astimezone())


def _key_json(key: signing_keys.PublicKey, now: datetime) -> dict[str, Any]:
    status = ("retired" if key.retired_at is not None and key.retired_at <= now
              else "current" if key.not_after is None else "verifying")
    return {"key_id": key.key_id, "purpose": key.purpose, "algorithm": "Ed25519", "status": status,
            "not_before": key.not_before.isoformat(),
            "not_after": key.not_after.isoformat() if key.not_after else None,
            "retired_at": key.retired_at.isoformat() if key.retired_at else None}


async def cmd_keys_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    """Ids, purposes and validity of the keyring; never a private key or a secret."""
    now = datetime.now().astimezone()
    signing = [_key_json(key, now) for purpose in (signing_keys.JWT, signing_keys.AUDIT)
               for key in await signing_keys.public_keys(runtime.pool, purpose)]
    secrets = [{"purpose": purpose, "version": version, "current": version == max(versions)}
               for purpose, versions in sorted(runtime.secrets.by_purpose.items()) for version in sorted(versions)]
    return {"signing_keys": signing, "server_secrets": secrets}


async def cmd_usage_report(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member_id = (await members.find(runtime.pool, vendor.id, args.member)).id if args.member else None
    dataset_id = (await datasets.find(runtime.pool, vendor.id, args.dataset)).id if args.dataset else None
    try:
        start, end = metering.parse_period(args.start, args.end)
    except ValueError as exc:
        raise SystemExit(f"--from and --to are dates such as 2026-04-01: {exc}") from None
    rows = await metering.usage_report(runtime.pool, vendor.id, start, end, member_id=member_id,
                                       dataset_id=dataset_id, by=args.by)
    if args.format == "json":
        return {"from": start.isoformat(), "to": end.isoformat(), "by": args.by, "items": rows}
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["period"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return None


async def cmd_demo(runtime: Runtime, args: argparse.Namespace) -> Any:
    from gateway import demo

    content, created = await demo.seed(runtime)
    member = content["members"][0]
    sys.stderr.write(
        ("Demo data created" if created else "Demo data already in place") + f" ({demo.demo_file(runtime)}).\n"
        f"Try, once the gateway is serving:\n  curl -H 'Authorization: Bearer {member['api_key']}' "
        f"'{content['base_url']}/v1/datasets/{content['dataset']}/records?limit=5'\n")
    return content


async def cmd_migrate(runtime: Runtime, args: argparse.Namespace) -> Any:
    return {"status": "up to date"}  # Runtime.open applied any pending migration


def _uuid(text: str) -> Any:
    import uuid

    try:
        return uuid.UUID(text)
    except ValueError:
        raise SystemExit(f"{text!r} is not an id; ids look like 3f1c2a9e-...; list them with the 'list' commands")


# -- argument parsing -------------------------------------------------------------------------------

def _command(sub: Any, name: str, handler: Handler, help_text: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text,
                                                     epilog=f"example:\n  {example}",
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def _vendor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vendor", required=True, help="vendor name or id")


def _licence_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", help="comma-separated partition values, e.g. 13,14")
    parser.add_argument("--columns", help="comma-separated column names")
    parser.add_argument("--valid-from", help="RFC 3339 date-time")
    parser.add_argument("--valid-until", help="RFC 3339 date-time")
    parser.add_argument("--records-per-month", type=int)
    parser.add_argument("--bytes-per-month", type=int)
    parser.add_argument("--requests-per-second", type=float)
    parser.add_argument("--burst", type=int)
    parser.add_argument("--soft-quotas", action="store_true", help="warn instead of refusing past the quotas")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Limited provision data gateway (限定提供データ).",
        epilog="example:\n  gateway demo && gateway serve", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the HTTP API", description="Serve the HTTP API (uvicorn).",
                           epilog="example:\n  GATEWAY_PORT=8080 gateway serve",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.set_defaults(handler=None)
    _command(sub, "migrate", cmd_migrate, "apply pending database migrations and exit", "gateway migrate")
    _command(sub, "demo", cmd_demo, "seed the demo vendor, dataset, members and keys (idempotent)", "gateway demo")

    vendor = sub.add_parser("vendor", help="operator: vendors").add_subparsers(dest="action", required=True)
    p = _command(vendor, "create", cmd_vendor_create, "create a vendor and print its first admin key",
                 'gateway vendor create "Example Mobile"')
    p.add_argument("name")
    p.add_argument("--label", default="vendor admin")

    dataset = sub.add_parser("dataset", help="datasets and versions").add_subparsers(dest="action", required=True)
    p = _command(dataset, "create", cmd_dataset_create, "declare a dataset",
                 "gateway dataset create --vendor 'Example Mobile' --name mobile-location "
                 "--columns columns.json --partition-column prefecture")
    _vendor_arg(p)
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--columns", required=True, help='JSON file: [{"name": "...", "type": "text|integer|...'
                                                    '", "description": "..."}]')
    p.add_argument("--partition-column", required=True)
    p = _command(dataset, "list", cmd_dataset_list, "list a vendor's datasets",
                 "gateway dataset list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(dataset, "publish", cmd_dataset_publish, "publish a new version from a CSV or NDJSON file",
                 "gateway dataset publish --vendor 'Example Mobile' mobile-location april.csv")
    _vendor_arg(p)
    p.add_argument("dataset", help="dataset name or id")
    p.add_argument("file")
    p.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file name")

    member = sub.add_parser("member", help="members").add_subparsers(dest="action", required=True)
    p = _command(member, "create", cmd_member_create, "add a member",
                 "gateway member create --vendor 'Example Mobile' 'Shibuya Analytics'")
    _vendor_arg(p)
    p.add_argument("name")
    p = _command(member, "list", cmd_member_list, "list members", "gateway member list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(member, "revoke", cmd_member_revoke, "cut a member off (all its keys and licences)",
                 "gateway member revoke --vendor 'Example Mobile' 'Shibuya Analytics'")
    _vendor_arg(p)
    p.add_argument("member", help="member name or id")

    licence = sub.add_parser("licence", help="licences").add_subparsers(dest="action", required=True)
    p = _command(licence, "grant", cmd_licence_grant, "licence a member to a dataset",
                 "gateway licence grant --vendor 'Example Mobile' --member 'Shibuya Analytics' "
                 "--dataset mobile-location --partitions 13,14 --columns prefecture,hour,population --terms terms.txt")
    _vendor_arg(p)
    p.add_argument("--member", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--terms", required=True, help="text file with the licence terms")
    _licence_args(p)
    p = _command(licence, "amend", cmd_licence_amend, "change a licence (new terms must be accepted again)",
                 "gateway licence amend --vendor 'Example Mobile' LICENCE_ID --partitions 13,14,11")
    _vendor_arg(p)
    p.add_argument("licence")
    p.add_argument("--terms", help="text file with new licence terms")
    _licence_args(p)
    for action in ("suspend", "resume", "revoke"):
        p = _command(licence, action, _status_command(action), f"{action} a licence",
                     f"gateway licence {action} --vendor 'Example Mobile' LICENCE_ID --reason 'invoice overdue'")
        _vendor_arg(p)
        p.add_argument("licence")
        p.add_argument("--reason", default="")
    p = _command(licence, "list", cmd_licence_list, "list licences", "gateway licence list --vendor 'Example Mobile'")
    _vendor_arg(p)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    p = _command(key, "issue", cmd_key_issue, "issue a member or compliance key (shown once)",
                 "gateway key issue --vendor 'Example Mobile' --kind member --member 'Shibuya Analytics' "
                 "--allowed-networks 203.0.113.0/24")
    _vendor_arg(p)
    p.add_argument("--kind", choices=("member", "compliance"), required=True)
    p.add_argument("--member")
    p.add_argument("--label", default="")
    p.add_argument("--expires-at", help="RFC 3339 date-time")
    p.add_argument("--allowed-networks", help="comma-separated CIDR blocks")
    p.add_argument("--client-cert-sha256", help="SHA-256 fingerprint of the client certificate the key is bound to "
                                                "(sent by a trusted proxy as X-Client-Cert-SHA256)")
    p = _command(key, "list", cmd_key_list, "list keys (never their secrets)", "gateway key list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(key, "revoke", cmd_key_revoke, "revoke a key on every instance within a second",
                 "gateway key revoke --vendor 'Example Mobile' KEY_ID")
    _vendor_arg(p)
    p.add_argument("key", help="the key's id (from 'gateway key list')")

    client = sub.add_parser("oauth-client", help="OAuth clients of members (client credentials)").add_subparsers(
        dest="action", required=True)
    p = _command(client, "create", cmd_oauth_client_create, "create an OAuth client for a member (secret shown once)",
                 "gateway oauth-client create --vendor 'Example Mobile' --member 'Shibuya Analytics' --label etl")
    _vendor_arg(p)
    p.add_argument("--member", required=True, help="member name or id")
    p.add_argument("--label", default="")
    p = _command(client, "list", cmd_oauth_client_list, "list OAuth clients (never their secrets)",
                 "gateway oauth-client list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p.add_argument("--member", help="member name or id")
    p = _command(client, "revoke", cmd_oauth_client_revoke,
                 "revoke an OAuth client: its secret and tokens stop working on every instance within a second",
                 "gateway oauth-client revoke --vendor 'Example Mobile' lpdi_0123456789abcdef")
    _vendor_arg(p)
    p.add_argument("client", help="the client's id or client_id (from 'gateway oauth-client list')")

    keyring = sub.add_parser("keys", help="operator: the keyring (JWT and audit signing keys, API key hashing)"
                             ).add_subparsers(dest="action", required=True)
    p = _command(keyring, "rotate", cmd_keys_rotate,
                 "make a new current key or secret version; the previous one keeps verifying "
                 "(a JWT key until it is retired, by default after one token lifetime)",
                 "gateway keys rotate --purpose jwt")
    p.add_argument("--purpose", choices=KEYRING_PURPOSES, required=True)
    p.add_argument("--overlap-seconds", type=float,
                   help="jwt only: how long the previous key keeps verifying (default: the token lifetime + 30 s)")
    p = _command(keyring, "list", cmd_keys_list, "list keys and secret versions with their validity (never secrets)",
                 "gateway keys list")
    p = _command(keyring, "retire", cmd_keys_retire,
                 "withdraw a rotated-out JWT key now (e.g. suspected compromise): its tokens stop verifying at once",
                 "gateway keys retire 0123456789abcdef")
    p.add_argument("key_id", help="the key's id (from 'gateway keys list')")
    usage = sub.add_parser("usage", help="usage reports").add_subparsers(dest="action", required=True)
    p = _command(usage, "report", cmd_usage_report, "usage by member, dataset and period (JST)",
                 "gateway usage report --vendor 'Example Mobile' --from 2026-04-01 --to 2026-05-01 --format csv")
    _vendor_arg(p)
    p.add_argument("--from", dest="start", help="first day (default: start of this month)")
    p.add_argument("--to", dest="end", help="day after the last (default: start of next month)")
    p.add_argument("--member", help="member name or id")
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--by", choices=("day", "month"), default="month")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    cli_audit.register(sub, _command)
    return parser


def serve(config: config_module.Config, app: Any = None) -> None:
    """Serve the gateway (or, for loadtests/bench.py's baseline, `app`) with the shipped server settings."""
    import signal

    import uvicorn

    from gateway.app import GatewayApp

    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the handler it found.
    # Finding this one, the process exits normally, so exit handlers run and the embedded PostgreSQL
    # is stopped when this process was its last user.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # No access log: every request is in the audit log already, and a log line per request costs
    # a sixth of a request's CPU (loadtests/README.md). uvloop and httptools come with
    # uvicorn[standard]; naming them makes a missing one an error instead of a silent fall-back to
    # the pure-Python loop and parser.
    uvicorn.run(GatewayApp(config) if app is None else app, host=config.host, port=config.port,
                log_level=config.log_level.lower(), access_log=False, loop="uvloop", http="httptools",
                server_header=False, proxy_headers=False, timeout_graceful_shutdown=10)


async def _run(handler: Handler, config: config_module.Config, args: argparse.Namespace) -> Any:
    runtime = await Runtime.open(config, serving=False, role="cli")
    try:
        return await handler(runtime, args)
    finally:
        await runtime.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    offline = getattr(args, "offline", None)
    if offline is not None:  # `gateway audit verify` needs no database, no network, no configuration
        return int(offline(args))
    try:
        config = config_module.load()
    except config_module.ConfigError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 2
    if args.command == "serve":
        serve(config)
        return 0
    try:
        result = asyncio.run(_run(args.handler, config, args))
    except GatewayError as exc:
        sys.stderr.write(f"gateway: {exc.detail}\n")
        return 1
    if result is not None:
        _print_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
