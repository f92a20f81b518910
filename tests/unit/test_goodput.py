"""Goodput per joule and SLO attainment over synthetic windows (exporter.derive.goodput through the Deriver):
exact where the threshold is one of the engine's bucket bounds, bracketed by the bucket's bounds otherwise,
absent whenever it cannot be known."""

from __future__ import annotations

import bisect
import dataclasses
import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ConfigError, load_config
from exporter.derive.goodput import slo_step
from exporter.derive.window import Deriver
from exporter.histograms import KINDS, rebucket
from exporter.model import (
    Derived,
    DerivedEndpoint,
    EndpointHistogram,
    EndpointSample,
    EndpointValue,
    GpuInfo,
    GpuSample,
    Slo,
    Snapshot,
)
from exporter.node import build_deriver
from exporter.render.derived import derived_families

BOUNDS = (0.1, 0.5, 1.0)  # the engine's TTFT bounds in these windows
TPOT_BOUNDS = (0.02, 0.05)


def histogram(
    kind: str, bounds: Sequence[float], observations: Sequence[float], model: str = "m"
) -> EndpointHistogram:
    """An engine's cumulative histogram of these observations."""
    ordered = sorted(observations)
    counts = tuple(bisect.bisect_right(ordered, bound) for bound in bounds)
    return EndpointHistogram(
        kind, model, tuple(bounds), counts, len(ordered), rebucket(bounds, counts, KINDS[kind].bounds)
    )


def tick(
    t: int,
    ttft: Sequence[float] | None,
    tpot: Sequence[float] | None = None,
    energy: float | None = None,
    tokens: float | None = None,
    up: bool = True,
) -> Snapshot:
    """Tick t (seconds) with everything observed so far: 100 J and 1000 tokens a second by default."""
    hists = []
    if ttft is not None:
        hists.append(histogram("ttft", BOUNDS, ttft))
    if tpot is not None:
        hists.append(histogram("tpot", TPOT_BOUNDS, tpot))
    gpu = GpuSample(
        info=GpuInfo(index=0, uuid="GPU-0", name="H100"),
        timestamp=float(t),
        energy_joules=100.0 * t if energy is None else energy,
        energy_timestamp=float(t),
        utilization_ratio=0.9,
    )
    endpoint = EndpointSample(
        name="llm",
        engine="vllm",
        url="http://x/metrics",
        up=up,
        timestamp=float(t),
        values=(EndpointValue("generation_tokens_total", "m", 1000.0 * t if tokens is None else tokens),)
        if up
        else (),
        histograms=tuple(hists) if up else (),
        gpus=(0,),
    )
    return Snapshot(
        tick=t,
        wall_time=1.8e9 + t,
        monotonic_time=float(t),
        duration_seconds=0.0,
        gpus=(gpu,),
        endpoints=(endpoint,),
    )


def run(snapshots: Sequence[Snapshot], slo: Slo | None, window: float = 100.0) -> DerivedEndpoint:
    deriver = Deriver(window=window, slos={"llm": slo} if slo is not None else {})
    derived: Derived | None = None
    for snapshot in snapshots:
        derived = deriver(snapshot).derived
    assert derived is not None
    (endpoint,) = derived.endpoints
    return endpoint


def attained(endpoint: DerivedEndpoint) -> dict[str, float]:
    return {a.slo: a.ratio for a in endpoint.slo_attainment}


# Each second 10 requests: 6 with TTFT ≤ 0.1, 2 in (0.1, 0.5], 1 in (0.5, 1.0], 1 over 1 s.
SECOND = [0.05] * 6 + [0.3, 0.45, 0.7, 2.0]


def cumulative(seconds: int, per_second: Sequence[float] = SECOND) -> list[float]:
    return list(per_second) * seconds


def test_threshold_on_an_engine_bound_is_exact() -> None:
    snapshots = [tick(t, cumulative(t)) for t in range(4)]
    endpoint = run(snapshots, Slo(ttft_seconds=0.5))
    assert endpoint.tokens_per_joule == pytest.approx(10.0)
    assert attained(endpoint) == {"ttft": pytest.approx(0.8)}
    (only,) = endpoint.slo_attainment
    assert only.lower == only.upper == pytest.approx(0.8)
    assert endpoint.goodput_tokens_per_joule == pytest.approx(8.0)
    assert endpoint.goodput_tokens_per_joule_bounds == pytest.approx((8.0, 8.0))


def test_threshold_inside_a_bucket_is_interpolated_between_its_bounds() -> None:
    """SLO 0.3 s: in the engine's (0.1, 0.5] bucket, 6 to 8 of 10 requests; linear inside: 7."""
    endpoint = run([tick(t, cumulative(t)) for t in range(4)], Slo(ttft_seconds=0.3))
    (only,) = endpoint.slo_attainment
    assert (only.lower, only.ratio, only.upper) == pytest.approx((0.6, 0.7, 0.8))
    assert endpoint.goodput_tokens_per_joule == pytest.approx(7.0)
    assert endpoint.goodput_tokens_per_joule_bounds == pytest.approx((6.0, 8.0))


def test_threshold_past_the_last_bound_is_the_lower_bound() -> None:
    endpoint = run([tick(t, cumulative(t)) for t in range(4)], Slo(ttft_seconds=5.0))
    (only,) = endpoint.slo_attainment
    assert (only.lower, only.ratio, only.upper) == pytest.approx((0.9, 0.9, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.01, 3.0), min_size=1, max_size=40),
    st.floats(0.01, 2.0),
    st.integers(0, 2**32 - 1),
)
def test_the_truth_lies_between_the_bounds(per_second: list[float], threshold: float, seed: int) -> None:
    """Real observations, spread over the window's ticks: the share truly within the threshold is within
    [lower, upper], and so is the estimate."""
    rng = random.Random(seed)
    observed: list[float] = []
    snapshots = []
    for t in range(4):
        snapshots.append(tick(t, list(observed)))
        observed += [rng.choice(per_second) for _ in range(rng.randint(1, 12))]
    snapshots.append(tick(4, list(observed)))
    endpoint = run(snapshots, Slo(ttft_seconds=threshold))
    truth = sum(value <= threshold for value in observed) / len(observed)
    (only,) = endpoint.slo_attainment
    assert only.lower - 1e-12 <= truth <= only.upper + 1e-12
    assert only.lower <= only.ratio <= only.upper


def test_both_latencies_multiply_under_independence() -> None:
    """TTFT within 0.5 s: 0.8; TPOT within 0.05 s (a bound): 3 of 4 per second; both: 0.6 by the product."""
    tpot = [0.01, 0.03, 0.04, 0.09]
    snapshots = [tick(t, cumulative(t), cumulative(t, tpot)) for t in range(4)]
    endpoint = run(snapshots, Slo(ttft_seconds=0.5, tpot_seconds=0.05))
    assert attained(endpoint) == pytest.approx({"ttft": 0.8, "tpot": 0.75, "both": 0.6})
    assert endpoint.goodput_tokens_per_joule == pytest.approx(10.0 * 0.6)


def test_only_the_window_counts() -> None:
    """Fast requests for 10 s, then slow ones: a 3 s window sees only the slow ones."""
    fast, slow = [0.05] * 10, [0.7] * 10
    snapshots = [tick(t, fast * min(t, 10) + slow * max(0, t - 10)) for t in range(15)]
    assert attained(run(snapshots, Slo(ttft_seconds=0.5), window=3.0)) == {"ttft": 0.0}
    assert attained(run(snapshots, Slo(ttft_seconds=0.5), window=100.0)) == {"ttft": pytest.approx(10 / 14)}


def test_an_engine_restart_counts_what_the_new_engine_observed() -> None:
    """Counts going back mark a restart (as for counters): the step's observations are the new ones."""
    snapshots = [tick(0, []), tick(1, [0.05] * 10), tick(2, [0.05] * 20), tick(3, [0.7] * 4)]
    endpoint = run(snapshots, Slo(ttft_seconds=0.5))
    assert attained(endpoint) == {"ttft": pytest.approx(20 / 24)}


# -- absent, never made up ---------------------------------------------------------------------------------


def test_no_slo_no_attainment_no_goodput() -> None:
    endpoint = run([tick(t, cumulative(t)) for t in range(4)], None)
    assert endpoint.slo_attainment == () and endpoint.goodput_tokens_per_joule is None
    assert endpoint.tokens_per_joule == pytest.approx(10.0)


def test_no_histogram_for_a_latency_of_the_slo() -> None:
    """TGI-like: no TTFT histogram. TPOT attainment is there; goodput needs both: absent."""
    tpot = [0.01, 0.03, 0.04, 0.09]
    snapshots = [tick(t, None, cumulative(t, tpot)) for t in range(4)]
    endpoint = run(snapshots, Slo(ttft_seconds=0.5, tpot_seconds=0.05))
    assert attained(endpoint) == {"tpot": pytest.approx(0.75)}
    assert endpoint.goodput_tokens_per_joule is None
    only_tpot = run(snapshots, Slo(tpot_seconds=0.05))
    assert only_tpot.goodput_tokens_per_joule == pytest.approx(7.5)


def test_no_request_in_the_window() -> None:
    snapshots = [tick(t, [0.05] * 10) for t in range(4)]  # tokens flow, no request finishes
    endpoint = run(snapshots, Slo(ttft_seconds=0.5))
    assert endpoint.slo_attainment == () and endpoint.goodput_tokens_per_joule is None
    assert endpoint.tokens_per_joule == pytest.approx(10.0)


def test_a_step_without_the_histogram_makes_the_window_unknown() -> None:
    snapshots = [tick(0, []), tick(1, cumulative(1)), tick(2, None), tick(3, cumulative(3))]
    endpoint = run(snapshots, Slo(ttft_seconds=0.5))
    assert endpoint.slo_attainment == () and endpoint.goodput_tokens_per_joule is None


def test_no_energy_no_goodput_but_attainment() -> None:
    snapshots = [tick(t, cumulative(t), energy=500.0) for t in range(4)]  # the energy counter is stuck
    endpoint = run(snapshots, Slo(ttft_seconds=0.5))
    assert attained(endpoint) == {"ttft": pytest.approx(0.8)}
    assert endpoint.tokens_per_joule is None and endpoint.goodput_tokens_per_joule is None


def test_changed_buckets_are_not_differenced() -> None:
    """A model whose bucket layout changed between two ticks (an engine restarted with other buckets) adds
    nothing for that step."""
    before = tick(1, cumulative(1))
    after = tick(2, cumulative(2))
    moved = histogram("ttft", (0.2, 0.5, 1.0), cumulative(2))
    changed = dataclasses.replace(after.endpoints[0], histograms=(moved,))
    assert slo_step(before.endpoints[0], changed, Slo(ttft_seconds=0.5)) == {}
    assert set(slo_step(before.endpoints[0], after.endpoints[0], Slo(ttft_seconds=0.5))) == {"ttft"}


# -- configured, rendered ----------------------------------------------------------------------------------


def test_slo_config_goes_to_the_deriver() -> None:
    config = load_config(
        environ={
            "TPW_ENDPOINTS": json.dumps(
                [
                    {"name": "a", "url": "http://127.0.0.1:8000/metrics", "slo": {"ttft_seconds": 0.5}},
                    {"name": "b", "url": "http://127.0.0.1:8001/metrics"},
                ]
            )
        }
    )
    assert build_deriver(config).slos == {"a": Slo(ttft_seconds=0.5)}


@pytest.mark.parametrize(
    ("slo", "message"),
    [
        ({}, "set ttft_seconds, tpot_seconds or both"),
        ({"ttft_seconds": 0}, "greater than 0"),
        ({"p99": 1}, "p99"),
    ],
)
def test_slo_config_errors_name_the_field(slo: dict[str, float], message: str) -> None:
    endpoint = {"name": "a", "url": "http://127.0.0.1:8000/metrics", "slo": slo}
    with pytest.raises(ConfigError, match=message):
        load_config(environ={"TPW_ENDPOINTS": json.dumps([endpoint])})


def test_rendered_with_the_slo_label_and_absent_without_slo() -> None:
    tpot = [0.01, 0.03, 0.04, 0.09]
    snapshots = [tick(t, cumulative(t), cumulative(t, tpot)) for t in range(4)]
    deriver = Deriver(window=100.0, slos={"llm": Slo(ttft_seconds=0.5, tpot_seconds=0.05)})
    for snapshot in snapshots:
        last = deriver(snapshot)
    families = {family.name: family for family in derived_families(last)}
    ratios = {s.labels["slo"]: s.value for s in families["tpw_endpoint_slo_attainment_ratio"].samples}
    assert ratios == pytest.approx({"ttft": 0.8, "tpot": 0.75, "both": 0.6})
    assert [s.value for s in families["tpw_endpoint_goodput_tokens_per_joule"].samples] == pytest.approx(
        [6.0]
    )
    plain = Deriver(window=100.0)
    for snapshot in snapshots:
        last = plain(snapshot)
    families = {family.name: family for family in derived_families(last)}
    assert families["tpw_endpoint_slo_attainment_ratio"].samples == []
    assert families["tpw_endpoint_goodput_tokens_per_joule"].samples == []
