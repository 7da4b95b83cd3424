"""Health, readiness and metrics: for orchestrators and Prometheus, not audited (see audit_middleware)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import metrics, migrations
from gateway.http.endpoints import json_response, runtime_of


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL answers, every migration is applied and the snapshot is current."""
    runtime = runtime_of(request)
    problems = []
    try:
        async with asyncio.timeout(1.0):
            async with runtime.pool.acquire() as conn:
                if await migrations.pending(conn):
                    problems.append("migrations pending")
    except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - any failure means "not ready"
        problems.append(f"database unreachable ({type(exc).__name__})")
    if not runtime.snapshot.ready:
        problems.append("snapshot reloading")
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, status=503)
    return json_response({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    runtime = runtime_of(request)
    metrics.SNAPSHOT_READY.set(1 if runtime.snapshot.ready else 0)
    metrics.SNAPSHOT_GENERATION.set(runtime.snapshot.generation)
    metrics.AUDIT_LOG_SIZE.set(runtime.writer.size)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
