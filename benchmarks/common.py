"""Small pieces the benchmark scripts share: free ports, the exporter's environment, the verdict line."""

from __future__ import annotations

import http.client
import os
import random
import socket
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exporter_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so `python -m exporter` runs this tree."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def verdict(failures: list[str]) -> int:
    """Print each failure and PASS or the count; the exit code for the script."""
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


def scrape_at_random_phases(port: int, seconds: float, rate: float = 10.0) -> dict[str, float]:
    """GET /metrics on a new connection at random moments (`rate` a second on average) for `seconds`, so
    scrapes land at every phase of the exporter's tick, as Prometheus's do. Latencies in ms: p50, p99,
    p99.9, max, and the number of scrapes."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(random.uniform(0, 2 / rate))
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        connection.close()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise SystemExit(f"/metrics answered {response.status}")
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "p50": statistics.median(latencies),
        "p99": quantile(0.99),
        "p99.9": quantile(0.999),
        "max": latencies[-1],
        "scrapes": float(len(latencies)),
    }
