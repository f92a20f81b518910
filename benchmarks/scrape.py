"""Scrape cost of tpw-exporter: latency p50/p99, the daemon's CPU, peak RSS, series and bytes.

    python benchmarks/scrape.py                        # demo node with 1, 8 and 64 simulated GPUs
    python benchmarks/scrape.py --gpus 1,8 --seconds 10
    python benchmarks/scrape.py --serve                # the real GPUs of this machine (NVML + GPM)

For each configuration it starts `python -m exporter` as its own process at a 1 s interval, then
1. measures CPU as Prometheus would load it: one scrape per second for --cpu-seconds, CPU time of the
   exporter process (all threads) over wall time, as % of one core;
2. measures latency: sequential GET /metrics on one keep-alive connection for --seconds, p50/p99/max;
3. reports peak RSS (VmHWM), the number of series and the exposition size.
Figures, not pass/fail: the targets (scrape p99 ≤ 2 ms at any GPU count; on one H100 with GPM, CPU ≤ 2 % of
a core and RSS ≤ 65 MB) and the peer figures (nvitop-exporter on one H100: p99 18.5 ms, 3.75 % CPU, 65 MB)
are printed beside them.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import REPO, exporter_env, free_port


@dataclass
class Result:
    label: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    scrapes: int
    cpu_percent: float
    peak_rss_mb: float
    series: int
    bytes: int


def start_exporter(args: list[str], port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "exporter",
        *args,
        "--interval",
        "1",
        "--listen-address",
        f"127.0.0.1:{port}",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=exporter_env(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"exporter exited: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("exporter did not become ready within 60 s")


def get_metrics(connection: http.client.HTTPConnection) -> bytes:
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"/metrics answered {response.status}")
    return body


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 1e6


def measure(label: str, args: list[str], seconds: float, cpu_seconds: float, warmup: float) -> Result:
    port = free_port()
    process = start_exporter(args, port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        time.sleep(warmup)  # GPM needs two ticks; let caches and allocations settle
        body = get_metrics(connection)

        me = psutil.Process(process.pid)
        cpu_before, wall_before = me.cpu_times(), time.monotonic()
        while time.monotonic() - wall_before < cpu_seconds:
            get_metrics(connection)
            time.sleep(1.0)
        cpu_after, wall_after = me.cpu_times(), time.monotonic()
        cpu_used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        cpu_percent = 100 * cpu_used / (wall_after - wall_before)

        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            get_metrics(connection)
            latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        return Result(
            label=label,
            p50_ms=statistics.median(latencies),
            p99_ms=latencies[int(0.99 * (len(latencies) - 1))],
            max_ms=latencies[-1],
            scrapes=len(latencies),
            cpu_percent=cpu_percent,
            peak_rss_mb=peak_rss_mb(process.pid),
            series=series,
            bytes=len(body),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="1,8,64", help="simulated GPU counts for the demo (default 1,8,64)")
    parser.add_argument("--serve", action="store_true", help="measure `serve` on this machine's real GPUs")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency phase length (default 30)")
    parser.add_argument("--cpu-seconds", type=float, default=20.0, help="CPU phase length (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    options = parser.parse_args()

    runs: list[tuple[str, list[str]]]
    if options.serve:
        runs = [("serve (real GPUs)", ["serve"])]
    else:
        counts = [int(n) for n in options.gpus.split(",") if n.strip()]
        runs = [(f"demo, {n} GPU{'s' if n > 1 else ''}", ["demo", "--gpus", str(n)]) for n in counts]

    print(f"tpw-exporter scrape benchmark: {options.seconds:g} s of sequential scrapes, interval 1 s")
    header = (
        f"{'configuration':<22} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'scrapes':>8} "
        f"{'CPU %core':>9} {'RSS MB':>7} {'series':>7} {'bytes':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, args in runs:
        r = measure(label, args, options.seconds, options.cpu_seconds, options.warmup)
        print(
            f"{r.label:<22} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.max_ms:7.2f} {r.scrapes:8d} "
            f"{r.cpu_percent:9.2f} {r.peak_rss_mb:7.1f} {r.series:7d} {r.bytes:8d}",
            flush=True,
        )
    print("-" * len(header))
    print(f"{'target':<22} {'':>7} {'≤ 2':>7} {'':>7} {'':>8} {'≤ 2 (H100)':>9} {'≤ 65':>7}")
    print(
        f"{'nvitop-exporter, H100':<22} {3.0:7.2f} {18.5:7.2f} {'':>7} {'':>8} {3.75:9.2f} {65:7.0f} {108:7d}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
