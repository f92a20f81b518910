"""The live page's routes (exporter/live/web.py) and its files: content types, caching, versions, the history
over the app and over the collector's socket, basic auth in front of all of them, the vendored uPlot."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import re
import socket
from pathlib import Path

import bcrypt
import pytest
from fastapi.testclient import TestClient
from helpers import REPO

from exporter.access import Access
from exporter.app import create_app
from exporter.collector import CollectorChannel, CollectorProcess, FrameDecoder, encode_frame
from exporter.daemon import Daemon, InProcessPublication
from exporter.live.history import History
from exporter.live.web import ASSETS, IMMUTABLE, load_assets
from exporter.published import Format, Published, collector_down, publish
from exporter.render.exposition import Renderer
from exporter.sources.simulated import SimulatedSource
from exporter.webconfig import WebConfigWatcher

STATIC = REPO / "exporter" / "static"


class Node:
    """A daemon over a simulated node whose clock moves one second a tick: each tick is a point."""

    def __init__(self, gpus: int, scenario: str) -> None:
        self.now = 0.0
        source = SimulatedSource(gpus=gpus, scenario=scenario)
        self.daemon = Daemon([source], Renderer(), interval=1.0, clock=lambda: self.now)

    def tick(self) -> None:
        self.now += 1.0
        asyncio.run(self.daemon.tick())


def client(ticks: int = 3) -> tuple[TestClient, Node]:
    node = Node(2, "compute-bound")
    app = create_app(InProcessPublication(node.daemon))
    for _ in range(ticks):
        node.tick()
    return TestClient(app), node


def test_the_page_links_its_versioned_files_and_says_simulated() -> None:
    http, _ = client()
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    text = page.text
    for name, asset in load_assets().items():
        assert f'"{asset.url}"' in text, name
        assert re.fullmatch(rf"/static/{re.escape(name)}\?v=[0-9a-f]{{12}}", asset.url)
    assert "{{" not in text and "<script>" not in text and " style=" not in text  # nothing inline
    assert "Simulated node</strong> (scenario compute-bound)" in text
    assert 'href="/api/v1/history"' in text and '<link rel="icon" href="data:,">' in text


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_each_file_has_its_type_caching_and_etag(name: str) -> None:
    http, _ = client(ticks=0)
    asset = load_assets()[name]
    fresh = http.get(asset.url, headers={"accept-encoding": "identity"})
    assert fresh.status_code == 200 and fresh.content == (STATIC / name).read_bytes()
    assert fresh.headers["content-type"] == ASSETS[name]
    assert fresh.headers["cache-control"] == IMMUTABLE and fresh.headers["etag"] == f'"{asset.version}"'
    assert fresh.headers["x-content-type-options"] == "nosniff"
    assert asset.version == hashlib.sha256(fresh.content).hexdigest()[:12]
    stale = http.get(f"/static/{name}?v=000000000000")
    assert stale.headers["cache-control"] == "no-cache" and stale.content == fresh.content
    again = http.get(f"/static/{name}", headers={"if-none-match": asset.etag})
    assert again.status_code == 304 and again.content == b""
    packed = http.get(asset.url, headers={"accept-encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip" and packed.content == fresh.content
    head = http.head(asset.url)
    assert head.status_code == 200 and head.content == b""


def test_only_the_listed_files_are_served() -> None:
    http, _ = client(ticks=0)
    for path in ("/static/index.html", "/static/VENDORED.md", "/static/../app.py", "/static/nope.js"):
        answer = http.get(path)
        assert answer.status_code == 404, path
        assert "error" in answer.json()


def test_history_over_the_app_whole_then_only_what_is_new() -> None:
    http, node = client()
    first = http.get("/api/v1/history")
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert first.headers["cache-control"] == "no-store"
    body = first.json()
    assert body["tick"] == 3 and body["full"] is True and len(body["gpus"]) == 2
    assert body["simulated_scenario"] == "compute-bound"
    node.tick()
    newer = http.get(f"/api/v1/history?since={body['tick']}&run={body['run']}").json()
    assert newer["full"] is False and newer["ticks"] == [4]
    for query in ("since=abc", "since=-1", "since=99999999999999999999", f"since=2&run={'x' * 40}"):
        assert http.get(f"/api/v1/history?{query}").json()["full"] is True, query
    head = http.head("/api/v1/history")
    assert head.status_code == 200 and head.content == b""


def test_history_is_gzipped_by_the_collector_when_accepted_and_worth_it() -> None:
    http, _ = client()
    packed = http.get("/api/v1/history", headers={"accept-encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"  # TestClient decompresses the body
    assert packed.json()["tick"] == 3
    plain = http.get("/api/v1/history", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers


class Down:
    """A publication whose collector process is down."""

    def latest(self) -> Published:
        return collector_down()

    def want_gzip(self, fmt: Format) -> None:
        pass

    async def snapshot_json(self) -> bytes | None:
        return None

    async def history_json(self, since: int | None, run: str | None, gzip: bool) -> tuple[bytes, bool] | None:
        return None


def test_a_down_collector_has_no_history_but_the_page_and_files_are_served() -> None:
    http = TestClient(create_app(Down()))
    assert http.get("/api/v1/history").status_code == 503
    assert http.get("/").status_code == 200 and "Simulated node" not in http.get("/").text
    assert http.get("/static/live.js").status_code == 200


def test_basic_auth_guards_the_page_its_files_and_its_data(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  viewer: '{hashed}'\n")
    daemon = Daemon([SimulatedSource(gpus=1, scenario="idle")], Renderer(), interval=1.0)
    app = Access(create_app(InProcessPublication(daemon)), WebConfigWatcher(config))
    asyncio.run(daemon.tick())
    http = TestClient(app)
    token = base64.b64encode(b"viewer:secret").decode()
    paths = ["/", "/api/v1/history", *(asset.url for asset in load_assets().values())]
    for path in paths:
        assert http.get(path).status_code == 401, path
        assert http.get(path, headers={"authorization": f"Basic {token}"}).status_code == 200, path
    assert http.get("/healthz").status_code == 200


# -- over the collector's socket --------------------------------------------------------------------------


def answering(sock: socket.socket, restarts: int) -> int:
    """A collector that publishes a tick and answers each history request with its own `since`, the later
    request first, after a pause: answers are matched to requests by id, not by order."""
    sock.sendall(encode_frame(("started",)))
    sock.sendall(encode_frame(("published", publish(1, b"a 1\n", b"a 1\n# EOF\n"))))
    decoder, pending = FrameDecoder(), []
    while True:
        data = sock.recv(65536)
        if not data:
            return 0
        for message in decoder.feed(data):
            if message[0] == "history":
                pending.append(message)
        if len(pending) == 2:
            for _, request, since, run, gzipped in reversed(pending):
                body = json.dumps({"since": since, "run": run, "gzip": gzipped}).encode()
                sock.sendall(encode_frame(("history", request, body, False)))
            pending.clear()


def test_concurrent_history_requests_each_get_their_own_answer() -> None:
    collector = CollectorProcess(answering)
    collector.start(timeout=5)

    async def scenario() -> list[tuple[bytes, bool] | None]:
        collector.attach(asyncio.get_running_loop())
        return list(
            await asyncio.gather(
                collector.history_json(5, "ab", True), collector.history_json(None, None, False)
            )
        )

    try:
        first, second = asyncio.run(scenario())
    finally:
        collector.stop(timeout=2)
    assert first is not None and json.loads(first[0]) == {"since": 5, "run": "ab", "gzip": True}
    assert second is not None and json.loads(second[0]) == {"since": None, "run": None, "gzip": False}


def test_the_collector_channel_records_each_tick_and_answers_history_requests() -> None:
    node = Node(1, "compute-bound")
    ours, theirs = socket.socketpair()
    history = History(1.0)
    channel = CollectorChannel(ours, asyncio.Event(), history)
    node.daemon.publish = channel.publish
    for _ in range(3):
        node.tick()
    assert history.tick == 3
    channel.publish(node.daemon.latest)  # published again (a scraper asked for gzip): not a new point
    theirs.sendall(encode_frame(("history", 7, None, None, True)))
    channel.on_readable()
    theirs.settimeout(2)
    decoder, replies = FrameDecoder(), []
    while not replies:
        replies = [m for m in decoder.feed(theirs.recv(1 << 20)) if m[0] == "history"]
    (_, request, body, gzipped), *_ = replies
    assert request == 7 and gzipped is True
    answer = json.loads(gzip.decompress(body))
    assert answer["ticks"] == [1, 2, 3] and answer["gpus"][0]["current"]["bound"] is None
    ours.close()
    theirs.close()


# -- the files themselves --------------------------------------------------------------------------------


def test_vendored_uplot_is_the_version_and_bytes_the_notes_say() -> None:
    notes = (STATIC / "VENDORED.md").read_text()
    version = re.search(r"uPlot (\d+\.\d+\.\d+)", notes)
    assert version is not None
    assert (
        (STATIC / "uPlot.iife.min.js")
        .read_text()
        .startswith(f"/*! https://github.com/leeoniya/uPlot (v{version.group(1)}) */")
    )
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()
        assert f"| `{name}` |" in notes and digest in notes, name
    assert "MIT License" in (STATIC / "uPlot.LICENSE.txt").read_text()


def test_every_static_file_is_package_data() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "[tool.setuptools.package-data]\n# " in pyproject and '\nexporter = ["static/*"]\n' in pyproject
    assert all(path.is_file() for path in STATIC.iterdir())  # static/* takes them all: no subfolder
    assert {*ASSETS, "index.html"} <= {path.name for path in STATIC.iterdir()}
