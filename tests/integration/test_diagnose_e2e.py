"""`tpw-exporter diagnose` against a real Prometheus scraping the demo through scenario schedules.

Two demo exporters (0.5 s ticks, 2 s derive window, 1.5 s phases) each play a schedule of alert
scenarios with healthy stretches between them; one real Prometheus scrapes both every second and loads
the shipped alert rules (diagnose reads its thresholds from them, through /api/v1/rules). When both
schedules are done (~45 s), diagnose runs over each scenario's stretch of time (plus 3 s before it) and
must name exactly that scenario's pattern, on the right node, starting within one scrape interval of when
the scenario's keyframes put it (the first scrape showing the new `tpw_simulation_info{scenario}` plus
the keyframe's phases), and nothing on the healthy stretches.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, ExporterProcess, PrometheusProcess, wait_for

from exporter.cli import main
from exporter.diagnose.thresholds import SPECS

PHASE = 1.5  # seconds
SCRAPE = 1.0
LEAD = 3.5  # seconds of the stretch before a scenario included in its window
ENDPOINT = "demo-vllm"
SCHEDULES = {
    "a": (
        ("healthy", 8),  # Prometheus sees the last ~4 s of it: the exporters start first
        ("busy-flat", 6),
        ("healthy", 3),
        ("input-bound", 5),
        ("launch-bound", 3),  # a lead-in with a small batch: healthy → bandwidth would also drop the batch
        ("bandwidth-saturated", 6),
        ("healthy", 3),
        ("memory-leak", 8),
        ("healthy", 600),
    ),
    "b": (
        ("healthy", 8),
        ("efficiency-regression", 6),
        ("batch-drop", 11),
        ("throttling", 11),
        ("healthy", 3),
        ("endpoint-down", 5),
        ("healthy", 600),
    ),
}
# scenario → the patterns diagnose must name: (pattern, phases after the scenario starts, GPUs or None)
EXPECTED: dict[str, list[tuple[str, float, tuple[str, ...] | None]]] = {
    "busy-flat": [("busy-but-flat", 0, None)],
    "input-bound": [("input-bound", 0, None)],
    "bandwidth-saturated": [("bandwidth-bound", 1, None)],  # at its peak once the one-phase ramp is done
    "memory-leak": [("memory-leak", 0, ("0", "1"))],
    "efficiency-regression": [("efficiency-regression", 1, None)],  # healthy for one phase first
    "batch-drop": [("batch-size-drop", 5, None)],  # healthy for five phases first
    "throttling": [("throttling", 0, ("0",)), ("throttling", 5, ("1",))],  # thermal on 0; power cap on 1
    "endpoint-down": [("endpoint-down", 0, None)],
}


@dataclass
class Stretch:
    scenario: str
    first: float  # the first scrape showing it
    last: float


@dataclass
class Recording:
    prometheus: str
    instances: dict[str, str]  # schedule → instance label
    stretches: dict[str, list[Stretch]]
    seconds: float


def stretches(prometheus: PrometheusProcess, instance: str) -> list[Stretch]:
    samples = []
    for item in prometheus.query(f'tpw_simulation_info{{instance="{instance}"}}[10m]'):
        samples += [(float(ts), item["metric"]["scenario"]) for ts, _ in item["values"]]
    out: list[Stretch] = []
    for ts, scenario in sorted(samples):
        if not out or out[-1].scenario != scenario:
            out.append(Stretch(scenario, ts, ts))
        out[-1].last = ts
    return out


@pytest.fixture(scope="module")
def recording() -> Iterator[Recording]:
    started = time.monotonic()
    exporters = {
        name: ExporterProcess(
            [
                "demo",
                "--interval",
                "0.5",
                "--phase-seconds",
                str(PHASE),
                "--scenario-schedule",
                ",".join(f"{scenario}:{seconds}" for scenario, seconds in schedule),
                "--log-level",
                "warning",
            ],
            env={"TPW_DERIVE__WINDOW": "2"},
        )
        for name, schedule in SCHEDULES.items()
    }
    prometheus = None
    try:
        # Prometheus first, so that it sees each schedule from its start; rules evaluated rarely (only read)
        prometheus = PrometheusProcess(
            [f"127.0.0.1:{e.port}" for e in exporters.values()],
            rule_files=[REPO / "deploy" / "prometheus" / "rules" / "alerts.yml"],
            scrape_interval=f"{SCRAPE:g}s",
            evaluation_interval="60s",
        )
        for exporter in exporters.values():
            exporter.wait_ready()
        instances = {name: f"127.0.0.1:{e.port}" for name, e in exporters.items()}

        def done(prometheus: PrometheusProcess = prometheus) -> bool:
            """Each schedule past its last scenario, three scrapes into the healthy stretch after it."""
            for name, schedule in SCHEDULES.items():
                seen = stretches(prometheus, instances[name])
                if [s.scenario for s in seen[-2:]] != [schedule[-2][0], "healthy"]:
                    return False
                if seen[-1].last - seen[-1].first < 3 * SCRAPE:
                    return False
            return True

        wait_for(done, 90, "both schedules to reach their last healthy stretch", interval=1.0)
        recorded = {name: stretches(prometheus, instance) for name, instance in instances.items()}
        yield Recording(prometheus.url, instances, recorded, time.monotonic() - started)
    finally:
        for exporter in exporters.values():
            exporter.stop()
        if prometheus is not None:
            prometheus.stop()


def diagnose_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["diagnose", "--format", "json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def windows(rec: Recording) -> dict[str, tuple[str, float, float, float]]:
    """scenario → (schedule, its first scrape, window start, window end)."""
    out = {}
    for name, stretch_list in rec.stretches.items():
        for k, stretch in enumerate(stretch_list):
            if stretch.scenario in EXPECTED:
                end = stretch_list[k + 1].first - 0.5 if k + 1 < len(stretch_list) else stretch.last + 0.5
                out[stretch.scenario] = (name, stretch.first, stretch.first - LEAD, end)
    return out


def test_the_schedules_played_as_given(recording: Recording) -> None:
    for name, schedule in SCHEDULES.items():
        seen = [s.scenario for s in recording.stretches[name]]
        assert seen == [scenario for scenario, _ in schedule], seen
    assert set(windows(recording)) == set(EXPECTED)
    print(f"diagnose e2e: schedules recorded in {recording.seconds:.1f} s")


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_diagnose_names_each_scenario_and_when_it_started(
    recording: Recording, capsys: pytest.CaptureFixture[str], scenario: str
) -> None:
    schedule, first, start, end = windows(recording)[scenario]
    instance = recording.instances[schedule]
    report = diagnose_json(
        capsys,
        "--prometheus",
        recording.prometheus,
        "--start",
        str(start),
        "--end",
        str(end),
        "--node",
        instance,
    )
    findings = report["findings"]
    assert sorted(f["pattern"] for f in findings) == sorted(p for p, _, _ in EXPECTED[scenario]), (
        scenario,
        [(f["pattern"], f["start"] - first, f["summary"]) for f in findings],
    )
    for pattern, phases, gpus in EXPECTED[scenario]:
        expected = first + phases * PHASE
        matching = [
            f for f in findings if f["pattern"] == pattern and (gpus is None or tuple(f["gpus"]) == gpus)
        ]
        assert len(matching) == 1, (pattern, gpus, findings)
        finding = matching[0]
        assert abs(finding["start"] - expected) <= SCRAPE + 0.01, (pattern, finding["start"] - expected)
        assert finding["instance"] == instance
        assert finding["endpoint"] == ENDPOINT or pattern in ("throttling", "memory-leak")
        assert finding["ongoing"] or finding["end"] > finding["start"]
        assert finding["summary"] and finding["next_check"]
        assert finding["runbook"].endswith(f"/docs/runbooks/{finding['alert']}.md")
    # the thresholds are the alert rules Prometheus has loaded, every one of them found there
    assert report["thresholds"]["from_rules"] == sorted(spec.key for spec in SPECS)
    assert (
        report["window"]["step_seconds"] == SCRAPE and report["window"]["scrape_interval_seconds"] == SCRAPE
    )


def test_nothing_on_healthy(recording: Recording, capsys: pytest.CaptureFixture[str]) -> None:
    for name, stretch_list in recording.stretches.items():
        first = stretch_list[0]  # the opening healthy stretch
        assert first.scenario == "healthy"
        middle = [s for s in stretch_list[1:] if s.scenario == "healthy"]
        for stretch, lead in [(first, 0.0), *[(s, SCRAPE) for s in middle]]:
            report = diagnose_json(
                capsys,
                "--prometheus",
                recording.prometheus,
                "--start",
                str(stretch.first + lead),
                "--end",
                str(stretch.last + 0.5),
                "--node",
                recording.instances[name],
            )
            assert report["findings"] == [], (name, stretch, report["findings"])
            if stretch is stretch_list[-1]:  # 18,000 tokens/s at 1,120 W
                assert report["overview"]["endpoints"][0]["tokens_per_joule"] == pytest.approx(16.1, abs=0.3)


def test_node_scope_and_text_report_and_plot(recording: Recording, tmp_path: Path) -> None:
    """Both nodes over one window: schedule a's busy-flat runs while b's efficiency regresses. The command
    as users run it (a process): text report with both, most likely cause first; --node keeps one; the
    plot marks them."""
    _, _, start, end = windows(recording)["busy-flat"]
    plot = tmp_path / "incident.html"
    common = [sys.executable, "-m", "exporter", "diagnose", "--prometheus", recording.prometheus]
    window = ["--start", str(start), "--end", str(end)]
    both = subprocess.run([*common, *window, "--plot", str(plot)], capture_output=True, text=True, timeout=60)
    assert both.returncode == 0, both.stderr
    text = both.stdout
    assert "2 findings, most likely cause first:" in text, text
    assert text.index("Efficiency regression") < text.index("Busy but flat")  # a cause above a symptom
    assert f"demo-vllm on {recording.instances['a']}, GPUs 0, 1" in text
    assert (
        "runbook  https://github.com/tpw-exporter/tpw-exporter/blob/main/docs/runbooks/TPWBusyButFlat.md"
        in text
    )
    assert both.stderr == f"tpw-exporter: diagnose: plot written to {plot}\n"
    html = plot.read_text()
    root = ET.fromstring(html[html.index("<svg") : html.index("</svg>") + 6])
    bands = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "finding"]
    assert {b.get("data-rank") for b in bands} == {"1", "2"}
    one = subprocess.run(
        [*common, *window, "--node", recording.instances["a"]], capture_output=True, text=True, timeout=60
    )
    assert one.returncode == 0 and "1 finding, most likely cause first:" in one.stdout
    assert "Busy but flat" in one.stdout and "Efficiency regression" not in one.stdout


def test_no_tpw_series_before_the_exporters_started(
    recording: Recording, capsys: pytest.CaptureFixture[str]
) -> None:
    first = min(s[0].first for s in recording.stretches.values())
    code = main(
        [
            "diagnose",
            "--prometheus",
            recording.prometheus,
            "--start",
            str(first - 3600),
            "--end",
            str(first - 1800),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(
        f"tpw-exporter: diagnose: no tpw_ series in Prometheus at {recording.prometheus} between"
    )
