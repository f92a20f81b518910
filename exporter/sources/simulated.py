"""The simulated node behind `tpw-exporter demo`: deterministic GPUs that follow a scenario.

Numbers follow the H100 reference measurements (`shared/h100-reference.md`): the same NVML utilisation,
GPM ratios and power for idle, a bf16 GEMM (compute-bound), a device-to-device copy (memory-bound) and a
tiny-kernel loop (launch-bound). Every value is a pure function of the time since the simulation started,
so tests and benchmarks can compute the ground truth; the energy counter is the exact integral of power.

Nothing here can be mistaken for a real GPU: names say "Simulated", UUIDs start with `GPU-simulated-`,
`tpw_gpu_info` carries `simulated="true"` and the node reports the scenario in `tpw_simulation_info`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.model import GpuInfo, GpuSample, NodeInfo, Profiling
from exporter.sources.base import Collected, Source

GIB = 1024**3
H100_MEMORY_BYTES = 80 * GIB
H100_PEAK_DRAM_BYTES_PER_SECOND = 5120 / 8 * 2619e6 * 2  # bus width × max memory clock × DDR ≈ 3.35 TB/s
H100_POWER_LIMIT_WATTS = 700.0
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
}
MIXED_CYCLE: tuple[str, ...] = ("idle", "compute-bound", "memory-bound", "launch-bound")
SCENARIOS: tuple[str, ...] = (*WORKLOADS, "mixed")


class Scenario:
    """Which workload each GPU runs at time t (seconds since the simulation started)."""

    def __init__(self, name: str, phase_seconds: float) -> None:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
        self.name = name
        self.phase_seconds = phase_seconds
        self.cycle = MIXED_CYCLE if name == "mixed" else (name,)

    def workload_at(self, gpu: int, t: float) -> str:
        """GPU i starts i phases into the cycle, so a mixed node shows every pattern at once."""
        return self.cycle[(int(t // self.phase_seconds) + gpu) % len(self.cycle)]

    def integral(self, gpu: int, t: float, rate: Callable[[str], float]) -> float:
        """Exact ∫₀ᵗ rate(workload at s) ds for this GPU: whole cycles, whole phases, then the partial one."""
        period = self.phase_seconds * len(self.cycle)
        rates = [rate(self.cycle[(k + gpu) % len(self.cycle)]) for k in range(len(self.cycle))]
        cycles, rest = divmod(t, period)
        whole_phases, partial = divmod(rest, self.phase_seconds)
        total = cycles * sum(rates) * self.phase_seconds
        total += sum(rates[: int(whole_phases)]) * self.phase_seconds
        return total + rates[int(whole_phases) % len(rates)] * partial

    def energy_joules(self, gpu: int, t: float) -> float:
        """Exact ∫₀ᵗ power dt for this GPU, the wobble included."""
        energy = self.integral(gpu, t, lambda workload: WORKLOADS[workload].power_watts)
        omega, phase = _wobble(gpu)
        return energy + POWER_WOBBLE_WATTS / omega * (math.cos(phase) - math.cos(omega * t + phase))

    def power_watts(self, gpu: int, t: float) -> float:
        omega, phase = _wobble(gpu)
        return WORKLOADS[self.workload_at(gpu, t)].power_watts + POWER_WOBBLE_WATTS * math.sin(
            omega * t + phase
        )


def _wobble(gpu: int) -> tuple[float, float]:
    return 2 * math.pi / WOBBLE_PERIOD_SECONDS, gpu * 0.7


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
    )


class SimulatedSource(Source):
    """A node of `gpus` simulated H100s following `scenario`."""

    name = "simulated"

    def __init__(
        self,
        gpus: int = 2,
        scenario: str = "mixed",
        phase_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = Scenario(scenario, phase_seconds)
        self._clock = clock
        self._start = clock()
        self._infos = tuple(simulated_gpu_info(i) for i in range(gpus))
        self._previous_time: float | None = None
        self._node = NodeInfo(driver_version="simulated", simulated_scenario=scenario)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def sample(self, gpu: int, t: float, window: float | None) -> GpuSample:
        """The simulated GPU at t seconds; pure, so tests can ask for any moment."""
        workload = WORKLOADS[self.scenario.workload_at(gpu, t)]
        omega, phase = _wobble(gpu)
        wobble = 1 + RATIO_WOBBLE * math.sin(omega * t + phase + 1.3)

        def ratio(value: float) -> float:
            return min(max(value * wobble, 0.0), 1.0)

        profiling = None
        if window is not None:
            ratios = {
                "graphics_active": ratio(workload.graphics_active),
                "sm_active": ratio(workload.sm_active),
                "sm_occupancy": ratio(workload.sm_occupancy),
                "tensor_active": ratio(workload.tensor_active),
                "dram_bandwidth_utilization": ratio(workload.dram_bandwidth_utilization),
                "fp16_active": ratio(workload.fp16_active),
                "fp32_active": ratio(workload.fp32_active),
                "fp64_active": ratio(workload.fp64_active),
            }
            rates = {
                "pcie_rx_bytes_per_second": workload.pcie_bytes_per_second,
                "pcie_tx_bytes_per_second": workload.pcie_bytes_per_second / 2,
            }
            profiling = Profiling(window_seconds=window, ratios=ratios, rates=rates)
        return GpuSample(
            info=self._infos[gpu],
            timestamp=self._start + t,
            power_watts=self.scenario.power_watts(gpu, t),
            power_limit_watts=H100_POWER_LIMIT_WATTS,
            energy_joules=self.scenario.energy_joules(gpu, t),
            energy_timestamp=self._start + t,
            utilization_ratio=ratio(workload.utilization),
            memory_utilization_ratio=ratio(workload.memory_utilization),
            memory_used_bytes=workload.memory_used_bytes,
            sm_clock_hertz=workload.sm_clock_mhz * 1e6,
            memory_clock_hertz=2619e6,
            temperature_celsius=workload.temperature_celsius,
            clock_event_reasons=workload.clock_event_reasons,
            profiling=profiling,
        )

    async def collect(self) -> Collected:
        t = self.elapsed()
        window = None if self._previous_time is None else t - self._previous_time
        self._previous_time = t
        return Collected(
            gpus=tuple(self.sample(i, t, window) for i in range(len(self._infos))), node=self._node
        )
