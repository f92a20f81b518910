"""Real GPUs through NVML (`pynvml` from nvidia-ml-py), with GPM profiling metrics on Hopper and newer.

Each GPU is read by its own `GpuReader` in a worker thread: NVML's ctypes calls release the GIL, so eight
GPUs cost about as long as the slowest one (the energy counter, ~3 ms on an H100). GPM metrics are
computed between the previous tick's GPM sample and this tick's, so their window equals the interval.

NVML's GPM entry points are not safe to call from several threads at once. On a 2×H100 node
(driver 580.159.04), `nvmlGpmSampleGet` for one GPU running while `nvmlGpmMetricsGet` ran for another
returned doubled or zero SM, occupancy and tensor ratios and DRAM at twice its value, and crashed the
process (SIGSEGV with one thread in each call); with every GPM call serialised the values matched raw
pynvml in every run (docs/multi-gpu.md). So one thread, `nvml-gpm`, makes every GPM call of every GPU,
beside the per-GPU readers. The GPM work (~2.2 ms a GPU on an H100) is thus serial, and the driver
serialises part of the plain reads too: a 4-GPU tick took 21–26 ms against 5–7 ms for one GPU.

Failure policy:
- no NVML library / no driver: `collect` raises SourceError (source up 0) and initialisation is retried
  with exponential backoff up to `nvml.retry_max_seconds`;
- a GPU that fell off the bus (GPU_IS_LOST and friends): that GPU reports up 0 and its series vanish,
  the other GPUs keep flowing;
- a field the GPU does not support: that field is absent (not 0) and is not asked again;
- a read that hangs past the GPU time limit: that GPU reports up 0; it is not asked again until the
  hung call returns, so hung calls never pile up threads;
- a GPM call that hangs: every GPU keeps reporting, without profiling metrics, until it returns.

GPU health (docs/metrics.md, "GPU health"): values that change slowly or only when something breaks (ECC
counts, retired pages and remapped rows, the default power limit, the maximum SM clock, the PCIe link's
maximum, its current width and its replay counter, NVLink link states, error and byte counters) are read
on their own cadence, `health_interval_seconds` (first at start), by the GPU's worker in the tick that is
due, one GPU at a time (`HEALTH_READ_LOCK`); the current PCIe generation is read every tick. XID errors
arrive as NVML events: one thread, `nvml-xid`, waits on an event set for every GPU (`XidWatcher`) and
counts them; a tick only copies the counts. Each of these is optional: NOT_SUPPORTED, FUNCTION_NOT_FOUND or
a pynvml without the function makes it absent and it is not asked again; any other error leaves the GPU up
and the other values flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any

from exporter.model import (
    MAX_MIG_DEVICES,
    MAX_XID_CODES,
    MIB,
    NVLINK_ERROR_TYPES,
    XID_ACTIONABLE,
    XID_OTHER,
    GpuHealth,
    GpuInfo,
    GpuSample,
    MigDevice,
    NodeInfo,
    Profiling,
)
from exporter.sources.base import Collected, ExternalProfiler, ExternalProfiles, Source, SourceError

log = logging.getLogger(__name__)

# GPM metric ids (pynvml.NVML_GPM_METRIC_*) → model keys. Ratios come as percent, rates as MiB/s.
GPM_RATIO_METRICS: dict[str, int] = {
    "graphics_active": 1,  # NVML_GPM_METRIC_GRAPHICS_UTIL
    "sm_active": 2,  # NVML_GPM_METRIC_SM_UTIL
    "sm_occupancy": 3,  # NVML_GPM_METRIC_SM_OCCUPANCY
    "tensor_active": 5,  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    "dram_bandwidth_utilization": 10,  # NVML_GPM_METRIC_DRAM_BW_UTIL
    "fp64_active": 11,  # NVML_GPM_METRIC_FP64_UTIL
    "fp32_active": 12,  # NVML_GPM_METRIC_FP32_UTIL
    "fp16_active": 13,  # NVML_GPM_METRIC_FP16_UTIL
}
GPM_RATE_METRICS: dict[str, int] = {
    "pcie_tx_bytes_per_second": 20,  # NVML_GPM_METRIC_PCIE_TX_PER_SEC
    "pcie_rx_bytes_per_second": 21,  # NVML_GPM_METRIC_PCIE_RX_PER_SEC
}

# Return codes that mean the GPU itself is gone or unusable, not just one field.
GPU_DOWN_CODES = frozenset({15, 16, 28, 999})  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND, UNKNOWN
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NOT_FOUND = 6
TIMEOUT = 10
FUNCTION_NOT_FOUND = 13  # the driver's NVML library lacks the function
# A field the GPU (or this driver) does not have: absent, never asked again.
UNSUPPORTED_CODES = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND})
FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT, milliwatts
FIELD_TOTAL_ENERGY = 83  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, millijoules
CLOCK_SM = 1  # NVML_CLOCK_SM
CLOCK_MEM = 2  # NVML_CLOCK_MEM
TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU

# GPU health (see the module docstring).
ECC_TYPES = {"corrected": 0, "uncorrected": 1}  # NVML_MEMORY_ERROR_TYPE_*
ECC_COUNTERS = {"volatile": 0, "aggregate": 1}  # NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC
RETIREMENT_CAUSES = {"single_bit": 0, "double_bit": 1}  # NVML_PAGE_RETIREMENT_CAUSE_*
FIELD_NVLINK_LINK_COUNT = 91  # NVML_FI_DEV_NVLINK_LINK_COUNT: links the GPU has
FIELD_NVLINK_TX = 138  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KiB; scopeId a link, or ALL_LINKS
FIELD_NVLINK_RX = 139  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
ALL_LINKS = 0xFFFFFFFF  # scopeId UINT_MAX: "aggregate value summed up across all links" (nvml.h)
NVLINK_MAX_LINKS = 18  # probed when the link count field is unavailable (pynvml's NVML_NVLINK_MAX_LINKS wins)
NVLINK_ACTIVE = 1  # nvmlDeviceGetNvLinkState: NVML_FEATURE_ENABLED
# NVML_NVLINK_ERROR_DL_* counter ids by NVLINK_ERROR_TYPES entry.
NVLINK_ERROR_COUNTERS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}
# The same counters summed over every link by the driver, in one field-values call instead of 4 calls a
# link (57 ms of CPU for 18 links on an H100 VM, driver 580; docs/h100-reference.md), in order of preference:
# NVML_FI_DEV_NVLINK_*_ERROR_COUNT_TOTAL (17 µs where supported; not on that driver), then
# NVML_FI_DEV_NVLINK_ERROR_DL_{REPLAY,RECOVERY,CRC} with the all-links scope (1.3 ms there; its CRC
# counter is flit and data CRC errors together: type "crc"); the per-link calls remain for drivers
# with neither.
NVLINK_ERROR_TOTAL_FIELDS = {"replay": 52, "recovery": 59, "crc_flit": 38, "crc_data": 45}
NVLINK_ERROR_DL_FIELDS = {"replay": 161, "recovery": 162, "crc": 163}  # scopeId ALL_LINKS
EVENT_XID = 0x8  # nvmlEventTypeXidCriticalError; the event's eventData is the XID code
MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE: nvmlDeviceGetMigMode's current mode
# A MIG device's profile in its name ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "… MIG 1c.3g.40gb")
MIG_PROFILE_IN_NAME = re.compile(r"\b((?:\d+c\.)?\d+g\.\d+gb(?:\+me)?)\b")


@dataclasses.dataclass(frozen=True)
class MigSlot:
    """A MIG device as enumerated on the health cadence: its handle, and what is fixed while it exists."""

    handle: Any
    gpu_instance: int
    compute_instance: int
    uuid: str
    profile: str
    multiprocessors: int | None
    slices: int | None
    memory_total_bytes: int | None


@dataclasses.dataclass
class GpmWindow:
    """Two GPM sample buffers and the previous sample taken (buffer, time); owned by the GPM thread."""

    samples: list[Any]
    previous: tuple[Any, float] | None = None


def mig_profile(name: str, attributes: Any) -> str:
    """The MIG profile ("1g.10gb"): from the MIG device's name, else its attributes' slices and memory."""
    found = MIG_PROFILE_IN_NAME.search(name)
    if found:
        return found.group(1)
    if attributes is None or not attributes.gpuInstanceSliceCount:
        return ""
    gigabytes = round(int(attributes.memorySizeMB) / 1024)
    profile = f"{int(attributes.gpuInstanceSliceCount)}g.{gigabytes}gb"
    if attributes.computeInstanceSliceCount and (
        attributes.computeInstanceSliceCount != attributes.gpuInstanceSliceCount
    ):
        profile = f"{int(attributes.computeInstanceSliceCount)}c.{profile}"
    return profile


class GpuDown(Exception):
    """The GPU answered with a code that means it is gone; the message names the code."""


class DeviceSelectionError(Exception):
    """`nvml.devices` names a GPU this node does not have; the message names it and lists the GPUs."""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _error_code(exc: BaseException) -> int | None:
    return getattr(exc, "value", None)


_FIELD_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}


def _field_number(field_value: Any) -> float:
    """The number inside an nvmlFieldValue_t, whatever its value type."""
    member = _FIELD_VALUE_MEMBERS.get(field_value.valueType, "ullVal")
    return float(getattr(field_value.value, member))


# The health reads of all GPUs, one at a time. Its calls (NVLink field values and link states, the MIG mode,
# the PCIe replay counter) contend inside the driver when several GPUs make them at once: on 4 H100s a
# health read cost 6.0 ms of CPU per GPU one GPU after another and 20.6 ms with all four at once
# (`benchmarks/nvml_costs.py`, docs/h100-reference.md). Serialised, the tick that reads them takes ~20 ms
# longer on 4 GPUs, once every health interval, instead of 3.4 times the CPU. A GPU waits for it at most
# HEALTH_LOCK_WAIT_SECONDS (8 GPUs' reads one after another take ~50 ms): past that, another GPU's health
# read is hung in the driver, and this GPU skips its own until the next health interval rather than wait
# past its time limit, so one sick GPU never takes the others down with it.
HEALTH_READ_LOCK = threading.Lock()
HEALTH_LOCK_WAIT_SECONDS = 0.2


class GpuReader:
    """Reads one GPU. `read` runs on the GPU's worker thread, `read_profiling` only on the GPM thread; each
    is never called again before its previous call returned.

    `health_interval` (seconds) is the cadence of the health read (`_read_health`); None reads none of the
    health values, nor the per-tick PCIe link and NVLink counters (the exporter before issue 14).
    """

    def __init__(
        self,
        nvml: ModuleType,
        index: int,
        profiling: bool,
        clock: Callable[[], float],
        health_interval: float | None = 30.0,
    ) -> None:
        self._nvml = nvml
        self._clock = clock
        self.index = index
        self._unsupported: set[str] = set()
        self._reported: set[tuple[str, int | None]] = set()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.info = self._read_info(index, profiling)
        self._health_interval = health_interval
        self._health: GpuHealth | None = None
        self._health_due = -float("inf")  # the first tick reads it
        self._nvlink_errors: dict[tuple[int, str], int] = {}  # (link, type) → last count read
        self._nvlink_bytes: tuple[float | None, float | None] = (None, None)  # read with the health
        self._sm_clock_max_mhz: Any = None  # read once: a GPU's maximum clock does not change
        self._pcie_width: Any = None  # the current PCIe link width, read with the health
        self._nvlink_links: tuple[int, ...] | None = None  # found in the first tick (`_links`)
        self._gpm: GpmWindow | None = None
        self._process_utilization_seen = 0  # NVML timestamp (µs) of the newest per-process sample read
        # MIG: the mode and the devices, enumerated with the health read; per GPU instance its GPM window
        # (allocated, used and freed only on the GPM thread)
        self._mig_enabled: bool | None = None
        self._mig_slots: tuple[MigSlot, ...] = ()
        self._mig_gpm: dict[int, GpmWindow] = {}
        if self.info.profiling_supported:
            self._gpm = GpmWindow([nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()])

    # -- static information -------------------------------------------------------------------------
    def _read_info(self, index: int, profiling: bool) -> GpuInfo:
        nvml, handle = self._nvml, self.handle
        pci = self._optional("pci", nvml.nvmlDeviceGetPciInfo, handle)
        capability = self._optional("compute_capability", nvml.nvmlDeviceGetCudaComputeCapability, handle)
        memory = self._optional("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        bus_width_bits = self._optional("bus_width", nvml.nvmlDeviceGetMemoryBusWidth, handle)
        max_memory_mhz = self._optional("max_memory_clock", nvml.nvmlDeviceGetMaxClockInfo, handle, CLOCK_MEM)
        minor = self._optional("minor_number", nvml.nvmlDeviceGetMinorNumber, handle)
        peak = None
        if bus_width_bits and max_memory_mhz:
            # bytes per transfer × transfers per second, double data rate.
            peak = bus_width_bits / 8 * max_memory_mhz * 1e6 * 2
        supported = False
        if profiling:
            support = self._optional("gpm", nvml.nvmlGpmQueryDeviceSupport, handle)
            supported = bool(support is not None and support.isSupportedDevice)
        return GpuInfo(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            compute_capability=f"{capability[0]}.{capability[1]}" if capability else "",
            memory_total_bytes=int(memory.total) if memory is not None else None,
            dram_peak_bandwidth_bytes_per_second=peak,
            profiling_supported=supported,
            minor_number=int(minor) if minor is not None else None,
        )

    # -- one call, with the failure policy --------------------------------------------------------------
    def _optional(self, field: str, function: Callable[..., Any] | str, *args: Any) -> Any:
        """Call NVML; None when the field is unsupported or errs; GpuDown when the GPU is gone. A function
        given by name is looked up here, so that a pynvml without it makes the field unsupported."""
        return self._attempt(field, function, *args)[1]

    def _attempt(self, field: str, function: Callable[..., Any] | str, *args: Any) -> tuple[bool, Any]:
        """(True, result) or (False, None) after applying the failure policy to NVML's error."""
        if field in self._unsupported:
            return False, None
        try:
            call = getattr(self._nvml, function) if isinstance(function, str) else function
            return True, call(*args)
        except self._nvml.NVMLError as exc:
            code = _error_code(exc)
            if code in GPU_DOWN_CODES:
                raise GpuDown(f"{field}: {exc}") from None
            if code in UNSUPPORTED_CODES:
                self._unsupported.add(field)
            self._report_once(field, code, str(exc))
            return False, None
        except AttributeError:  # this pynvml build lacks the function
            self._unsupported.add(field)
            return False, None

    def _report_once(self, field: str, code: int | None, message: str) -> None:
        if (field, code) not in self._reported:
            self._reported.add((field, code))
            level = logging.DEBUG if code in UNSUPPORTED_CODES else logging.WARNING
            log.log(level, "gpu %d: %s unavailable: %s", self.index, field, message)

    # -- one tick ------------------------------------------------------------------------------------------
    def read(self) -> GpuSample:
        """Everything but the GPM metrics (see `read_profiling`)."""
        try:
            return self._read()
        except GpuDown as exc:
            return GpuSample(
                info=self.info, up=False, error=f"GPU unavailable ({exc})", timestamp=self._clock()
            )

    def _read(self) -> GpuSample:
        nvml, handle = self._nvml, self.handle
        started = self._clock()
        power_watts, energy_joules, energy_time = self._power_and_energy()
        limit_mw = self._optional("power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        utilization = self._optional("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._optional("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        sm_mhz = self._optional("sm_clock", nvml.nvmlDeviceGetClockInfo, handle, CLOCK_SM)
        mem_mhz = self._optional("memory_clock", nvml.nvmlDeviceGetClockInfo, handle, CLOCK_MEM)
        temperature = self._optional("temperature", nvml.nvmlDeviceGetTemperature, handle, TEMPERATURE_GPU)
        reasons = self._clock_event_reasons()
        processes = self._optional("processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        health = self._health_now()  # NVLink's byte counters and the MIG layout too
        mig = self._read_mig()
        memory_by_pid = _process_memory(processes or ())
        for _, device_processes in mig:
            for pid, used in _process_memory(device_processes).items():
                memory_by_pid.setdefault(pid, used)
        pids = {int(p.pid) for p in processes or ()}
        pids.update(pid for device, _ in mig for pid in device.process_ids)
        process_ids = tuple(sorted(pids))
        pcie_generation = None
        nvlink_tx, nvlink_rx = self._nvlink_bytes
        if self._health_interval is not None:  # the width is read with the health (`_read_health`)
            pcie_generation = self._optional("pcie_generation", "nvmlDeviceGetCurrPcieLinkGeneration", handle)
        pcie_width = self._pcie_width
        return GpuSample(
            info=self.info,
            timestamp=started,
            power_watts=power_watts,
            power_limit_watts=limit_mw / 1000 if limit_mw is not None else None,
            energy_joules=energy_joules,
            energy_timestamp=energy_time,
            utilization_ratio=utilization.gpu / 100 if utilization is not None else None,
            memory_utilization_ratio=utilization.memory / 100 if utilization is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            sm_clock_hertz=sm_mhz * 1e6 if sm_mhz is not None else None,
            memory_clock_hertz=mem_mhz * 1e6 if mem_mhz is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            clock_event_reasons=int(reasons) if reasons is not None else None,
            process_ids=process_ids,
            process_memory=tuple(sorted(memory_by_pid.items())),
            # Only where processes share the GPU (it is what splits the GPU's energy): 2.1-2.3 ms of CPU a
            # call on an H100 (docs/h100-reference.md), twice the GPU-health budget if read every tick.
            process_sm_ratios=self._process_sm_ratios() if len(process_ids) > 1 else (),
            pcie_generation=int(pcie_generation) if pcie_generation is not None else None,
            pcie_width=int(pcie_width) if pcie_width is not None else None,
            nvlink_tx_bytes=nvlink_tx,
            nvlink_rx_bytes=nvlink_rx,
            health=health,
            mig_enabled=self._mig_enabled,
            mig=tuple(device for device, _ in mig),
        )

    # -- MIG -------------------------------------------------------------------------------------------------
    def _enumerate_mig(self) -> None:
        """The MIG mode, and while it is on the MIG devices (read with the health values: a layout change is
        seen within one health interval). Each call is optional; an empty slot answers NOT_FOUND."""
        mode = self._optional("mig_mode", "nvmlDeviceGetMigMode", self.handle)
        self._mig_enabled = bool(mode[0] == MIG_ENABLED) if mode is not None else None
        if not self._mig_enabled:
            self._mig_slots = ()
            return
        count = self._optional("mig_device_count", "nvmlDeviceGetMaxMigDeviceCount", self.handle)
        slots: list[MigSlot] = []
        for slot in range(min(int(count or 0), MAX_MIG_DEVICES)):
            ok, handle = self._attempt_quiet(
                "mig_device", "nvmlDeviceGetMigDeviceHandleByIndex", self.handle, slot
            )
            if not ok:
                continue
            gpu_instance = self._optional("mig_gpu_instance", "nvmlDeviceGetGpuInstanceId", handle)
            compute_instance = self._optional(
                "mig_compute_instance", "nvmlDeviceGetComputeInstanceId", handle
            )
            uuid = self._optional("mig_uuid", "nvmlDeviceGetUUID", handle)
            if gpu_instance is None or compute_instance is None or uuid is None:
                continue  # without its ids a MIG device cannot be labelled
            attributes = self._optional("mig_attributes", "nvmlDeviceGetAttributes", handle)
            name = self._optional("mig_name", "nvmlDeviceGetName", handle)
            slots.append(
                MigSlot(
                    handle=handle,
                    gpu_instance=int(gpu_instance),
                    compute_instance=int(compute_instance),
                    uuid=_text(uuid),
                    profile=mig_profile(_text(name) if name is not None else "", attributes),
                    multiprocessors=int(attributes.multiprocessorCount) if attributes is not None else None,
                    slices=int(attributes.gpuInstanceSliceCount) if attributes is not None else None,
                    memory_total_bytes=int(attributes.memorySizeMB) * MIB if attributes is not None else None,
                )
            )
        slots.sort(key=lambda s: (s.gpu_instance, s.compute_instance))
        if [s.uuid for s in slots] != [s.uuid for s in self._mig_slots]:
            log.info(
                "gpu %d: MIG devices %s", self.index, [f"{s.profile or s.uuid}" for s in slots] or "none"
            )
        self._mig_slots = tuple(slots)

    def _attempt_quiet(self, field: str, function: str, *args: Any) -> tuple[bool, Any]:
        """`_attempt`, but NOT_FOUND (an empty MIG slot) is an answer, not an error to report."""
        if field in self._unsupported:
            return False, None
        try:
            return True, getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as exc:
            code = _error_code(exc)
            if code == NOT_FOUND:
                return False, None
            if code in GPU_DOWN_CODES:
                raise GpuDown(f"{field}: {exc}") from None
            if code in UNSUPPORTED_CODES:
                self._unsupported.add(field)
            self._report_once(field, code, str(exc))
        except AttributeError:
            self._unsupported.add(field)
        return False, None

    def _read_mig(self) -> list[tuple[MigDevice, Any]]:
        """Each MIG device's memory and compute processes now, with the processes as NVML lists them."""
        read: list[tuple[MigDevice, Any]] = []
        for slot in self._mig_slots:
            memory = self._optional("mig_memory", self._nvml.nvmlDeviceGetMemoryInfo, slot.handle)
            processes = self._optional(
                "mig_processes", self._nvml.nvmlDeviceGetComputeRunningProcesses, slot.handle
            )
            device = MigDevice(
                gpu_instance=slot.gpu_instance,
                compute_instance=slot.compute_instance,
                uuid=slot.uuid,
                profile=slot.profile,
                multiprocessors=slot.multiprocessors,
                slices=slot.slices,
                memory_total_bytes=int(memory.total) if memory is not None else slot.memory_total_bytes,
                memory_used_bytes=int(memory.used) if memory is not None else None,
                process_ids=tuple(sorted({int(p.pid) for p in processes or ()})),
            )
            read.append((device, processes or ()))
        return read

    # -- GPU health ------------------------------------------------------------------------------------------
    def _health_now(self) -> GpuHealth | None:
        """The latest health read, or a new one when it is due (a GPU lost midway: tried again next tick)."""
        if self._health_interval is None:
            return None
        now = self._clock()
        if now >= self._health_due:
            # one GPU's health read at a time, and never a wait past HEALTH_LOCK_WAIT_SECONDS: see above
            if HEALTH_READ_LOCK.acquire(timeout=HEALTH_LOCK_WAIT_SECONDS):
                try:
                    self._health = self._read_health()
                finally:
                    HEALTH_READ_LOCK.release()
            else:
                self._report_once(
                    "health", None, "another GPU's health read has not returned; skipped until the next one"
                )
            self._health_due = now + self._health_interval
        return self._health

    def _read_health(self) -> GpuHealth:
        handle = self.handle
        ecc = {
            (kind, counter): self._optional(
                f"ecc_{kind}_{counter}", "nvmlDeviceGetTotalEccErrors", handle, error_type, counter_type
            )
            for kind, error_type in ECC_TYPES.items()
            for counter, counter_type in ECC_COUNTERS.items()
        }
        retired = {
            cause: self._optional(f"retired_pages_{cause}", "nvmlDeviceGetRetiredPages", handle, source)
            for cause, source in RETIREMENT_CAUSES.items()
        }
        retired_pending = self._optional(
            "retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus", handle
        )
        remap = self._optional("remapped_rows", "nvmlDeviceGetRemappedRows", handle)
        default_limit_mw = self._optional(
            "power_default_limit", "nvmlDeviceGetPowerManagementDefaultLimit", handle
        )
        if self._sm_clock_max_mhz is None:  # 1.6 ms of CPU on an H100: once
            self._sm_clock_max_mhz = self._optional(
                "max_sm_clock", "nvmlDeviceGetMaxClockInfo", handle, CLOCK_SM
            )
        sm_max_mhz = self._sm_clock_max_mhz
        max_generation = self._optional("pcie_max_generation", "nvmlDeviceGetMaxPcieLinkGeneration", handle)
        max_width = self._optional("pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth", handle)
        replays = self._optional("pcie_replays", "nvmlDeviceGetPcieReplayCounter", handle)
        # 30 µs of CPU alone and 1.2 ms beside other GPUs' calls on an H100 (docs/h100-reference.md): on the
        # health cadence, unlike the generation (2 µs), which an idle GPU steps down and back up in seconds
        self._pcie_width = self._optional("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth", handle)
        links_up, nvlink_errors = self._nvlink_health()
        self._nvlink_bytes = self._read_nvlink_bytes()
        self._enumerate_mig()

        def count(value: Any) -> int | None:
            return int(value) if value is not None else None

        def flag(value: Any) -> bool | None:
            return bool(value) if value is not None else None

        def pages(addresses: Any) -> int | None:
            return len(addresses) if addresses is not None else None

        return GpuHealth(
            ecc_corrected_volatile=count(ecc["corrected", "volatile"]),
            ecc_uncorrected_volatile=count(ecc["uncorrected", "volatile"]),
            ecc_corrected_aggregate=count(ecc["corrected", "aggregate"]),
            ecc_uncorrected_aggregate=count(ecc["uncorrected", "aggregate"]),
            retired_pages_single_bit=pages(retired["single_bit"]),
            retired_pages_double_bit=pages(retired["double_bit"]),
            retired_pages_pending=flag(retired_pending),
            remapped_rows_correctable=count(remap[0]) if remap is not None else None,
            remapped_rows_uncorrectable=count(remap[1]) if remap is not None else None,
            row_remap_pending=flag(remap[2]) if remap is not None else None,
            row_remap_failed=flag(remap[3]) if remap is not None else None,
            power_default_limit_watts=default_limit_mw / 1000 if default_limit_mw is not None else None,
            sm_clock_max_hertz=sm_max_mhz * 1e6 if sm_max_mhz is not None else None,
            pcie_max_generation=count(max_generation),
            pcie_max_width=count(max_width),
            pcie_replays=count(replays),
            nvlink_links=len(self._links()) or None,
            nvlink_links_up=links_up,
            nvlink_errors=nvlink_errors,
        )

    def _probe(self, function: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) for any error but a lost GPU: for probing what exists."""
        try:
            return True, function(*args)
        except self._nvml.NVMLError as exc:
            if _error_code(exc) in GPU_DOWN_CODES:
                raise GpuDown(f"{getattr(function, '__name__', 'nvml')}: {exc}") from None
            return False, None
        except AttributeError:
            return False, None

    def _links(self) -> tuple[int, ...]:
        """The links whose state NVML reports (of the link count field, else probed); () without NVLink.
        Found once, in the first tick (a GPU lost then is up 0 and tried again next tick)."""
        if self._nvlink_links is None:
            self._nvlink_links = self._discover_nvlinks()
        return self._nvlink_links

    def _discover_nvlinks(self) -> tuple[int, ...]:
        nvml, handle = self._nvml, self.handle
        ok, values = self._probe(nvml.nvmlDeviceGetFieldValues, handle, [FIELD_NVLINK_LINK_COUNT])
        count = getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS)
        if ok and values[0].nvmlReturn == 0:
            count = int(_field_number(values[0]))
        state = getattr(nvml, "nvmlDeviceGetNvLinkState", None)
        if state is None:
            return ()
        links = tuple(link for link in range(count) if self._probe(state, handle, link)[0])
        log.debug("gpu %d: NVLink links %s", self.index, list(links) or "none")
        return links

    def _nvlink_health(self) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        """Links up, and each error counter summed over the links: by the driver where it can (one call),
        else link by link (a link's last count is then kept while it is down, so the sums never go
        backwards when a link drops)."""
        links = self._links()
        if not links:
            return None, ()
        handle = self.handle
        answered = 0
        active: list[int] = []
        for link in links:
            state = self._optional(f"nvlink_state_{link}", "nvmlDeviceGetNvLinkState", handle, link)
            if state is None:
                continue
            answered += 1
            if state == NVLINK_ACTIVE:
                active.append(link)
        up = len(active) if answered else None
        for key, fields, scope in (
            ("nvlink_error_totals", NVLINK_ERROR_TOTAL_FIELDS, None),
            ("nvlink_error_dl", NVLINK_ERROR_DL_FIELDS, ALL_LINKS),
        ):
            if answered and (driver_totals := self._nvlink_error_totals(key, fields, scope)) is not None:
                return up, driver_totals
        for link in active:
            for name, counter in NVLINK_ERROR_COUNTERS.items():
                field = f"nvlink_{name}_errors_{link}"
                value = self._optional(field, "nvmlDeviceGetNvLinkErrorCounter", handle, link, counter)
                if value is not None:
                    self._nvlink_errors[link, name] = int(value)
        totals = tuple(
            (name, sum(value for (_, kind), value in self._nvlink_errors.items() if kind == name))
            for name in NVLINK_ERROR_TYPES
            if any(kind == name for _, kind in self._nvlink_errors)
        )
        return up, totals

    def _nvlink_error_totals(
        self, field: str, fields: dict[str, int], scope: int | None
    ) -> tuple[tuple[str, int], ...] | None:
        """Error counters (type → field id) summed over the links by the driver, in one call; None where
        unsupported (then the next way is tried, and this one is not asked again)."""
        if field in self._unsupported:
            return None
        request: list[Any] = [fid if scope is None else (fid, scope) for fid in fields.values()]
        values = self._optional(field, self._nvml.nvmlDeviceGetFieldValues, self.handle, request)
        found: dict[int, int] = {}
        for value in values or ():
            if value.nvmlReturn in GPU_DOWN_CODES:
                raise GpuDown(f"field {value.fieldId}: NVML return {value.nvmlReturn}")
            if value.nvmlReturn == 0:
                found[value.fieldId] = int(_field_number(value))
        if not found:
            self._unsupported.add(field)
            return None
        return tuple((name, found[fid]) for name, fid in fields.items() if fid in found)

    def _read_nvlink_bytes(self) -> tuple[float | None, float | None]:
        """NVLink data bytes sent and received over all links (counters), one field-values call, read on the
        health cadence: 1.2 ms of CPU a call on an H100, too dear for every tick."""
        field = "nvlink_throughput"
        if field in self._unsupported or not self._links():
            return None, None
        request = [(FIELD_NVLINK_TX, ALL_LINKS), (FIELD_NVLINK_RX, ALL_LINKS)]
        values = self._optional(field, self._nvml.nvmlDeviceGetFieldValues, self.handle, request)
        if values is None:
            return None, None
        found: dict[int, float] = {}
        for value in values:
            if value.nvmlReturn in GPU_DOWN_CODES:
                raise GpuDown(f"field {value.fieldId}: NVML return {value.nvmlReturn}")
            if value.nvmlReturn in UNSUPPORTED_CODES or value.nvmlReturn == INVALID_ARGUMENT:
                self._unsupported.add(field)  # INVALID_ARGUMENT: a driver without the all-links scope
                self._report_once(field, value.nvmlReturn, f"NVML return {value.nvmlReturn}")
                return None, None
            if value.nvmlReturn == 0:
                found[value.fieldId] = _field_number(value) * 1024  # KiB
        return found.get(FIELD_NVLINK_TX), found.get(FIELD_NVLINK_RX)

    def _power_and_energy(self) -> tuple[float | None, float | None, float | None]:
        """Instant power (W) and the energy counter (J) in one NVML call where the GPU has field values."""
        nvml, handle = self._nvml, self.handle
        values = self._optional(
            "field_values", nvml.nvmlDeviceGetFieldValues, handle, [FIELD_POWER_INSTANT, FIELD_TOTAL_ENERGY]
        )
        now = self._clock()
        power = energy = None
        if values is not None:
            for field_value in values:
                if field_value.nvmlReturn in GPU_DOWN_CODES:
                    raise GpuDown(f"field {field_value.fieldId}: NVML return {field_value.nvmlReturn}")
                if field_value.nvmlReturn != 0:
                    continue
                if field_value.fieldId == FIELD_POWER_INSTANT:
                    power = _field_number(field_value) / 1000
                elif field_value.fieldId == FIELD_TOTAL_ENERGY:
                    energy = _field_number(field_value) / 1000
        if power is None:
            milliwatts = self._optional("power", nvml.nvmlDeviceGetPowerUsage, handle)
            power = milliwatts / 1000 if milliwatts is not None else None
        if energy is None:
            millijoules = self._optional("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            energy = millijoules / 1000 if millijoules is not None else None
            now = self._clock()
        return power, energy, (now if energy is not None else None)

    def _process_sm_ratios(self) -> tuple[tuple[int, float], ...]:
        """Mean SM utilisation (0..1) of each process since the last call, from NVML's per-process samples.

        Asked whenever the GPU has compute processes: it splits a shared GPU's energy between the endpoints on
        it, and gives each endpoint's SM utilisation (`tpw_endpoint_gpu_sm_utilization_ratio`). No samples
        since the last call (NVML_ERROR_NOT_FOUND) gives an empty tuple.
        """
        if "process_utilization" in self._unsupported:
            return ()
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(self.handle, self._process_utilization_seen)
        except self._nvml.NVMLError as exc:
            code = _error_code(exc)
            if code in GPU_DOWN_CODES:
                raise GpuDown(f"process_utilization: {exc}") from None
            if code in UNSUPPORTED_CODES:  # e.g. a GPU in MIG mode: not asked again
                self._unsupported.add("process_utilization")
            if code != NOT_FOUND:
                self._report_once("process_utilization", code, str(exc))
            return ()
        except AttributeError:
            self._unsupported.add("process_utilization")
            return ()
        totals: dict[int, list[float]] = {}
        for sample in samples:
            self._process_utilization_seen = max(self._process_utilization_seen, int(sample.timeStamp))
            totals.setdefault(int(sample.pid), []).append(min(max(sample.smUtil / 100, 0.0), 1.0))
        return tuple(sorted((pid, sum(values) / len(values)) for pid, values in totals.items()))

    def _clock_event_reasons(self) -> int | None:
        nvml, handle = self._nvml, self.handle
        getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        return self._optional("clock_event_reasons", getter, handle) if getter is not None else None

    def read_profiling(self) -> Profiling | None:
        """GPM metrics between the previous sample and one taken now; None on the first call, when GPM is
        unsupported or failed, or when the GPU is gone (the next call starts a new window).

        Call only from the thread that owns GPM (see the module docstring).
        """
        if not self.info.profiling_supported or "gpm" in self._unsupported or self._gpm is None:
            return None
        try:
            return self._gpm_step("gpm", self._gpm, self._nvml.nvmlGpmSampleGet, self.handle)
        except GpuDown:
            self._gpm.previous = None
            return None

    def read_mig_profiling(self) -> dict[int, Profiling]:
        """GPM metrics of each GPU instance of the MIG devices (`nvmlGpmMigSampleGet`), by GPU instance id;
        the same windows and rules as `read_profiling`. Call only from the thread that owns GPM."""
        if not self.info.profiling_supported:
            return {}
        instances = {slot.gpu_instance for slot in self._mig_slots}
        for gone in set(self._mig_gpm) - instances:  # a GPU instance that was destroyed
            for sample in self._mig_gpm.pop(gone).samples:
                self._optional("gpm_free", self._nvml.nvmlGpmSampleFree, sample)
        found: dict[int, Profiling] = {}
        for instance in sorted(instances):
            if "gpm_mig" in self._unsupported:
                break
            window = self._mig_gpm.get(instance)
            try:
                if window is None:
                    allocated = [self._optional("gpm_mig_alloc", self._nvml.nvmlGpmSampleAlloc) for _ in "ab"]
                    if any(sample is None for sample in allocated):
                        break
                    window = self._mig_gpm[instance] = GpmWindow(allocated)
                profile = self._gpm_step("gpm_mig", window, "nvmlGpmMigSampleGet", self.handle, instance)
            except GpuDown:
                window = self._mig_gpm.get(instance)
                if window is not None:
                    window.previous = None
                return found
            if profile is not None:
                found[instance] = profile
        return found

    def _gpm_step(
        self, field: str, window: GpmWindow, sample_get: Callable[..., Any] | str, *args: Any
    ) -> Profiling | None:
        """Take a GPM sample into the window's free buffer (`sample_get(*args, buffer)`) and compute the
        metrics between the previous sample and it."""
        nvml = self._nvml
        current = (
            window.samples[0]
            if window.previous is None
            else next(s for s in window.samples if s is not window.previous[0])
        )
        if not self._attempt(field, sample_get, *args, current)[0]:
            window.previous = None
            return None
        now = self._clock()
        previous, window.previous = window.previous, (current, now)
        if previous is None:
            return None
        ids = list(GPM_RATIO_METRICS.values()) + list(GPM_RATE_METRICS.values())
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(ids)
        request.sample1 = previous[0]
        request.sample2 = current
        for slot, metric_id in enumerate(ids):
            request.metrics[slot].metricId = metric_id
        if not self._attempt(field, nvml.nvmlGpmMetricsGet, request)[0]:
            return None
        values = {
            request.metrics[slot].metricId: request.metrics[slot].value
            for slot in range(len(ids))
            if request.metrics[slot].nvmlReturn == 0
        }
        ratios = {
            key: min(max(values[mid] / 100, 0.0), 1.0)
            for key, mid in GPM_RATIO_METRICS.items()
            if mid in values
        }
        rates = {key: max(values[mid], 0.0) * MIB for key, mid in GPM_RATE_METRICS.items() if mid in values}
        return Profiling(window_seconds=now - previous[1], ratios=ratios, rates=rates)

    def close(self) -> None:
        windows = ([self._gpm] if self._gpm is not None else []) + list(self._mig_gpm.values())
        for window in windows:
            for sample in window.samples:
                self._optional("gpm_free", self._nvml.nvmlGpmSampleFree, sample)
        self._gpm = None
        self._mig_gpm = {}


def _process_memory(processes: Any) -> dict[int, int]:
    """pid → device memory used, of NVML's process list (a process whose memory NVML does not report: left
    out; a process listed twice: its largest figure)."""
    found: dict[int, int] = {}
    for process in processes:
        used = getattr(process, "usedGpuMemory", None)
        if used is not None:
            found[int(process.pid)] = max(found.get(int(process.pid), 0), int(used))
    return found


class XidWatcher:
    """Counts the XID events of every GPU it could register, from one NVML event set, on its own thread.

    The thread blocks in `nvmlEventSetWait_v2` for at most `wait_seconds`, never holding the lock while it
    waits; a tick only copies the counts under the lock (`counts`), so no tick ever waits on an event. Each
    GPU's actionable XIDs (`XID_ACTIONABLE`) start at 0; at most `MAX_XID_CODES` codes get their own label,
    later ones count as `other`. A GPU that cannot be registered (no XID events on it, an old driver) has no
    XID series; an event set that cannot be created, or a wait that keeps failing, leaves every other metric
    as it was. Counts start when the exporter does: NVML delivers no event from before.
    """

    def __init__(self, nvml: ModuleType, wait_seconds: float = 0.5) -> None:
        self._nvml = nvml
        self._wait_ms = max(1, round(wait_seconds * 1000))
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}  # GPU index → code → events
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._reported: set[int | None] = set()

    def start(self, readers: Sequence[GpuReader]) -> None:
        nvml = self._nvml
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or getattr(nvml, "nvmlEventSetWait", None)
        try:
            if wait is None:
                raise AttributeError("this pynvml has no nvmlEventSetWait")
            self._event_set = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as exc:
            log.warning("XID errors not collected: no NVML event set (%s)", exc)
            return
        for reader in readers:
            if self._register(reader):
                self._counts[reader.index] = {str(code): 0 for code in XID_ACTIONABLE}
        if not self._counts:
            log.info("XID errors not collected: no GPU delivers XID events")
            self._free()
            return
        self._thread = threading.Thread(target=self._run, args=(wait,), name="nvml-xid", daemon=True)
        self._thread.start()
        log.info("XID events: listening on GPU(s) %s", sorted(self._counts))

    def _register(self, reader: GpuReader) -> bool:
        nvml = self._nvml
        try:
            if not nvml.nvmlDeviceGetSupportedEventTypes(reader.handle) & EVENT_XID:
                log.info("gpu %d: no XID events on this GPU", reader.index)
                return False
            nvml.nvmlDeviceRegisterEvents(reader.handle, EVENT_XID, self._event_set)
        except nvml.NVMLError as exc:
            level = logging.INFO if _error_code(exc) in UNSUPPORTED_CODES else logging.WARNING
            log.log(level, "gpu %d: XID events unavailable: %s", reader.index, exc)
            return False
        except AttributeError:
            return False
        return True

    def _run(self, wait: Callable[[Any, int], Any]) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                data = wait(self._event_set, self._wait_ms)
            except self._nvml.NVMLError as exc:
                if _error_code(exc) == TIMEOUT:
                    continue
                self._report_once(_error_code(exc), str(exc))
            except Exception as exc:  # a bug here must not end XID counting for good
                self._report_once(None, f"{type(exc).__name__}: {exc}")
            else:
                backoff = 0.5
                self._count(data)
                continue
            self._stop.wait(backoff)  # a failing wait: retry, backing off, without spinning
            backoff = min(backoff * 2, 10.0)

    def _report_once(self, code: int | None, message: str) -> None:
        if code not in self._reported:
            self._reported.add(code)
            log.warning("XID events: waiting failed (%s); retrying", message)

    def _count(self, data: Any) -> None:
        if not int(data.eventType) & EVENT_XID:
            return
        try:  # the event names its GPU by handle; NVML says which index that is
            index = int(self._nvml.nvmlDeviceGetIndex(data.device))
        except (self._nvml.NVMLError, AttributeError) as exc:
            log.warning("XID %d on a GPU NVML cannot name (%s): not counted", int(data.eventData), exc)
            return
        if index not in self._counts:
            return
        xid = int(data.eventData)
        code = str(xid)
        with self._lock:
            counts = self._counts[index]
            if code not in counts and len(counts) - (XID_OTHER in counts) >= MAX_XID_CODES:
                code = XID_OTHER
            counts[code] = counts.get(code, 0) + 1
            first = counts[code] == 1
        # once per GPU and code at warning (an application can repeat an XID thousands of times)
        log.log(logging.WARNING if first else logging.DEBUG, "gpu %d: XID %d", index, xid)

    def counts(self) -> dict[int, tuple[tuple[str, int], ...]]:
        """Every listened GPU's (code, events) pairs, codes in numeric order and `other` last."""
        with self._lock:
            copies = {index: dict(counts) for index, counts in self._counts.items()}
        return {index: tuple(sorted(counts.items(), key=_code_order)) for index, counts in copies.items()}

    def stop(self) -> None:
        """Ask the thread to end; it does within one wait."""
        self._stop.set()

    def close(self, timeout: float) -> None:
        """Stop, wait up to `timeout` for the thread, and free the event set, unless the thread is still in
        a wait (a hung driver: freeing the set under it would be unsafe, and the process is ending)."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("XID events: the waiting thread did not stop; event set left allocated")
                return
        self._free()

    def _free(self) -> None:
        if self._event_set is not None:
            with contextlib.suppress(self._nvml.NVMLError, AttributeError):
                self._nvml.nvmlEventSetFree(self._event_set)
            self._event_set = None


def _code_order(item: tuple[str, int]) -> tuple[bool, int]:
    code = item[0]
    return (code == XID_OTHER, int(code) if code.isdigit() else 0)


DeviceId = int | str  # an NVML index, or a GPU UUID ("GPU-…")


def select_devices(nvml: ModuleType, count: int, wanted: Sequence[DeviceId] | None) -> list[int]:
    """NVML indices of the GPUs to export: all of them, or those `wanted` names (indices or UUIDs).

    Raises DeviceSelectionError naming the first device that is not on this node.
    """
    if wanted is None:
        return list(range(count))
    uuids: dict[str, int] | None = None
    indices: list[int] = []
    for item in wanted:
        if isinstance(item, int):
            if not 0 <= item < count:
                raise DeviceSelectionError(
                    f"nvml.devices: GPU index {item} is not on this node "
                    f"(it has {count} GPU(s): 0..{count - 1})"
                )
            index = item
        else:
            if uuids is None:
                uuids = {
                    _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))): i for i in range(count)
                }
            if item not in uuids:
                raise DeviceSelectionError(f"nvml.devices: no GPU with UUID {item} on this node")
            index = uuids[item]
        if index not in indices:
            indices.append(index)
    return sorted(indices)


class NvmlSource(Source):
    """The node's GPUs (or those `devices` names), read concurrently: one worker thread per GPU for the
    plain fields, and one thread that owns every GPM call."""

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        *,
        profiling: bool = True,
        gpu_timeout_seconds: float = 0.8,
        retry_max_seconds: float = 60.0,
        devices: Sequence[DeviceId] | None = None,
        clock: Callable[[], float] = time.monotonic,
        health_interval_seconds: float | None = 30.0,
        xid_wait_seconds: float = 0.5,
        external_profiler: ExternalProfiler | None = None,
    ) -> None:
        self._nvml_module = nvml
        # Profiling for the GPUs that have no GPM (all of them when `profiling` is off): dcgm-exporter.
        self._external = external_profiler
        self._profiling = profiling
        self._gpu_timeout = gpu_timeout_seconds
        self._retry_max = retry_max_seconds
        # GPU health: the cadence of its reads; None reads none and listens for no XID events (the baseline
        # benchmarks/nvml_costs.py compares with). xid_wait_seconds: the longest one event wait blocks.
        self._health_interval = health_interval_seconds
        self._xid_wait = xid_wait_seconds
        self._xids: XidWatcher | None = None
        self._devices = list(devices) if devices is not None else None
        self._clock = clock
        self._readers: list[GpuReader] = []
        self._node: NodeInfo | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._gpm_pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[int, Future[GpuSample]] = {}
        self._gpm_in_flight: Future[None] | None = None
        self._gpm_stalled_logged = False
        self._next_attempt = 0.0
        self._initialising: asyncio.Future[None] | None = None
        self._backoff = 1.0

    # -- initialisation with backoff ---------------------------------------------------------------------
    def _module(self) -> ModuleType:
        if self._nvml_module is None:
            import pynvml

            self._nvml_module = pynvml
        return self._nvml_module

    def initialise(self) -> None:
        """Open NVML and the selected GPUs now (blocking). SourceError when NVML is unavailable (the daemon
        retries with backoff); DeviceSelectionError when `devices` names a GPU the node does not have."""
        if self._pool is not None:
            return
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise SourceError(f"NVML initialisation failed: {exc} (is the NVIDIA driver loaded?)") from None
        except OSError as exc:
            raise SourceError(f"NVML library could not be loaded: {exc}") from None
        try:
            indices = select_devices(nvml, nvml.nvmlDeviceGetCount(), self._devices)
            readers = []
            for index in indices:
                try:
                    reader = GpuReader(nvml, index, self._profiling, self._clock, self._health_interval)
                    readers.append(reader)
                except (nvml.NVMLError, GpuDown) as exc:
                    log.warning("gpu %d: skipped, cannot be opened: %s", index, exc)
            self._node = NodeInfo(
                driver_version=_text(nvml.nvmlSystemGetDriverVersion()),
                nvml_version=_text(nvml.nvmlSystemGetNVMLVersion()),
                cuda_driver_version=_cuda_version(nvml),
            )
        except DeviceSelectionError:
            self._shutdown_nvml()
            raise
        except nvml.NVMLError as exc:
            self._shutdown_nvml()
            raise SourceError(f"NVML device discovery failed: {exc}") from None
        self._readers = readers
        if self._health_interval is not None:
            self._xids = XidWatcher(nvml, self._xid_wait)
            self._xids.start(readers)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(readers)), thread_name_prefix="nvml-gpu")
        self._gpm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml-gpm")
        log.info(
            "NVML ready: %d GPU(s)%s, driver %s, profiling on %d",
            len(readers),
            f" of {self._devices}" if self._devices is not None else "",
            self._node.driver_version,
            sum(r.info.profiling_supported for r in readers),
        )

    def _initialise_for_tick(self) -> None:
        try:
            self.initialise()
        except DeviceSelectionError as exc:  # the node changed since start-up: report it, keep retrying
            raise SourceError(str(exc)) from None

    async def _ensure_initialised(self) -> None:
        """Initialise NVML in a worker thread, at most one attempt at a time, backing off after failures.

        The attempt is shielded: if the tick's time limit cancels this await, initialisation carries on
        and the next tick picks up its result instead of starting a second one.
        """
        if self._pool is not None:
            return
        if self._initialising is None:
            now = self._clock()
            if now < self._next_attempt:
                raise SourceError(f"NVML unavailable; next attempt in {self._next_attempt - now:.0f} s")
            self._initialising = asyncio.get_running_loop().run_in_executor(None, self._initialise_for_tick)
        try:
            await asyncio.shield(self._initialising)
        except SourceError:
            self._initialising = None
            self._next_attempt = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, self._retry_max)
            raise
        self._initialising = None
        self._backoff = 1.0

    # -- one tick --------------------------------------------------------------------------------------
    async def collect(self) -> Collected:
        await self._ensure_initialised()
        mig_profiles: dict[int, dict[int, Profiling]] = {}
        samples, profiles, outside = await asyncio.gather(
            asyncio.gather(*(self._read(reader) for reader in self._readers)),
            self._read_profiles(mig_profiles),
            self._read_external(),
        )
        if outside is not None:
            for sample in samples:
                if sample.info.uuid in outside.profiles:
                    profiles[sample.info.index] = outside.profiles[sample.info.uuid]
        xids = self._xids.counts() if self._xids is not None else {}
        merged = tuple(
            dataclasses.replace(
                sample,
                profiling=profiles.get(sample.info.index),
                xid_errors=xids.get(sample.info.index, ()),
                mig=_with_profiles(sample.mig, mig_profiles.get(sample.info.index, {})),
            )
            if sample.up
            else sample
            for sample in samples
        )
        statuses = (outside.status,) if outside is not None else ()
        return Collected(gpus=merged, node=self._node, statuses=statuses)

    async def _read_external(self) -> ExternalProfiles | None:
        """The external profiler's reading for the GPUs without GPM, concurrently with the NVML reads (it
        keeps to its own time limit); None without a profiler or when every GPU has GPM."""
        uuids = [reader.info.uuid for reader in self._readers if not reader.info.profiling_supported]
        if self._external is None or not uuids:
            return None
        return await self._external.read(uuids)

    async def _read(self, reader: GpuReader) -> GpuSample:
        index = reader.info.index
        pending = self._in_flight.get(index)
        if pending is not None and not pending.done():
            return GpuSample(info=reader.info, up=False, error="previous NVML read still running (hung call)")
        assert self._pool is not None
        future = self._pool.submit(reader.read)
        self._in_flight[index] = future
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._gpu_timeout)
        except asyncio.TimeoutError:
            return GpuSample(info=reader.info, up=False, error=f"NVML read took over {self._gpu_timeout:g} s")
        except Exception as exc:  # an unexpected bug in one GPU's read must not hide the others
            log.exception("gpu %d: read failed", index)
            return GpuSample(info=reader.info, up=False, error=f"read failed: {exc}")

    async def _read_profiles(self, mig_results: dict[int, dict[int, Profiling]]) -> dict[int, Profiling]:
        """Every profiled GPU's GPM window, one GPU after another on the GPM thread, and with MIG on its GPU
        instances' windows (into `mig_results`: GPU index → GPU instance id → window).

        What is done within the GPU time limit is used; a GPU the job has not reached by then has no
        profiling metrics this tick. While a job from an earlier tick still runs (a hung GPM call), no new
        one starts and no GPU has profiling metrics.
        """
        readers = [reader for reader in self._readers if reader.info.profiling_supported]
        if not readers or self._gpm_pool is None:
            return {}
        if self._gpm_in_flight is not None and not self._gpm_in_flight.done():
            if not self._gpm_stalled_logged:
                log.warning("GPM: a call from an earlier tick has not returned; profiling metrics paused")
                self._gpm_stalled_logged = True
            return {}
        if self._gpm_stalled_logged:
            log.info("GPM: calls return again; profiling metrics resume")
            self._gpm_stalled_logged = False
        results: dict[int, Profiling] = {}
        mig_found: dict[int, dict[int, Profiling]] = {}

        def job() -> None:
            for reader in readers:
                profile = reader.read_profiling()
                if profile is not None:
                    results[reader.info.index] = profile
                instances = reader.read_mig_profiling()
                if instances:
                    mig_found[reader.info.index] = instances

        self._gpm_in_flight = self._gpm_pool.submit(job)
        try:
            await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(self._gpm_in_flight)), self._gpu_timeout
            )
        except asyncio.TimeoutError:
            pass
        except Exception:  # a bug in the GPM path must not hide the other metrics
            log.exception("GPM: read failed")
        mig_results.update(dict(mig_found))  # a copy: a job past its time limit may still add to it
        return dict(results)

    async def close(self) -> None:
        started = time.monotonic()
        if self._xids is not None:
            self._xids.stop()  # it ends within one wait, while the rest closes
        for pool in (self._pool, self._gpm_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._gpm_pool = None
        gpm_idle = True
        if self._gpm_in_flight is not None and not self._gpm_in_flight.done():
            # Freeing GPM samples while the GPM thread is in a GPM call would be a concurrent GPM call.
            done, _ = await asyncio.wait([asyncio.wrap_future(self._gpm_in_flight)], timeout=0.5)
            gpm_idle = bool(done)
        for reader in self._readers:
            if gpm_idle:
                reader.close()
        self._readers = []
        if self._xids is not None:  # the daemon gives a source 1 s to close
            left = max(0.05, 0.9 - (time.monotonic() - started))
            await asyncio.get_running_loop().run_in_executor(None, self._xids.close, left)
            self._xids = None
        self._shutdown_nvml()
        if self._external is not None:
            await self._external.close()

    def _shutdown_nvml(self) -> None:
        nvml = self._nvml_module
        if nvml is None:
            return
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _with_profiles(devices: tuple[MigDevice, ...], profiles: dict[int, Profiling]) -> tuple[MigDevice, ...]:
    """The MIG devices with their GPU instance's GPM window, where one was read this tick."""
    if not profiles:
        return devices
    return tuple(dataclasses.replace(d, profiling=profiles.get(d.gpu_instance)) for d in devices)


def _cuda_version(nvml: ModuleType) -> str:
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
    except (nvml.NVMLError, AttributeError):
        return ""
    return f"{version // 1000}.{version % 1000 // 10}"
