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
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.demo.scenarios import Plan

log = logging.getLogger(__name__)

DEMO_ENDPOINT_NAME = "demo-vllm"
DEMO_MODEL = "simulated/llama-3.1-8b"
PROMPT_TOKENS_PER_REQUEST = 512.0
GENERATED_TOKENS_PER_REQUEST = 256.0


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
        s = self.state(self.elapsed())
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
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
            f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",{model}}} {requests}',
            f'vllm:time_to_first_token_seconds_sum{{engine="0",{model}}} {s.ttft_sum:.4f}',
            f'vllm:time_to_first_token_seconds_count{{engine="0",{model}}} {requests}',
            "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.",
            "# TYPE vllm:e2e_request_latency_seconds histogram",
            f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",{model}}} {requests}',
            f'vllm:e2e_request_latency_seconds_sum{{engine="0",{model}}} {s.e2e_sum:.4f}',
            f'vllm:e2e_request_latency_seconds_count{{engine="0",{model}}} {requests}',
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
