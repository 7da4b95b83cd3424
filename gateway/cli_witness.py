"""`gateway witness serve|vkey`: run a C2SP tlog-witness for a deployment's audit logs (gateway/witness.py).

Like `gateway audit verify`, these need no gateway here (no database, no GATEWAY_* settings): a member
or an auditor runs them on their own machine with the deployment's audit verifier key
(`GET /v1/audit/keys` lists it). Both set `offline`, which gateway/cli.py calls without a Runtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from gateway.errors import InvalidInput
from gateway.witness import DEFAULT_ORIGIN_PREFIX, Witness, WitnessedLogs, WitnessError, open_key


def _open(args: argparse.Namespace) -> Witness:
    logs = [WitnessedLogs(args.origin_prefix, tuple(args.log_key or ()))]
    try:
        return Witness.open(args.state, logs, name=args.name)
    except WitnessError as exc:
        raise InvalidInput(str(exc)) from None


def run_vkey(args: argparse.Namespace) -> int:
    """Print the witness's verifier key (generating the key on first use), for GATEWAY_WITNESSES."""
    try:
        cosigner = open_key(args.state, args.name)
    except WitnessError as exc:
        raise InvalidInput(str(exc)) from None
    sys.stdout.write(cosigner.vkey() + "\n")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import witness_app

    if not args.log_key:
        raise InvalidInput("give the audit verifier key of the logs to witness: --log-key VKEY "
                           "(GET /v1/audit/keys lists it as vkey)")
    witness = _open(args)
    try:
        sys.stdout.write(f"witness {witness.cosigner.name}: vkey {witness.vkey()}\n")
        sys.stdout.write(f"witnessing origins {args.origin_prefix}* on http://{args.host}:{args.port}/add-checkpoint\n")
        sys.stdout.flush()
        server = uvicorn.Server(uvicorn.Config(witness_app(witness), host=args.host, port=args.port,
                                               log_level="warning", access_log=False, server_header=False))
        server.run()
    finally:
        witness.close()
    return 0 if server.started else 3


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `gateway witness serve|vkey` to the CLI's subparsers, built with the CLI's `command`."""
    group = sub.add_parser("witness", help="run a tlog-witness that cosigns the audit logs' checkpoints",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = command(actions, "serve", None, "serve C2SP tlog-witness POST /add-checkpoint for a deployment's audit logs "
                "(no database: state and key live in --state)",
                "gateway witness serve --state ~/lpd-witness --name witness.shibuya-analytics.jp/lpd "
                "--log-key 'lpd-gateway-audit+1a2b3c4d+AW...' --port 8090")
    p.set_defaults(offline=run_serve)
    _state_args(p)
    p.add_argument("--log-key", metavar="VKEY", action="append",
                   help="an audit verifier key of the deployment (repeatable; one signs all its logs)")
    p.add_argument("--origin-prefix", default=DEFAULT_ORIGIN_PREFIX,
                   help=f"witness the logs whose origin starts so (default: {DEFAULT_ORIGIN_PREFIX})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="TCP port (default: 8090)")
    p = command(actions, "vkey", None, "print the witness's verifier key (made on first use), for GATEWAY_WITNESSES",
                "gateway witness vkey --state ~/lpd-witness --name witness.shibuya-analytics.jp/lpd")
    p.set_defaults(offline=run_vkey)
    _state_args(p)


def _state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", required=True, help="the witness's folder: its key (witness.key, 0600) and state")
    parser.add_argument("--name", help="the witness key's name when it is made, a schema-less URL "
                                       "(default: <hostname>/lpd-witness); kept with the key")
