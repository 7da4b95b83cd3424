"""The gateway as bench_export runs it apart: its own process, as `gateway serve` runs it, on 127.0.0.1.

Started by loadtests/bench_export.py, not by hand. Configuration comes from the GATEWAY_* environment
(config.load), the app is GatewayApp(config) under uvicorn with the settings `gateway serve` uses,
and the listening socket is bound to 127.0.0.1 on a port the OS picks, so no two runs collide.

It speaks one JSON line on stdout once it listens ({"port": ..., "pid": ...}) and one when it has shut
down ({"ru_maxrss_kib": ..., "cpu_seconds": ...}, from resource.getrusage). It shuts down gracefully
when its stdin closes, which happens when bench_export is done with it or has died, and in any case
after --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import threading

import uvicorn

from gateway import config as config_module
from gateway.app import GatewayApp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.gateway_process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="shut down after this long whatever happens (default 3600)")
    args = parser.parse_args(argv)

    config = config_module.load()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        GatewayApp(config), log_level=config.log_level.lower(), access_log=False, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=10))

    def stop() -> None:
        server.should_exit = True

    def stop_at_end_of_stdin() -> None:
        sys.stdin.buffer.read()  # returns when the parent closes the pipe or exits
        stop()

    threading.Thread(target=stop_at_end_of_stdin, daemon=True).start()
    deadline = threading.Timer(args.max_seconds, stop)
    deadline.daemon = True
    deadline.start()

    print(json.dumps({"port": listener.getsockname()[1], "pid": os.getpid()}), flush=True)
    server.run(sockets=[listener])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps({"ru_maxrss_kib": usage.ru_maxrss, "cpu_seconds": cpu_seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
