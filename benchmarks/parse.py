"""Benchmark: filtered parse of a ~1 MB vLLM-like page against prometheus_client's full parse.

Run with ``python benchmarks/parse.py``. Builds a page shaped like vLLM V1's /metrics for many
models (histograms with buckets dominate its size), parses it with
:func:`exporter.promtext.parse_selected` and the vLLM profile's wanted names, and with
``prometheus_client.parser.text_string_to_metric_families`` followed by the same filter; checks
both give the same samples and prints the median times, the speedup and the page size.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families

from exporter.engines import PROFILES
from exporter.promtext import parse_selected

TARGET_BYTES = 1_000_000
ENGINES = ("0", "1")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TOKEN_BUCKETS = (*(float(m * 10**e) for e in range(5) for m in (1, 2, 5)), 100000.0)
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": TTFT_BUCKETS,
    "vllm:time_per_output_token_seconds": TPOT_BUCKETS,
    "vllm:e2e_request_latency_seconds": E2E_BUCKETS,
    "vllm:request_queue_time_seconds": E2E_BUCKETS,
    "vllm:request_prompt_tokens": TOKEN_BUCKETS,
    "vllm:request_generation_tokens": TOKEN_BUCKETS,
}
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions")
FINISH_REASONS = ("stop", "length", "abort")


def labels(**pairs: str) -> str:
    """A label set rendered the way prometheus_client does (sorted names)."""
    return "{" + ",".join(f'{key}="{value}"' for key, value in sorted(pairs.items())) + "}"


def page_lines(rng: random.Random, models: list[str]) -> list[str]:
    """Every family of the page, for all models and engines."""
    lines = ["# HELP python_gc_collections_total Number of times this generation was collected",
             "# TYPE python_gc_collections_total counter"]  # fmt: skip
    lines += [f'python_gc_collections_total{{generation="{g}"}} {rng.randint(0, 9999)}.0' for g in "012"]
    series = [(model, engine) for model in models for engine in ENGINES]
    for name in GAUGES:
        lines += [f"# HELP {name} Gauge.", f"# TYPE {name} gauge"]
        lines += [f"{name}{labels(engine=e, model_name=m)} {rng.random()!r}" for m, e in series]
    for base in COUNTERS:
        lines += [f"# HELP {base}_total Counter.", f"# TYPE {base}_total counter"]
        lines += [
            f"{base}_total{labels(engine=e, model_name=m)} {float(rng.randint(0, 10**7))!r}"
            for m, e in series
        ]
        lines += [f"# HELP {base}_created Counter.", f"# TYPE {base}_created gauge"]
        lines += [f"{base}_created{labels(engine=e, model_name=m)} 1.7319845241126e+09" for m, e in series]
    success = "vllm:request_success_total"
    lines += [f"# HELP {success} Requests.", f"# TYPE {success} counter"]
    lines += [
        f"{success}{labels(engine=e, finished_reason=r, model_name=m)} {rng.randint(0, 9999)}.0"
        for m, e in series
        for r in FINISH_REASONS
    ]
    for name, buckets in HISTOGRAMS.items():
        lines += [f"# HELP {name} Histogram.", f"# TYPE {name} histogram"]
        for model, engine in series:
            lines += histogram(rng, name, buckets, model, engine)
    return lines


def histogram(
    rng: random.Random, name: str, buckets: tuple[float, ...], model: str, engine: str
) -> list[str]:
    """The bucket, count and sum lines of one histogram series."""
    total, lines = 0, []
    for bound in (*buckets, math.inf):
        total += rng.randint(0, 50)
        le = "+Inf" if bound == math.inf else repr(bound)
        lines.append(f"{name}_bucket{labels(engine=engine, le=le, model_name=model)} {float(total)!r}")
    lines.append(f"{name}_count{labels(engine=engine, model_name=model)} {float(total)!r}")
    lines.append(f"{name}_sum{labels(engine=engine, model_name=model)} {rng.uniform(0, 1e4)!r}")
    return lines


def build_page(target: int = TARGET_BYTES) -> str:
    """A vLLM-like page of at least ``target`` bytes (models are added until it is)."""
    count = max(1, target // len(render(1)))
    while len(page := render(count)) < target:
        count += 1
    return page


def render(count: int) -> str:
    """The page for ``count`` models, with a fixed seed so every run sees the same numbers."""
    models = [f"org-{index}/Model-{index * 7 % 13}B-Instruct" for index in range(count)]
    return "\n".join(page_lines(random.Random(42), models)) + "\n"


def reference(page: str, wanted: frozenset[str]) -> list[tuple[str, dict[str, str], float]]:
    """Full parse with prometheus_client, then keep the wanted samples."""
    return [
        (s.name, s.labels, float(s.value))
        for metric in text_string_to_metric_families(page)
        for s in metric.samples
        if s.name in wanted
    ]


def ours(page: str, wanted: frozenset[str]) -> list[tuple[str, dict[str, str], float]]:
    """Filtered parse with exporter.promtext."""
    return [(s.name, s.labels, s.value) for s in parse_selected(page, wanted).samples]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Build the page, check both parsers agree, time them and print the figures."""
    page = build_page()
    wanted = PROFILES["vllm"].wanted_names()
    expected, got = reference(page, wanted), ours(page, wanted)
    if expected != got:
        raise SystemExit(
            f"mismatch: prometheus_client kept {len(expected)} samples, parse_selected {len(got)}"
        )
    slow = median_seconds(lambda: reference(page, wanted), repeats=3)
    fast = median_seconds(lambda: parse_selected(page, wanted), repeats=9)
    print(f"page: {len(page.encode()) / 1e6:.2f} MB, {page.count(chr(10))} lines, {len(got)} samples kept")
    print(f"prometheus_client full parse + filter: {slow * 1e3:8.1f} ms (median of 3)")
    print(f"parse_selected (vLLM profile):         {fast * 1e3:8.1f} ms (median of 9)")
    print(f"speedup: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
