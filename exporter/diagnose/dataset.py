"""What diagnose reads from Prometheus: every tpw series it needs over the window, on one time grid.

The grid follows the scrapes. The scrape interval and phase are read from the raw samples of
`tpw_build_info`, and the range queries are evaluated a quarter interval after each scrape (at most 2 s),
so each step holds exactly one scrape and a change is dated to the scrape that first showed it. Long
windows keep at most `max_points` steps (a whole number of scrape intervals each).

Endpoint values are summed per endpoint (over `model`, `engine`, …); GPU values per GPU. Counters are
read as they are and differenced per step here, so tokens and joules, read by the exporter in the same
tick and scraped together, stay aligned step by step.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.diagnose.prometheus import Prometheus, PrometheusError, promql_string, regex_escape
from exporter.diagnose.stats import Values, increments, median
from exporter.diagnose.thresholds import Thresholds, read, rules_from_api

BY_NODE = "cluster, job, instance"
BY_ENDPOINT = f"{BY_NODE}, endpoint"
BY_GPU = f"{BY_NODE}, gpu"
THERMAL_REASONS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown", "hw_power_brake_slowdown")
POWER_CAP_REASON = "sw_power_cap"
# GPU error and memory-health metrics (XID, ECC, row remapping, retired pages), queried where present.
ERROR_METRICS_RE = "tpw_gpu_.*(xid|ecc|remap|retire).*"
DEFAULT_INTERVAL = 15.0

ENDPOINT_QUERIES: dict[str, str] = {
    "tokens": "sum by ({by}) (tpw_endpoint_generation_tokens_total{{{sel}}})",
    "energy": "sum by ({by}) (tpw_endpoint_energy_joules_total{{{sel}}})",
    "requests": "sum by ({by}) (tpw_endpoint_requests_total{{{sel}}})",
    "running": "sum by ({by}) (tpw_endpoint_requests_running{{{sel}}})",
    "waiting": "sum by ({by}) (tpw_endpoint_requests_waiting{{{sel}}})",
    "kv_cache": "max by ({by}) (tpw_endpoint_kv_cache_usage_ratio{{{sel}}})",
    "up": "max by ({by}) (tpw_endpoint_up{{{sel}}})",
    "start_time": "max by ({by}) (tpw_endpoint_process_start_time_seconds{{{sel}}})",
    "resets": "sum by ({by}) (tpw_endpoint_resets_total{{{sel}}})",
    # The raw NVML utilization of the endpoint's GPUs (not the exporter's window mean, which lags).
    "utilization": "avg by ({by}) (tpw_endpoint_gpu_info{{{sel}}} * on ({gpu_by}) group_left () "
    "max by ({gpu_by}) (tpw_gpu_utilization_ratio{{{node_sel}}}))",
    "gpu_count": "count by ({by}) (tpw_endpoint_gpu_info{{{sel}}} * on ({gpu_by}) group_left () "
    "max by ({gpu_by}) (tpw_gpu_utilization_ratio{{{node_sel}}}))",
}
GPU_QUERIES: dict[str, str] = {
    "utilization": "tpw_gpu_utilization_ratio",
    "sm_active": "tpw_gpu_sm_active_ratio",
    "tensor": "tpw_gpu_tensor_active_ratio",
    "dram": "tpw_gpu_dram_bandwidth_utilization_ratio",
    "power": "tpw_gpu_power_watts",
    "power_limit": "tpw_gpu_power_limit_watts",
    "sm_clock": "tpw_gpu_sm_clock_hertz",
    "temperature": "tpw_gpu_temperature_celsius",
    "memory_used": "tpw_gpu_memory_used_bytes",
    "memory_total": "tpw_gpu_memory_total_bytes",
    "up": "tpw_gpu_up",
}


@dataclass(frozen=True, order=True)
class Node:
    """A scrape target: the exporter of one node."""

    cluster: str
    job: str
    instance: str

    def __str__(self) -> str:
        return f"{self.cluster}/{self.instance}" if self.cluster else self.instance

    @classmethod
    def of(cls, labels: dict[str, str]) -> Node:
        return cls(labels.get("cluster", ""), labels.get("job", ""), labels.get("instance", ""))


@dataclass(frozen=True)
class Scope:
    """--node and --endpoint: which targets and endpoints to look at (None: all)."""

    node: str | None = None
    endpoint: str | None = None

    def node_matchers(self) -> list[str]:
        if not self.node:
            return []
        # "gpu-node-7" matches the instance "gpu-node-7" and "gpu-node-7:9835"
        return [f"instance=~{promql_string(regex_escape(self.node) + '(:[0-9]+)?')}"]

    def endpoint_matchers(self) -> list[str]:
        return self.node_matchers() + ([f"endpoint={promql_string(self.endpoint)}"] if self.endpoint else [])

    def describe(self) -> str:
        parts = []
        if self.node:
            parts.append(f"node {self.node}")
        if self.endpoint:
            parts.append(f"endpoint {self.endpoint}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Grid:
    """count steps of `step` seconds; query time i = start + i·step, shown as the scrape `offset` before."""

    start: float
    step: float
    count: int
    offset: float
    interval: float

    @functools.cached_property
    def times(self) -> list[float]:
        return [self.start - self.offset + i * self.step for i in range(self.count)]

    @property
    def query_end(self) -> float:
        return self.start + (self.count - 1) * self.step

    def index(self, query_time: float) -> int:
        return round((query_time - self.start) / self.step)

    def time(self, index: int) -> float:
        return self.start - self.offset + index * self.step

    @staticmethod
    def build(start: float, end: float, interval: float, phase: float, max_points: int = 1500) -> Grid:
        interval = interval if interval > 0 else DEFAULT_INTERVAL
        step = interval * max(1, math.ceil((end - start) / (interval * max_points)))
        offset = min(0.25 * interval, 2.0)
        first = phase + math.ceil((start - phase) / interval - 1e-9) * interval  # first scrape ≥ start
        count = max(1, int((end - first) // step) + 1)
        return Grid(first + offset, step, count, offset, interval)


@dataclass
class GpuData:
    node: Node
    gpu: str
    signals: dict[str, Values]
    bound: list[str | None]
    reasons: dict[str, Values]
    clock_max_1d: float | None = None
    errors: dict[str, Values] = field(default_factory=dict)  # series (metric{labels}) → values
    endpoints: set[str] = field(default_factory=set)

    def signal(self, name: str) -> Values:
        return self.signals.get(name) or [None] * len(self.bound)

    @property
    def label(self) -> str:
        return f"GPU {self.gpu}"


@dataclass
class EndpointData:
    node: Node
    name: str
    gpus: tuple[str, ...]
    signals: dict[str, Values]
    scrape_errors: dict[str, Values] = field(default_factory=dict)  # reason → counter values
    engine: str = ""
    models: tuple[str, ...] = ()

    def signal(self, name: str) -> Values:
        return self.signals.get(name) or [None] * self._count()

    def _count(self) -> int:
        return len(next(iter(self.signals.values()))) if self.signals else 0


@dataclass
class Rates:
    """Per-step values of an endpoint from its counters: step i covers (t[i−1], t[i]]."""

    usable: list[bool]  # the endpoint was up at both ends and its token counter present
    seconds: Values  # the step's length where usable
    tokens: Values  # tokens generated in the step
    energy: Values  # joules in the step (with tokens)
    requests: Values
    tokens_per_second: Values
    requests_per_second: Values
    watts: Values
    tokens_per_joule: Values


def rates(endpoint: EndpointData, step_seconds: Sequence[float]) -> Rates:
    up = endpoint.signal("up")
    tokens = increments(endpoint.signal("tokens"))
    energy = increments(endpoint.signal("energy"))
    requests = increments(endpoint.signal("requests"))
    n = len(tokens)
    usable = [
        i > 0 and tokens[i] is not None and (up[i] or 0) >= 1 and (up[i - 1] or 0) >= 1 for i in range(n)
    ]
    rt: Values = [None] * n
    rr: Values = [None] * n
    rw: Values = [None] * n
    tpj: Values = [None] * n
    used_energy: Values = [None] * n
    used_requests: Values = [None] * n
    used_tokens: Values = [None] * n
    used_seconds: Values = [None] * n
    for i in range(n):
        if not usable[i]:
            continue
        seconds = step_seconds[i]
        used_seconds[i] = seconds
        tok = tokens[i]
        assert tok is not None
        used_tokens[i] = tok
        rt[i] = tok / seconds
        if (req := requests[i]) is not None:
            used_requests[i] = req
            rr[i] = req / seconds
        if (joules := energy[i]) is not None and joules > 0:
            used_energy[i] = joules
            rw[i] = joules / seconds
            tpj[i] = tok / joules
    return Rates(usable, used_seconds, used_tokens, used_energy, used_requests, rt, rr, rw, tpj)


@dataclass(frozen=True)
class FiredAlert:
    """A TPW alert that was firing in the window (Prometheus's ALERTS series), first to last sample."""

    name: str
    labels: dict[str, str]
    start: float
    end: float | None  # None: still firing at the end of the window


@dataclass
class Dataset:
    prometheus: str
    window_start: float
    window_end: float
    grid: Grid
    scope: Scope
    thresholds: Thresholds
    nodes: list[Node]
    target_up: dict[Node, Values]
    nvml_up: dict[Node, Values]
    gpus: list[GpuData]
    endpoints: list[EndpointData]
    error_metrics: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    alerts: list[FiredAlert] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return self.grid.times

    def step_seconds(self) -> list[float]:
        return [self.grid.step] * self.grid.count

    def gpu(self, node: Node, gpu: str) -> GpuData | None:
        for data in self.gpus:
            if data.node == node and data.gpu == gpu:
                return data
        return None


class NoData(Exception):
    """Prometheus answered, but holds no tpw series for the window and scope."""


def _selector(matchers: Sequence[str]) -> str:
    return ", ".join(matchers)


def _fill(
    result: list[dict[str, Any]], grid: Grid, key: Callable[[dict[str, str]], Any]
) -> dict[Any, Values]:
    out: dict[Any, Values] = {}
    for item in result:
        values = out.setdefault(key(item.get("metric", {})), [None] * grid.count)
        for ts, text in item.get("values", []):
            i = grid.index(float(ts))
            if 0 <= i < grid.count:
                value = float(text)
                if math.isfinite(value):
                    values[i] = value
    return out


def scrape_interval(
    prom: Prometheus, matchers: Sequence[str], start: float, end: float
) -> tuple[float, float]:
    """(interval, a scrape timestamp) from the raw samples of tpw_build_info; (15 s, start) if unknown."""
    span = max(60, min(600, int(end - start)))
    selector = f"tpw_build_info{{{_selector(matchers)}}}[{span}s]"
    for at in (end, min(end, start + span), (start + end) / 2):
        best: list[float] = []
        for item in prom.query(selector, at):
            stamps = [float(ts) for ts, _ in item.get("values", [])]
            if len(stamps) > len(best):
                best = stamps
        if len(best) >= 2:
            diffs = [b - a for a, b in itertools.pairwise(best) if b > a]
            interval = median(diffs) or DEFAULT_INTERVAL
            return round(interval, 3), best[-1]
    return DEFAULT_INTERVAL, start


def load(
    prom: Prometheus,
    start: float,
    end: float,
    scope: Scope,
    max_points: int = 1500,
    thresholds: Thresholds | None = None,
) -> Dataset:
    """Everything the detectors need; NoData when the window holds no tpw series for the scope."""
    node_matchers = scope.node_matchers()
    endpoint_matchers = scope.endpoint_matchers()
    node_sel = _selector(node_matchers)
    endpoint_sel = _selector(endpoint_matchers)
    present = prom.series(
        [f'{{__name__=~"tpw_(build_info|gpu_up|endpoint_up)"{", " + node_sel if node_sel else ""}}}'],
        start,
        end,
    )
    if not present:
        raise NoData("no tpw_ series")
    endpoint_series = prom.series(
        [
            f"tpw_endpoint_up{{{endpoint_sel}}}",
            f"tpw_endpoint_gpu_info{{{endpoint_sel}}}",
            f"tpw_endpoint_energy_joules_total{{{endpoint_sel}}}",
        ],
        start,
        end,
    )
    if scope.endpoint and not endpoint_series:
        raise NoData(f"no tpw_ series of endpoint {scope.endpoint}")
    endpoint_gpus: dict[tuple[Node, str], set[str]] = {}
    engines: dict[tuple[Node, str], str] = {}
    models: dict[tuple[Node, str], set[str]] = {}
    for labels in endpoint_series:
        key = (Node.of(labels), labels.get("endpoint", ""))
        endpoint_gpus.setdefault(key, set())
        if labels.get("__name__") == "tpw_endpoint_gpu_info" and "gpu" in labels:
            endpoint_gpus[key].add(labels["gpu"])
        if labels.get("__name__") == "tpw_endpoint_up" and labels.get("engine"):
            engines[key] = labels["engine"]
        if labels.get("__name__") == "tpw_endpoint_energy_joules_total" and labels.get("model"):
            models.setdefault(key, set()).add(labels["model"])
    nodes = sorted({Node.of(labels) for labels in present})
    if scope.endpoint:
        nodes = sorted({node for node, _ in endpoint_gpus})

    interval, phase = scrape_interval(prom, node_matchers, start, end)
    grid = Grid.build(start, end, interval, phase, max_points)

    def matrix(expr: str) -> list[dict[str, Any]]:
        return prom.query_range(expr, grid.start, grid.query_end, grid.step)

    if thresholds is None:
        rules = prom.alerting_rules()
        thresholds = read(rules_from_api(rules)) if rules is not None else read([])

    def endpoint_key(labels: dict[str, str]) -> tuple[Node, str]:
        return (Node.of(labels), labels.get("endpoint", ""))

    endpoint_signals: dict[tuple[Node, str], dict[str, Values]] = {}
    for name, template in ENDPOINT_QUERIES.items():
        expr = template.format(by=BY_ENDPOINT, sel=endpoint_sel, gpu_by=BY_GPU, node_sel=node_sel)
        for key, values in _fill(matrix(expr), grid, endpoint_key).items():
            endpoint_signals.setdefault(key, {})[name] = values
    scrape_errors: dict[tuple[Node, str], dict[str, Values]] = {}
    errors_expr = f"sum by ({BY_ENDPOINT}, reason) (tpw_endpoint_scrape_errors_total{{{endpoint_sel}}})"
    for (key, reason), values in _fill(
        matrix(errors_expr), grid, lambda m: (endpoint_key(m), m.get("reason", ""))
    ).items():
        scrape_errors.setdefault(key, {})[reason] = values

    endpoints = [
        EndpointData(
            node=node,
            name=name,
            gpus=tuple(sorted(endpoint_gpus.get((node, name), set()), key=_gpu_order)),
            signals=signals,
            scrape_errors=scrape_errors.get((node, name), {}),
            engine=engines.get((node, name), ""),
            models=tuple(sorted(models.get((node, name), set()))),
        )
        for (node, name), signals in sorted(endpoint_signals.items())
        if node in nodes
    ]

    def gpu_key(labels: dict[str, str]) -> tuple[Node, str]:
        return (Node.of(labels), labels.get("gpu", ""))

    gpu_signals: dict[tuple[Node, str], dict[str, Values]] = {}
    for name, metric in GPU_QUERIES.items():
        expr = f"max by ({BY_GPU}) ({metric}{{{node_sel}}})"
        for key, values in _fill(matrix(expr), grid, gpu_key).items():
            gpu_signals.setdefault(key, {})[name] = values
    bounds: dict[tuple[Node, str], list[str | None]] = {}
    bound_expr = f"max by ({BY_GPU}, bound) (tpw_gpu_bound{{{node_sel}}}) == 1"
    for (key, state), values in _fill(
        matrix(bound_expr), grid, lambda m: (gpu_key(m), m.get("bound"))
    ).items():
        states = bounds.setdefault(key, [None] * grid.count)
        for i, value in enumerate(values):
            if value is not None:
                states[i] = state
    reasons: dict[tuple[Node, str], dict[str, Values]] = {}
    reason_re = "|".join((*THERMAL_REASONS, POWER_CAP_REASON))
    reason_sel = ", ".join([*node_matchers, f'reason=~"{reason_re}"'])
    reason_expr = f"max by ({BY_GPU}, reason) (tpw_gpu_clock_event_active{{{reason_sel}}})"
    for (key, reason), values in _fill(
        matrix(reason_expr), grid, lambda m: (gpu_key(m), m.get("reason", ""))
    ).items():
        reasons.setdefault(key, {})[reason] = values
    clock_max: dict[tuple[Node, str], float] = {}
    clock_expr = f"max by ({BY_GPU}) (max_over_time(tpw_gpu_sm_clock_hertz{{{node_sel}}}[1d]))"
    for item in prom.query(clock_expr, grid.query_end):
        value = float(item.get("value", [0, "nan"])[1])
        if math.isfinite(value):
            clock_max[gpu_key(item.get("metric", {}))] = value

    error_metrics = sorted(
        prom.label_values(
            "__name__",
            [f"{{__name__=~{promql_string(ERROR_METRICS_RE)}{', ' + node_sel if node_sel else ''}}}"],
            start,
            end,
        )
    )
    errors: dict[tuple[Node, str], dict[str, Values]] = {}
    for metric in error_metrics:

        def error_key(labels: dict[str, str], metric: str = metric) -> tuple[tuple[Node, str], str]:
            rest = {
                k: v for k, v in labels.items() if k not in ("__name__", "cluster", "job", "instance", "gpu")
            }
            shown = ",".join(f'{k}="{v}"' for k, v in sorted(rest.items()))
            return gpu_key(labels), f"{metric}{{{shown}}}" if shown else metric

        for (key, series), values in _fill(matrix(f"{metric}{{{node_sel}}}"), grid, error_key).items():
            errors.setdefault(key, {})[series] = values

    served: dict[tuple[Node, str], set[str]] = {}
    for endpoint in endpoints:
        for gpu in endpoint.gpus:
            served.setdefault((endpoint.node, gpu), set()).add(endpoint.name)
    keys = set(gpu_signals) | set(bounds) | set(reasons)
    gpus = [
        GpuData(
            node=node,
            gpu=gpu,
            signals=gpu_signals.get((node, gpu), {}),
            bound=bounds.get((node, gpu), [None] * grid.count),
            reasons=reasons.get((node, gpu), {}),
            clock_max_1d=clock_max.get((node, gpu)),
            errors=errors.get((node, gpu), {}),
            endpoints=served.get((node, gpu), set()),
        )
        for node, gpu in sorted(keys, key=lambda k: (k[0], _gpu_order(k[1])))
        if node in nodes and (not scope.endpoint or (node, gpu) in served)
    ]

    target_up = {
        node: values
        for node, values in _fill(matrix(f"max by ({BY_NODE}) (up{{{node_sel}}})"), grid, Node.of).items()
        if node in nodes
    }
    nvml_sel = ", ".join([*node_matchers, 'source="nvml"'])
    nvml_up = {
        node: values
        for node, values in _fill(
            matrix(f"max by ({BY_NODE}) (tpw_source_up{{{nvml_sel}}})"), grid, Node.of
        ).items()
        if node in nodes
    }
    alerts = []
    alerts_sel = ", ".join(['alertname=~"TPW.*"', 'alertstate="firing"', *node_matchers])
    for item in matrix(f"ALERTS{{{alerts_sel}}}"):
        labels = {k: v for k, v in item.get("metric", {}).items() if k not in ("__name__", "alertstate")}
        stamps = sorted(grid.index(float(ts)) for ts, _ in item.get("values", []))
        stamps = [i for i in stamps if 0 <= i < grid.count]
        if not stamps:
            continue
        # one entry per firing stretch (a gap of more than one step ends it)
        stretches: list[list[int]] = []
        for i in stamps:
            if stretches and i - stretches[-1][-1] <= 1:
                stretches[-1].append(i)
            else:
                stretches.append([i])
        for stretch in stretches:
            until = None if stretch[-1] >= grid.count - 1 else grid.time(stretch[-1] + 1)
            alerts.append(FiredAlert(labels.get("alertname", ""), labels, grid.time(stretch[0]), until))
    alerts.sort(key=lambda a: (a.start, a.name))
    notes = []
    if not error_metrics:
        notes.append(
            "no GPU error metrics (XID, ECC, row remapping) in this Prometheus for the window: not checked"
        )
    return Dataset(
        prometheus=prom.shown,
        window_start=start,
        window_end=end,
        grid=grid,
        scope=scope,
        thresholds=thresholds,
        nodes=nodes,
        target_up=target_up,
        nvml_up=nvml_up,
        gpus=gpus,
        endpoints=endpoints,
        error_metrics=error_metrics,
        notes=notes,
        alerts=alerts,
    )


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


__all__ = [
    "Dataset",
    "EndpointData",
    "GpuData",
    "Grid",
    "NoData",
    "Node",
    "PrometheusError",
    "Rates",
    "Scope",
    "load",
    "rates",
]
