"""The real exporter's two processes: a collector that crashes is replaced; signals end both."""

from __future__ import annotations

import gzip
import os
import signal
import urllib.request

import psutil
from helpers import ExporterProcess, http_get, running_exporter, wait_for


def collector_pid(exporter: ExporterProcess) -> int:
    children = psutil.Process(exporter.process.pid).children()
    assert len(children) == 1, children
    return children[0].pid


def test_a_collector_killed_by_sigsegv_is_restarted_and_counted() -> None:
    with running_exporter(["demo", "--gpus", "2", "--interval", "0.2"]) as exporter:
        first = collector_pid(exporter)
        assert "tpw_exporter_collector_restarts_total 0.0" in exporter.metrics()
        os.kill(first, signal.SIGSEGV)
        wait_for(lambda: "tpw_exporter_collector_up 0.0" in exporter.metrics(), 5, "collector reported down")
        down = exporter.metrics()
        assert "tpw_gpu_power_watts" not in down  # nothing stale is served
        assert http_get(f"{exporter.url}/readyz")[0] == 503
        assert http_get(f"{exporter.url}/api/v1/snapshot")[0] == 503
        wait_for(lambda: http_get(f"{exporter.url}/readyz")[0] == 200, 10, "restarted collector ready")
        text = exporter.metrics()
        assert "tpw_exporter_collector_restarts_total 1.0" in text
        assert "tpw_exporter_collector_up 1.0" in text and "tpw_gpu_power_watts" in text
        assert collector_pid(exporter) != first
        output = exporter.output()
    assert "collector process died (killed by SIGSEGV); restarting it in 1 s" in output


def test_sigterm_to_the_server_ends_both_processes() -> None:
    exporter = ExporterProcess(["demo", "--interval", "0.2"])
    try:
        exporter.wait_ready()
        child = collector_pid(exporter)
    finally:
        exporter.stop()
    assert exporter.process.returncode == 0, exporter.output()
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_gzip_is_served_from_the_tick_after_a_scraper_asks() -> None:
    with running_exporter(["demo", "--interval", "0.2"]) as exporter:

        def gzipped_scrape() -> bytes | None:
            request = urllib.request.Request(
                f"{exporter.url}/metrics",
                headers={"Accept-Encoding": "gzip", "Accept": "application/openmetrics-text"},
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                body = response.read()
                assert "Accept-Encoding" in response.headers["Vary"]
                return body if response.headers.get("Content-Encoding") == "gzip" else None

        body = wait_for(gzipped_scrape, 5, "a gzipped body")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and "tpw_gpu_power_watts" in text
