"""A thin fake of the pynvml functions the NVML source calls: hardware is the one thing faked.

It raises pynvml's real NVMLError subclasses with real return codes and fills pynvml's real ctypes
structures (`c_nvmlGpmMetricsGet_t`, GPM sample pointers), so the source is exercised against the real
bindings' types. GPM is modelled the way the driver does it: a sample records cumulative activity
counters at a moment, and a metric is the counter delta between two samples divided by their time delta,
so passing the samples in the wrong order or mixing windows gives wrong numbers.

NVML's GPM entry points share process-wide scratch state with no lock: on a 2×H100 node, `nvmlGpmSampleGet`
for one GPU during `nvmlGpmMetricsGet` for another gave doubled or zero ratios and crashed the process
(docs/multi-gpu.md). The fake keeps one scratch buffer for all GPM calls in the same way, so overlapping
GPM calls from two threads give wrong numbers too, and are counted in `gpm_overlaps`. `gpm_call_seconds`
makes each GPM call last that long, so that calls that are not serialised do overlap in a test.

GPU health (issue 14) is faked the same way: ECC counters, retired pages (NOT_SUPPORTED by default, as on an
H100, which remaps rows instead), remapped rows, limits, the PCIe link, NVLink link states and error
counters, and XID events delivered through an event set (`nvmlEventSetCreate`, `nvmlDeviceRegisterEvents`,
`nvmlEventSetWait_v2` filling pynvml's `c_nvmlEventData_t`, raising NVML_ERROR_TIMEOUT when nothing came
within the timeout). `inject_xid` queues an event for every set the GPU is registered with; a wait blocks in
real time up to its timeout, or on `event_wait_gate` when a test sets one (a hung driver). An event names its
GPU by a device pointer, as NVML's do; `nvmlDeviceGetIndex` turns it back into the GPU's index.

MIG (issue 14): a GPU's `mig_mode` (current mode, 0 off as on our H100s; None: NOT_SUPPORTED) and its
`mig_devices` (`FakeMig`), each in a slot of the 7 `nvmlDeviceGetMigDeviceHandleByIndex` answers
(NOT_FOUND for an empty slot) with a `FakeMigHandle`; on that handle the memory info, the running processes
(pynvml's `c_nvmlProcessInfo_v3_t`, turned into its friendly objects as pynvml does), the UUID, name and
attributes (`c_nvmlDeviceAttributes`) answer for the MIG device. `nvmlGpmMigSampleGet(device, gpuInstanceId,
sample)` samples a GPU instance's own activity counters (`FakeMig.activity`, integrated like a GPU's), and
`nvmlGpmMetricsGet` refuses samples of two different instances. `mig_errors` (function name → code) fail
calls on the GPU's MIG handles only.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t
NVML_GPM_METRICS_GET_VERSION = pynvml.NVML_GPM_METRICS_GET_VERSION
# pynvml's NVML_FI_DEV_NVLINK_*_ERROR_COUNT_TOTAL field ids → the NVML_NVLINK_ERROR_DL_* counter they sum
NVLINK_ERROR_TOTALS = {
    pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: 0,
    pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: 1,
    pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: 2,
    pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: 3,
}
# pynvml's NVML_FI_DEV_NVLINK_ERROR_DL_* field ids → the DL counters they sum (CRC: flit and data)
NVLINK_ERROR_DL = {
    pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY: (0,),
    pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY: (1,),
    pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_CRC: (2, 3),
}


class Clock:
    """A manual clock shared by the fake and the source under test."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeMig:
    """One MIG device (a compute instance of a GPU instance) of a FakeGpu."""

    slot: int  # its index for nvmlDeviceGetMigDeviceHandleByIndex
    gpu_instance: int
    compute_instance: int
    uuid: str
    profile: str = "1g.10gb"
    slices: int = 1
    multiprocessors: int = 16
    memory_mb: int = 9_984
    memory_used: int = 2 * 1024**3
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> memory (None: not reported)
    activity: dict[int, float] = field(default_factory=dict)  # GPM percent by metric id, its GPU instance
    counters: dict[int, float] = field(default_factory=dict)
    last_integrated: float = 0.0


@dataclass(frozen=True)
class FakeMigHandle:
    """What nvmlDeviceGetMigDeviceHandleByIndex returns: names the GPU and the MIG device's slot."""

    gpu: int
    slot: int


@dataclass
class FakeGpu:
    """One GPU's state; tests change its fields between ticks."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 350_000
    energy_mj: int = 5_000_000
    gpm_supported: bool = True
    # Current GPM activity in percent by metric id; integrated over the fake clock into counters.
    activity: dict[int, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # function name -> NVML return code to raise
    gpm_metric_errors: dict[int, int] = field(default_factory=dict)  # metric id -> nvmlReturn
    block: threading.Event | None = None  # when set, every call waits on it (a hung driver)
    processes: tuple[int, ...] = ()
    process_sm: dict[int, float] = field(default_factory=dict)  # pid -> SM utilisation percent
    counters: dict[int, float] = field(default_factory=dict)
    last_integrated: float = 0.0
    # GPU health. ECC counts by (NVML_MEMORY_ERROR_TYPE_*, NVML_*_ECC counter type).
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {(0, 0): 3, (1, 0): 0, (0, 1): 41, (1, 1): 0}
    )
    retired_pages: dict[int, list[int]] | None = None  # cause -> page addresses; None: NOT_SUPPORTED (H100)
    retired_pages_pending: int | None = None  # None: NOT_SUPPORTED
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)  # correctable, uncorrectable, pending, failure
    power_default_limit_mw: int = 700_000
    pcie_generation: int = 5
    pcie_width: int = 16
    pcie_max_generation: int = 5
    pcie_max_width: int = 16
    pcie_replays: int = 0
    nvlink_states: list[int] = field(default_factory=lambda: [1] * 18)  # []: no NVLink (NOT_SUPPORTED)
    nvlink_errors: dict[tuple[int, int], int] = field(default_factory=dict)  # (link, counter) -> count
    # How the driver sums nvlink_errors over the links: the *_ERROR_COUNT_TOTAL fields (not on the H100 VM's
    # driver 580), the ERROR_DL_* fields with the all-links scope (there: replay, recovery, CRC of both kinds)
    nvlink_error_totals: bool = False
    nvlink_error_dl: bool = True
    nvlink_tx_kib: int = 1_000
    nvlink_rx_kib: int = 2_000
    xid_events: bool = True  # nvmlDeviceGetSupportedEventTypes includes nvmlEventTypeXidCriticalError
    field_errors: dict[int, int] = field(default_factory=dict)  # field id -> its nvmlReturn in field values
    process_memory: dict[int, int | None] = field(default_factory=dict)  # pid -> usedGpuMemory (default 0)
    mig_mode: int | None = 0  # current MIG mode (1 on); None: NOT_SUPPORTED
    mig_devices: list[FakeMig] = field(default_factory=list)
    mig_errors: dict[str, int] = field(default_factory=dict)  # function -> code, on MIG handles only


class FakeNvml:
    """Module-like object: pass it to NvmlSource(nvml=...)."""

    NVMLError = NVMLError
    c_nvmlGpmMetricsGet_t = c_nvmlGpmMetricsGet_t
    NVML_GPM_METRICS_GET_VERSION = NVML_GPM_METRICS_GET_VERSION

    def __init__(
        self,
        gpus: list[FakeGpu],
        clock: Clock,
        init_error: int | None = None,
        gpm_call_seconds: float = 0.0,
    ) -> None:
        self.gpus = gpus
        self.gpm_call_seconds = gpm_call_seconds
        self.gpm_overlaps = 0
        self._gpm_active = 0
        self._gpm_count_lock = threading.Lock()  # guards the counters above, not the scratch
        self._scratch: dict[int, float] = {}  # NVML's shared GPM scratch state (see the module docstring)
        self.clock = clock
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}  # system (handle-less) function name -> NVML return code to raise
        self.field_requests: list[list[Any]] = []  # the field ids (or (id, scope) pairs) of every call
        self.initialised = False
        self._event_lock = threading.Condition()
        self._event_sets: dict[int, tuple[set[int], deque[tuple[int, int]]]] = {}  # id -> (GPUs, events)
        self.event_sets_freed = 0
        self.event_wait_gate: threading.Event | None = None  # when set, waits block on it (a hung driver)
        self._samples: dict[int, tuple[int, float, dict[int, float]]] = {}
        self._next_sample = 1
        for gpu in gpus:
            gpu.last_integrated = clock()
            for device in gpu.mig_devices:
                device.last_integrated = clock()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _enter(self, name: str, handle: Any = None) -> FakeGpu | None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if handle is None:
            if name in self.errors:
                raise NVMLError(self.errors[name])
            return None
        if isinstance(handle, FakeMigHandle):
            self.calls[f"mig:{name}"] = self.calls.get(f"mig:{name}", 0) + 1
            gpu = self.gpus[handle.gpu]
            if name in gpu.mig_errors:
                raise NVMLError(gpu.mig_errors[name])
            self._mig(handle)  # a MIG device destroyed since its handle was taken: INVALID_ARGUMENT
            return gpu
        gpu = self.gpus[handle]
        if gpu.block is not None:
            gpu.block.wait(10)
        if name in gpu.errors:
            raise NVMLError(gpu.errors[name])
        return gpu

    def _mig(self, handle: FakeMigHandle) -> FakeMig:
        for device in self.gpus[handle.gpu].mig_devices:
            if device.slot == handle.slot:
                return device
        raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def set_mig_activity(self, index: int, gpu_instance: int, metric_id: int, percent: float) -> None:
        """A GPU instance's GPM activity from now on (on its first MIG device)."""
        device = next(d for d in self.gpus[index].mig_devices if d.gpu_instance == gpu_instance)
        self._integrate(device)
        device.activity[metric_id] = percent

    def set_activity(self, index: int, metric_id: int, percent: float) -> None:
        """Integrate the old activity up to now, then switch to the new one."""
        gpu = self.gpus[index]
        self._integrate(gpu)
        gpu.activity[metric_id] = percent

    def _integrate(self, gpu: FakeGpu | FakeMig) -> None:
        elapsed = self.clock() - gpu.last_integrated
        for metric_id, percent in gpu.activity.items():
            gpu.counters[metric_id] = gpu.counters.get(metric_id, 0.0) + percent * elapsed
        gpu.last_integrated = self.clock()

    # -- system -----------------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._enter("nvmlDeviceGetHandleByIndex")
        return index

    # -- static information -------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu = self._enter("nvmlDeviceGetUUID", handle)
        return self._mig(handle).uuid if isinstance(handle, FakeMigHandle) else gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu = self._enter("nvmlDeviceGetName", handle)
        if isinstance(handle, FakeMigHandle):
            return f"{gpu.name} MIG {self._mig(handle).profile}"
        return gpu.name

    # -- MIG --------------------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: int) -> list[int]:
        gpu = self._enter("nvmlDeviceGetMigMode", handle)
        if gpu.mig_mode is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: int) -> int:
        gpu = self._enter("nvmlDeviceGetMaxMigDeviceCount", handle)
        if gpu.mig_mode is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: int, index: int) -> FakeMigHandle:
        gpu = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not gpu.mig_mode:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not any(device.slot == index for device in gpu.mig_devices):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeMigHandle(handle, index)

    def _mig_only(self, name: str, handle: Any) -> FakeMig:
        self._enter(name, handle)
        if not isinstance(handle, FakeMigHandle):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._mig(handle)

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        return self._mig_only("nvmlDeviceGetGpuInstanceId", handle).gpu_instance

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        return self._mig_only("nvmlDeviceGetComputeInstanceId", handle).compute_instance

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        device = self._mig_only("nvmlDeviceGetAttributes", handle)
        attributes = pynvml.c_nvmlDeviceAttributes()
        attributes.multiprocessorCount = device.multiprocessors
        attributes.gpuInstanceSliceCount = device.slices
        attributes.computeInstanceSliceCount = device.slices
        attributes.memorySizeMB = device.memory_mb
        return attributes

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        self._enter("nvmlDeviceGetMinorNumber", handle)
        return handle

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        self._enter("nvmlDeviceGetPciInfo", handle)
        return SimpleNamespace(busId=f"00000000:{0x18 + handle:02X}:00.0".encode())

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability", handle)
        return (9, 0)

    def nvmlDeviceGetMemoryBusWidth(self, handle: int) -> int:
        self._enter("nvmlDeviceGetMemoryBusWidth", handle)
        return 5120

    def nvmlDeviceGetMaxClockInfo(self, handle: int, clock_type: int) -> int:
        self._enter("nvmlDeviceGetMaxClockInfo", handle)  # MEM: 2619, SM: 1980 (H100 SXM)
        return 2619 if clock_type == pynvml.NVML_CLOCK_MEM else 1980

    def nvmlGpmQueryDeviceSupport(self, handle: int) -> Any:
        gpu = self._enter("nvmlGpmQueryDeviceSupport", handle)
        return SimpleNamespace(isSupportedDevice=1 if gpu.gpm_supported else 0)

    # -- per tick ---------------------------------------------------------------------------------------
    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[Any]) -> Any:
        """As pynvml's: each entry a field id, or a (field id, scope id) pair; per-field nvmlReturn."""
        gpu = self._enter("nvmlDeviceGetFieldValues", handle)
        self.field_requests.append(list(field_ids))
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for slot, entry in enumerate(field_ids):
            field_id, scope = entry if isinstance(entry, tuple) else (entry, 0)
            values[slot].fieldId = field_id
            values[slot].scopeId = scope
            nvlink = bool(gpu.nvlink_states)
            if field_id in gpu.field_errors:
                values[slot].nvmlReturn = gpu.field_errors[field_id]
            elif field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT and nvlink:
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                values[slot].value.uiVal = len(gpu.nvlink_states)
            elif field_id in (138, 139) and nvlink and scope == 0xFFFFFFFF:  # THROUGHPUT_DATA_TX/RX, KiB
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[slot].value.ullVal = gpu.nvlink_tx_kib if field_id == 138 else gpu.nvlink_rx_kib
            elif field_id in NVLINK_ERROR_TOTALS and nvlink and gpu.nvlink_error_totals:
                counter = NVLINK_ERROR_TOTALS[field_id]
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[slot].value.ullVal = sum(n for (_, c), n in gpu.nvlink_errors.items() if c == counter)
            elif field_id in NVLINK_ERROR_DL and nvlink and gpu.nvlink_error_dl and scope == 0xFFFFFFFF:
                counters = NVLINK_ERROR_DL[field_id]
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[slot].value.ullVal = sum(n for (_, c), n in gpu.nvlink_errors.items() if c in counters)
            elif field_id == pynvml.NVML_FI_DEV_POWER_INSTANT:
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                values[slot].value.uiVal = gpu.power_mw
            elif field_id == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
                values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[slot].value.ullVal = gpu.energy_mj
            else:
                values[slot].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    # -- GPU health ------------------------------------------------------------------------------------
    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter_type: int) -> int:
        gpu = self._enter("nvmlDeviceGetTotalEccErrors", handle)
        return gpu.ecc[error_type, counter_type]

    def nvmlDeviceGetRetiredPages(self, handle: int, cause: int) -> list[int]:
        gpu = self._enter("nvmlDeviceGetRetiredPages", handle)
        if gpu.retired_pages is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.retired_pages.get(cause, []))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: int) -> int:
        gpu = self._enter("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        if gpu.retired_pages_pending is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.retired_pages_pending

    def nvmlDeviceGetRemappedRows(self, handle: int) -> tuple[int, int, int, int]:
        return self._enter("nvmlDeviceGetRemappedRows", handle).remapped_rows

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetPowerManagementDefaultLimit", handle).power_default_limit_mw

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetCurrPcieLinkGeneration", handle).pcie_generation

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetCurrPcieLinkWidth", handle).pcie_width

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetMaxPcieLinkGeneration", handle).pcie_max_generation

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetMaxPcieLinkWidth", handle).pcie_max_width

    def nvmlDeviceGetPcieReplayCounter(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays

    def _link(self, name: str, handle: int, link: int) -> FakeGpu:
        gpu = self._enter(name, handle)
        if not gpu.nvlink_states:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < len(gpu.nvlink_states):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu

    def nvmlDeviceGetNvLinkState(self, handle: int, link: int) -> int:
        return self._link("nvmlDeviceGetNvLinkState", handle, link).nvlink_states[link]

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: int, link: int, counter: int) -> int:
        gpu = self._link("nvmlDeviceGetNvLinkErrorCounter", handle, link)
        return gpu.nvlink_errors.get((link, counter), 0)

    # -- events -------------------------------------------------------------------------------------------
    def nvmlDeviceGetIndex(self, device: Any) -> int:
        """A GPU's index from a handle, or from an event's device pointer (address = index + 1)."""
        self._enter("nvmlDeviceGetIndex")
        if isinstance(device, int):
            return device
        return ctypes.cast(device, ctypes.c_void_p).value - 1

    def nvmlDeviceGetSupportedEventTypes(self, handle: int) -> int:
        gpu = self._enter("nvmlDeviceGetSupportedEventTypes", handle)
        xid = pynvml.nvmlEventTypeXidCriticalError if gpu.xid_events else 0
        return xid | pynvml.nvmlEventTypeSingleBitEccError | pynvml.nvmlEventTypeDoubleBitEccError

    def nvmlEventSetCreate(self) -> Any:
        self._enter("nvmlEventSetCreate")
        with self._event_lock:
            set_id = len(self._event_sets) + 1
            self._event_sets[set_id] = (set(), deque())
        return ctypes.cast(ctypes.c_void_p(set_id), pynvml.c_nvmlEventSet_t)

    def _event_set(self, event_set: Any) -> tuple[set[int], deque[tuple[int, int]]]:
        return self._event_sets[ctypes.cast(event_set, ctypes.c_void_p).value]

    def nvmlDeviceRegisterEvents(self, handle: int, event_types: int, event_set: Any) -> None:
        gpu = self._enter("nvmlDeviceRegisterEvents", handle)
        if event_types & ~self.nvmlDeviceGetSupportedEventTypes(handle):
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        assert gpu is not None
        with self._event_lock:
            self._event_set(event_set)[0].add(handle)

    def inject_xid(self, index: int, xid: int) -> None:
        """The driver reports XID `xid` on GPU `index`: queued on every event set it is registered with."""
        with self._event_lock:
            for gpus, queue in self._event_sets.values():
                if index in gpus:
                    queue.append((index, xid))
            self._event_lock.notify_all()

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self._enter("nvmlEventSetWait_v2")
        gate = self.event_wait_gate
        if gate is not None:
            gate.wait(10)
        with self._event_lock:
            queue = self._event_set(event_set)[1]
            self._event_lock.wait_for(lambda: bool(queue), timeout_ms / 1000)
            if not queue:
                raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            index, xid = queue.popleft()
        data = pynvml.c_nvmlEventData_t()
        data.device = ctypes.cast(ctypes.c_void_p(index + 1), pynvml.c_nvmlDevice_t)
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = xid
        return data

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._enter("nvmlEventSetFree")
        self.event_sets_freed += 1

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self._enter("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        self._enter("nvmlDeviceGetEnforcedPowerLimit", handle)
        return 700_000

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self._enter("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=99, memory=33)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo", handle)
        if isinstance(handle, FakeMigHandle):
            device = self._mig(handle)
            total = device.memory_mb * 1024**2
            return SimpleNamespace(total=total, used=device.memory_used, free=total - device.memory_used)
        return SimpleNamespace(total=80 * 1024**3, used=20 * 1024**3, free=60 * 1024**3)

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        self._enter("nvmlDeviceGetClockInfo", handle)
        return 2619 if clock_type == pynvml.NVML_CLOCK_MEM else 1755

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature", handle)
        return 64

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return pynvml.nvmlClocksEventReasonSwPowerCap

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        """pynvml's answer: c_nvmlProcessInfo_v3_t entries as its friendly objects, usedGpuMemory None where
        NVML reports NVML_VALUE_NOT_AVAILABLE. On a GPU with MIG on, the parent lists every instance's."""
        gpu = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        listed: list[tuple[int, int | None, int, int]] = []  # pid, memory, GPU instance, compute instance
        devices = [self._mig(handle)] if isinstance(handle, FakeMigHandle) else gpu.mig_devices
        if not isinstance(handle, FakeMigHandle):
            listed += [(pid, gpu.process_memory.get(pid, 0), 0xFFFFFFFF, 0xFFFFFFFF) for pid in gpu.processes]
        for device in devices:
            listed += [
                (pid, used, device.gpu_instance, device.compute_instance)
                for pid, used in device.processes.items()
            ]
        entries = (pynvml.c_nvmlProcessInfo_v3_t * max(1, len(listed)))()
        for slot, (pid, used, gpu_instance, compute_instance) in enumerate(listed):
            entries[slot].pid = pid
            entries[slot].usedGpuMemory = (
                pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value if used is None else used
            )
            entries[slot].gpuInstanceId = gpu_instance
            entries[slot].computeInstanceId = compute_instance
        found = []
        for slot in range(len(listed)):
            process = pynvml.nvmlStructToFriendlyObject(entries[slot])
            if process.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                process.usedGpuMemory = None
            found.append(process)
        return found

    def nvmlDeviceGetProcessUtilization(self, handle: int, last_seen: int) -> list[Any]:
        """One sample per process with an SM share, stamped now (µs); NOT_FOUND when there is none."""
        gpu = self._enter("nvmlDeviceGetProcessUtilization", handle)
        if not gpu.process_sm:
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        stamp = int(self.clock() * 1e6)
        samples = (pynvml.c_nvmlProcessUtilizationSample_t * len(gpu.process_sm))()
        for slot, (pid, percent) in enumerate(sorted(gpu.process_sm.items())):
            samples[slot].pid = pid
            samples[slot].timeStamp = stamp
            samples[slot].smUtil = int(percent)
        return [sample for sample in samples if sample.timeStamp > last_seen]

    # -- GPM --------------------------------------------------------------------------------------------
    def nvmlGpmSampleAlloc(self) -> Any:
        self._enter("nvmlGpmSampleAlloc")
        sample_id = self._next_sample
        self._next_sample += 1
        return ctypes.cast(ctypes.c_void_p(sample_id), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self._enter("nvmlGpmSampleFree")

    def _gpm_enter(self) -> None:
        with self._gpm_count_lock:
            self._gpm_active += 1
            if self._gpm_active > 1:
                self.gpm_overlaps += 1

    def _gpm_exit(self) -> None:
        with self._gpm_count_lock:
            self._gpm_active -= 1

    def nvmlGpmMigSampleGet(self, handle: int, gpu_instance: int, sample: Any) -> Any:
        """As pynvml: (device, gpuInstanceId, gpmSample), returns the sample."""
        gpu = self._enter("nvmlGpmMigSampleGet", handle)
        if not gpu.mig_mode or not gpu.gpm_supported:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        device = next((d for d in gpu.mig_devices if d.gpu_instance == gpu_instance), None)
        if device is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._gpm_enter()
        try:
            self._integrate(device)
            self._scratch = dict(device.counters)
            time.sleep(self.gpm_call_seconds)
            sample_id = ctypes.cast(sample, ctypes.c_void_p).value
            self._samples[sample_id] = ((handle, gpu_instance), self.clock(), dict(self._scratch))
        finally:
            self._gpm_exit()
        return sample

    def nvmlGpmSampleGet(self, handle: int, sample: Any) -> None:
        gpu = self._enter("nvmlGpmSampleGet", handle)
        self._gpm_enter()
        try:
            self._integrate(gpu)
            self._scratch = dict(gpu.counters)  # the driver's counters land in the shared scratch first
            time.sleep(self.gpm_call_seconds)
            sample_id = ctypes.cast(sample, ctypes.c_void_p).value
            self._samples[sample_id] = (handle, self.clock(), dict(self._scratch))
        finally:
            self._gpm_exit()

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        self._enter("nvmlGpmMetricsGet")
        self._gpm_enter()
        try:
            assert request.version == NVML_GPM_METRICS_GET_VERSION
            handle1, time1, counters1 = self._samples[ctypes.cast(request.sample1, ctypes.c_void_p).value]
            handle2, time2, counters2 = self._samples[ctypes.cast(request.sample2, ctypes.c_void_p).value]
            assert handle1 == handle2, "GPM samples from two different GPUs or GPU instances"
            self._scratch = dict(counters1)  # the older sample is staged in the shared scratch
            time.sleep(self.gpm_call_seconds)
            gpu = self.gpus[handle2[0] if isinstance(handle2, tuple) else handle2]
            for slot in range(request.numMetrics):
                metric = request.metrics[slot]
                if metric.metricId in gpu.gpm_metric_errors:
                    metric.nvmlReturn = gpu.gpm_metric_errors[metric.metricId]
                    continue
                delta = counters2.get(metric.metricId, 0.0) - self._scratch.get(metric.metricId, 0.0)
                metric.value = delta / (time2 - time1) if time2 > time1 else 0.0
                metric.nvmlReturn = 0
            return request
        finally:
            self._gpm_exit()
