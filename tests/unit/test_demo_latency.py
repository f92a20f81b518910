"""The simulated engine's latency histograms (vLLM v1 names and bounds) move with its scenario: time to first
token and queue time rise as the queue grows, the time per output token follows the batch."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.engine import LATENCIES, SERVING, SimulatedEngine, lognormal_cdf
from exporter.demo.scenarios import Plan, Scenario, Schedule
from exporter.sources.page import PageJob, interpret

PHASE = 10.0
SCHEDULE = (("busy-flat", 3.0), ("mixed", 5.0), ("throttling", 4.0), ("endpoint-down", 2.5))
TTFT, REQUEST_TPOT, ITL, E2E, QUEUE = LATENCIES


def engine(plan: Plan, gpus: int = 2) -> SimulatedEngine:
    return SimulatedEngine(plan, gpus, lambda: 0.0, 0.0)


def quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float:
    """histogram_quantile's answer on cumulative counts (the last one: +Inf): linear inside the bucket."""
    rank = q * counts[-1]
    for index, count in enumerate(counts[:-1]):
        if count >= rank:
            low, below = (bounds[index - 1], counts[index - 1]) if index else (0.0, 0.0)
            return low + (bounds[index] - low) * (rank - below) / (count - below)
    return bounds[-1]


def window_quantile(sim: SimulatedEngine, latency: object, q: float, start: float, end: float) -> float:
    assert latency in LATENCIES
    first = sim.histogram(start, latency, 10**12)  # type: ignore[arg-type]
    last = sim.histogram(end, latency, 10**12)  # type: ignore[arg-type]
    total = sim._class_integral(end, lambda w: SERVING[w].requests_per_second) - sim._class_integral(
        start, lambda w: SERVING[w].requests_per_second
    )
    counts = [b - a for a, b in zip(first.counts, last.counts, strict=True)] + [total]
    return quantile(q, latency.buckets, counts)  # type: ignore[attr-defined]


def test_ttft_and_queue_time_rise_while_the_queue_grows() -> None:
    """busy-flat: the queue grows by 60 per GPU per phase, tokens/s flat: median TTFT and queue time phase
    by phase keep rising (read as histogram_quantile reads vLLM's buckets), the decode speed does not."""
    sim = engine(Scenario("busy-flat", PHASE))
    ttft = [window_quantile(sim, TTFT, 0.5, k * PHASE, (k + 1) * PHASE) for k in range(4)]
    queue = [window_quantile(sim, QUEUE, 0.5, k * PHASE, (k + 1) * PHASE) for k in range(4)]
    assert ttft == sorted(set(ttft)) and ttft[1] > 2 * ttft[0] and ttft[0] < 1.0 < ttft[1], ttft
    assert queue == sorted(set(queue)) and queue[1] > 2 * queue[0], queue
    tpot = [window_quantile(sim, REQUEST_TPOT, 0.5, k * PHASE, (k + 1) * PHASE) for k in range(4)]
    assert tpot[0] == pytest.approx(tpot[3], rel=0.01)  # the batch is full and flat: decode speed too


def test_healthy_latencies_hold_steady() -> None:
    sim = engine(Scenario("healthy", PHASE))
    windows = [window_quantile(sim, TTFT, 0.9, start, start + 2 * PHASE) for start in (0.0, 50 * PHASE)]
    assert windows[0] == pytest.approx(windows[1], rel=0.01)
    assert window_quantile(sim, TTFT, 0.99, 0.0, 2 * PHASE) < 1.0  # the demo's TTFT SLO holds for 99 %


def test_batch_drop_queues_requests_for_seconds() -> None:
    """The batch is cut at phase 5 and the queue builds to 150 per GPU at phase 6: the queue time's median
    goes from below vLLM's first bound (0.3 s) to tens of seconds."""
    sim = engine(Scenario("batch-drop", PHASE))
    before = window_quantile(sim, QUEUE, 0.5, 3 * PHASE, 4 * PHASE)
    after = window_quantile(sim, QUEUE, 0.5, 7 * PHASE, 8 * PHASE)
    assert before < 0.3 < 10 < after


def test_the_window_means_are_the_workloads_means() -> None:
    """Δsum / Δcount over a steady phase is the workload's mean latency (log-normal around it)."""
    sim = engine(Scenario("healthy", PHASE))
    serving = SERVING["healthy"]
    for latency, mean in ((TTFT, serving.ttft_seconds), (REQUEST_TPOT, serving.tpot_seconds)):
        first, last = sim.histogram(PHASE, latency, 0), sim.histogram(3 * PHASE, latency, 0)
        requests = 2 * 2 * PHASE * serving.requests_per_second  # 2 GPUs, 2 phases
        assert (last.sum - first.sum) / requests == pytest.approx(mean, rel=1e-9)


def test_each_bucket_is_the_integral_of_its_share() -> None:
    """In a steady phase, a bucket grows by requests × the log-normal share below its bound."""
    sim = engine(Scenario("healthy", PHASE))
    first, last = sim.histogram(PHASE, TTFT, 10**9), sim.histogram(5 * PHASE, TTFT, 10**9)
    requests = 2 * 4 * PHASE * SERVING["healthy"].requests_per_second
    for bound, a, b in zip(TTFT.buckets, first.counts, last.counts, strict=True):
        share = lognormal_cdf(SERVING["healthy"].ttft_seconds, 0.6, bound)
        assert b - a == pytest.approx(requests * share, abs=1.0)


def test_gpu_classes_give_the_per_gpu_sums() -> None:
    """The histograms integrate once per class of GPUs that run alike; the same as GPU by GPU."""

    def requests(workload: str) -> float:
        return SERVING[workload].requests_per_second

    for plan in (Scenario("mixed", 0.5), Scenario("throttling", 0.5), Schedule(SCHEDULE, 0.5)):
        sim = engine(plan, gpus=5)
        for t in (0.3, 7.7, 41.0):
            per_gpu = sum(plan.integral(gpu, t, requests) for gpu in range(5))
            assert sim._class_integral(t, requests) == pytest.approx(per_gpu, rel=1e-12)


@pytest.mark.parametrize("name", ["busy-flat", "batch-drop", "mixed"])
def test_page_histograms_are_cumulative_and_read_by_the_vllm_profile(name: str) -> None:
    """On the page: counts whole and non-decreasing in le, +Inf = _count; read through the exporter's vLLM
    profile into the four kinds (TPOT from the per-request histogram)."""
    now = [0.0]
    sim = SimulatedEngine(Scenario(name, PHASE), 2, lambda: now[0], 0.0)
    for t in (3.0, 17.0, 66.0, 250.0):
        now[0] = t
        text = sim.page()
        for family in text_string_to_metric_families(text):
            if family.type != "histogram":
                continue
            buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
            count = next(s.value for s in family.samples if s.name.endswith("_count"))
            assert buckets == sorted(buckets) and buckets[-1] == count, (t, family.name)
            assert all(value == math.floor(value) for value in buckets)
        result = interpret(PageJob(body=text.encode(), content_encoding="", engine="vllm"))
        kinds = {h.kind: h for h in result.histograms}
        assert set(kinds) == {"ttft", "tpot", "e2e", "queue"}
        assert kinds["tpot"].count == kinds["ttft"].count  # per request, not per token
        assert kinds["tpot"].bounds == REQUEST_TPOT.buckets and ITL.per_token and not E2E.per_token
