"""A small builder of classic Grafana dashboards (schema 42): queries, panels, overrides, variables,
annotations, and `Board`, which lays panels out on the 24-column grid and writes the dashboard envelope.

Nothing here knows about tpw-exporter; the TPW conventions live in tpw.py.

A query may be *conditional* (`Q(..., conditional="why")`): it returns data only in a particular
situation. The reason is appended to the panel description, and `Board.conditional` collects it per
(panel id | "annotation:NAME", refId) for the test that runs every query against a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 42  # the last classic (v1) dashboard schema, as Grafana 12.3 writes it
GRID_WIDTH = 24  # columns of Grafana's grid
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Q:
    """One query of a panel: PromQL, its legend, and whether it may legitimately return nothing."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    conditional: str | None = None


# ------------------------------------------------------------------------------------------- queries


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


def threshold_steps(base: str, *steps: tuple[float, str]) -> dict[str, Any]:
    """Absolute thresholds: `base` colour from -∞, then each (value, colour) step upwards."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in ((None, base), *steps)],
    }


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


# ----------------------------------------------------------------------------------------- overrides


def override(matcher: str, name: str, **properties: Any) -> dict[str, Any]:
    """A field override: matcher `byName`, `byRegexp` or `byFrameRefID`; properties by Grafana id
    (`custom__lineWidth` stands for `custom.lineWidth`)."""
    return {
        "matcher": {"id": matcher, "options": name},
        "properties": [{"id": key.replace("__", "."), "value": value} for key, value in properties.items()],
    }


def dashed(regex: str) -> dict[str, Any]:
    """Series matching `regex` drawn dashed and unfilled (limits, peaks, references)."""
    return override(
        "byRegexp", regex, custom__lineStyle={"fill": "dash", "dash": [10, 10]}, custom__fillOpacity=0
    )


def right_axis(regex: str, unit: str) -> dict[str, Any]:
    """Series matching `regex` on a right-hand axis in `unit`."""
    return override("byRegexp", regex, custom__axisPlacement="right", unit=unit)


def fixed_color(regex: str, color: str) -> dict[str, Any]:
    """Series matching `regex` in one fixed colour."""
    return override("byRegexp", regex, color={"mode": "fixed", "fixedColor": color})


def gauge_column(name: str, unit: str = "percentunit", max_value: float | None = 1) -> dict[str, Any]:
    """A table column drawn as a gauge from 0 to `max_value`."""
    properties: dict[str, Any] = {
        "unit": unit,
        "custom__cellOptions": {"type": "gauge", "mode": "basic", "valueDisplayMode": "text"},
        "min": 0,
    }
    if max_value is not None:
        properties["max"] = max_value
    return override("byName", name, **properties)


def unit_column(name: str, unit: str, **extra: Any) -> dict[str, Any]:
    """A table column in `unit` (more properties by Grafana id, as for `override`)."""
    return override("byName", name, unit=unit, **extra)


def link_column(name: str, title: str, url: str) -> dict[str, Any]:
    """A table column whose cells link to `url`."""
    return override("byName", name, links=[{"title": title, "url": url}])


# -------------------------------------------------------------------------------------------- panels


def _panel(kind: str, title: str, description: str, queries: Sequence[Q], **extra: Any) -> dict[str, Any]:
    targets, conditional = _targets(queries)
    return {
        "type": kind,
        "title": title,
        "description": _describe(description, conditional),
        "datasource": DATASOURCE,
        "targets": targets,
        **extra,
        "_conditional": conditional,
    }


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
    """A time series panel with a table legend; `repeat` names a variable to repeat it for (4 a row)."""
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
        "thresholds": threshold_steps("green"),
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
    """A stat panel of the last value, coloured by `thresholds`, with a sparkline unless `graph=False`."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or threshold_steps("blue"),
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


def state_timeline(
    title: str, description: str, queries: Sequence[Q], mappings: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A state timeline: one lane per series, values shown through `mappings`."""
    return _panel(
        "state-timeline",
        title,
        description,
        queries,
        fieldConfig={
            "defaults": {
                "unit": "none",
                "color": {"mode": "thresholds"},
                "thresholds": threshold_steps("#8e8e8e"),
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
    """Horizontal gradient bars of the last value of each series."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": min_value,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or threshold_steps("blue"),
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
                "thresholds": threshold_steps("text"),
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


# ----------------------------------------------------------------------------- variables, annotations


def datasource_variable() -> dict[str, Any]:
    """The `datasource` variable (Prometheus) every query goes through."""
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


def annotation(
    name: str,
    expr: str,
    *,
    color: str,
    step: str,
    title: str,
    text: str,
    tag_keys: str,
    conditional: str,
) -> dict[str, Any]:
    """A PromQL annotation: an event (titled `title`, described by `text`) wherever `expr` has a value."""
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "expr": expr,
        "step": step,
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": tag_keys,
        "useValueForTime": False,
        "_conditional": conditional,
    }


def dashboards_link(title: str, tags: Sequence[str]) -> dict[str, Any]:
    """A dashboard link: a dropdown of the dashboards tagged `tags`, keeping time range and variables."""
    return {
        "title": title,
        "type": "dashboards",
        "tags": list(tags),
        "asDropdown": True,
        "includeVars": True,
        "keepTime": True,
        "icon": "external link",
        "targetBlank": False,
        "tooltip": "",
        "url": "",
    }


# --------------------------------------------------------------------------------------------- board


class Board:
    """A dashboard being laid out: panels flow left to right, rows start on a fresh line."""

    def __init__(
        self,
        uid: str,
        title: str,
        description: str,
        *,
        variables: Sequence[dict[str, Any]],
        annotations: Sequence[dict[str, Any]] = (),
        tags: Sequence[str] = (),
        links: Sequence[dict[str, Any]] = (),
        time_from: str = "now-1h",
        refresh: str = "30s",
    ) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = [datasource_variable(), *variables]
        self.annotations = list(annotations)
        self.tags = list(tags)
        self.links = list(links)
        self.time_from = time_from
        self.refresh = refresh
        self.panels: list[dict[str, Any]] = []
        self.conditional: dict[tuple[str, str], str] = {}  # (panel id or annotation name, refId) -> why
        self._x = self._y = self._line_height = 0

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = self._line_height = 0

    def row(self, title: str) -> None:
        """A row header across the whole width, on a fresh line."""
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": len(self.panels) + 1,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def add(self, panel: dict[str, Any], *, width: int, height: int) -> None:
        """Place `panel` (`width` of 24 columns, `height` grid units) right of the last one, or on a new
        line when it does not fit."""
        if self._x + width > GRID_WIDTH:
            self._newline()
        conditional = panel.pop("_conditional")
        grid = {"h": height, "w": width, "x": self._x, "y": self._y}
        panel = {"id": len(self.panels) + 1, "gridPos": grid, **panel}
        for ref, reason in conditional.items():
            self.conditional[(str(panel["id"]), ref)] = reason
        self.panels.append(panel)
        self._x += width
        self._line_height = max(self._line_height, height)

    def to_json(self) -> dict[str, Any]:
        """The dashboard model Grafana loads; records the conditional annotations in `conditional`."""
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
            "tags": self.tags,
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
            "links": self.links,
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
