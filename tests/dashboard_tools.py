"""Reading the checked-in Grafana dashboards as Grafana does: panels, queries, variables, substitution."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from helpers import REPO

DASHBOARDS = REPO / "dashboards"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's built-in interval variables, as the tests substitute them (1 s scrapes in the tests).
BUILTINS = {"__rate_interval": "5s", "__interval": "1s", "__range": "1m"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>[A-Za-z_]\w*)\)$", re.S)
VARIABLE_REFERENCE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>\w+))")
METRIC_NAME = re.compile(r"(?<![\w:$\"'])([A-Za-z_:][\w:]*)(?=\s*\{)")
TPW_NAME = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)")


@cache
def builder() -> ModuleType:
    """dashboards/build.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("tpw_dashboards_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def checked_in() -> dict[str, dict[str, Any]]:
    """{file name: dashboard JSON} of every dashboard JSON in dashboards/."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


# Read once at import, shared by tests/unit/test_dashboards.py and its promtool / build.py half under
# tests/integration/ (test_dashboards.py's probe test adds and removes an entry).
MODELS = checked_in()
FILES = sorted(MODELS)


def panels(model: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One PromQL query of a dashboard: a panel target, an annotation or a variable."""

    uid: str
    kind: str  # "panel" | "annotation" | "variable"
    key: str  # panel id, annotation name or variable name
    ref: str
    title: str
    expr: str
    instant: bool


def queries(model: Mapping[str, Any]) -> Iterator[Query]:
    uid = model["uid"]
    for panel in panels(model):
        for target in panel.get("targets", []):
            yield Query(
                uid,
                "panel",
                str(panel["id"]),
                target["refId"],
                panel["title"],
                target["expr"],
                bool(target.get("instant")),
            )
    for annotation in model["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(
                uid, "annotation", annotation["name"], "A", annotation["name"], annotation["expr"], False
            )
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            yield Query(
                uid, "variable", variable["name"], "", variable["name"], variable["query"]["query"], True
            )


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $var / ${var} / ${var:format} and Grafana's interval variables; KeyError if unknown."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name in BUILTINS:
            return BUILTINS[name]
        return values[name]

    return VARIABLE_REFERENCE.sub(replace, expr)


def regex_escape(value: str) -> str:
    """What Grafana's Prometheus datasource does to a variable value inside a regex matcher."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def tpw_names(expr: str) -> set[str]:
    """tpw metric and recording-rule names an expression reads."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {name for name in TPW_NAME.findall(unquoted) if "tpw_" in name}


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, matcher text) of every `name{...}` selector in an expression."""
    for match in METRIC_NAME.finditer(expr):
        start = expr.index("{", match.end())
        end = expr.index("}", start)
        yield match.group(1), expr[start + 1 : end]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]
