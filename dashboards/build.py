"""The Grafana dashboards of tpw-exporter, generated from this one file.

    python dashboards/build.py            regenerate dashboards/*.json (what Grafana provisions)
    python dashboards/build.py --check    exit 1, naming the files, if a checked-in JSON is not what this
                                          file generates (CI runs this through tests/test_dashboards.py)

The JSON beside this file is the artefact Grafana loads (classic dashboard model, schema version 42); this
file is its only source: edit here, regenerate, commit both.

Every query goes through the `${datasource}` variable. Filters: `cluster` (a label you add to your
targets or through your long-term store; absent labels match the `.*` of "All"), `node` (the `instance`
label), `gpu`, `endpoint` and `model` where they apply.

Some queries are *conditional*: they return data only in a particular situation (an alert fires, an
engine restarts, a price is configured). They are marked with `conditional="why"`; the reason is appended
to the panel description for the reader and listed by `conditional_targets()` for the test that runs every
query against a real Prometheus (tests/test_dashboard_queries.py), which requires every other query to
return data on the demo node.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 42  # the last classic (v1) dashboard schema, as Grafana 12.3 writes it
HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["tpw", "gpu", "efficiency"]

# Label filters, the same in every dashboard.
NODE = 'cluster=~"$cluster", instance=~"$node"'
GPU = NODE + ', gpu=~"$gpu"'
ENDPOINT = NODE + ', endpoint=~"$endpoint"'
ENDPOINT_MODEL = ENDPOINT + ', model=~"$model"'
FLEET_MODEL = NODE + ', model=~"$model"'

BOUND_STATES = ("idle", "compute", "memory", "latency", "mixed")
BOUND_COLORS = {
    "unknown": "#8e8e8e",
    "idle": "#c8c8c8",
    "compute": "#73bf69",
    "memory": "#5794f2",
    "latency": "#ff9830",
    "mixed": "#b877d9",
}
ALERTS = 'ALERTS{alertname=~"TPW.*", alertstate="firing", ' + NODE + "}"
WHEN_ALERT = "only while a TPW* alert fires"
WHEN_PRICE = "only when a site electricity price is configured (site.electricity_price_per_kwh)"
WHEN_CARBON = "only when a grid carbon intensity is configured (site.carbon_intensity_grams_per_kwh)"

TOKENS_PER_SECOND = "suffix: tok/s"
TOKENS_PER_JOULE = "suffix: tok/J"


@dataclass(frozen=True)
class Q:
    """One query of a panel: PromQL, its legend, and whether it may legitimately return nothing."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    conditional: str | None = None


# --------------------------------------------------------------------------------------------- helpers


def _targets(queries: Sequence[Q]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    targets, conditional = [], {}
    for index, query in enumerate(queries):
        ref = chr(ord("A") + index)
        target: dict[str, Any] = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "range": not query.instant,
            "instant": query.instant,
            "refId": ref,
        }
        if query.table:
            target["format"] = "table"
        targets.append(target)
        if query.conditional:
            conditional[ref] = query.conditional
    return targets, conditional


def _describe(description: str, conditional: dict[str, str]) -> str:
    reasons = list(dict.fromkeys(conditional.values()))
    if reasons:
        description += "\n\nConditional: shows data " + "; ".join(reasons) + "."
    return description


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _panel(kind: str, title: str, description: str, queries: Sequence[Q], **extra: Any) -> dict[str, Any]:
    targets, conditional = _targets(queries)
    panel = {
        "type": kind,
        "title": title,
        "description": _describe(description, conditional),
        "datasource": DATASOURCE,
        "targets": targets,
        **extra,
        "_conditional": conditional,
    }
    return panel


def override(matcher: str, name: str, **properties: Any) -> dict[str, Any]:
    """A field override: matcher `byName`, `byRegexp` or `byFrameRefID`; properties by Grafana id."""
    return {
        "matcher": {"id": matcher, "options": name},
        "properties": [{"id": key.replace("__", "."), "value": value} for key, value in properties.items()],
    }


def dashed(regex: str) -> dict[str, Any]:
    return override(
        "byRegexp", regex, custom__lineStyle={"fill": "dash", "dash": [10, 10]}, custom__fillOpacity=0
    )


def right_axis(regex: str, unit: str) -> dict[str, Any]:
    return override("byRegexp", regex, custom__axisPlacement="right", unit=unit)


def fixed_color(regex: str, color: str) -> dict[str, Any]:
    return override("byRegexp", regex, color={"mode": "fixed", "fixedColor": color})


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    *,
    min_value: float | None = 0,
    max_value: float | None = None,
    stack: bool = False,
    fill: int = 10,
    overrides: Sequence[dict[str, Any]] = (),
    calcs: Sequence[str] = ("mean", "max", "lastNotNull"),
    repeat: str | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": fill,
            "gradientMode": "none",
            "showPoints": "never",
            "spanNulls": False,
            "axisPlacement": "auto",
            "axisBorderShow": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "off"},
        },
        "thresholds": _thresholds((None, "green")),
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    extra: dict[str, Any] = {}
    if repeat:
        extra = {"repeat": repeat, "repeatDirection": "h", "maxPerRow": 4}
    return _panel(
        "timeseries",
        title,
        description,
        queries,
        fieldConfig={"defaults": defaults, "overrides": list(overrides)},
        options={
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": list(calcs),
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )


def stat(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    *,
    thresholds: dict[str, Any] | None = None,
    mappings: Sequence[dict[str, Any]] = (),
    graph: bool = True,
    decimals: int | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "blue")),
        "mappings": list(mappings),
    }
    for key, value in (("decimals", decimals), ("min", min_value), ("max", max_value)):
        if value is not None:
            defaults[key] = value
    return _panel(
        "stat",
        title,
        description,
        queries,
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
    )


def value_mappings(states: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """{value: (text, color)} → one Grafana value mapping."""
    return [
        {
            "type": "value",
            "options": {
                value: {"text": text, "color": color, "index": index}
                for index, (value, (text, color)) in enumerate(states.items())
            },
        }
    ]


def state_timeline(
    title: str, description: str, queries: Sequence[Q], mappings: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return _panel(
        "state-timeline",
        title,
        description,
        queries,
        fieldConfig={
            "defaults": {
                "unit": "none",
                "color": {"mode": "thresholds"},
                "thresholds": _thresholds((None, "#8e8e8e")),
                "mappings": list(mappings),
                "custom": {
                    "fillOpacity": 80,
                    "lineWidth": 0,
                    "hideFrom": {"legend": False, "tooltip": False},
                },
            },
            "overrides": [],
        },
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.85,
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def bargauge(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    *,
    min_value: float = 0,
    max_value: float | None = None,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": min_value,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "blue")),
    }
    if max_value is not None:
        defaults["max"] = max_value
    return _panel(
        "bargauge",
        title,
        description,
        queries,
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "valueMode": "color",
            "namePlacement": "auto",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )


def table(
    title: str,
    description: str,
    queries: Sequence[Q],
    *,
    columns: dict[str, str],
    hidden: Iterable[str] = ("Time",),
    overrides: Sequence[dict[str, Any]] = (),
    unit: str = "none",
) -> dict[str, Any]:
    """Instant queries merged into one table; `columns` renames (and orders) the fields kept."""
    queries = [Q(q.expr, q.legend, instant=True, table=True, conditional=q.conditional) for q in queries]
    return _panel(
        "table",
        title,
        description,
        queries,
        fieldConfig={
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": _thresholds((None, "text")),
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
            },
            "overrides": list(overrides),
        },
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": dict.fromkeys(hidden, True),
                    "renameByName": columns,
                    "indexByName": {name: index for index, name in enumerate(columns)},
                },
            },
        ],
    )


def gauge_column(name: str, unit: str = "percentunit", max_value: float | None = 1) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "unit": unit,
        "custom__cellOptions": {"type": "gauge", "mode": "basic", "valueDisplayMode": "text"},
        "min": 0,
    }
    if max_value is not None:
        properties["max"] = max_value
    return override("byName", name, **properties)


def unit_column(name: str, unit: str, **extra: Any) -> dict[str, Any]:
    return override("byName", name, unit=unit, **extra)


def link_column(name: str, title: str, url: str) -> dict[str, Any]:
    return override("byName", name, links=[{"title": title, "url": url}])


# ----------------------------------------------------------------------------------- variables, board


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(
    name: str,
    label: str,
    query: str,
    *,
    all_value: str | None = ".*",
    multi: bool = True,
    description: str = "",
    sort: int = 1,
) -> dict[str, Any]:
    """A label_values() variable with "All" selected by default."""
    variable: dict[str, Any] = {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "multi": multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": sort,  # 1 alphabetical, 3 numerical
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


CLUSTER_VARIABLE = query_variable(
    "cluster",
    "Cluster",
    "label_values(tpw_build_info, cluster)",
    description="The `cluster` label, if your targets or your long-term store add one; All matches series "
    "without it too.",
)
JOB_VARIABLE = query_variable(
    "job",
    "Job",
    'label_values(tpw_build_info{cluster=~"$cluster"}, job)',
    all_value=None,
    description="Scrape jobs that serve tpw-exporter metrics (used by the `up` panels).",
)
NODE_VARIABLE = query_variable(
    "node",
    "Node",
    'label_values(tpw_build_info{cluster=~"$cluster"}, instance)',
    description="The `instance`.",
)
GPU_VARIABLE = query_variable(
    "gpu", "GPU", f"label_values(tpw_gpu_info{{{NODE}}}, gpu)", description="NVML device index.", sort=3
)
ENDPOINT_VARIABLE = query_variable(
    "endpoint",
    "Endpoint",
    f"label_values(tpw_endpoint_up{{{NODE}}}, endpoint)",
    description="Configured name.",
)
MODEL_VARIABLE = query_variable(
    "model",
    "Model",
    f"label_values(tpw_endpoint_requests_total{{{NODE}}}, model)",
    description="The model name the serving engine reports.",
)
ENDPOINT_MODEL_VARIABLE = query_variable(
    "model",
    "Model",
    f"label_values(tpw_endpoint_requests_total{{{ENDPOINT}}}, model)",
    description="The model name the serving engine reports.",
)


def alert_annotation() -> dict[str, Any]:
    return {
        "name": "TPW alerts",
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "expr": ALERTS,
        "step": "30s",
        "titleFormat": "{{alertname}}",
        "textFormat": "{{instance}} {{gpu}} {{endpoint}} ({{severity}})",
        "tagKeys": "alertname,severity",
        "useValueForTime": False,
        "_conditional": WHEN_ALERT,
    }


def engine_deploy_annotation() -> dict[str, Any]:
    return {
        "name": "Engine restarts / deploys",
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": "purple",
        "expr": f"changes(tpw_endpoint_process_start_time_seconds{{{ENDPOINT}}}[2m]) > 0",
        "step": "60s",
        "titleFormat": "{{endpoint}} restarted",
        "textFormat": "the serving engine's process start time changed (restart or deploy) on {{instance}}",
        "tagKeys": "endpoint",
        "useValueForTime": False,
        "_conditional": "only within two minutes after a serving engine restarted or was redeployed",
    }


def exporter_annotations() -> list[dict[str, Any]]:
    build = f"tpw_build_info{{{NODE}}}"
    return [
        {
            "name": "Exporter restarts",
            "datasource": DATASOURCE,
            "enable": True,
            "hide": False,
            "iconColor": "orange",
            "expr": f"resets(tpw_ticks_total{{{NODE}}}[2m]) > 0",
            "step": "60s",
            "titleFormat": "tpw-exporter restarted",
            "textFormat": "{{instance}}",
            "tagKeys": "instance",
            "useValueForTime": False,
            "_conditional": "only within two minutes after an exporter restarted",
        },
        {
            "name": "Exporter upgrades",
            "datasource": DATASOURCE,
            "enable": True,
            "hide": False,
            "iconColor": "blue",
            "expr": f"count by (cluster, instance, version) ({build}) "
            f"unless count by (cluster, instance, version) ({build} offset 10m) "
            f"and on (cluster, instance) count by (cluster, instance) ({build} offset 10m)",
            "step": "60s",
            "titleFormat": "tpw-exporter {{version}}",
            "textFormat": "{{instance}} now runs tpw-exporter {{version}}",
            "tagKeys": "version",
            "useValueForTime": False,
            "_conditional": "only within ten minutes after an exporter changed version",
        },
    ]


class Board:
    """A dashboard being laid out: panels flow left to right, rows start on a fresh line."""

    def __init__(
        self,
        uid: str,
        title: str,
        description: str,
        variables: Sequence[dict[str, Any]],
        annotations: Sequence[dict[str, Any]] = (),
        *,
        time_from: str = "now-1h",
        refresh: str = "30s",
    ) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = [datasource_variable(), *variables]
        self.annotations = list(annotations)
        self.time_from = time_from
        self.refresh = refresh
        self.panels: list[dict[str, Any]] = []
        self.conditional: dict[tuple[str, str], str] = {}  # (panel id or annotation name, refId) -> why
        self._x = self._y = self._line_height = 0

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = self._line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": len(self.panels) + 1,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        conditional = panel.pop("_conditional")
        panel = {"id": len(self.panels) + 1, "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y}, **panel}
        for ref, reason in conditional.items():
            self.conditional[(str(panel["id"]), ref)] = reason
        self.panels.append(panel)
        self._x += w
        self._line_height = max(self._line_height, h)

    def to_json(self) -> dict[str, Any]:
        annotations = []
        for annotation in self.annotations:
            annotation = dict(annotation)
            reason = annotation.pop("_conditional", None)
            if reason:
                self.conditional[(f"annotation:{annotation['name']}", "A")] = reason
            annotations.append(annotation)
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": TAGS,
            "editable": True,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "timezone": "browser",
            "weekStart": "",
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "links": [
                {
                    "title": "TPW dashboards",
                    "type": "dashboards",
                    "tags": ["tpw"],
                    "asDropdown": True,
                    "includeVars": True,
                    "keepTime": True,
                    "icon": "external link",
                    "targetBlank": False,
                    "tooltip": "",
                    "url": "",
                }
            ],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    },
                    *annotations,
                ]
            },
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def bound_state_expr(selector: str) -> str:
    """One series per GPU whose value codes the active `bound` state (0 = none of them / unknown)."""
    parts = [
        f'tpw_gpu_bound{{{selector}, bound="{state}"}} * {code}' for code, state in enumerate(BOUND_STATES, 1)
    ]
    return "sum by (cluster, instance, gpu) (" + " or ".join(parts) + ")"


BOUND_MAPPINGS = value_mappings(
    {"0": ("unknown", BOUND_COLORS["unknown"])}
    | {str(code): (state, BOUND_COLORS[state]) for code, state in enumerate(BOUND_STATES, 1)}
)
BOUND_DESCRIPTION = (
    "What limits each GPU, as the exporter classifies it from the GPM evidence over its derive window: "
    "compute (tensor/SM pipes busy), memory (DRAM bandwidth near its peak), latency (the engine is busy "
    "but the SMs are not: launch-bound or host-bound work, tiny batches), idle, or mixed. "
    "NVML utilization cannot tell these apart; see the Node / GPU dashboard for the evidence."
)


# ----------------------------------------------------------------------------------------- dashboards


def fleet() -> Board:
    board = Board(
        "tpw-fleet",
        "TPW / Fleet efficiency",
        "Tokens per joule per model and node, power, throughput, what every GPU is bound by, firing alerts. "
        "Built on the recording rules of deploy/prometheus/rules/recording.yml, so it shows what the alerts "
        "see.",
        [CLUSTER_VARIABLE, JOB_VARIABLE, NODE_VARIABLE, MODEL_VARIABLE],
        [alert_annotation(), *exporter_annotations()],
    )
    m, n = FLEET_MODEL, NODE
    by_model = 'cluster=~"$cluster", model=~"$model"'
    node_tokens = f"sum(instance:tpw_generation_tokens_per_second:sum{{{n}}})"
    node_power = f"sum(instance:tpw_gpu_power_watts:sum{{{n}}})"

    board.row("Now")
    board.add(
        stat(
            "Tokens per joule, all GPU energy",
            "Generated tokens per joule of *all* GPU energy of the selected nodes, idle GPUs included "
            "(instance recording rules: Σ tokens/s ÷ Σ energy-counter watts over the derive window). This is "
            "what the fleet really gets per joule; the per-model numbers below count only the GPUs serving "
            "each model. Not filtered by model. Higher is better.",
            [Q(f"{node_tokens} / ({node_power} > 0)")],
            TOKENS_PER_JOULE,
            decimals=1,
        ),
        5,
        4,
    )
    board.add(
        stat(
            "Generation throughput",
            "Tokens generated per second by every endpoint of the selected nodes, over the derive window.",
            [Q(node_tokens)],
            TOKENS_PER_SECOND,
        ),
        4,
        4,
    )
    board.add(
        stat(
            "GPU power",
            "Mean power of every GPU of the selected nodes over the derive window, from the energy "
            "counters: what the fleet draws, and the denominator of the tokens per joule beside it.",
            [Q(node_power)],
            "watt",
        ),
        4,
        4,
    )
    board.add(
        stat(
            "GPUs up",
            "GPUs read successfully on the last collection tick, out of the GPUs the exporters know. "
            "A GPU that fell off the bus or hangs counts as down (tpw_gpu_up 0).",
            [Q(f"sum(tpw_gpu_up{{{n}}})", "up"), Q(f"count(tpw_gpu_up{{{n}}})", "known")],
            "none",
            graph=False,
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Exporters down",
            "Scrape targets of the selected jobs that Prometheus cannot scrape (up == 0). 0 is healthy.",
            [Q(f'count(up{{job=~"$job", {n}}} == 0) or vector(0)')],
            "none",
            thresholds=_thresholds((None, "green"), (1, "red")),
            graph=False,
        ),
        3,
        4,
    )
    board.add(
        stat(
            "TPW alerts firing",
            "Number of tpw-exporter alerts (TPW*) firing now; the table at the bottom lists them.",
            [Q(f"count({ALERTS}) or vector(0)")],
            "none",
            thresholds=_thresholds((None, "green"), (1, "red")),
            graph=False,
        ),
        4,
        4,
    )

    board.row("Efficiency")
    board.add(
        timeseries(
            "Tokens per joule by model",
            "Generated tokens per joule of the GPU energy attributed to each model's endpoints, across all "
            "nodes (recording rule model:tpw_tokens_per_joule:ratio: a ratio of sums, so a busy 8-GPU "
            "replica weighs eight times a 1-GPU one; the node filter does not apply). A model whose line "
            "drops while its throughput holds burns more energy per token: look at its batch size "
            "(Endpoint dashboard) and at what its GPUs are bound by.",
            [Q(f"model:tpw_tokens_per_joule:ratio{{{by_model}}}", "{{model}}")],
            TOKENS_PER_JOULE,
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Tokens per joule by node",
            "Generated tokens per joule of all GPU energy of each node, idle GPUs included (recording rule "
            "instance:tpw_tokens_per_joule:ratio). A node below its peers serves the same models with more "
            "energy per token, or carries idle GPUs.",
            [Q(f"instance:tpw_tokens_per_joule:ratio{{{n}}}", "{{instance}}")],
            TOKENS_PER_JOULE,
        ),
        12,
        8,
    )
    efficiency_by = "sum by (cluster, instance, model)"
    board.add(
        table(
            "Efficiency by node and model (now)",
            "One row per node and model: tokens per joule of the attributed GPU energy (power-weighted over "
            "the model's endpoints on the node), generation throughput, attributed power, joules per "
            "request and the mean NVML utilization of the GPUs serving it. Click a node to open its GPU "
            "detail.",
            [
                Q(
                    f"{efficiency_by} (tpw_endpoint_tokens_per_joule{{{m}}}"
                    f" * tpw_endpoint_power_watts{{{m}}}) / {efficiency_by}"
                    f" (tpw_endpoint_power_watts{{{m}}} and tpw_endpoint_tokens_per_joule{{{m}}})"
                ),
                Q(f"{efficiency_by} (tpw_endpoint_generation_tokens_per_second{{{m}}})"),
                Q(f"{efficiency_by} (tpw_endpoint_power_watts{{{m}}})"),
                Q(
                    f"{efficiency_by} (tpw_endpoint_joules_per_request{{{m}}} * "
                    f"tpw_endpoint_requests_per_second{{{m}}}) / {efficiency_by} "
                    f"(tpw_endpoint_requests_per_second{{{m}}} and tpw_endpoint_joules_per_request{{{m}}})"
                ),
                Q(f"avg by (cluster, instance, model) (tpw_endpoint_gpu_utilization_ratio{{{m}}})"),
            ],
            columns={
                "instance": "Node",
                "model": "Model",
                "Value #A": "Tokens per joule",
                "Value #B": "Tokens/s",
                "Value #C": "Power",
                "Value #D": "Joules per request",
                "Value #E": "GPU utilization (NVML)",
            },
            hidden=("Time", "cluster"),
            overrides=[
                unit_column("Tokens per joule", TOKENS_PER_JOULE, decimals=1),
                unit_column("Tokens/s", TOKENS_PER_SECOND),
                unit_column("Power", "watt"),
                unit_column("Joules per request", "joule"),
                gauge_column("GPU utilization (NVML)"),
                link_column(
                    "Node",
                    "GPU detail of ${__value.raw}",
                    "/d/tpw-node-gpu?${__url_time_range}&${datasource:queryparam}&var-node=${__value.raw}",
                ),
            ],
        ),
        24,
        7,
    )

    board.row("Power and throughput")
    board.add(
        timeseries(
            "GPU power by node",
            "Board power of each node's GPUs now (solid) against the sum of their enforced power limits "
            "(dashed). Power pinned at the limit with falling tokens per joule means the GPUs throttle.",
            [
                Q(f"sum by (cluster, instance) (tpw_gpu_power_watts{{{n}}})", "{{instance}}"),
                Q(f"sum by (cluster, instance) (tpw_gpu_power_limit_watts{{{n}}})", "{{instance}} limit"),
            ],
            "watt",
            overrides=[dashed(".* limit")],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Generation throughput by model",
            "Tokens generated per second per model, across all nodes (recording rule "
            "model:tpw_generation_tokens_per_second:sum; the node filter does not apply).",
            [Q(f"model:tpw_generation_tokens_per_second:sum{{{by_model}}}", "{{model}}")],
            TOKENS_PER_SECOND,
        ),
        12,
        8,
    )
    board.add(
        bargauge(
            "GPU energy in the time range by node",
            "Joules the GPUs of each node used over the dashboard's time range (increase of the NVML "
            "energy counters; 3.6 MJ = 1 kWh).",
            [
                Q(
                    f"sum by (cluster, instance) (increase(tpw_gpu_energy_joules_total{{{n}}}[$__range]))",
                    "{{instance}}",
                    instant=True,
                )
            ],
            "joule",
        ),
        12,
        7,
    )
    board.add(
        bargauge(
            "Share of serving GPUs' energy spent idle, by node",
            "Of the energy of the GPUs attributed to an endpoint, over the exporter's derive window, the "
            "share spent in ticks where their endpoints generated nothing: power you pay for that serves "
            "no tokens (recording rule instance:tpw_gpu_idle_energy_ratio:ratio, energy-weighted). GPUs "
            "attributed to no endpoint are not counted here.",
            [Q(f"instance:tpw_gpu_idle_energy_ratio:ratio{{{n}}}", "{{instance}}", instant=True)],
            "percentunit",
            max_value=1,
            thresholds=_thresholds((None, "green"), (0.2, "orange"), (0.5, "red")),
        ),
        12,
        7,
    )

    board.row("What the GPUs are bound by")
    board.add(
        state_timeline(
            "Bound state of every GPU",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(n), "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        16,
        9,
    )
    board.add(
        bargauge(
            "GPUs by bound state (now)",
            "How many of the selected GPUs are compute-, memory-, latency-bound, idle or mixed right now "
            "(recording rule instance:tpw_gpu_bound:sum, summed over the selected nodes).",
            [Q(f"sum by (bound) (instance:tpw_gpu_bound:sum{{{n}}})", "{{bound}}", instant=True)],
            "none",
        ),
        8,
        9,
    )

    board.row("Alerts")
    board.add(
        table(
            "Firing TPW alerts",
            "Every tpw-exporter alert (TPW*) firing now, with its labels. Alert rules live in "
            "deploy/prometheus/rules/alerts.yml; their runbooks are in the annotations.",
            [Q(ALERTS, conditional=WHEN_ALERT)],
            columns={
                "alertname": "Alert",
                "severity": "Severity",
                "instance": "Node",
                "gpu": "GPU",
                "endpoint": "Endpoint",
                "model": "Model",
            },
            hidden=("Time", "Value", "__name__", "alertstate", "job", "cluster"),
        ),
        24,
        6,
    )
    return board


def node_gpu() -> Board:
    board = Board(
        "tpw-node-gpu",
        "TPW / Node and GPU detail",
        "Per GPU: NVML utilization next to what the SMs really do (SM activity, occupancy, tensor pipes, "
        "DRAM bandwidth), power against limit, clocks and throttle reasons, memory, exporter health.",
        [CLUSTER_VARIABLE, JOB_VARIABLE, NODE_VARIABLE, GPU_VARIABLE],
        [alert_annotation(), *exporter_annotations()],
        time_from="now-30m",
        refresh="10s",
    )
    g = GPU
    by_gpu = "max by (cluster, instance, gpu)"

    board.row('"Utilization" versus what the SMs really do')
    board.add(
        table(
            'NVML says "utilization"; GPM says what the SMs do (now)',
            "NVML utilization (nvidia-smi's GPU-Util) is the fraction of time *any* kernel was running: it "
            "says nothing about how much of the GPU the kernels use. A device-to-device copy and a bf16 "
            "GEMM both read 99 %; here the copy shows tensor pipes 0 % and DRAM bandwidth 89 % "
            "(memory-bound), the GEMM tensor 93 % (compute-bound), and a loop of tiny kernels reads 36 % "
            "utilization with SM activity near 0 (launch-bound). Read each row left to right: a high "
            "first column with low tensor and DRAM columns is a GPU that looks busy and does little. "
            "GPM columns are empty on GPUs without GPM (before Hopper) or with --no-profiling.",
            [
                Q(f"{by_gpu} (tpw_gpu_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_sm_active_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_sm_occupancy_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_tensor_active_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_memory_controller_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_power_watts{{{g}}})"),
            ],
            columns={
                "instance": "Node",
                "gpu": "GPU",
                "Value #A": "Utilization (NVML)",
                "Value #B": "SM active",
                "Value #C": "SM occupancy",
                "Value #D": "Tensor pipes",
                "Value #E": "DRAM bandwidth",
                "Value #F": "Memory controller (NVML)",
                "Value #G": "Power",
            },
            hidden=("Time", "cluster"),
            overrides=[
                *(
                    gauge_column(name)
                    for name in (
                        "Utilization (NVML)",
                        "SM active",
                        "SM occupancy",
                        "Tensor pipes",
                        "DRAM bandwidth",
                        "Memory controller (NVML)",
                    )
                ),
                unit_column("Power", "watt"),
            ],
        ),
        24,
        7,
    )
    board.add(
        timeseries(
            "GPU $gpu: NVML utilization vs SM activity, tensor pipes, DRAM bandwidth",
            "The dashed line is NVML utilization; the others are the GPM profiling ratios over the same "
            "collection interval. Utilization high with tensor low and DRAM high: memory-bound. Tensor "
            "high: compute-bound. Utilization high with SM activity low: launch- or latency-bound. "
            "One panel per selected GPU.",
            [
                Q(f"tpw_gpu_utilization_ratio{{{g}}}", "utilization (NVML) {{instance}}"),
                Q(f"tpw_gpu_sm_active_ratio{{{g}}}", "SM active {{instance}}"),
                Q(f"tpw_gpu_sm_occupancy_ratio{{{g}}}", "SM occupancy {{instance}}"),
                Q(f"tpw_gpu_tensor_active_ratio{{{g}}}", "tensor pipes {{instance}}"),
                Q(f"tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}}", "DRAM bandwidth {{instance}}"),
            ],
            "percentunit",
            max_value=1,
            fill=0,
            overrides=[
                override(
                    "byRegexp",
                    "utilization \\(NVML\\).*",
                    custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                    custom__lineWidth=3,
                    color={"mode": "fixed", "fixedColor": "#8e8e8e"},
                )
            ],
            calcs=("mean", "lastNotNull"),
            repeat="gpu",
        ),
        12,
        9,
    )

    board.row("Memory")
    board.add(
        timeseries(
            "DRAM bandwidth: achieved vs peak",
            "Achieved DRAM bandwidth (GPM DRAM bandwidth utilization × the GPU's theoretical peak) against "
            "the peak itself (dashed; H100 SXM ≈ 3.35 TB/s). Decode-heavy serving is usually bound here.",
            [
                Q(
                    f"tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}}"
                    f" * tpw_gpu_dram_peak_bandwidth_bytes_per_second{{{g}}}",
                    "{{instance}} gpu {{gpu}}",
                ),
                Q(f"tpw_gpu_dram_peak_bandwidth_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} peak"),
            ],
            "Bps",
            overrides=[dashed(".* peak")],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Device memory used vs installed",
            "Device memory in use (solid) against installed memory (dashed). Serving engines reserve most "
            "of it for the KV cache up front, so high use alone is normal.",
            [
                Q(f"tpw_gpu_memory_used_bytes{{{g}}}", "{{instance}} gpu {{gpu}}"),
                Q(f"tpw_gpu_memory_total_bytes{{{g}}}", "{{instance}} gpu {{gpu}} installed"),
            ],
            "bytes",
            overrides=[dashed(".* installed")],
        ),
        12,
        8,
    )

    board.row("Power, clocks and throttling")
    board.add(
        timeseries(
            "Power vs limit",
            "Board power now (solid), average power from the energy counter over the rate window (thin), "
            "and the enforced power limit (dashed). Running at the limit triggers the sw_power_cap clock "
            "event below and lowers clocks.",
            [
                Q(f"tpw_gpu_power_watts{{{g}}}", "{{instance}} gpu {{gpu}}"),
                Q(
                    f"rate(tpw_gpu_energy_joules_total{{{g}}}[$__rate_interval])",
                    "{{instance}} gpu {{gpu}} from energy",
                ),
                Q(f"tpw_gpu_power_limit_watts{{{g}}}", "{{instance}} gpu {{gpu}} limit"),
            ],
            "watt",
            overrides=[dashed(".* limit"), override("byRegexp", ".* from energy", custom__fillOpacity=0)],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Clocks",
            "SM clock (solid) and memory clock (dashed). SM clocks well below the maximum while busy point "
            "at a power or thermal limit; see the clock event reasons.",
            [
                Q(f"tpw_gpu_sm_clock_hertz{{{g}}}", "{{instance}} gpu {{gpu}} SM"),
                Q(f"tpw_gpu_memory_clock_hertz{{{g}}}", "{{instance}} gpu {{gpu}} memory"),
            ],
            "hertz",
            overrides=[dashed(".* memory")],
            fill=0,
        ),
        12,
        8,
    )
    board.add(
        state_timeline(
            "Active clock event (throttle) reasons",
            "When each clock-event reason NVML reports was active. gpu_idle is harmless; sw_power_cap "
            "means the GPU runs at its power limit; *thermal* and hw_* reasons mean the hardware slowed "
            "the clocks and throughput suffers.",
            [
                Q(
                    f"tpw_gpu_clock_event_active{{{g}}} == 1",
                    "{{instance}} gpu {{gpu}} {{reason}}",
                    conditional="only while a clock event reason is active (a busy GPU below its power "
                    "limit has none)",
                )
            ],
            value_mappings({"1": ("active", "orange")}),
        ),
        12,
        8,
    )
    board.add(
        bargauge(
            "Share of time each clock event reason was active",
            "Fraction of the time range each reason was active, averaged over the selected GPUs.",
            [
                Q(
                    f"avg by (reason) (avg_over_time(tpw_gpu_clock_event_active{{{g}}}[$__range]))",
                    "{{reason}}",
                    instant=True,
                )
            ],
            "percentunit",
            max_value=1,
            thresholds=_thresholds((None, "green"), (0.05, "orange"), (0.25, "red")),
        ),
        6,
        8,
    )
    board.add(
        timeseries(
            "Temperature",
            "GPU die temperature. Thermal slowdown (see the clock event reasons) starts in the high 80s "
            "°C on H100.",
            [Q(f"tpw_gpu_temperature_celsius{{{g}}}", "{{instance}} gpu {{gpu}}")],
            "celsius",
            fill=0,
            min_value=None,
        ),
        6,
        8,
    )

    board.row("Pipes and PCIe")
    board.add(
        timeseries(
            "Pipe activity: tensor, FP16, FP32, FP64",
            "Fraction of time each pipe was active (GPM). Serving with tensor-core kernels shows up as "
            "tensor activity; the non-tensor FP pipes stay low.",
            [
                Q(f"tpw_gpu_tensor_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} tensor"),
                Q(f"tpw_gpu_fp16_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP16"),
                Q(f"tpw_gpu_fp32_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP32"),
                Q(f"tpw_gpu_fp64_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP64"),
            ],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "PCIe throughput",
            "PCIe traffic into (rx) and out of (tx, negative) each GPU. Steady high rx while serving can "
            "mean weights or KV cache are paged over PCIe.",
            [
                Q(f"tpw_gpu_pcie_rx_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} rx"),
                Q(f"-tpw_gpu_pcie_tx_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} tx"),
            ],
            "Bps",
            min_value=None,
        ),
        12,
        8,
    )

    board.row("Bound classification (derived)")
    board.add(
        state_timeline(
            "Bound state",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(g), "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Bound evidence",
            "The signals the classification weighs, per GPU, over the derive window: each is a 0..1 ratio "
            "(for example tensor activity, DRAM bandwidth utilization, SM activity).",
            [Q(f"tpw_gpu_bound_evidence_ratio{{{g}}}", "{{instance}} gpu {{gpu}} {{signal}}")],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        12,
        8,
    )

    board.row("Exporter health")
    board.add(
        stat(
            "Scrape up",
            "1 when Prometheus scraped the exporter on its last attempt; 0 means the node's data is stale.",
            [Q(f'up{{job=~"$job", {NODE}}}', "{{instance}}")],
            "none",
            mappings=value_mappings({"0": ("down", "red"), "1": ("up", "green")}),
            graph=False,
        ),
        4,
        5,
    )
    board.add(
        stat(
            "GPUs up",
            "Per GPU: 1 when NVML answered on the last tick; 0 when the GPU is lost, hung or failing (its "
            "other series then vanish).",
            [Q(f"tpw_gpu_up{{{g}}}", "gpu {{gpu}}")],
            "none",
            mappings=value_mappings({"0": ("down", "red"), "1": ("up", "green")}),
            graph=False,
        ),
        6,
        5,
    )
    board.add(
        stat(
            "Data age",
            "Seconds since the exporter's last completed collection tick. It should stay near the "
            "collection interval; growth means the collector is stuck.",
            [Q(f"time() - tpw_last_tick_timestamp_seconds{{{NODE}}}", "{{instance}}")],
            "s",
            thresholds=_thresholds((None, "green"), (10, "orange"), (60, "red")),
            decimals=1,
        ),
        4,
        5,
    )
    board.add(
        timeseries(
            "Source collect duration",
            "How long each source took on each tick (NVML, simulated, endpoints). It must stay well "
            "under the collection interval.",
            [
                Q(
                    f"tpw_source_collect_duration_seconds{{{NODE}}}",
                    "{{instance}} {{source}}",
                ),
                Q(f"tpw_tick_duration_seconds{{{NODE}}}", "{{instance}} whole tick"),
            ],
            "s",
            fill=0,
            calcs=("mean", "max"),
        ),
        10,
        5,
    )
    board.add(
        table(
            "GPU inventory",
            "Identity of every selected GPU and the node's driver; simulated=true marks the demo node.",
            [
                Q(
                    f"max by (cluster, instance, gpu, name, uuid, pci_bus_id, compute_capability, simulated)"
                    f" (tpw_gpu_info{{{g}}})"
                ),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_profiling_supported{{{g}}})"),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_power_limit_watts{{{g}}})"),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_memory_total_bytes{{{g}}})"),
            ],
            columns={
                "instance": "Node",
                "gpu": "GPU",
                "name": "Name",
                "uuid": "UUID",
                "pci_bus_id": "PCI bus",
                "compute_capability": "Compute capability",
                "Value #B": "GPM profiling",
                "Value #C": "Power limit",
                "Value #D": "Memory",
                "simulated": "Simulated",
            },
            hidden=("Time", "cluster", "Value #A"),
            overrides=[
                unit_column(
                    "GPM profiling",
                    "none",
                    mappings=value_mappings({"0": ("no", "orange"), "1": ("yes", "green")}),
                ),
                unit_column("Power limit", "watt"),
                unit_column("Memory", "bytes"),
            ],
        ),
        24,
        6,
    )
    return board


def endpoint() -> Board:
    board = Board(
        "tpw-endpoint",
        "TPW / Endpoint",
        "One serving endpoint: load, throughput, latency, and what its tokens cost in energy.",
        [CLUSTER_VARIABLE, NODE_VARIABLE, ENDPOINT_VARIABLE, ENDPOINT_MODEL_VARIABLE],
        [alert_annotation(), engine_deploy_annotation()],
        time_from="now-1h",
        refresh="10s",
    )
    e, em = ENDPOINT, ENDPOINT_MODEL
    by = "sum by (endpoint, model)"
    rate = "[$__rate_interval]"

    board.row("Now")
    board.add(
        stat(
            "Endpoint up",
            "1 when the exporter could scrape the serving engine's metrics on its last tick.",
            [Q(f"tpw_endpoint_up{{{e}}}", "{{endpoint}}")],
            "none",
            mappings=value_mappings({"0": ("down", "red"), "1": ("up", "green")}),
            graph=False,
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Requests/s",
            "Requests finished per second, every outcome (rate of the engine's request counter).",
            [Q(f"sum(rate(tpw_endpoint_requests_total{{{em}}}{rate}))")],
            "reqps",
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Generation tokens/s",
            "Tokens generated per second by the selected endpoints (rate of the engine's token counter).",
            [Q(f"sum(rate(tpw_endpoint_generation_tokens_total{{{em}}}{rate}))")],
            TOKENS_PER_SECOND,
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Tokens per joule",
            "Generated tokens per joule of the energy of the GPUs serving the endpoint (exporter-derived "
            "over its derive window). Higher is better.",
            [Q(f"tpw_endpoint_tokens_per_joule{{{em}}}", "{{endpoint}} {{model}}")],
            TOKENS_PER_JOULE,
            decimals=1,
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Joules per request",
            "GPU energy per finished request over the exporter's derive window. Lower is better; it falls "
            "as batches grow.",
            [Q(f"tpw_endpoint_joules_per_request{{{em}}}", "{{endpoint}} {{model}}")],
            "joule",
        ),
        4,
        4,
    )
    board.add(
        stat(
            "Mean time to first token",
            "Mean TTFT of the requests that got their first token in the rate window.",
            [
                Q(
                    f"sum(rate(tpw_endpoint_time_to_first_token_seconds_sum{{{em}}}{rate}))"
                    f" / sum(rate(tpw_endpoint_time_to_first_token_seconds_count{{{em}}}{rate}))"
                )
            ],
            "s",
        ),
        4,
        4,
    )

    board.row("Load: batch vs queue")
    board.add(
        timeseries(
            "Requests/s by outcome",
            "Finished requests per second by outcome (success, failure, aborted…; unknown when the engine "
            "does not split them).",
            [
                Q(
                    f"sum by (endpoint, outcome) (rate(tpw_endpoint_requests_total{{{em}}}{rate}))",
                    "{{endpoint}} {{outcome}}",
                )
            ],
            "reqps",
            stack=True,
            overrides=[fixed_color(".* failure", "red"), fixed_color(".* aborted", "orange")],
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Running (batch) vs waiting (queue)",
            "Requests the engine is running now (its batch) and requests waiting for a slot (its queue). "
            "A growing queue with a flat batch means the endpoint is saturated (KV cache or max batch); "
            "a small batch with no queue means there is not enough load to use the GPUs efficiently.",
            [
                Q(f"{by} (tpw_endpoint_requests_running{{{em}}})", "{{endpoint}} running"),
                Q(f"{by} (tpw_endpoint_requests_waiting{{{em}}})", "{{endpoint}} waiting"),
            ],
            "short",
            overrides=[fixed_color(".* waiting", "red")],
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "KV cache usage",
            "Fraction of the KV cache in use. Near 100 % the engine preempts or queues requests.",
            [Q(f"avg by (endpoint, model) (tpw_endpoint_kv_cache_usage_ratio{{{em}}})", "{{endpoint}}")],
            "percentunit",
            max_value=1,
        ),
        8,
        8,
    )

    board.row("Throughput and latency")
    board.add(
        timeseries(
            "Tokens/s: prompt vs generation",
            "Prompt (prefill) and generated (decode) tokens per second. Prefill is cheap per token "
            "(compute-bound), decode is expensive (memory-bound).",
            [
                Q(f"{by} (rate(tpw_endpoint_prompt_tokens_total{{{em}}}{rate}))", "{{endpoint}} prompt"),
                Q(
                    f"{by} (rate(tpw_endpoint_generation_tokens_total{{{em}}}{rate}))",
                    "{{endpoint}} generation",
                ),
            ],
            TOKENS_PER_SECOND,
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Mean time to first token",
            "Mean TTFT over the rate window (sum/count of the engine's histogram): the prefill and queueing "
            "delay users feel first.",
            [
                Q(
                    f"{by} (rate(tpw_endpoint_time_to_first_token_seconds_sum{{{em}}}{rate}))"
                    f" / {by} (rate(tpw_endpoint_time_to_first_token_seconds_count{{{em}}}{rate}))",
                    "{{endpoint}} {{model}}",
                )
            ],
            "s",
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Mean end-to-end latency",
            "Mean request latency over the rate window, from arrival to the last token.",
            [
                Q(
                    f"{by} (rate(tpw_endpoint_request_latency_seconds_sum{{{em}}}{rate}))"
                    f" / {by} (rate(tpw_endpoint_request_latency_seconds_count{{{em}}}{rate}))",
                    "{{endpoint}} {{model}}",
                )
            ],
            "s",
        ),
        8,
        8,
    )

    board.row("Energy efficiency")
    board.add(
        timeseries(
            "Tokens per joule",
            "Generated tokens per joule of the GPUs serving the endpoint. It rises with batch size until "
            "the GPUs are compute-bound; a drop at constant load is the signal to investigate.",
            [Q(f"tpw_endpoint_tokens_per_joule{{{em}}}", "{{endpoint}} {{model}}")],
            TOKENS_PER_JOULE,
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Joules per request and per token",
            "GPU energy per finished request (left axis) and per generated token (right axis).",
            [
                Q(f"tpw_endpoint_joules_per_request{{{em}}}", "{{endpoint}} per request"),
                Q(f"tpw_endpoint_joules_per_token{{{em}}}", "{{endpoint}} per token"),
            ],
            "joule",
            overrides=[right_axis(".* per token", "joule")],
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Throughput per busy GPU-second",
            "Generated tokens per second of GPU busy time (NVML utilization × GPUs): how much work the "
            "engine gets out of the time its GPUs look busy. Low values with high utilization are the "
            "'99 % busy, doing little' case.",
            [Q(f"tpw_endpoint_tokens_per_busy_gpu_second{{{em}}}", "{{endpoint}} {{model}}")],
            "suffix: tok/busy GPU·s",
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Endpoint power and GPU utilization",
            "Power of the GPUs attributed to the endpoint (left) and their mean NVML utilization (right).",
            [
                Q(f"tpw_endpoint_power_watts{{{em}}}", "{{endpoint}} power"),
                Q(f"tpw_endpoint_gpu_utilization_ratio{{{em}}}", "{{endpoint}} GPU utilization"),
            ],
            "watt",
            overrides=[right_axis(".* GPU utilization", "percentunit")],
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "Energy cost per million tokens",
            "Electricity cost of a million generated tokens at the configured site price.",
            [
                Q(
                    f"tpw_endpoint_energy_cost_per_million_tokens{{{em}}}",
                    "{{endpoint}} {{currency}}",
                    conditional=WHEN_PRICE,
                )
            ],
            "short",
        ),
        8,
        8,
    )
    board.add(
        timeseries(
            "CO₂ per million tokens",
            "Grams of CO₂ for a million generated tokens at the configured grid carbon intensity.",
            [
                Q(
                    f"tpw_endpoint_co2_grams_per_million_tokens{{{em}}}",
                    "{{endpoint}}",
                    conditional=WHEN_CARBON,
                )
            ],
            "suffix: g",
        ),
        8,
        8,
    )

    board.row("Scrape health and attribution")
    board.add(
        timeseries(
            "Endpoint scrape duration",
            "How long the exporter took to fetch and parse the engine's /metrics on each tick.",
            [Q(f"tpw_endpoint_scrape_duration_seconds{{{e}}}", "{{endpoint}}")],
            "s",
            fill=0,
        ),
        8,
        7,
    )
    board.add(
        timeseries(
            "Endpoint scrape errors/s by reason",
            "Failed scrapes of the engine per second, by reason (timeout, connection, http status, parse).",
            [
                Q(
                    f"sum by (endpoint, reason) (rate(tpw_endpoint_scrape_errors_total{{{e}}}{rate}))",
                    "{{endpoint}} {{reason}}",
                    conditional="only after a scrape of the endpoint failed since the exporter started",
                )
            ],
            "short",
        ),
        8,
        7,
    )
    board.add(
        table(
            "Endpoint and its GPUs",
            "The endpoint's engine and URL, and the GPUs whose energy is attributed to it (attribution: "
            "configured, or found from the engine's processes).",
            [
                Q(f"max by (cluster, instance, endpoint, engine, url) (tpw_endpoint_info{{{e}}})"),
                Q(f"max by (cluster, instance, endpoint, gpu, attribution) (tpw_endpoint_gpu_info{{{e}}})"),
            ],
            columns={
                "instance": "Node",
                "endpoint": "Endpoint",
                "engine": "Engine",
                "url": "URL",
                "gpu": "GPU",
                "attribution": "Attribution",
            },
            hidden=("Time", "cluster", "Value #A", "Value #B"),
        ),
        8,
        7,
    )
    return board


def investigation() -> Board:
    board = Board(
        "tpw-investigation",
        "TPW / Investigation",
        "For on-call: load, throughput, utilization and efficiency on one time axis, with alert, engine "
        "deploy and exporter annotations. Start here when a TPW alert fires.",
        [CLUSTER_VARIABLE, NODE_VARIABLE, ENDPOINT_VARIABLE, ENDPOINT_MODEL_VARIABLE],
        [alert_annotation(), engine_deploy_annotation(), *exporter_annotations()],
        time_from="now-3h",
        refresh="30s",
    )
    e, em, n = ENDPOINT, ENDPOINT_MODEL, NODE
    rate = "[$__rate_interval]"
    load = f"sum(tpw_endpoint_requests_running{{{em}}}) + sum(tpw_endpoint_requests_waiting{{{em}}})"
    throughput = f"sum(rate(tpw_endpoint_generation_tokens_total{{{em}}}{rate}))"
    efficiency = (
        f"sum(tpw_endpoint_generation_tokens_per_second{{{em}}}) / sum(tpw_endpoint_power_watts{{{em}}})"
    )
    endpoint_gpus = f"on (cluster, instance, gpu) tpw_endpoint_gpu_info{{{e}}}"

    def own_scale(regex: str, unit: str, color: str, width: int = 2) -> dict[str, Any]:
        """A series drawn on its own hidden 0-based scale: it fills the panel height over the time range."""
        return override(
            "byRegexp",
            regex,
            unit=unit,
            min=0,
            custom__axisPlacement="hidden",
            custom__lineWidth=width,
            color={"mode": "fixed", "fixedColor": color},
        )

    board.add(
        timeseries(
            "Divergence: load, throughput, utilization and efficiency on one time axis",
            "Load (requests running + waiting), throughput (tokens/s) and tokens per joule are each drawn on "
            "their own hidden scale from 0 to their maximum in the time range, so their shapes compare "
            "directly; the utilization ratios (NVML dashed, SM activity) use the 0-100 % axis. Hover for "
            "the real values. Healthy: the lines move together. Investigate where they diverge: utilization "
            "holds or rises while throughput or tokens per joule fall (the GPUs look busy and do less: see "
            "the bound state below), or load rises while throughput stays flat (saturation: queue vs "
            "batch). Annotations mark TPW alerts, engine restarts/deploys and exporter restarts/upgrades.",
            [
                Q(load, "load (running + waiting)"),
                Q(throughput, "throughput"),
                Q(f"avg(tpw_gpu_utilization_ratio{{{n}}} and {endpoint_gpus})", "utilization (NVML)"),
                Q(f"avg(tpw_gpu_sm_active_ratio{{{n}}} and {endpoint_gpus})", "SM active (GPM)"),
                Q(efficiency, "tokens per joule"),
            ],
            "percentunit",
            fill=0,
            overrides=[
                own_scale("load.*", "short", "blue"),
                own_scale("throughput", TOKENS_PER_SECOND, "green"),
                own_scale("tokens per joule", TOKENS_PER_JOULE, "red", width=3),
                override(
                    "byRegexp",
                    "utilization \\(NVML\\)",
                    max=1,
                    color={"mode": "fixed", "fixedColor": "#8e8e8e"},
                    custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                    custom__lineWidth=2,
                ),
                override("byRegexp", "SM active.*", max=1, color={"mode": "fixed", "fixedColor": "orange"}),
            ],
            calcs=("min", "max", "lastNotNull"),
        ),
        24,
        10,
    )

    board.row("Each signal in its own unit")
    board.add(
        timeseries(
            "Load: batch, queue and request rate",
            "Requests running (batch) and waiting (queue) on the left axis, finished requests per second "
            "on the right.",
            [
                Q(f"sum by (endpoint) (tpw_endpoint_requests_running{{{em}}})", "{{endpoint}} running"),
                Q(f"sum by (endpoint) (tpw_endpoint_requests_waiting{{{em}}})", "{{endpoint}} waiting"),
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_requests_total{{{em}}}{rate}))",
                    "{{endpoint}} requests/s",
                ),
            ],
            "short",
            overrides=[fixed_color(".* waiting", "red"), right_axis(".* requests/s", "reqps")],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Throughput",
            "Generated and prompt tokens per second of the selected endpoints (counter rates).",
            [
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_generation_tokens_total{{{em}}}{rate}))",
                    "{{endpoint}} generation",
                ),
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_prompt_tokens_total{{{em}}}{rate}))",
                    "{{endpoint}} prompt",
                ),
            ],
            TOKENS_PER_SECOND,
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Utilization of the endpoint's GPUs: NVML vs GPM",
            "Mean over the GPUs attributed to the selected endpoints: NVML utilization (dashed) against SM "
            "activity, tensor pipes and DRAM bandwidth utilization.",
            [
                Q(f"avg(tpw_gpu_utilization_ratio{{{n}}} and {endpoint_gpus})", "utilization (NVML)"),
                Q(f"avg(tpw_gpu_sm_active_ratio{{{n}}} and {endpoint_gpus})", "SM active"),
                Q(f"avg(tpw_gpu_tensor_active_ratio{{{n}}} and {endpoint_gpus})", "tensor pipes"),
                Q(
                    f"avg(tpw_gpu_dram_bandwidth_utilization_ratio{{{n}}} and {endpoint_gpus})",
                    "DRAM bandwidth",
                ),
            ],
            "percentunit",
            max_value=1,
            fill=0,
            overrides=[dashed("utilization \\(NVML\\)")],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Efficiency: tokens per joule and joules per request",
            "Tokens per joule (left) and joules per request (right) of each endpoint.",
            [
                Q(f"tpw_endpoint_tokens_per_joule{{{em}}}", "{{endpoint}} tokens per joule"),
                Q(f"tpw_endpoint_joules_per_request{{{em}}}", "{{endpoint}} joules per request"),
            ],
            TOKENS_PER_JOULE,
            overrides=[right_axis(".* joules per request", "joule")],
        ),
        12,
        8,
    )
    board.add(
        timeseries(
            "Power: endpoint GPUs vs whole node",
            "Power attributed to each endpoint and the board power of all GPUs of its nodes (dashed). The "
            "gap is energy spent on GPUs serving nothing.",
            [
                Q(f"sum by (endpoint) (tpw_endpoint_power_watts{{{em}}})", "{{endpoint}}"),
                Q(f"sum by (cluster, instance) (tpw_gpu_power_watts{{{n}}})", "{{instance}} all GPUs"),
            ],
            "watt",
            overrides=[dashed(".* all GPUs")],
        ),
        12,
        8,
    )
    board.add(
        state_timeline(
            "Bound state of the endpoint's GPUs",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(n) + f" and {endpoint_gpus}", "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        12,
        8,
    )
    board.add(
        state_timeline(
            "TPW alerts over time",
            "When each TPW* alert was firing in the time range.",
            [Q(ALERTS, "{{alertname}} {{instance}} {{gpu}} {{endpoint}}", conditional=WHEN_ALERT)],
            value_mappings({"1": ("firing", "red")}),
        ),
        24,
        6,
    )
    return board


BOARDS = {
    "tpw-fleet-efficiency.json": fleet,
    "tpw-node-gpu.json": node_gpu,
    "tpw-endpoint.json": endpoint,
    "tpw-investigation.json": investigation,
}


# ------------------------------------------------------------------------------------------ interface


def build_all() -> dict[str, tuple[dict[str, Any], dict[tuple[str, str], str]]]:
    """{file name: (dashboard JSON, {(panel id | "annotation:NAME", refId): why it may be empty})}."""
    result = {}
    for name, make in BOARDS.items():
        board = make()
        model = board.to_json()
        result[name] = (model, board.conditional)
    return result


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def conditional_targets() -> dict[str, dict[tuple[str, str], str]]:
    """{dashboard uid: {(panel id | "annotation:NAME", refId): why}} for the query test."""
    return {model["uid"]: conditional for model, conditional in build_all().values()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="verify instead of writing; exit 1 on a difference"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder of the JSON files (default: beside this)"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, (model, _) in build_all().items():
        path = args.out / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run `python dashboards/build.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
