"""The demo's alert scenarios and schedules: one list of names, exact integrals, H100-coherent numbers."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
from fake_nvml import Clock
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import build_parser, flag_overrides, main
from exporter.config import Scenario as ScenarioLiteral
from exporter.config import load_config
from exporter.demo.engine import (
    GENERATED_TOKENS_PER_REQUEST,
    SERVING,
    SimulatedEngine,
    SimulatedEngineServer,
)
from exporter.demo.scenarios import (
    GIB,
    H100_MEMORY_BYTES,
    SCENARIO_SPECS,
    SCENARIOS,
    WORKLOADS,
    Plan,
    Scenario,
    Schedule,
    Workload,
)
from exporter.derive.bound import classify_bound
from exporter.model import CLOCK_EVENT_REASONS
from exporter.sources.simulated import SimulatedSource

ALERT_SCENARIOS = (
    "healthy",
    "busy-flat",
    "input-bound",
    "bandwidth-saturated",
    "efficiency-regression",
    "batch-drop",
    "memory-leak",
    "throttling",
    "endpoint-down",
)
MIXED_SCHEDULE = (("busy-flat", 3.0), ("mixed", 5.0), ("throttling", 4.0), ("endpoint-down", 2.5))


def numeric_integral(value: Callable[[float], float], t_end: float, step: float = 0.001) -> float:
    return sum(value((k + 0.5) * step) * step for k in range(round(t_end / step)))


def evidence(workload: Workload) -> dict[str, float]:
    return {
        "graphics": workload.graphics_active,
        "tensor": workload.tensor_active,
        "dram": workload.dram_bandwidth_utilization,
        "sm": workload.sm_active,
        "fp": max(workload.fp16_active, workload.fp32_active, workload.fp64_active),
    }


def serving_now(engine: SimulatedEngine, t: float, field: str) -> float:
    return engine._now(t, lambda s: getattr(s, field))


def reasons(sample_reasons: int) -> set[str]:
    return {name for name, bit in CLOCK_EVENT_REASONS.items() if sample_reasons & bit}


# -- one list of names ------------------------------------------------------------------------------------


def _demo_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["demo"]


def test_config_literal_cli_choices_and_specs_are_one_list() -> None:
    assert get_args(ScenarioLiteral) == SCENARIOS == tuple(SCENARIO_SPECS)
    scenario_flag = next(a for a in _demo_parser()._actions if "--scenario" in a.option_strings)
    assert tuple(scenario_flag.choices) == SCENARIOS
    assert set(ALERT_SCENARIOS) <= set(SCENARIOS)
    assert SCENARIOS[:5] == ("idle", "compute-bound", "memory-bound", "launch-bound", "mixed")  # unchanged
    help_text = _demo_parser().format_help()
    for name in SCENARIOS:
        assert name in help_text
    assert "--scenario-schedule" in help_text


def test_every_keyframe_workload_has_gpu_and_serving_numbers() -> None:
    for spec in SCENARIO_SPECS.values():
        names = set(spec.cycle) | {frame.workload for line in spec.timelines for frame in line.keyframes}
        assert names and names <= WORKLOADS.keys() & SERVING.keys(), names
        for timeline in spec.timelines:
            phases = [frame.phase for frame in timeline.keyframes]
            assert phases[0] == 0 and phases == sorted(phases)


# -- exact integrals --------------------------------------------------------------------------------------


def plans() -> list[tuple[str, Plan]]:
    return [(name, Scenario(name, 0.5)) for name in SCENARIOS] + [("schedule", Schedule(MIXED_SCHEDULE, 0.5))]


@pytest.mark.parametrize(("name", "plan"), plans(), ids=[name for name, _ in plans()])
def test_energy_and_engine_counters_are_exact_integrals(name: str, plan: Plan) -> None:
    """Through every keyframe (and, for the schedule, two repetitions): energy = ∫ power, tokens = ∫ rate."""
    t_end = 40.0
    engine = SimulatedEngine(plan, gpus=3, elapsed=lambda: 0.0, start_time=0.0)
    for gpu in range(3):
        numeric = numeric_integral(lambda t, gpu=gpu: plan.power_watts(gpu, t), t_end)
        assert plan.energy_joules(gpu, t_end) == pytest.approx(numeric, rel=1e-5)
    tokens = numeric_integral(lambda t: serving_now(engine, t, "generation_tokens_per_second"), t_end)
    state = engine.state(t_end)
    assert state.generation_tokens == pytest.approx(tokens, rel=1e-5, abs=1e-6)
    assert state.requests == pytest.approx(tokens / GENERATED_TOKENS_PER_REQUEST, rel=1e-5, abs=1e-6)
    ttft = numeric_integral(
        lambda t: engine._now(t, lambda s: s.ttft_seconds * s.generation_tokens_per_second), t_end
    )
    assert state.ttft_sum == pytest.approx(ttft / GENERATED_TOKENS_PER_REQUEST, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("name", "plan"), plans(), ids=[name for name, _ in plans()])
def test_engine_page_counts_whole_tokens_and_requests(name: str, plan: Plan) -> None:
    """Like a real engine's: integer counters and histogram counts (OpenMetrics requires integer counts),
    the completed requests; every counter and sum non-decreasing, so the exporter sees no false reset."""
    now = [0.0]
    engine = SimulatedEngine(plan, gpus=3, elapsed=lambda: now[0], start_time=0.0)
    previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for t in [k * 0.37 for k in range(1, 60)]:  # through every keyframe, between whole requests
        now[0] = t
        state = engine.state(t)
        page: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(engine.page()):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                page[key] = sample.value
                if family.type in ("counter", "histogram") and not sample.name.endswith("_sum"):
                    assert sample.value == int(sample.value), (t, sample)
                if family.type in ("counter", "histogram"):
                    assert sample.value >= previous.get(key, 0.0), (t, sample)
        previous = page
        values = {sample_name: value for (sample_name, _), value in page.items()}
        completed = math.floor(state.requests)
        assert values["vllm:request_success_total"] == completed
        assert values["vllm:time_to_first_token_seconds_count"] == completed
        assert values["vllm:e2e_request_latency_seconds_bucket"] == completed
        assert values["vllm:generation_tokens_total"] == math.floor(state.generation_tokens)
        assert values["vllm:time_to_first_token_seconds_sum"] == pytest.approx(state.ttft_sum, abs=1e-4)
    if name not in ("idle", "endpoint-down"):  # the checks above saw requests complete
        assert values["vllm:request_success_total"] > 0


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_stays_physical(name: str) -> None:
    """Power within the enforced limit, ratios in 0..1, memory within the 80 GiB, at every moment."""
    source = SimulatedSource(gpus=4, scenario=name, phase_seconds=0.5, clock=lambda: 0.0)
    for step in range(0, 800):
        t = step * 0.05
        for gpu in range(4):
            sample = source.sample(gpu, t, 0.05)
            assert sample.power_watts <= sample.power_limit_watts + 1e-9, (t, gpu)
            assert 0 < sample.memory_used_bytes <= H100_MEMORY_BYTES
            assert 0 <= sample.utilization_ratio <= 1
            assert all(0 <= value <= 1 for value in sample.profiling.ratios.values())
            assert 0 < sample.sm_clock_hertz <= 1980e6


def test_serving_keyframes_follow_littles_law() -> None:
    for name in (
        "healthy",
        "busy-flat",
        "busy-flat+1",
        "input-bound",
        "batch-cut-queued",
        "leaked",
        "regressed",
    ):
        s = SERVING[name]
        requests_per_second = s.generation_tokens_per_second / GENERATED_TOKENS_PER_REQUEST
        assert s.e2e_seconds - s.ttft_seconds == pytest.approx(s.running / requests_per_second)
        assert s.ttft_seconds >= s.waiting / requests_per_second


# -- each pattern, coherent with the H100 reference -------------------------------------------------------

PHASE = 10.0


def setup(name: str, gpus: int = 2) -> tuple[SimulatedSource, SimulatedEngine]:
    source = SimulatedSource(gpus=gpus, scenario=name, phase_seconds=PHASE, clock=lambda: 0.0)
    return source, SimulatedEngine(source.scenario, gpus, lambda: 0.0, 0.0)


def tokens_per_joule(source: SimulatedSource, engine: SimulatedEngine, start: float, end: float) -> float:
    tokens = engine.state(end).generation_tokens - engine.state(start).generation_tokens
    energy = sum(
        source.scenario.energy_joules(g, end) - source.scenario.energy_joules(g, start) for g in (0, 1)
    )
    return tokens / energy


def test_keyframe_workloads_classify_as_their_story() -> None:
    expected = {
        "healthy": "memory",  # decode below the ridge point
        "busy-flat": "mixed",  # the reference's batch-256 row
        "input-bound": "latency",
        "bandwidth-saturated": "memory",
        "regressed": "memory",
        "batch-cut": "memory",
        "thermal-throttled": "memory",
        "idle": "idle",
    }
    for workload, bound in expected.items():
        assert classify_bound(evidence(WORKLOADS[workload])) == bound, workload


def test_healthy_is_steady_busy_and_queue_free() -> None:
    source, engine = setup("healthy")
    for t in (0.0, 5.0, 95.0, 1000.0):
        sample = source.sample(0, t, 1.0)
        assert 0.87 <= sample.utilization_ratio <= 0.91
        assert sample.clock_event_reasons == 0
        assert serving_now(engine, t, "waiting") == 0
        assert serving_now(engine, t, "generation_tokens_per_second") == 18000


def test_busy_flat_gpu_busy_tokens_flat_queue_growing() -> None:
    source, engine = setup("busy-flat")
    waiting = [serving_now(engine, k * PHASE, "waiting") for k in range(5)]
    assert waiting == [16, 136, 256, 376, 496]  # +60 per GPU per phase, for ever
    for t in (0.0, 7.0, 33.0, 120.0, 3600.0):
        assert source.sample(1, t, 1.0).utilization_ratio >= 0.85
        assert serving_now(engine, t, "generation_tokens_per_second") == 24000
        assert serving_now(engine, t, "running") == 512
    # the queueing shows in time to first token
    assert engine.state(50.0).ttft_sum / engine.state(50.0).requests > SERVING["busy-flat"].ttft_seconds


def test_input_bound_gpu_starved_with_work_in_flight() -> None:
    source, engine = setup("input-bound")
    sample = source.sample(0, 12.0, 1.0)
    assert sample.utilization_ratio < 0.30 < WORKLOADS["launch-bound"].utilization  # the near miss: 36 %
    assert serving_now(engine, 12.0, "running") >= 1 and serving_now(engine, 12.0, "waiting") >= 1


def test_bandwidth_saturated_reaches_the_dram_roof_and_holds() -> None:
    source, engine = setup("bandwidth-saturated")
    early = serving_now(engine, 0.0, "generation_tokens_per_second")
    late = [serving_now(engine, t, "generation_tokens_per_second") for t in (PHASE, 3 * PHASE, 60 * PHASE)]
    assert early < late[0] and len(set(late)) == 1  # ramps, then stays at its maximum
    assert source.sample(0, 2 * PHASE, 1.0).profiling.ratios["dram_bandwidth_utilization"] >= 0.85
    assert serving_now(engine, 2 * PHASE, "waiting") == 48
    assert engine.state(2 * PHASE).kv_cache_usage == pytest.approx(0.97)


def test_efficiency_regression_same_load_fewer_tokens_per_joule() -> None:
    source, engine = setup("efficiency-regression")
    before = tokens_per_joule(source, engine, 0.0, PHASE)
    after = tokens_per_joule(source, engine, 2 * PHASE, 5 * PHASE)
    assert after <= 0.85 * before
    assert serving_now(engine, 0.5 * PHASE, "generation_tokens_per_second") == serving_now(
        engine, 3 * PHASE, "generation_tokens_per_second"
    )
    assert source.sample(0, 3 * PHASE, 1.0).power_watts > source.sample(0, 0.5 * PHASE, 1.0).power_watts


def test_batch_drop_batch_falls_queue_rises_still_looks_busy() -> None:
    source, engine = setup("batch-drop")
    assert serving_now(engine, 4 * PHASE, "running") == 256
    assert serving_now(engine, 5.5 * PHASE, "running") == 32
    assert serving_now(engine, 5.5 * PHASE, "waiting") == pytest.approx(150)
    assert serving_now(engine, 9 * PHASE, "waiting") == 300  # levels off
    assert serving_now(engine, 9 * PHASE, "generation_tokens_per_second") < serving_now(
        engine, 4 * PHASE, "generation_tokens_per_second"
    )
    assert 0.8 < source.sample(0, 9 * PHASE, 1.0).utilization_ratio < 0.85  # nvidia-smi: still "busy"


def test_memory_leak_memory_climbs_linearly_while_tokens_fall() -> None:
    source, engine = setup("memory-leak")
    used = [source.sample(0, k * 10 * PHASE, 1.0).memory_used_bytes for k in range(7)]
    steps = [b - a for a, b in itertools.pairwise(used)]
    assert used[0] == 64 * GIB and used[-1] == 79 * GIB
    assert all(step == pytest.approx(steps[0], abs=2) and step > 0 for step in steps)  # linear
    assert source.sample(0, 100 * PHASE, 1.0).memory_used_bytes == 79 * GIB  # then full, holds
    tokens = [serving_now(engine, k * 10 * PHASE, "generation_tokens_per_second") for k in range(7)]
    assert tokens == sorted(tokens, reverse=True) and tokens[-1] == tokens[0] / 2
    power = [source.sample(0, k * 10 * PHASE, 1.0).power_watts for k in range(0, 7, 3)]
    assert power == sorted(power, reverse=True)


def test_throttling_thermal_and_power_cap_with_clocks_down() -> None:
    source, engine = setup("throttling")
    hot = source.sample(0, 2 * PHASE, 1.0)
    assert {"sw_thermal_slowdown", "hw_thermal_slowdown"} <= reasons(hot.clock_event_reasons)
    assert hot.sm_clock_hertz == 1290e6 and hot.temperature_celsius == 89
    before, capped = source.sample(1, 4.5 * PHASE, 1.0), source.sample(1, 6 * PHASE, 1.0)
    assert reasons(before.clock_event_reasons) == set() and before.sm_clock_hertz == 1980e6
    assert reasons(capped.clock_event_reasons) == {"sw_power_cap"}
    assert capped.power_limit_watts == 400 and capped.power_watts <= 400
    assert capped.sm_clock_hertz <= 0.85 * before.sm_clock_hertz
    for t in (2 * PHASE, 6 * PHASE):  # both kinds of throttling cost tokens
        assert serving_now(engine, t, "generation_tokens_per_second") < serving_now(
            engine, 0.0, "generation_tokens_per_second"
        )


def test_endpoint_down_answers_503_for_real_then_recovers() -> None:
    now = [0.0]
    plan = Schedule((("healthy", 1.0), ("endpoint-down", 1.0)), 1.0)
    engine = SimulatedEngine(plan, 2, lambda: now[0], 0.0)
    server = SimulatedEngineServer(engine)
    server.start()
    try:
        with urllib.request.urlopen(server.url, timeout=2) as response:
            assert response.status == 200 and b"vllm:num_requests_running" in response.read()
        now[0] = 1.5
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(server.url, timeout=2)
        assert failed.value.code == 503
        now[0] = 2.5  # the schedule repeats: healthy again
        with urllib.request.urlopen(server.url, timeout=2) as response:
            assert response.status == 200
    finally:
        server.stop()
    assert (
        SimulatedSource(gpus=1, scenario="endpoint-down", clock=lambda: 0.0)
        .sample(0, 5.0, 1.0)
        .utilization_ratio
        == 0
    )


# -- schedules --------------------------------------------------------------------------------------------


def test_schedule_switches_repeats_and_restarts_each_scenario_clock() -> None:
    plan = Schedule((("busy-flat", 20.0), ("healthy", 10.0)), PHASE)
    engine = SimulatedEngine(plan, 1, lambda: 0.0, 0.0)
    assert [plan.name_at(t) for t in (0, 19.9, 20, 29.9, 30, 55)] == [
        "busy-flat",
        "busy-flat",
        "healthy",
        "healthy",
        "busy-flat",
        "healthy",
    ]
    # busy-flat's queue starts from its first keyframe again on the second turn
    assert serving_now(engine, 15.0, "waiting") == serving_now(engine, 45.0, "waiting") == 8 + 60 * 1.5
    assert serving_now(engine, 25.0, "waiting") == 0


def test_simulated_source_reports_and_logs_the_current_scenario(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    source = SimulatedSource(gpus=2, clock=clock, schedule=[("busy-flat", 5.0), ("healthy", 5.0)])
    caplog.set_level(logging.INFO, logger="exporter.sources.simulated")
    names = []
    for _ in range(12):
        names.append(asyncio.run(source.collect()).node.simulated_scenario)
        clock.advance(1.0)
    assert names == ["busy-flat"] * 5 + ["healthy"] * 5 + ["busy-flat"] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "simulated scenario now healthy",
        "simulated scenario now busy-flat",
    ]


def test_single_scenario_is_unchanged_by_the_schedule_machinery() -> None:
    source = SimulatedSource(gpus=1, scenario="compute-bound", clock=lambda: 0.0)
    sample = source.sample(0, 3.0, 1.0)
    workload = WORKLOADS["compute-bound"]
    assert sample.power_limit_watts == 700 and sample.memory_used_bytes == workload.memory_used_bytes
    assert sample.clock_event_reasons == workload.clock_event_reasons
    assert sample.sm_clock_hertz == workload.sm_clock_mhz * 1e6
    omega = 2 * math.pi / 17.0
    assert sample.power_watts == pytest.approx(workload.power_watts + 3.0 * math.sin(omega * 3.0))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("warp:3", "simulation.schedule.0.scenario: Input should be"),
        ("healthy:0", "simulation.schedule.0.seconds: Input should be greater than 0"),
        ("healthy", "simulation.schedule: expected SCENARIO:SECONDS"),
        ("healthy:5,", "simulation.schedule: expected SCENARIO:SECONDS"),
    ],
)
def test_bad_schedules_are_one_line_config_errors(
    text: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--scenario-schedule", text, "--listen-address", "127.0.0.1:0"]) == 2
    error = capsys.readouterr().err
    assert problem in error and error.count("\n") == 1


def test_schedule_from_flag_environment_and_file(tmp_path: Path) -> None:
    args = build_parser().parse_args(["demo", "--scenario-schedule", "busy-flat:60,healthy:30.5"])
    config = load_config(environ={}, overrides=flag_overrides(args))
    assert [(e.scenario, e.seconds) for e in config.simulation.schedule] == [
        ("busy-flat", 60),
        ("healthy", 30.5),
    ]
    config = load_config(environ={"TPW_SIMULATION__SCHEDULE": "endpoint-down:10,healthy:10"})
    assert [e.scenario for e in config.simulation.schedule] == ["endpoint-down", "healthy"]
    path = tmp_path / "demo.yaml"
    path.write_text("simulation:\n  schedule:\n    - {scenario: throttling, seconds: 600}\n")
    assert load_config(path, environ={}).simulation.schedule[0].scenario == "throttling"
    assert load_config(environ={}).simulation.schedule is None
