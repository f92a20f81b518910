"""Accuracy benchmark: tokens per joule from aligned windows vs. `rate(tokens) / rate(energy)`.

A simulated node (the demo's `SimulatedSource`, driven by a fake clock, H100-calibrated power) runs the
`mixed` scenario with phases of a few seconds, and a simulated serving engine generates tokens in
proportion to the load (tokens/s ∝ power above idle). Everything is analytic, so the ground truth of
tokens per joule over any window [T - w, T] is exact: Δtokens / Δenergy of the true integrals.

(a) aligned: the exporter's Deriver, ticking every second, reads the GPUs' energy counters (quantized
    to 100 ms like NVML's) and the engine's token counter in the same tick; Prometheus scrapes the result
    every `scrape` seconds, so at time T a query sees the value of the last exporter scrape.
(b) counters: Prometheus scrapes the exporter every `scrape` seconds and evaluates
    `rate(tpw_endpoint_generation_tokens_total[w]) / rate(tpw_endpoint_energy_joules_total[w])` at T: both
    counters come from the same tick of the same exposition, so both rates use the very same samples.
(c) two scrapes: Prometheus scrapes the engine's token counter and the exporter's energy counters as two
    independent targets, the engine `offset` seconds after the exporter, and evaluates
    `sum(rate(tokens[w])) / sum(rate(tpw_gpu_energy_joules_total[w]))` at T, with Prometheus's own
    extrapolation (`prometheus_rate`, checked against promtool in
    tests/integration/test_alignment_benchmark_promtool_and_script.py).

Each is compared with the truth over [T - w, T] at every second T after a warm-up, for several w: that is
the question a user asks at T, and no scrape-based value can know the last (T - last scrape) seconds, so
part of every error is staleness. The counters are also compared with the truth over the span their
samples cover (first to last sample in the range): their alignment error proper, which staleness does not
enter. The script prints mean and p95 absolute % errors and exits 1 if the counters are not more accurate
than two independent scrapes, or their alignment error is not within 1 % at p95.
Deterministic, no real time, no network: `python benchmarks/alignment.py` (≈ 10 s on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.demo.scenarios import WORKLOADS, Scenario
from exporter.derive.window import Deriver
from exporter.model import EndpointSample, EndpointValue, Snapshot
from exporter.sources.simulated import SimulatedSource

IDLE_WATTS = WORKLOADS["idle"].power_watts
ENERGY_UPDATE_SECONDS = 0.1  # the H100's energy counter advances every 100 ms (docs/h100-reference.md)
ENERGY_UPDATE_PHASE = 0.043
ENGINE_READ_DELAY = 0.005  # the exporter reads the engine a few ms after the GPUs, in the same tick


class FakeClock:
    """Simulated seconds since the start: the source's clock, so its t is the benchmark's t."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Engine:
    """A serving engine whose per-GPU token rate is proportional to the GPU's power above idle."""

    scenario: Scenario
    gpus: int
    tokens_per_joule_above_idle: float = 2000.0

    def rate(self, workload: str) -> float:
        return self.tokens_per_joule_above_idle * (WORKLOADS[workload].power_watts - IDLE_WATTS)

    def tokens(self, t: float) -> float:
        """Exact generated-token counter at t seconds since start (piecewise-constant rates integrated)."""
        phase = self.scenario.phase_seconds
        cycle = self.scenario.cycle
        period = phase * len(cycle)
        total = 0.0
        for gpu in range(self.gpus):
            rates = [self.rate(cycle[(k + gpu) % len(cycle)]) for k in range(len(cycle))]
            cycles, rest = divmod(t, period)
            whole, partial = divmod(rest, phase)
            total += cycles * sum(rates) * phase + sum(rates[: int(whole)]) * phase
            total += rates[int(whole) % len(rates)] * partial
        return total

    def energy(self, t: float) -> float:
        """Exact energy of all GPUs at t."""
        return sum(self.scenario.energy_joules(gpu, t) for gpu in range(self.gpus))

    def truth(self, start: float, end: float) -> float:
        return (self.tokens(end) - self.tokens(start)) / (self.energy(end) - self.energy(start))


def quantized_energy(scenario: Scenario, gpu: int, t: float) -> float:
    """What an H100 energy counter reads at t: the exact energy at its last 100 ms update."""
    updates = math.floor((t - ENERGY_UPDATE_PHASE) / ENERGY_UPDATE_SECONDS)
    return scenario.energy_joules(gpu, max(0.0, updates * ENERGY_UPDATE_SECONDS + ENERGY_UPDATE_PHASE))


def prometheus_rate(
    samples: Sequence[tuple[float, float]], at: float, range_seconds: float, left_open: bool = False
) -> float | None:
    """`rate(x[range])` evaluated at `at` over (time s, value) samples, as Prometheus computes it.

    Prometheus 2.x selects samples in [at - range, at]; 3.x in (at - range, at] (`left_open`). Then
    `extrapolatedRate` (promql/functions.go): counter resets added back, extrapolation to the range edges
    when the first/last sample is within 1.1 average intervals of them (else half an interval), never
    extrapolating below zero. Timestamps are milliseconds, as in the TSDB.
    """
    at_ms, range_ms = round(at * 1000), round(range_seconds * 1000)
    start_ms = at_ms - range_ms
    points = [
        (round(t * 1000), v)
        for t, v in samples
        if (round(t * 1000) > start_ms if left_open else round(t * 1000) >= start_ms)
        and round(t * 1000) <= at_ms
    ]
    if len(points) < 2:
        return None
    result = points[-1][1] - points[0][1]
    last = 0.0
    for _, value in points:
        if value < last:
            result += last
        last = value
    duration_to_start = (points[0][0] - start_ms) / 1000
    duration_to_end = (at_ms - points[-1][0]) / 1000
    sampled = (points[-1][0] - points[0][0]) / 1000
    average = sampled / (len(points) - 1)
    if result > 0 and points[0][1] >= 0:
        duration_to_zero = sampled * (points[0][1] / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = average * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else average / 2
    interval += duration_to_end if duration_to_end < threshold else average / 2
    result = result * (interval / sampled)
    return result / (range_ms / 1000)


@dataclass(frozen=True)
class Errors:
    window: float
    aligned_at_tick: float  # the Deriver's own value at T (no scrape staleness): quantization only
    aligned: float  # (a) as Prometheus serves it at T
    two_scrapes: float  # (b) rate()/rate(), Prometheus 2.x range selection
    two_scrapes_v3: float  # (b) with Prometheus 3.x left-open range selection
    aligned_p95: float
    two_scrapes_p95: float
    counters: float  # (b) rate(tokens)/rate(energy) from the exporter's own counters, Prometheus 2.x
    counters_v3: float  # (b) with Prometheus 3.x range selection
    counters_p95: float
    counters_span: float  # (b) against the truth over the span its samples cover: alignment error only
    counters_span_p95: float
    two_scrapes_span: float  # (c) against the truth over the span of its energy samples
    points: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(
    window: float,
    duration: float = 3600.0,
    phase_seconds: float = 4.7,
    gpus: int = 2,
    scrape: float = 15.0,
    offset: float = 0.37,
    interval: float = 1.0,
) -> Errors:
    """Run the node for `duration` simulated seconds and score both methods against the truth."""
    clock = FakeClock()
    source = SimulatedSource(gpus=gpus, scenario="mixed", phase_seconds=phase_seconds, clock=clock)
    engine = Engine(source.scenario, gpus)
    deriver = Deriver(window=window, tolerance=interval / 2)
    loop = asyncio.new_event_loop()

    tick_times: list[float] = []
    tick_values: list[float | None] = []  # the Deriver's tokens per joule at each tick
    energy_scrapes: list[list[tuple[float, float]]] = [[] for _ in range(gpus)]
    aligned_scrapes: list[tuple[float, float | None]] = []
    counter_scrapes: list[tuple[float, float, float]] = []  # (t, tokens counter, endpoint energy counter)
    steps = round(duration / interval)
    scrape_every = round(scrape / interval)
    try:
        for step in range(steps + 1):
            t = step * interval
            clock.now = t
            collected = loop.run_until_complete(source.collect())
            gpu_samples = tuple(
                dataclasses.replace(sample, energy_joules=quantized_energy(source.scenario, i, t))
                for i, sample in enumerate(collected.gpus)
            )
            read_at = t + ENGINE_READ_DELAY
            endpoint = EndpointSample(
                name="llm",
                engine="simulated",
                url="http://127.0.0.1:8000/metrics",
                timestamp=read_at,
                values=(EndpointValue("generation_tokens_total", "sim", engine.tokens(read_at)),),
                gpus=tuple(range(gpus)),
            )
            snapshot = Snapshot(
                tick=step + 1,
                wall_time=t,
                monotonic_time=clock(),
                duration_seconds=0.0,
                gpus=gpu_samples,
                endpoints=(endpoint,),
            )
            derived = deriver(snapshot).derived
            value = derived.endpoints[0].tokens_per_joule if derived and derived.endpoints else None
            energy_total = derived.energy_totals[0].joules if derived and derived.energy_totals else None
            tick_times.append(t)
            tick_values.append(value)
            if step % scrape_every == 0:  # Prometheus scrapes the exporter: this tick's exposition
                for i, sample in enumerate(gpu_samples):
                    assert sample.energy_joules is not None
                    energy_scrapes[i].append((t, sample.energy_joules))
                aligned_scrapes.append((t, value))
                if energy_total is not None:
                    counter_scrapes.append((t, engine.tokens(read_at), energy_total))
    finally:
        loop.close()

    # Prometheus scrapes the engine `offset` s after the exporter, on the same 15 s cadence.
    token_scrapes = [
        (s + offset, engine.tokens(s + offset)) for s, _ in aligned_scrapes if s + offset <= duration
    ]
    scrape_times = [s for s, _ in aligned_scrapes]

    counter_tokens = [(t, tokens) for t, tokens, _ in counter_scrapes]
    counter_energy = [(t, joules) for t, _, joules in counter_scrapes]
    aligned_errors, at_tick_errors, two_errors, two_v3_errors = [], [], [], []
    counter_errors, counter_v3_errors, span_errors, two_span_errors = [], [], [], []
    warm_up = 2 * window + 2 * scrape
    for index, t in enumerate(tick_times):
        if t < warm_up:
            continue
        truth = engine.truth(t - window, t)
        last_scrape = bisect.bisect_right(scrape_times, t) - 1
        aligned = aligned_scrapes[last_scrape][1]
        at_tick = tick_values[index]
        scores = []
        for left_open in (False, True):
            tokens_rate = prometheus_rate(token_scrapes, t, window, left_open)
            energy_rates = [prometheus_rate(series, t, window, left_open) for series in energy_scrapes]
            if tokens_rate is None or any(rate is None for rate in energy_rates):
                scores.append(None)
            else:
                scores.append(tokens_rate / sum(rate for rate in energy_rates if rate is not None))
        counters = []
        for left_open in (False, True):
            tokens_rate = prometheus_rate(counter_tokens, t, window, left_open)
            energy_rate = prometheus_rate(counter_energy, t, window, left_open)
            counters.append(None if tokens_rate is None or not energy_rate else tokens_rate / energy_rate)
        if aligned is None or at_tick is None or None in scores or None in counters:
            raise AssertionError(f"no value at t={t} for window {window}: the window is too short")
        in_range = [s for s, _ in counter_tokens if t - window <= s <= t]
        span_truth = engine.truth(in_range[0], in_range[-1])
        counter_errors.append(abs(counters[0] - truth) / truth * 100)  # type: ignore[operator]
        counter_v3_errors.append(abs(counters[1] - truth) / truth * 100)  # type: ignore[operator]
        span_errors.append(abs(counters[0] - span_truth) / span_truth * 100)  # type: ignore[operator]
        two_span_errors.append(abs(scores[0] - span_truth) / span_truth * 100)  # type: ignore[operator]
        aligned_errors.append(abs(aligned - truth) / truth * 100)
        at_tick_errors.append(abs(at_tick - truth) / truth * 100)
        two_errors.append(abs(scores[0] - truth) / truth * 100)  # type: ignore[operator]
        two_v3_errors.append(abs(scores[1] - truth) / truth * 100)  # type: ignore[operator]
    return Errors(
        window=window,
        aligned_at_tick=statistics.fmean(at_tick_errors),
        aligned=statistics.fmean(aligned_errors),
        two_scrapes=statistics.fmean(two_errors),
        two_scrapes_v3=statistics.fmean(two_v3_errors),
        aligned_p95=percentile(aligned_errors, 0.95),
        two_scrapes_p95=percentile(two_errors, 0.95),
        counters=statistics.fmean(counter_errors),
        counters_v3=statistics.fmean(counter_v3_errors),
        counters_p95=percentile(counter_errors, 0.95),
        counters_span=statistics.fmean(span_errors),
        counters_span_p95=percentile(span_errors, 0.95),
        two_scrapes_span=statistics.fmean(two_span_errors),
        points=len(aligned_errors),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=float, nargs="+", default=[30.0, 60.0, 120.0], metavar="SECONDS")
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds (default 3600)")
    parser.add_argument(
        "--phase-seconds", type=float, default=4.7, help="load changes every … s (default 4.7)"
    )
    parser.add_argument("--scrape", type=float, default=15.0, help="Prometheus scrape interval (default 15)")
    parser.add_argument("--offset", type=float, default=0.37, help="engine scraped … s after the exporter")
    args = parser.parse_args(argv)
    for name in ("duration", "phase_seconds", "scrape"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 <= args.offset < args.scrape:
        parser.error("--offset must be in [0, scrape)")
    if any(window < 2 * args.scrape for window in args.windows):
        parser.error("each window must be at least 2 × --scrape so rate() has two samples")
    if args.duration < 3 * max(args.windows) + 2 * args.scrape:
        parser.error("--duration must be at least 3 × the largest window + 2 × --scrape")

    print(
        f"mixed scenario on 2 simulated H100s, load changes every {args.phase_seconds:g} s; exporter ticks "
        f"every 1 s; Prometheus scrapes every {args.scrape:g} s, the engine {args.offset:g} s after the "
        f"exporter; {args.duration:g} s simulated; error = |value − truth| / truth over [T − w, T], every "
        "second T"
    )
    print(
        f"{'':>7}  {'against the truth over [T − w, T]':^79}  {'over the samples span':^27}\n"
        f"{'window':>7}  {'gauge@tick':>10}  {'gauge':>7}  {'p95':>6}  {'counters':>8}  {'p95':>6}  "
        f"{'3.x':>6}  {'rate/rate':>9}  {'p95':>6}  {'3.x':>6}  {'counters':>8}  {'p95':>6}  "
        f"{'rate/rate':>9}  {'points':>6}"
    )
    ok = True
    for window in args.windows:
        errors = simulate(
            window,
            duration=args.duration,
            phase_seconds=args.phase_seconds,
            scrape=args.scrape,
            offset=args.offset,
        )
        print(
            f"{window:>6g}s  {errors.aligned_at_tick:>9.3f}%  {errors.aligned:>6.3f}%  "
            f"{errors.aligned_p95:>5.2f}%  {errors.counters:>7.3f}%  {errors.counters_p95:>5.2f}%  "
            f"{errors.counters_v3:>5.2f}%  {errors.two_scrapes:>8.3f}%  {errors.two_scrapes_p95:>5.2f}%  "
            f"{errors.two_scrapes_v3:>5.2f}%  {errors.counters_span:>7.3f}%  "
            f"{errors.counters_span_p95:>5.2f}%  {errors.two_scrapes_span:>8.3f}%  {errors.points:>6}"
        )
        ok = (
            ok
            and errors.counters < errors.two_scrapes
            and errors.counters_v3 < errors.two_scrapes_v3
            and errors.counters_span_p95 <= 1.0
        )
    print(
        "gauge@tick: tpw_endpoint_tokens_per_joule at T itself, in the exporter; gauge: that gauge as "
        "Prometheus serves it at T (last scrape); counters: rate(tpw_endpoint_generation_tokens_total[w]) / "
        "rate(tpw_endpoint_energy_joules_total[w]) at T; rate/rate: the engine's token counter and "
        "tpw_gpu_energy_joules_total scraped as two targets. Prometheus 2.x selects [T−w, T], 3.x (T−w, T]. "
        "Mean absolute % error; p95 = 95th percentile."
    )
    if not ok:
        print(
            "FAIL: the counters are not more accurate than two scrapes, or their alignment error exceeds "
            "1 % at p95",
            file=sys.stderr,
        )
        return 1
    print("OK: the counters beat two scrapes for every window and are aligned within 1 % (p95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
