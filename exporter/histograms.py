"""Latency histograms: the engines' own buckets, re-bucketed onto one fixed set of bounds per kind.

Every engine publishes its latency histograms with bucket bounds of its own (vLLM's TTFT: 0.001 … 2560 s,
SGLang's: 0.1 … 400 s, TGI's: 0.00015 × 1.5^k, Triton's: 100, 500, 2000, 5000 ms by default…), so
`histogram_quantile` cannot be taken across engines, and the series count would depend on the engine. The
exporter keeps each engine's cumulative counts (`EndpointHistogram.bounds`/`counts`, what the derive stage's
SLO estimates read) and publishes them on the fixed bounds of `KINDS` (`EndpointHistogram.buckets`).

**Re-bucketing rule (conservative).** A fixed bound `b` gets the engine's cumulative count at the largest
engine bound `e ≤ b` (0 when the engine has no bound ≤ b); `+Inf` is the engine's `+Inf` count. So the count
published at `b` only counts observations ≤ e ≤ b: it never overstates how many requests were fast. What it
misses is the observations in (e, b], at most the engine's bucket above `e`; at a bound `b` the engine also
has, the count is exact. Counts stay cumulative (non-decreasing in `le`) and whole. Consequence for a
quantile read with `histogram_quantile`: the bucket it lands in never ends below the bucket the engine's own
histogram would give (the latency is never understated by more than the interpolation inside a bucket).

**Threshold counts (SLO).** `threshold_counts` brackets "observations ≤ t" between the engine's counts at the
largest bound ≤ t (`lower`) and the smallest bound ≥ t (`upper`), and estimates it by linear interpolation
inside that bucket, as `histogram_quantile` assumes observations spread evenly in a bucket; past the last
finite bound the estimate is `lower` (no interpolation to +Inf). At an engine bound, lower = estimate = upper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.model import MAX_COUNTER_VALUE

# Request-level latencies (TTFT, end to end, queue): 1 ms .. 120 s, a 1-2-5 series with 0.25, 2.5 and 40,
# where vLLM's, SGLang's and Triton's default bounds sit (13 of vLLM's TTFT bounds, all 4 of Triton's).
REQUEST_LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5,
    1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0,
)  # fmt: skip
# Time per output token: 1 ms .. 2 s, dense from 10 to 50 ms where decode runs and TPOT SLOs sit (11 of
# vLLM's bounds, 11 of SGLang's inter-token bounds).
TOKEN_LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0,
)  # fmt: skip
# A histogram with more finite bounds than this on one page is left out (too_many_series): the engines have
# at most 36 (TGI), and the snapshot keeps every engine bound.
MAX_ENGINE_BOUNDS = 100
# Bounds equal within this relative tolerance are the same bound (100 ms × 1e-3 against 0.1).
_SAME_BOUND = 1e-9


@dataclass(frozen=True, slots=True)
class HistogramKind:
    """One latency histogram the exporter publishes: metric family, normalized fields, fixed bounds."""

    kind: str  # ttft | tpot | e2e | queue
    metric: str  # tpw_endpoint_…_seconds (…_bucket, …_sum, …_count)
    sum_field: str  # the normalized fields its _sum and _count are read into (exporter.model)
    count_field: str
    bounds: tuple[float, ...]
    help: str


KINDS: dict[str, HistogramKind] = {
    kind.kind: kind
    for kind in (
        HistogramKind(
            "ttft",
            "tpw_endpoint_time_to_first_token_seconds",
            "ttft_seconds_sum",
            "ttft_seconds_count",
            REQUEST_LATENCY_BOUNDS,
            "Time to first token, from the engine's histogram re-bucketed onto fixed bounds (the count at "
            "each le is the engine's at its largest bound <= le: never more fast requests than there were).",
        ),
        HistogramKind(
            "tpot",
            "tpw_endpoint_time_per_output_token_seconds",
            "tpot_seconds_sum",
            "tpot_seconds_count",
            TOKEN_LATENCY_BOUNDS,
            "Time per output token (per request where the engine has it, else per inter-token gap), from the "
            "engine's histogram re-bucketed onto fixed bounds (conservatively, as the other latencies).",
        ),
        HistogramKind(
            "e2e",
            "tpw_endpoint_request_latency_seconds",
            "e2e_latency_seconds_sum",
            "e2e_latency_seconds_count",
            REQUEST_LATENCY_BOUNDS,
            "End-to-end request latency, from the engine's histogram re-bucketed onto fixed bounds "
            "(conservatively; engines without buckets: the +Inf bucket, sum and count only).",
        ),
        HistogramKind(
            "queue",
            "tpw_endpoint_queue_time_seconds",
            "queue_time_seconds_sum",
            "queue_time_seconds_count",
            REQUEST_LATENCY_BOUNDS,
            "Time requests waited in the engine's queue, from its histogram re-bucketed onto fixed bounds "
            "(conservatively, as the other latencies).",
        ),
    )
}
HISTOGRAM_KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def rebucket(bounds: Sequence[float], counts: Sequence[int], targets: Sequence[float]) -> tuple[int, ...]:
    """Cumulative counts at `targets` from an engine's cumulative `counts` at its increasing finite `bounds`:
    each target gets the count at the largest engine bound ≤ it (equal within 1e-9 relative), 0 if none."""
    result: list[int] = []
    index, current = 0, 0
    for target in targets:
        limit = target * (1 + _SAME_BOUND)
        while index < len(bounds) and bounds[index] <= limit:
            current = counts[index]
            index += 1
        result.append(current)
    return tuple(result)


@dataclass(frozen=True, slots=True)
class ThresholdCounts:
    """Observations ≤ a threshold, from cumulative counts: bracketed and estimated (see the module doc)."""

    lower: float  # count at the largest engine bound ≤ threshold (0 below the first bound)
    upper: float  # count at the smallest engine bound ≥ threshold (the +Inf count past the last one)
    weight: float  # where the threshold sits in that bucket, 0..1: the estimate's interpolation weight
    bracket: tuple[float, float]  # the two engine bounds (0 below the first bound, inf past the last)

    @property
    def estimate(self) -> float:
        return self.lower + self.weight * (self.upper - self.lower)


def threshold_counts(
    bounds: Sequence[float], counts: Sequence[float], total: float, threshold: float
) -> ThresholdCounts:
    """How many of the observations are ≤ `threshold`, from cumulative `counts` at finite `bounds` and the
    +Inf count `total`: the engine bucket holding the threshold, and the interpolated estimate inside it."""
    low_bound, low = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if math.isclose(bound, threshold, rel_tol=_SAME_BOUND):
            return ThresholdCounts(count, count, 0.0, (bound, bound))
        if bound > threshold:
            weight = (threshold - low_bound) / (bound - low_bound)
            return ThresholdCounts(low, count, weight, (low_bound, bound))
        low_bound, low = bound, count
    return ThresholdCounts(low, total, 0.0, (low_bound, math.inf))


def valid_cumulative(counts: Sequence[float], total: float) -> bool:
    """Whether cumulative counts (then the +Inf count) are a histogram's: finite, ≥ 0, at most 2**53 and
    non-decreasing in `le`."""
    previous = 0.0
    for count in (*counts, total):
        if not (previous <= count <= MAX_COUNTER_VALUE):  # also False for NaN
            return False
        previous = count
    return True
