"""Small pieces the benchmark scripts share: free ports, the exporter's environment, the verdict line."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def start_exporter(
    args: list[str],
    config: dict | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    tree: Path = REPO,
) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m exporter ARGS` on a free loopback port (with `config` written to a file for --config),
    once its /readyz answers; exits the script if it stops or is not ready within 60 s. `quiet` drops its
    log; `tree` runs the `exporter` package of another checkout (a baseline)."""
    port = free_port()
    command = [sys.executable, "-m", "exporter", *args, "--listen-address", f"127.0.0.1:{port}"]
    if config is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config_file:
            json.dump(config, config_file)  # JSON is YAML
        command += ["--config", config_file.name]
    log = subprocess.DEVNULL if quiet else None
    if env is None:
        env = exporter_env()
        if tree != REPO:  # that tree first, then whatever else the environment provides
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(command, cwd=tree, env=env, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"exporter exited with code {process.returncode}") from None
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("exporter not ready after 60 s") from None
            time.sleep(0.2)


def stop(processes: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM every process (last started first), then wait for each, killing any that outlasts `timeout`."""
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
