"""End to end with real processes: the demo reproduces an alert pattern, a real Prometheus fires and resolves.

The demo exporter runs the schedule busy-flat → healthy → endpoint-down → healthy (`--scenario-schedule`,
0.5 s ticks, a 2 s derive window, 5 s phases); a real Prometheus scrapes it and evaluates the shipped
rules every second. The rules are deploy/prometheus/rules/alerts.yml and recording.yml as shipped, loaded
through a time-scaled copy written to a temporary directory (tests/rules/fast_rules.py): every `for:`,
group `interval:`, range window, subquery and `offset` is divided by 60, so `for: 10m` becomes 10 s and
`delta(x[10m])` becomes `delta(x[10s])`. The expressions are otherwise identical, thresholds included; the
shipped files are not modified.

What must happen, read from Prometheus's own /api/v1/alerts:
* busy-flat (GPUs 92 % busy, tokens/s flat, the queue growing): TPWBusyButFlat fires for demo-vllm;
* healthy: it resolves (leaves the list) within seconds;
* endpoint-down (the simulated engine answers 503, so the exporter really fails to scrape it):
  TPWEndpointDown fires; healthy again: it resolves, and no TPW alert is left firing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, ExporterProcess, PrometheusProcess, running_exporter, running_prometheus, wait_for
from rules.fast_rules import write_scaled

RULES = REPO / "deploy" / "prometheus" / "rules"
FACTOR = 60.0
SCHEDULE = (("busy-flat", 30), ("healthy", 10), ("endpoint-down", 15), ("healthy", 600))
ENDPOINT = "demo-vllm"


def tpw_alerts(prometheus: PrometheusProcess) -> list[dict[str, Any]]:
    return [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"].startswith("TPW")]


def alerts_named(prometheus: PrometheusProcess, name: str, state: str | None = None) -> list[dict[str, Any]]:
    return [
        a
        for a in tpw_alerts(prometheus)
        if a["labels"]["alertname"] == name and (state is None or a["state"] == state)
    ]


def scenario(exporter: ExporterProcess) -> str:
    """The demo's current scenario, from tpw_simulation_info{scenario}."""
    for line in exporter.metrics().splitlines():
        if line.startswith("tpw_simulation_info{"):
            return line.split('scenario="', 1)[1].split('"', 1)[0]
    raise AssertionError("no tpw_simulation_info on the demo's /metrics")


@pytest.fixture
def scaled_rules(tmp_path: Path) -> list[Path]:
    return [write_scaled(RULES / name, tmp_path / name, FACTOR) for name in ("alerts.yml", "recording.yml")]


def test_busy_flat_and_endpoint_down_fire_and_resolve_in_a_real_prometheus(scaled_rules: list[Path]) -> None:
    schedule = ",".join(f"{name}:{seconds}" for name, seconds in SCHEDULE)
    args = ["demo", "--interval", "0.5", "--phase-seconds", "5", "--scenario-schedule", schedule]
    timings: dict[str, float] = {}
    with (
        running_exporter(args, env={"TPW_DERIVE__WINDOW": "2"}) as exporter,
        running_prometheus([f"127.0.0.1:{exporter.port}"], rule_files=scaled_rules) as prometheus,
    ):
        started = time.monotonic()
        loaded = {rule["name"] for group in prometheus.api("rules")["groups"] for rule in group["rules"]}
        assert {"TPWBusyButFlat", "TPWEndpointDown", "model:tpw_tokens_per_joule:ratio"} <= loaded

        # busy-flat: the alert goes pending, then fires, while the demo is still busy-flat.
        busy = wait_for(
            lambda: alerts_named(prometheus, "TPWBusyButFlat", "firing"), 28, "TPWBusyButFlat to fire"
        )
        timings["busy-flat fired"] = time.monotonic() - started
        assert scenario(exporter) == "busy-flat"
        assert len(busy) == 1
        alert = busy[0]
        assert alert["labels"]["endpoint"] == ENDPOINT
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) >= 0.85
        assert alert["annotations"]["runbook_url"].endswith("/docs/runbooks/TPWBusyButFlat.md")
        assert f"Endpoint {ENDPOINT} (simulated/llama-3.1-8b)" in alert["annotations"]["description"]
        assert not alerts_named(prometheus, "TPWEndpointDown")

        # healthy: the queue drains, so the alert resolves (it leaves /api/v1/alerts).
        wait_for(lambda: scenario(exporter) == "healthy", 30, "the demo to switch to healthy")
        switched = time.monotonic()
        wait_for(lambda: not alerts_named(prometheus, "TPWBusyButFlat"), 8, "TPWBusyButFlat to resolve")
        timings["busy-flat resolved after healthy"] = time.monotonic() - switched

        # endpoint-down: the engine answers 503, the exporter reports up 0, the alert fires.
        wait_for(lambda: scenario(exporter) == "endpoint-down", 15, "the demo to switch to endpoint-down")
        switched = time.monotonic()
        down = wait_for(
            lambda: alerts_named(prometheus, "TPWEndpointDown", "firing"), 12, "TPWEndpointDown to fire"
        )
        timings["endpoint-down fired after switch"] = time.monotonic() - switched
        assert scenario(exporter) == "endpoint-down"
        assert [(a["labels"]["endpoint"], a["labels"]["severity"], a["labels"]["cause"]) for a in down] == [
            (ENDPOINT, "critical", "endpoint_unreadable")
        ]
        assert "http_status ×" in down[0]["annotations"]["description"]
        assert not alerts_named(prometheus, "TPWBusyButFlat")

        # healthy again: resolved, and nothing else is left firing.
        wait_for(lambda: scenario(exporter) == "healthy", 20, "the demo to switch back to healthy")
        switched = time.monotonic()
        wait_for(lambda: not alerts_named(prometheus, "TPWEndpointDown"), 8, "TPWEndpointDown to resolve")
        timings["endpoint-down resolved after healthy"] = time.monotonic() - switched
        firing = [a["labels"]["alertname"] for a in tpw_alerts(prometheus) if a["state"] == "firing"]
        assert firing == [], firing
    print("e2e timings (s):", {key: round(value, 1) for key, value in timings.items()})
