"""The typed snapshot one tick produces: GPU samples, source health, and the values derived from them.

Plain frozen dataclasses: cheap to build every tick, safe to share between the collecting thread and the
HTTP handlers, and serialisable to JSON through pydantic (`exporter.app`). Every measured field is
optional: `None` means "not measured on this GPU" and renders as an absent series, never as 0.

Also the schema facts every layer shares, each defined once here: the normalized endpoint fields, engine
names, bound states and evidence signals, log levels, scenario names, and the value types the
configuration builds (`Thresholds`, `Site`), so that `exporter.config` imports no other module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

MIB = 1024 * 1024
GIB = 1024 * MIB

# Log levels the `log_level` setting and --log-level accept, from most to least verbose.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

# Serving engines with a built-in profile (`exporter.engines.PROFILES`), in the order help and docs list them.
ENGINE_NAMES: tuple[str, ...] = ("vllm", "sglang", "tgi", "triton", "llamacpp")
ENGINE_AUTO = "auto"  # detect the engine from the metric names on its page
ENGINE_GENERIC = "generic"  # read the page with the endpoint's own `mapping`
# What an endpoint's `engine` setting accepts.
ENDPOINT_ENGINES: tuple[str, ...] = (ENGINE_AUTO, *ENGINE_NAMES, ENGINE_GENERIC)

# GPM profiling ratios (0..1) and rates, keyed by the short name used in metric names:
# tpw_gpu_<key>_ratio / tpw_gpu_<key>.
PROFILING_RATIOS: tuple[str, ...] = (
    "graphics_active",
    "sm_active",
    "sm_occupancy",
    "tensor_active",
    "dram_bandwidth_utilization",
    "fp16_active",
    "fp32_active",
    "fp64_active",
)
PROFILING_RATES: tuple[str, ...] = (
    "pcie_rx_bytes_per_second",
    "pcie_tx_bytes_per_second",
    "nvlink_rx_bytes_per_second",  # dcgm-exporter's DCGM_FI_PROF_NVLINK_RX_BYTES only (not read through GPM)
    "nvlink_tx_bytes_per_second",
)
# Where a GPU's `Profiling` came from (`profiling.source` picks them; tpw_gpu_profiling_source_info).
PROFILING_SOURCE_GPM = "gpm"  # NVML GPM (Hopper and newer); also what the demo node simulates
PROFILING_SOURCE_DCGM = "dcgm-exporter"  # the DCGM_FI_PROF_* series of a dcgm-exporter page
# The `profiling.source` setting: auto = GPM where the GPU supports it, dcgm-exporter for the others.
PROFILING_SOURCES: tuple[str, ...] = ("auto", PROFILING_SOURCE_GPM, PROFILING_SOURCE_DCGM, "off")
# Other exporters' names and labels the exporter can also serve (`compat`): dcgm = dcgm-exporter's.
COMPAT_FORMATS: tuple[str, ...] = ("dcgm",)
# The label dcgm-exporter puts the node's name in: `Hostname` in every release up to 4.5.3-4.8.2,
# `hostname` on its main branch since d5e5f51 (#655); "none" leaves it out (dcgm-exporter --no-hostname).
DCGM_HOSTNAME_LABELS: tuple[str, ...] = ("Hostname", "hostname", "none")

# Roofline bound of a GPU over the derive window (`exporter.derive.bound.classify_bound`), in the order
# tpw_gpu_bound lists them, and the window-mean evidence ratios the classification reads.
BOUND_STATES: tuple[str, ...] = ("compute", "memory", "latency", "idle", "mixed")
EVIDENCE_SIGNALS: tuple[str, ...] = ("tensor", "fp", "dram", "sm", "graphics")

# Clock-event (throttle) reasons NVML reports as a bitmask; the label values are these names.
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

# XID codes whose events need action, after NVIDIA's Xid catalogue (docs/runbooks/TPWGpuXidError.md says what
# each means and what to do). The alert rules match exactly these; a GPU whose XID events are being listened
# for exports each of them from 0, so that the first event is an increase Prometheus can see.
XID_CRITICAL: tuple[int, ...] = (48, 64, 74, 79, 95)  # drain the node, reset the GPU or reboot
XID_WARNING: tuple[int, ...] = (63, 92, 94)  # restart the application, reset when convenient, or watch
XID_ACTIONABLE: tuple[int, ...] = tuple(sorted(XID_CRITICAL + XID_WARNING))
MAX_XID_CODES = 32  # distinct `xid` label values per GPU; events of any further code count as XID_OTHER
XID_OTHER = "other"
# NVLink error counters (nvmlDeviceGetNvLinkErrorCounter), summed over a GPU's links: the `type` label.
NVLINK_ERROR_TYPES: tuple[str, ...] = ("crc_flit", "crc_data", "replay", "recovery")


# What one endpoint's page may bring in (`EndpointConfig` defaults; docs/metrics.md, "Serving endpoints"):
# the largest page, compressed or not (the biggest real pages, vLLM serving many models, are about 1 MB);
# the models kept per endpoint (each has at most 19 normalized series and 4 latency histograms of at most 20
# buckets); the longest model name kept.
DEFAULT_MAX_BODY_BYTES = 4 * MIB
DEFAULT_MAX_MODELS = 100
DEFAULT_MAX_LABEL_LENGTH = 256
# A counter above 2**53 cannot count one more (a float's integer precision ends there): a broken page.
MAX_COUNTER_VALUE = float(2**53)
# Why an endpoint's normalized series were left out (`tpw_endpoint_dropped_series_total{reason}`).
DROP_REASONS: tuple[str, ...] = ("too_many_series", "label_too_long", "invalid_value")


@dataclass(frozen=True, slots=True)
class EndpointField:
    """One normalized field a serving engine's page is read into (`EndpointValue.field`).

    Every field is a quantity ≥ 0 (a count, tokens, seconds or a fraction) no larger than `maximum`; any
    other value (NaN, ±Inf, negative, a ratio above 1) is a broken page, left out where the page is read.
    """

    name: str
    kind: Literal["counter", "gauge"]  # counter: only grows, except when the engine restarts
    help: str
    windowed: bool = False  # a work counter whose increase the derive window sums (rates, per joule)
    ratio: bool = False  # a fraction: at most 1

    @property
    def maximum(self) -> float:
        """The largest valid value: 1 for a ratio, MAX_COUNTER_VALUE for a counter, else unbounded."""
        if self.ratio:
            return 1.0
        return MAX_COUNTER_VALUE if self.kind == "counter" else math.inf

    def valid(self, value: float) -> bool:
        """Whether `value` is a reading of this field: finite, ≥ 0 and ≤ `maximum`."""
        return 0.0 <= value <= self.maximum and math.isfinite(value)


# The normalized fields, in the order engine profiles and error messages list them.
ENDPOINT_FIELDS: tuple[EndpointField, ...] = (
    EndpointField(
        "requests_total",
        "counter",
        "Completed requests by outcome "
        "(success, failure, aborted, other; unknown when the engine has no split).",
        windowed=True,
    ),
    EndpointField("prompt_tokens_total", "counter", "Prompt (prefill) tokens processed.", windowed=True),
    EndpointField("generation_tokens_total", "counter", "Tokens generated (decode).", windowed=True),
    EndpointField("requests_running", "gauge", "Requests in the running batch now."),
    EndpointField("requests_waiting", "gauge", "Requests queued, waiting to be scheduled."),
    EndpointField("kv_cache_usage_ratio", "gauge", "KV-cache usage, 0..1.", ratio=True),
    EndpointField("ttft_seconds_sum", "counter", "Sum of the times to first token (histogram sum)."),
    EndpointField("ttft_seconds_count", "counter", "Requests counted in ttft_seconds_sum (histogram count)."),
    EndpointField("e2e_latency_seconds_sum", "counter", "Sum of the request latencies (histogram sum)."),
    EndpointField(
        "e2e_latency_seconds_count",
        "counter",
        "Requests counted in e2e_latency_seconds_sum (histogram count).",
    ),
    EndpointField("tpot_seconds_sum", "counter", "Sum of the times per output token (histogram sum)."),
    EndpointField(
        "tpot_seconds_count",
        "counter",
        "Observations counted in tpot_seconds_sum (histogram count: requests, or inter-token gaps).",
    ),
    EndpointField("queue_time_seconds_sum", "counter", "Sum of the times requests queued (histogram sum)."),
    EndpointField(
        "queue_time_seconds_count", "counter", "Requests counted in queue_time_seconds_sum (histogram count)."
    ),
    EndpointField(
        "work_units_total",
        "counter",
        "Units of work served by generic endpoints whose unit is not tokens.",
        windowed=True,
    ),
)
ENDPOINT_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in ENDPOINT_FIELDS)
ENDPOINT_FIELDS_BY_NAME: dict[str, EndpointField] = {f.name: f for f in ENDPOINT_FIELDS}
# Every counter field: a value below the previous scrape's is an engine restart (a counter reset).
ENDPOINT_COUNTER_FIELDS: frozenset[str] = frozenset(f.name for f in ENDPOINT_FIELDS if f.kind == "counter")
# The work counters the derive window takes increases of (throughput, per-joule and per-request values).
WINDOWED_COUNTER_FIELDS: tuple[str, ...] = tuple(f.name for f in ENDPOINT_FIELDS if f.windowed)


# The demo's scenarios (`exporter.demo.scenarios.SCENARIO_SPECS` describes each), in help's order.
SCENARIO_NAMES: tuple[str, ...] = (
    "idle",
    "compute-bound",
    "memory-bound",
    "launch-bound",
    "mixed",
    "healthy",
    "busy-flat",
    "input-bound",
    "bandwidth-saturated",
    "efficiency-regression",
    "batch-drop",
    "memory-leak",
    "throttling",
    "endpoint-down",
    "xid-errors",
    "ecc-remap-pending",
    "power-capped",
    "pcie-degraded",
    "nvlink-errors",
)


def check_generic_mapping(mapping: Mapping[str, str], unit: str) -> None:
    """A generic endpoint's mapping (normalized field → source metric name) and unit, or ValueError.

    The error names the offending key and the allowed ones.
    """
    allowed = ", ".join(ENDPOINT_FIELD_NAMES)
    for key, metric in mapping.items():
        if key not in ENDPOINT_FIELD_NAMES:
            raise ValueError(f"unknown normalized field {key!r} in generic mapping; allowed: {allowed}")
        if not isinstance(metric, str) or not metric.strip():
            raise ValueError(f"generic mapping for {key!r} must be a non-empty metric name, got {metric!r}")
    if not unit or not unit.strip():
        raise ValueError("generic endpoint unit must be a non-empty string such as 'tokens' or 'images'")
    if unit == "tokens" and "work_units_total" in mapping:
        raise ValueError(
            "'work_units_total' is only for endpoints whose unit is not tokens; "
            "map 'generation_tokens_total' instead or set another unit"
        )


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Roofline classification thresholds on window-mean GPM ratios (0..1), checked in this order:

    idle     graphics < idle_graphics_below
    compute  max(tensor, fp) >= compute_pipe_at_least
    memory   dram >= memory_dram_at_least and tensor < low_tensor_below
    latency  sm < latency_sm_below and dram < memory_dram_at_least and tensor < low_tensor_below
             (the engine is busy but the SMs are not: launch- or synchronization-bound)
    mixed    anything else (e.g. a decode batch near the ridge point: tensor and DRAM both substantial)

    Calibrated on docs/h100-reference.md; see test_bound.py for every reference row.
    """

    idle_graphics_below: float = 0.05
    compute_pipe_at_least: float = 0.5
    memory_dram_at_least: float = 0.4
    low_tensor_below: float = 0.25
    latency_sm_below: float = 0.3


@dataclass(frozen=True, slots=True)
class Site:
    """Facility figures for cost and carbon; None leaves the matching metric absent."""

    electricity_price_per_kwh: float | None = None
    currency: str = "USD"
    pue: float = 1.0
    carbon_intensity_grams_per_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What does not change while the GPU is attached."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    compute_capability: str = ""
    simulated: bool = False
    memory_total_bytes: int | None = None
    dram_peak_bandwidth_bytes_per_second: float | None = None
    profiling_supported: bool = False
    minor_number: int | None = None  # N of /dev/nvidiaN (dcgm-exporter's `device` label)


@dataclass(frozen=True, slots=True)
class Profiling:
    """Profiling metrics over the window between two samples (ratios 0..1, rates in bytes/s).

    From GPM (`source` "gpm": the window between two GPM samples) or a dcgm-exporter page ("dcgm-exporter":
    its latest DCGM values, the window the time since the previous read). `mig_instances` > 0: no whole-GPU
    values were on the page, these combine that many MIG instances' (`exporter.sources.dcgm_exporter`).
    """

    window_seconds: float
    ratios: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    source: str = PROFILING_SOURCE_GPM
    mig_instances: int = 0


@dataclass(frozen=True, slots=True)
class GpuHealth:
    """What changes slowly or only when something breaks, read on the health cadence
    (`nvml.health_interval_seconds`, first read at start). None: not supported on this GPU (absent).

    Error counts are NVML's own counters: `volatile` since the driver loaded, `aggregate` over the GPU's life.
    """

    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    retired_pages_single_bit: int | None = None  # pages retired after multiple single-bit errors
    retired_pages_double_bit: int | None = None
    retired_pages_pending: bool | None = None  # a retirement waits for the next driver reload
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None  # a remap waits for a GPU reset
    row_remap_failed: bool | None = None  # a remap ever failed
    power_default_limit_watts: float | None = None
    sm_clock_max_hertz: float | None = None
    pcie_max_generation: int | None = None  # the most this GPU and its slot can do
    pcie_max_width: int | None = None
    pcie_replays: int | None = None  # counter
    nvlink_links: int | None = None  # links the GPU has
    nvlink_links_up: int | None = None
    nvlink_errors: tuple[tuple[str, int], ...] = ()  # (NVLINK_ERROR_TYPES entry, count over all links)


# MIG (issue 14): a GPU partitions into at most 7 MIG devices (an H100's 7 compute slices).
MAX_MIG_DEVICES = 7


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device (a compute instance inside a GPU instance) of a GPU with MIG on, at one tick.

    Its layout (ids, UUID, profile, size) is enumerated on the health cadence; memory, processes and GPM are
    read every tick. None: not measured (absent). MIG devices have no energy counter: energy stays the GPU's.
    """

    gpu_instance: int
    compute_instance: int
    uuid: str  # "MIG-…"
    profile: str = ""  # e.g. "1g.10gb"; "" when NVML names none
    multiprocessors: int | None = None  # SMs of the slice (NVML device attributes)
    slices: int | None = None  # GPU-instance compute slices (of the GPU's 7 on an H100)
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    profiling: Profiling | None = None  # GPM of its GPU instance
    process_ids: tuple[int, ...] = ()  # compute processes NVML lists on this MIG device


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one tick. `up` False means the GPU could not be read: only `info` and `error` count."""

    info: GpuInfo
    up: bool = True
    error: str | None = None
    timestamp: float = 0.0  # monotonic seconds when this GPU was read
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # counter since driver load (or since simulation start)
    energy_timestamp: float | None = None  # monotonic seconds matching energy_joules
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    temperature_celsius: float | None = None
    clock_event_reasons: int | None = None  # NVML bitmask, see CLOCK_EVENT_REASONS
    profiling: Profiling | None = None
    process_ids: tuple[int, ...] = ()  # compute processes NVML lists on this GPU
    # (pid, mean SM utilisation 0..1 since the last tick), only while several processes share the GPU
    process_sm_ratios: tuple[tuple[int, float], ...] = ()
    pcie_generation: int | None = None  # current PCIe link (idle GPUs step the generation down)
    pcie_width: int | None = None
    nvlink_tx_bytes: float | None = None  # counters over all links (data, without protocol overhead)
    nvlink_rx_bytes: float | None = None
    # (XID code or XID_OTHER, events since the exporter started listening); () while not listening
    xid_errors: tuple[tuple[str, int], ...] = ()
    health: GpuHealth | None = None  # the latest health-cadence read
    mig_enabled: bool | None = None  # NVML's current MIG mode; None: not reported (no MIG on this GPU)
    mig: tuple[MigDevice, ...] = ()  # the MIG devices while MIG is on, by (gpu_instance, compute_instance)
    # (pid, device memory bytes) of the compute processes NVML lists, where it reports their memory
    process_memory: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Health of one source for one tick: the per-source `up` and duration metrics."""

    name: str
    up: bool
    duration_seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointValue:
    """One normalized value read from a serving engine (see `exporter.engines` for the fields)."""

    field: str  # e.g. "generation_tokens_total", "requests_running", "ttft_seconds_sum"
    model: str  # the engine's model name; "" when the engine has none
    value: float
    outcome: str | None = None  # only for requests_total: success | failure | aborted | other | unknown


@dataclass(frozen=True, slots=True)
class EndpointHistogram:
    """One latency histogram of an endpoint's model (`exporter.histograms`): the engine's own cumulative
    bucket counts, and the same re-bucketed onto the kind's fixed bounds (what is published)."""

    kind: str  # exporter.histograms.KINDS: ttft | tpot | e2e | queue
    model: str
    bounds: tuple[float, ...]  # the engine's finite bucket bounds, in seconds, increasing
    counts: tuple[int, ...]  # cumulative count of observations ≤ each bound
    count: int  # the +Inf bucket: every observation
    buckets: tuple[int, ...]  # cumulative counts at the kind's fixed bounds (conservative re-bucketing)


# `EndpointSample.attribution` of a `gpus: auto` endpoint whose GPUs are not known yet: it has no GPUs.
ATTRIBUTION_PENDING = "pending"
# `EndpointSample.attribution` of a `gpus: auto` endpoint whose GPUs are its pods' (`exporter.k8s`).
ATTRIBUTION_KUBERNETES = "kubernetes"


@dataclass(frozen=True, slots=True)
class EndpointSample:
    """One serving endpoint at one tick. `up` False: the scrape failed, `values` is empty."""

    name: str
    engine: str  # resolved engine profile ("vllm", …); "unknown" while `auto` has not detected one
    url: str
    unit: str = "tokens"  # unit of work: tokens | images | samples | requests
    up: bool = True
    error: str | None = None
    timestamp: float = 0.0  # monotonic seconds when the page was read
    duration_seconds: float = 0.0
    values: tuple[EndpointValue, ...] = ()
    gpus: tuple[int, ...] = ()  # indices of the GPUs attributed to this endpoint
    gpu_shares: tuple[float, ...] = ()  # per entry of `gpus`: the part of that GPU's energy that is ours
    # "config" | "auto" | "kubernetes" (auto: the GPUs its pods hold) | "all" (fallback: every GPU on the
    # node) | "pending" (auto, unresolved: no GPUs)
    attribution: str = "all"
    attribution_note: str | None = None  # why auto attribution fell back, if it did
    errors_total: tuple[tuple[str, int], ...] = ()  # (reason, count since start), cumulative
    dropped_total: tuple[tuple[str, int], ...] = ()  # (DROP_REASONS entry, series since start), cumulative
    resets_total: int = 0  # counters seen going backwards (engine restarts) since start
    process_start_time_seconds: float | None = None  # the engine's own process_start_time_seconds
    histograms: tuple[EndpointHistogram, ...] = ()  # latency histograms with buckets, per kind and model
    mig_devices: tuple[str, ...] = ()  # UUIDs of the MIG devices attributed to this endpoint (of `gpus`)
    # its processes on each GPU, where they are known (auto attribution, the demo): (gpu, memory bytes, mean
    # SM utilisation 0..1 or None when NVML gave no per-process sample)
    gpu_usage: tuple[EndpointGpuUsage, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointGpuUsage:
    """What an endpoint's own processes use of one GPU (NVML's per-process values, summed over them)."""

    gpu: int
    memory_used_bytes: int | None = None
    sm_utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    driver_version: str = ""
    nvml_version: str = ""
    cuda_driver_version: str = ""
    simulated_scenario: str | None = None  # set only on the simulated node


@dataclass(frozen=True, slots=True)
class Slo:
    """An endpoint's latency objective (`slo` in its configuration); None: no objective on that latency."""

    ttft_seconds: float | None = None  # time to first token at most this
    tpot_seconds: float | None = None  # time per output token at most this


@dataclass(frozen=True, slots=True)
class SloAttainment:
    """The share of an endpoint's requests within its SLO over the derive window (`exporter.derive.goodput`):
    `ratio` is the estimate, the truth lies in [lower, upper] (the engine's buckets around the threshold)."""

    slo: str  # SLO_NAMES: ttft | tpot | both (the product of the two)
    ratio: float
    lower: float
    upper: float


# The `slo` label of tpw_endpoint_slo_attainment_ratio.
SLO_NAMES: tuple[str, ...] = ("ttft", "tpot", "both")


@dataclass(frozen=True, slots=True)
class DerivedEndpoint:
    """One endpoint's values over the derive window (`exporter.derive.window`); None: undefined, absent."""

    name: str
    model: str  # the single model served, "multiple" if several, "" if the engine has none
    unit: str = "tokens"
    gpus: tuple[int, ...] = ()  # the GPUs whose energy is attributed (latest step of the window)
    window_seconds: float = 0.0  # time covered by the steps actually used (endpoint and GPUs all present)
    generation_tokens_per_second: float | None = None
    prompt_tokens_per_second: float | None = None
    requests_per_second: float | None = None
    work_units_per_second: float | None = None  # non-token endpoints only
    energy_joules: float | None = None  # energy of the attributed GPUs over the same steps
    power_watts: float | None = None  # energy_joules / the steps' energy-clock duration
    tokens_per_joule: float | None = None
    joules_per_token: float | None = None
    joules_per_request: float | None = None
    work_units_per_joule: float | None = None
    joules_per_work_unit: float | None = None
    gpu_utilization_ratio: float | None = None  # mean NVML utilization of the attributed GPUs
    tokens_per_busy_gpu_second: float | None = None
    energy_cost_per_million_tokens: float | None = None
    co2_grams_per_million_tokens: float | None = None
    slo_attainment: tuple[SloAttainment, ...] = ()  # per SLO_NAMES entry that can be estimated
    goodput_tokens_per_joule: float | None = None  # tokens of requests within the SLO per joule (estimate)
    goodput_tokens_per_joule_bounds: tuple[float, float] | None = None  # (lower, upper) of that estimate


@dataclass(frozen=True, slots=True)
class DerivedGpu:
    """One GPU's values over the derive window. `bound` is None without GPM evidence."""

    index: int
    energy_joules: float | None = None
    power_watts: float | None = None
    dram_bandwidth_bytes_per_second: float | None = None  # current GPM window x peak
    idle_energy_ratio: float | None = None  # only for GPUs attributed to at least one endpoint
    bound: str | None = None  # one of BOUND_STATES
    evidence: dict[str, float] = field(default_factory=dict)  # EVIDENCE_SIGNALS → window mean


@dataclass(frozen=True, slots=True)
class EndpointEnergyTotal:
    """An endpoint's attributed GPU energy since the exporter started: the `…_energy_joules_total` counter.

    Read in the same tick as the endpoint's token and request counters, so PromQL's
    `rate(tokens[w]) / rate(energy[w])` divides increases over the very same samples.
    """

    name: str
    model: str  # as DerivedEndpoint.model: the single model served, "multiple", or ""
    joules: float


@dataclass(frozen=True, slots=True)
class Derived:
    """What `exporter.derive.Deriver` computed from the snapshots inside the derive window."""

    window_seconds: float  # span the window actually covers (first to last snapshot)
    endpoints: tuple[DerivedEndpoint, ...] = ()
    gpus: tuple[DerivedGpu, ...] = ()
    currency: str = "USD"
    energy_totals: tuple[EndpointEnergyTotal, ...] = ()  # every attributed endpoint, since start


@dataclass(frozen=True, slots=True)
class GpuPod:
    """A GPU, or a MIG slice of it, that the kubelet allocated to a container (PodResources API)."""

    gpu: int  # the GPU's index (a MIG slice's parent GPU)
    uuid: str  # the allocated device: the GPU's UUID, or the MIG slice's
    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one tick knows. Immutable; the HTTP side only ever reads the latest one."""

    tick: int
    wall_time: float
    monotonic_time: float
    duration_seconds: float
    gpus: tuple[GpuSample, ...] = ()
    endpoints: tuple[EndpointSample, ...] = ()
    sources: tuple[SourceStatus, ...] = ()
    node: NodeInfo = NodeInfo()
    derived: Derived | None = None  # set by the derive stage (`exporter.derive.Deriver`)
    gpu_pods: tuple[GpuPod, ...] = ()  # set by the Kubernetes stage (`exporter.k8s.view`), when enabled
