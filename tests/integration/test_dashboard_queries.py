"""Every query of every dashboard, run against a real Prometheus that scrapes the demo exporter.

The stack: `tpw-exporter demo` (2 simulated GPUs and its simulated serving endpoint, 0.5 s ticks, a 5 s
derive window) scraped every second by a real Prometheus that loads the shipped rule files
(deploy/prometheus/rules/*.yml, evaluated every second). Variables are resolved the way Grafana resolves
them, in order, through the label-values API: a variable with values gets its first one (regex-escaped, as
Grafana's Prometheus datasource does), one without values gets its "All" value. Grafana's interval
variables become 5 s ($__rate_interval), 1 s ($__interval) and 1 m ($__range).

Each panel, annotation and variable is one test. It fails when Prometheus rejects a query, and when a query
returns nothing, unless dashboards/build.py marks it conditional (e.g. "only while a TPW* alert fires"):
those must still be accepted by Prometheus. The demo runs with a site electricity price and carbon
intensity, so the cost and CO2 panels, conditional for users, must return data here. A failure names the
metrics the query reads that Prometheus does not have at all, which is what a panel built on a metric
nobody serves looks like.

The demo also runs in dcgm-exporter compat mode (`--compat dcgm`), and NVIDIA's own dashboard for
dcgm-exporter (tests/fixtures/dcgm_exporter/dcgm-exporter-dashboard.json, vendored unmodified) runs against
the same Prometheus: its variables resolve, and every panel returns data in the unit the panel declares, in
the range two simulated H100s give.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_tools import (
    LABEL_VALUES,
    Query,
    builder,
    checked_in,
    queries,
    regex_escape,
    slug,
    substitute,
    tpw_names,
)
from helpers import REPO, PrometheusProcess, running_exporter, running_prometheus, wait_for

RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
SCRAPES_BEFORE_QUERYING = 8  # 1 s scrapes: enough for rate() over $__rate_interval = 5 s
RANGE_SECONDS = 15
# Variables that may have no values on a healthy node: All then stands for every series.
MAY_BE_EMPTY = {"cluster": "the demo's targets carry no cluster label"}

MODELS = checked_in()
CONDITIONAL = builder().conditional_targets()
# The demo runs with a site price and carbon intensity, so the queries that need them must return data; its
# engine is vLLM-like (time-per-output-token and queue-time histograms) and its endpoint has an SLO.
SITE = {"TPW_SITE__ELECTRICITY_PRICE_PER_KWH": "0.12", "TPW_SITE__CARBON_INTENSITY_GRAMS_PER_KWH": "380"}
ESTABLISHED = {
    builder().WHEN_PRICE,
    builder().WHEN_CARBON,
    builder().WHEN_SLO,
    builder().WHEN_TPOT,
    builder().WHEN_QUEUE,
}


def _cases() -> list[Any]:
    cases = []
    for model in MODELS.values():
        grouped: dict[tuple[str, str], list[Query]] = {}
        for query in queries(model):
            grouped.setdefault((query.kind, query.key), []).append(query)
        for (kind, key), group in grouped.items():
            label = f"{model['uid']}/{kind}-{key}-{slug(group[0].title)}" if kind == "panel" else None
            label = label or f"{model['uid']}/{kind}-{slug(key)}"
            cases.append(pytest.param(model["uid"], kind, key, id=label))
    return cases


def _local_rules(directory: Path) -> list[Path]:
    """The shipped rule files, with every group evaluated each second (the test cannot wait for 30 s)."""
    copies = []
    for path in RULES:
        data = yaml.safe_load(path.read_text()) or {}
        for group in data.get("groups", []):
            group["interval"] = "1s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        copies.append(copy)
    return copies


class Stack:
    def __init__(self, prometheus: PrometheusProcess) -> None:
        self.prometheus = prometheus
        self.now = time.time()
        self.names = set(prometheus.api("label/__name__/values"))
        self.values: dict[str, dict[str, str]] = {}  # uid -> variable -> substituted value
        self.variable_values: dict[tuple[str, str], list[str]] = {}

    def resolve_variables(self, model: dict[str, Any]) -> dict[str, str]:
        uid = model["uid"]
        if uid in self.values:
            return self.values[uid]
        values: dict[str, str] = {}
        for variable in model["templating"]["list"]:
            name = variable["name"]
            if variable["type"] == "datasource":
                values[name] = "prometheus"
                continue
            match = LABEL_VALUES.match(substitute(variable["query"]["query"], values))
            assert match, variable["query"]["query"]
            found = self.label_values(match.group("label"), match.group("selector"))
            self.variable_values[(uid, name)] = found
            if found:
                values[name] = regex_escape(found[0])
            elif variable.get("allValue") is not None:
                values[name] = variable["allValue"]
            else:
                values[name] = "(" + "|".join(regex_escape(value) for value in found) + ")"
        self.values[uid] = values
        return values

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params = {"start": str(self.now - 300), "end": str(self.now)}
        if selector:
            params["match[]"] = selector
        return sorted(self.prometheus.api(f"label/{urllib.parse.quote(label)}/values", **params))

    def run(self, query: Query, values: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        expr = substitute(query.expr, values)
        if query.instant:
            return expr, self.prometheus.api("query", query=expr, time=str(self.now))["result"]
        result = self.prometheus.api(
            "query_range",
            query=expr,
            start=str(self.now - RANGE_SECONDS),
            end=str(self.now),
            step="1",
        )["result"]
        return expr, [series for series in result if series.get("values")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rules = _local_rules(tmp_path_factory.mktemp("rules"))
    args = ["demo", "--gpus", "2", "--interval", "0.5", "--compat", "dcgm"]
    with (
        running_exporter(args, env={"TPW_DERIVE__WINDOW": "5", **SITE}) as exporter,
        running_prometheus([f"127.0.0.1:{exporter.port}"], rule_files=rules) as prometheus,
    ):
        wait_for(
            lambda: prometheus.query(f"count_over_time(tpw_build_info[1m]) >= {SCRAPES_BEFORE_QUERYING}"),
            30,
            f"{SCRAPES_BEFORE_QUERYING} scrapes of the demo exporter",
            interval=0.25,
        )
        if rules:
            wait_for(lambda: _rules_evaluated(prometheus), 10, "every rule group evaluated", interval=0.25)
        yield Stack(prometheus)


def _rules_evaluated(prometheus: PrometheusProcess) -> bool:
    groups = prometheus.api("rules")["groups"]
    return bool(groups) and all(not group["lastEvaluation"].startswith("0001") for group in groups)


@pytest.mark.parametrize(("uid", "kind", "key"), _cases())
def test_dashboard_query_runs_and_returns_data(stack: Stack, uid: str, kind: str, key: str) -> None:
    model = next(m for m in MODELS.values() if m["uid"] == uid)
    values = stack.resolve_variables(model)
    if kind == "variable":
        found = stack.variable_values[(uid, key)]
        assert found or key in MAY_BE_EMPTY, (
            f"variable {key!r} has no values: {_missing(stack, _variable_query(model, key))}"
        )
        return
    conditional = CONDITIONAL[uid]
    problems = []
    for query in (q for q in queries(model) if (q.kind, q.key) == (kind, key)):
        expr, result = stack.run(query, values)
        reason = conditional.get((f"annotation:{key}" if kind == "annotation" else key, query.ref))
        if not result and (not reason or reason in ESTABLISHED):
            problems.append(f"{query.ref}: no data from {expr}\n    {_missing(stack, query.expr)}")
    assert not problems, f"{uid} {kind} {key} ({query.title}):\n  " + "\n  ".join(problems)


def test_latency_percentiles_are_numbers_on_the_demo(stack: Stack) -> None:
    """Every histogram_quantile of the dashboards gives finite latencies on the demo (a histogram with only
    its +Inf bucket, or with buckets out of order, gives NaN, which counts as data above), in the range its
    scenario's latencies span: 1 ms to 2 minutes."""
    checked = []
    for model in MODELS.values():
        values = stack.resolve_variables(model)
        for query in queries(model):
            if "histogram_quantile(" not in query.expr:
                continue
            expr, result = stack.run(query, values)
            numbers = [float(v) for series in result for _, v in series["values"] if v != "NaN"]
            assert numbers, f"{model['uid']} {query.title} {query.ref}: no number from {expr}"
            assert all(0.001 <= number <= 120 for number in numbers), (query.title, sorted(numbers)[:5])
            checked.append(query.title)
    assert len(set(checked)) >= 5  # the Endpoint dashboard's four latencies and the Investigation p90s


def _variable_query(model: dict[str, Any], name: str) -> str:
    return next(v["query"]["query"] for v in model["templating"]["list"] if v["name"] == name)


def _missing(stack: Stack, expr: str) -> str:
    missing = sorted(name for name in tpw_names(expr) if name not in stack.names)
    if missing:
        return "metrics Prometheus does not have at all (neither served nor recorded): " + ", ".join(missing)
    return "every metric it reads exists: the filters or the expression select nothing"


# NVIDIA's dashboard for dcgm-exporter (tests/fixtures/dcgm_exporter/README.md says where it comes from).
NVIDIA_DASHBOARD = json.loads(
    (REPO / "tests/fixtures/dcgm_exporter/dcgm-exporter-dashboard.json").read_text()
)
# Panel title → the unit the panel declares, and the range its values must fall in on the demo's two
# simulated H100s (idle ones included) in that unit.
NVIDIA_PANELS: dict[str, tuple[str, float, float]] = {
    "GPU Temperature": ("celsius", 20, 100),
    "GPU Avg. Temp": ("celsius", 20, 100),
    "GPU Power Usage": ("watt", 30, 750),  # one H100: idle ~70 W, a 700 W limit
    "GPU Power Total": ("watt", 60, 1500),
    "GPU SM Clocks": ("hertz", 1e8, 2.1e9),  # the query multiplies MHz by 1e6
    "GPU Utilization": ("percent", 0, 100),
    "GPU Framebuffer Mem Used": ("decmbytes", 1, 80 * 1024),  # MiB of an 80 GiB H100
    "Tensor Core Utilization": ("percentunit", 0, 1),
}


def _nvidia_unit(panel: dict[str, Any]) -> str | None:
    """The unit a Grafana 6 panel declares: the left y axis of a graph, the field unit of a gauge."""
    if panel.get("yaxes"):
        return panel["yaxes"][0].get("format")
    return panel.get("options", {}).get("fieldOptions", {}).get("defaults", {}).get("unit")


def _nvidia_variables(stack: Stack) -> dict[str, str]:
    """Its variables as Grafana first shows them: All (includeAll, no allValue: every value, as a regex)."""
    values = {"datasource": "prometheus"}
    for variable in NVIDIA_DASHBOARD["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(substitute(variable["query"], values))
        assert match, variable["query"]
        found = stack.label_values(match.group("label"), match.group("selector"))
        assert found, f"variable {variable['name']!r} has no values: {variable['query']}"
        values[variable["name"]] = "(" + "|".join(regex_escape(value) for value in found) + ")"
    return values


def test_nvidia_dashboard_covers_the_panels_checked() -> None:
    titles = [panel["title"] for panel in NVIDIA_DASHBOARD["panels"]]
    assert sorted(titles) == sorted(NVIDIA_PANELS)


def test_nvidia_dashboard_variables_resolve(stack: Stack) -> None:
    values = _nvidia_variables(stack)
    assert values["gpu"] == "(0|1)"
    assert values["instance"].startswith("(127") and values["instance"].count("|") == 0  # the demo, once


@pytest.mark.parametrize("title", sorted(NVIDIA_PANELS))
def test_nvidia_dashboard_panel_returns_data_in_its_unit(stack: Stack, title: str) -> None:
    panel = next(panel for panel in NVIDIA_DASHBOARD["panels"] if panel["title"] == title)
    unit, low, high = NVIDIA_PANELS[title]
    assert _nvidia_unit(panel) == unit, f"{title}: the dashboard's unit changed"
    values = _nvidia_variables(stack)
    for target in panel["targets"]:
        query = Query(
            "nvidia",
            "panel",
            str(panel["id"]),
            target["refId"],
            title,
            target["expr"],
            bool(target.get("instant")),
        )
        expr, result = stack.run(query, values)
        assert result, f"{title}: no data from {expr}"
        numbers = [
            float(result_value)
            for series in result
            for _, result_value in series.get("values", [series.get("value")])
        ]
        assert numbers and all(low <= number <= high for number in numbers), (
            f"{title} ({unit}): {expr} gave {sorted(set(numbers))[:10]}"
        )
