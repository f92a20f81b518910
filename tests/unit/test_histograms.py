"""Latency histograms: the engines' buckets re-bucketed onto the fixed bounds (exporter.histograms), read from
each engine's fixture page, checked against counts worked out by hand, and rendered valid for OpenMetrics.

The rule under test: a fixed bound gets the engine's cumulative count at its largest bound ≤ it, so the count
published at `le` never counts a request slower than `le`, and is exact where the engine has that bound."""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.engines import PROFILES, normalize_histograms
from exporter.histograms import (
    KINDS,
    MAX_ENGINE_BOUNDS,
    REQUEST_LATENCY_BOUNDS,
    TOKEN_LATENCY_BOUNDS,
    rebucket,
    threshold_counts,
)
from exporter.model import EndpointHistogram, EndpointSample, Snapshot
from exporter.promtext import parse_selected
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer
from exporter.sources.page import PageJob, PageResult, interpret

FIXTURES = Path(__file__).parent.parent / "fixtures" / "engines"


def histograms(fixture: str, engine: str) -> dict[tuple[str, str], EndpointHistogram]:
    profile = PROFILES[engine]
    parsed = parse_selected((FIXTURES / fixture).read_text(), profile.wanted_names())
    found, dropped = normalize_histograms(profile, parsed.samples)
    assert not dropped
    return {(h.kind, h.model): h for h in found}


def test_fixed_bounds_are_bounded_increasing_and_cover_the_ranges() -> None:
    assert REQUEST_LATENCY_BOUNDS[0] == 0.001 and REQUEST_LATENCY_BOUNDS[-1] == 120.0
    assert TOKEN_LATENCY_BOUNDS[0] == 0.001 and TOKEN_LATENCY_BOUNDS[-1] == 2.0
    for kind in KINDS.values():
        assert len(kind.bounds) <= 20
        assert list(kind.bounds) == sorted(set(kind.bounds)), kind.kind


# -- each engine's fixture, by hand ----------------------------------------------------------------------
# The fixed request-latency bounds: 0.001 0.002 0.005 0.01 0.02 0.05 0.1 0.2 0.25 0.5 1 2 2.5 5 10 20 40 60
# 120 s.


def test_vllm_v0_ttft() -> None:
    """vLLM bounds 0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10: 13 of the fixed
    bounds are vLLM's (exact); 0.002 takes 0.001's count, 0.05 takes 0.04's, 0.2 takes 0.1's, 2 takes 1's;
    past 10 s every request is counted (10 s: 454 = +Inf)."""
    h = histograms("vllm_v0.prom", "vllm")[("ttft", "meta-llama/Llama-3.1-8B-Instruct")]
    assert h.buckets == (
        115,
        115,
        163,
        200,
        231,
        258,
        327,
        327,
        346,
        365,
        400,
        400,
        416,
        432,
        454,
        454,
        454,
        454,
        454,
    )
    assert h.count == 454


def test_vllm_v0_tpot_is_the_per_token_histogram() -> None:
    """V0's time_per_output_token (0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5) on the fixed
    TPOT bounds 0.001 0.002 0.005 0.01 0.015 0.02 0.025 0.03 0.04 0.05 0.075 0.1 0.15 0.2 0.3 0.5 0.75 1 2."""
    h = histograms("vllm_v0.prom", "vllm")[("tpot", "meta-llama/Llama-3.1-8B-Instruct")]
    assert h.buckets == (
        0, 0, 0, 27432, 27432, 27432, 38796, 38796, 38796, 47515, 54865, 61342, 67196, 72580, 77592, 86750,
        90984, 95030, 95030,
    )  # fmt: skip
    assert h.count == 97757  # 2.5 s's count too: the last 2727 tokens are > 2 s or unknown, not counted at 2


def test_vllm_v1_sums_the_data_parallel_engines_per_bound() -> None:
    found = histograms("vllm_v1.prom", "vllm")
    ttft = found[("ttft", "Qwen/Qwen3-32B")]
    # engine 0 + engine 1: 0.001 → 70+67, 0.005 → 99+95, 0.01 → 122+116, 0.02 → 140+134, 0.04 → 157+150,
    # 0.1 → 199+190, 0.25 → 211+201, 0.5 → 222+212, 1 → 244+232, 2.5 → 254+242, 5 → 263+251,
    # 10 → 281+268, 20 → 290+277, 40 → 299+285, 80 → 307+292 (120 takes 80's)
    assert ttft.buckets == (
        137, 137, 194, 238, 274, 307, 389, 389, 412, 434, 476, 476, 496, 514, 549, 567, 584, 584, 599,
    )  # fmt: skip
    assert ttft.count == 629
    # queue time on vLLM's request-latency bounds, which start at 0.3 s: nothing is known to be faster
    queue = found[("queue", "Qwen/Qwen3-32B")]
    assert queue.buckets[:9] == (0,) * 9  # up to 0.25 s
    assert queue.buckets[9] == 102 + 96  # 0.5 s: vLLM's 0.5 bucket of both engines
    assert ("tpot", "Qwen/Qwen3-32B") not in found  # this page has no TPOT histogram


def test_sglang_ttft_and_inter_token_latency() -> None:
    found = histograms("sglang.prom", "sglang")
    model = "Qwen/Qwen2.5-7B-Instruct"
    # SGLang bounds 0.1 0.2 0.4 0.6 0.8 1 2 4 6 8 10 20 40 60 80 100 …: none below 0.1 s
    assert found[("ttft", model)].buckets == (
        0, 0, 0, 0, 0, 0, 505, 715, 715, 876, 1239, 1338, 1338, 1430, 1677, 1752, 1823, 1892, 2023,
    )  # fmt: skip
    # inter-token bounds 0.002 0.004 0.006 0.008 0.01 0.015 0.02 0.025 0.03 0.035 0.04 0.06 0.08 0.1 0.2 …
    assert found[("tpot", model)].buckets == (
        0, 44559, 63016, 99637, 109147, 117892, 126032, 133677, 147786, 147786, 154357, 166725, 166725,
        172577, 172577, 178237, 183722, 194229, 199275,
    )  # fmt: skip


def test_tgi_exponential_bounds() -> None:
    """TGI's bounds are 0.00015 × 1.5^k: no fixed bound is one of them, each takes the one just below
    (0.001 → 0.000759375, 0.002 → 0.0017085937, …, 2.5 → 1.6834112196 since 2.5251168294 > 2.5,
    120 → 97.0739737366)."""
    found = histograms("tgi.prom", "tgi")
    assert found[("e2e", "")].buckets == (
        473, 560, 635, 702, 763, 820, 873, 898, 922, 970, 993, 1037, 1037, 1079, 1120, 1159, 1178, 1197, 1210,
    )  # fmt: skip
    assert {kind for kind, _ in found} == {"e2e", "tpot", "queue"}  # TGI has no time to first token


def test_triton_milliseconds_become_seconds() -> None:
    """100 500 2000 5000 ms: all four are fixed bounds. The 60 requests over 5 s are counted at +Inf only,
    not at 120 s: they may be slower."""
    found = histograms("triton.prom", "triton")
    for model in ("ensemble", "tensorrt_llm"):
        h = found[("ttft", model)]
        assert h.bounds == (0.1, 0.5, 2.0, 5.0)
        assert h.buckets == (0,) * 6 + (460, 460, 460, 650, 650, 797, 797) + (920,) * 6
        assert h.count == 980
    assert {kind for kind, _ in found} == {"ttft"}  # e2e is a duration counter: sum and count only


@pytest.mark.parametrize("fixture", ["llamacpp_old.prom", "llamacpp_new.prom", "triton_old.prom"])
def test_engines_without_latency_buckets_have_no_histogram(fixture: str) -> None:
    engine = fixture.split("_")[0]
    assert histograms(fixture, engine) == {}


# -- the rule, on any histogram -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.0005, 200.0), max_size=60),
    st.lists(st.sampled_from([0.001, 0.004, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 3.0, 7.5, 50.0]), unique=True),
)
def test_rebucketing_is_conservative_monotonic_and_exact_on_shared_bounds(
    observations: list[float], engine_bounds: list[float]
) -> None:
    """From the engine's cumulative counts of real observations: the count at each fixed bound never
    exceeds the observations ≤ it, equals those ≤ the engine bound below it, and is exact on a bound both
    have; counts are non-decreasing."""
    bounds = sorted(engine_bounds)
    values = sorted(observations)
    counts = [bisect.bisect_right(values, bound) for bound in bounds]
    published = rebucket(bounds, counts, REQUEST_LATENCY_BOUNDS)
    assert list(published) == sorted(published)
    for target, count in zip(REQUEST_LATENCY_BOUNDS, published, strict=True):
        below = [bound for bound in bounds if bound <= target]
        assert count <= bisect.bisect_right(values, target)
        assert count == (bisect.bisect_right(values, below[-1]) if below else 0)
        if target in bounds:
            assert count == bisect.bisect_right(values, target)


def test_threshold_counts_bracket_and_interpolate() -> None:
    bounds, counts, total = (0.1, 0.25, 1.0), (327, 346, 400), 454
    assert threshold_counts(bounds, counts, total, 0.25).estimate == 346  # on a bound: exact
    inside = threshold_counts(bounds, counts, total, 0.2)
    assert (inside.lower, inside.upper, inside.bracket) == (327, 346, (0.1, 0.25))
    assert inside.estimate == pytest.approx(327 + (0.2 - 0.1) / (0.25 - 0.1) * 19)
    first = threshold_counts(bounds, counts, total, 0.05)
    assert (first.lower, first.upper, first.estimate) == (0, 327, 0 + 0.5 * 327)
    past = threshold_counts(bounds, counts, total, 5.0)  # past the last bound: no interpolation to +Inf
    assert (past.lower, past.upper, past.estimate, past.bracket) == (400, 454, 400, (1.0, math.inf))


# -- what a page may bring in --------------------------------------------------------------------------------

TTFT = "vllm:time_to_first_token_seconds"


def page(*buckets: tuple[str, float], model: str = "m", extra: str = "") -> bytes:
    lines = [f'{TTFT}_bucket{{le="{le}",model_name="{model}"}} {value}' for le, value in buckets]
    lines += [f'{TTFT}_sum{{model_name="{model}"}} 9.5', f'{TTFT}_count{{model_name="{model}"}} 10']
    return ("\n".join(lines) + "\n" + extra).encode()


def read(body: bytes, **job: int) -> PageResult:
    return interpret(PageJob(body=body, content_encoding="", engine="vllm", **job))


@pytest.mark.parametrize(
    "buckets",
    [
        (("0.1", 5), ("0.5", 4), ("+Inf", 10)),  # decreasing in le
        (("0.1", 5), ("0.5", 8)),  # no +Inf bucket
        (("0.1", 5), ("0.5", 8), ("+Inf", 7)),  # +Inf below a finite bucket
        (("0.1", 5), ("NaN", 8), ("+Inf", 10)),  # a bound that is no number
        (("0.1", -1), ("+Inf", 10)),  # a negative count
        (("0.1", 2.0**60), ("+Inf", 2.0**60)),  # past 2**53
    ],
)
def test_a_histogram_that_is_not_one_is_left_out_and_counted(buckets: tuple[tuple[str, float], ...]) -> None:
    result = read(page(*buckets))
    assert result.histograms == ()
    assert dict(result.dropped) == {"invalid_value": 1}
    assert {v.field for v in result.values} == {"ttft_seconds_sum", "ttft_seconds_count"}  # +Inf only


def test_too_many_engine_bounds_are_left_out() -> None:
    buckets = [(f"{0.001 * (k + 1):.3f}", k) for k in range(MAX_ENGINE_BOUNDS + 1)]
    result = read(page(*buckets, ("+Inf", 10)))
    assert result.histograms == () and dict(result.dropped) == {"too_many_series": 1}


def test_histograms_obey_the_model_cap_and_the_label_length() -> None:
    body = b"".join(page(("0.5", 3), ("+Inf", 10), model=m) for m in ("a", "b", "c", "x" * 40))
    result = read(body, max_models=2, max_label_length=20)
    assert [h.model for h in result.histograms] == ["a", "b"]
    # c: 2 values and 1 histogram over the cap; the long name: 2 values and 1 histogram
    assert dict(result.dropped) == {"too_many_series": 3, "label_too_long": 3}


def test_results_with_histograms_cross_the_socket() -> None:
    result = read(page(("0.5", 3), ("1", 7), ("+Inf", 10)))
    (h,) = result.histograms
    assert (h.bounds, h.counts, h.count) == ((0.5, 1.0), (3, 7), 10)
    assert PageResult.from_wire(result.to_wire()) == result


def test_the_tpot_buckets_come_from_the_histogram_its_count_comes_from() -> None:
    """A vLLM 0.11+ page has the per-request TPOT and the per-token inter-token latency: the per-request one
    is read, buckets and count alike; an older page's per-token one when it is the only one."""
    both = (
        'vllm:request_time_per_output_token_seconds_bucket{le="0.05",model_name="m"} 8\n'
        'vllm:request_time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 10\n'
        'vllm:request_time_per_output_token_seconds_sum{model_name="m"} 0.4\n'
        'vllm:request_time_per_output_token_seconds_count{model_name="m"} 10\n'
        'vllm:inter_token_latency_seconds_bucket{le="0.05",model_name="m"} 2000\n'
        'vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 2500\n'
        'vllm:inter_token_latency_seconds_sum{model_name="m"} 100\n'
        'vllm:inter_token_latency_seconds_count{model_name="m"} 2500\n'
    )
    (h,) = read(both.encode()).histograms
    assert (h.kind, h.counts, h.count) == ("tpot", (8,), 10)
    older = "\n".join(line for line in both.splitlines() if "inter_token" in line) + "\n"
    (h,) = read(older.encode()).histograms
    assert (h.counts, h.count) == ((2000,), 2500)


# -- rendered --------------------------------------------------------------------------------------------


def test_every_fixture_renders_valid_cumulative_integer_histograms() -> None:
    """Every engine page read and rendered: the strict OpenMetrics parser accepts it (integer counts, +Inf
    equal to _count, buckets in order); buckets never decrease in le; an engine without buckets has the
    +Inf bucket only; every histogram has its kind's fixed bounds and no others."""
    endpoints = []
    for path in sorted(FIXTURES.glob("*.prom")):
        result = interpret(PageJob(body=path.read_bytes(), content_encoding="", engine="auto"))
        endpoints.append(
            EndpointSample(
                name=path.stem,
                engine=result.engine or "",
                url="http://x/metrics",
                values=result.values,
                histograms=result.histograms,
            )
        )
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, endpoints=tuple(endpoints))
    families = {
        family.name: family
        for family in parse_openmetrics(
            Renderer(extra=[endpoint_families]).render(snapshot).openmetrics.decode()
        )
    }
    seen: dict[tuple[str, str], int] = {}
    for kind in KINDS.values():
        family = families[kind.metric]
        assert family.type == "histogram"
        series: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["endpoint"], sample.labels["model"])
                series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        for key, buckets in series.items():
            les = [le for le, _ in buckets]
            assert les in ([math.inf], [*kind.bounds, math.inf]), (kind.kind, key, les)
            counts = [count for _, count in buckets]
            assert counts == sorted(counts) and all(count == int(count) for count in counts)
            seen[(kind.kind, key[0])] = len(les)
    assert seen[("ttft", "vllm_v1")] == 20 and seen[("ttft", "triton")] == 20
    assert seen[("e2e", "triton")] == 1  # the request duration counter: +Inf, sum and count
    assert seen[("tpot", "tgi")] == 20 and ("ttft", "tgi") not in seen
    assert not any(endpoint == "llamacpp_new" for _, endpoint in seen)
