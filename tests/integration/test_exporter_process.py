"""The exporter as users run it: a real process, real HTTP, real signals."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, ExporterProcess, http_get, running_exporter, wait_for


def test_demo_serves_simulated_gpus_and_stops_on_sigterm_within_a_second() -> None:
    exporter = ExporterProcess(["demo", "--gpus", "3", "--interval", "0.2"])
    try:
        exporter.wait_ready()
        text = exporter.metrics()
        assert text.count("tpw_gpu_up{") == 3
        assert 'tpw_source_up{source="simulated"} 1.0' in text
    finally:
        elapsed = exporter.stop()
    assert exporter.process.returncode == 0, exporter.output()
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
    assert "Traceback" not in exporter.output()


def test_serve_without_a_driver_keeps_serving_with_nvml_down() -> None:
    # This machine (and CI) has no NVIDIA driver: the real pynvml fails to load libnvidia-ml.
    with running_exporter(["serve", "--interval", "0.2"]) as exporter:
        text = exporter.metrics()
        assert 'tpw_source_up{source="nvml"} 0.0' in text
        assert "tpw_build_info" in text
        assert http_get(f"{exporter.url}/healthz")[0] == 200
        wait_for(
            lambda: "next attempt" in http_get(f"{exporter.url}/api/v1/snapshot")[1].decode(), 5, "backoff"
        )
        output = exporter.output()
    assert output.count("source nvml is down") == 1  # one clear line, not one per tick
    assert "Traceback" not in output


def test_port_in_use_fails_with_a_clear_message() -> None:
    with running_exporter(["demo"]) as first:
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "demo", "--listen-address", f"127.0.0.1:{first.port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert "address already in use" in result.stderr.lower()
