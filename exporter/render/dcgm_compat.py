"""dcgm-exporter's metric names, units and labels for the fields tpw-exporter has (`compat: [dcgm]`).

So that dashboards, alerts and recording rules written for dcgm-exporter (NVIDIA's Grafana dashboard among
them) read a node where tpw-exporter runs instead, or beside it. The names and units are those of
dcgm-exporter's default counters (etc/default-counters.csv: clocks in MHz, temperature in °C, power in W,
energy in mJ, utilisation in %, framebuffer in MiB, DCGM_FI_PROF_* ratios 0..1, PCIe bytes per second),
plus the profiling fields its dcp-metrics-included.csv has (SM activity and occupancy, the FP pipes).

Only fields tpw-exporter measures are served, each from the same reading as its `tpw_` series: no field is
ever written as a made-up 0. What dcgm-exporter has and tpw-exporter does not read (memory temperature,
encoder/decoder utilisation, reserved framebuffer, the last XID's code, …) is absent; the table in
docs/metrics.md ("dcgm-exporter names") lists both. PCIe replays and remapped rows come from the GPU health
read (`GpuSample.health`) on GPUs that report them.

Labels, as dcgm-exporter writes them: `gpu`, `UUID`, `pci_bus_id`, `device` (nvidiaN, from the device's
minor number), `modelName`, the host label (`Hostname` as every dcgm-exporter release up to 4.5.3-4.8.2
writes it; `hostname` as its main branch does since #655; configurable), `DCGM_FI_DRIVER_VERSION` (a label
in its default counters), and `namespace`/`pod`/`container` where pod attribution has one container
holding the GPU (`snapshot_pods`).

MIG: on a GPU with MIG on, each GPU instance has its own rows of the fields DCGM reads per GPU instance
(framebuffer used and free, the DCGM_FI_PROF_* ratios: `DcgmField.mig`), labelled as dcgm-exporter labels
them (its GPU's labels, `GPU_I_PROFILE` and `GPU_I_ID`, and the pod labels of the
container holding that MIG device), from the same readings as `tpw_mig_*`. One difference, on purpose:
dcgm-exporter also repeats the GPU's own fields (power, clocks, temperature, energy) on every GPU instance's
row (tests/fixtures/dcgm_exporter/a30_mig_issue317.prom), so a sum over rows counts a MIG GPU's power once per
instance; here they stay one row per GPU, which a query selecting by `gpu` reads the same.

dcgm-exporter types its counters (energy) `counter` without the `_total` suffix, which OpenMetrics does not
allow (a counter's samples end in `_total`), and Prometheus negotiates OpenMetrics: such a field is typed
`unknown` here, so that its name is dcgm-exporter's in both formats. PromQL's `rate()` reads it all the same.

Imported only when `compat` asks for it (exporter.node.build_daemon): off, it costs nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.model import MIB, GpuSample, MigDevice, Snapshot
from exporter.render.exposition import mig_ratio

if TYPE_CHECKING:
    from exporter.config import DcgmCompatConfig

Getter = Callable[[GpuSample], "float | None"]
MigGetter = Callable[[MigDevice], "float | None"]
# GPU UUID → the pod labels dcgm-exporter adds (`namespace`, `pod`, `container`) for the pod using the GPU.
PodLabels = Callable[[Snapshot], Mapping[str, Mapping[str, str]]]
POD_LABELS: tuple[str, ...] = ("namespace", "pod", "container")


@dataclass(frozen=True, slots=True)
class DcgmField:
    """One dcgm-exporter field: its name, exposition type, its HELP as dcgm-exporter writes it, its value."""

    name: str
    type: str  # "gauge", or "unknown" for dcgm-exporter's counters (see the module docstring)
    help: str
    value: Getter
    mig: MigGetter | None = None  # its value for a GPU instance of a GPU with MIG on (see the docstring)


def _scaled(getter: Callable[[GpuSample], float | None], factor: float) -> Getter:
    def value(gpu: GpuSample) -> float | None:
        reading = getter(gpu)
        return reading * factor if reading is not None else None

    return value


def _ratio(key: str) -> Getter:
    return lambda gpu: gpu.profiling.ratios.get(key) if gpu.profiling is not None else None


def _rate(key: str) -> Getter:
    return lambda gpu: gpu.profiling.rates.get(key) if gpu.profiling is not None else None


def _used_mib(used: int | None) -> float | None:
    """Framebuffer in whole MiB, as DCGM gives it."""
    return float(used // MIB) if used is not None else None


def _free_mib(total: int | None, used: int | None) -> float | None:
    return float((total - used) // MIB) if total is not None and used is not None else None


def _fb_used(gpu: GpuSample) -> float | None:
    return _used_mib(gpu.memory_used_bytes)


def _fb_free(gpu: GpuSample) -> float | None:
    return _free_mib(gpu.info.memory_total_bytes, gpu.memory_used_bytes)


def _mig_fb_used(device: MigDevice) -> float | None:
    return _used_mib(device.memory_used_bytes)


def _mig_fb_free(device: MigDevice) -> float | None:
    return _free_mib(device.memory_total_bytes, device.memory_used_bytes)


def _health(name: str) -> Getter:
    """A value of the GPU's health read (`GpuSample.health`, issue 14's GPU health fields), as a number."""

    def value(gpu: GpuSample) -> float | None:
        reading = getattr(getattr(gpu, "health", None), name, None)
        return float(reading) if reading is not None else None

    return value


def _energy_millijoules(gpu: GpuSample) -> float | None:
    # NVML's counter is whole millijoules (tpw keeps it in J): back to the integer dcgm-exporter shows.
    return float(round(gpu.energy_joules * 1000)) if gpu.energy_joules is not None else None


# In dcgm-exporter's order (default-counters.csv, then the DCP fields of dcp-metrics-included.csv).
FIELDS: tuple[DcgmField, ...] = (
    DcgmField(
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
        _scaled(lambda g: g.sm_clock_hertz, 1e-6),
    ),
    DcgmField(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        _scaled(lambda g: g.memory_clock_hertz, 1e-6),
    ),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: g.temperature_celsius),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: g.power_watts),
    DcgmField(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "unknown",
        "Total energy consumption since boot (in mJ).",
        _energy_millijoules,
    ),
    DcgmField(
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "GPU utilization (in %).",
        _scaled(lambda g: g.utilization_ratio, 100),
    ),
    DcgmField(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "Memory utilization (in %).",
        _scaled(lambda g: g.memory_utilization_ratio, 100),
    ),
    DcgmField(
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "unknown", "Total number of PCIe retries.", _health("pcie_replays")
    ),
    DcgmField("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", _fb_free, _mig_fb_free),
    DcgmField("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", _fb_used, _mig_fb_used),
    DcgmField(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "unknown",
        "Number of remapped rows for uncorrectable errors",
        _health("remapped_rows_uncorrectable"),
    ),
    DcgmField(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "unknown",
        "Number of remapped rows for correctable errors",
        _health("remapped_rows_correctable"),
    ),
    DcgmField(
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "Whether remapping of rows has failed",
        _health("row_remap_failed"),
    ),
    DcgmField(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
        _ratio("graphics_active"),
        mig_ratio("graphics_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_SM_ACTIVE",
        "gauge",
        "The ratio of cycles an SM has at least 1 warp assigned.",
        _ratio("sm_active"),
        mig_ratio("sm_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "gauge",
        "The ratio of number of warps resident on an SM.",
        _ratio("sm_occupancy"),
        mig_ratio("sm_occupancy"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        _ratio("tensor_active"),
        mig_ratio("tensor_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        _ratio("dram_bandwidth_utilization"),
        mig_ratio("dram_bandwidth_utilization"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
        "gauge",
        "Ratio of cycles the fp64 pipes are active.",
        _ratio("fp64_active"),
        mig_ratio("fp64_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
        "gauge",
        "Ratio of cycles the fp32 pipes are active.",
        _ratio("fp32_active"),
        mig_ratio("fp32_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
        "gauge",
        "Ratio of cycles the fp16 pipes are active.",
        _ratio("fp16_active"),
        mig_ratio("fp16_active"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "gauge",
        "The rate of data transmitted over the PCIe bus - including both protocol headers and data "
        "payloads - in bytes per second.",
        _rate("pcie_tx_bytes_per_second"),
    ),
    DcgmField(
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "gauge",
        "The rate of data received over the PCIe bus - including both protocol headers and data "
        "payloads - in bytes per second.",
        _rate("pcie_rx_bytes_per_second"),
    ),
    DcgmField(
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "gauge",
        "NVLink transmit bandwidth (in bytes/sec).",
        _rate("nvlink_tx_bytes_per_second"),
    ),
    DcgmField(
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "gauge",
        "NVLink receive bandwidth (in bytes/sec).",
        _rate("nvlink_rx_bytes_per_second"),
    ),
)


def snapshot_pods(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """Pod attribution's `Snapshot.gpu_pods` (`tpw_gpu_pod_info`, where Kubernetes attribution is on) as
    dcgm-exporter's pod labels, by GPU or MIG device UUID: only for a device one container holds. A GPU
    shared by several containers gets none (dcgm-exporter would repeat its rows per pod; a series has one
    value to give)."""
    holders: dict[str, set[tuple[str, str, str]]] = {}
    for held in getattr(snapshot, "gpu_pods", ()):  # absent where pod attribution is not in this build
        holders.setdefault(held.uuid, set()).add((held.namespace, held.pod, held.container))
    return {
        uuid: dict(zip(POD_LABELS, next(iter(pods)), strict=True))
        for uuid, pods in holders.items()
        if len(pods) == 1
    }


def default_hostname() -> str:
    """What dcgm-exporter puts in its host label: $NODE_NAME (Kubernetes sets it), else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


class DcgmCompat:
    """The dcgm-exporter families of a snapshot (a `MetricSource` of the renderer)."""

    def __init__(
        self, hostname_label: str = "Hostname", hostname: str | None = None, pods: PodLabels | None = None
    ) -> None:
        self.hostname_label = hostname_label  # "Hostname", "hostname" or "none" (no host label)
        self.hostname = hostname if hostname is not None else default_hostname()
        # GPU UUID → namespace, pod, container of the pod using it; by default from pod attribution
        # (`snapshot_pods`): no pod labels where it is off, as dcgm-exporter without its Kubernetes mapping.
        self.pods = pods if pods is not None else snapshot_pods

    @classmethod
    def from_config(cls, config: DcgmCompatConfig, pods: PodLabels | None = None) -> DcgmCompat:
        return cls(config.hostname_label, config.hostname, pods)

    def labels(
        self, gpu: GpuSample, snapshot: Snapshot, pods: Mapping[str, Mapping[str, str]]
    ) -> dict[str, str]:
        """The labels dcgm-exporter gives a whole GPU's series."""
        info = gpu.info
        labels = {"gpu": str(info.index), "UUID": info.uuid, "pci_bus_id": info.pci_bus_id}
        if info.minor_number is not None:
            labels["device"] = f"nvidia{info.minor_number}"
        labels["modelName"] = info.name
        if self.hostname_label != "none" and self.hostname:
            labels[self.hostname_label] = self.hostname
        if snapshot.node.driver_version:
            labels["DCGM_FI_DRIVER_VERSION"] = snapshot.node.driver_version
        for key in POD_LABELS:
            value = pods.get(info.uuid, {}).get(key)
            if value:
                labels[key] = value
        return labels

    def mig_labels(
        self, gpu_labels: Mapping[str, str], device: MigDevice, pods: Mapping[str, Mapping[str, str]]
    ) -> dict[str, str]:
        """The labels dcgm-exporter gives a GPU instance's series: its GPU's, with `GPU_I_PROFILE` and
        `GPU_I_ID`, and the pod labels of the container holding the MIG device."""
        labels = {key: value for key, value in gpu_labels.items() if key not in POD_LABELS}
        labels["GPU_I_PROFILE"] = device.profile
        labels["GPU_I_ID"] = str(device.gpu_instance)
        for key in POD_LABELS:
            held = pods.get(device.uuid, {}).get(key)
            if held:
                labels[key] = held
        return labels

    def families(self, snapshot: Snapshot) -> list[Metric]:
        live = [gpu for gpu in snapshot.gpus if gpu.up]
        if not live:
            return []
        pods = self.pods(snapshot)
        labelled = [(gpu, self.labels(gpu, snapshot, pods)) for gpu in live]
        # GPU instances of GPUs with MIG on: the first compute instance of each (DCGM's GPU_I entity; its
        # memory and GPM are the GPU instance's, whatever its compute instances)
        instances = [
            (device, self.mig_labels(labels, device, pods))
            for gpu, labels in labelled
            for device in _first_per_gpu_instance(gpu.mig)
        ]
        families = []
        for spec in FIELDS:
            family = Metric(spec.name, spec.help, spec.type)
            for gpu, labels in labelled:
                value = spec.value(gpu)
                if value is not None:
                    family.add_sample(spec.name, labels, float(value))
            if spec.mig is not None:
                for device, labels in instances:
                    value = spec.mig(device)
                    if value is not None:
                        family.add_sample(spec.name, labels, float(value))
            if family.samples:  # as dcgm-exporter: a field no GPU has is not on the page
                families.append(family)
        return families


def _first_per_gpu_instance(devices: tuple[MigDevice, ...]) -> list[MigDevice]:
    seen: set[int] = set()
    first = []
    for device in devices:
        if device.gpu_instance not in seen:
            seen.add(device.gpu_instance)
            first.append(device)
    return first
