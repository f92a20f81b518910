"""`tpw-exporter diagnose` on synthetic series: each detector finds its pattern at the right sample, with
noise, and stays quiet on the near misses the alert rules also ignore; thresholds come from the alert
rules; the report and plot are well formed. The real pipeline (demo → Prometheus → diagnose) is
tests/integration/test_diagnose_e2e.py.
"""

from __future__ import annotations

import json
import math
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from exporter.diagnose import thresholds as th
from exporter.diagnose.dataset import Dataset, EndpointData, FiredAlert, GpuData, Grid, Node, Scope
from exporter.diagnose.detectors import PATTERNS, Finding, diagnose
from exporter.diagnose.plot import page, svg
from exporter.diagnose.report import SCHEMA, Report, clock_for
from exporter.diagnose.stats import increments, linear_fit, runs, segments

ALERTS = REPO / "deploy" / "prometheus" / "rules" / "alerts.yml"
T0 = 1_750_000_000.0
STEP = 15.0
N = 120  # 30 minutes at a 15 s scrape
GIB = 1024**3
NODE = Node("", "tpw-exporter", "gpu-node-7:9835")


# -- a synthetic node: one endpoint on two GPUs, values per sample index ------------------------------------

Series = Callable[[int], float | None]


def const(value: float | None) -> Series:
    return lambda i: value


def step_at(index: int, before: float | None, after: float | None) -> Series:
    return lambda i: before if i < index else after


def noisy(series: Series, relative: float, seed: int) -> Series:
    rng = random.Random(seed)
    noise = [1 + rng.uniform(-relative, relative) for _ in range(N)]
    return lambda i: None if (v := series(i)) is None else v * noise[i]


HEALTHY_ENDPOINT: dict[str, Series] = {
    "tokens_per_second": const(18000.0),
    "watts": const(1120.0),
    "requests_per_second": const(70.0),
    "running": const(256.0),
    "waiting": const(0.0),
    "up": const(1.0),
    "utilization": const(0.89),
    "gpu_count": const(2.0),
    "kv_cache": const(0.43),
    "start_time": const(T0 - 86400),
    "resets": const(0.0),
}
HEALTHY_GPU: dict[str, Series] = {
    "utilization": const(0.89),
    "sm_active": const(0.62),
    "tensor": const(0.22),
    "dram": const(0.45),
    "power": const(560.0),
    "power_limit": const(700.0),
    "sm_clock": const(1.98e9),
    "temperature": const(62.0),
    "memory_used": const(64.0 * GIB),
    "memory_total": const(80.0 * GIB),
    "up": const(1.0),
}


def counter(rate: Series, resets_at: tuple[int, ...] = ()) -> list[float | None]:
    """A counter whose per-step increase is rate × STEP (increase at i covers (i−1, i]); back to 0 at
    each index in `resets_at`, then counting again."""
    values: list[float | None] = []
    total = 1000.0
    for i in range(N):
        r = rate(i)
        if i in resets_at:
            total = 0.0
        if r is None:
            values.append(None)
            continue
        if i > 0:
            total += r * STEP
        values.append(total)
    return values


def dataset(
    endpoint: dict[str, Series] | None = None,
    gpus: dict[str, dict[str, Series]] | None = None,
    bound: Callable[[str, int], str | None] | None = None,
    reasons: dict[str, dict[str, Series]] | None = None,
    errors: dict[str, dict[str, Series]] | None = None,
    token_resets: tuple[int, ...] = (),
    thresholds: th.Thresholds | None = None,
    target_up: Series | None = None,
    with_endpoint: bool = True,
) -> Dataset:
    e = {**HEALTHY_ENDPOINT, **(endpoint or {})}
    up = e["up"]

    def when_up(series: Series) -> Series:
        return lambda i: series(i) if (up(i) or 0) >= 1 else None

    signals = {
        "tokens": counter(when_up(e["tokens_per_second"]), token_resets),
        "energy": counter(e["watts"]),
        "requests": counter(when_up(e["requests_per_second"]), token_resets),
    }
    for name in ("running", "waiting", "kv_cache", "start_time"):
        signals[name] = [when_up(e[name])(i) for i in range(N)]
    for name in ("up", "utilization", "gpu_count", "resets"):
        signals[name] = [e[name](i) for i in range(N)]
    endpoints = []
    if with_endpoint:
        endpoints.append(
            EndpointData(NODE, "llama", ("0", "1"), signals, engine="vllm", models=("meta/llama-3.1-8b",))
        )
    gpu_data = []
    for gpu in ("0", "1"):
        g = {**HEALTHY_GPU, **(gpus or {}).get(gpu, {})}
        gpu_data.append(
            GpuData(
                NODE,
                gpu,
                {name: [series(i) for i in range(N)] for name, series in g.items()},
                [bound(gpu, i) if bound else "memory" for i in range(N)],
                {
                    reason: [series(i) for i in range(N)]
                    for reason, series in {
                        "sw_power_cap": const(0.0),
                        "sw_thermal_slowdown": const(0.0),
                        "hw_thermal_slowdown": const(0.0),
                        "hw_slowdown": const(0.0),
                        "hw_power_brake_slowdown": const(0.0),
                        **(reasons or {}).get(gpu, {}),
                    }.items()
                },
                clock_max_1d=1.98e9,
                errors={name: [s(i) for i in range(N)] for name, s in (errors or {}).get(gpu, {}).items()},
                endpoints={"llama"} if with_endpoint else set(),
            )
        )
    return Dataset(
        prometheus="http://prometheus:9090",
        window_start=T0,
        window_end=T0 + (N - 1) * STEP,
        grid=Grid(start=T0, step=STEP, count=N, offset=0.0, interval=STEP),
        scope=Scope(),
        thresholds=thresholds or th.Thresholds(),
        nodes=[NODE],
        target_up={NODE: [(target_up or const(1.0))(i) for i in range(N)]},
        nvml_up={NODE: [1.0] * N},
        gpus=gpu_data,
        endpoints=endpoints,
    )


def MIXED(gpu: str, i: int) -> str:
    """The bound of a decode at a full batch (tensor and DRAM both substantial), as the demo's busy-flat."""
    return "mixed"


def found(data: Dataset, min_duration: float = 300.0) -> list[Finding]:
    return diagnose(data, min_duration, clock_for(data.window_start, data.window_end))


def patterns(findings: list[Finding]) -> list[str]:
    return [f.pattern for f in findings]


def t(index: int) -> float:
    return T0 + index * STEP


# -- no false alarms --------------------------------------------------------------------------------------


def test_a_noisy_healthy_node_has_no_finding() -> None:
    """±3 % noise on every throughput, power and utilization series, ±2 requests of queue jitter."""
    endpoint = {
        name: noisy(HEALTHY_ENDPOINT[name], 0.03, seed)
        for seed, name in enumerate(("tokens_per_second", "watts", "requests_per_second", "utilization"))
    }
    rng = random.Random(9)
    jitter = [rng.choice((0.0, 0.0, 1.0, 2.0)) for _ in range(N)]
    endpoint["waiting"] = lambda i: jitter[i]
    gpus = {gpu: {"power": noisy(const(560.0), 0.03, 10 + k)} for k, gpu in enumerate("01")}
    assert found(dataset(endpoint, gpus)) == []


# -- one detector per pattern ------------------------------------------------------------------------------


def test_busy_but_flat_from_the_sample_the_queue_starts_growing() -> None:
    endpoint = {
        "utilization": const(0.92),
        "tokens_per_second": noisy(const(24000.0), 0.02, 1),
        "waiting": lambda i: 0.0 if i < 40 else 8.0 * (i - 39),
        "running": const(512.0),
    }
    (finding,) = found(dataset(endpoint, bound=MIXED))
    assert finding.pattern == "busy-but-flat" and finding.alert == "TPWBusyButFlat"
    assert finding.start == t(40) and finding.end is None  # ongoing at the end of the window
    assert finding.endpoint == "llama" and finding.gpus == ("0", "1")
    assert finding.evidence["waiting_peak"] == 8.0 * (N - 40)
    assert finding.evidence["utilization"] == pytest.approx(0.92)
    assert finding.runbook.endswith("/docs/runbooks/TPWBusyButFlat.md")


def test_busy_but_flat_near_misses() -> None:
    growing = {"waiting": lambda i: 0.0 if i < 40 else 8.0 * (i - 39)}
    # throughput rising with the queue (load ramping up, batching keeps up): not flat
    rising = {**growing, "utilization": const(0.92), "tokens_per_second": lambda i: 18000.0 + 100 * i}
    assert "busy-but-flat" not in patterns(found(dataset(rising)))
    # the GPUs are not busy enough (84 %)
    assert "busy-but-flat" not in patterns(found(dataset({**growing, "utilization": const(0.84)})))
    # the queue grows by 9 only (the alert wants 10)
    small = {"utilization": const(0.92), "waiting": lambda i: 0.0 if i < 40 else min(9.0, 0.5 * (i - 39))}
    assert "busy-but-flat" not in patterns(found(dataset(small)))


def test_input_bound_episode_with_start_and_end() -> None:
    endpoint = {
        "utilization": lambda i: 0.22 if 30 <= i <= 70 else 0.89,
        "running": lambda i: 8.0 if 30 <= i <= 70 else 256.0,
        "waiting": lambda i: 12.0 if 30 <= i <= 70 else 0.0,
        "tokens_per_second": lambda i: 900.0 if 31 <= i <= 70 else 18000.0,
        "requests_per_second": lambda i: 3.5 if 31 <= i <= 70 else 70.0,
    }
    gpus = {gpu: {"sm_active": lambda i: 0.12 if 30 <= i <= 70 else 0.62} for gpu in "01"}
    (finding,) = found(dataset(endpoint, gpus))
    assert finding.pattern == "input-bound"
    assert (finding.start, finding.end) == (t(30), t(71))
    assert finding.evidence["sm_active"] == pytest.approx(0.12)
    # the near miss: a launch-bound loop reads 36 % busy (its batch of 8 is a batch-size drop, though)
    launch = {**endpoint, "utilization": lambda i: 0.36 if 30 <= i <= 70 else 0.89}
    assert patterns(found(dataset(launch, gpus))) == ["batch-size-drop"]


def test_a_blip_shorter_than_min_duration_is_not_an_episode() -> None:
    endpoint = {
        "utilization": lambda i: 0.2 if 50 <= i <= 52 else 0.89,
        "running": const(8.0),
    }
    assert found(dataset(endpoint), min_duration=300) == []
    assert patterns(found(dataset(endpoint), min_duration=45)) == ["input-bound"]


def test_bandwidth_bound_from_the_plateau_at_peak() -> None:
    def tokens(i: int) -> float:
        return 5000.0 + 2000.0 * min(max(i - 20, 0), 20) / 20  # ramps from 20 to 40, then holds

    endpoint = {
        "tokens_per_second": tokens,
        "requests_per_second": lambda i: tokens(i) / 256,
        "waiting": lambda i: 0.0 if i < 21 else min(48.0, 3.0 * (i - 20)),
        "running": const(64.0),
        "utilization": const(0.99),
    }
    gpus = {gpu: {"dram": const(0.88), "tensor": const(0.06)} for gpu in "01"}
    (finding,) = found(dataset(endpoint, gpus))
    assert finding.pattern == "bandwidth-bound" and finding.severity == "info"
    # 95 % of the 7,000 tokens/s plateau (6,650) is first reached at sample 37 (6,700)
    assert finding.start == t(37) and finding.end is None
    assert finding.evidence["dram_bandwidth_utilization"] == pytest.approx(0.88)
    # not memory-bound (tensor and DRAM both substantial: "mixed"): no finding
    assert found(dataset(endpoint, gpus, bound=lambda gpu, i: "mixed")) == []
    # declining throughput is not a ceiling (a leak, throttling)
    falling = {**endpoint, "tokens_per_second": lambda i: 7000.0 - 12.0 * max(i - 40, 0)}
    assert "bandwidth-bound" not in patterns(found(dataset(falling, gpus)))


def test_efficiency_regression_after_a_restart() -> None:
    """A deploy at sample 60: the engine restarts (new start time, counters from 0) with slower kernels:
    the same tokens/s and request rate at 23 % more power (tokens per joule −19 %)."""
    endpoint = {
        "watts": noisy(step_at(60, 1120.0, 1380.0), 0.02, 3),
        "tokens_per_second": noisy(const(18000.0), 0.02, 4),
        "start_time": step_at(60, T0 - 86400, t(60) - 30),
        "resets": step_at(60, 0.0, 1.0),
    }
    (finding,) = found(dataset(endpoint, token_resets=(60,)))
    assert finding.pattern == "efficiency-regression"
    assert finding.title.startswith("Efficiency regression after a restart")
    assert finding.start == t(60) and finding.end is None
    ev = finding.evidence
    assert ev["tokens_per_joule_change"] == pytest.approx(1120 / 1380 - 1, abs=0.02)
    assert ev["restart_at"] == t(60)
    assert ev["request_rate_ratio"] == pytest.approx(1.0, abs=0.02)
    assert any("the engine restarted at" in line for line in finding.lines)


def test_efficiency_regression_without_restart_ends_when_it_recovers() -> None:
    endpoint = {"watts": lambda i: 1380.0 if 40 <= i < 80 else 1120.0}
    (finding,) = found(dataset(endpoint))
    assert (finding.pattern, finding.start, finding.end) == ("efficiency-regression", t(40), t(80))
    assert finding.evidence["restart_at"] is None


def test_efficiency_near_misses() -> None:
    # −10 % only (the alert wants −15 %)
    assert found(dataset({"watts": step_at(60, 1120.0, 1245.0)})) == []
    # −19 % but at half the request rate: load changed, not the software
    quieter = {
        "watts": step_at(60, 1120.0, 1380.0),
        "requests_per_second": step_at(60, 70.0, 35.0),
        "tokens_per_second": step_at(60, 18000.0, 18000.0),
    }
    assert "efficiency-regression" not in patterns(found(dataset(quieter)))


def test_batch_size_drop_and_its_near_misses() -> None:
    cut = {
        "running": step_at(60, 256.0, 32.0),
        "waiting": lambda i: 0.0 if i < 60 else min(150.0, 30.0 * (i - 59)),
        "tokens_per_second": step_at(60, 18000.0, 3000.0),
        "requests_per_second": step_at(60, 70.0, 11.7),
        "watts": step_at(60, 1120.0, 700.0),
        "utilization": step_at(60, 0.89, 0.83),
    }
    (finding,) = found(dataset(cut))
    assert finding.pattern == "batch-size-drop" and finding.start == t(60)
    assert (finding.evidence["before"], finding.evidence["after"]) == (256.0, 32.0)
    assert (
        finding.evidence["tokens_per_busy_gpu_second_after"]
        < finding.evidence["tokens_per_busy_gpu_second_before"]
    )
    # the GPUs starve at 20 % busy: that is the host (input-bound), not a smaller batch
    starved = {**cut, "utilization": step_at(60, 0.89, 0.2)}
    assert patterns(found(dataset(starved))) == ["input-bound"]
    # the batch fell to 75 % only
    assert found(dataset({**cut, "running": step_at(60, 256.0, 192.0)})) == []


def test_batch_size_drop_from_tokens_per_busy_gpu_second_without_a_running_gauge() -> None:
    cut = {
        "running": const(None),
        "waiting": lambda i: 0.0 if i < 60 else 40.0,
        "tokens_per_second": step_at(60, 18000.0, 3000.0),
        "requests_per_second": step_at(60, 70.0, 11.7),
        "utilization": step_at(60, 0.89, 0.83),
    }
    (finding,) = found(dataset(cut))
    assert finding.pattern == "batch-size-drop"
    assert finding.evidence["signal"] == "tokens per busy GPU-second"


def leak_gpus(start: int, gib_per_step: float) -> dict[str, dict[str, Series]]:
    def used(i: int) -> float:
        return (64.0 + gib_per_step * max(i - start, 0)) * GIB

    return {gpu: {"memory_used": used} for gpu in "01"}


def test_memory_leak_memory_climbs_while_throughput_falls() -> None:
    endpoint = {"tokens_per_second": lambda i: 18000.0 - 40.0 * max(i - 40, 0)}
    (finding,) = found(dataset(endpoint, leak_gpus(40, 0.1)))
    assert finding.pattern == "memory-leak" and finding.severity == "warning"
    assert finding.gpus == ("0", "1") and finding.start == t(41)  # the first sample above 64 GiB
    per_gpu = finding.evidence["gpus"]["0"]
    assert per_gpu["rate_bytes_per_hour"] == pytest.approx(0.1 * GIB * 3600 / STEP)
    assert per_gpu["seconds_to_full"] < 4 * 3600
    assert finding.evidence["throughput_falling"] is True


def test_memory_leak_near_misses() -> None:
    # throughput holding: reported as information only
    (climbing,) = found(dataset(None, leak_gpus(40, 0.1)))
    assert (climbing.pattern, climbing.severity) == ("memory-leak", "info")
    # a climb that would take over 4 h to fill the GPU (0.001 GiB per 15 s: 16 GiB in 67 h)
    falling = {"tokens_per_second": lambda i: 18000.0 - 40.0 * max(i - 40, 0)}
    assert "memory-leak" not in patterns(found(dataset(falling, leak_gpus(40, 0.001))))
    # one allocation step is not a creep
    step_up = {gpu: {"memory_used": step_at(60, 20.0 * GIB, 64.0 * GIB)} for gpu in "01"}
    assert "memory-leak" not in patterns(found(dataset(falling, step_up)))


def test_throttling_thermal_and_power_cap_each_on_its_gpu() -> None:
    gpus = {
        "0": {"sm_clock": step_at(30, 1.98e9, 1.29e9), "temperature": step_at(30, 62.0, 89.0)},
        "1": {
            "sm_clock": step_at(80, 1.98e9, 1.2e9),
            "power": step_at(80, 560.0, 397.0),
            "power_limit": step_at(80, 700.0, 400.0),
        },
    }
    reasons = {
        "0": {"sw_thermal_slowdown": step_at(30, 0.0, 1.0), "hw_thermal_slowdown": step_at(30, 0.0, 1.0)},
        "1": {"sw_power_cap": step_at(80, 0.0, 1.0)},
    }
    findings = found(dataset(None, gpus, reasons=reasons))
    assert patterns(findings) == ["throttling", "throttling"]
    by_cause = {f.evidence["cause"]: f for f in findings}
    assert (by_cause["thermal"].gpus, by_cause["thermal"].start) == (("0",), t(30))
    assert (by_cause["power_cap"].gpus, by_cause["power_cap"].start) == (("1",), t(80))
    assert "power limit lowered 700 → 400 W" in by_cause["power_cap"].lines[0]
    assert by_cause["thermal"].rank == 1 and by_cause["thermal"].related == [2]  # the earlier first


def test_power_cap_at_the_default_limit_costing_11_percent_is_not_throttling() -> None:
    """A GEMM at the 700 W cap of an H100 loses ~11 % of its clock: the alert does not fire, nor diagnose."""
    gpus = {gpu: {"sm_clock": const(1.755e9)} for gpu in "01"}
    reasons = {gpu: {"sw_power_cap": const(1.0)} for gpu in "01"}
    assert found(dataset(None, gpus, reasons=reasons)) == []


def test_downs_and_gpu_errors_rank_first() -> None:
    endpoint = {"up": lambda i: 0.0 if 50 <= i < 60 else 1.0}
    gpus = {"1": {"up": lambda i: 0.0 if 100 <= i < 104 else 1.0}}
    errors = {"1": {'tpw_gpu_xid_errors_total{xid="79"}': lambda i: 0.0 if i < 99 else 1.0}}
    findings = found(
        dataset(endpoint, gpus, errors=errors, target_up=lambda i: 0.0 if i in (10, 11) else 1.0)
    )
    assert patterns(findings) == ["gpu-errors", "gpu-down", "exporter-down", "endpoint-down"]
    errors_finding, gpu_down, exporter_down, endpoint_down = findings
    assert (
        errors_finding.gpus == ("1",)
        and errors_finding.start == t(99)
        and errors_finding.severity == "critical"
    )
    assert (gpu_down.start, gpu_down.end) == (t(100), t(104))
    assert errors_finding.alert == "TPWGpuDown"  # TPWGpuXidError's runbook where that rule is loaded
    assert (exporter_down.start, exporter_down.end) == (t(10), t(12))
    assert (endpoint_down.start, endpoint_down.end) == (t(50), t(60))


def test_gpu_errors_are_the_ones_that_need_action() -> None:
    """Corrected ECC errors trickle on healthy GPUs, lifetime counts repeat the volatile ones, rows remapped
    for correctable errors are routine: none is reported; an uncorrected error and a pending remap are."""
    routine = {
        'tpw_gpu_ecc_errors_total{type="corrected"}': lambda i: float(i),
        'tpw_gpu_ecc_aggregate_errors_total{type="uncorrected"}': const(3.0),
        'tpw_gpu_remapped_rows{cause="correctable"}': lambda i: float(i // 10),
        "tpw_gpu_row_remap_pending": const(0.0),
        'tpw_gpu_xid_errors_total{xid="79"}': const(0.0),
    }
    assert found(dataset(errors={"0": routine})) == []
    serious = {
        **routine,
        'tpw_gpu_ecc_errors_total{type="uncorrected"}': step_at(70, 0.0, 1.0),
        "tpw_gpu_row_remap_pending": step_at(71, 0.0, 1.0),
    }
    (finding,) = found(dataset(errors={"0": serious}))
    assert (finding.pattern, finding.severity, finding.start, finding.gpus) == (
        "gpu-errors",
        "critical",
        t(70),
        ("0",),
    )
    assert finding.lines == [
        'GPU 0: tpw_gpu_ecc_errors_total{type="uncorrected"} +1 (first at 15:24:10)',
        "GPU 0: tpw_gpu_row_remap_pending = 1 (first at 15:24:25)",
    ]
    rules = [("TPWGpuMemoryErrors", "x", {"runbook_url": "https://runbooks.example/TPWGpuMemoryErrors.md"})]
    data = dataset(errors={"0": serious}, thresholds=th.read(rules))
    (finding,) = found(data)
    assert (finding.alert, finding.runbook) == (
        "TPWGpuMemoryErrors",
        "https://runbooks.example/TPWGpuMemoryErrors.md",
    )
    only_pending = {"tpw_gpu_row_remap_pending": step_at(71, 0.0, 1.0)}
    assert found(dataset(errors={"1": only_pending}))[0].severity == "warning"


def test_the_cause_ranks_above_its_symptom() -> None:
    """Thermal throttling from sample 40 with a queue growing from 40 at flat tokens/s: both found,
    throttling first, each pointing at the other."""
    endpoint = {"utilization": const(0.95), "waiting": lambda i: 0.0 if i < 40 else 5.0 * (i - 39)}
    gpus = {gpu: {"sm_clock": step_at(40, 1.98e9, 1.29e9)} for gpu in "01"}
    reasons = {gpu: {"hw_thermal_slowdown": step_at(40, 0.0, 1.0)} for gpu in "01"}
    findings = found(dataset(endpoint, gpus, reasons=reasons, bound=MIXED))
    assert patterns(findings) == ["throttling", "busy-but-flat"]
    assert findings[0].related == [2] and findings[1].related == [1]


# -- stats ------------------------------------------------------------------------------------------------


def test_segments_find_several_steps_in_noise_and_do_not_split_noise() -> None:
    rng = random.Random(1)
    levels = [10.0] * 40 + [7.0] * 30 + [10.0] * 50
    values = [v * (1 + rng.uniform(-0.03, 0.03)) for v in levels]
    parts = segments(values, min_len=5)
    assert [(p.lo, p.hi) for p in parts] == [(0, 40), (40, 70), (70, 120)]
    flat = [10.0 * (1 + rng.uniform(-0.03, 0.03)) for _ in range(120)]
    assert len(segments(flat, min_len=5)) == 1
    # a forced boundary (a restart) always starts a segment
    assert [p.lo for p in segments(flat, min_len=5, forced=[60])] == [0, 60]


def test_increments_treat_a_decrease_as_a_reset_and_runs_join_short_gaps() -> None:
    assert increments([1.0, 3.0, None, 5.0, 2.0, 4.0]) == [None, 2.0, None, None, 2.0, 2.0]
    assert runs([False, True, True, None, True, False, False, True]) == [(1, 2), (4, 4), (7, 7)]
    assert runs([False, True, True, None, True, False, False, True], max_gap=1) == [(1, 4), (7, 7)]
    fit = linear_fit([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert fit is not None and fit.slope == pytest.approx(2.0) and fit.r2 == pytest.approx(1.0)
    assert math.isinf(fit.t_stat)


# -- thresholds: the alert rules' ----------------------------------------------------------------------------


def test_the_shipped_alert_rules_carry_exactly_the_defaults() -> None:
    """Change a number in alerts.yml and this fails until exporter/diagnose/thresholds.py follows."""
    rules = th.rules_from_file(yaml.safe_load(ALERTS.read_text()))
    read = th.read(rules, origin="alerts.yml")
    assert read.from_rules == {spec.key for spec in th.SPECS}, (
        "a threshold's pattern no longer matches its alert"
    )
    assert dict(read.values) == {spec.key: pytest.approx(spec.default) for spec in th.SPECS}
    assert {alert for alert, *_ in rules} >= set(th.ALERTS)
    for name in {p.alert for p in PATTERNS.values()}:
        assert read.runbooks[name].endswith(f"/docs/runbooks/{name}.md")
        assert (REPO / "docs" / "runbooks" / f"{name}.md").exists()


def test_thresholds_follow_tuned_rules_as_prometheus_prints_them() -> None:
    """/api/v1/rules prints expressions re-formatted (0.30 → 0.3, spacing); a tuned number is used."""
    printed = {
        "groups": [
            {
                "rules": [
                    {
                        "type": "alerting",
                        "name": "TPWBusyButFlat",
                        "query": "tpw_endpoint_gpu_utilization_ratio >= 0.8 and on (cluster, job, instance, "
                        "endpoint) sum by (cluster, job, instance, endpoint) "
                        "(delta(tpw_endpoint_requests_waiting"
                        "[10m])) >= 20 and on (cluster, job, instance, endpoint) "
                        "delta(tpw_endpoint_generation_"
                        "tokens_per_second[10m]) <= 0.1 * "
                        "avg_over_time(tpw_endpoint_generation_tokens_per_second"
                        "[10m])",
                        "annotations": {"runbook_url": "https://wiki.example/TPWBusyButFlat"},
                    },
                    {
                        "type": "alerting",
                        "name": "TPWGpuMemoryLeak",
                        "query": "predict_linear(tpw_gpu_memory_used_bytes[1h], 2 * 3600) > on (cluster, "
                        "job, "
                        "instance, gpu) tpw_gpu_memory_total_bytes",
                    },
                    {"type": "recording", "name": "x", "query": "tpw_endpoint_gpu_utilization_ratio >= 0.1"},
                ]
            }
        ]
    }
    read = th.read(th.rules_from_api(printed))
    assert read["busy_utilization"] == 0.8 and read["busy_queue_growth"] == 20
    assert read["leak_horizon_seconds"] == 7200
    assert read["under_utilization"] == 0.30  # not loaded: the default
    assert read.from_rules == {
        "busy_utilization",
        "busy_queue_growth",
        "busy_tokens_rise",
        "leak_horizon_seconds",
    }
    assert "4 of 18" in read.source
    assert read.runbooks == {"TPWBusyButFlat": "https://wiki.example/TPWBusyButFlat"}
    none = th.read([])
    assert none.from_rules == frozenset() and none.source.startswith("defaults")


def test_a_tuned_threshold_changes_the_verdict() -> None:
    endpoint = {"utilization": const(0.82), "waiting": lambda i: 0.0 if i < 40 else 8.0 * (i - 39)}
    assert "busy-but-flat" not in patterns(found(dataset(endpoint)))
    tuned = th.Thresholds({**th.Thresholds().values, "busy_utilization": 0.8})
    assert "busy-but-flat" in patterns(found(dataset(endpoint, thresholds=tuned)))


# -- report and plot ----------------------------------------------------------------------------------------


def incident() -> Dataset:
    """A busy-flat episode and a thermal throttle on GPU 0, to report and plot."""
    endpoint = {"utilization": const(0.95), "waiting": lambda i: 0.0 if i < 40 else 5.0 * (i - 39)}
    gpus = {"0": {"sm_clock": step_at(40, 1.98e9, 1.29e9)}}
    reasons = {"0": {"hw_thermal_slowdown": step_at(40, 0.0, 1.0)}}
    return dataset(endpoint, gpus, reasons=reasons, bound=MIXED)


def test_json_report_has_the_documented_schema() -> None:
    data = incident()
    findings = found(data)
    document = json.loads(json.dumps(Report(data, findings, 300.0).to_json(), allow_nan=False))
    assert document["schema"] == SCHEMA
    assert set(document) == {
        "schema",
        "prometheus",
        "window",
        "scope",
        "thresholds",
        "patterns_checked",
        "nodes",
        "findings",
        "alerts",
        "overview",
        "notes",
    }
    assert document["window"]["start_time"] == "2025-06-15T15:06:40Z"
    assert document["window"]["step_seconds"] == STEP and document["window"]["min_duration_seconds"] == 300.0
    assert document["patterns_checked"] == sorted(PATTERNS)
    first = document["findings"][0]
    assert set(first) == {
        "rank",
        "pattern",
        "title",
        "severity",
        "alert",
        "node",
        "cluster",
        "job",
        "instance",
        "endpoint",
        "gpus",
        "start",
        "start_time",
        "end",
        "end_time",
        "ongoing",
        "evidence",
        "summary",
        "next_check",
        "runbook",
        "related",
    }
    assert (first["rank"], first["pattern"], first["gpus"], first["ongoing"]) == (
        1,
        "throttling",
        ["0"],
        True,
    )
    assert first["start"] == t(40) and first["end"] is None and first["instance"] == "gpu-node-7:9835"
    assert document["nodes"] == [
        {
            "node": "gpu-node-7:9835",
            "cluster": None,
            "job": "tpw-exporter",
            "instance": "gpu-node-7:9835",
            "gpus": ["0", "1"],
            "endpoints": ["llama"],
        }
    ]
    overview = document["overview"]["endpoints"][0]
    assert overview["tokens_per_joule"] == pytest.approx(18000 / 1120)


def test_text_report_most_likely_cause_first_with_evidence_and_runbook() -> None:
    data = incident()
    text = Report(data, found(data), 300.0).text()
    assert text.index("#1 WARNING  Throttling (thermal)") < text.index("#2 WARNING  Busy but flat")
    assert "when     15:16:40 → ongoing at the end of the window (20 min)" in text
    assert (
        "runbook  https://github.com/tpw-exporter/tpw-exporter/blob/main/docs/runbooks/TPWGpuThrottling.md"
        in text
    )
    assert "see also #2" in text
    assert "At a glance" in text and "llama on gpu-node-7:9835: 18,000 tokens/s" in text
    healthy = dataset()
    assert "No known pattern in this window" in Report(healthy, [], 300.0).text()


def test_alerts_that_fired_are_listed() -> None:
    data = incident()
    data.alerts = [
        FiredAlert(
            "TPWGpuThrottling",
            {"alertname": "TPWGpuThrottling", "instance": NODE.instance, "gpu": "0", "cause": "thermal"},
            t(80),
            None,
        ),
    ]
    report = Report(data, found(data), 300.0)
    assert "  TPWGpuThrottling (instance=gpu-node-7:9835, gpu=0, cause=thermal): 15:26:40 → still firing" in (
        report.text()
    )
    (alert,) = report.to_json()["alerts"]
    assert (alert["alertname"], alert["start"], alert["end"], alert["labels"]["gpu"]) == (
        "TPWGpuThrottling",
        t(80),
        None,
        "0",
    )


def _svg_root(text: str) -> ET.Element:
    body = text[text.index("<svg") : text.index("</svg>") + len("</svg>")]
    return ET.fromstring(body)


def test_plot_marks_every_finding_in_every_panel(tmp_path: Path) -> None:
    data = incident()
    report = Report(data, found(data), 300.0)
    root = _svg_root(page(report))
    ns = "{http://www.w3.org/2000/svg}"
    bands = [r for r in root.iter(f"{ns}rect") if r.get("class") == "finding"]
    assert len(bands) == 6 * len(report.findings)  # six panels
    assert {b.get("data-rank") for b in bands} == {"1", "2"}
    lines = [p for p in root.iter(f"{ns}polyline") if p.get("class") == "series"]
    titles = {p.find(f"{ns}title").text for p in lines}  # type: ignore[union-attr]
    assert {"llama", "GPU 0 utilization", "GPU 0 SM activity", "GPU 1 power", "GPU 0 used"} <= titles
    standalone = svg(report)
    assert ET.fromstring(standalone).tag == f"{ns}svg"
    assert "<script" not in page(report) and "http://" not in re.sub(r'(xmlns|href)="[^"]*"', "", standalone)


def test_plot_of_an_empty_window_still_draws(tmp_path: Path) -> None:
    data = dataset(with_endpoint=False, gpus={g: {k: const(None) for k in HEALTHY_GPU} for g in "01"})
    report = Report(data, [], 300.0)
    assert "no data in this window" in svg(report)
    _svg_root(page(report))


def test_every_pattern_has_a_runbook_and_a_severity() -> None:
    for name, pattern in PATTERNS.items():
        assert pattern.severity in ("critical", "warning", "info"), name
        assert (REPO / "docs" / "runbooks" / f"{pattern.alert}.md").exists(), name
