"""The simulated node behind `tpw-exporter demo`: deterministic GPUs that follow a scenario.

The numbers come from `exporter.demo.scenarios` (calibrated on H100 measurements); this source turns them into
GPU samples at the current time. Nothing here can be mistaken for a real GPU: names say "Simulated", UUIDs
start with `GPU-simulated-`, `tpw_gpu_info` carries `simulated="true"` and the node reports the scenario in
`tpw_simulation_info`.

Each simulated GPU also has a health (`exporter.demo.scenarios.Health`): like an H100 it reports ECC
counts, remapped rows (no retired pages: an H100 remaps rows instead), its PCIe link and NVLink, and listens
for XID events, every actionable code from 0; the GPU-health scenarios change them.

The simulated engine has one process per GPU (`engine_process_ids`, PIDs above Linux's PID_MAX_LIMIT, so
never a real process) holding the GPU's memory but a 512 MiB context reserve, busy as the GPU's SMs. With
`mig` every GPU reports MIG on and four MIG devices (`MIG_LAYOUT`: 3g.40gb, 2g.20gb and two 1g.10gb, UUIDs
`MIG-simulated-…`); the engine runs on the 3g.40gb and, as NVML does in MIG mode, no per-process SM
utilisation is reported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial

from exporter.demo.scenarios import (
    H100_DEFAULT_POWER_LIMIT_WATTS,
    H100_MAX_SM_CLOCK_MHZ,
    H100_MEMORY_BYTES,
    H100_NVLINK_LINKS,
    H100_PCIE_GENERATION,
    H100_PCIE_WIDTH,
    H100_PEAK_DRAM_BYTES_PER_SECOND,
    HEALTH,
    HEALTH_XIDS,
    RATIO_WOBBLE,
    WORKLOADS,
    Health,
    Plan,
    Scenario,
    Schedule,
    wobble,
)
from exporter.model import (
    MIB,
    NVLINK_ERROR_TYPES,
    PROFILING_RATIOS,
    XID_ACTIONABLE,
    GpuHealth,
    GpuInfo,
    GpuSample,
    MigDevice,
    NodeInfo,
    Profiling,
)
from exporter.sources.base import Collected, Source

log = logging.getLogger(__name__)

# Linux's PID_MAX_LIMIT is 2**22: the simulated engine's PIDs lie above it and can be no real process.
SIMULATED_ENGINE_PID = 2**22 + 1
ENGINE_CONTEXT_BYTES = 512 * MIB  # what the GPU's memory holds beside the engine process's (driver, context)
# (gpu_instance, compute_instance, profile, slices, SMs, memory MiB, activity as a fraction of the GPU's
# workload's, memory used when idle): the engine on the 3g.40gb, a small busy tenant, an idle and a light one
MIG_LAYOUT: tuple[tuple[int, int, str, int, int, int, float, int], ...] = (
    (1, 0, "3g.40gb", 3, 60, 40_192, 1.0, 0),
    (5, 0, "2g.20gb", 2, 32, 20_096, 0.5, 6 * 1024 * MIB),
    (13, 0, "1g.10gb", 1, 16, 9_856, 0.0, 0),
    (14, 0, "1g.10gb", 1, 16, 9_856, 0.3, 2 * 1024 * MIB),
)


def simulated_gpu_info(index: int) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-simulated-{index:04d}",
        name="Simulated NVIDIA H100 80GB HBM3 (tpw-exporter demo)",
        pci_bus_id="simulated",
        compute_capability="9.0",
        simulated=True,
        memory_total_bytes=H100_MEMORY_BYTES,
        dram_peak_bandwidth_bytes_per_second=H100_PEAK_DRAM_BYTES_PER_SECOND,
        profiling_supported=True,
        minor_number=index,
    )


class SimulatedSource(Source):
    """A node of `gpus` simulated H100s following `scenario`, or `schedule` [(scenario, seconds), …]."""

    name = "simulated"

    def __init__(
        self,
        gpus: int = 2,
        scenario: str = "mixed",
        phase_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Sequence[tuple[str, float]] | None = None,
        mig: bool = False,
    ) -> None:
        self.mig = mig
        self.scenario: Plan = (
            Schedule(schedule, phase_seconds) if schedule else Scenario(scenario, phase_seconds)
        )
        self._clock = clock
        self._start = clock()
        self._infos = tuple(simulated_gpu_info(i) for i in range(gpus))
        self._previous_time: float | None = None
        self._node = NodeInfo(driver_version="simulated", simulated_scenario=self.scenario.name_at(0.0))

    def engine_process_ids(self) -> tuple[int, ...]:
        """The simulated engine's processes, one per GPU."""
        return tuple(SIMULATED_ENGINE_PID + gpu for gpu in range(len(self._infos)))

    def _mig_devices(
        self, gpu: int, engine_bytes: int, ratios: dict[str, float] | None, window: float | None
    ) -> tuple[MigDevice, ...]:
        devices = []
        for (
            gpu_instance,
            compute_instance,
            profile,
            slices,
            sms,
            memory_mb,
            activity,
            idle_bytes,
        ) in MIG_LAYOUT:
            total = memory_mb * MIB
            engine = activity == 1.0
            profiling = None
            if ratios is not None and window is not None:
                profiling = Profiling(window, {key: value * activity for key, value in ratios.items()})
            devices.append(
                MigDevice(
                    gpu_instance=gpu_instance,
                    compute_instance=compute_instance,
                    uuid=f"MIG-simulated-{gpu:04d}-{gpu_instance:02d}-{compute_instance}",
                    profile=profile,
                    multiprocessors=sms,
                    slices=slices,
                    memory_total_bytes=total,
                    memory_used_bytes=min(engine_bytes, total) if engine else idle_bytes,
                    profiling=profiling,
                    process_ids=(SIMULATED_ENGINE_PID + gpu,) if engine else (),
                )
            )
        return tuple(devices)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def sample(self, gpu: int, t: float, window: float | None) -> GpuSample:
        """The simulated GPU at t seconds; pure, so tests can ask for any moment."""
        blend = self.scenario.blend_at(gpu, t)
        start, end = WORKLOADS[blend.start], WORKLOADS[blend.end]

        def number(field: str) -> float:
            return blend.mix(lambda name: getattr(WORKLOADS[name], field))

        omega, phase = wobble(gpu)
        jitter = 1 + RATIO_WOBBLE * math.sin(omega * t + phase + 1.3)

        def ratio(field: str) -> float:
            return min(max(number(field) * jitter, 0.0), 1.0)

        profiling = None
        ratios = None
        if window is not None:
            ratios = {key: ratio(key) for key in PROFILING_RATIOS}
            pcie = number("pcie_bytes_per_second")
            rates = {"pcie_rx_bytes_per_second": pcie, "pcie_tx_bytes_per_second": pcie / 2}
            profiling = Profiling(window_seconds=window, ratios=ratios, rates=rates)
        memory_used = start.memory_used_bytes if blend.weight == 0.0 else round(number("memory_used_bytes"))
        memory_used = min(memory_used, H100_MEMORY_BYTES)
        link = HEALTH[self.scenario.health_at(gpu, t).end]
        pid = SIMULATED_ENGINE_PID + gpu
        mig: tuple[MigDevice, ...] = ()
        engine_bytes = max(memory_used - ENGINE_CONTEXT_BYTES, 0)
        if self.mig:  # the engine's share of the workload's memory fits its 3g.40gb
            mig = self._mig_devices(gpu, max(memory_used // 2 - ENGINE_CONTEXT_BYTES, 0), ratios, window)
            engine_bytes = mig[0].memory_used_bytes or 0
            memory_used = sum(device.memory_used_bytes or 0 for device in mig) + ENGINE_CONTEXT_BYTES
        return GpuSample(
            info=self._infos[gpu],
            timestamp=self._start + t,
            power_watts=self.scenario.power_watts(gpu, t),
            power_limit_watts=end.power_limit_watts,
            energy_joules=self.scenario.energy_joules(gpu, t),
            energy_timestamp=self._start + t,
            utilization_ratio=ratio("utilization"),
            memory_utilization_ratio=ratio("memory_utilization"),
            memory_used_bytes=memory_used,
            sm_clock_hertz=number("sm_clock_mhz") * 1e6,
            memory_clock_hertz=2619e6,
            temperature_celsius=number("temperature_celsius"),
            clock_event_reasons=end.clock_event_reasons,
            profiling=profiling,
            pcie_generation=min(end.pcie_generation, link.pcie_link_generation),  # idle steps down
            pcie_width=link.pcie_width,
            nvlink_tx_bytes=0.0,  # the demo engine is data-parallel: nothing crosses NVLink
            nvlink_rx_bytes=0.0,
            xid_errors=self._xids(gpu, t),
            health=self.health(gpu, t),
            process_ids=(pid,),
            process_memory=((pid, engine_bytes),),
            process_sm_ratios=() if self.mig else ((pid, ratio("sm_active")),),
            mig_enabled=self.mig,
            mig=mig,
        )

    def _xids(self, gpu: int, t: float) -> tuple[tuple[str, int], ...]:
        scenario = self.scenario
        counts = {code: scenario.events(gpu, t, partial(Health.xid_rate, code=code)) for code in HEALTH_XIDS}
        codes = sorted(set(XID_ACTIONABLE) | {code for code, count in counts.items() if count})
        return tuple((str(code), counts.get(code, 0)) for code in codes)

    def health(self, gpu: int, t: float) -> GpuHealth:
        """The simulated GPU's health at t (an H100's: remapped rows, no retired pages)."""
        state = HEALTH[self.scenario.health_at(gpu, t).end]
        corrected = self.scenario.events(gpu, t, lambda h: h.ecc_corrected_per_phase)
        uncorrected = self.scenario.events(gpu, t, lambda h: h.ecc_uncorrected_per_phase)
        return GpuHealth(
            ecc_corrected_volatile=corrected,
            ecc_uncorrected_volatile=uncorrected,
            ecc_corrected_aggregate=corrected,  # the simulated GPU is as new as its driver
            ecc_uncorrected_aggregate=uncorrected,
            remapped_rows_correctable=state.remapped_rows_correctable,
            remapped_rows_uncorrectable=state.remapped_rows_uncorrectable,
            row_remap_pending=state.row_remap_pending,
            row_remap_failed=state.row_remap_failed,
            power_default_limit_watts=H100_DEFAULT_POWER_LIMIT_WATTS,
            sm_clock_max_hertz=H100_MAX_SM_CLOCK_MHZ * 1e6,
            pcie_max_generation=H100_PCIE_GENERATION,
            pcie_max_width=H100_PCIE_WIDTH,
            pcie_replays=self.scenario.events(gpu, t, lambda h: h.pcie_replays_per_phase),
            nvlink_links=H100_NVLINK_LINKS,
            nvlink_links_up=state.nvlink_links_up,
            nvlink_errors=tuple(
                (kind, self.scenario.events(gpu, t, partial(Health.nvlink_rate, kind=kind)))
                for kind in NVLINK_ERROR_TYPES
            ),
        )

    def node_at(self, t: float) -> NodeInfo:
        """The node info at t: the scenario label follows a schedule (logged once per change)."""
        name = self.scenario.name_at(t)
        if name != self._node.simulated_scenario:
            log.info("simulated scenario now %s", name)
            self._node = NodeInfo(driver_version="simulated", simulated_scenario=name)
        return self._node

    async def collect(self) -> Collected:
        t = self.elapsed()
        window = None if self._previous_time is None else t - self._previous_time
        self._previous_time = t
        return Collected(
            gpus=tuple(self.sample(i, t, window) for i in range(len(self._infos))), node=self.node_at(t)
        )
