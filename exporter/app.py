"""The HTTP side: serves the bytes and snapshot the last tick prepared. Never calls NVML or an endpoint."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import TypeAdapter

from exporter import __version__
from exporter.model import Snapshot
from exporter.render.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition

SNAPSHOT_JSON = TypeAdapter(Snapshot)

LANDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tpw-exporter</title></head>
<body>
<h1>tpw-exporter {version}</h1>
<p>GPU efficiency joined with serving throughput: throughput per watt.{mode}</p>
<ul>
<li><a href="/metrics">/metrics</a> &mdash; Prometheus exposition (text 0.0.4, OpenMetrics on request)</li>
<li><a href="/api/v1/snapshot">/api/v1/snapshot</a> &mdash; the latest snapshot as JSON</li>
<li><a href="/healthz">/healthz</a> &mdash; liveness</li>
<li><a href="/readyz">/readyz</a> &mdash; readiness (first collection done)</li>
</ul>
</body></html>
"""


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header prefers OpenMetrics, as Prometheus sends it when configured to."""
    return "application/openmetrics-text" in accept


def create_app(
    latest: Callable[[], Exposition],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> FastAPI:
    """An app over `latest()`, the most recent exposition; `lifespan` starts and stops collection."""
    app = FastAPI(
        title="tpw-exporter",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        exposition = latest()
        if wants_openmetrics(request.headers.get("accept", "")):
            return Response(exposition.openmetrics, media_type=OPENMETRICS_CONTENT_TYPE)
        return Response(exposition.text, media_type=TEXT_CONTENT_TYPE)

    @app.get("/healthz", response_class=Response)
    async def healthz() -> Response:
        return Response(b"ok\n", media_type="text/plain")

    @app.get("/readyz", response_class=Response)
    async def readyz() -> Response:
        if latest().snapshot.tick > 0:
            return Response(b"ready\n", media_type="text/plain")
        return Response(
            b"not ready: first collection not finished\n", status_code=503, media_type="text/plain"
        )

    @app.get("/api/v1/snapshot")
    async def snapshot() -> Response:
        return Response(SNAPSHOT_JSON.dump_json(latest().snapshot), media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def landing() -> HTMLResponse:
        scenario = latest().snapshot.node.simulated_scenario
        mode = f" <strong>Simulated node</strong> (scenario {scenario}): not real GPUs." if scenario else ""
        return HTMLResponse(LANDING_PAGE.format(version=__version__, mode=mode))

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no such path {request.url.path}; see /"}, status_code=404)

    return app
