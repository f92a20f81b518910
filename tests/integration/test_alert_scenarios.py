"""Each demo scenario makes its alert fire with the shipped rules at production timings, and only its alert.

The real pipeline (exporter process → Prometheus) is exercised by tests/integration/test_alerts_e2e.py
with a time-scaled copy of the rules. This test covers every scenario at the shipped timings (`for: 10m`,
`[1h]` windows, the default 60 s phases) without waiting hours: it samples the demo's own simulated node and
engine (exporter.sources.simulated, exporter.demo.engine) every 30 s, writes the series the exporter serves
for them (raw values; tokens/s, requests/s and power as Δcounter/Δt over the exporter's default 30 s derive
window; the endpoint's utilization and each GPU's bound from the sample of that instant, which for these
slowly moving scenarios equals the window mean the exporter uses), and has promtool evaluate
deploy/prometheus/rules/alerts.yml over them, asking which alerts fire when. The exporter's own derivation
is exercised end to end by tests/integration/test_alerts_e2e.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml
from helpers import REPO, promtool

from exporter.demo.engine import DEMO_ENDPOINT_NAME, DEMO_MODEL, SimulatedEngine
from exporter.demo.scenarios import H100_MEMORY_BYTES, Plan
from exporter.derive.bound import BOUND_STATES, classify_bound
from exporter.model import CLOCK_EVENT_REASONS, GpuSample
from exporter.sources.simulated import SimulatedSource

ALERTS = REPO / "deploy" / "prometheus" / "rules" / "alerts.yml"
WINDOW = 30.0  # the exporter's default derive window
GPUS = 2
NODE = {"job": "tpw-exporter", "instance": "demo:9835"}


def _selector(name: str, **labels: str) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in {**NODE, **labels}.items())
    return f"{name}{{{inner}}}"


def demo_series(source: SimulatedSource, step: float, end: float) -> dict[str, list[float | None]]:
    """What Prometheus would store scraping the demo every `step` seconds from 0 to `end`."""
    plan: Plan = source.scenario
    engine = SimulatedEngine(plan, GPUS, lambda: 0.0, 0.0)
    series: dict[str, list[float | None]] = {}
    times = [k * step for k in range(int(end / step) + 1)]

    def put(selector: str, index: int, value: float | None) -> None:
        series.setdefault(selector, [None] * len(times))[index] = value

    endpoint = {"endpoint": DEMO_ENDPOINT_NAME}
    model = {**endpoint, "model": DEMO_MODEL}
    raw = {**model, "engine": "vllm"}
    for i, t in enumerate(times):
        put(_selector("up"), i, 1)
        put(_selector("tpw_build_info", version="test"), i, 1)
        put(_selector("tpw_last_tick_timestamp_seconds"), i, t)
        utilizations = []
        for gpu in range(GPUS):
            g = {"gpu": str(gpu)}
            sample = source.sample(gpu, t, step)
            ratios = sample.profiling.ratios
            utilizations.append(sample.utilization_ratio)
            put(_selector("tpw_gpu_up", **g), i, 1)
            put(_selector("tpw_gpu_profiling_supported", **g), i, 1)
            put(_selector("tpw_gpu_profiling_window_seconds", **g), i, step)
            put(_selector("tpw_gpu_utilization_ratio", **g), i, sample.utilization_ratio)
            put(_selector("tpw_gpu_memory_used_bytes", **g), i, sample.memory_used_bytes)
            put(_selector("tpw_gpu_memory_total_bytes", **g), i, H100_MEMORY_BYTES)
            put(_selector("tpw_gpu_sm_clock_hertz", **g), i, sample.sm_clock_hertz)
            put(_selector("tpw_gpu_temperature_celsius", **g), i, sample.temperature_celsius)
            put(_selector("tpw_gpu_power_watts", **g), i, sample.power_watts)
            put(_selector("tpw_gpu_power_limit_watts", **g), i, sample.power_limit_watts)
            for reason, bit in CLOCK_EVENT_REASONS.items():
                put(
                    _selector("tpw_gpu_clock_event_active", reason=reason, **g),
                    i,
                    int(bool(sample.clock_event_reasons & bit)),
                )
            put_health(put, i, g, sample)
            evidence = {
                "graphics": ratios["graphics_active"],
                "tensor": ratios["tensor_active"],
                "dram": ratios["dram_bandwidth_utilization"],
                "sm": ratios["sm_active"],
                "fp": max(ratios["fp16_active"], ratios["fp32_active"], ratios["fp64_active"]),
            }
            bound = classify_bound(evidence)
            for state in BOUND_STATES:
                put(_selector("tpw_gpu_bound", bound=state, **g), i, int(state == bound))
            put(_selector("tpw_gpu_bound_evidence_ratio", signal="dram", **g), i, evidence["dram"])
            put(_selector("tpw_endpoint_gpu_info", attribution="all", **{**endpoint, **g}), i, 1)
        if plan.engine_up(t):
            put(_selector("tpw_endpoint_up", **endpoint, engine="vllm"), i, 1)
            state = engine.state(t)
            put(_selector("tpw_endpoint_requests_running", **raw), i, round(state.running))
            put(_selector("tpw_endpoint_requests_waiting", **raw), i, round(state.waiting))
        else:
            put(_selector("tpw_endpoint_up", **endpoint, engine="vllm"), i, 0)
        start = max(0.0, t - WINDOW)
        if t > 0 and plan.engine_up(t) and plan.engine_up(start):
            seconds = t - start
            before, after = engine.state(start), engine.state(t)
            energy = sum(plan.energy_joules(g, t) - plan.energy_joules(g, start) for g in range(GPUS))
            tokens_per_second = (after.generation_tokens - before.generation_tokens) / seconds
            put(_selector("tpw_endpoint_generation_tokens_per_second", **model), i, tokens_per_second)
            put(
                _selector("tpw_endpoint_requests_per_second", **model),
                i,
                (after.requests - before.requests) / seconds,
            )
            put(_selector("tpw_endpoint_power_watts", **model), i, energy / seconds)
            put(_selector("tpw_endpoint_gpu_utilization_ratio", **model), i, sum(utilizations) / GPUS)
    return series


def put_health(
    put: Callable[[str, int, float | None], None], i: int, g: dict[str, str], sample: GpuSample
) -> None:
    """The GPU-health series the exporter serves for a sample (exporter.render.exposition)."""
    health = sample.health
    assert health is not None
    for code, count in sample.xid_errors:
        put(_selector("tpw_gpu_xid_errors_total", xid=code, **g), i, count)
    put(_selector("tpw_gpu_ecc_errors_total", type="corrected", **g), i, health.ecc_corrected_volatile)
    put(_selector("tpw_gpu_ecc_errors_total", type="uncorrected", **g), i, health.ecc_uncorrected_volatile)
    put(_selector("tpw_gpu_remapped_rows", cause="correctable", **g), i, health.remapped_rows_correctable)
    put(_selector("tpw_gpu_remapped_rows", cause="uncorrectable", **g), i, health.remapped_rows_uncorrectable)
    put(_selector("tpw_gpu_row_remap_pending", **g), i, int(bool(health.row_remap_pending)))
    put(_selector("tpw_gpu_row_remap_failed", **g), i, int(bool(health.row_remap_failed)))
    put(_selector("tpw_gpu_power_default_limit_watts", **g), i, health.power_default_limit_watts)
    put(_selector("tpw_gpu_sm_clock_max_hertz", **g), i, health.sm_clock_max_hertz)
    put(_selector("tpw_gpu_pcie_link_generation", **g), i, sample.pcie_generation)
    put(_selector("tpw_gpu_pcie_link_width", **g), i, sample.pcie_width)
    put(_selector("tpw_gpu_pcie_link_max_generation", **g), i, health.pcie_max_generation)
    put(_selector("tpw_gpu_pcie_link_max_width", **g), i, health.pcie_max_width)
    put(_selector("tpw_gpu_pcie_replays_total", **g), i, health.pcie_replays)
    put(_selector("tpw_gpu_nvlink_links", **g), i, health.nvlink_links)
    put(_selector("tpw_gpu_nvlink_links_up", **g), i, health.nvlink_links_up)
    for kind, count in health.nvlink_errors:
        put(_selector("tpw_gpu_nvlink_errors_total", type=kind, **g), i, count)


def _values(values: Sequence[float | None]) -> str:
    return " ".join("_" if value is None else f"{value:.6g}" for value in values)


def firing(*names: str) -> list[dict[str, object]]:
    """`TPWGpuThrottling/thermal` → the sample {alertname="TPWGpuThrottling", cause="thermal"} 1."""
    samples = []
    for name in names:
        alertname, _, cause = name.partition("/")
        labels = f'alertname="{alertname}"' + (f',cause="{cause}"' if cause else "")
        samples.append({"labels": f"{{{labels}}}", "value": 1})
    return samples


def run_promtool(
    tmp_path: Path,
    source: SimulatedSource,
    end: float,
    checks: list[tuple[str, tuple[str, ...]]],
    evaluation_interval: str = "1m",
    step: float = 30.0,
) -> None:
    series = demo_series(source, step, end)
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": evaluation_interval,
        "tests": [
            {
                "interval": f"{step:g}s",
                "input_series": [
                    {"series": name, "values": _values(values)} for name, values in series.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": 'group by (alertname, cause) (ALERTS{alertstate="firing"})',
                        "eval_time": eval_time,
                        "exp_samples": firing(*names),
                    }
                    for eval_time, names in checks
                ],
            }
        ],
    }
    path = tmp_path / "scenario_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False, width=1_000_000))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


# (scenario, minutes simulated, [(eval time, alerts firing then)]) at the default 60 s phases.
CASES = [
    *[
        (name, 90, [("30m", ()), ("89m", ())])
        for name in ("idle", "compute-bound", "memory-bound", "launch-bound")
    ],
    ("mixed", 90, [("30m", ()), ("60m", ()), ("89m", ())]),  # compute-bound at the 700 W cap: not throttling
    ("healthy", 90, [("20m", ()), ("89m", ())]),
    ("busy-flat", 40, [("9m", ()), ("14m", ("TPWBusyButFlat",)), ("39m", ("TPWBusyButFlat",))]),
    ("input-bound", 40, [("14m", ()), ("20m", ("TPWUnderUtilized",)), ("39m", ("TPWUnderUtilized",))]),
    (
        "bandwidth-saturated",
        60,
        [("24m", ()), ("30m", ("TPWMemoryBandwidthBound",)), ("59m", ("TPWMemoryBandwidthBound",))],
    ),
    ("batch-drop", 80, [("20m", ()), ("30m", ("TPWBatchSizeDrop",)), ("70m", ("TPWBatchSizeDrop",))]),
    ("memory-leak", 90, [("40m", ()), ("56m", ("TPWGpuMemoryLeak",)), ("75m", ("TPWGpuMemoryLeak",))]),
    (
        "throttling",
        50,
        [
            ("9m", ()),
            ("15m", ("TPWGpuThrottling/thermal",)),
            ("22m", ("TPWGpuThrottling/thermal",)),
            # the 400 W limit is below the 700 W default, reached half of the samples from 10m, for 15m
            ("31m", ("TPWGpuThrottling/thermal", "TPWGpuThrottling/power_limit_lowered")),
            (
                "37m",
                (
                    "TPWGpuThrottling/thermal",
                    "TPWGpuThrottling/power_cap",
                    "TPWGpuThrottling/power_limit_lowered",
                ),
            ),
        ],
    ),
    (
        "endpoint-down",
        20,
        [
            ("4m", ()),
            ("7m", ("TPWEndpointDown/endpoint_unreadable",)),
            ("19m", ("TPWEndpointDown/endpoint_unreadable",)),
        ],
    ),
    ("efficiency-regression", 120, [("119m", ())]),  # needs yesterday: see the next test
    # GPU health (issue 14). xid-errors: XID 94 on even GPUs at 4m (warning), XID 74 on odd GPUs at 6m
    # (critical); XIDs 13 and 31 at 2m are applications' faults: no alert. Each resolves an hour later.
    (
        "xid-errors",
        70,
        [
            ("3m", ()),
            ("6m", ("TPWGpuXidError/xid_warning",)),
            ("8m", ("TPWGpuXidError/xid_warning", "TPWGpuXidError/xid_critical")),
            ("66m", ("TPWGpuXidError/xid_critical",)),
            ("69m", ()),
        ],
    ),
    # ecc-remap-pending: the uncorrectable error at 3m (XID 94 and 63 with it) and the remap it leaves
    # pending; the odd GPUs' corrected errors alone alert nothing.
    (
        "ecc-remap-pending",
        30,
        [
            ("2m", ()),
            ("5m", ("TPWGpuMemoryErrors/uncorrectable_ecc", "TPWGpuXidError/xid_warning")),
            (
                "10m",
                (
                    "TPWGpuMemoryErrors/uncorrectable_ecc",
                    "TPWGpuMemoryErrors/remap_pending",
                    "TPWGpuXidError/xid_warning",
                ),
            ),
        ],
    ),
    # power-capped: a 400 W limit from the start: no better clock of the day, the lowered limit says it
    (
        "power-capped",
        40,
        [
            ("14m", ()),
            ("17m", ("TPWGpuThrottling/power_limit_lowered",)),
            ("39m", ("TPWGpuThrottling/power_limit_lowered",)),
        ],
    ),
    # pcie-degraded: x8 from the start (for 10m); Gen 3 under load (for 5m); 60 replays a minute
    (
        "pcie-degraded",
        40,
        [
            ("4m", ()),
            ("7m", ("TPWGpuInterconnectDegraded/pcie_generation",)),
            (
                "25m",
                (
                    "TPWGpuInterconnectDegraded/pcie_generation",
                    "TPWGpuInterconnectDegraded/pcie_width",
                    "TPWGpuInterconnectDegraded/pcie_replays",
                ),
            ),
        ],
    ),
    # nvlink-errors: even GPUs' link drops at 2m (recovery errors, XID 74) and stays down; odd GPUs' links
    # replay from the start (their CRC errors, 50 a second, stay under the 100 a second that alerts)
    (
        "nvlink-errors",
        40,
        [
            ("1m", ()),
            ("4m", ("TPWGpuInterconnectDegraded/nvlink_errors", "TPWGpuXidError/xid_critical")),
            (
                "9m",
                (
                    "TPWGpuInterconnectDegraded/nvlink_errors",
                    "TPWGpuInterconnectDegraded/nvlink_down",
                    "TPWGpuXidError/xid_critical",
                ),
            ),
        ],
    ),
]


@pytest.mark.parametrize(("scenario", "minutes", "checks"), CASES, ids=[case[0] for case in CASES])
def test_each_scenario_fires_its_alert_at_shipped_timings(
    tmp_path: Path, scenario: str, minutes: int, checks: list[tuple[str, tuple[str, ...]]]
) -> None:
    source = SimulatedSource(gpus=GPUS, scenario=scenario, phase_seconds=60.0, clock=lambda: 0.0)
    run_promtool(tmp_path, source, minutes * 60.0, checks)


def test_busy_flat_resolves_when_the_schedule_turns_healthy(tmp_path: Path) -> None:
    schedule = [("busy-flat", 1200.0), ("healthy", 1200.0)]
    source = SimulatedSource(gpus=GPUS, phase_seconds=60.0, clock=lambda: 0.0, schedule=schedule)
    run_promtool(tmp_path, source, 2400.0, [("19m", ("TPWBusyButFlat",)), ("22m", ()), ("39m", ())])


def test_efficiency_regression_fires_against_a_healthy_yesterday(tmp_path: Path) -> None:
    """`--scenario-schedule healthy:691200,efficiency-regression:...`: 8 days healthy, then the regression:
    same request rate, tokens per joule −19 %. Fires after the hour mean crosses and 30 minutes pass."""
    schedule = [("healthy", 8 * 86400.0), ("efficiency-regression", 86400.0)]
    source = SimulatedSource(gpus=GPUS, phase_seconds=60.0, clock=lambda: 0.0, schedule=schedule)
    day8 = 8 * 24 * 60
    checks = [(f"{day8 + 60}m", ()), (f"{day8 + 120}m", ("TPWEfficiencyRegression",))]
    run_promtool(tmp_path, source, (day8 + 150) * 60.0, checks, evaluation_interval="5m", step=300.0)
