"""What a scrape of tpw-exporter costs, as Prometheus sees it: latency tails, CPU, memory, gzip.

    python benchmarks/scrape.py                          # demo: 2 GPUs, and 64 GPUs with 4 endpoints
    python benchmarks/scrape.py --gpus 8 --endpoints 1 --seconds 20
    python benchmarks/scrape.py --serve                  # this machine's real GPUs (NVML + GPM)

For each configuration it starts `python -m exporter` (interval 1 s) and then:
1. CPU: one scrape a second, as Prometheus loads it (keep-alive, OpenMetrics, gzip), for --cpu-seconds;
   CPU time of the exporter's processes (server and collector) over wall time, in % of one core;
2. latency: scrapes at random moments (--rate a second on average, so they land at every phase of the
   tick) for --seconds on a new connection each, then as long on one keep-alive connection; p50, p99,
   p99.9 and max in ms. A back-to-back loop would dilute the scrapes that meet a tick; this does not;
3. memory: RSS of each process, and their PSS sum (pages shared by the forked pair counted once: what
   the node pays, and what a container's memory accounting charges);
4. gzip: body size plain and gzipped per format, and what compressing it costs the collector per tick.
With --endpoints K, K - 1 endpoints besides the demo's own engine serve real engine pages (vLLM, SGLang,
TGI fixtures) from a static HTTP server, so the tick parses them too. With --browser, the live page (`/`) is
open in headless chromium (Playwright, Debian's /usr/bin/chromium) the whole time, polling
/api/v1/history every second as it does for a user.
Figures, not pass/fail; the targets are printed beside them.
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import REPO, free_port, start_exporter, stop

FIXTURES = REPO / "tests" / "fixtures" / "engines"
ENDPOINT_PAGES = (("vllm_v1.prom", "vllm"), ("sglang.prom", "sglang"), ("tgi.prom", "tgi"))
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
TARGET_TAIL_MS = 2.0
TARGET_CPU_PERCENT = 1.5
TARGET_MEMORY_MB = 60.0


@dataclass
class Tail:
    p50: float
    p99: float
    p999: float
    max: float
    scrapes: int


def tail(latencies: list[float]) -> Tail:
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return Tail(statistics.median(ordered), quantile(0.99), quantile(0.999), ordered[-1], len(ordered))


def get(connection: http.client.HTTPConnection, headers: dict[str, str]) -> bytes:
    connection.request("GET", "/metrics", headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"/metrics answered {response.status}")
    return body


def scrape_randomly(
    port: int, seconds: float, rate: float, keep_alive: bool, headers: dict[str, str]
) -> Tail:
    latencies: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(random.uniform(0, 2 / rate))
        started = time.perf_counter()
        if not keep_alive:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        get(connection, headers)
        if not keep_alive:
            connection.close()
        latencies.append((time.perf_counter() - started) * 1000)
    connection.close()
    return tail(latencies)


def tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gzip_cost_ms(body: bytes) -> float:
    """Median time to gzip `body` at the exporter's level (what the collector pays once per tick)."""
    from exporter.published import gzip_bytes

    times = []
    for _ in range(20):
        started = time.perf_counter()
        gzip_bytes(body)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def endpoint_server(count: int) -> tuple[subprocess.Popen[bytes] | None, list[dict[str, str]], Path | None]:
    """A static HTTP server with `count` engine pages, and the endpoint config entries that scrape them."""
    if count <= 0:
        return None, [], None
    directory = Path(tempfile.mkdtemp(prefix="tpw-pages-"))
    endpoints = []
    for i in range(count):
        page, engine = ENDPOINT_PAGES[i % len(ENDPOINT_PAGES)]
        shutil.copy(FIXTURES / page, directory / f"{i}-{page}")
        endpoints.append(
            {"name": f"bench-{i}-{engine}", "url": f"/{i}-{page}", "engine": engine, "gpus": "all"}
        )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for endpoint in endpoints:
        endpoint["url"] = f"http://127.0.0.1:{port}{endpoint['url']}"
    time.sleep(0.5)
    return server, endpoints, directory


class LivePage:
    """The live page open in headless chromium, polling the exporter by itself (the page's JavaScript)."""

    ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

    def __init__(self, port: int) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path="/usr/bin/chromium", args=self.ARGS)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.polls = 0
        self.page.on("request", lambda r: self._count(r.url))
        self.page.goto(f"http://127.0.0.1:{port}/")
        self.page.wait_for_function("() => Number(document.body.dataset.tick) > 0")
        self.first_tick = self.tick()

    def _count(self, url: str) -> None:
        self.polls += "/api/v1/history" in url

    def tick(self) -> int:
        return int(self.page.evaluate("() => document.body.dataset.tick"))

    def close(self) -> str:
        seen = f"ticks {self.first_tick} → {self.tick()}, {self.polls} history requests"
        self.browser.close()
        self.playwright.stop()
        return seen


def measure(label: str, args: list[str], extra_endpoints: int, options: argparse.Namespace) -> None:
    server, endpoints, directory = endpoint_server(extra_endpoints)
    config = {"interval": 1.0, "endpoints": endpoints} if endpoints else {"interval": 1.0}
    process, port = start_exporter(args, config=config, quiet=True, tree=options.tree)
    prometheus = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    page: LivePage | None = None
    seen = ""
    try:
        time.sleep(options.warmup)  # GPM needs two ticks; the first gzip request turns compression on
        if options.browser:
            page = LivePage(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        get(connection, prometheus)  # the first gzip request of each format turns its compression on
        get(connection, {"Accept-Encoding": "gzip"})
        time.sleep(1.5)

        processes = tree(process.pid)
        cpu_before, wall_before = cpu_seconds(processes), time.monotonic()
        while time.monotonic() - wall_before < options.cpu_seconds:
            get(connection, prometheus)
            time.sleep(1.0)
        cpu_percent = 100 * (cpu_seconds(processes) - cpu_before) / (time.monotonic() - wall_before)

        bodies = {
            "text": get(connection, {}),
            "openmetrics": get(connection, {"Accept": PROMETHEUS_ACCEPT}),
        }
        compressed = {
            "text": get(connection, {"Accept-Encoding": "gzip"}),
            "openmetrics": get(connection, prometheus),
        }
        connection.close()
        fresh = scrape_randomly(port, options.seconds, options.rate, keep_alive=False, headers=prometheus)
        kept = scrape_randomly(port, options.seconds, options.rate, keep_alive=True, headers=prometheus)
        rss = [p.memory_info().rss / 2**20 for p in processes]
        pss = sum(pss_mb(p.pid) for p in processes)
        series = sum(1 for line in bodies["text"].decode().splitlines() if line and not line.startswith("#"))
    finally:
        if page is not None:
            seen = page.close()
        stop([process])
        if server is not None:
            server.terminate()
            server.wait()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    print(f"\n{label}: {series} series, {len(processes)} processes (server + collector)")
    if seen:
        print(f"  live page open in chromium all along: {seen}")
    print(f"  {'latency (ms)':<26} {'p50':>6} {'p99':>6} {'p99.9':>6} {'max':>6} {'scrapes':>8}")
    for name, result in (("new connection each", fresh), ("one keep-alive connection", kept)):
        print(
            f"  {name:<26} {result.p50:6.2f} {result.p99:6.2f} {result.p999:6.2f} {result.max:6.2f} "
            f"{result.scrapes:8d}"
        )
    print(f"  {'target':<26} {'':>6} {'':>6} {'≤ 2':>6} {'≤ 2':>6}")
    print(f"  CPU at one scrape a second: {cpu_percent:.2f} % of a core (target ≤ {TARGET_CPU_PERCENT:g} %)")
    print(
        f"  memory: RSS {' + '.join(f'{r:.1f}' for r in rss)} MB; PSS of the pair {pss:.1f} MB "
        f"(target ≤ {TARGET_MEMORY_MB:g} MB)"
    )
    for fmt in ("text", "openmetrics"):
        plain, packed = bodies[fmt], compressed[fmt]
        print(
            f"  gzip {fmt:<12} {len(plain) / 1024:7.1f} KB → {len(packed) / 1024:6.1f} KB "
            f"({100 * (1 - len(packed) / len(plain)):.0f} % less), {gzip_cost_ms(plain):.2f} ms per tick"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="2,64", help="simulated GPU counts for the demo (default 2,64)")
    parser.add_argument(
        "--endpoints",
        default="1,4",
        help="endpoints per GPU count, the demo engine included (default 1,4: 2 GPUs with 1, 64 with 4)",
    )
    parser.add_argument("--serve", action="store_true", help="measure `serve` on this machine's real GPUs")
    parser.add_argument(
        "--tree",
        type=Path,
        default=REPO,
        help="run the exporter package of another checkout (a baseline, e.g. an older commit's tree)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="each latency phase (default 60)")
    parser.add_argument("--rate", type=float, default=10.0, help="latency scrapes a second (default 10)")
    parser.add_argument("--cpu-seconds", type=float, default=30.0, help="CPU phase (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument(
        "--browser",
        action="store_true",
        help="keep the live page (/) open in headless chromium meanwhile (Playwright; /usr/bin/chromium)",
    )
    options = parser.parse_args()

    print(
        f"tpw-exporter scrape benchmark: interval 1 s; {options.rate:g} scrapes/s at random phases for "
        f"{options.seconds:g} s per connection mode; Prometheus's headers (OpenMetrics, gzip)"
    )
    if options.serve:
        measure("serve, this machine's GPUs", ["serve"], 0, options)
        return 0
    counts = [int(n) for n in options.gpus.split(",") if n.strip()]
    endpoint_counts = [int(n) for n in options.endpoints.split(",") if n.strip()]
    for i, gpus in enumerate(counts):
        endpoints = endpoint_counts[min(i, len(endpoint_counts) - 1)]
        label = f"demo, {gpus} simulated GPUs, {endpoints} endpoint{'s' if endpoints > 1 else ''}"
        measure(label, ["demo", "--gpus", str(gpus)], endpoints - 1, options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
