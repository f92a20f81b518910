"""The HTTP side: serves the bytes the last tick published. Never calls NVML or an endpoint, never renders.

A scrape picks the body for the negotiated format (and the gzipped one when the scraper accepts gzip and
the collector has compressed it; the first such scrape asks for it and gets the plain body) out of the
latest `Published`: its cost does not depend on the number of GPUs or endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from exporter import __version__
from exporter.live.web import add_live_routes
from exporter.published import Publication, accepts_gzip, negotiate_format


class ScrapeFastPath:
    """`GET /metrics` answered in plain ASGI, everything else by the FastAPI app.

    A scrape is a dictionary lookup and two sends; FastAPI's routing, request and response objects would
    add about half a millisecond of Python to every scrape, the one request that comes every few seconds
    from every Prometheus.
    """

    def __init__(self, app: FastAPI, publication: Publication) -> None:
        self.app = app
        self.publication = publication

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        accept = accept_encoding = ""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
        published = self.publication.latest()
        fmt = negotiate_format(accept)
        headers = [(b"content-type", fmt.content_type.encode()), (b"vary", b"Accept, Accept-Encoding")]
        body = None
        if accepts_gzip(accept_encoding):
            body = published.gzipped.get(fmt)
            if body is None:
                self.publication.want_gzip(fmt)
            else:
                headers.append((b"content-encoding", b"gzip"))
        if body is None:
            body = published.bodies[fmt]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


def create_app(
    publication: Publication,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> ScrapeFastPath:
    """An app over `publication`, where each tick's bytes arrive; `lifespan` starts and stops collection."""
    app = FastAPI(
        title="tpw-exporter",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # a monitoring daemon need not advertise its API
    )

    @app.api_route("/healthz", methods=["GET", "HEAD"], response_class=Response)
    async def healthz() -> Response:
        return Response(b"ok\n", media_type="text/plain")

    @app.api_route("/readyz", methods=["GET", "HEAD"], response_class=Response)
    async def readyz() -> Response:
        published = publication.latest()
        if published.ready:
            return Response(b"ready\n", media_type="text/plain")
        reason = "first collection not finished" if published.collector_up else "collector process down"
        return Response(f"not ready: {reason}\n".encode(), status_code=503, media_type="text/plain")

    @app.api_route("/api/v1/snapshot", methods=["GET", "HEAD"])
    async def snapshot() -> Response:
        body = await publication.snapshot_json()
        if body is None:
            return JSONResponse({"error": "no snapshot: the collector process is down"}, status_code=503)
        return Response(body, media_type="application/json")

    add_live_routes(app, publication)  # the live page at /, its files, /api/v1/history

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no such path {request.url.path}; see /"}, status_code=404)

    return ScrapeFastPath(app, publication)
