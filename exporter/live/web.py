"""The live page's routes, in the HTTP server process: `/` (the page), `/static/NAME` (its files) and
`/api/v1/history` (the collector's history, asked for over its socket like `/api/v1/snapshot`).

Everything the page needs is in the package (exporter/static/: the page's own HTML, JS and CSS, and uPlot,
vendored), read once when the app is made (about 75 KB): it works offline, with no CDN. Every route sits
behind the listener's access layer (exporter/access.py) like any page but /healthz and /readyz, so basic
auth and TLS from the web config apply to the page, its files and its data.

Caching: the page is `no-cache` (it names the scenario and its files' versions); each file is linked as
/static/NAME?v=VERSION (the first 12 hex digits of its SHA-256) and served `immutable` for a year when asked
with its current version, `no-cache` otherwise, always with an ETag (304 on a match), gzipped when the
browser accepts it (compressed once, on first use). The history is `no-store`.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from importlib.resources import files

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from exporter import __version__
from exporter.published import Publication, accepts_gzip, gzip_bytes

STATIC_PACKAGE = "exporter"
STATIC_DIRECTORY = "static"
PAGE_TEMPLATE = "index.html"
# The files served under /static/ (any other name is a 404), and their content types.
ASSETS: dict[str, str] = {
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE.txt": "text/plain; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# The page loads only its own files and asks only its own origin; nothing inline.
PAGE_HEADERS: dict[str, str] = {
    "cache-control": REVALIDATE,
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
RUN_PATTERN = re.compile(r"[0-9a-f]{1,32}")
MAX_TICK = 2**62


@dataclass
class Asset:
    name: str
    body: bytes
    content_type: str
    version: str = field(init=False)
    etag: str = field(init=False)
    _gzipped: bytes | None = None

    def __post_init__(self) -> None:
        self.version = hashlib.sha256(self.body).hexdigest()[:12]
        self.etag = f'"{self.version}"'

    @property
    def url(self) -> str:
        return f"/static/{self.name}?v={self.version}"

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip_bytes(self.body)
        return self._gzipped


def load_assets() -> dict[str, Asset]:
    directory = files(STATIC_PACKAGE).joinpath(STATIC_DIRECTORY)
    return {name: Asset(name, directory.joinpath(name).read_bytes(), kind) for name, kind in ASSETS.items()}


def page_template() -> str:
    return (
        files(STATIC_PACKAGE).joinpath(STATIC_DIRECTORY).joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8")
    )


def render_page(template: str, assets: dict[str, Asset], scenario: str | None) -> str:
    """The page: the version, whether the node is simulated, and its files' versioned URLs."""
    mode = ""
    if scenario:
        mode = f"<strong>Simulated node</strong> (scenario {html.escape(scenario)}): not real GPUs."
    page = template.replace("{{version}}", html.escape(__version__)).replace("{{mode}}", mode)
    for name, asset in assets.items():
        page = page.replace(f"{{{{{name}}}}}", asset.url)
    return page


def _int(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value < MAX_TICK else None


def add_live_routes(app: FastAPI, publication: Publication) -> None:
    """`/`, `/static/NAME` and `/api/v1/history` on `app`."""
    assets = load_assets()
    template = page_template()

    async def live_page(request: Request) -> Response:
        page = render_page(template, assets, publication.latest().simulated_scenario)
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        asset = assets.get(name)
        if asset is None:
            return JSONResponse({"error": f"no such file {name}; see /"}, status_code=404)
        cache = IMMUTABLE if request.query_params.get("v") == asset.version else REVALIDATE
        headers = {"cache-control": cache, "etag": asset.etag, "x-content-type-options": "nosniff"}
        headers["vary"] = "Accept-Encoding"
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = asset.body
        if accepts_gzip(request.headers.get("accept-encoding", "")):
            body = asset.gzipped()
            headers["content-encoding"] = "gzip"
        return Response(body, media_type=asset.content_type, headers=headers)

    async def history(request: Request) -> Response:
        since = _int(request.query_params.get("since"))
        run = request.query_params.get("run")
        if run is not None and not RUN_PATTERN.fullmatch(run):
            run = None
        gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
        answer = await publication.history_json(since, run, gzip)
        if answer is None:
            return JSONResponse({"error": "no history: the collector process is down"}, status_code=503)
        body, gzipped = answer
        headers = {"cache-control": "no-store", "vary": "Accept-Encoding"}
        if gzipped:
            headers["content-encoding"] = "gzip"
        return Response(body, media_type="application/json", headers=headers)

    # Starlette's routes, not FastAPI's: no request model to build (0.6 MB less in the server process)
    app.add_route("/", live_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route("/static/{name}", static, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route("/api/v1/history", history, methods=["GET", "HEAD"], include_in_schema=False)
