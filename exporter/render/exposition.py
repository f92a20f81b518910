"""Snapshot → exposition bytes, once per tick, in Prometheus text 0.0.4 and OpenMetrics 1.0.

Metric families are built with prometheus_client's custom-collector types, so escaping and both formats
follow the reference library. Absent values (None) produce no sample at all: a GPU without GPM has no
`tpw_gpu_sm_active_ratio` series rather than a misleading 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from exporter import __version__
from exporter.model import (
    CLOCK_EVENT_REASONS,
    MAX_XID_CODES,
    PROFILING_RATES,
    PROFILING_RATIOS,
    XID_OTHER,
    GpuHealth,
    GpuSample,
    MigDevice,
    Profiling,
    Snapshot,
)
from exporter.render.families import GaugeTable, gauge, table_families
from exporter.render.writer import expositions

# (metric name, help, value getter) for the per-GPU gauges that come straight from one sample field.
GPU_GAUGES: GaugeTable[GpuSample] = (
    (
        "tpw_gpu_power_watts",
        "Instantaneous board power draw (NVML field POWER_INSTANT).",
        lambda g: g.power_watts,
    ),
    ("tpw_gpu_power_limit_watts", "Enforced power limit.", lambda g: g.power_limit_watts),
    (
        "tpw_gpu_utilization_ratio",
        "NVML GPU utilization: fraction of the last sample period in which any kernel ran. "
        "High does not mean busy SMs; compare tpw_gpu_sm_active_ratio.",
        lambda g: g.utilization_ratio,
    ),
    (
        "tpw_gpu_memory_controller_utilization_ratio",
        "NVML memory utilization: fraction of the sample period in which device memory was read or written.",
        lambda g: g.memory_utilization_ratio,
    ),
    ("tpw_gpu_memory_used_bytes", "Device memory in use.", lambda g: g.memory_used_bytes),
    ("tpw_gpu_memory_total_bytes", "Device memory installed.", lambda g: g.info.memory_total_bytes),
    ("tpw_gpu_sm_clock_hertz", "Current SM clock.", lambda g: g.sm_clock_hertz),
    ("tpw_gpu_memory_clock_hertz", "Current memory clock.", lambda g: g.memory_clock_hertz),
    ("tpw_gpu_temperature_celsius", "GPU die temperature.", lambda g: g.temperature_celsius),
    (
        "tpw_gpu_dram_peak_bandwidth_bytes_per_second",
        "Theoretical peak DRAM bandwidth: memory bus width × max memory clock × 2 (double data rate).",
        lambda g: g.info.dram_peak_bandwidth_bytes_per_second,
    ),
)

PROFILING_HELP: dict[str, str] = {
    "graphics_active": "Profiling: fraction of the window in which the graphics/compute engine was active.",
    "sm_active": "Profiling: fraction of SMs busy, averaged over the window (SM activity).",
    "sm_occupancy": "Profiling: resident warps as a fraction of the theoretical maximum, averaged over the "
    "window.",
    "tensor_active": "Profiling: fraction of the window the SMs' tensor pipes (any precision) were active.",
    "dram_bandwidth_utilization": "Profiling: DRAM bandwidth used as a fraction of the theoretical peak.",
    "fp16_active": "Profiling: fraction of the window the non-tensor FP16 pipe was active.",
    "fp32_active": "Profiling: fraction of the window the non-tensor FP32 pipe was active.",
    "fp64_active": "Profiling: fraction of the window the non-tensor FP64 pipe was active.",
    "pcie_rx_bytes_per_second": "Profiling: PCIe traffic into the GPU over the window.",
    "pcie_tx_bytes_per_second": "Profiling: PCIe traffic out of the GPU over the window.",
    "nvlink_rx_bytes_per_second": "Profiling: NVLink traffic into the GPU (dcgm-exporter only).",
    "nvlink_tx_bytes_per_second": "Profiling: NVLink traffic out of the GPU (dcgm-exporter only).",
}


@dataclass(frozen=True, slots=True)
class Exposition:
    """The bytes `/metrics` serves until the next tick, in both formats."""

    snapshot: Snapshot
    text: bytes
    openmetrics: bytes


def _gpu_families(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    info = InfoMetricFamily(
        "tpw_gpu",
        'Static GPU identity; join on `gpu`. simulated="true" marks the demo node.',
        labels=["gpu"],
    )
    up = gauge("tpw_gpu_up", "1 if the GPU was read this tick, 0 if it is lost or its read failed.", ["gpu"])
    supported = gauge(
        "tpw_gpu_profiling_supported",
        "1 if the GPU supports GPM profiling metrics (Hopper and newer).",
        ["gpu"],
    )
    for gpu in gpus:
        label = str(gpu.info.index)
        info.add_metric(
            [label],
            {
                "uuid": gpu.info.uuid,
                "name": gpu.info.name,
                "pci_bus_id": gpu.info.pci_bus_id,
                "compute_capability": gpu.info.compute_capability,
                "simulated": "true" if gpu.info.simulated else "false",
            },
        )
        up.add_metric([label], 1.0 if gpu.up else 0.0)
        supported.add_metric([label], 1.0 if gpu.info.profiling_supported else 0.0)
    yield from (info, up, supported)

    live = [gpu for gpu in gpus if gpu.up]
    yield from table_families(GPU_GAUGES, ["gpu"], [((str(gpu.info.index),), gpu) for gpu in live])

    energy = CounterMetricFamily(
        "tpw_gpu_energy_joules",
        "Energy consumed since the driver loaded "
        "(NVML total energy counter, mJ → J; it advances every ~100 ms).",
        labels=["gpu"],
    )
    for gpu in live:
        if gpu.energy_joules is not None:
            energy.add_metric([str(gpu.info.index)], gpu.energy_joules)
    yield energy

    clock_events = gauge(
        "tpw_gpu_clock_event_active",
        "1 while NVML reports this clock event (throttle) reason, e.g. sw_power_cap or hw_thermal_slowdown.",
        ["gpu", "reason"],
    )
    for gpu in live:
        if gpu.clock_event_reasons is not None:
            for reason, bit in CLOCK_EVENT_REASONS.items():
                clock_events.add_metric(
                    [str(gpu.info.index), reason], 1.0 if gpu.clock_event_reasons & bit else 0.0
                )
    yield clock_events

    yield from _health_families(live)
    yield from _profiling_families(live)
    yield from _mig_families(live)


def _health(getter: Callable[[GpuHealth], float | bool | None]) -> Callable[[GpuSample], float | None]:
    """A getter of the GPU's latest health read (None without one); flags become 1 / 0."""

    def value(gpu: GpuSample) -> float | None:
        found = getter(gpu.health) if gpu.health is not None else None
        return float(found) if found is not None else None

    return value


# (metric name, help, value getter) of the per-GPU health gauges (docs/metrics.md, "GPU health").
GPU_HEALTH_GAUGES: GaugeTable[GpuSample] = (
    (
        "tpw_gpu_power_default_limit_watts",
        "Default power limit of the board (NVML). An enforced limit below it was lowered on purpose.",
        _health(lambda h: h.power_default_limit_watts),
    ),
    (
        "tpw_gpu_sm_clock_max_hertz",
        "Maximum SM clock of the GPU (NVML max clock info).",
        _health(lambda h: h.sm_clock_max_hertz),
    ),
    (
        "tpw_gpu_pcie_link_generation",
        "Current PCIe link generation. An idle GPU steps it down to save power; under load it should "
        "equal tpw_gpu_pcie_link_max_generation.",
        lambda g: g.pcie_generation,
    ),
    (
        "tpw_gpu_pcie_link_width",
        "PCIe link width in lanes, as of the last GPU health read; below tpw_gpu_pcie_link_max_width the "
        "link trained degraded.",
        lambda g: g.pcie_width,
    ),
    (
        "tpw_gpu_pcie_link_max_generation",
        "Highest PCIe link generation this GPU and its slot can do together (NVML).",
        _health(lambda h: h.pcie_max_generation),
    ),
    (
        "tpw_gpu_pcie_link_max_width",
        "Widest PCIe link this GPU and its slot can do together, in lanes (NVML).",
        _health(lambda h: h.pcie_max_width),
    ),
    (
        "tpw_gpu_row_remap_pending",
        "1 while a memory row remap waits for a GPU reset (NVML remapped rows; Ampere and newer).",
        _health(lambda h: h.row_remap_pending),
    ),
    (
        "tpw_gpu_row_remap_failed",
        "1 if a memory row remap ever failed on this GPU (NVML remapped rows): the GPU needs service.",
        _health(lambda h: h.row_remap_failed),
    ),
    (
        "tpw_gpu_retired_pages_pending",
        "1 while a memory page retirement waits for the next driver reload (GPUs before Ampere).",
        _health(lambda h: h.retired_pages_pending),
    ),
    (
        "tpw_gpu_nvlink_links",
        "NVLink links this GPU has (whose state NVML reports).",
        _health(lambda h: h.nvlink_links),
    ),
    (
        "tpw_gpu_nvlink_links_up",
        "NVLink links up (active) now.",
        _health(lambda h: h.nvlink_links_up),
    ),
)


def _health_families(gpus: list[GpuSample]) -> Iterator[Metric]:
    """XID, ECC and interconnect counters, and the health gauges, of the GPUs that are up."""
    yield from table_families(GPU_HEALTH_GAUGES, ["gpu"], [((str(gpu.info.index),), gpu) for gpu in gpus])
    xid = CounterMetricFamily(
        "tpw_gpu_xid_errors",
        "XID errors the driver reported for this GPU (NVML events) since the exporter started listening, by "
        f"code; every actionable code from 0, codes past the first {MAX_XID_CODES} as xid {XID_OTHER}. "
        "NVIDIA's Xid catalogue says what each means.",
        labels=["gpu", "xid"],
    )
    ecc = CounterMetricFamily(
        "tpw_gpu_ecc_errors",
        "ECC memory errors since the driver loaded (NVML volatile counts), type corrected or uncorrected.",
        labels=["gpu", "type"],
    )
    ecc_aggregate = CounterMetricFamily(
        "tpw_gpu_ecc_aggregate_errors",
        "ECC memory errors over the GPU's life (NVML aggregate counts), type corrected or uncorrected.",
        labels=["gpu", "type"],
    )
    retired = gauge(
        "tpw_gpu_retired_pages",
        "Memory pages retired (GPUs before Ampere), by cause: single_bit (repeated correctable errors) or "
        "double_bit (an uncorrectable error).",
        ["gpu", "cause"],
    )
    remapped = gauge(
        "tpw_gpu_remapped_rows",
        "Memory rows remapped to spare rows (Ampere and newer), by the cause: correctable or uncorrectable "
        "errors.",
        ["gpu", "cause"],
    )
    replays = CounterMetricFamily(
        "tpw_gpu_pcie_replays",
        "PCIe replays (link-level retransmissions) since the driver loaded: a steady rise is a bad link.",
        labels=["gpu"],
    )
    nvlink_bytes = CounterMetricFamily(
        "tpw_gpu_nvlink_bytes",
        "NVLink data bytes over all links, direction tx (sent) or rx (received), protocol overhead excluded.",
        labels=["gpu", "direction"],
    )
    nvlink_errors = CounterMetricFamily(
        "tpw_gpu_nvlink_errors",
        "NVLink errors summed over the GPU's links, by type: crc_flit, crc_data, replay, recovery.",
        labels=["gpu", "type"],
    )
    for gpu in gpus:
        label = str(gpu.info.index)
        for code, count in gpu.xid_errors:
            xid.add_metric([label, code], float(count))
        if gpu.nvlink_tx_bytes is not None:
            nvlink_bytes.add_metric([label, "tx"], gpu.nvlink_tx_bytes)
        if gpu.nvlink_rx_bytes is not None:
            nvlink_bytes.add_metric([label, "rx"], gpu.nvlink_rx_bytes)
        health = gpu.health
        if health is None:
            continue
        pairs = (
            (ecc, "corrected", health.ecc_corrected_volatile),
            (ecc, "uncorrected", health.ecc_uncorrected_volatile),
            (ecc_aggregate, "corrected", health.ecc_corrected_aggregate),
            (ecc_aggregate, "uncorrected", health.ecc_uncorrected_aggregate),
            (retired, "single_bit", health.retired_pages_single_bit),
            (retired, "double_bit", health.retired_pages_double_bit),
            (remapped, "correctable", health.remapped_rows_correctable),
            (remapped, "uncorrectable", health.remapped_rows_uncorrectable),
        )
        for family, kind, value in pairs:
            if value is not None:
                family.add_metric([label, kind], float(value))
        if health.pcie_replays is not None:
            replays.add_metric([label], float(health.pcie_replays))
        for kind, count in health.nvlink_errors:
            nvlink_errors.add_metric([label, kind], float(count))
    yield from (xid, ecc, ecc_aggregate, retired, remapped, replays, nvlink_bytes, nvlink_errors)


def _profiling_metric(key: str) -> str:
    return f"tpw_gpu_{key}" if key in PROFILING_RATES else f"tpw_gpu_{key}_ratio"


def _profiling_getter(key: str) -> Callable[[Profiling], float | None]:
    if key in PROFILING_RATES:
        return lambda profiling: profiling.rates.get(key)
    return lambda profiling: profiling.ratios.get(key)


# The GPM window, then one gauge per GPM metric: tpw_gpu_<rate key>, tpw_gpu_<ratio key>_ratio.
PROFILING_GAUGES: GaugeTable[Profiling] = (
    (
        "tpw_gpu_profiling_window_seconds",
        "Length of the window the profiling metrics cover (GPM: between two GPM samples; dcgm-exporter: "
        "since the previous read of its page, whose values are DCGM's latest).",
        lambda profiling: profiling.window_seconds,
    ),
    *(
        (_profiling_metric(key), help_text, _profiling_getter(key))
        for key, help_text in PROFILING_HELP.items()
    ),
)


def _profiling_families(gpus: list[GpuSample]) -> Iterator[Metric]:
    rows = [((str(gpu.info.index),), gpu.profiling) for gpu in gpus if gpu.profiling is not None]
    source = InfoMetricFamily(
        "tpw_gpu_profiling_source",
        "Where the GPU's profiling ratios come from this tick: source gpm (NVML GPM) or dcgm-exporter "
        "(profiling.url); scope gpu (whole-GPU values) or mig (combined from its MIG instances' values).",
        labels=["gpu"],
    )
    for (label,), profiling in rows:
        scope = "mig" if profiling.mig_instances else "gpu"
        source.add_metric([label], {"source": profiling.source, "scope": scope})
    yield source
    yield from table_families(PROFILING_GAUGES, ["gpu"], rows)


MIG_LABELS = ["gpu", "gpu_instance", "compute_instance", "mig_profile"]


def mig_ratio(key: str) -> Callable[[MigDevice], float | None]:
    """A MIG device's GPM ratio `key` (its GPU instance's), or None."""
    return lambda device: device.profiling.ratios.get(key) if device.profiling is not None else None


# One gauge per MIG device (labels MIG_LABELS); GPM values are its GPU instance's.
MIG_GAUGES: GaugeTable[MigDevice] = (
    (
        "tpw_mig_memory_used_bytes",
        "MIG device memory in use (NVML memory info of the MIG device).",
        lambda d: d.memory_used_bytes,
    ),
    (
        "tpw_mig_memory_total_bytes",
        "MIG device memory, its slice of the GPU's.",
        lambda d: d.memory_total_bytes,
    ),
    (
        "tpw_mig_multiprocessors",
        "SMs of the MIG device (NVML device attributes): its share of the GPU's compute.",
        lambda d: d.multiprocessors,
    ),
    (
        "tpw_mig_profiling_window_seconds",
        "Length of the window of the MIG device's GPM metrics (between two GPM samples of its GPU instance).",
        lambda d: d.profiling.window_seconds if d.profiling is not None else None,
    ),
    *(
        (
            f"tpw_mig_{key}_ratio",
            PROFILING_HELP[key].replace("Profiling:", "MIG GPU instance profiling:"),
            mig_ratio(key),
        )
        for key in PROFILING_RATIOS
    ),
)


def _mig_families(gpus: list[GpuSample]) -> Iterator[Metric]:
    """MIG mode per GPU, and per MIG device its identity, memory and GPM ratios (absent without MIG)."""
    mode = gauge(
        "tpw_gpu_mig_mode",
        "1 while MIG is on for the GPU, 0 while off; absent where NVML has no MIG.",
        ["gpu"],
    )
    info = InfoMetricFamily(
        "tpw_mig",
        'A MIG device of the GPU: uuid (MIG-…, as `gpus:` and the kubelet name it); simulated="true" on the '
        "demo node. Join on gpu, gpu_instance, compute_instance.",
        labels=MIG_LABELS,
    )
    rows = []
    for gpu in gpus:
        if gpu.mig_enabled is not None:
            mode.add_metric([str(gpu.info.index)], 1.0 if gpu.mig_enabled else 0.0)
        for device in gpu.mig:
            labels = (
                str(gpu.info.index),
                str(device.gpu_instance),
                str(device.compute_instance),
                device.profile,
            )
            info.add_metric(
                list(labels), {"uuid": device.uuid, "simulated": "true" if gpu.info.simulated else "false"}
            )
            rows.append((labels, device))
    yield from (mode, info)
    yield from table_families(MIG_GAUGES, MIG_LABELS, rows)


def _exporter_families(snapshot: Snapshot) -> Iterator[Metric]:
    build = InfoMetricFamily("tpw_build", "tpw-exporter build information.")
    build.add_metric([], {"version": __version__})
    yield build

    node = InfoMetricFamily("tpw_node", "NVIDIA driver, NVML and CUDA driver versions seen by the exporter.")
    if snapshot.node.driver_version:
        node.add_metric(
            [],
            {
                "driver_version": snapshot.node.driver_version,
                "nvml_version": snapshot.node.nvml_version,
                "cuda_driver_version": snapshot.node.cuda_driver_version,
            },
        )
    yield node

    if snapshot.node.simulated_scenario is not None:
        simulation = InfoMetricFamily(
            "tpw_simulation", "Present only on the simulated demo node: every GPU series here is simulated."
        )
        simulation.add_metric([], {"scenario": snapshot.node.simulated_scenario})
        yield simulation

    up = gauge("tpw_source_up", "1 if the source delivered on the last tick, 0 if it failed.", ["source"])
    duration = gauge(
        "tpw_source_collect_duration_seconds", "Time the source took on the last tick.", ["source"]
    )
    for status in snapshot.sources:
        up.add_metric([status.name], 1.0 if status.up else 0.0)
        duration.add_metric([status.name], status.duration_seconds)
    yield from (up, duration)

    ready = gauge("tpw_exporter_ready", "1 once the first collection tick has completed.", [])
    ready.add_metric([], 1.0 if snapshot.tick > 0 else 0.0)
    yield ready
    if snapshot.tick > 0:
        tick_time = gauge(
            "tpw_last_tick_timestamp_seconds", "Unix time of the last completed collection tick.", []
        )
        tick_time.add_metric([], snapshot.wall_time)
        tick_duration = gauge("tpw_tick_duration_seconds", "Time the last tick took, sources to bytes.", [])
        tick_duration.add_metric([], snapshot.duration_seconds)
        ticks = CounterMetricFamily("tpw_ticks", "Collection ticks completed since start.")
        ticks.add_metric([], float(snapshot.tick))
        yield from (tick_time, tick_duration, ticks)


MetricSource = Callable[[Snapshot], Iterable[Metric]]


class Renderer:
    """Renders snapshots; holds the process collector so `process_*` metrics describe the exporter itself.

    `extra` adds families computed from the snapshot by other layers (derived metrics, endpoints).
    """

    def __init__(self, extra: Iterable[MetricSource] = ()) -> None:
        self._extra = tuple(extra)
        self._process = ProcessCollector(registry=None)

    def families(self, snapshot: Snapshot) -> list[Metric]:
        families = [*_exporter_families(snapshot), *_gpu_families(snapshot.gpus)]
        for source in self._extra:
            families.extend(source(snapshot))
        families.extend(self._process.collect())
        return families

    def render(self, snapshot: Snapshot) -> Exposition:
        text, openmetrics = expositions(self.families(snapshot))
        return Exposition(snapshot=snapshot, text=text, openmetrics=openmetrics)
