"""A simulated vLLM-like serving engine for the demo, whose load follows the simulated GPUs' scenario.

It serves a real Prometheus page (vLLM v1 metric names, `model_name` label) over HTTP on loopback, so the
demo exercises the same path as production: the endpoints source scrapes it, the vLLM profile normalizes
it, attribution and derived metrics treat it like any engine. `EngineState` holds exact integrals of the
rates, so tests and benchmarks know the ground truth at any moment; the page counts whole tokens and whole
requests, as a real engine does (`SimulatedEngine.page`).

Per-GPU serving behaviour by workload (an 8B-class model on an H100, orders of magnitude only):
compute-bound = large batches, memory-bound = small batches, launch-bound = tiny batches starved by the
host, idle = no traffic; the alert scenarios' keyframes follow Little's law (`_serving`). Between two
keyframes every number moves linearly, like the GPUs' (`exporter.demo.scenarios.Plan`). In a scenario
whose engine is down (`endpoint-down`) the page answers 503, so the exporter really fails to scrape it.

Latency histograms, as vLLM v1 publishes them (its bucket bounds, `_bucket`/`_sum`/`_count`): time to
first token, time per output token per request and per token (`inter_token_latency_seconds`), end to end
and queue time. Under each workload a latency is log-normal around the workload's mean (TTFT: the prefill
plus the queue wait of Little's law, TPOT: running ÷ tokens/s, queue: waiting ÷ requests/s), so the
histograms move with the scenario: TTFT and queue time rise as the queue grows. A bucket's count is the
exact integral of (requests/s × the share of them ≤ its bound), blended between keyframes like every rate.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.utils import floatToGoString

from exporter.demo.scenarios import Plan

log = logging.getLogger(__name__)

DEMO_ENDPOINT_NAME = "demo-vllm"
DEMO_MODEL = "simulated/llama-3.1-8b"
PROMPT_TOKENS_PER_REQUEST = 512.0
GENERATED_TOKENS_PER_REQUEST = 256.0
# The demo endpoint's SLO (exporter/node.py): bounds of vLLM's TTFT and TPOT buckets (attainment exact).
DEMO_SLO_TTFT_SECONDS = 1.0
DEMO_SLO_TPOT_SECONDS = 0.05
MIN_QUEUE_SECONDS = 0.002  # a request with no queue ahead still waits for the scheduler's next step


@dataclass(frozen=True)
class Serving:
    """What one GPU's share of the engine does under a workload."""

    generation_tokens_per_second: float
    running: float  # requests in the batch
    waiting: float  # requests queued
    ttft_seconds: float
    e2e_seconds: float
    kv_cache_usage: float | None = None  # None: running / 300 (a KV cache for ~300 typical requests)

    @property
    def kv_usage(self) -> float:
        return self.kv_cache_usage if self.kv_cache_usage is not None else min(self.running / 300.0, 1.0)

    @property
    def requests_per_second(self) -> float:
        return self.generation_tokens_per_second / GENERATED_TOKENS_PER_REQUEST

    @property
    def tpot_seconds(self) -> float:
        """A request's time per output token: it gets 1/running of the tokens/s (0 while idle)."""
        tokens = self.generation_tokens_per_second
        return self.running / tokens if tokens > 0 else 0.0

    @property
    def queue_seconds(self) -> float:
        """Mean wait in the queue (Little's law), at least the scheduler's step."""
        rate = self.requests_per_second
        return max(self.waiting / rate if rate > 0 else 0.0, MIN_QUEUE_SECONDS)

    def mean(self, kind: str) -> float:
        """The mean latency of a kind of LATENCIES."""
        return {
            "ttft": self.ttft_seconds,
            "tpot": self.tpot_seconds,
            "e2e": self.e2e_seconds,
            "queue": self.queue_seconds,
        }[kind]


def _serving(
    tokens_per_second: float, running: float, waiting: float, prefill_seconds: float, kv: float | None = None
) -> Serving:
    """A coherent steady state: each request generates 256 tokens at tokens/s ÷ running per request, and
    waits in the queue for waiting ÷ (requests finished per second) before its prefill."""
    requests_per_second = tokens_per_second / GENERATED_TOKENS_PER_REQUEST
    ttft = prefill_seconds + waiting / requests_per_second
    e2e = ttft + running / requests_per_second
    return Serving(tokens_per_second, running, waiting, ttft, e2e, kv)


SERVING: dict[str, Serving] = {
    "idle": Serving(0.0, 0, 0, 0.0, 0.0),
    "compute-bound": Serving(12000.0, 256, 4, 0.35, 5.8),
    "memory-bound": Serving(3000.0, 24, 0, 0.06, 2.1),
    "launch-bound": Serving(400.0, 4, 0, 0.05, 2.6),
    "healthy": _serving(9000.0, 128, 0, 0.25),
    "busy-flat": _serving(12000.0, 256, 8, 0.35),
    "busy-flat+1": _serving(12000.0, 256, 68, 0.35),  # +60 queued per GPU per phase, tokens/s flat
    "input-bound": _serving(900.0, 8, 12, 0.30),
    "bandwidth-ramp": _serving(2500.0, 24, 0, 0.08),
    "bandwidth-saturated": _serving(3500.0, 32, 24, 0.12, kv=0.97),  # long contexts fill the KV cache
    "regressed": _serving(9000.0, 160, 0, 0.32),  # same tokens/s, each request longer on the GPU
    "batch-cut": _serving(1500.0, 16, 0, 0.05),
    "batch-cut-queued": _serving(1500.0, 16, 150, 0.05),  # clients time out at ~30 s: the queue levels off
    "leaked": _serving(4500.0, 128, 30, 0.25),
    "thermal-throttled": _serving(6000.0, 128, 0, 0.35),
    "power-capped": _serving(5500.0, 128, 0, 0.35),
}


# vLLM v1's bucket bounds (vllm/v1/metrics/loggers.py).
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
VLLM_TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
VLLM_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# Spread of each latency around its mean: σ of its logarithm.
LATENCY_SIGMA = {"ttft": 0.6, "tpot": 0.3, "e2e": 0.5, "queue": 0.8}


@dataclass(frozen=True)
class Latency:
    """One histogram of the page: its vLLM name, the latency it observes, its bounds, and whether it
    observes each request or each generated token."""

    name: str
    kind: str  # a key of LATENCY_SIGMA
    buckets: tuple[float, ...]
    per_token: bool = False
    help: str = ""


LATENCIES: tuple[Latency, ...] = (
    Latency("vllm:time_to_first_token_seconds", "ttft", VLLM_TTFT_BUCKETS, help="time to first token"),
    Latency(
        "vllm:request_time_per_output_token_seconds",
        "tpot",
        VLLM_TPOT_BUCKETS,
        help="time_per_output_token_seconds per request",
    ),
    Latency(
        "vllm:inter_token_latency_seconds",
        "tpot",
        VLLM_TPOT_BUCKETS,
        per_token=True,
        help="inter-token latency",
    ),
    Latency(
        "vllm:e2e_request_latency_seconds", "e2e", VLLM_REQUEST_LATENCY_BUCKETS, help="e2e request latency"
    ),
    Latency(
        "vllm:request_queue_time_seconds",
        "queue",
        VLLM_REQUEST_LATENCY_BUCKETS,
        help="time spent in WAITING phase for request",
    ),
)


def lognormal_cdf(mean: float, sigma: float, bound: float) -> float:
    """P(X ≤ bound) for a log-normal X of this mean and σ of ln X (1 for a mean of 0: nothing to wait)."""
    if mean <= 0:
        return 1.0
    median = mean * math.exp(-sigma * sigma / 2)
    return 0.5 * math.erfc(-math.log(bound / median) / (sigma * math.sqrt(2)))


@functools.cache
def _shares(workload: str, latency: Latency) -> tuple[float, ...]:
    """Under a workload, the share of the observations ≤ each bound of the histogram."""
    serving = SERVING[workload]
    mean, sigma = serving.mean(latency.kind), LATENCY_SIGMA[latency.kind]
    return tuple(lognormal_cdf(mean, sigma, bound) for bound in latency.buckets)


@dataclass(frozen=True)
class HistogramState:
    """One histogram of the page at a moment: whole cumulative counts per bound, the +Inf count, the sum."""

    counts: tuple[int, ...]
    count: int
    sum: float


@dataclass(frozen=True)
class EngineState:
    """Counters and gauges of the simulated engine at one moment."""

    generation_tokens: float
    prompt_tokens: float
    requests: float
    running: float
    waiting: float
    kv_cache_usage: float
    ttft_sum: float
    e2e_sum: float


class SimulatedEngine:
    """The engine across `gpus` simulated GPUs following `scenario`; `elapsed` is the simulation clock."""

    def __init__(self, scenario: Plan, gpus: int, elapsed: Callable[[], float], start_time: float) -> None:
        self.scenario = scenario
        self.gpus = gpus
        self.elapsed = elapsed
        self.start_time = start_time  # Unix time, exposed as process_start_time_seconds

    def _integral(self, t: float, value: Callable[[Serving], float]) -> float:
        return sum(
            self.scenario.integral(gpu, t, lambda workload: value(SERVING[workload]))
            for gpu in range(self.gpus)
        )

    def _class_integral(self, t: float, rate: Callable[[str], float]) -> float:
        """Σ over the GPUs of ∫₀ᵗ rate(workload): once per class of GPUs that run the same workloads."""
        first: dict[Hashable, int] = {}
        classes: Counter[Hashable] = Counter()
        for gpu in range(self.gpus):
            key = self.scenario.gpu_class(gpu)
            first.setdefault(key, gpu)
            classes[key] += 1
        return sum(n * self.scenario.integral(first[key], t, rate) for key, n in classes.items())

    def histogram(self, t: float, latency: Latency, total: int) -> HistogramState:
        """A latency histogram at t: each bound's count is ∫ (requests/s, or tokens/s, × the share ≤ it),
        floored to whole observations and kept cumulative up to `total`, the +Inf count: the completed
        requests (or the generated tokens) as the page's counters say."""

        def unit(workload: str) -> float:
            serving = SERVING[workload]
            return serving.generation_tokens_per_second if latency.per_token else serving.requests_per_second

        counts: list[int] = []
        for index in reversed(range(len(latency.buckets))):

            def below(workload: str, index: int = index) -> float:
                return unit(workload) * _shares(workload, latency)[index]

            exact = self._class_integral(t, below)
            counts.append(min(math.floor(exact), counts[-1] if counts else total))
        total_latency = self._class_integral(t, lambda w: unit(w) * SERVING[w].mean(latency.kind))
        return HistogramState(tuple(reversed(counts)), total, total_latency)

    def _now(self, t: float, value: Callable[[Serving], float]) -> float:
        return sum(
            self.scenario.value_at(gpu, t, lambda workload: value(SERVING[workload]))
            for gpu in range(self.gpus)
        )

    def available(self) -> bool:
        """False while the scenario has the engine down: its page then answers 503."""
        return self.scenario.engine_up(self.elapsed())

    def state(self, t: float) -> EngineState:
        tokens = self._integral(t, lambda s: s.generation_tokens_per_second)
        requests = tokens / GENERATED_TOKENS_PER_REQUEST
        running = self._now(t, lambda s: s.running)
        return EngineState(
            generation_tokens=tokens,
            prompt_tokens=requests * PROMPT_TOKENS_PER_REQUEST,
            requests=requests,
            running=running,
            waiting=self._now(t, lambda s: s.waiting),
            kv_cache_usage=self._now(t, lambda s: s.kv_usage) / self.gpus,
            ttft_sum=self._integral(t, lambda s: s.ttft_seconds * s.generation_tokens_per_second)
            / GENERATED_TOKENS_PER_REQUEST,
            e2e_sum=self._integral(t, lambda s: s.e2e_seconds * s.generation_tokens_per_second)
            / GENERATED_TOKENS_PER_REQUEST,
        )

    def page(self) -> str:
        """The engine's /metrics page now, in vLLM v1's names.

        Counts are whole, as a real engine's: the tokens processed and the requests completed so far, the
        floor of the exact integrals (OpenMetrics requires integer histogram counts; flooring keeps every
        counter non-decreasing). The latency sums stay the exact integrals, so they never go backwards
        either; they include the request in progress, less than one request's latency ahead of the count.
        """
        t = self.elapsed()
        s = self.state(t)
        requests = math.floor(s.requests)
        model = f'model_name="{DEMO_MODEL}"'
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{engine="0",{model}}} {round(s.running)}',
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{engine="0",{model}}} {round(s.waiting)}',
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{engine="0",{model}}} {s.kv_cache_usage:.6f}',
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f'vllm:prompt_tokens_total{{engine="0",{model}}} {math.floor(s.prompt_tokens)}',
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f'vllm:generation_tokens_total{{engine="0",{model}}} {math.floor(s.generation_tokens)}',
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{engine="0",finished_reason="stop",{model}}} {requests}',
        ]
        for latency in LATENCIES:
            total = math.floor(s.generation_tokens) if latency.per_token else requests
            histogram = self.histogram(t, latency, total)
            lines += [
                f"# HELP {latency.name} Histogram of {latency.help} in seconds.",
                f"# TYPE {latency.name} histogram",
            ]
            bounds = [*(floatToGoString(bound) for bound in latency.buckets), "+Inf"]
            for le, count in zip(bounds, (*histogram.counts, total), strict=True):
                lines.append(f'{latency.name}_bucket{{engine="0",le="{le}",{model}}} {count}')
            lines.append(f'{latency.name}_sum{{engine="0",{model}}} {histogram.sum:.4f}')
            lines.append(f'{latency.name}_count{{engine="0",{model}}} {total}')
        lines += [
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.start_time:.2f}",
        ]
        return "\n".join(lines) + "\n"


class _QuietHTTPServer(ThreadingHTTPServer):
    """A client that goes away mid-request (a closed scrape, a timed-out probe) is logged at debug, not
    printed as a traceback; any other error is reported as socketserver reports it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # BrokenPipe, ConnectionReset, …
            log.debug("simulated engine: client %s went away: %s", client_address, error)
            return
        super().handle_error(request, client_address)


class SimulatedEngineServer:
    """Serves a SimulatedEngine's page at http://127.0.0.1:PORT/metrics from a background thread."""

    def __init__(self, engine: SimulatedEngine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                if not engine.available():
                    self.send_error(503, "simulated engine down (scenario endpoint-down)")
                    return
                body = engine.page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = _QuietHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="simulated-engine",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        if isinstance(host, (bytes, bytearray)):  # typeshed allows bytes; an AF_INET socket gives str
            host = host.decode()
        return f"http://{host}:{port}/metrics"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
