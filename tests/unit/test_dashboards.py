"""The Grafana dashboards: the checked-in JSON is what dashboards/build.py generates, and it is well formed.

Structure only; tests/integration/test_dashboard_queries.py runs every query against a real Prometheus,
tests/integration/test_dashboards_build_and_promtool.py runs build.py --check and promtool on them.
"""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from dashboard_tools import (
    BUILTINS,
    DASHBOARDS,
    DATASOURCE_REF,
    FILES,
    LABEL_VALUES,
    MODELS,
    VARIABLE_REFERENCE,
    builder,
    panels,
    queries,
    selectors,
)
from helpers import REPO

UNITLESS_PANEL_TYPES = {"row", "table", "state-timeline"}
KNOWN_PANEL_TYPES = {"row", "timeseries", "stat", "table", "state-timeline", "bargauge"}


def model_ids() -> list[str]:
    return [MODELS[name]["uid"] for name in FILES]


def test_the_four_dashboards_are_checked_in() -> None:
    assert sorted(builder().BOARDS) == FILES, "every dashboard JSON must come from dashboards/build.py"
    titles = {MODELS[name]["title"] for name in FILES}
    assert titles == {
        "TPW / Fleet efficiency",
        "TPW / Node and GPU detail",
        "TPW / Endpoint",
        "TPW / Investigation",
    }


def test_checked_in_json_is_what_the_builder_generates() -> None:
    build = builder()
    for name, (model, _) in build.build_all().items():
        text = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert text == build.render(model), f"{name} is stale: run `python dashboards/build.py`"


@pytest.mark.parametrize("name", FILES)
def test_dashboard_structure(name: str) -> None:
    model = MODELS[name]
    assert model["schemaVersion"] >= 39
    assert model["schemaVersion"] == builder().SCHEMA_VERSION
    assert re.fullmatch(r"tpw-[a-z-]+", model["uid"]) and len(model["uid"]) <= 40
    assert model["title"].startswith("TPW / ")
    assert "tpw" in model["tags"]
    assert model["time"]["to"] == "now" and model["time"]["from"].startswith("now-")
    assert model["graphTooltip"] == 1, "shared crosshair: the dashboards are read across panels"
    assert model["editable"] is True
    assert model["links"] and model["links"][0]["tags"] == ["tpw"]
    assert model["annotations"]["list"][0]["builtIn"] == 1
    for panel in panels(model):
        assert panel["type"] in KNOWN_PANEL_TYPES, panel["title"]
        assert panel["title"].strip()


def test_uids_and_titles_are_unique() -> None:
    uids = [model["uid"] for model in MODELS.values()]
    titles = [model["title"] for model in MODELS.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", FILES)
def test_panel_ids_are_unique(name: str) -> None:
    ids = [panel["id"] for panel in panels(MODELS[name])]
    assert all(isinstance(panel_id, int) and panel_id > 0 for panel_id in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"


@pytest.mark.parametrize("name", FILES)
def test_grid_positions_are_inside_the_grid_and_do_not_overlap(name: str) -> None:
    placed = []
    for panel in MODELS[name]["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the 24-column grid"
        if panel["type"] == "row":
            assert grid == {"h": 1, "w": 24, "x": 0, "y": grid["y"]}
            assert panel["collapsed"] is False and panel["panels"] == [], "keep rows open: one flat layout"
        placed.append((panel["title"], grid))
    for (title_a, a), (title_b, b) in itertools.combinations(placed, 2):
        overlap_x = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
        overlap_y = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
        assert not (overlap_x and overlap_y), f"{title_a!r} overlaps {title_b!r}: {a} {b}"


def test_the_overlap_check_would_catch_an_overlap() -> None:
    """Guard the guard: two panels on the same cell must be reported."""
    model = {
        "panels": [{"title": t, "type": "stat", "gridPos": {"h": 4, "w": 6, "x": 3, "y": 0}} for t in "ab"]
    }
    MODELS["__probe__"] = model
    try:
        with pytest.raises(AssertionError, match="overlaps"):
            test_grid_positions_are_inside_the_grid_and_do_not_overlap("__probe__")
    finally:
        del MODELS["__probe__"]


@pytest.mark.parametrize("name", FILES)
def test_every_query_goes_through_the_datasource_variable(name: str) -> None:
    model = MODELS[name]
    variables = model["templating"]["list"]
    datasource = [v for v in variables if v["type"] == "datasource"]
    assert len(datasource) == 1 and variables[0] is datasource[0], "the datasource variable comes first"
    assert datasource[0]["name"] == "datasource" and datasource[0]["query"] == "prometheus"
    for panel in panels(model):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, f"{panel['title']} {target['refId']}"
            assert target["expr"].strip()
    for annotation in model["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE_REF, annotation["name"]
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]
    assert "${datasource}" in (DASHBOARDS / name).read_text()
    assert not re.search(
        r'"uid":\s*"(?!\$\{datasource\}|-- Grafana --|tpw-)', (DASHBOARDS / name).read_text()
    ), "no hard-coded datasource uid"


@pytest.mark.parametrize("name", FILES)
def test_variables(name: str) -> None:
    model = MODELS[name]
    defined: list[str] = []
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            assert query == variable["definition"], variable["name"]
            match = LABEL_VALUES.match(query)
            assert match, f"{variable['name']}: {query!r} is not label_values(selector, label)"
            used = {m.group("braced") or m.group("plain") for m in VARIABLE_REFERENCE.finditer(query)}
            assert used <= set(defined), f"{variable['name']} uses variables defined after it: {used}"
            assert variable["includeAll"] is True and variable["refresh"] == 2
            assert variable["current"]["value"] == ["$__all"], "All is the default selection"
        defined.append(variable["name"])
    names = [v["name"] for v in model["templating"]["list"]]
    assert len(names) == len(set(names))
    assert {"datasource", "cluster", "node"} <= set(names)
    cluster = next(v for v in model["templating"]["list"] if v["name"] == "cluster")
    assert cluster["allValue"] == ".*", "All must also match series without a cluster label"


def test_fleet_variables_are_cluster_node_model() -> None:
    names = [v["name"] for v in MODELS["tpw-fleet-efficiency.json"]["templating"]["list"]]
    assert {"cluster", "node", "model"} <= set(names)


@pytest.mark.parametrize("name", FILES)
def test_every_variable_reference_is_defined(name: str) -> None:
    model = MODELS[name]
    defined = {v["name"] for v in model["templating"]["list"]} | set(BUILTINS)
    for query in queries(model):
        for match in VARIABLE_REFERENCE.finditer(query.expr):
            assert (match.group("braced") or match.group("plain")) in defined, f"{query.title}: {query.expr}"
    for panel in panels(model):
        for match in VARIABLE_REFERENCE.finditer(panel["title"]):
            assert (match.group("braced") or match.group("plain")) in defined, panel["title"]
        if "repeat" in panel:
            variable = next(v for v in model["templating"]["list"] if v["name"] == panel["repeat"])
            assert variable["multi"] and variable["includeAll"], f"{panel['title']} repeats a single value"


FILTERS = {
    # metric name prefix → the variable filters every selector of it must carry
    "tpw_gpu_": ['cluster=~"$cluster"', 'instance=~"$node"'],
    "tpw_endpoint_": ['cluster=~"$cluster"', 'instance=~"$node"'],
    "tpw_": ['cluster=~"$cluster"'],
    "instance:tpw_": ['cluster=~"$cluster"', 'instance=~"$node"'],
    "endpoint:tpw_": ['cluster=~"$cluster"', 'instance=~"$node"'],
    "model:tpw_": ['cluster=~"$cluster"', 'model=~"$model"'],
    "up": ['job=~"$job"', 'instance=~"$node"'],
    "ALERTS": ['alertname=~"TPW.*"'],
}


@pytest.mark.parametrize("name", FILES)
def test_every_selector_honours_the_dashboard_filters(name: str) -> None:
    """A panel that ignores the node or GPU picker shows the wrong data without any error."""
    model = MODELS[name]
    variables = {v["name"] for v in model["templating"]["list"]}
    for query in queries(model):
        if query.kind == "variable":
            continue
        found = list(selectors(query.expr))
        bare = set(re.findall(r"(?<![\w])(\w*:?tpw_[\w:]+)(?![\w:]*\s*\{)", query.expr))
        assert not bare, f"{query.title}: {bare} used without a label filter"
        assert found, f"{query.title}: no selector in {query.expr}"
        for metric, matchers in found:
            prefix = next((p for p in FILTERS if metric.startswith(p)), None)
            required = list(FILTERS[prefix]) if prefix else []
            if metric.startswith("tpw_gpu_") and "gpu" in variables:
                required.append('gpu=~"$gpu"')
            if metric.startswith("tpw_endpoint_") and "endpoint" in variables:
                required.append('endpoint=~"$endpoint"')
            for needed in required:
                assert needed in matchers, f"{query.title}: {metric}{{{matchers}}} lacks {needed}"


@pytest.mark.parametrize("name", FILES)
def test_panels_have_descriptions_and_units(name: str) -> None:
    for panel in panels(MODELS[name]):
        if panel["type"] == "row":
            continue
        assert len(panel.get("description", "")) >= 40, f"{panel['title']}: say how to read it"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if panel["type"] not in UNITLESS_PANEL_TYPES:
            assert unit, f"{panel['title']} has no unit"
        if any(word in panel["title"].lower() for word in ("power", "watts")) and panel["type"] != "table":
            assert unit == "watt", panel["title"]
        if "per joule" in panel["title"].lower() and panel["type"] != "table":
            assert unit == "suffix: tok/J", panel["title"]


def test_conditional_queries_are_explained_to_the_reader() -> None:
    for uid, conditional in builder().conditional_targets().items():
        model = next(m for m in MODELS.values() if m["uid"] == uid)
        by_id = {str(panel["id"]): panel for panel in panels(model)}
        annotations = {a["name"] for a in model["annotations"]["list"]}
        for (key, ref), reason in conditional.items():
            assert len(reason) > 10
            if key.startswith("annotation:"):
                assert key.removeprefix("annotation:") in annotations
                continue
            panel = by_id[key]
            assert ref in {target["refId"] for target in panel["targets"]}
            assert "Conditional: shows data " in panel["description"] and reason in panel["description"]


def test_node_dashboard_puts_utilization_beside_what_the_sms_do() -> None:
    """The panel that makes the point: NVML utilization beside SM activity, tensor pipes, DRAM bandwidth."""
    model = MODELS["tpw-node-gpu.json"]
    needed = {
        "tpw_gpu_utilization_ratio",
        "tpw_gpu_sm_active_ratio",
        "tpw_gpu_sm_occupancy_ratio",
        "tpw_gpu_tensor_active_ratio",
        "tpw_gpu_dram_bandwidth_utilization_ratio",
    }
    side_by_side = [
        panel
        for panel in panels(model)
        if needed <= {name for t in panel.get("targets", []) for name, _ in selectors(t["expr"])}
    ]
    assert {panel["type"] for panel in side_by_side} >= {"table", "timeseries"}
    first = min(side_by_side, key=lambda panel: (panel["gridPos"]["y"], panel["gridPos"]["x"]))
    assert first["gridPos"]["y"] <= 1, "it is the first thing on the dashboard"
    assert "99 %" in first["description"] and "tensor pipes 0 %" in first["description"]


def _exprs(model) -> str:
    return "\n".join(query.expr for query in queries(model))


def test_the_issue_asks_for_these_panels() -> None:
    fleet, node, endpoint, investigation = (
        MODELS[n]
        for n in (
            "tpw-fleet-efficiency.json",
            "tpw-node-gpu.json",
            "tpw-endpoint.json",
            "tpw-investigation.json",
        )
    )
    fleet_types = {(p["type"], p["title"]) for p in panels(fleet)}
    assert ("state-timeline", "Bound state of every GPU") in fleet_types
    assert "tpw_gpu_bound" in _exprs(fleet) and "ALERTS{" in _exprs(fleet)
    assert "model:tpw_tokens_per_joule:ratio{" in _exprs(fleet), "tokens per joule per model"
    assert "instance:tpw_tokens_per_joule:ratio{" in _exprs(fleet), "tokens per joule per node"
    # Tokens per joule over time comes from the aligned counters (issue 12): token and energy counters
    # read in the same tick, never the derive-window gauge resampled by Prometheus.
    for model in (endpoint, investigation):
        over_time = [
            target["expr"]
            for panel in panels(model)
            if panel["type"] == "timeseries" and "per joule" in panel["title"].lower()
            for target in panel["targets"]
        ]
        assert over_time and all("tpw_endpoint_tokens_per_joule" not in expr for expr in over_time)
        assert any("rate(tpw_endpoint_energy_joules_total{" in expr for expr in over_time), model["uid"]
    assert "endpoint:tpw_tokens_per_joule:ratio_rate1m{" in _exprs(fleet), "table on the recording rules"
    for metric in (
        "tpw_gpu_power_limit_watts",
        "tpw_gpu_sm_clock_hertz",
        "tpw_gpu_clock_event_active",
        "tpw_gpu_memory_used_bytes",
        "tpw_gpu_dram_peak_bandwidth_bytes_per_second",
    ):
        assert metric in _exprs(node), metric
    for metric in (
        "tpw_endpoint_requests_total",
        "tpw_endpoint_generation_tokens_total",
        "tpw_endpoint_requests_running",
        "tpw_endpoint_requests_waiting",
        "tpw_endpoint_time_to_first_token_seconds_sum",
        "tpw_endpoint_request_latency_seconds_sum",
        "tpw_endpoint_tokens_per_joule",
        "tpw_endpoint_joules_per_request",
        "tpw_endpoint_tokens_per_busy_gpu_second",
    ):
        assert metric in _exprs(endpoint), metric
    names = {a["name"] for a in investigation["annotations"]["list"]}
    assert {"TPW alerts", "Engine restarts / deploys", "Exporter upgrades"} <= names
    deploy = next(a for a in investigation["annotations"]["list"] if a["name"] == "Engine restarts / deploys")
    assert "tpw_endpoint_process_start_time_seconds" in deploy["expr"]
    first = investigation["panels"][0]
    assert first["gridPos"]["w"] == 24 and first["type"] == "timeseries"
    for metric in (
        "tpw_endpoint_requests_running",
        "tpw_endpoint_generation_tokens_total",
        "tpw_gpu_utilization_ratio",
        "tpw_endpoint_energy_joules_total",  # tokens per joule, from the aligned counters
    ):
        assert metric in "\n".join(t["expr"] for t in first["targets"]), metric


def test_recording_rules_the_dashboards_read_exist() -> None:
    """A renamed or dropped recording rule must not leave a dashboard panel silently empty."""
    recorded = {
        rule["record"]
        for path in sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group["rules"]
        if "record" in rule
    }
    used = {
        name
        for model in MODELS.values()
        for query in queries(model)
        for name, _ in selectors(query.expr)
        if ":" in name
    }
    assert used, "the fleet dashboard reads the recording rules"
    assert used <= recorded, f"not recorded by deploy/prometheus/rules/*.yml: {sorted(used - recorded)}"


def test_bound_timelines_code_every_state_the_exporter_exports_once() -> None:
    """The state timelines' value codes cover exactly `tpw_gpu_bound`'s states, each with its own code."""
    from dashboards.tpw import BOUND_CODES, BOUND_COLORS, bound_state_expr
    from exporter.model import BOUND_STATES

    assert set(BOUND_CODES) == set(BOUND_STATES)
    assert sorted(BOUND_CODES.values()) == list(range(1, len(BOUND_STATES) + 1))
    assert set(BOUND_STATES) <= set(BOUND_COLORS)
    expr = bound_state_expr('instance="n1"')
    for state, code in BOUND_CODES.items():
        assert f'bound="{state}"}} * {code}' in expr
