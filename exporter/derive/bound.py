"""The roofline bound: which resource limits a GPU, from its window-mean GPM ratios.

`evidence_from` turns window-mean GPM ratios into evidence ratios (tensor, fp, dram, sm, graphics), whatever
computes the means: `bound_evidence` over GPM windows, the derive window over its running sums
(`exporter.derive.window`). `classify_bound` maps evidence to compute | memory | latency | idle | mixed with
the `Thresholds` rules. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from exporter.model import BOUND_STATES, EVIDENCE_SIGNALS, Profiling, Thresholds

__all__ = [
    "BOUND_STATES",
    "EVIDENCE_KEYS",
    "EVIDENCE_RATIOS",
    "EVIDENCE_SIGNALS",
    "FP_KEYS",
    "Thresholds",
    "bound_evidence",
    "classify_bound",
    "evidence_from",
]

# GPM ratio keys (exporter.model.PROFILING_RATIOS) behind each evidence signal.
EVIDENCE_KEYS: dict[str, str] = {
    "tensor": "tensor_active",
    "dram": "dram_bandwidth_utilization",
    "sm": "sm_active",
    "graphics": "graphics_active",
}
FP_KEYS: tuple[str, ...] = ("fp16_active", "fp32_active", "fp64_active")
# Every GPM ratio the evidence reads.
EVIDENCE_RATIOS: tuple[str, ...] = (*EVIDENCE_KEYS.values(), *FP_KEYS)


# ---------------------------------------------------------------------------------------------------------
# Roofline bound


def evidence_from(mean: Callable[[str], float | None]) -> dict[str, float] | None:
    """The evidence ratios, in EVIDENCE_SIGNALS order, from `mean`: a GPM ratio key → its window mean, or
    None where the window has none. None without graphics/sm/tensor/dram.

    `fp` is the largest of the fp16/fp32/fp64 means, absent when the GPU reports none of them.
    """
    evidence: dict[str, float] = {}
    for signal, key in EVIDENCE_KEYS.items():
        value = mean(key)
        if value is None:
            return None
        evidence[signal] = value
    fp = [value for key in FP_KEYS if (value := mean(key)) is not None]
    if fp:
        evidence["fp"] = max(fp)
    return {signal: evidence[signal] for signal in EVIDENCE_SIGNALS if signal in evidence}


def bound_evidence(windows: Sequence[Profiling]) -> dict[str, float] | None:
    """`evidence_from` the GPM windows: each ratio's mean weighted by the windows' lengths."""
    return evidence_from(lambda key: _weighted_mean(windows, key))


def _weighted_mean(windows: Sequence[Profiling], key: str) -> float | None:
    """Mean of one GPM ratio over windows, weighted by their length; windows of no length are ignored."""
    total = weight = 0.0
    for window in windows:
        value = window.ratios.get(key)
        if value is None or not math.isfinite(value) or not window.window_seconds > 0:
            continue
        total += value * window.window_seconds
        weight += window.window_seconds
    return min(max(total / weight, 0.0), 1.0) if weight > 0 else None


def classify_bound(evidence: Mapping[str, float], thresholds: Thresholds = Thresholds()) -> str:
    """compute | memory | latency | idle | mixed from evidence ratios (see `Thresholds` for the rules)."""
    graphics = evidence["graphics"]
    tensor = evidence["tensor"]
    dram = evidence["dram"]
    sm = evidence["sm"]
    pipes = max(tensor, evidence.get("fp", 0.0))
    if graphics < thresholds.idle_graphics_below:
        return "idle"
    if pipes >= thresholds.compute_pipe_at_least:
        return "compute"
    low_tensor = tensor < thresholds.low_tensor_below
    if low_tensor and dram >= thresholds.memory_dram_at_least:
        return "memory"
    if low_tensor and sm < thresholds.latency_sm_below and dram < thresholds.memory_dram_at_least:
        return "latency"
    return "mixed"


# ---------------------------------------------------------------------------------------------------------
# Steps: what changed between two consecutive snapshots
