"""The product's failure patterns, found in a window of series (one detector per pattern).

Each detector reads a `Dataset` (every series on one grid of scrapes) and returns `Finding`s: which
pattern, where (node, endpoint, GPUs), when it started (the first scrape that showed it) and ended (the
first scrape that no longer did; None while it lasts to the end of the window), the numbers that support
it, and what to check next. The thresholds are the alert rules' (`thresholds.py`); the durations are
diagnose's own: an episode must last `min_duration` seconds (`--min-duration`).

The patterns (README.md, "On call: diagnose"; docs/diagnose.md gives each criterion):

  gpu-errors             XID / ECC / row-remapping counters that rose (where the exporter serves them)
  gpu-down               tpw_gpu_up 0, or NVML unavailable
  exporter-down          Prometheus could not scrape the exporter (`up` 0)
  endpoint-down          tpw_endpoint_up 0: the engine's page unreadable
  throttling             thermal / hardware slowdown, or the power cap with the SM clock ≥ 15 % down
  efficiency-regression  tokens per joule fell ≥ 15 % in a step at a comparable request rate
  batch-size-drop        the running batch fell below 70 % while the queue rose, GPUs not starved
  memory-leak            GPU memory climbing to fill within 4 h while the endpoint's tokens/s falls
  busy-but-flat          GPUs ≥ 85 % busy, queue growing ≥ 10, tokens/s flat (≤ +10 %)
  input-bound            GPUs < 30 % busy with requests in flight all along
  bandwidth-bound        memory-bound GPUs at ≥ 95 % of the window's peak tokens/s with a queue
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.diagnose.dataset import (
    POWER_CAP_REASON,
    THERMAL_REASONS,
    Dataset,
    EndpointData,
    GpuData,
    Node,
    Rates,
    rates,
)
from exporter.diagnose.stats import (
    Segment,
    Values,
    fit_series,
    increments,
    linear_fit,
    maximum,
    mean,
    median,
    median3,
    present,
    runs,
    segments,
)

GIB = 1024**3


@dataclass(frozen=True)
class Pattern:
    severity: str  # critical | warning | info
    alert: str  # the alert of deploy/prometheus/rules/alerts.yml for the same pattern
    priority: int  # most likely cause first: causes (hardware, deploys) above their symptoms


PATTERNS: dict[str, Pattern] = {
    "gpu-errors": Pattern("critical", "TPWGpuDown", 100),
    "gpu-down": Pattern("critical", "TPWGpuDown", 95),
    "exporter-down": Pattern("warning", "TPWExporterDown", 90),
    "endpoint-down": Pattern("critical", "TPWEndpointDown", 85),
    "throttling": Pattern("warning", "TPWGpuThrottling", 70),
    "efficiency-regression": Pattern("warning", "TPWEfficiencyRegression", 60),
    "batch-size-drop": Pattern("warning", "TPWBatchSizeDrop", 55),
    "memory-leak": Pattern("warning", "TPWGpuMemoryLeak", 50),
    "busy-but-flat": Pattern("warning", "TPWBusyButFlat", 45),
    "input-bound": Pattern("warning", "TPWUnderUtilized", 40),
    "bandwidth-bound": Pattern("info", "TPWMemoryBandwidthBound", 30),
}
ONGOING_BONUS = 50  # a pattern still present at the end of the window ranks above past ones
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/tpw-exporter/tpw-exporter/blob/main/docs/runbooks/"


@dataclass
class Finding:
    pattern: str
    title: str
    node: Node
    endpoint: str | None
    gpus: tuple[str, ...]
    start: float
    end: float | None  # None: still present at the end of the window
    evidence: dict[str, Any]
    lines: list[str]
    next_check: str
    severity: str = ""
    alert: str = ""
    priority: int = 0
    rank: int = 0
    related: list[int] = field(default_factory=list)
    runbook: str = ""

    def __post_init__(self) -> None:
        pattern = PATTERNS[self.pattern]
        self.severity = self.severity or pattern.severity
        self.alert = self.alert or pattern.alert
        self.priority = self.priority or pattern.priority

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def score(self) -> int:
        return self.priority + (ONGOING_BONUS if self.ongoing else 0)


@dataclass(frozen=True)
class Context:
    data: Dataset
    min_duration: float
    clock: Callable[[float], str]  # a time as the report shows it

    @property
    def times(self) -> list[float]:
        return self.data.times

    @property
    def step(self) -> float:
        return self.data.grid.step

    def th(self, key: str) -> float:
        return self.data.thresholds[key]

    def min_steps(self) -> int:
        return max(3, math.ceil(self.min_duration / self.step - 1e-9))

    def lasts(self, first: int, last: int) -> bool:
        """The samples first..last span at least min_duration (each sample stands for one step)."""
        return self.times[last] - self.times[first] + self.step >= self.min_duration - 1e-9

    def end_of(self, last: int) -> float | None:
        """The episode's last sample was `last`: it ended at the next sample, or lasts to the window's end."""
        return None if last >= len(self.times) - 1 else self.times[last + 1]


# -- formatting ----------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 3) -> str:
    """A number for a sentence: 3 significant digits, thousands grouped."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if value == round(value) and abs(value) < 1e15:
        return f"{round(value):,}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def pct(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value * 100:+.1f} %" if signed else f"{value * 100:.0f} %"
    return text.replace("-", "−")


def change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return after / before - 1


def gpu_list(gpus: Sequence[str]) -> str:
    if not gpus:
        return "no GPU attributed"
    return ("GPU " if len(gpus) == 1 else "GPUs ") + ", ".join(gpus)


def _mean_range(values: Values, lo: int, hi: int) -> float | None:
    return mean(values[lo:hi])


def _ratio_of_sums(numerator: Values, denominator: Values, lo: int, hi: int) -> float | None:
    top = bottom = 0.0
    for i in range(lo, hi):
        a, b = numerator[i], denominator[i]
        if a is not None and b is not None:
            top += a
            bottom += b
    return top / bottom if bottom > 0 else None


def _gpu_series(data: Dataset, endpoint: EndpointData, name: str) -> list[Values]:
    out = []
    for gpu in endpoint.gpus:
        found = data.gpu(endpoint.node, gpu)
        if found is not None:
            out.append(found.signal(name))
    return out


def _avg_over(series: list[Values], count: int) -> Values:
    out: Values = []
    for i in range(count):
        values = present(s[i] for s in series)
        out.append(sum(values) / len(values) if values else None)
    return out


def busy_gpu_seconds_rate(endpoint: EndpointData, r: Rates) -> Values:
    """Tokens per busy GPU-second per step: tokens/s ÷ (mean utilization × number of GPUs)."""
    util = endpoint.signal("utilization")
    count = endpoint.signal("gpu_count")
    out: Values = []
    for i, tps in enumerate(r.tokens_per_second):
        u, c = util[i], count[i]
        out.append(tps / (u * c) if tps is not None and u and c else None)
    return out


def restarts(endpoint: EndpointData) -> list[int]:
    """Grid indices where the engine restarted: its process start time changed, the exporter counted a
    counter reset, or the token counter went backwards."""
    found: set[int] = set()
    start = endpoint.signal("start_time")
    previous = None
    for i, value in enumerate(start):
        if value is None:
            continue
        if previous is not None and abs(value - previous) > 0.5:
            found.add(i)
        previous = value
    resets = increments(endpoint.signal("resets"))
    tokens = endpoint.signal("tokens")
    for i in range(1, len(tokens)):
        if (resets[i] or 0) > 0:
            found.add(i)
        a, b = tokens[i - 1], tokens[i]
        if a is not None and b is not None and b < a:
            found.add(i)
    return sorted(found)


def _restart_note(ctx: Context, endpoint: EndpointData, index: int) -> tuple[float | None, str]:
    """The restart nearest the onset (within two steps), as evidence."""
    near = [i for i in restarts(endpoint) if abs(i - index) <= 2]
    if not near:
        return None, ""
    at = ctx.times[near[0]]
    started = endpoint.signal("start_time")[near[0]]
    detail = f"process start time {ctx.clock(started)}" if started else "its counters reset"
    return at, f"the engine restarted at {ctx.clock(at)} ({detail}): a deploy or config change?"


# -- endpoint patterns -----------------------------------------------------------------------------------


def detect_endpoint_down(ctx: Context) -> list[Finding]:
    findings = []
    for endpoint in ctx.data.endpoints:
        up = endpoint.signal("up")
        for first, last in runs([None if v is None else v < 1 for v in up]):
            if last - first + 1 < 2:
                continue
            errors: dict[str, float] = {}
            for reason, counter in sorted(endpoint.scrape_errors.items()):
                added = sum(v for v in increments(counter)[first : last + 2] if v)
                if added > 0:
                    errors[reason] = added
            reasons = [f"{reason} ×{num(count)}" for reason, count in errors.items()]
            findings.append(
                Finding(
                    "endpoint-down",
                    f"Endpoint {endpoint.name} down: its metrics page could not be read",
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[first],
                    ctx.end_of(last),
                    {"scrape_errors": errors},
                    [
                        f"tpw_endpoint_up 0 for {duration(ctx, first, last)}; scrape errors: "
                        + (", ".join(reasons) if reasons else "none counted")
                    ],
                    "is the engine running? its service/pod log; `curl` its metrics URL from the node "
                    "(connect: not running or still loading; http_status: answering errors; timeout: hung)",
                )
            )
    return findings


def detect_busy_but_flat(ctx: Context) -> list[Finding]:
    """GPUs ≥ 85 % busy while the queue grows ≥ 10 and tokens/s rises ≤ 10 % of its mean."""
    findings = []
    for endpoint in ctx.data.endpoints:
        waiting = endpoint.signal("waiting")
        util = endpoint.signal("utilization")
        r = rates(endpoint, ctx.data.step_seconds())
        for onset, peak in queue_episodes(waiting, ctx.th("busy_queue_growth")):
            if not ctx.lasts(onset, peak):
                continue
            busy = median(util[onset : peak + 1])
            if busy is None or busy < ctx.th("busy_utilization"):
                continue
            # tokens/s from the second step on: the first mixes the state before the onset
            tps = r.tokens_per_second
            points = [i for i in range(onset + 1, peak + 1) if tps[i] is not None]
            if len(points) < 2:
                continue
            level = mean(tps[i] for i in points)
            fit = fit_series(ctx.times, tps, onset + 1, peak + 1)
            if fit is not None:
                rise = fit.slope * (ctx.times[points[-1]] - ctx.times[points[0]])
            else:
                rise = (tps[points[-1]] or 0) - (tps[points[0]] or 0)
            if level is None or level <= 0 or rise > ctx.th("busy_tokens_rise") * level:
                continue
            base = waiting[onset - 1] if onset > 0 and waiting[onset - 1] is not None else waiting[onset]
            top = waiting[peak]
            running = endpoint.signal("running")
            batch = maximum(running[onset : peak + 1])
            kv = maximum(endpoint.signal("kv_cache")[onset : peak + 1])
            tbgs = mean(busy_gpu_seconds_rate(endpoint, r)[onset + 1 : peak + 1])
            evidence: dict[str, Any] = {
                "utilization": busy,
                "waiting_before": base,
                "waiting_peak": top,
                "tokens_per_second": level,
                "tokens_per_second_change": rise / level,
                "running_max": batch,
                "kv_cache_usage_max": kv,
                "tokens_per_busy_gpu_second": tbgs,
            }
            ceiling = ""
            if kv is not None and kv >= 0.9:
                ceiling = f"; the KV cache is {pct(kv)} full, so the batch cannot grow"
            elif batch is not None:
                ceiling = f"; the batch peaks at {num(batch)} running (the engine's max_num_seqs?)"
            findings.append(
                Finding(
                    "busy-but-flat",
                    "Busy but flat: GPUs busy, throughput flat, queue growing (batching is not keeping up)",
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[onset],
                    ctx.end_of(peak),
                    evidence,
                    [
                        f"GPU utilization {pct(busy)} (alert: ≥ {pct(ctx.th('busy_utilization'))}); "
                        f"queue {num(base)} → {num(top)} waiting (+{num((top or 0) - (base or 0))}, alert: "
                        f"+{num(ctx.th('busy_queue_growth'))})",
                        f"tokens/s {num(level)}, {pct(rise / level, signed=True)} over the episode "
                        f"(alert: ≤ +{pct(ctx.th('busy_tokens_rise'))}); running ≤ {num(batch)}"
                        f"{'' if kv is None else f', KV cache ≤ {pct(kv)}'}",
                    ],
                    "is the batch at its ceiling (max_num_seqs) or the KV cache full"
                    + ceiling
                    + "? add replicas or shed load now; if the running batch fell instead, it is a "
                    "batch-size drop; slower steps point to throttling or a deploy",
                )
            )
    return findings


def queue_episodes(waiting: Values, min_rise: float) -> list[tuple[int, int]]:
    """(onset, peak) index pairs where the queue grew by at least `min_rise`: from the sample where the
    rise began to its highest point before it fell back (by more than a quarter of the rise, or 2). A queue
    already above 0 and growing at the window's first sample grew from before: its onset is that sample."""
    out = []
    start = peak = -1
    first = next((j for j, w in enumerate(waiting) if w is not None), -1)
    for j, w in enumerate(waiting):
        if w is None:
            continue
        if start < 0:
            start = peak = j
            continue
        base, top = waiting[start], waiting[peak]
        assert base is not None and top is not None
        if w < base or (peak == start and w <= base):
            start = peak = j
        elif w > top:
            peak = j
        elif w < top - max(2.0, 0.25 * (top - base)):
            if top - base >= min_rise:
                out.append(_onset(waiting, start, peak, min_rise, start == first))
            start = peak = j
    if start >= 0:
        base, top = waiting[start], waiting[peak]
        if base is not None and top is not None and top - base >= min_rise:
            out.append(_onset(waiting, start, peak, min_rise, start == first))
    return out


def _onset(waiting: Values, start: int, peak: int, min_rise: float, at_window_start: bool) -> tuple[int, int]:
    """The rise starts after the last sample still at the base level (within a tenth of `min_rise`)."""
    base = waiting[start]
    assert base is not None
    if at_window_start and base > 0:
        following = next((w for w in waiting[start + 1 : peak + 1] if w is not None), None)
        if following is not None and following > base + 0.1 * min_rise:
            return start, peak
    last_low = start
    for i in range(start, peak + 1):
        w = waiting[i]
        if w is not None and w <= base + 0.1 * min_rise:
            last_low = i
    return last_low + 1, peak


def detect_input_bound(ctx: Context) -> list[Finding]:
    """GPUs < 30 % busy at every sample while requests are running or waiting."""
    findings = []
    low, in_flight = ctx.th("under_utilization"), ctx.th("under_in_flight")
    for endpoint in ctx.data.endpoints:
        util = endpoint.signal("utilization")
        running, waiting, up = endpoint.signal("running"), endpoint.signal("waiting"), endpoint.signal("up")
        mask: list[bool | None] = []
        for i in range(len(util)):
            if util[i] is None or (up[i] or 0) < 1:
                mask.append(None)
                continue
            busy_enough = util[i] >= low  # type: ignore[operator]
            work = (running[i] or 0) >= in_flight or (waiting[i] or 0) >= in_flight
            mask.append(not busy_enough and work)
        for first, last in runs(mask):
            if not ctx.lasts(first, last):
                continue
            r = rates(endpoint, ctx.data.step_seconds())
            sm = _avg_over(_gpu_series(ctx.data, endpoint, "sm_active"), len(util))
            evidence: dict[str, Any] = {
                "utilization": mean(util[first : last + 1]),
                "sm_active": mean(sm[first : last + 1]),
                "running": mean(running[first : last + 1]),
                "waiting": mean(waiting[first : last + 1]),
                "tokens_per_second": mean(r.tokens_per_second[first + 1 : last + 1]),
                "power_watts": mean(r.watts[first + 1 : last + 1]),
            }
            findings.append(
                Finding(
                    "input-bound",
                    "Input/CPU-bound: GPUs mostly idle with requests in flight (the host starves them)",
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[first],
                    ctx.end_of(last),
                    evidence,
                    [
                        f"GPU utilization {pct(evidence['utilization'])} (alert: < {pct(low)}), SM activity "
                        f"{pct(evidence['sm_active'])}, with {num(evidence['running'])} running and "
                        f"{num(evidence['waiting'])} waiting at every sample",
                        f"tokens/s {num(evidence['tokens_per_second'])} at {num(evidence['power_watts'])} W",
                    ],
                    "the engine process's CPU: one thread at 100 % (`top -H -p PID`, "
                    "`py-spy top --pid PID`), a container CPU limit (cpu.stat nr_throttled), tokenizer or "
                    "input pipeline",
                )
            )
    return findings


def detect_bandwidth_bound(ctx: Context) -> list[Finding]:
    """Memory-bound GPUs at ≥ 95 % of the window's maximum tokens/s with requests queued."""
    findings = []
    for endpoint in ctx.data.endpoints:
        r = rates(endpoint, ctx.data.step_seconds())
        tps = median3(r.tokens_per_second)
        peak = maximum(tps)
        if not peak or peak <= 0:
            continue
        waiting = endpoint.signal("waiting")
        gpus = [g for g in (ctx.data.gpu(endpoint.node, gpu) for gpu in endpoint.gpus) if g is not None]
        if not gpus:
            continue
        mask: list[bool | None] = []
        shares: Values = []
        for i in range(len(tps)):
            states = [g.bound[i] for g in gpus if g.bound[i] is not None]
            share = sum(s == "memory" for s in states) / len(states) if states else None
            shares.append(share)
            if tps[i] is None or share is None or waiting[i] is None:
                mask.append(None)
                continue
            mask.append(
                tps[i] >= ctx.th("peak_fraction") * peak  # type: ignore[operator]
                and (waiting[i] or 0) >= ctx.th("peak_queue")
                and share >= ctx.th("memory_bound_share")
            )
        for first, last in runs(mask):
            if not ctx.lasts(first, last) or _falling(ctx, r.tokens_per_second, first + 1, last + 1):
                continue  # a throughput in decline is not a ceiling (a leak, throttling): not "at peak"
            dram = _avg_over([g.signal("dram") for g in gpus], len(tps))
            util = endpoint.signal("utilization")
            sm = _avg_over([g.signal("sm_active") for g in gpus], len(tps))
            tensor = _avg_over([g.signal("tensor") for g in gpus], len(tps))
            evidence: dict[str, Any] = {
                "tokens_per_second": mean(r.tokens_per_second[first : last + 1]),
                "tokens_per_second_max": peak,
                "waiting": mean(waiting[first : last + 1]),
                "memory_bound_share": mean(shares[first : last + 1]),
                "dram_bandwidth_utilization": mean(dram[first : last + 1]),
                "tensor_active": mean(tensor[first : last + 1]),
                "sm_active": mean(sm[first : last + 1]),
                "utilization": mean(util[first : last + 1]),
                "kv_cache_usage": mean(endpoint.signal("kv_cache")[first : last + 1]),
            }
            findings.append(
                Finding(
                    "bandwidth-bound",
                    "Bandwidth-bound at peak: at maximum throughput, memory-bound, with a queue "
                    "(more load will not help)",
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[first],
                    ctx.end_of(last),
                    evidence,
                    [
                        f"tokens/s {num(evidence['tokens_per_second'])}, ≥ {pct(ctx.th('peak_fraction'))} "
                        f"of the window's maximum {num(peak)}, with {num(evidence['waiting'])} waiting",
                        f"{pct(evidence['memory_bound_share'])} of its GPUs memory-bound: DRAM bandwidth "
                        f"{pct(evidence['dram_bandwidth_utilization'])}, tensor pipes "
                        f"{pct(evidence['tensor_active'])}, SM activity {pct(evidence['sm_active'])} "
                        f"(NVML says {pct(evidence['utilization'])} busy)",
                    ],
                    "this replica is at its memory-bandwidth ceiling: add replicas or route traffic away "
                    "now; then quantize weights or KV cache, raise the batch if the KV cache has room"
                    + (
                        f" (KV cache {pct(evidence['kv_cache_usage'])} full)"
                        if evidence["kv_cache_usage"] is not None
                        else ""
                    ),
                )
            )
    return findings


def _falling(ctx: Context, values: Values, lo: int, hi: int, by: float = 0.02) -> bool:
    """A clear downward trend over values[lo:hi]: t ≤ −3 and a fall of at least `by` of the mean."""
    fit = fit_series(ctx.times, values, lo, hi)
    level = _mean_range(values, lo, hi)
    if fit is None or not level:
        return False
    points = [i for i in range(lo, hi) if values[i] is not None]
    fall = -fit.slope * (ctx.times[points[-1]] - ctx.times[points[0]]) / level
    return fit.t_stat <= -3 and fall >= by


def detect_efficiency_regression(ctx: Context) -> list[Finding]:
    """Tokens per joule down ≥ 15 % from one stretch to the next at a comparable request rate; an engine
    restart always starts a new stretch (a deploy)."""
    findings = []
    fraction = ctx.th("efficiency_fraction")
    for endpoint in ctx.data.endpoints:
        r = rates(endpoint, ctx.data.step_seconds())
        if not present(r.tokens_per_joule):
            continue
        marks = restarts(endpoint)
        parts = segments(
            r.tokens_per_joule, r.energy, min_len=ctx.min_steps(), min_rel_change=0.03, forced=marks
        )
        for k, (before, after) in enumerate(itertools.pairwise(parts)):
            if before.count < ctx.min_steps() or after.count < ctx.min_steps():
                continue
            if before.mean <= 0 or after.mean >= fraction * before.mean:
                continue
            load = _load_ratio(r, before, after)
            if load is None or not ctx.th("load_low") <= load <= ctx.th("load_high"):
                continue
            end = None
            for later in parts[k + 2 :]:
                if later.mean >= fraction * before.mean:
                    end = ctx.times[later.lo]
                    break
            restarted_at, restart_line = _restart_note(ctx, endpoint, after.lo)
            util = endpoint.signal("utilization")
            evidence: dict[str, Any] = {
                "tokens_per_joule_before": before.mean,
                "tokens_per_joule_after": after.mean,
                "tokens_per_joule_change": after.mean / before.mean - 1,
                "request_rate_ratio": load,
                "requests_per_second_before": _ratio_of_sums(r.requests, r.seconds, before.lo, before.hi),
                "requests_per_second_after": _ratio_of_sums(r.requests, r.seconds, after.lo, after.hi),
                "tokens_per_second_before": _ratio_of_sums(r.tokens, r.seconds, before.lo, before.hi),
                "tokens_per_second_after": _ratio_of_sums(r.tokens, r.seconds, after.lo, after.hi),
                "power_watts_before": _ratio_of_sums(r.energy, r.seconds, before.lo, before.hi),
                "power_watts_after": _ratio_of_sums(r.energy, r.seconds, after.lo, after.hi),
                "utilization_before": _mean_range(util, before.lo, before.hi),
                "utilization_after": _mean_range(util, after.lo, after.hi),
                "restart_at": restarted_at,
            }
            title = "Efficiency regression: tokens per joule down at the same load"
            if restarted_at is not None:
                title = "Efficiency regression after a restart: tokens per joule down at the same load"
            lines = [
                f"tokens per joule {num(before.mean)} → {num(after.mean)} "
                f"({pct(evidence['tokens_per_joule_change'], signed=True)}; alert: "
                f"{pct(fraction - 1, signed=True)}) at a comparable request rate "
                f"{num(evidence['requests_per_second_before'])} → "
                f"{num(evidence['requests_per_second_after'])}/s",
                f"power {num(evidence['power_watts_before'])} → {num(evidence['power_watts_after'])} W, "
                f"tokens/s {num(evidence['tokens_per_second_before'])} → "
                f"{num(evidence['tokens_per_second_after'])}, "
                f"GPU utilization {pct(evidence['utilization_before'])} → "
                f"{pct(evidence['utilization_after'])}",
            ]
            if restart_line:
                lines.append(restart_line)
            findings.append(
                Finding(
                    "efficiency-regression",
                    title,
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[after.lo],
                    end,
                    evidence,
                    lines,
                    f"what changed at {ctx.clock(ctx.times[after.lo])}? the deploy log (engine, framework, "
                    "driver, config); same tokens at more power or busy time means slower kernels: roll back "
                    "and confirm tokens per joule recovers",
                )
            )
    return findings


def _load_ratio(r: Rates, before: Segment, after: Segment) -> float | None:
    """Request rate after ÷ before (tokens/s where the engine counts no requests)."""
    for counter in (r.requests, r.tokens):
        a = _ratio_of_sums(counter, r.seconds, before.lo, before.hi)
        b = _ratio_of_sums(counter, r.seconds, after.lo, after.hi)
        if a and b is not None:
            return b / a
    return None


def detect_batch_size_drop(ctx: Context) -> list[Finding]:
    """The running batch fell below 70 % of before while the queue rose ≥ 10 above its level, the GPUs
    still ≥ 30 % busy (below that the host starves them: input-bound). Without a running gauge, tokens per
    busy GPU-second stands for the batch."""
    findings = []
    fraction = ctx.th("batch_fraction")
    for endpoint in ctx.data.endpoints:
        running = endpoint.signal("running")
        r = rates(endpoint, ctx.data.step_seconds())
        tbgs = busy_gpu_seconds_rate(endpoint, r)
        signal, what = (running, "running") if present(running) else (tbgs, "tokens per busy GPU-second")
        if not present(signal):
            continue
        waiting = endpoint.signal("waiting")
        util = endpoint.signal("utilization")
        parts = segments(signal, min_len=ctx.min_steps(), min_rel_change=0.1, forced=restarts(endpoint))
        for k, (before, after) in enumerate(itertools.pairwise(parts)):
            if before.count < ctx.min_steps() or after.count < ctx.min_steps():
                continue
            if before.mean <= 0 or after.mean >= fraction * before.mean:
                continue
            queue_before = _mean_range(waiting, before.lo, before.hi) or 0.0
            queue_after = median(waiting[after.lo : after.hi])
            if queue_after is None or queue_after < queue_before + ctx.th("batch_queue_rise"):
                continue
            busy = _mean_range(util, after.lo, after.hi)
            if busy is not None and busy < ctx.th("under_utilization"):
                continue  # starved by the host: input-bound, not a smaller batch
            end = None
            for later in parts[k + 2 :]:
                if later.mean >= fraction * before.mean:
                    end = ctx.times[later.lo]
                    break
            restarted_at, restart_line = _restart_note(ctx, endpoint, after.lo)
            kv = maximum(endpoint.signal("kv_cache")[after.lo : after.hi])
            evidence: dict[str, Any] = {
                "signal": what,
                "before": before.mean,
                "after": after.mean,
                "change": after.mean / before.mean - 1,
                "waiting_before": queue_before,
                "waiting_after": queue_after,
                "tokens_per_second_before": _mean_range(r.tokens_per_second, before.lo + 1, before.hi),
                "tokens_per_second_after": _mean_range(r.tokens_per_second, after.lo + 1, after.hi),
                "tokens_per_busy_gpu_second_before": _mean_range(tbgs, before.lo + 1, before.hi),
                "tokens_per_busy_gpu_second_after": _mean_range(tbgs, after.lo + 1, after.hi),
                "utilization_after": busy,
                "kv_cache_usage_max": kv,
                "restart_at": restarted_at,
            }
            lines = [
                f"{what} {num(before.mean)} → {num(after.mean)} ({pct(evidence['change'], signed=True)}; "
                f"alert: below {pct(fraction)}) while the queue rose {num(queue_before)} → "
                f"{num(queue_after)} waiting",
                f"tokens/s {num(evidence['tokens_per_second_before'])} → "
                f"{num(evidence['tokens_per_second_after'])}, tokens per busy GPU-second "
                f"{num(evidence['tokens_per_busy_gpu_second_before'])} → "
                f"{num(evidence['tokens_per_busy_gpu_second_after'])}; GPUs still {pct(busy)} busy",
            ]
            if restart_line:
                lines.append(restart_line)
            cause = (
                f"the KV cache is {pct(kv)} full: longer prompts/outputs fit fewer requests"
                if kv is not None and kv >= 0.9
                else "a config change (max_num_seqs, max_num_batched_tokens, gpu_memory_utilization, "
                "KV-cache dtype) in a deploy"
            )
            findings.append(
                Finding(
                    "batch-size-drop",
                    "Batch-size drop: fewer requests per batch while the queue grows",
                    endpoint.node,
                    endpoint.name,
                    endpoint.gpus,
                    ctx.times[after.lo],
                    end,
                    evidence,
                    lines,
                    f"likely {cause}; compare the engine's effective settings (startup log) before and after "
                    f"{ctx.clock(ctx.times[after.lo])} and revert",
                )
            )
    return findings


# -- GPU patterns -----------------------------------------------------------------------------------------


def detect_memory_leak(ctx: Context) -> list[Finding]:
    """GPU memory used climbing steadily (a line that reaches the memory installed within the alert's
    horizon, 4 h) while an endpoint on that GPU generates fewer tokens/s. Memory climbing with throughput
    holding is reported too, as info."""
    by_node: dict[tuple[Node, bool], list[tuple[GpuData, dict[str, Any]]]] = {}
    for gpu in ctx.data.gpus:
        leak = _leak(ctx, gpu)
        if leak is None:
            continue
        falling = leak["throughput_falling"]
        by_node.setdefault((gpu.node, falling), []).append((gpu, leak))
    findings = []
    for (node, falling), items in sorted(by_node.items(), key=lambda kv: kv[0]):
        start = min(leak["start_index"] for _, leak in items)
        last = max(leak["last_index"] for _, leak in items)
        endpoints = sorted({name for gpu, _ in items for name in gpu.endpoints})
        lines = []
        per_gpu = {}
        for gpu, leak in items:
            per_gpu[gpu.gpu] = {k: v for k, v in leak.items() if not k.endswith("_index")}
            lines.append(
                f"GPU {gpu.gpu}: {num(leak['memory_start_bytes'] / GIB)} → "
                f"{num(leak['memory_end_bytes'] / GIB)} "
                f"GiB of {num(leak['memory_total_bytes'] / GIB)} "
                f"(+{num(leak['rate_bytes_per_hour'] / GIB)} GiB/h, "
                f"R² {leak['r2']:.2f}): full in {hours(leak['seconds_to_full'])} (alert: within "
                f"{hours(ctx.th('leak_horizon_seconds'))})"
            )
        throughput = [leak["throughput"] for _, leak in items if leak["throughput"]]
        if throughput:
            t = throughput[0]
            lines.append(
                f"{t['endpoint']} tokens/s {num(t['start'])} → {num(t['end'])} "
                f"({pct(t['change'], signed=True)} over the climb; the alert wants "
                f"{pct(ctx.th('leak_tokens_fraction') - 1, signed=True)} against the longer mean)"
            )
        pattern_title = (
            "GPU memory leak: memory climbing while throughput falls"
            if falling
            else "GPU memory climbing (throughput not falling yet)"
        )
        findings.append(
            Finding(
                "memory-leak",
                pattern_title,
                node,
                endpoints[0] if len(endpoints) == 1 else None,
                tuple(gpu.gpu for gpu, _ in items),
                ctx.times[start],
                ctx.end_of(last),
                {"gpus": per_gpu, "endpoints": endpoints, "throughput_falling": falling},
                lines,
                "per-process GPU memory (`nvidia-smi --query-compute-apps=pid,used_memory --format=csv`); "
                "plan a rolling restart of the engine before it runs out; bisect the deploy that "
                "introduced it",
                severity="" if falling else "info",
                priority=0 if falling else 35,
            )
        )
    return findings


def _leak(ctx: Context, gpu: GpuData) -> dict[str, Any] | None:
    used = gpu.signal("memory_used")
    total = maximum(gpu.signal("memory_total"))
    if not total:
        return None
    best = None
    # A sharp fall (a restart freeing memory) ends one climb; look at each stretch between falls.
    for lo, hi in _stretches(used, 0.02 * total):
        hinge = _hinge_fit(ctx.times, used, lo, hi)
        if hinge is None:
            continue
        start_index, fit, base = hinge
        last_index = max(i for i in range(lo, hi) if used[i] is not None)
        if fit.slope <= 0 or fit.r2 < 0.9 or fit.t_stat < 3:
            continue
        first_value = base
        x0 = ctx.times[start_index]
        end_value = fit.at(ctx.times[last_index] - x0)
        rise = end_value - first_value
        if rise < 0.005 * total:
            continue
        steps = [d for d in increments(used)[start_index + 1 : last_index + 1] if d is not None]
        if steps and max(steps) > 0.5 * rise:
            continue  # one step up (a new allocation), not a creep
        seconds_to_full = (total - end_value) / fit.slope
        if seconds_to_full > ctx.th("leak_horizon_seconds"):
            continue
        if ctx.times[last_index] - ctx.times[start_index] + ctx.step < ctx.min_duration:
            continue
        candidate = {
            "start_index": start_index,
            "last_index": last_index,
            "memory_start_bytes": first_value,
            "memory_end_bytes": used[last_index],
            "memory_total_bytes": total,
            "rate_bytes_per_hour": fit.slope * 3600,
            "r2": fit.r2,
            "seconds_to_full": max(seconds_to_full, 0.0),
        }
        if best is None or candidate["rate_bytes_per_hour"] > best["rate_bytes_per_hour"]:
            best = candidate
    if best is None:
        return None
    best["throughput"] = None
    best["throughput_falling"] = False
    for endpoint in ctx.data.endpoints:
        if endpoint.node != gpu.node or endpoint.name not in gpu.endpoints:
            continue
        r = rates(endpoint, ctx.data.step_seconds())
        lo, hi = best["start_index"] + 1, best["last_index"] + 1
        fit = fit_series(ctx.times, r.tokens_per_second, lo, hi)
        level = _mean_range(r.tokens_per_second, lo, hi)
        if fit is None or not level:
            continue
        span = ctx.times[hi - 1] - ctx.times[lo]
        start_value = fit.at(0)
        end_value = fit.at(span)
        fall = (start_value - end_value) / level
        entry = {
            "endpoint": endpoint.name,
            "start": start_value,
            "end": end_value,
            "change": -fall,
            "t_stat": fit.t_stat,
        }
        if best["throughput"] is None or fall > -best["throughput"]["change"]:
            best["throughput"] = entry
        if fit.t_stat <= -3 and fall >= 0.02:
            best["throughput_falling"] = True
    return best


def _stretches(values: Values, drop: float) -> list[tuple[int, int]]:
    out = []
    lo = 0
    previous = None
    for i, v in enumerate(values):
        if v is None:
            continue
        if previous is not None and v < previous - drop:
            out.append((lo, i))
            lo = i
        previous = v
    out.append((lo, len(values)))
    return out


def _hinge_fit(times: Sequence[float], values: Values, lo: int, hi: int) -> tuple[int, Any, float] | None:
    """Flat, then a straight line from a hinge: (index where the climb starts, the line's fit from there
    with x in seconds since the hinge, the flat level before)."""
    raw = [(i, times[i], v) for i in range(lo, hi) if (v := values[i]) is not None]
    n = len(raw)
    if n < 6:
        return None
    # Sums of squares in seconds since the first point and in deviations from the mean: Unix times and
    # byte counts squared would cancel catastrophically.
    t0, y0 = raw[0][1], sum(p[2] for p in raw) / n
    points = [(i, t - t0, v - y0) for i, t, v in raw]
    ys = [p[2] for p in points]
    sy, syy = sum(ys), sum(y * y for y in ys)
    # suffix sums over points after the hinge
    st = [0.0] * (n + 1)
    stt = [0.0] * (n + 1)
    sty = [0.0] * (n + 1)
    sy_suffix = [0.0] * (n + 1)
    for j in range(n - 1, -1, -1):
        _, t, y = points[j]
        st[j] = st[j + 1] + t
        stt[j] = stt[j + 1] + t * t
        sty[j] = sty[j + 1] + t * y
        sy_suffix[j] = sy_suffix[j + 1] + y
    best: tuple[float, int] | None = None
    for k in range(0, n - 3):
        tk = points[k][1]
        m = n - k - 1  # points after the hinge
        sx = st[k + 1] - m * tk
        sxx = stt[k + 1] - 2 * tk * st[k + 1] + m * tk * tk
        sxy = sty[k + 1] - tk * sy_suffix[k + 1]
        denominator = n * sxx - sx * sx
        if denominator <= 0:
            continue
        slope = (n * sxy - sx * sy) / denominator
        intercept = (sy - slope * sx) / n
        sse = syy - intercept * sy - slope * sxy
        if best is None or sse < best[0] - 1e-9 * abs(syy):
            best = (sse, k)
    if best is None:
        return None
    k = best[1]
    hinge_index = points[k][0]
    before = [p[2] for p in points[: k + 1]]
    base = sum(before) / len(before)
    points = [(i, t, v + y0) for i, t, v in points]
    base += y0
    after = points[k:]
    fit = linear_fit([p[1] - points[k][1] for p in after], [p[2] for p in after])
    if fit is None:
        return None
    # The climb starts where the line leaves the flat level: the first sample at or after that moment.
    start_index = hinge_index
    if fit.slope > 0 and k > 0:
        leaves = points[k][1] + (base - fit.intercept) / fit.slope
        for i, t, _ in points[k:]:
            if t > leaves + 1e-6:
                start_index = i
                break
    return start_index, fit, base


def detect_throttling(ctx: Context) -> list[Finding]:
    """Thermal or hardware slowdown active ≥ 50 % of an episode; or the power cap ≥ 90 % with the SM
    clock ≥ 15 % under its maximum (of the last day, as the alert)."""
    groups: dict[tuple[Node, str], list[tuple[GpuData, int, int, dict[str, Any]]]] = {}
    for gpu in ctx.data.gpus:
        clock = gpu.signal("sm_clock")
        reference = max(present([*clock, gpu.clock_max_1d]), default=None)
        flags = [gpu.reasons[r] for r in THERMAL_REASONS if r in gpu.reasons]
        thermal: list[bool | None] = []
        for i in range(len(gpu.bound)):
            known = [f[i] for f in flags if f[i] is not None]
            thermal.append(any(v >= 1 for v in known) if known else None)  # type: ignore[operator]
        for first, last in runs(thermal, max_gap=2):
            active = mean(1.0 if v else 0.0 for v in thermal[first : last + 1] if v is not None)
            if not ctx.lasts(first, last) or active is None or active < ctx.th("thermal_fraction"):
                continue
            seen = [r for r in THERMAL_REASONS if any(v for v in gpu.reasons.get(r, [])[first : last + 1])]
            groups.setdefault((gpu.node, "thermal"), []).append(
                (gpu, first, last, _throttle_evidence(gpu, first, last, reference, seen, active))
            )
        cap = gpu.reasons.get(POWER_CAP_REASON)
        if cap is None or reference is None:
            continue
        for first, last in runs([None if v is None else v >= 1 for v in cap], max_gap=2):
            share = mean(1.0 if (v or 0) >= 1 else 0.0 for v in cap[first : last + 1] if v is not None)
            clock_mean = mean(clock[first : last + 1])
            if not ctx.lasts(first, last) or share is None or share < ctx.th("power_cap_fraction"):
                continue
            if clock_mean is None or clock_mean >= ctx.th("clock_fraction") * reference:
                continue
            groups.setdefault((gpu.node, "power_cap"), []).append(
                (gpu, first, last, _throttle_evidence(gpu, first, last, reference, [POWER_CAP_REASON], share))
            )
    findings = []
    for (node, cause), items in sorted(groups.items()):
        first = min(item[1] for item in items)
        last = max(item[2] for item in items)
        lines = []
        for gpu, a, _, ev in items:
            line = (
                f"GPU {gpu.gpu}: {', '.join(ev['reasons'])} active {pct(ev['active_fraction'])} of the "
                f"time from {ctx.clock(ctx.times[a])}; SM clock {num(ev['sm_clock_mhz'])} MHz vs maximum "
                f"{num(ev['sm_clock_max_mhz'])} ({pct(ev['sm_clock_change'], signed=True)}), "
                f"{num(ev['temperature_max'])} °C, {num(ev['power_watts'])} W"
            )
            if cause == "power_cap" and ev.get("power_limit_before") and ev.get("power_limit_during"):
                if ev["power_limit_during"] < ev["power_limit_before"] - 1:
                    line += (
                        f"; power limit lowered {num(ev['power_limit_before'])} → "
                        f"{num(ev['power_limit_during'])} W"
                    )
                else:
                    line += f" at its {num(ev['power_limit_during'])} W limit"
            lines.append(line)
        gpus = tuple(gpu.gpu for gpu, *_ in items)
        endpoints = sorted({name for gpu, *_ in items for name in gpu.endpoints})
        if cause == "thermal":
            title = "Throttling (thermal): GPU clocks slowed down by temperature or hardware"
            check = (
                "BMC temperature and fan sensors of the node; compare temperatures across its GPUs; drain "
                "the node "
                "if it keeps rising"
            )
        else:
            title = "Throttling (power cap): GPUs held at their power limit, clocks down ≥ 15 %"
            check = (
                "`nvidia-smi -q -d POWER` (default vs enforced limit): restore the default limit "
                "(`nvidia-smi -pl`) or lift the facility cap if it was not intended"
            )
        findings.append(
            Finding(
                "throttling",
                title,
                node,
                endpoints[0] if len(endpoints) == 1 else None,
                gpus,
                ctx.times[first],
                None if any(ctx.end_of(item[2]) is None for item in items) else ctx.end_of(last),
                {"cause": cause, "gpus": {gpu.gpu: ev for gpu, _, _, ev in items}, "endpoints": endpoints},
                lines,
                check,
            )
        )
    return findings


def _throttle_evidence(
    gpu: GpuData, first: int, last: int, reference: float | None, reasons: list[str], active: float | None
) -> dict[str, Any]:
    clock = mean(gpu.signal("sm_clock")[first : last + 1])
    limit = gpu.signal("power_limit")
    before = [v for v in limit[:first] if v is not None]
    return {
        "reasons": reasons,
        "active_fraction": active,
        "sm_clock_mhz": clock / 1e6 if clock else None,
        "sm_clock_max_mhz": reference / 1e6 if reference else None,
        "sm_clock_change": change(reference, clock),
        "temperature_max": maximum(gpu.signal("temperature")[first : last + 1]),
        "power_watts": mean(gpu.signal("power")[first : last + 1]),
        "power_limit_before": before[-1] if before else None,
        "power_limit_during": mean(limit[first : last + 1]),
    }


def detect_gpu_down(ctx: Context) -> list[Finding]:
    findings = []
    for gpu in ctx.data.gpus:
        up = gpu.signal("up")
        for first, last in runs([None if v is None else v < 1 for v in up]):
            if last - first + 1 < 2:
                continue
            findings.append(
                Finding(
                    "gpu-down",
                    f"GPU {gpu.gpu} down: the exporter cannot read it",
                    gpu.node,
                    None,
                    (gpu.gpu,),
                    ctx.times[first],
                    ctx.end_of(last),
                    {"cause": "gpu_unreadable"},
                    [f"tpw_gpu_up 0 for {duration(ctx, first, last)}"],
                    "`dmesg | grep -i xid` (79: fell off the bus), `nvidia-smi -q -d ECC,RETIRED_PAGES`; "
                    "drain the "
                    "node, reset the GPU or reboot",
                )
            )
    for node, up in ctx.data.nvml_up.items():
        for first, last in runs([None if v is None else v < 1 for v in up]):
            if last - first + 1 < 2:
                continue
            findings.append(
                Finding(
                    "gpu-down",
                    "NVML unavailable: no GPU of the node can be read",
                    node,
                    None,
                    (),
                    ctx.times[first],
                    ctx.end_of(last),
                    {"cause": "nvml_unavailable"},
                    [f'tpw_source_up{{source="nvml"}} 0 for {duration(ctx, first, last)}'],
                    "the exporter's log (driver/library version mismatch after a driver upgrade? container "
                    "without the NVIDIA runtime?)",
                )
            )
    return findings


def detect_exporter_down(ctx: Context) -> list[Finding]:
    findings = []
    for node, up in ctx.data.target_up.items():
        for first, last in runs([None if v is None else v < 1 for v in up]):
            if last - first + 1 < 2:
                continue
            findings.append(
                Finding(
                    "exporter-down",
                    "Exporter unreachable: Prometheus could not scrape tpw-exporter (every pattern is blind)",
                    node,
                    None,
                    (),
                    ctx.times[first],
                    ctx.end_of(last),
                    {},
                    [f"up 0 for {duration(ctx, first, last)}"],
                    "is tpw-exporter running on the node (systemctl status tpw-exporter / its pod)? "
                    "`curl http://NODE:9835/healthz`",
                )
            )
    return findings


def error_rule(series: str) -> tuple[str, str] | None:
    """How a GPU error series counts, as (mode, severity), or None when it is no error on its own.

    mode "increase": the series rose in the window (a counter, or a count kept as a gauge); "state": it is
    above 0 (a condition waiting for a reset). Corrected ECC errors trickle on healthy GPUs and lifetime
    (aggregate) counts repeat the volatile ones: neither is reported alone.
    """
    name, _, labels = series.partition("{")
    if name == "tpw_gpu_xid_errors_total":
        return "increase", "critical"
    if name == "tpw_gpu_ecc_errors_total":
        return ("increase", "critical") if 'type="uncorrected"' in labels else None
    if "aggregate" in name:
        return None
    if name.endswith("_failed"):
        return "state", "critical"
    if name.endswith("_pending"):
        return "state", "warning"
    if name in ("tpw_gpu_remapped_rows", "tpw_gpu_retired_pages"):
        correctable = 'cause="correctable"' in labels or 'cause="single_bit"' in labels
        return None if correctable else ("increase", "warning")
    return ("increase", "warning") if name.endswith("_total") else None


def detect_gpu_errors(ctx: Context) -> list[Finding]:
    """XID events, uncorrected ECC errors and memory rows remapped in the window; a row remap or page
    retirement pending (waits for a GPU reset) or failed. Queried where the exporter serves them."""
    by_node: dict[Node, list[tuple[GpuData, str, int, float, str]]] = {}
    for gpu in ctx.data.gpus:
        for series, values in sorted(gpu.errors.items()):
            rule = error_rule(series)
            if rule is None:
                continue
            mode, severity = rule
            if mode == "increase":
                added = increments(values)
                hits = [i for i, v in enumerate(added) if v and v > 0]
                total = sum(added[i] or 0 for i in hits)
            else:
                hits = [i for i, v in enumerate(values) if v and v > 0]
                total = maximum(values[i] for i in hits) or 0
            if hits:
                by_node.setdefault(gpu.node, []).append((gpu, series, hits[0], total, severity))
    findings = []
    loaded = ctx.data.thresholds.runbooks
    for node, items in sorted(by_node.items()):
        first = min(item[2] for item in items)
        lines = []
        for gpu, series, i, total, _ in items:
            mode = (error_rule(series) or ("", ""))[0]
            what = f"+{num(total)}" if mode == "increase" else f"= {num(total)}"
            lines.append(f"GPU {gpu.gpu}: {series} {what} (first at {ctx.clock(ctx.times[i])})")
        gpus = tuple(dict.fromkeys(gpu.gpu for gpu, *_ in items))
        xid = any(series.startswith("tpw_gpu_xid_errors_total") for _, series, *_ in items)
        # The alerts for these metrics have their own runbooks where those rules are loaded.
        alert = "TPWGpuXidError" if xid else "TPWGpuMemoryErrors"
        findings.append(
            Finding(
                "gpu-errors",
                "GPU errors reported (XID / ECC / memory remapping)",
                node,
                None,
                gpus,
                ctx.times[first],
                None,
                {"series": {f"{gpu.gpu}:{series}": total for gpu, series, _, total, _ in items}},
                lines,
                "`dmesg | grep -i xid` and `nvidia-smi -q -d ECC,ROW_REMAPPER` on the node; XID "
                "48/64/74/79/95, uncorrected ECC or a failed remap: drain the node, reset the GPU, open a "
                "hardware ticket with the GPU's uuid; a pending remap takes effect at the next GPU reset",
                severity="critical" if any(item[4] == "critical" for item in items) else "warning",
                alert=alert if alert in loaded else "",
            )
        )
    return findings


def duration(ctx: Context, first: int, last: int) -> str:
    return seconds_text(ctx.times[last] - ctx.times[first] + ctx.step)


def seconds_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def hours(seconds: float) -> str:
    return seconds_text(seconds)


DETECTORS: tuple[Callable[[Context], list[Finding]], ...] = (
    detect_gpu_errors,
    detect_gpu_down,
    detect_exporter_down,
    detect_endpoint_down,
    detect_throttling,
    detect_efficiency_regression,
    detect_batch_size_drop,
    detect_memory_leak,
    detect_busy_but_flat,
    detect_input_bound,
    detect_bandwidth_bound,
)


def diagnose(
    data: Dataset,
    min_duration: float,
    clock: Callable[[float], str],
    runbook_base_url: str | None = None,
) -> list[Finding]:
    """Every detector over the data; findings ranked (most likely cause first) and cross-referenced."""
    ctx = Context(data, min_duration, clock)
    findings = [finding for detector in DETECTORS for finding in detector(ctx)]
    findings.sort(key=lambda f: (-f.score(), f.start, str(f.node), f.endpoint or "", f.gpus))
    for rank, finding in enumerate(findings, start=1):
        finding.rank = rank
        finding.runbook = runbook_url(finding.alert, data.thresholds.runbooks, runbook_base_url)
    for a in findings:
        a.related = [b.rank for b in findings if b is not a and _related(a, b)]
    return findings


def runbook_url(alert: str, loaded: dict[str, str] | Any, base: str | None) -> str:
    if base:
        return base.rstrip("/") + f"/{alert}.md"
    if alert in loaded:
        return str(loaded[alert])
    return f"{DEFAULT_RUNBOOK_BASE_URL}{alert}.md"


def _related(a: Finding, b: Finding) -> bool:
    """Same node, overlapping in time (not just touching), and the same endpoint or a GPU in common (or
    node-wide)."""
    if a.node != b.node:
        return False
    a_end = a.end if a.end is not None else math.inf
    b_end = b.end if b.end is not None else math.inf
    if a.start >= b_end or b.start >= a_end:
        return False
    if a.endpoint and a.endpoint == b.endpoint:
        return True
    a_gpus, b_gpus = set(a.gpus), set(b.gpus)
    if not a_gpus or not b_gpus:
        return True
    return bool(a_gpus & b_gpus)
