"""`gateway audit ...`: export an evidence bundle, verify one offline, re-check the logs in PostgreSQL.

`register(sub, command)` adds the commands to the `gateway` parser (gateway/cli.py). `verify` needs no database:
it sets `offline`, a plain function of the arguments, which the CLI calls without opening a Runtime;
its `handler` does the same for a CLI that always opens one.

`read_file`, `read_text`, `path_arg` and `moment_arg` read the files and date-times a command is given;
gateway/cli.py uses them too (it imports this module, so they live here). A mistake in either is an
InvalidInput whose one line says what to give instead, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway import datasets, members, times, vendors
from gateway.actors import cli_actor
from gateway.audit import checkpoints, evidence
from gateway.audit.events import EventKind, Outcome
from gateway.audit.verify import verify_bundle
from gateway.errors import InvalidInput
from gateway.runtime import Runtime


class _Progress:
    """Events exported so far, on one line of a terminal; nothing when stderr is not a terminal."""

    def __init__(self, label: str) -> None:
        self.label, self.enabled, self.last = label, sys.stderr.isatty(), 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            sys.stderr.write(f"\r{self.label}: {done:,} events")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")


def moment_arg(text: str) -> datetime:
    """An argparse type: RFC 3339 date-time or a date; without an offset it is Japan Standard Time (a
    date is its midnight JST: a calendar day in Japan, as usage reports count them)."""
    try:
        return times.parse_moment(text, assume=times.JST, example="2026-04-01 or 2026-04-01T09:00:00+09:00")
    except times.MomentError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def path_arg(text: str) -> str:
    """An argparse type marking a file path: any name the file system allows, UTF-8 or not.

    gateway/cli.py refuses every other argument that is not valid UTF-8 (PostgreSQL text must be).
    """
    return text


def read_file(path: str, what: str) -> bytes:
    """The bytes of a file named on the command line; `what` names it in the error ("--terms file")."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise file_error(path, what, exc) from None


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file named on the command line, for text that PostgreSQL stores (so without NUL)."""
    data = read_file(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} {path!r} is not UTF-8 text (byte {exc.start + 1}): save it as UTF-8") from None
    if "\x00" in text:  # PostgreSQL text cannot hold U+0000 (the API refuses it the same way)
        raise InvalidInput(f"{what} {path!r} holds a NUL (U+0000) character: save it as plain text")
    return text


def file_error(path: str, what: str, exc: OSError) -> InvalidInput:
    """One line for a file the command line cannot open or read: what it is, and what to do."""
    if isinstance(exc, FileNotFoundError):
        return InvalidInput(f"{what} {path!r} does not exist: give the path of an existing file")
    if isinstance(exc, IsADirectoryError):
        return InvalidInput(f"{what} {path!r} is a folder: give the path of a file")
    if isinstance(exc, PermissionError):
        return InvalidInput(f"{what} {path!r} cannot be read (permission denied): check its permissions")
    return InvalidInput(f"{what} {path!r} cannot be read: {exc.strerror or exc}")


def _writable_output(output: str) -> Path:
    """The bundle's path, refused before anything is recorded when no file can be written there."""
    target = Path(output)
    if target.is_dir():
        raise InvalidInput(f"-o {output!r} is a folder: name the bundle file to write, e.g. {target / 'april.zip'}")
    folder = target.parent
    if not folder.is_dir():
        raise InvalidInput(f"-o {output!r}: the folder {str(folder)!r} does not exist: create it, or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise InvalidInput(f"-o {output!r}: the folder {str(folder)!r} is not writable: write elsewhere")
    return target


async def cmd_export(runtime: Runtime, args: argparse.Namespace) -> Any:
    _writable_output(args.output)
    vendor = await vendors.find(runtime.pool, args.vendor)
    member = await members.find(runtime.pool, vendor.id, args.member) if args.member else None
    dataset = await datasets.find(runtime.pool, vendor.id, args.dataset) if args.dataset else None
    # Reading a vendor's audit trail is itself evidence of access: recorded, and signed before the
    # export starts so that the bundle can hold it.
    await runtime.writer.commit(cli_actor(vendor.id).event(
        EventKind.AUDIT_READ, Outcome.ALLOW, member_id=member.id if member else None,
        dataset_id=dataset.id if dataset else None,
        detail={"export": {"from": args.start.isoformat(), "to": args.end.isoformat(), "file": Path(args.output).name}}))
    await runtime.writer.checkpoint()
    await runtime.push_to_witnesses()  # the bundle then carries the cosignatures of that checkpoint
    progress = _Progress(f"exporting {Path(args.output).name}")
    try:
        result = await evidence.export(runtime.pool, vendor.id, args.start, args.end, member.id if member else None,
                                       dataset.id if dataset else None, path=args.output,
                                       signer=checkpoints.CheckpointSigner(runtime.master), progress=progress)
    except OSError as exc:  # checked above, but the disk can still fill up or the folder go away
        raise InvalidInput(f"cannot write the bundle {args.output!r}: {exc.strerror or exc}") from None
    finally:
        progress.finish()
    return result.to_json()


async def cmd_check(runtime: Runtime, args: argparse.Namespace) -> Any:
    progress = _Progress("checking")
    async with runtime.pool.acquire() as conn:
        try:
            result = await checkpoints.check(conn, progress)
        finally:
            progress.finish()
    if not result.ok:
        sys.stdout.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        failed = next(entry for entry in result.logs if entry.problem)
        sys.stderr.write(f"gateway: audit log {failed.log_id} fails: {failed.problem}\n")
        raise SystemExit(1)
    return result.to_json()


def run_verify(args: argparse.Namespace) -> int:
    """Offline: one verdict line on stdout; exit status 0 when the bundle verifies, 1 when not.

    A bundle or checkpoint file that cannot be read at all is a mistake in the command, not a verdict
    on a bundle: it is one line on stderr (gateway/cli.py's main prints the InvalidInput), status 1.
    """
    try:
        with open(args.bundle, "rb"):
            pass
    except OSError as exc:
        raise file_error(args.bundle, "the bundle", exc) from None
    trusted = read_text(args.trusted_checkpoint, "--trusted-checkpoint file") if args.trusted_checkpoint else None
    verdict = verify_bundle(args.bundle, trusted, trusted_keys=args.trusted_key, witnesses=args.witness,
                            quorum=args.quorum, require_signed=args.require_signed)
    sys.stdout.write(verdict.line() + "\n")
    return 0 if verdict.ok else 1


async def cmd_verify(runtime: Runtime, args: argparse.Namespace) -> Any:
    raise SystemExit(await asyncio.to_thread(run_verify, args))


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `gateway audit export|verify|check` to the CLI's subparsers, built with the CLI's `command`."""
    audit = sub.add_parser("audit", help="audit evidence: export, verify offline, check the logs")
    actions = audit.add_subparsers(dest="action", required=True)
    p = command(actions, "export", cmd_export, "write an evidence bundle (ZIP) of a vendor's audit events",
                 "gateway audit export --vendor 'Example Mobile' --from 2026-04-01 --to 2026-05-01 -o april.zip")
    p.add_argument("--vendor", required=True, help="vendor name or id")
    p.add_argument("--from", dest="start", required=True, type=moment_arg, help="start (inclusive), RFC 3339 or date")
    p.add_argument("--to", dest="end", required=True, type=moment_arg, help="end (exclusive), RFC 3339 or date")
    p.add_argument("--member", help="only this member's events (name or id)")
    p.add_argument("--dataset", help="only this dataset's events (name or id)")
    p.add_argument("-o", "--output", required=True, type=path_arg, help="the bundle to write, e.g. april.zip")
    p = command(actions, "verify", cmd_verify, "verify an evidence bundle offline (no database needed)",
                 "gateway audit verify april.zip --trusted-checkpoint checkpoint.txt --witness W1_VKEY "
                 "--witness W2_VKEY --quorum 2")
    p.set_defaults(offline=run_verify)
    p.add_argument("bundle", type=path_arg)
    p.add_argument("--trusted-checkpoint", metavar="FILE", type=path_arg,
                   help="a checkpoint kept from earlier: a signed note (e.g. a receipt's) or the JSON of "
                        "GET /v1/audit/checkpoint")
    p.add_argument("--trusted-key", metavar="VKEY", action="append",
                   help="accept only checkpoints signed by this C2SP verifier key (repeatable)")
    p.add_argument("--witness", metavar="VKEY", action="append",
                   help="a witness's tlog-cosignature/v1 verifier key (repeatable): see --quorum")
    p.add_argument("--quorum", metavar="K", type=int,
                   help="refuse the bundle unless each log's events are covered by a checkpoint cosigned by K of "
                        "the --witness keys (default: all of them)")
    p.add_argument("--require-signed", action="store_true",
                   help="refuse a format 1 bundle, whose manifest is not signed (a signed bundle stripped of "
                        "manifest.sig, terms.jsonl and report.json would otherwise verify as one)")
    command(actions, "check", cmd_check, "re-verify every audit log in PostgreSQL against its signed checkpoints",
             "gateway audit check")
