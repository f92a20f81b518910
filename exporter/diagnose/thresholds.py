"""The alert rules' thresholds, so that `diagnose` and the alerts judge by the same numbers.

The numbers live in the alert rules (deploy/prometheus/rules/alerts.yml). `diagnose` reads them from the
alert rules the queried Prometheus has loaded (`/api/v1/rules`): tuned rules are followed. Each threshold
below names its alert and the place in the alert's expression that carries it (a regular expression on the
expression with every space removed, as the file writes it and as Prometheus prints it back); a threshold
that cannot be found there (rules not loaded, rewritten or renamed) keeps its default, which is the shipped
rules' value. tests/unit/test_diagnose_thresholds.py checks that the shipped alerts.yml yields exactly
these defaults, so a change to a rule's number fails there until it is made here too.

Durations are not taken over: an alert's `for: 10m` and `[1h]` ranges fit a continuously evaluated
rule, while diagnose judges whatever window it is given (its own minimum episode length, `--min-duration`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
N = rf"({_NUMBER}(?:\*{_NUMBER})*)"  # a number, or a product of numbers (`4 * 3600`)
R = r"\[[^\]]+\]"  # any range


@dataclass(frozen=True)
class ThresholdSpec:
    key: str
    alert: str
    pattern: str  # on the expression without whitespace; group 1 is the number
    default: float
    meaning: str


SPECS: tuple[ThresholdSpec, ...] = (
    ThresholdSpec(
        "busy_utilization",
        "TPWBusyButFlat",
        rf"tpw_endpoint_gpu_utilization_ratio>={N}",
        0.85,
        "GPUs at least this busy (NVML utilization)",
    ),
    ThresholdSpec(
        "busy_queue_growth",
        "TPWBusyButFlat",
        rf"\(delta\(tpw_endpoint_requests_waiting{R}\)\)>={N}",
        10,
        "the queue grew by at least this many requests",
    ),
    ThresholdSpec(
        "busy_tokens_rise",
        "TPWBusyButFlat",
        rf"<={N}\*avg_over_time\(tpw_endpoint_generation_tokens_per_second",
        0.1,
        "tokens/s rose by at most this fraction of its mean (flat)",
    ),
    ThresholdSpec(
        "under_utilization",
        "TPWUnderUtilized",
        rf"tpw_endpoint_gpu_utilization_ratio<{N}",
        0.30,
        "GPUs less busy than this",
    ),
    ThresholdSpec(
        "under_in_flight",
        "TPWUnderUtilized",
        rf"\(min_over_time\(tpw_endpoint_requests_running{R}\)\)>={N}",
        1,
        "requests running or waiting, at least",
    ),
    ThresholdSpec(
        "peak_fraction",
        "TPWMemoryBandwidthBound",
        rf"tpw_endpoint_generation_tokens_per_second>={N}\*max_over_time",
        0.95,
        "tokens/s at least this fraction of its maximum",
    ),
    ThresholdSpec(
        "peak_queue",
        "TPWMemoryBandwidthBound",
        rf"\(min_over_time\(tpw_endpoint_requests_waiting{R}\)\)>={N}",
        1,
        "requests waiting, at least",
    ),
    ThresholdSpec(
        "memory_bound_share",
        "TPWMemoryBandwidthBound",
        rf'tpw_gpu_bound\{{bound="memory"\}}\)>={N}',
        0.5,
        "share of the endpoint's GPUs classified memory-bound",
    ),
    ThresholdSpec(
        "batch_fraction",
        "TPWBatchSizeDrop",
        rf"<{N}\*sum(?:by\([^)]*\))?\(avg_over_time\(tpw_endpoint_requests_running",
        0.7,
        "running batch below this fraction of before",
    ),
    ThresholdSpec(
        "batch_queue_rise",
        "TPWBatchSizeDrop",
        rf">={N}\+sum(?:by\([^)]*\))?\(avg_over_time\(tpw_endpoint_requests_waiting",
        10,
        "queue at least this many requests above before",
    ),
    ThresholdSpec(
        "efficiency_fraction",
        "TPWEfficiencyRegression",
        rf"<{N}\*\(avg_over_time\(tpw_endpoint_generation_tokens_per_second",
        0.85,
        "tokens per joule below this fraction of before",
    ),
    ThresholdSpec(
        "load_low",
        "TPWEfficiencyRegression",
        rf">={N}\*avg_over_time\(tpw_endpoint_requests_per_second",
        0.8,
        "request rate at least this fraction of before (comparable load)",
    ),
    ThresholdSpec(
        "load_high",
        "TPWEfficiencyRegression",
        rf"<={N}\*avg_over_time\(tpw_endpoint_requests_per_second",
        1.25,
        "request rate at most this multiple of before (comparable load)",
    ),
    ThresholdSpec(
        "leak_horizon_seconds",
        "TPWGpuMemoryLeak",
        rf"predict_linear\(tpw_gpu_memory_used_bytes{R},{N}\)",
        4 * 3600,
        "memory used, extrapolated this many seconds ahead, exceeds the memory installed",
    ),
    ThresholdSpec(
        "leak_tokens_fraction",
        "TPWGpuMemoryLeak",
        rf"<{N}\*avg_over_time\(tpw_endpoint_generation_tokens_per_second",
        0.9,
        "the alert's throughput fall: recent tokens/s below this fraction of the longer mean",
    ),
    ThresholdSpec(
        "thermal_fraction",
        "TPWGpuThrottling",
        rf'hw_power_brake_slowdown"\}}{R}\)>={N}',
        0.5,
        "thermal or hardware slowdown active at least this fraction of the time",
    ),
    ThresholdSpec(
        "power_cap_fraction",
        "TPWGpuThrottling",
        rf'reason="sw_power_cap"\}}{R}\)>={N}',
        0.9,
        "power cap active at least this fraction of the time",
    ),
    ThresholdSpec(
        "clock_fraction",
        "TPWGpuThrottling",
        rf"avg_over_time\(tpw_gpu_sm_clock_hertz{R}\)<{N}\*max_over_time",
        0.85,
        "SM clock below this fraction of its maximum",
    ),
)
SPEC_BY_KEY: dict[str, ThresholdSpec] = {spec.key: spec for spec in SPECS}
ALERTS: tuple[str, ...] = tuple(dict.fromkeys(spec.alert for spec in SPECS))


@dataclass(frozen=True)
class Thresholds:
    """Every threshold's value, where each came from, and the runbook URL of each alert found."""

    values: Mapping[str, float] = field(default_factory=lambda: {s.key: float(s.default) for s in SPECS})
    from_rules: frozenset[str] = frozenset()  # keys read from alert rules (the others are defaults)
    runbooks: Mapping[str, str] = field(default_factory=dict)  # alert → runbook_url of the loaded rule
    origin: str = "the alert rules loaded in Prometheus"

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    @property
    def source(self) -> str:
        if not self.from_rules:
            return "defaults (the shipped alert rules' values; no TPW alert rule found in Prometheus)"
        if len(self.from_rules) == len(SPECS):
            return f"{self.origin} (all {len(SPECS)})"
        return f"{self.origin} ({len(self.from_rules)} of {len(SPECS)}; the rest are the shipped defaults)"


def _value(text: str) -> float:
    product = 1.0
    for factor in text.split("*"):
        product *= float(factor)
    return product


def read(
    rules: Iterable[tuple[str, str, Mapping[str, Any]]], origin: str = "the alert rules loaded in Prometheus"
) -> Thresholds:
    """Thresholds from alert rules given as (alert name, expression, annotations)."""
    expressions: dict[str, list[str]] = {}
    runbooks: dict[str, str] = {}
    for name, expression, notes in rules:
        expressions.setdefault(name, []).append(re.sub(r"\s+", "", expression))
        url = notes.get("runbook_url") if isinstance(notes, Mapping) else None
        if isinstance(url, str) and url and name not in runbooks:
            runbooks[name] = url
    values = {spec.key: float(spec.default) for spec in SPECS}
    found: set[str] = set()
    for spec in SPECS:
        for expression in expressions.get(spec.alert, []):
            match = re.search(spec.pattern, expression)
            if match:
                value = _value(match.group(1))
                if math.isfinite(value):
                    values[spec.key] = value
                    found.add(spec.key)
                break
    return Thresholds(values, frozenset(found), runbooks, origin)


def rules_from_api(data: Any) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(name, query, annotations) of every alerting rule in a `/api/v1/rules` answer's data."""
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    groups = data.get("groups", []) if isinstance(data, Mapping) else []
    for group in groups if isinstance(groups, list) else []:
        for rule in group.get("rules", []) if isinstance(group, Mapping) else []:
            if isinstance(rule, Mapping) and rule.get("type") == "alerting":
                out.append(
                    (str(rule.get("name", "")), str(rule.get("query", "")), rule.get("annotations") or {})
                )
    return out


def rules_from_file(document: Any) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(name, expr, annotations) of every alerting rule in a parsed Prometheus rule file."""
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    for group in document.get("groups", []) if isinstance(document, Mapping) else []:
        for rule in group.get("rules", []):
            if "alert" in rule:
                out.append((str(rule["alert"]), str(rule["expr"]), rule.get("annotations") or {}))
    return out
