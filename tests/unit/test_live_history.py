"""The live page's history (exporter/live/history.py) and its findings (exporter/live/findings.py): what a
tick records, the resolution, the ring, the bounded memory and JSON, incremental answers, and diagnose's
own detectors finding each demo scenario's pattern in it."""

from __future__ import annotations

import json
import math
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest
from live_common import simulate

from exporter.diagnose.dataset import ENDPOINT_QUERIES, GPU_QUERIES, POWER_CAP_REASON, THERMAL_REASONS
from exporter.diagnose.detectors import error_rule
from exporter.live import findings as findings_module
from exporter.live import history as live
from exporter.live.findings import dataset, findings_json
from exporter.live.history import (
    CLOCK_REASONS,
    ENDPOINT_SIGNALS,
    GPU_SIGNALS,
    MAX_ENDPOINTS,
    MAX_EXTRA_SERIES,
    MAX_GPUS,
    MAX_JSON_BYTES,
    MAX_POINTS,
    MEMORY_BOUND_BYTES,
    History,
    gpu_error_series,
    step_for,
)
from exporter.model import (
    CLOCK_EVENT_REASONS,
    Derived,
    DerivedEndpoint,
    DerivedGpu,
    EndpointEnergyTotal,
    EndpointSample,
    EndpointValue,
    GpuHealth,
    GpuInfo,
    GpuSample,
    Profiling,
    Snapshot,
    SourceStatus,
)
from exporter.render.exposition import Renderer

WALL = 1_750_000_000.0


def gpu(index: int, **fields: Any) -> GpuSample:
    values: dict[str, Any] = {
        "utilization_ratio": 0.9,
        "power_watts": 500.0 + index,
        "power_limit_watts": 700.0,
        "sm_clock_hertz": 1.98e9,
        "temperature_celsius": 60.0,
        "memory_used_bytes": 40 * 2**30,
        "clock_event_reasons": 0,
        "profiling": Profiling(
            1.0, {"sm_active": 0.6, "tensor_active": 0.3, "dram_bandwidth_utilization": 0.5}
        ),
    }
    values.update(fields)
    info = GpuInfo(index, f"GPU-{index:04d}", "NVIDIA H100", memory_total_bytes=80 * 2**30)
    return GpuSample(info, **values)


def endpoint(name: str = "llm", gpus: tuple[int, ...] = (0,), **fields: Any) -> EndpointSample:
    fields.setdefault(
        "values",
        (
            EndpointValue("generation_tokens_total", "m", 1000.0),
            EndpointValue("requests_total", "m", 10.0, "success"),
            EndpointValue("requests_running", "m", 8.0),
            EndpointValue("requests_waiting", "m", 2.0),
        ),
    )
    return EndpointSample(name, "vllm", "http://e/metrics", gpus=gpus, **fields)


def snapshot(
    tick: int, t: float, gpus: tuple[GpuSample, ...], endpoints: tuple[EndpointSample, ...] = ()
) -> Snapshot:
    derived = Derived(
        window_seconds=30.0,
        gpus=tuple(DerivedGpu(g.info.index, bound="memory") for g in gpus),
        endpoints=tuple(
            DerivedEndpoint(e.name, "m", generation_tokens_per_second=100.0 + tick, tokens_per_joule=2.5)
            for e in endpoints
        ),
        energy_totals=tuple(EndpointEnergyTotal(e.name, "m", 10.0 * tick) for e in endpoints),
    )
    return Snapshot(
        tick=tick,
        wall_time=WALL + t,
        monotonic_time=t,
        duration_seconds=0.01,
        gpus=gpus,
        endpoints=endpoints,
        sources=(SourceStatus("nvml", True, 0.01),),
        derived=derived,
    )


def answer(history: History, **kwargs: Any) -> dict[str, Any]:
    return json.loads(history.json(**kwargs))


# -- names shared with diagnose ------------------------------------------------------------------------


def test_series_are_named_as_diagnose_reads_them() -> None:
    assert tuple(GPU_QUERIES) == GPU_SIGNALS
    assert tuple(ENDPOINT_QUERIES) == ENDPOINT_SIGNALS
    assert (*THERMAL_REASONS, POWER_CAP_REASON) == CLOCK_REASONS
    assert all(reason in CLOCK_EVENT_REASONS for reason in CLOCK_REASONS)


def test_gpu_error_series_are_those_diagnose_reports_under_their_prometheus_names() -> None:
    health = GpuHealth(
        ecc_corrected_volatile=1,
        ecc_uncorrected_volatile=2,
        ecc_corrected_aggregate=3,
        ecc_uncorrected_aggregate=4,
        retired_pages_single_bit=5,
        retired_pages_double_bit=6,
        retired_pages_pending=True,
        remapped_rows_correctable=7,
        remapped_rows_uncorrectable=8,
        row_remap_pending=True,
        row_remap_failed=False,
    )
    sample = gpu(0, xid_errors=(("48", 0), ("79", 2), ("other", 1)), health=health)
    series = gpu_error_series(sample)
    assert series['tpw_gpu_xid_errors_total{xid="79"}'] == 2.0
    assert series["tpw_gpu_row_remap_failed"] == 0.0 and series["tpw_gpu_retired_pages_pending"] == 1.0
    assert all(error_rule(name) is not None for name in series), series
    # what is left out is what diagnose does not report on its own: corrected, lifetime, correctable counts
    skipped = (
        'tpw_gpu_ecc_errors_total{type="corrected"}',
        'tpw_gpu_ecc_aggregate_errors_total{type="uncorrected"}',
        'tpw_gpu_remapped_rows{cause="correctable"}',
        'tpw_gpu_retired_pages{cause="single_bit"}',
    )
    assert all(error_rule(name) is None for name in skipped)
    # ... and the names are the exporter's own series
    exposition = Renderer().render(snapshot(1, 1.0, (sample,))).text.decode()
    for name in series:
        metric, _, labels = name.partition("{")
        assert any(
            line.startswith(metric + "{") and labels[:-1] in line for line in exposition.splitlines()
        ), name


# -- recording -----------------------------------------------------------------------------------------


def test_a_tick_becomes_a_point_and_the_current_values_are_the_ticks_own() -> None:
    history = History(1.0)
    last = snapshot(1, 10.0, (gpu(0), gpu(1, utilization_ratio=0.123456789)), (endpoint(gpus=(0, 1)),))
    history.record(last)
    history.record(last)  # the same tick again (a re-publication) is not a new point
    history.record(snapshot(0, 11.0, ()))  # nor is tick 0
    body = answer(history)
    assert (body["tick"], body["slots"], body["ticks"], body["full"]) == (1, [0], [1], True)
    assert body["times"] == [WALL + 10.0]
    one = body["gpus"][1]
    assert one["gpu"] == "1" and one["name"] == "NVIDIA H100" and one["endpoints"] == ["llm"]
    assert one["current"] == {
        "utilization": 0.123456789,  # exact in `current`, 4 digits in the series
        "sm_active": 0.6,
        "tensor": 0.3,
        "dram": 0.5,
        "power": 501.0,
        "power_limit": 700.0,
        "bound": "memory",
    }
    assert one["series"]["utilization"] == [0.1235] and one["series"]["bound"] == [1]
    (llm,) = body["endpoints"]
    assert llm["current"] == {
        "tokens_per_second": 101.0,
        "tokens_per_joule": 2.5,
        "running": 8.0,
        "waiting": 2.0,
        "up": True,
    }
    assert llm["gpus"] == ["0", "1"] and llm["engine"] == "vllm" and llm["models"] == ["m"]


def test_short_intervals_are_sampled_down_to_one_point_a_second_the_latest_tick_winning() -> None:
    assert step_for(0.25) == 1.0 and step_for(0.3) == pytest.approx(1.2) and step_for(15.0) == 15.0
    history = History(0.25)
    assert history.capacity == MAX_POINTS
    for tick in range(1, 13):  # 3 s of ticks, a little jitter either way
        t = 100.0 + (tick - 1) * 0.25 + (0.02 if tick % 2 else -0.02)
        history.record(snapshot(tick, t, (gpu(0, utilization_ratio=tick / 100),)))
    body = answer(history)
    assert body["ticks"] == [4, 8, 12]
    assert body["gpus"][0]["series"]["utilization"] == [0.04, 0.08, 0.12]
    assert body["gpus"][0]["current"]["utilization"] == 0.12
    assert History(15.0).capacity == 60


def test_the_ring_keeps_the_window_and_answers_only_what_the_page_lacks() -> None:
    history = History(1.0, window_seconds=10)
    for tick in range(1, 26):
        history.record(snapshot(tick, float(tick), (gpu(0, power_watts=float(tick)),)))
    full = answer(history)
    assert full["ticks"] == list(range(16, 26)) and len(full["slots"]) == history.capacity == 10
    assert full["gpus"][0]["series"]["power"] == [float(t) for t in range(16, 26)]
    run = full["run"]
    newer = answer(history, since=23, run=run)
    assert (newer["full"], newer["ticks"], newer["gpus"][0]["series"]["power"]) == (False, [24, 25], [24, 25])
    assert answer(history, since=25, run=run)["slots"] == []  # nothing new
    for since, which in ((10, run), (26, run), (23, "0123456789ab"), (None, run)):
        # behind the window, ahead of it (a restarted collector), another run, a first request
        assert answer(history, since=since, run=which)["full"] is True, (since, which)


def test_a_point_overwritten_by_a_newer_tick_is_sent_again() -> None:
    history = History(0.5)  # two ticks a point
    history.record(snapshot(1, 0.0, (gpu(0),)))
    history.record(snapshot(2, 0.5, (gpu(0),)))
    history.record(snapshot(3, 1.0, (gpu(0, power_watts=1.0),)))
    run = answer(history)["run"]
    history.record(snapshot(4, 1.5, (gpu(0, power_watts=2.0),)))  # same point as tick 3
    newer = answer(history, since=3, run=run)
    assert (newer["slots"], newer["ticks"], newer["gpus"][0]["series"]["power"]) == ([1], [4], [2.0])


def test_gaps_are_nulls_and_a_gpu_that_went_missing_has_no_current_values() -> None:
    history = History(1.0)
    history.record(snapshot(1, 0.0, (gpu(0), gpu(1))))
    history.record(snapshot(2, 3.0, (gpu(0),)))  # two slow ticks skipped; GPU 1 gone
    body = answer(history)
    assert body["slots"] == [0, 1, 2, 3] and body["ticks"] == [1, None, None, 2]
    assert body["times"][1] == pytest.approx(WALL + 1.0, abs=0.01)
    assert body["gpus"][0]["series"]["power"] == [500.0, None, None, 500.0]
    assert body["gpus"][1]["series"]["power"] == [501.0, None, None, None]
    assert body["gpus"][1]["present"] is False and body["gpus"][1]["current"]["power"] is None
    down = History(1.0)
    down.record(snapshot(1, 0.0, (GpuSample(GpuInfo(0, "u", "n"), up=False, error="lost"),)))
    assert dataset(down) is None  # one point: nothing to find yet
    down.record(snapshot(2, 1.0, (GpuSample(GpuInfo(0, "u", "n"), up=False, error="lost"),)))
    data = dataset(down)
    assert data is not None and data.gpus[0].signal("up") == [0.0, 0.0]


# -- bounds --------------------------------------------------------------------------------------------


def worst_tick(tick: int, gpus: int, endpoints: int) -> Snapshot:
    """Every GPU with more error counters rising than are kept, every endpoint failing in many ways."""
    errors = tuple((str(code), tick) for code in range(20))
    samples = tuple(
        gpu(i, xid_errors=errors, health=GpuHealth(ecc_uncorrected_volatile=tick, row_remap_pending=True))
        for i in range(gpus)
    )
    failing = tuple(
        endpoint(f"endpoint-{i:02d}", errors_total=tuple((f"reason{k}", tick) for k in range(12)))
        for i in range(endpoints)
    )
    return snapshot(tick, float(tick), samples, failing)


def test_memory_and_the_answer_are_bounded_whatever_the_node() -> None:
    assert MEMORY_BOUND_BYTES == 5_234_400
    history = History(1.0)
    for tick in range(1, MAX_POINTS + 1):
        history.record(worst_tick(tick, MAX_GPUS + 4, MAX_ENDPOINTS + 3))
    assert history.nbytes() == MEMORY_BOUND_BYTES  # every kept GPU and endpoint at its cap of series
    assert history.left_out == {"gpus": 4, "endpoints": 3}
    assert all(len(track.extra) == MAX_EXTRA_SERIES for track in history.gpus.values())
    body = history.json()
    assert len(body) <= MAX_JSON_BYTES
    assert len(json.loads(body)["gpus"]) == MAX_GPUS
    # once full, recording allocates nothing that stays (traced from a steady state on: the dicts of the
    # latest values that each tick replaces are then already traced ones)
    tracemalloc.start()
    try:
        for tick in range(MAX_POINTS + 1, MAX_POINTS + 11):
            history.record(worst_tick(tick, MAX_GPUS, MAX_ENDPOINTS))
        before = tracemalloc.take_snapshot()
        for tick in range(MAX_POINTS + 11, MAX_POINTS + 311):
            history.record(worst_tick(tick, MAX_GPUS, MAX_ENDPOINTS))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename == live.__file__
    )
    assert abs(grown) < 4096, grown
    assert history.nbytes() == MEMORY_BOUND_BYTES


def test_findings_in_the_answer_are_capped_in_number_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    history = simulate([("healthy", 600)], 3)
    many = [{"rank": i, "pattern": "input-bound", "summary": ["x" * 8000]} for i in range(1, 201)]
    monkeypatch.setattr(findings_module, "findings_json", lambda h: (many, 3.0))
    found = json.loads(history.json())["findings"]
    assert [f["rank"] for f in found] == list(range(1, len(found) + 1))  # the most likely first
    assert len(found) <= live.MAX_FINDINGS
    assert len(json.dumps(found).encode()) <= live.MAX_FINDINGS_BYTES
    assert len(found) == live.MAX_FINDINGS_BYTES // (len(json.dumps(many[0])) + 1) < live.MAX_FINDINGS


def test_a_gpu_or_endpoint_gone_for_the_whole_window_makes_room() -> None:
    history = History(1.0, window_seconds=5)
    names = [f"e{i}" for i in range(MAX_ENDPOINTS)]
    history.record(snapshot(1, 1.0, (), tuple(endpoint(name) for name in names)))
    history.record(snapshot(2, 2.0, (), (endpoint("new"),)))
    assert "new" not in history.endpoints and history.left_out["endpoints"] == 1
    history.record(snapshot(3, 8.0, (), (endpoint("new"),)))  # the first ones left the window
    assert "new" in history.endpoints and len(history.endpoints) == MAX_ENDPOINTS


def test_error_counters_get_a_column_when_they_first_rise_with_the_value_before() -> None:
    history = History(1.0)
    for tick in range(1, 6):
        xid = 0 if tick < 4 else 1
        history.record(snapshot(tick, float(tick), (gpu(0, xid_errors=(("79", xid), ("48", 0))),)))
    data = dataset(history)
    assert data is not None
    assert data.gpus[0].errors == {'tpw_gpu_xid_errors_total{xid="79"}': [None, None, 0.0, 1.0, 1.0]}
    found, _ = findings_json(history)
    assert [f["pattern"] for f in found] == ["gpu-errors"]
    assert found[0]["start"] == pytest.approx(WALL + 4.0) and "+1" in found[0]["summary"][0]
    # a rise at the second tick of a point (0.5 s ticks, 1 s points) is an increase from the point before
    fast = History(0.5)
    for tick in range(1, 9):
        xid = 0 if tick < 6 else 1
        fast.record(snapshot(tick, tick * 0.5, (gpu(0, xid_errors=(("79", xid),)),)))
    data = dataset(fast)
    assert data is not None and data.gpus[0].errors['tpw_gpu_xid_errors_total{xid="79"}'] == [
        None,
        0.0,
        1.0,
        1.0,
    ]
    assert [f["pattern"] for f in findings_json(fast)[0]] == ["gpu-errors"]


# -- diagnose's detectors on the demo's scenarios --------------------------------------------------------

# scenario → what plays before it, and the patterns diagnose must find, ongoing at the end
SCENARIOS: dict[str, tuple[tuple[tuple[str, float], ...], float, set[str]]] = {
    "busy-flat": ((("healthy", 8),), 6, {"busy-but-flat"}),
    "input-bound": ((("healthy", 8),), 5, {"input-bound"}),
    "bandwidth-saturated": ((("launch-bound", 3),), 8, {"bandwidth-bound"}),  # its peak is the window's
    "memory-leak": ((("healthy", 8),), 8, {"memory-leak"}),
    "efficiency-regression": ((("healthy", 8),), 8, {"efficiency-regression"}),
    "batch-drop": ((("healthy", 8),), 11, {"batch-size-drop"}),
    "throttling": ((("healthy", 8),), 11, {"throttling"}),
    "endpoint-down": ((("healthy", 8),), 5, {"endpoint-down"}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_diagnose_finds_each_scenarios_pattern_in_the_history(scenario: str) -> None:
    before, seconds, expected = SCENARIOS[scenario]
    start = sum(s for _, s in before)
    history = simulate([*before, (scenario, seconds), ("healthy", 600)], start + seconds - 0.5)
    found, min_duration = findings_json(history)
    assert min_duration == 3.0  # 3 points of 1 s: the window is short
    ongoing = {f["pattern"] for f in found if f["ongoing"]}
    assert expected <= ongoing, (scenario, [(f["pattern"], f["ongoing"], f["summary"]) for f in found])
    for finding in found:
        if finding["pattern"] in expected:
            assert finding["start"] >= WALL + start - 1.0, finding  # not before the scenario began
            assert finding["summary"] and finding["next_check"] and finding["runbook"]


def test_healthy_has_no_finding_and_the_json_carries_the_findings() -> None:
    history = simulate([("healthy", 600)], 40)
    assert findings_json(history)[0] == []
    failing = simulate([("healthy", 8), ("input-bound", 600)], 14)
    body = answer(failing)
    assert [f["pattern"] for f in body["findings"]] == ["input-bound"]
    assert body["findings_tick"] == body["tick"] == 28
    (finding,) = body["findings"]
    assert finding["endpoint"] == "demo-vllm" and finding["gpus"] == ["0", "1"] and finding["ongoing"]


def test_findings_are_computed_on_request_at_most_every_two_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks: list[Snapshot] = []
    history = simulate([("healthy", 600)], 5, on_tick=ticks.append)
    computed: list[int] = []
    real = findings_module.findings_json

    def counting(h: History) -> tuple[list[dict[str, Any]], float]:
        computed.append(h.tick)
        return real(h)

    monkeypatch.setattr(findings_module, "findings_json", counting)
    assert computed == []  # recording computes nothing
    assert history.findings(now=100.0)[1] == 10 and computed == [10]
    assert history.findings(now=100.1)[1] == 10 and computed == [10]  # the same tick
    history.record(replace(ticks[-1], tick=11, monotonic_time=5.5))
    assert history.findings(now=101.0)[1] == 10 and computed == [10]  # a new tick, but too soon
    assert history.findings(now=102.0)[1] == 11 and computed == [10, 11]


def test_the_json_is_valid_with_missing_values_everywhere() -> None:
    history = History(1.0)
    bare = GpuSample(GpuInfo(0, "u", "n"))  # up, nothing read
    history.record(replace(snapshot(1, 0.0, (bare,), (endpoint(up=False, values=()),)), derived=None))
    body = answer(history)
    assert body["gpus"][0]["current"] == {name: None for name in (*live.PAGE_GPU_SERIES, "bound")}
    assert body["endpoints"][0]["current"]["up"] is False
    assert all(v is None or math.isfinite(v) for v in body["gpus"][0]["series"]["power"])
