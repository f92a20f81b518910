"""The simulated node: reference numbers, exact energy integral, clear labelling."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from fake_nvml import Clock

from exporter.demo.scenarios import SCENARIOS, WORKLOADS, Scenario
from exporter.sources.simulated import SimulatedSource


def test_workloads_follow_the_h100_reference_table() -> None:
    # docs/h100-reference.md: GEMM tensor 93 %, copy DRAM 89.5 %, tiny kernels util 36 % with SMs idle.
    assert WORKLOADS["compute-bound"].tensor_active == pytest.approx(0.93)
    assert WORKLOADS["memory-bound"].dram_bandwidth_utilization == pytest.approx(0.895)
    assert WORKLOADS["launch-bound"].utilization == pytest.approx(0.36)
    assert WORKLOADS["launch-bound"].sm_active < 0.001
    assert WORKLOADS["idle"].power_watts == pytest.approx(114)


@pytest.mark.parametrize("name", SCENARIOS)
def test_energy_counter_is_the_integral_of_power(name: str) -> None:
    scenario = Scenario(name, phase_seconds=7.0)
    for gpu in range(3):
        step = 0.001
        numeric = sum(scenario.power_watts(gpu, (k + 0.5) * step) * step for k in range(int(40 / step)))
        assert scenario.energy_joules(gpu, 40.0) == pytest.approx(numeric, rel=1e-5)


def test_energy_never_decreases() -> None:
    scenario = Scenario("mixed", phase_seconds=3.0)
    values = [scenario.energy_joules(1, t / 10) for t in range(0, 1000)]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_mixed_scenario_offsets_gpus_by_one_phase() -> None:
    scenario = Scenario("mixed", phase_seconds=10.0)
    assert [scenario.blend_at(gpu, 5.0).end for gpu in range(4)] == [
        "idle",
        "compute-bound",
        "memory-bound",
        "launch-bound",
    ]
    assert scenario.blend_at(0, 15.0).end == "compute-bound"
    assert scenario.blend_at(0, 45.0).end == "idle"  # the cycle repeats


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        Scenario("warp-speed", 1.0)


def test_collect_marks_everything_simulated_and_windows_profiling() -> None:
    clock = Clock()
    source = SimulatedSource(gpus=3, scenario="memory-bound", clock=clock)
    first = asyncio.run(source.collect())
    assert len(first.gpus) == 3
    assert all(g.info.simulated and g.info.uuid.startswith("GPU-simulated-") for g in first.gpus)
    assert all("Simulated" in g.info.name for g in first.gpus)
    assert first.node.simulated_scenario == "memory-bound"
    assert first.gpus[0].profiling is None  # like real GPM: no window on the first tick
    clock.advance(1.5)
    second = asyncio.run(source.collect()).gpus[0]
    assert second.profiling.window_seconds == pytest.approx(1.5)
    assert second.profiling.ratios["dram_bandwidth_utilization"] == pytest.approx(0.895, rel=0.02)
    assert second.power_watts == pytest.approx(380, abs=3.01)
    assert second.energy_joules > 0
