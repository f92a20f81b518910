"""The demo's time model: H100 workloads, the scenarios that play them, and schedules of scenarios.

Pure functions of the time since the simulation started (no I/O, no clock), shared by the simulated GPUs
(`exporter.sources.simulated`), the simulated serving engine (`exporter.demo.engine`), the
config's list of scenarios, and the benchmarks that need the ground truth.

Numbers follow the H100 reference measurements (`docs/h100-reference.md`): the same NVML utilisation,
GPM ratios and power for idle, a bf16 GEMM (compute-bound), a device-to-device copy (memory-bound), a
tiny-kernel loop (launch-bound) and the decode loop at batch 16, 64 and 256. The energy counter is the exact
integral of power.

Two kinds of scenario:

* a *cycle* of workloads, one per phase (`idle`, `compute-bound`, `memory-bound`, `launch-bound`: one
  workload for ever; `mixed`: all four, GPU i starting i phases into the cycle);
* a *timeline* of keyframes (times in phases): between two keyframes every number moves linearly from one
  workload to the next, after the last one it holds (or, for a growing queue, keeps its slope). These are
  the alert patterns of `deploy/prometheus/rules/alerts.yml`: `healthy`, `busy-flat`, `input-bound`,
  `bandwidth-saturated`, `efficiency-regression`, `batch-drop`, `memory-leak`, `throttling` and
  `endpoint-down` (see `SCENARIO_SPECS`).

Beside its load, a GPU has a *health* (`Health`: XIDs, ECC errors and remapped rows, the PCIe link, NVLink),
healthy unless a scenario gives it health timelines of its own, built like the load's: the GPU-health
scenarios `xid-errors`, `ecc-remap-pending`, `pcie-degraded` and `nvlink-errors` (and `power-capped`, a
lowered power limit from the start, which is load). Error counts are exact integrals of rates per phase,
so an alert scenario plays the same at any phase length; one event is a burst of `BURST` phases.

A `Schedule` plays scenarios one after the other (`busy-flat:60,healthy:60`), repeating from the start;
each scenario's own clock starts when its turn starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from exporter.model import GIB, NVLINK_ERROR_TYPES, SCENARIO_NAMES

H100_MEMORY_BYTES = 80 * GIB
H100_PEAK_DRAM_BYTES_PER_SECOND = 5120 / 8 * 2619e6 * 2  # bus width × max memory clock × DDR ≈ 3.35 TB/s
H100_POWER_LIMIT_WATTS = 700.0
VLLM_MEMORY_BYTES = 64 * GIB  # vLLM preallocates weights + KV cache (gpu_memory_utilization 0.8)
WOBBLE_PERIOD_SECONDS = 17.0
POWER_WOBBLE_WATTS = 3.0
RATIO_WOBBLE = 0.01


@dataclass(frozen=True)
class Workload:
    """What one workload looks like on an H100 (ratios 0..1, watts, bytes, MHz)."""

    utilization: float
    memory_utilization: float
    graphics_active: float
    sm_active: float
    sm_occupancy: float
    tensor_active: float
    dram_bandwidth_utilization: float
    fp16_active: float
    fp32_active: float
    fp64_active: float
    power_watts: float
    memory_used_bytes: int
    sm_clock_mhz: float
    temperature_celsius: float
    clock_event_reasons: int
    pcie_bytes_per_second: float
    power_limit_watts: float = H100_POWER_LIMIT_WATTS
    pcie_generation: int = 5  # an idle H100 steps its PCIe link down (Gen 1) to save power


# A steady decode load at a batch of ~128 per GPU (between the reference's batch-64 and batch-256 rows):
# busy (89 %), memory-bound like every decode below the ridge point, well under the power limit.
HEALTHY = Workload(
    utilization=0.89,
    memory_utilization=0.50,
    graphics_active=0.87,
    sm_active=0.62,
    sm_occupancy=0.092,
    tensor_active=0.22,
    dram_bandwidth_utilization=0.45,
    fp16_active=0.01,
    fp32_active=0.02,
    fp64_active=0.0,
    power_watts=560.0,
    memory_used_bytes=VLLM_MEMORY_BYTES,
    sm_clock_mhz=1980,
    temperature_celsius=62,
    clock_event_reasons=0x0,
    pcie_bytes_per_second=2e7,
)

WORKLOADS: dict[str, Workload] = {
    "idle": Workload(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.00001, 0.0, 0.0, 0.0, 114.0, 1 * GIB, 345, 31, 0x1, 2e5),
    "compute-bound": Workload(
        0.99, 0.33, 0.992, 0.958, 0.142, 0.93, 0.255, 0.01, 0.03, 0.0, 695.0, 18 * GIB, 1755, 68, 0x4, 1e6
    ),
    "memory-bound": Workload(
        0.99, 1.0, 0.994, 0.989, 0.793, 0.0, 0.895, 0.0, 0.02, 0.0, 380.0, 6 * GIB, 1980, 55, 0x0, 1e6
    ),
    "launch-bound": Workload(
        0.36, 0.0, 0.359, 0.00035, 0.00002, 0.0, 0.00001, 0.0, 0.0002, 0.0, 126.0, 2 * GIB, 1980, 36, 0x0, 5e7
    ),
    "healthy": HEALTHY,
    # The reference's batch-256 decode row: the batch is full (max_num_seqs), tensor and DRAM both
    # substantial ("mixed"); arrivals outgrow it, so only the queue grows.
    "busy-flat": dataclasses.replace(
        HEALTHY,
        utilization=0.92,
        memory_utilization=0.48,
        graphics_active=0.897,
        sm_active=0.663,
        sm_occupancy=0.105,
        tensor_active=0.345,
        dram_bandwidth_utilization=0.434,
        power_watts=660.0,
        temperature_celsius=66,
    ),
    # The host cannot feed the GPU (tokenisation, a Python scheduler loop, a slow input pipeline): the GPU
    # idles between short bursts of small kernels; SMs mostly idle ("latency").
    "input-bound": dataclasses.replace(
        HEALTHY,
        utilization=0.22,
        memory_utilization=0.08,
        graphics_active=0.22,
        sm_active=0.12,
        sm_occupancy=0.02,
        tensor_active=0.04,
        dram_bandwidth_utilization=0.07,
        fp16_active=0.002,
        fp32_active=0.01,
        power_watts=170.0,
        temperature_celsius=45,
        pcie_bytes_per_second=3e8,
    ),
    # Long-context decode: KV-cache reads fill HBM bandwidth (like the reference copy, DRAM ~0.9).
    "bandwidth-ramp": dataclasses.replace(
        HEALTHY,
        utilization=0.90,
        memory_utilization=0.50,
        graphics_active=0.88,
        sm_active=0.45,
        sm_occupancy=0.07,
        tensor_active=0.03,
        dram_bandwidth_utilization=0.45,
        power_watts=400.0,
        temperature_celsius=52,
    ),
    "bandwidth-saturated": dataclasses.replace(
        HEALTHY,
        utilization=0.99,
        memory_utilization=0.97,
        graphics_active=0.99,
        sm_active=0.80,
        sm_occupancy=0.14,
        tensor_active=0.06,
        dram_bandwidth_utilization=0.88,
        power_watts=520.0,
        temperature_celsius=60,
    ),
    # A framework update picked slower kernels: the same load takes longer on the GPU, so it is busier
    # and draws more power for the same tokens (560 W → 690 W: tokens per joule −19 %).
    "regressed": dataclasses.replace(
        HEALTHY,
        utilization=0.97,
        memory_utilization=0.62,
        graphics_active=0.96,
        sm_active=0.70,
        sm_occupancy=0.10,
        tensor_active=0.18,
        dram_bandwidth_utilization=0.56,
        power_watts=690.0,
        temperature_celsius=70,
    ),
    # A config change cut the batch to 16 (the reference's batch-16 row: still 83 % "busy").
    "batch-cut": dataclasses.replace(
        HEALTHY,
        utilization=0.83,
        memory_utilization=0.46,
        graphics_active=0.827,
        sm_active=0.298,
        sm_occupancy=0.044,
        tensor_active=0.021,
        dram_bandwidth_utilization=0.425,
        fp16_active=0.005,
        fp32_active=0.01,
        power_watts=349.0,
        temperature_celsius=50,
    ),
    # A leak in the engine process: memory climbs toward the 80 GiB installed while GC pauses stall the
    # decode loop (the GPU waits, so utilisation, power and tokens fall together).
    "leaked": dataclasses.replace(
        HEALTHY,
        utilization=0.65,
        memory_utilization=0.36,
        graphics_active=0.64,
        sm_active=0.44,
        sm_occupancy=0.065,
        tensor_active=0.15,
        dram_bandwidth_utilization=0.32,
        power_watts=430.0,
        memory_used_bytes=79 * GIB,
        temperature_celsius=55,
    ),
    # Thermal slowdown (sw + hw thermal) at 89 °C: SM clock 1980 → 1290 MHz, power falls with the clock.
    "thermal-throttled": dataclasses.replace(
        HEALTHY,
        utilization=0.95,
        memory_utilization=0.52,
        graphics_active=0.94,
        sm_active=0.66,
        sm_occupancy=0.095,
        tensor_active=0.24,
        dram_bandwidth_utilization=0.40,
        power_watts=470.0,
        sm_clock_mhz=1290,
        temperature_celsius=89,
        clock_event_reasons=0x20 | 0x40,
    ),
    # Power limit lowered to 400 W (`nvidia-smi -pl 400`): at the cap, sw_power_cap on, SM clock 1200 MHz.
    "power-capped": dataclasses.replace(
        HEALTHY,
        utilization=0.95,
        memory_utilization=0.50,
        graphics_active=0.94,
        sm_active=0.66,
        sm_occupancy=0.095,
        tensor_active=0.24,
        dram_bandwidth_utilization=0.40,
        power_watts=397.0,
        sm_clock_mhz=1200,
        temperature_celsius=58,
        clock_event_reasons=0x4,
        power_limit_watts=400.0,
    ),
}
WORKLOADS["idle"] = dataclasses.replace(WORKLOADS["idle"], pcie_generation=1)  # the link steps down idle
WORKLOADS["busy-flat+1"] = WORKLOADS["busy-flat"]  # same GPU, one phase later (only the queue differs)
WORKLOADS["batch-cut-queued"] = WORKLOADS["batch-cut"]  # same GPU, queue built up
MIXED_CYCLE: tuple[str, ...] = ("idle", "compute-bound", "memory-bound", "launch-bound")

# clock_event_reasons (a bitmask), power_limit_watts (a setting) and pcie_generation do not blend between
# keyframes: the simulated GPU takes them from the keyframe it is moving toward (`Blend.end`).

H100_DEFAULT_POWER_LIMIT_WATTS = 700.0
H100_MAX_SM_CLOCK_MHZ = 1980.0
H100_PCIE_GENERATION = 5  # H100 SXM: PCIe Gen 5 x16
H100_PCIE_WIDTH = 16
H100_NVLINK_LINKS = 18  # NVLink 4
BURST = 0.1  # phases one error event is spread over (a rate of 1 / BURST per phase, for one burst)


@dataclass(frozen=True)
class Health:
    """A GPU's condition beside its load. Rates are events per phase (integrated exactly, like energy,
    and counted whole: `Plan.events`); the states come from the keyframe moved toward (`Blend.end`)."""

    xid_per_phase: tuple[tuple[int, float], ...] = ()  # (XID code, events per phase)
    ecc_corrected_per_phase: float = 0.0
    ecc_uncorrected_per_phase: float = 0.0
    pcie_replays_per_phase: float = 0.0
    nvlink_errors_per_phase: tuple[tuple[str, float], ...] = ()  # (NVLINK_ERROR_TYPES entry, per phase)
    remapped_rows_correctable: int = 0
    remapped_rows_uncorrectable: int = 0
    row_remap_pending: bool = False
    row_remap_failed: bool = False
    pcie_link_generation: int = H100_PCIE_GENERATION  # the generation the link trained at, at most
    pcie_width: int = H100_PCIE_WIDTH
    nvlink_links_up: int = H100_NVLINK_LINKS

    def xid_rate(self, code: int) -> float:
        return dict(self.xid_per_phase).get(code, 0.0)

    def nvlink_rate(self, kind: str) -> float:
        return dict(self.nvlink_errors_per_phase).get(kind, 0.0)


_ONE = 1 / BURST  # one event over a burst
_REMAP_PENDING = Health(ecc_corrected_per_phase=1.0, remapped_rows_uncorrectable=1, row_remap_pending=True)
HEALTH: dict[str, Health] = {
    "ok": Health(),
    # An application fault (XID 13: graphics engine exception; 31: MMU fault): counted, no action.
    "xid-13": Health(xid_per_phase=((13, _ONE),)),
    "xid-31": Health(xid_per_phase=((31, _ONE),)),
    # A contained uncorrectable ECC error (XID 94: restart the application, reset when convenient).
    "xid-94": Health(xid_per_phase=((94, _ONE),)),
    # An NVLink error (XID 74: reset the GPU).
    "xid-74": Health(xid_per_phase=((74, _ONE),)),
    # Memory: a trickle of corrected errors (normal at low rates), then one uncorrectable error that is
    # contained (XID 94) and whose row is marked for remapping (XID 63): the remap waits for a GPU reset.
    "ecc-trickle": Health(ecc_corrected_per_phase=1.0),
    "ecc-trickle-fast": Health(ecc_corrected_per_phase=5.0),
    "ecc-uncorrectable": dataclasses.replace(
        _REMAP_PENDING, ecc_uncorrected_per_phase=_ONE, xid_per_phase=((63, _ONE), (94, _ONE))
    ),
    "remap-pending": _REMAP_PENDING,
    # PCIe: a link that trained at half width (a badly seated card or riser), and one that trained at Gen 3
    # with 60 replays per phase (signal integrity).
    "pcie-x8": Health(pcie_width=8),
    "pcie-gen3-replays": Health(pcie_link_generation=3, pcie_replays_per_phase=60.0),
    # NVLink: a link drops (two recovery attempts, XID 74) and stays down; a link that replays.
    "nvlink-drop": Health(
        nvlink_errors_per_phase=(("recovery", 2 * _ONE),),
        xid_per_phase=((74, _ONE),),
        nvlink_links_up=H100_NVLINK_LINKS - 1,
    ),
    "nvlink-down": Health(nvlink_links_up=H100_NVLINK_LINKS - 1),
    "nvlink-replays": Health(nvlink_errors_per_phase=(("replay", 300.0), ("crc_flit", 3000.0))),
}
assert all(kind in NVLINK_ERROR_TYPES for h in HEALTH.values() for kind, _ in h.nvlink_errors_per_phase)
# Every XID code a simulated GPU can report (besides the actionable ones it reports from 0).
HEALTH_XIDS: tuple[int, ...] = tuple(sorted({code for h in HEALTH.values() for code, _ in h.xid_per_phase}))


@dataclass(frozen=True)
class Keyframe:
    """At `phase` (in phases since the scenario started) the GPU runs exactly `workload`."""

    phase: float
    workload: str  # a key of WORKLOADS (and of exporter.demo.engine.SERVING)


@dataclass(frozen=True)
class Timeline:
    """Keyframes in time order, the first at phase 0; two at the same phase make a step."""

    keyframes: tuple[Keyframe, ...]
    extrapolate: bool = False  # after the last keyframe keep the last segment's slope (a growing queue)

    def segments(self) -> list[tuple[float, float, str, str]]:
        """(start, end, from, to) of every segment of non-zero length, in phases."""
        frames = self.keyframes
        return [
            (a.phase, b.phase, a.workload, b.workload)
            for a, b in itertools.pairwise(frames)
            if b.phase > a.phase
        ]


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario: a cycle of workloads (one per phase) or per-GPU timelines (GPU i: timelines[i % n]);
    `health`: per-GPU timelines of HEALTH states the same way (none: every GPU "ok")."""

    description: str
    cycle: tuple[str, ...] = ()
    timelines: tuple[Timeline, ...] = ()
    health: tuple[Timeline, ...] = ()
    engine_up: bool = True  # False: the simulated engine answers 503 (the exporter really fails to scrape)
    alert: str = ""  # the alert of deploy/prometheus/rules/alerts.yml this scenario demonstrates


def _steady(workload: str) -> tuple[Timeline, ...]:
    return (Timeline((Keyframe(0, workload),)),)


def _events(*events: tuple[float, str], after: str = "ok", before: str = "ok") -> Timeline:
    """A health timeline: `before`, then at each (phase, state) a burst of that state, then `after`."""
    frames = [Keyframe(0, before)]
    for phase, state in events:
        frames += [Keyframe(phase, before), Keyframe(phase, state)]
        frames += [Keyframe(phase + BURST, state), Keyframe(phase + BURST, after)]
        before = after
    return Timeline(tuple(frames))


SCENARIO_SPECS: dict[str, ScenarioSpec] = {
    "idle": ScenarioSpec("no load: 114 W, utilization 0", cycle=("idle",)),
    "compute-bound": ScenarioSpec(
        "a bf16 GEMM loop: tensor pipes 93 %, at the 700 W cap", cycle=("compute-bound",)
    ),
    "memory-bound": ScenarioSpec("a device-to-device copy: DRAM bandwidth 89.5 %", cycle=("memory-bound",)),
    "launch-bound": ScenarioSpec(
        "a loop of tiny kernels: utilization 36 %, SMs idle", cycle=("launch-bound",)
    ),
    "mixed": ScenarioSpec("the four workloads above in turn, one phase each, GPUs offset", cycle=MIXED_CYCLE),
    "healthy": ScenarioSpec(
        "steady decode at batch ~128, utilization 89 %, no queue: no alert fires",
        timelines=_steady("healthy"),
    ),
    "busy-flat": ScenarioSpec(
        "utilization 92 %, batch full at 256, tokens/s flat while the queue grows 60 per GPU per phase",
        timelines=(Timeline((Keyframe(0, "busy-flat"), Keyframe(1, "busy-flat+1")), extrapolate=True),),
        alert="TPWBusyButFlat",
    ),
    "input-bound": ScenarioSpec(
        "utilization 22 % with 8 requests running and 12 waiting all the time: the host starves the GPU",
        timelines=_steady("input-bound"),
        alert="TPWUnderUtilized",
    ),
    "bandwidth-saturated": ScenarioSpec(
        "load ramps over one phase to DRAM bandwidth 88 %, then tokens/s stays at its maximum with a queue",
        timelines=(Timeline((Keyframe(0, "bandwidth-ramp"), Keyframe(1, "bandwidth-saturated"))),),
        alert="TPWMemoryBandwidthBound",
    ),
    "efficiency-regression": ScenarioSpec(
        "healthy for one phase, then slower kernels: the same tokens/s at 690 W instead of 560 W "
        "(tokens/J −19 %)",
        timelines=(Timeline((Keyframe(0, "healthy"), Keyframe(1, "healthy"), Keyframe(1, "regressed"))),),
        alert="TPWEfficiencyRegression",
    ),
    "batch-drop": ScenarioSpec(
        "healthy for five phases, then the batch is cut from 128 to 16 per GPU and the queue builds to 150",
        timelines=(
            Timeline(
                (
                    Keyframe(0, "healthy"),
                    Keyframe(5, "healthy"),
                    Keyframe(5, "batch-cut"),
                    Keyframe(6, "batch-cut-queued"),
                )
            ),
        ),
        alert="TPWBatchSizeDrop",
    ),
    "memory-leak": ScenarioSpec(
        "memory used climbs linearly from 64 to 79 GiB over 60 phases while tokens/s halves (GC pauses)",
        timelines=(Timeline((Keyframe(0, "healthy"), Keyframe(60, "leaked"))),),
        alert="TPWGpuMemoryLeak",
    ),
    "throttling": ScenarioSpec(
        "even GPUs slow down thermally over one phase (89 °C, 1290 MHz); odd GPUs run healthy for five "
        "phases, then a 400 W power limit caps them (sw_power_cap, 1200 MHz)",
        timelines=(
            Timeline((Keyframe(0, "healthy"), Keyframe(1, "thermal-throttled"))),
            Timeline((Keyframe(0, "healthy"), Keyframe(5, "healthy"), Keyframe(5, "power-capped"))),
        ),
        alert="TPWGpuThrottling",
    ),
    "endpoint-down": ScenarioSpec(
        "the engine's metrics page answers 503 and its GPUs idle: the exporter fails to scrape it",
        timelines=_steady("idle"),
        engine_up=False,
        alert="TPWEndpointDown",
    ),
    "xid-errors": ScenarioSpec(
        "healthy load; even GPUs report XID 13 (an application fault) at phase 2 and XID 94 (contained ECC "
        "error) at phase 4, odd GPUs XID 31 (MMU fault) at phase 2 and XID 74 (NVLink error) at phase 6",
        timelines=_steady("healthy"),
        health=(_events((2, "xid-13"), (4, "xid-94")), _events((2, "xid-31"), (6, "xid-74"))),
        alert="TPWGpuXidError",
    ),
    "ecc-remap-pending": ScenarioSpec(
        "healthy load; even GPUs correct one ECC error per phase, then at phase 3 an uncorrectable one (XID "
        "94, 63) leaves a row remap pending until a reset; odd GPUs only correct five per phase",
        timelines=_steady("healthy"),
        health=(
            _events((3, "ecc-uncorrectable"), before="ecc-trickle", after="remap-pending"),
            Timeline((Keyframe(0, "ecc-trickle-fast"),)),
        ),
        alert="TPWGpuMemoryErrors",
    ),
    "power-capped": ScenarioSpec(
        "every GPU's power limit lowered to 400 W (default 700 W) from the start: at the cap (sw_power_cap), "
        "SM clock 1200 MHz all day, so no better clock of the day to compare with",
        timelines=_steady("power-capped"),
        alert="TPWGpuThrottling",
    ),
    "pcie-degraded": ScenarioSpec(
        "healthy load; even GPUs' PCIe link trained at x8 of x16, odd GPUs' at Gen 3 of Gen 5 with 60 "
        "replays per phase",
        timelines=_steady("healthy"),
        health=(Timeline((Keyframe(0, "pcie-x8"),)), Timeline((Keyframe(0, "pcie-gen3-replays"),))),
        alert="TPWGpuInterconnectDegraded",
    ),
    "nvlink-errors": ScenarioSpec(
        "healthy load; an NVLink link of even GPUs drops at phase 2 (recovery errors, XID 74) and stays "
        "down; odd GPUs' links replay 300 times per phase",
        timelines=_steady("healthy"),
        health=(_events((2, "nvlink-drop"), after="nvlink-down"), Timeline((Keyframe(0, "nvlink-replays"),))),
        alert="TPWGpuInterconnectDegraded",
    ),
}
SCENARIOS: tuple[str, ...] = SCENARIO_NAMES  # SCENARIO_SPECS has exactly these, in this order


@dataclass(frozen=True)
class Blend:
    """A GPU between two workloads: weight 0 is `start`, 1 is `end`, above 1 extrapolates."""

    start: str
    end: str
    weight: float = 0.0

    def mix(self, value: Callable[[str], float]) -> float:
        first = value(self.start)
        if self.weight == 0.0:
            return first
        return first + (value(self.end) - first) * self.weight


def _timeline_blend(timeline: Timeline, u: float) -> Blend:
    """Where the timeline is at u phases."""
    segments = timeline.segments()
    last = timeline.keyframes[-1]
    if u >= last.phase:
        if timeline.extrapolate and segments:
            start, end, a, b = segments[-1]
            return Blend(a, b, (u - start) / (end - start))
        return Blend(last.workload, last.workload)
    for start, end, a, b in segments:
        if start <= u < end:
            return Blend(a, b, (u - start) / (end - start))
    first = timeline.keyframes[0].workload  # u < 0: before the scenario started
    return Blend(first, first)


def _timeline_integral(timeline: Timeline, u: float, rate: Callable[[str], float]) -> float:
    """Exact ∫₀ᵘ of the linearly blended rate, in rate × phases. Past the last keyframe of an extrapolated
    timeline the rate keeps its last slope but never goes below 0 (a falling rate stops at 0: no rate is
    negative, and a count never goes back)."""
    segments = timeline.segments()
    total = 0.0
    for start, end, a, b in segments:
        if u <= start:
            break
        length, span = min(u, end) - start, end - start
        first, second = rate(a), rate(b)
        total += first * length + (second - first) * length * length / (2 * span)
    last = timeline.keyframes[-1]
    if u > last.phase:
        length = u - last.phase
        if timeline.extrapolate and segments:
            start, end, a, b = segments[-1]
            first, second = rate(a), rate(b)
            slope = (second - first) / (end - start)
            if slope < 0 and second + slope * length < 0:  # reaches 0 at -second / slope, then stays there
                total += second * second / (-2 * slope) if second > 0 else 0.0
            else:
                total += second * length + slope * length * length / 2
        else:
            total += rate(last.workload) * length
    return total


class Plan:
    """What every GPU runs at time t (seconds since the simulation started), and the exact integrals."""

    name: str
    phase_seconds: float

    def blend_at(self, gpu: int, t: float) -> Blend:
        raise NotImplementedError

    def integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        """Exact ∫₀ᵗ rate(what the GPU runs at s) ds, rate blended like every other number."""
        raise NotImplementedError

    def gpu_class(self, gpu: int) -> Hashable:
        """GPUs of the same class run the same workloads at every moment (their integrals are equal)."""
        return gpu

    def health_at(self, gpu: int, t: float) -> Blend:
        """The GPU's health state (HEALTH names) at t."""
        raise NotImplementedError

    def health_integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        """Exact ∫₀ᵗ rate(the GPU's health state at s) ds."""
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        """True when no GPU ever leaves the "ok" health state (no error ever counts)."""
        raise NotImplementedError

    def events(self, gpu: int, t: float, per_phase: Callable[[Health], float]) -> int:
        """Whole events up to t of a health rate given per phase."""
        if self.healthy:
            return 0
        phases = self.health_integral(gpu, t, lambda state: per_phase(HEALTH[state])) / self.phase_seconds
        return math.floor(phases + 1e-6)  # a burst's 1/BURST × BURST can come out a hair under 1

    def name_at(self, t: float) -> str:
        return self.name

    def engine_up(self, t: float) -> bool:
        return True

    def value_at(self, gpu: int, t: float, value: Callable[[str], float]) -> float:
        return self.blend_at(gpu, t).mix(value)

    def energy_joules(self, gpu: int, t: float) -> float:
        """Exact ∫₀ᵗ power dt for this GPU, the wobble included."""
        energy = self.integral(gpu, t, lambda workload: WORKLOADS[workload].power_watts)
        omega, phase = wobble(gpu)
        return energy + POWER_WOBBLE_WATTS / omega * (math.cos(phase) - math.cos(omega * t + phase))

    def power_watts(self, gpu: int, t: float) -> float:
        omega, phase = wobble(gpu)
        base = self.value_at(gpu, t, lambda workload: WORKLOADS[workload].power_watts)
        return base + POWER_WOBBLE_WATTS * math.sin(omega * t + phase)


class Scenario(Plan):
    """One named scenario of SCENARIO_SPECS; `phase_seconds` is the length of one phase."""

    def __init__(self, name: str, phase_seconds: float) -> None:
        if name not in SCENARIO_SPECS:
            raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
        if not phase_seconds > 0:
            raise ValueError(f"phase_seconds must be > 0, got {phase_seconds!r}")
        self.name = name
        self.phase_seconds = phase_seconds
        self.spec = SCENARIO_SPECS[name]
        self.cycle = self.spec.cycle  # empty for timeline scenarios

    def blend_at(self, gpu: int, t: float) -> Blend:
        """A cycle: GPU i starts i phases into it, so a mixed node shows every pattern at once."""
        if self.cycle:
            workload = self.cycle[(int(t // self.phase_seconds) + gpu) % len(self.cycle)]
            return Blend(workload, workload)
        timelines = self.spec.timelines
        return _timeline_blend(timelines[gpu % len(timelines)], t / self.phase_seconds)

    def integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        if not self.cycle:
            timelines = self.spec.timelines
            timeline = timelines[gpu % len(timelines)]
            return _timeline_integral(timeline, t / self.phase_seconds, rate) * self.phase_seconds
        # A cycle: whole cycles, whole phases, then the partial one.
        period = self.phase_seconds * len(self.cycle)
        rates = [rate(self.cycle[(k + gpu) % len(self.cycle)]) for k in range(len(self.cycle))]
        cycles, rest = divmod(t, period)
        whole_phases, partial = divmod(rest, self.phase_seconds)
        total = cycles * sum(rates) * self.phase_seconds
        total += sum(rates[: int(whole_phases)]) * self.phase_seconds
        return total + rates[int(whole_phases) % len(rates)] * partial

    def engine_up(self, t: float) -> bool:
        return self.spec.engine_up

    def gpu_class(self, gpu: int) -> Hashable:
        # A cycle's GPU i starts i phases into it; a timeline scenario gives GPU i timelines[i % n].
        return gpu % len(self.cycle) if self.cycle else gpu % len(self.spec.timelines)

    @property
    def healthy(self) -> bool:
        return not self.spec.health

    def _health_timeline(self, gpu: int) -> Timeline | None:
        lines = self.spec.health
        return lines[gpu % len(lines)] if lines else None

    def health_at(self, gpu: int, t: float) -> Blend:
        timeline = self._health_timeline(gpu)
        return _timeline_blend(timeline, t / self.phase_seconds) if timeline else Blend("ok", "ok")

    def health_integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        timeline = self._health_timeline(gpu)
        if timeline is None:
            return rate("ok") * t
        return _timeline_integral(timeline, t / self.phase_seconds, rate) * self.phase_seconds


class Schedule(Plan):
    """Scenarios one after the other for the given seconds each, repeating; each starts its own clock."""

    def __init__(self, entries: Sequence[tuple[str, float]], phase_seconds: float) -> None:
        if not entries:
            raise ValueError("a schedule needs at least one (scenario, seconds) entry")
        self.entries = tuple((Scenario(name, phase_seconds), float(seconds)) for name, seconds in entries)
        if any(not seconds > 0 for _, seconds in self.entries):
            raise ValueError("every schedule entry needs seconds > 0")
        self.phase_seconds = phase_seconds
        self.period = sum(seconds for _, seconds in self.entries)
        self.name = ",".join(f"{scenario.name}:{seconds:g}" for scenario, seconds in self.entries)

    def locate(self, t: float) -> tuple[int, int, float]:
        """(whole repetitions, entry index, seconds into that entry) at t."""
        cycles, rest = divmod(max(t, 0.0), self.period)
        for index, (_, seconds) in enumerate(self.entries):
            if rest < seconds:
                return int(cycles), index, rest
            rest -= seconds
        last = len(self.entries) - 1  # floating-point edge at the very end of a repetition
        return int(cycles), last, self.entries[last][1]

    def blend_at(self, gpu: int, t: float) -> Blend:
        _, index, local = self.locate(t)
        return self.entries[index][0].blend_at(gpu, local)

    def integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        return self._accumulate(t, lambda scenario, seconds: scenario.integral(gpu, seconds, rate))

    def gpu_class(self, gpu: int) -> Hashable:
        return tuple(scenario.gpu_class(gpu) for scenario, _ in self.entries)

    def health_at(self, gpu: int, t: float) -> Blend:
        _, index, local = self.locate(t)
        return self.entries[index][0].health_at(gpu, local)

    @property
    def healthy(self) -> bool:
        return all(scenario.healthy for scenario, _ in self.entries)

    def health_integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        return self._accumulate(t, lambda scenario, seconds: scenario.health_integral(gpu, seconds, rate))

    def _accumulate(self, t: float, part: Callable[[Scenario, float], float]) -> float:
        """Σ over the schedule up to t of `part(scenario, seconds into it)`: whole repetitions, whole entries,
        then the current entry."""
        cycles, index, local = self.locate(t)
        whole = [part(scenario, seconds) for scenario, seconds in self.entries]
        return cycles * sum(whole) + sum(whole[:index]) + part(self.entries[index][0], local)

    def name_at(self, t: float) -> str:
        return self.entries[self.locate(t)[1]][0].name

    def engine_up(self, t: float) -> bool:
        _, index, local = self.locate(t)
        return self.entries[index][0].engine_up(local)


def wobble(gpu: int) -> tuple[float, float]:
    return 2 * math.pi / WOBBLE_PERIOD_SECONDS, gpu * 0.7
