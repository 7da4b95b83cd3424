"""The baseline servers of loadtests/bench.py, started by it (not by hand).

`bare`: a Starlette app with the gateway's two member routes that returns, for each, the bytes the
gateway returned for that request (status, headers, body: captured by bench.py from the running
gateway into a JSON file), and does nothing else. It is served by `gateway.cli.serve` itself, so
the server and its settings are exactly those `gateway serve` ships with (uvicorn; uvloop and
httptools when installed; the same log level, headers and shutdown), read from the same GATEWAY_*
variables (GATEWAY_HOST, GATEWAY_PORT, GATEWAY_LOG_LEVEL).

`raw`: the same answers from a raw ASGI callable without Starlette, for the record (the floor of
any Python app on this server).

`gateway-nometrics`: the gateway itself (GatewayApp under the same `serve`), with every Prometheus
metric of gateway/metrics.py replaced by a no-op, to price the instrumentation on the request path.

    python -m loadtests.bench_server bare responses.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import config as config_module
from gateway.cli import serve


def _endpoint(answer: dict[str, Any]) -> Any:
    body = answer["body"].encode("latin-1")
    headers = {k: v for k, v in answer["headers"] if k not in ("content-length", "content-type", "date")}
    media_type = dict(answer["headers"]).get("content-type")
    status = answer["status"]

    async def endpoint(request: Request) -> Response:
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    return endpoint


def bare_app(answers: dict[str, dict[str, Any]]) -> Starlette:
    """`answers` maps a route path pattern (as the gateway declares it) to the captured response."""
    return Starlette(routes=[Route(path, _endpoint(answer), methods=["GET"]) for path, answer in answers.items()])


def raw_app(answers: dict[str, dict[str, Any]]) -> Any:
    """A raw ASGI app answering by path suffix: `/records` gets the page, anything else the core answer."""
    prepared = {}
    for path, answer in answers.items():
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer["headers"] if k != "date"]
        prepared["records" if path.endswith("/records") else "core"] = (
            {"type": "http.response.start", "status": answer["status"], "headers": headers},
            {"type": "http.response.body", "body": answer["body"].encode("latin-1")})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        start, body = prepared["records" if scope["path"].endswith("/records") else "core"]
        await send(start)
        await send(body)

    return app


class _NoMetric:
    """Stands for a prometheus_client metric and does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, *args: Any) -> None:
        pass

    def dec(self, *args: Any) -> None:
        pass

    def set(self, *args: Any) -> None:
        pass

    def observe(self, *args: Any) -> None:
        pass

    def time(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


def _without_metrics() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from gateway import metrics

    for name, value in list(vars(metrics).items()):
        if isinstance(value, MetricWrapperBase):
            setattr(metrics, name, _NoMetric())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("bare", "raw", "gateway-nometrics"))
    parser.add_argument("answers", type=Path, help="JSON file of captured responses (written by bench.py)")
    args = parser.parse_args(argv)
    answers = orjson.loads(args.answers.read_bytes())
    config = config_module.load()
    if args.kind == "gateway-nometrics":
        _without_metrics()
        serve(config)
    else:
        serve(config, app=bare_app(answers) if args.kind == "bare" else raw_app(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
