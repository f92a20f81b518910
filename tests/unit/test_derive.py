"""Derived values over the aligned window: rates, energy over the same ticks, resets, gaps, absent values."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.derive.window import Deriver, Frame, Site, counter_increase, derive, field_increase, make_frame
from exporter.model import (
    Derived,
    DerivedEndpoint,
    DerivedGpu,
    EndpointSample,
    EndpointValue,
    GpuInfo,
    GpuSample,
    Profiling,
    Snapshot,
)

PEAK = 3.35e12


def derive_snapshots(snapshots: Sequence[Snapshot]) -> Derived:
    """`derive` over plain snapshots (oldest first, at least one): what the Deriver computes for them."""
    frames: list[Frame] = []
    for snapshot in snapshots:
        frames.append(make_frame(snapshot, frames[-1] if frames else None))
    return derive(frames[0].mark, frames[-1])


def gpu(
    index: int,
    t: float,
    energy: float | None,
    utilization: float | None = 0.9,
    uuid: str | None = None,
    up: bool = True,
    dram: float | None = None,
) -> GpuSample:
    info = GpuInfo(
        index=index,
        uuid=uuid or f"GPU-{index}",
        name="H100",
        dram_peak_bandwidth_bytes_per_second=PEAK,
        profiling_supported=dram is not None,
    )
    if not up:
        return GpuSample(info=info, up=False, error="GPU is lost")
    profiling = None
    if dram is not None:
        profiling = Profiling(
            window_seconds=1.0,
            ratios={
                "graphics_active": 0.9,
                "sm_active": 0.5,
                "tensor_active": 0.1,
                "dram_bandwidth_utilization": dram,
            },
        )
    return GpuSample(
        info=info,
        timestamp=t,
        energy_joules=energy,
        energy_timestamp=t,
        utilization_ratio=utilization,
        profiling=profiling,
    )


def endpoint(
    t: float,
    name: str = "llm",
    generated: float | None = None,
    prompt: float | None = None,
    requests: dict[str, float] | None = None,
    model: str = "llama",
    gpus: Sequence[int] = (0,),
    unit: str = "tokens",
    work: float | None = None,
    up: bool = True,
    extra: Sequence[EndpointValue] = (),
    shares: Sequence[float] = (),
    attribution: str = "config",
) -> EndpointSample:
    values: list[EndpointValue] = list(extra)
    if generated is not None:
        values.append(EndpointValue("generation_tokens_total", model, generated))
    if prompt is not None:
        values.append(EndpointValue("prompt_tokens_total", model, prompt))
    if work is not None:
        values.append(EndpointValue("work_units_total", model, work))
    for outcome, value in (requests or {}).items():
        values.append(EndpointValue("requests_total", model, value, outcome))
    values.append(EndpointValue("requests_running", model, 3.0))
    return EndpointSample(
        name=name,
        engine="vllm",
        url="http://127.0.0.1:8000/metrics",
        unit=unit,
        up=up,
        error=None if up else "connection refused",
        timestamp=t + 0.003 if up else 0.0,
        values=tuple(values) if up else (),
        gpus=tuple(gpus),
        gpu_shares=tuple(shares),
        attribution=attribution,
    )


def snap(tick: int, gpus: Sequence[GpuSample], endpoints: Sequence[EndpointSample] = ()) -> Snapshot:
    return Snapshot(
        tick=tick,
        wall_time=1.8e9 + tick,
        monotonic_time=float(tick),
        duration_seconds=0.0,
        gpus=tuple(gpus),
        endpoints=tuple(endpoints),
    )


def steady(
    ticks: int, tokens_per_second: float = 1000.0, watts: float = 400.0, requests_per_second: float = 2.0
) -> list[Snapshot]:
    return [
        snap(
            t,
            [gpu(0, t, energy=5e6 + watts * t)],
            [
                endpoint(
                    t,
                    generated=1e6 + tokens_per_second * t,
                    prompt=2e6 + 3 * tokens_per_second * t,
                    requests={"success": 100 + requests_per_second * t, "failure": 7.0},
                )
            ],
        )
        for t in range(ticks)
    ]


def run(deriver: Deriver, snapshots: Sequence[Snapshot]) -> Derived:
    derived = None
    for snapshot in snapshots:
        derived = deriver(snapshot).derived
    assert derived is not None
    return derived


def only_endpoint(derived: Derived) -> DerivedEndpoint:
    (one,) = derived.endpoints
    return one


def only_gpu(derived: Derived) -> DerivedGpu:
    (one,) = derived.gpus
    return one


def test_counter_increase_is_prometheus_like() -> None:
    assert counter_increase(10, 25) == 15
    assert counter_increase(10, 10) == 0
    assert counter_increase(100, 30) == 30  # reset: the new value is the increase since


def test_steady_load_gives_exact_rates_and_efficiency() -> None:
    derived = run(Deriver(window=10), steady(30))
    assert derived.window_seconds == 10
    e = only_endpoint(derived)
    assert e.window_seconds == pytest.approx(10)
    assert e.generation_tokens_per_second == pytest.approx(1000)
    assert e.prompt_tokens_per_second == pytest.approx(3000)
    assert e.requests_per_second == pytest.approx(2)  # success + failure outcomes
    assert e.power_watts == pytest.approx(400)
    assert e.energy_joules == pytest.approx(4000)
    assert e.tokens_per_joule == pytest.approx(2.5)
    assert e.joules_per_token == pytest.approx(0.4)
    assert e.joules_per_request == pytest.approx(200)
    assert e.gpu_utilization_ratio == pytest.approx(0.9)
    assert e.tokens_per_busy_gpu_second == pytest.approx(1000 / 0.9)
    assert (e.model, e.unit, e.gpus) == ("llama", "tokens", (0,))
    assert e.work_units_per_second is None and e.energy_cost_per_million_tokens is None
    g = only_gpu(derived)
    assert g.power_watts == pytest.approx(400) and g.energy_joules == pytest.approx(4000)


def test_window_grows_to_the_configured_length_then_slides() -> None:
    deriver = Deriver(window=5)
    spans = [deriver(snapshot).derived.window_seconds for snapshot in steady(12)]  # type: ignore[union-attr]
    assert spans == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5]
    assert len(deriver.marks) == 6
    # The first tick has no step: nothing per window yet (absent, not 0).
    first = Deriver(window=5)(steady(1)[0]).derived
    assert first is not None and first.endpoints == ()
    assert first.gpus[0].power_watts is None and first.gpus[0].energy_joules is None


def test_tolerance_absorbs_tick_jitter() -> None:
    """Ticks land a few ms late every other second: with half an interval of tolerance the window stays
    at 10 s instead of flapping between 9 s and 10 s."""
    jittered = [
        Snapshot(
            tick=t,
            wall_time=0,
            monotonic_time=t + (0.004 if t % 2 else 0.0),
            duration_seconds=0,
            gpus=(gpu(0, t, energy=400.0 * t),),
        )
        for t in range(20)
    ]

    def spans(deriver: Deriver) -> list[float]:
        return [deriver(s).derived.window_seconds for s in jittered][-6:]  # type: ignore[union-attr]

    assert min(spans(Deriver(window=10))) < 9.5
    assert all(abs(span - 10) < 0.01 for span in spans(Deriver(window=10, tolerance=0.5)))


def test_counter_reset_inside_the_window_is_handled_like_rate() -> None:
    tokens = [0, 100, 200, 300, 50, 150, 250]  # engine restarted between t=3 and t=4
    snapshots = [
        snap(t, [gpu(0, t, energy=1000.0 * t)], [endpoint(t, generated=tokens[t])])
        for t in range(len(tokens))
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    expected = 100 + 100 + 100 + 50 + 100 + 100  # the value after a reset counts as the increase
    assert e.generation_tokens_per_second == pytest.approx(expected / 6)
    assert e.tokens_per_joule == pytest.approx(expected / 6000)


def test_energy_counter_reset_is_handled_too() -> None:
    energy = [9000.0, 9400.0, 9800.0, 300.0, 700.0]  # driver reloaded: counter restarts
    snapshots = [snap(t, [gpu(0, t, energy=energy[t])], [endpoint(t, generated=10.0 * t)]) for t in range(5)]
    derived = run(Deriver(window=100), snapshots)
    assert only_gpu(derived).energy_joules == pytest.approx(400 + 400 + 300 + 400)
    assert only_endpoint(derived).energy_joules == pytest.approx(1500)


def test_no_tokens_yet_gives_zero_tokens_per_joule_and_no_joules_per_token() -> None:
    snapshots = [
        snap(t, [gpu(0, t, energy=120.0 * t)], [endpoint(t, generated=0.0, requests={"success": 0.0})])
        for t in range(5)
    ]
    e = only_endpoint(run(Deriver(window=10, site=Site(electricity_price_per_kwh=0.2)), snapshots))
    assert e.generation_tokens_per_second == 0
    assert e.tokens_per_joule == 0
    assert e.joules_per_token is None and e.joules_per_request is None
    assert e.energy_cost_per_million_tokens is None and e.co2_grams_per_million_tokens is None
    assert e.tokens_per_busy_gpu_second == 0


def test_no_energy_delta_leaves_every_energy_value_absent() -> None:
    snapshots = [snap(t, [gpu(0, t, energy=5000.0)], [endpoint(t, generated=10.0 * t)]) for t in range(5)]
    derived = run(Deriver(window=10, site=Site(electricity_price_per_kwh=0.2)), snapshots)
    e = only_endpoint(derived)
    assert e.generation_tokens_per_second == pytest.approx(10)
    for name in ("power_watts", "energy_joules", "tokens_per_joule", "joules_per_token"):
        assert getattr(e, name) is None, name
    assert e.energy_cost_per_million_tokens is None
    assert only_gpu(derived).power_watts is None


def test_endpoint_without_energy_readings_keeps_its_rates() -> None:
    snapshots = [snap(t, [gpu(0, t, energy=None)], [endpoint(t, generated=10.0 * t)]) for t in range(5)]
    e = only_endpoint(run(Deriver(window=10), snapshots))
    assert e.generation_tokens_per_second == pytest.approx(10)
    assert e.tokens_per_joule is None and e.power_watts is None


def test_endpoint_down_inside_the_window_uses_only_steps_where_it_was_up() -> None:
    # Up 0..3, down at 4 and 5, up from 6 with the same counters continuing (a scrape outage).
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=500.0 * t)],
            [endpoint(t, generated=100.0 * t, up=t not in (4, 5))],
        )
        for t in range(10)
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.window_seconds == pytest.approx(6)  # steps 0→1, 1→2, 2→3, 6→7, 7→8, 8→9
    assert e.generation_tokens_per_second == pytest.approx(100)
    assert e.energy_joules == pytest.approx(3000)  # energy over the same six steps only
    assert e.tokens_per_joule == pytest.approx(0.2)


def test_endpoint_down_now_keeps_its_window_values_and_model() -> None:
    snapshots = [
        snap(t, [gpu(0, t, energy=500.0 * t)], [endpoint(t, generated=100.0 * t, up=t < 6)]) for t in range(8)
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.model == "llama" and e.window_seconds == pytest.approx(5)
    # Once the outage has slid out of the window, nothing is left: absent.
    later = run(
        Deriver(window=3),
        snapshots + [snap(t, [gpu(0, t, energy=500.0 * t)], [endpoint(t, up=False)]) for t in range(8, 12)],
    )
    assert later.endpoints == ()


def test_gpu_gap_restricts_energy_values_to_steps_with_all_gpus() -> None:
    # GPU 1 is lost at t=3..4; the endpoint runs on both GPUs.
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=300.0 * t), gpu(1, t, energy=500.0 * t, up=t not in (3, 4))],
            [endpoint(t, generated=80.0 * t if t < 5 else 400 + 160.0 * (t - 5), gpus=(0, 1))],
        )
        for t in range(9)
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.generation_tokens_per_second == pytest.approx((5 * 80 + 3 * 160) / 8)  # rates: every step
    # Energy steps: 0→1, 1→2, 5→6, 6→7, 7→8 (steps touching t=3 or 4 lack GPU 1).
    assert e.energy_joules == pytest.approx(5 * 800)
    assert e.power_watts == pytest.approx(800)
    assert e.tokens_per_joule == pytest.approx((2 * 80 + 3 * 160) / 4000)


def test_a_replaced_gpu_is_not_a_counter_step() -> None:
    snapshots = [
        snap(
            t,
            [
                gpu(
                    0,
                    t,
                    energy=(300.0 * t) if t < 3 else 7.0 + 300 * (t - 3),
                    uuid="GPU-a" if t < 3 else "GPU-b",
                )
            ],
        )
        for t in range(6)
    ]
    g = only_gpu(run(Deriver(window=100), snapshots))
    # The step across the swap (2→3) is no step at all, and the GPU's window values are those of the
    # physical GPU now at index 0 (steps 3→4, 4→5): the old one's energy is not this GPU's.
    assert g.energy_joules == pytest.approx(2 * 300)
    assert g.power_watts == pytest.approx(300)


def test_a_shared_gpu_is_split_by_shares_so_endpoint_energies_add_up_to_the_gpus() -> None:
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=200.0 * t, utilization=0.5), gpu(1, t, energy=600.0 * t, utilization=1.0)],
            [
                endpoint(t, name="a", generated=10.0 * t, gpus=(0, 1), shares=(1.0, 0.25)),
                endpoint(t, name="b", generated=30.0 * t, gpus=(1,), shares=(0.75,), model="mistral"),
            ],
        )
        for t in range(6)
    ]
    derived = run(Deriver(window=100), snapshots)
    a, b = derived.endpoints
    assert a.power_watts == pytest.approx(200 + 150) and b.power_watts == pytest.approx(450)
    assert a.power_watts + b.power_watts == pytest.approx(sum(g.power_watts or 0 for g in derived.gpus))
    assert a.tokens_per_joule == pytest.approx(10 / 350) and b.tokens_per_joule == pytest.approx(30 / 450)
    assert a.gpu_utilization_ratio == pytest.approx(0.75)
    assert a.tokens_per_busy_gpu_second == pytest.approx(10 / 1.5)
    assert b.model == "mistral"


def test_without_shares_each_attributed_gpu_counts_whole() -> None:
    snapshots = [
        snap(t, [gpu(0, t, energy=200.0 * t)], [endpoint(t, generated=10.0 * t, gpus=(0,))]) for t in range(4)
    ]
    assert only_endpoint(run(Deriver(window=100), snapshots)).power_watts == pytest.approx(200)


def test_pending_attribution_withholds_energy_values_but_keeps_rates() -> None:
    def at(t: int) -> Snapshot:
        pending = t < 3
        return snap(
            t,
            [gpu(0, t, energy=200.0 * t), gpu(1, t, energy=100.0 * t)],
            [
                endpoint(
                    t,
                    generated=10.0 * t,
                    gpus=() if pending else (1,),
                    shares=() if pending else (1.0,),
                    attribution="pending" if pending else "auto",
                )
            ],
        )

    deriver = Deriver(window=100)
    early = run(deriver, [at(t) for t in range(3)])
    assert only_endpoint(early).generation_tokens_per_second == pytest.approx(10)
    assert only_endpoint(early).tokens_per_joule is None and only_endpoint(early).energy_joules is None
    later = run(deriver, [at(t) for t in range(3, 6)])
    assert only_endpoint(later).tokens_per_joule == pytest.approx(10 / 100)  # GPU 1 alone, never GPU 0


def test_models_are_summed_and_labelled() -> None:
    def two_models(t: int, with_new: bool = False) -> EndpointSample:
        extra = [EndpointValue("generation_tokens_total", "mistral", 5.0 * t)]
        if with_new:
            extra.append(EndpointValue("generation_tokens_total", "phi", 1e6))  # appears mid-window
        return endpoint(t, generated=10.0 * t, extra=extra)

    snapshots = [snap(t, [gpu(0, t, energy=100.0 * t)], [two_models(t, with_new=t >= 3)]) for t in range(6)]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.model == "multiple"
    # A series counts only in steps where it exists at both ends (as in Prometheus): the new model's
    # first value is not an increase; it adds 0 afterwards.
    assert e.generation_tokens_per_second == pytest.approx(15)

    no_model = [
        snap(t, [gpu(0, t, energy=100.0 * t)], [endpoint(t, generated=10.0 * t, model="")]) for t in range(3)
    ]
    assert only_endpoint(run(Deriver(window=100), no_model)).model == ""


def test_field_increase_ignores_series_absent_at_one_end() -> None:
    before = endpoint(0, requests={"success": 10})
    after = endpoint(1, requests={"success": 15, "aborted": 4})
    assert field_increase(before, after, "requests_total") == 5
    assert field_increase(before, after, "generation_tokens_total") is None


def test_non_token_endpoint_reports_work_units() -> None:
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=250.0 * t)],
            [
                endpoint(
                    t, name="sdxl", unit="images", work=2.0 * t, requests={"success": 2.0 * t}, model="sdxl"
                )
            ],
        )
        for t in range(6)
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.unit == "images"
    assert e.work_units_per_second == pytest.approx(2)
    assert e.work_units_per_joule == pytest.approx(2 / 250)
    assert e.joules_per_work_unit == pytest.approx(125)
    assert e.joules_per_request == pytest.approx(125)
    assert e.generation_tokens_per_second is None and e.tokens_per_joule is None
    assert e.tokens_per_busy_gpu_second is None


def test_requests_unit_falls_back_to_the_request_counter() -> None:
    snapshots = [
        snap(t, [gpu(0, t, energy=100.0 * t)], [endpoint(t, unit="requests", requests={"success": 4.0 * t})])
        for t in range(4)
    ]
    e = only_endpoint(run(Deriver(window=100), snapshots))
    assert e.work_units_per_second == pytest.approx(4) and e.joules_per_work_unit == pytest.approx(25)


def test_cost_and_carbon_per_million_tokens() -> None:
    site = Site(electricity_price_per_kwh=0.25, currency="EUR", pue=1.3, carbon_intensity_grams_per_kwh=400)
    derived = run(Deriver(window=10, site=site), steady(20, tokens_per_second=1000, watts=400))
    e = only_endpoint(derived)
    kwh_per_million = 0.4 * 1e6 * 1.3 / 3.6e6  # J/token × 1e6 × PUE → kWh
    assert e.energy_cost_per_million_tokens == pytest.approx(kwh_per_million * 0.25)
    assert e.co2_grams_per_million_tokens == pytest.approx(kwh_per_million * 400)
    assert derived.currency == "EUR"


def test_idle_energy_ratio_counts_energy_spent_while_nothing_was_generated() -> None:
    # Tokens flow in steps 0→1 .. 3→4 and stop afterwards; the GPU draws 500 W busy, 100 W idle.
    energy = [0.0]
    for t in range(1, 10):
        energy.append(energy[-1] + (500.0 if t <= 4 else 100.0))
    tokens = [min(t, 4) * 50.0 for t in range(10)]
    snapshots = [
        snap(t, [gpu(0, t, energy=energy[t]), gpu(1, t, energy=70.0 * t)], [endpoint(t, generated=tokens[t])])
        for t in range(10)
    ]
    derived = run(Deriver(window=100), snapshots)
    g0, g1 = derived.gpus
    assert g0.idle_energy_ratio == pytest.approx(500 / 2500)
    assert g1.idle_energy_ratio is None  # not attributed to any endpoint


def test_dram_bandwidth_is_ratio_times_peak_of_the_current_window() -> None:
    snapshots = [snap(t, [gpu(0, t, energy=100.0 * t, dram=0.2 if t < 4 else 0.5)]) for t in range(5)]
    g = only_gpu(run(Deriver(window=100), snapshots))
    assert g.dram_bandwidth_bytes_per_second == pytest.approx(0.5 * PEAK)
    assert g.evidence["dram"] == pytest.approx((0.2 * 3 + 0.5) / 4)  # window mean of ticks 1..4


def test_gpu_down_now_has_no_derived_values() -> None:
    snapshots = [snap(t, [gpu(0, t, energy=100.0 * t, up=t < 4, dram=0.5)]) for t in range(5)]
    assert run(Deriver(window=100), snapshots).gpus == ()


def test_time_going_backwards_starts_a_new_window() -> None:
    deriver = Deriver(window=100)
    run(deriver, steady(10))
    derived = run(deriver, steady(3))
    assert derived.window_seconds == 2 and len(deriver.marks) == 3


def test_deriver_rejects_a_non_positive_window() -> None:
    with pytest.raises(ValueError, match="window"):
        Deriver(window=0)


def test_derive_snapshots_matches_the_deriver() -> None:
    snapshots = steady(8)
    assert derive_snapshots(snapshots) == run(Deriver(window=100), snapshots)


# --- property: never NaN/Inf/negative, and tokens per joule equals an independent oracle -----------------

tick_state = st.tuples(
    st.booleans(),  # endpoint up
    st.booleans(),  # gpu up
    st.integers(0, 500),  # tokens added this tick
    st.booleans(),  # engine restart (token counter reset)
    st.integers(0, 900),  # joules added this tick
)


def oracle_tokens_per_joule(states: list[tuple[bool, bool, int, bool, int]]) -> tuple[float, float]:
    """Straightforward re-implementation: walk the ticks, keep (tokens, energy) counters, sum valid steps."""
    tokens_counter = energy_counter = 0.0
    readings: list[tuple[float | None, float | None]] = []
    for endpoint_up, gpu_up, tokens, restart, joules in states:
        tokens_counter = tokens if restart else tokens_counter + tokens
        energy_counter += joules
        readings.append((tokens_counter if endpoint_up else None, energy_counter if gpu_up else None))
    total_tokens = total_energy = 0.0
    for (t0, e0), (t1, e1) in itertools.pairwise(readings):
        if None in (t0, e0, t1, e1):
            continue
        assert t0 is not None and t1 is not None and e0 is not None and e1 is not None
        total_tokens += t1 - t0 if t1 >= t0 else t1
        total_energy += e1 - e0
    return total_tokens, total_energy


@settings(max_examples=300, deadline=None)
@given(st.lists(tick_state, min_size=1, max_size=25))
def test_values_are_finite_and_match_an_oracle(states: list[tuple[bool, bool, int, bool, int]]) -> None:
    snapshots = []
    tokens_counter = energy_counter = 0.0
    for t, (endpoint_up, gpu_up, tokens, restart, joules) in enumerate(states):
        tokens_counter = tokens if restart else tokens_counter + tokens
        energy_counter += joules
        snapshots.append(
            snap(
                t,
                [gpu(0, t, energy=energy_counter, up=gpu_up)],
                [
                    endpoint(
                        t, generated=tokens_counter, requests={"success": tokens_counter / 10}, up=endpoint_up
                    )
                ],
            )
        )
    derived = run(Deriver(window=1000, site=Site(0.1, "USD", 1.2, 300)), snapshots)
    for item in (*derived.endpoints, *derived.gpus):
        for name in item.__dataclass_fields__:
            value = getattr(item, name)
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0, (name, value)
    tokens, energy = oracle_tokens_per_joule(states)
    e = derived.endpoints[0] if derived.endpoints else None
    if energy > 0 and e is not None and e.tokens_per_joule is not None:
        assert e.tokens_per_joule == pytest.approx(tokens / energy)
    else:
        assert e is None or e.tokens_per_joule is None
        assert energy == 0


def _close(a: object, b: object) -> bool:
    """Dataclass values equal, floats to 1e-9 relative (running totals subtract large numbers)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_close(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


@settings(max_examples=150, deadline=None)
@given(st.lists(tick_state, min_size=2, max_size=40), st.integers(1, 12))
def test_sliding_window_equals_a_fresh_window(
    states: list[tuple[bool, bool, int, bool, int]], window: int
) -> None:
    """After frames slid out, the Deriver's running totals give what the window's snapshots give alone."""
    snapshots = []
    tokens_counter = energy_counter = 1e9  # large counters: the totals must not lose precision
    for t, (endpoint_up, gpu_up, tokens, restart, joules) in enumerate(states):
        tokens_counter = tokens if restart else tokens_counter + tokens
        energy_counter += joules
        ratios = {"graphics_active": 0.5 + (t % 3) / 10, "sm_active": 0.2, "tensor_active": 0.05 * (t % 4)}
        ratios["dram_bandwidth_utilization"] = 0.45
        sample = gpu(0, t, energy=energy_counter, up=gpu_up, utilization=(t % 5) / 4)
        if gpu_up:
            sample = dataclasses.replace(sample, profiling=Profiling(window_seconds=1.0, ratios=ratios))
        snapshots.append(
            snap(
                t,
                [sample, gpu(1, t, energy=5e8 + 100.0 * t)],
                [
                    endpoint(
                        t, generated=tokens_counter, requests={"success": t // 3}, up=endpoint_up, gpus=(0, 1)
                    ),
                    endpoint(t, name="img", unit="images", work=float(t // 2), gpus=(1,)),
                ],
            )
        )
    deriver = Deriver(window=window)
    derived = run(deriver, snapshots)
    start = len(snapshots) - len(deriver.marks)
    fresh = derive_snapshots(snapshots[start:])
    # (the energy counters run since start by design: not a window value)
    derived, fresh = (dataclasses.replace(d, energy_totals=()) for d in (derived, fresh))
    assert _close(derived, fresh), (derived, fresh)


def test_long_windows_keep_a_bounded_history() -> None:
    """A one-hour window at 0.5 s ticks keeps ≤ max_marks + 2 marks and still covers about an hour."""
    deriver = Deriver(window=3600, tolerance=0.25)
    deriver.max_marks = 100
    derived = None
    for k in range(9000):
        t = k * 0.5
        snapshot = Snapshot(
            tick=k,
            wall_time=0,
            monotonic_time=t,
            duration_seconds=0,
            gpus=(gpu(0, t, energy=400.0 * t),),
            endpoints=(endpoint(t, generated=1000.0 * t),),
        )
        derived = deriver(snapshot).derived
    assert derived is not None
    assert len(deriver.marks) <= 102
    assert 3600 - 36 - 0.5 <= derived.window_seconds <= 3600.25
    e = only_endpoint(derived)
    assert e.window_seconds == pytest.approx(derived.window_seconds)
    assert e.tokens_per_joule == pytest.approx(2.5)
    assert e.generation_tokens_per_second == pytest.approx(1000)


def test_endpoint_missing_from_one_snapshot_keeps_its_series() -> None:
    """The endpoints source timed out at t=5 (no endpoint samples): values stay, from the other steps."""
    snapshots = [
        snap(t, [gpu(0, t, energy=300.0 * t)], [] if t == 5 else [endpoint(t, generated=60.0 * t)])
        for t in range(8)
    ]
    deriver = Deriver(window=100)
    seen = [deriver(snapshot).derived for snapshot in snapshots]
    at_gap = seen[5]
    assert at_gap is not None and only_endpoint(at_gap).tokens_per_joule == pytest.approx(0.2)
    e = only_endpoint(seen[-1])  # type: ignore[arg-type]
    assert e.window_seconds == pytest.approx(5)  # steps 0→1 … 3→4 and 6→7; 4→5 and 5→6 have no sample
    assert e.generation_tokens_per_second == pytest.approx(60)


def test_tokens_per_busy_gpu_second_falls_when_batching_breaks_while_utilization_stays_high() -> None:
    """Batching breaks at t=20: NVML utilization stays at 0.95, throughput drops 8×; the divergence shows."""
    tokens = [0.0]
    for t in range(1, 40):
        tokens.append(tokens[-1] + (8000.0 if t <= 20 else 1000.0))
    snapshots = [
        snap(t, [gpu(0, t, energy=600.0 * t, utilization=0.95)], [endpoint(t, generated=tokens[t])])
        for t in range(40)
    ]
    deriver = Deriver(window=10)
    seen = [deriver(snapshot).derived for snapshot in snapshots]
    before, after = only_endpoint(seen[20]), only_endpoint(seen[39])  # type: ignore[arg-type]
    assert before.gpu_utilization_ratio == pytest.approx(0.95)
    assert after.gpu_utilization_ratio == pytest.approx(0.95)
    assert before.tokens_per_busy_gpu_second == pytest.approx(8000 / 0.95)
    assert after.tokens_per_busy_gpu_second == pytest.approx(1000 / 0.95)


# ---------------------------------------------------------------------------------------------------------
# The endpoint energy counter (tpw_endpoint_energy_joules_total)


def _totals(derived: Derived) -> dict[str, tuple[str, float]]:
    return {total.name: (total.model, total.joules) for total in derived.energy_totals}


def test_energy_counter_sums_each_endpoints_share_since_start_beyond_the_window() -> None:
    """Shared GPU 1 split 0.25 / 0.75: the counters add up to the GPUs' energy, over every step so far."""
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=1000.0 + 300.0 * t), gpu(1, t, energy=2000.0 + 200.0 * t)],
            [
                endpoint(t, name="a", generated=10.0 * t, gpus=(0, 1), shares=(1.0, 0.25)),
                endpoint(t, name="b", generated=30.0 * t, gpus=(1,), shares=(0.75,), model="mistral"),
            ],
        )
        for t in range(12)
    ]
    derived = run(Deriver(window=3.0), snapshots)
    totals = _totals(derived)
    assert totals["a"] == ("llama", pytest.approx(11 * (300.0 + 0.25 * 200.0)))  # 11 steps
    assert totals["b"] == ("mistral", pytest.approx(11 * 0.75 * 200.0))
    assert totals["a"][1] + totals["b"][1] == pytest.approx(11 * 500.0)


def test_energy_counter_keeps_counting_while_the_endpoint_is_down_and_skips_steps_without_energy() -> None:
    """Down page: its GPU's energy still counts (the engine's counters run on); GPU down: no step added."""
    states = [(True, True)] * 3 + [(False, True)] * 2 + [(True, True)] * 2 + [(True, False)] + [(True, True)]
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=5e8 + 100.0 * t, up=gpu_up)],
            [endpoint(t, generated=7.0 * t, up=endpoint_up)],
        )
        for t, (endpoint_up, gpu_up) in enumerate(states)
    ]
    derived = run(Deriver(window=60.0), snapshots)
    # 8 steps; the two around the GPU's down tick (7) have no energy step: 6 steps of 100 J
    assert _totals(derived)["llm"][1] == pytest.approx(600.0)


def test_energy_counter_starts_at_zero_once_gpus_are_known_and_is_absent_before() -> None:
    pending = snap(0, [gpu(0, 0, energy=100.0)], [endpoint(0, gpus=(), attribution="pending")])
    first = snap(1, [gpu(0, 1, energy=200.0)], [endpoint(1, generated=5.0)])
    second = snap(2, [gpu(0, 2, energy=350.0)], [endpoint(2, generated=9.0)])
    deriver = Deriver(window=30.0)
    assert run(deriver, [pending]).energy_totals == ()
    assert _totals(run(deriver, [first])) == {"llm": ("llama", 0.0)}  # a step, but no GPUs known before
    assert _totals(run(deriver, [second])) == {"llm": ("llama", 150.0)}


# --- hostile values that reach the stage anyway (the source leaves them out: exporter.sources.page) ------

hostile_value = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -3.0, 1e308, 2.0**60, 0.0]),
    st.floats(0, 1e6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hostile_value, hostile_value, hostile_value), min_size=2, max_size=12))
def test_hostile_counter_values_never_make_a_derived_value_non_finite(
    ticks: list[tuple[float, float, float]],
) -> None:
    snapshots = [
        snap(
            t,
            [gpu(0, t, energy=1e6 + 400.0 * t)],
            [endpoint(t, generated=generated, prompt=prompt, requests={"success": requests})],
        )
        for t, (generated, prompt, requests) in enumerate(ticks)
    ]
    derived = run(Deriver(window=1000, site=Site(0.1, "USD", 1.2, 300)), snapshots)
    for item in (*derived.endpoints, *derived.gpus, *derived.energy_totals):
        for name in item.__dataclass_fields__:
            value = getattr(item, name)
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0, (name, value)


@pytest.mark.parametrize("broken", [math.inf, math.nan, -3.0, 1e300, 2.0**60])
def test_a_broken_token_reading_is_no_step_never_a_tiny_joules_per_token(broken: float) -> None:
    """Tokens 10, 20, broken, 40 at 400 W: only the step 10 → 20 counts; the two around the broken reading
    do not (a huge one would make joules per token ~0, a negative one a reset with a negative increase)."""
    tokens = [10.0, 20.0, broken, 40.0]
    snapshots = [
        snap(t, [gpu(0, t, energy=1e6 + 400.0 * t)], [endpoint(t, generated=value)])
        for t, value in enumerate(tokens)
    ]
    derived = only_endpoint(run(Deriver(window=1000), snapshots))
    assert derived.joules_per_token == pytest.approx(40.0)
    assert derived.tokens_per_joule == pytest.approx(1 / 40)
    assert derived.generation_tokens_per_second == pytest.approx(10.0)
