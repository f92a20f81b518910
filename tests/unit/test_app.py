"""HTTP endpoints over a prepared exposition (no collection happens in a request)."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.daemon import Daemon, InProcessPublication
from exporter.published import Format, Published, collector_down
from exporter.render.exposition import Renderer
from exporter.sources.simulated import SimulatedSource


def client_and_daemon(tick: bool = True) -> tuple[TestClient, Daemon]:
    daemon = Daemon([SimulatedSource(gpus=2, scenario="compute-bound")], Renderer(), interval=1.0)
    if tick:
        asyncio.run(daemon.tick())
    return TestClient(create_app(InProcessPublication(daemon))), daemon


def test_metrics_text_and_openmetrics_negotiation() -> None:
    client, _ = client_and_daemon()
    text = client.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"tpw_gpu_power_watts" in text.content
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.content.endswith(b"# EOF\n")


def test_scrapes_serve_the_same_bytes_until_the_next_tick() -> None:
    client, daemon = client_and_daemon()
    first, second = client.get("/metrics").content, client.get("/metrics").content
    assert first == second
    asyncio.run(daemon.tick())
    assert client.get("/metrics").content != first


def test_health_and_readiness() -> None:
    client, daemon = client_and_daemon(tick=False)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    asyncio.run(daemon.tick())
    assert client.get("/readyz").status_code == 200


def test_snapshot_json() -> None:
    client, _ = client_and_daemon()
    body = client.get("/api/v1/snapshot").json()
    assert body["tick"] == 1
    assert [g["info"]["uuid"] for g in body["gpus"]] == ["GPU-simulated-0000", "GPU-simulated-0001"]
    assert body["gpus"][0]["info"]["simulated"] is True
    assert body["node"]["simulated_scenario"] == "compute-bound"


def test_landing_page_links_and_says_simulated() -> None:
    client, _ = client_and_daemon()
    page = client.get("/").text
    for link in ("/metrics", "/api/v1/snapshot", "/healthz", "/readyz"):
        assert f'href="{link}"' in page
    assert "Simulated node" in page
    missing = client.get("/nope")
    assert missing.status_code == 404 and "see /" in missing.json()["error"]


def test_gzip_once_a_scraper_asked_for_it() -> None:
    client, _ = client_and_daemon()
    om = {"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"}
    plain = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "identity"}
    )
    first = client.get("/metrics", headers=om)  # asks for compression, which is not ready yet
    assert "content-encoding" not in first.headers and first.content == plain.content
    packed = client.get("/metrics", headers=om)
    assert packed.headers["content-encoding"] == "gzip"  # (TestClient decompresses the body)
    assert packed.content == plain.content
    assert "Accept-Encoding" in packed.headers["vary"]
    refused = client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    assert refused.content.endswith(b"\n") and not refused.content.endswith(b"# EOF\n")


class Down:
    """A publication whose collector process is down."""

    def latest(self) -> Published:
        return collector_down()

    def want_gzip(self, fmt: Format) -> None:
        pass

    async def snapshot_json(self) -> bytes | None:
        return None


def test_a_down_collector_is_not_ready_and_has_no_snapshot() -> None:
    client = TestClient(create_app(Down()))
    assert client.get("/readyz").status_code == 503
    assert "collector process down" in client.get("/readyz").text
    assert client.get("/api/v1/snapshot").status_code == 503
    assert b"tpw_exporter_collector_up 0.0" in client.get("/metrics").content
    assert client.get("/healthz").status_code == 200


def test_head_answers_like_get_without_a_body_and_the_api_is_not_advertised() -> None:
    client, _ = client_and_daemon()
    for path in ("/metrics", "/healthz", "/readyz", "/api/v1/snapshot", "/"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 404, path
