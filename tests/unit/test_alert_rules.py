"""deploy/prometheus/rules/alerts.yml: valid, promtool-tested (each alert fires, each near miss does not),
documented (every alert has a runbook that matches it), and only about metrics the exporter serves.

What runs promtool is tests/integration/test_alert_rules_promtool.py."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest
import yaml
from alert_rules_common import ALERT_TESTS, ALERTS, METRIC, RECORDING, RUNBOOKS, exported_names
from helpers import REPO
from rules.fast_rules import format_duration, parse_duration, scale_expression

from exporter.demo.scenarios import SCENARIO_SPECS

RUNBOOK_BASE = "https://github.com/tpw-exporter/tpw-exporter/blob/main/"
DASHBOARDS = REPO / "dashboards"
EXPECTED_ALERTS = {
    "TPWBusyButFlat",
    "TPWUnderUtilized",
    "TPWMemoryBandwidthBound",
    "TPWEfficiencyRegression",
    "TPWBatchSizeDrop",
    "TPWGpuMemoryLeak",
    "TPWGpuThrottling",
    "TPWGpuXidError",
    "TPWGpuMemoryErrors",
    "TPWGpuInterconnectDegraded",
    "TPWExporterDown",
    "TPWGpuDown",
    "TPWEndpointDown",
    "TPWProfilingMissing",
    "TPWMetricsStale",
}
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = (
    "## What it means",
    "## Condition and why these numbers",
    "## Open first",
    "## PromQL",
    "## Likely causes",
    "## What to do",
)


def groups() -> list[dict[str, Any]]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in groups() for rule in group["rules"]]


# -- promtool ---------------------------------------------------------------------------------------------


def test_rule_tests_load_the_shipped_alerts() -> None:
    for path in ALERT_TESTS:
        rule_files = yaml.safe_load(path.read_text())["rule_files"]
        assert [(path.parent / name).resolve() for name in rule_files] == [ALERTS.resolve()]


def test_the_deployed_prometheus_loads_the_alerts() -> None:
    """deploy/prometheus/prometheus.yml (used by docker-compose.yml) loads alerts.yml beside recording.yml."""
    config_path = REPO / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    loaded = {path for pattern in config["rule_files"] for path in config_path.parent.glob(pattern)}
    assert {ALERTS, RECORDING} <= loaded, config["rule_files"]


# -- what each alert says ---------------------------------------------------------------------------------


def test_the_expected_alerts_in_tpw_alerts_groups() -> None:
    assert all(group["name"].startswith("tpw-alerts-") for group in groups())
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS
    assert all("record" not in rule for rule in alert_rules())


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"TPW[A-Z][A-Za-z]+", name)
    assert rule["labels"]["severity"] in SEVERITIES
    assert parse_duration(rule["for"]) > 0
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and "{{ $labels.instance }}" in annotations["summary"]
    description = annotations["description"]
    assert "{{ $labels.instance }}" in description
    # It quotes values: the alert's own value or looked-up ones.
    assert "$value" in description or "| query" in description, description
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}docs/runbooks/{name}.md"
    assert (REPO / "docs" / "runbooks" / f"{name}.md").is_file()


def test_alerts_reference_only_exported_metrics() -> None:
    exported = exported_names()
    referenced = set()
    for rule in alert_rules():
        for text in (rule["expr"], *rule["annotations"].values()):
            referenced.update(METRIC.findall(text))
    assert referenced and referenced <= exported, referenced - exported


def test_every_demo_scenario_alert_exists() -> None:
    demonstrated = {spec.alert for spec in SCENARIO_SPECS.values() if spec.alert}
    assert demonstrated <= EXPECTED_ALERTS, demonstrated - EXPECTED_ALERTS
    assert len(demonstrated) >= 8


# -- the promtool unit tests cover every alert ------------------------------------------------------------

SUBJECT_LABELS = ("instance", "endpoint", "gpu")


def _series_labels(selector: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', selector))


def _subject(labels: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(labels.get(name, "")) for name in SUBJECT_LABELS)


def test_every_alert_has_a_firing_case_and_a_near_miss() -> None:
    """A case that fires with exact labels and annotations, and in the same test series that must not:
    another endpoint/GPU/node beside the firing one, plus an evaluation where nothing fires yet."""
    fires: dict[str, int] = defaultdict(int)
    near_misses: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in ALERT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            subjects = {_subject(_series_labels(series["series"])) for series in test["input_series"]}
            for check in test.get("alert_rule_test", []):
                name = check["alertname"]
                expected = check.get("exp_alerts") or []
                if not expected:
                    quiet[name] += 1
                    continue
                fires[name] += 1
                for alert in expected:
                    assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                firing = {_subject(alert["exp_labels"]) for alert in expected}
                near_misses[name] += len(subjects - firing)
    for name in EXPECTED_ALERTS:
        assert fires[name] >= 1, f"{name}: no test where it fires"
        assert near_misses[name] >= 1, f"{name}: no near-miss series beside the firing one"
        assert quiet[name] >= 1, f"{name}: no evaluation where it must not fire"


# -- runbooks ---------------------------------------------------------------------------------------------


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _dashboard_panels() -> dict[str, set[str]]:
    import json

    def walk(panels: list[dict[str, Any]]) -> set[str]:
        titles = set()
        for panel in panels:
            titles.add(panel.get("title", ""))
            titles |= walk(panel.get("panels", []))
        return titles

    boards = {}
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        boards[board["title"]] = walk(board.get("panels", []))
    return boards


PANEL_REFERENCE = re.compile(r"\*\*(TPW / [^*]+)\*\*\s*›\s*((?:\*\*[^*]+\*\*(?:,\s*|\s+and\s+)?)+)")


def panel_references(text: str) -> list[tuple[str, str]]:
    """(dashboard, panel) for every `**TPW / Dashboard** › **Panel**[, **Panel**| and **Panel**]`."""
    references = []
    for dashboard, panels in PANEL_REFERENCE.findall(text):
        for panel in re.findall(r"\*\*([^*]+)\*\*", panels):
            if panel.startswith("TPW / "):
                break  # the next reference's dashboard
            references.append((dashboard, _collapse(panel)))
    return references


def test_runbook_index_lists_every_alert() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for name in EXPECTED_ALERTS:
        assert f"[{name}]({name}.md)" in index, name
    assert {path.stem for path in RUNBOOKS.glob("TPW*.md")} == EXPECTED_ALERTS


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_runbook_explains_the_alert_it_is_linked_from(name: str) -> None:
    text = (RUNBOOKS / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    for section in RUNBOOK_SECTIONS:
        assert section in text, (name, section)
    rules = [rule for rule in alert_rules() if rule["alert"] == name]
    for rule in rules:
        # The condition it documents is the shipped one, with its `for:` and severity.
        assert _squeeze(rule["expr"]) in _squeeze(text), f"{name}: runbook does not show {rule['expr']}"
        minutes = parse_duration(rule["for"]) // 60_000
        assert f"{minutes} minutes" in text or f"{minutes} min" in text, (name, rule["for"])
        assert f"**Severity:** {rule['labels']['severity']}" in text


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_runbook_panels_exist_in_the_dashboards(name: str) -> None:
    boards = _dashboard_panels()
    references = panel_references((RUNBOOKS / f"{name}.md").read_text())
    assert references, f"{name}: no dashboard panel named"
    for dashboard, panel in references:
        assert dashboard in boards, (name, dashboard, sorted(boards))
        assert panel in boards[dashboard], (name, dashboard, panel)


# -- the time-scaled copy used by the end-to-end test -----------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "scaled"),
    [
        ("rate(x[10m] offset 1d)", "rate(x[10s] offset 24m)"),
        ("max_over_time(rate(x[5m])[1h:1m])", "max_over_time(rate(x[5s])[1m:1s])"),
        ("min_over_time(x[30m:])", "min_over_time(x[30s:])"),
        ('x{a="[10m]", b=~"offset 1d"}[1h30m]', 'x{a="[10m]", b=~"offset 1d"}[1m30s]'),
        ("avg_over_time(x[7d] offset 1h)", "avg_over_time(x[2h48m] offset 1m)"),
        ("predict_linear(x[1h], 4 * 3600) > 120", "predict_linear(x[1m], 4 * 3600) > 120"),
    ],
)
def test_scale_expression_divides_durations_only(expr: str, scaled: str) -> None:
    assert scale_expression(expr, 60) == scaled


def test_durations_round_trip() -> None:
    for text in ("10m", "1h30m", "7d", "500ms", "2h48m", "1d12h"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(parse_duration("1w")) == "7d"
    with pytest.raises(ValueError):
        parse_duration("10 minutes")
