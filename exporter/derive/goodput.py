"""Goodput per joule and SLO attainment: the share of an endpoint's work done within its latency objective.

An endpoint with an `slo` (`ttft_seconds`, `tpot_seconds`) and an engine that publishes the matching
latency histograms (`exporter.histograms`) gets, over the derive window:

    attainment_k = Δ(observations ≤ threshold_k) / Δ(observations)        k = ttft, tpot
    attainment_both = attainment_ttft × attainment_tpot                    (both thresholds set)
    goodput tokens per joule = Δ generated tokens × Π attainment_k / Δ energy

Every Δ is summed step by step over the window's ticks, exactly like the counters (`exporter.derive.window`:
an increase per step between two consecutive ticks, a decrease of the count is an engine restart); the
goodput's attainments, tokens and energy are all taken over the same energy-aligned steps.

"Observations ≤ threshold" comes from the engine's own buckets at both ends of each step (not the
re-bucketed ones): between its count at the largest bucket bound ≤ threshold (lower) and at the smallest
bound ≥ threshold (upper), estimated by linear interpolation inside that bucket
(`exporter.histograms.threshold_counts`). The true attainment lies in [lower, upper] / Δ(observations); at a
threshold equal to one of the engine's bounds it is exact. Past the engine's last finite bound the estimate is
the lower bound. The product assumes the two latencies are independent across requests; they are usually
positively correlated (both grow with load), then the product understates the share within both, which lies
between max(0, a_ttft + a_tpot − 1) and min(a_ttft, a_tpot) whatever the correlation. Goodput also assumes
a request's tokens do not depend on whether it met the SLO. Where an engine's TPOT histogram observes
inter-token gaps rather than requests (vLLM before 0.11, SGLang) its attainment is the share of gaps within
the threshold.

A value is None (absent) without an SLO, without the histogram of a configured latency in every step used,
or without any observation in the window: never a made-up value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.histograms import threshold_counts
from exporter.model import EndpointSample, Slo, SloAttainment

SLO_KINDS: tuple[str, ...] = ("ttft", "tpot")  # the latencies an SLO can bound: histogram kinds


def slo_thresholds(slo: Slo | None) -> dict[str, float]:
    """The SLO's threshold per latency kind it sets."""
    if slo is None:
        return {}
    thresholds = {"ttft": slo.ttft_seconds, "tpot": slo.tpot_seconds}
    return {kind: value for kind, value in thresholds.items() if value is not None}


@dataclass(frozen=True, slots=True)
class SloIncrease:
    """One latency's observations over a step, and how many of them were within the threshold."""

    total: float
    lower: float  # at least this many ≤ threshold
    upper: float  # at most this many
    estimate: float  # interpolated inside the engine's bucket holding the threshold


def slo_step(previous: EndpointSample, current: EndpointSample, slo: Slo | None) -> dict[str, SloIncrease]:
    """Per latency the SLO sets, its increases over the step, summed over the models whose histogram is at
    both ends with the same buckets; a latency no model has at both ends is left out (not readable)."""
    increases: dict[str, SloIncrease] = {}
    for kind, threshold in slo_thresholds(slo).items():
        before = {h.model: h for h in previous.histograms if h.kind == kind}
        parts = []
        for after in current.histograms:
            first = before.get(after.model)
            if after.kind != kind or first is None or first.bounds != after.bounds:
                continue
            start = threshold_counts(first.bounds, first.counts, first.count, threshold)
            end = threshold_counts(after.bounds, after.counts, after.count, threshold)
            if after.count < first.count:  # the engine restarted: everything now counted is new
                total, lower, upper = float(after.count), end.lower, end.upper
            else:
                total = float(after.count - first.count)
                lower, upper = max(0.0, end.lower - start.lower), max(0.0, end.upper - start.upper)
            upper = min(upper, total)
            lower = min(lower, upper)
            parts.append(SloIncrease(total, lower, upper, lower + end.weight * (upper - lower)))
        if parts:
            increases[kind] = SloIncrease(
                sum(p.total for p in parts),
                sum(p.lower for p in parts),
                sum(p.upper for p in parts),
                sum(p.estimate for p in parts),
            )
    return increases


@dataclass(frozen=True, slots=True)
class Share:
    """Within-SLO share of one latency (or of both) over a set of steps: estimate and bounds, 0..1."""

    ratio: float
    lower: float
    upper: float

    def times(self, other: Share) -> Share:
        return Share(self.ratio * other.ratio, self.lower * other.lower, self.upper * other.upper)


def share(total: float, lower: float, upper: float, estimate: float) -> Share | None:
    """The share of `total` observations within the SLO; None without observations."""
    if not total > 0:
        return None

    def clamp(value: float) -> float:
        return min(max(value / total, 0.0), 1.0)

    low, high = clamp(lower), clamp(upper)
    return Share(min(max(clamp(estimate), low), high), low, high)


def attainments(shares: Mapping[str, Share | None], slo: Slo | None) -> tuple[SloAttainment, ...]:
    """tpw_endpoint_slo_attainment_ratio's values: one per latency the SLO sets that has a share, and
    `both` when it sets both and both have one."""
    configured = slo_thresholds(slo)
    result = [
        SloAttainment(kind, found.ratio, found.lower, found.upper)
        for kind in configured
        if (found := shares.get(kind)) is not None
    ]
    if len(configured) == 2 and len(result) == 2:
        both = Share(result[0].ratio, result[0].lower, result[0].upper).times(
            Share(result[1].ratio, result[1].lower, result[1].upper)
        )
        result.append(SloAttainment("both", both.ratio, both.lower, both.upper))
    return tuple(result)


def goodput(
    tokens_per_joule: float | None, shares: Mapping[str, Share | None], slo: Slo | None
) -> tuple[float, tuple[float, float]] | None:
    """Goodput tokens per joule and its (lower, upper) bounds: tokens per joule × the product of the shares
    of every latency the SLO sets, all over the same steps; None if any of them is undefined."""
    configured = slo_thresholds(slo)
    if tokens_per_joule is None or not configured:
        return None
    combined = Share(1.0, 1.0, 1.0)
    for kind in configured:
        found = shares.get(kind)
        if found is None:
            return None
        combined = combined.times(found)
    return tokens_per_joule * combined.ratio, (
        tokens_per_joule * combined.lower,
        tokens_per_joule * combined.upper,
    )
