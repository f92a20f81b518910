"""Hostile serving endpoints against the real exporter: none may stall it or blind it (issue 13).

    python benchmarks/hostile.py                          # every case, 20 s each, interval 1 s
    python benchmarks/hostile.py --seconds 5 --cases gzip-bomb,hung
    python benchmarks/hostile.py --together               # every hostile endpoint in one exporter at once
    python benchmarks/hostile.py --tree /path/to/checkout # the same against another checkout (a baseline)
    python benchmarks/hostile.py --gil                    # why not parse in a thread: GIL contention

Each case starts `python -m exporter demo` (2 simulated GPUs and the demo's own vLLM engine) with two more
endpoints served over HTTP on loopback: `healthy`, a vLLM page whose counters advance, and the case's
hostile endpoint. It reads `/metrics` four times a second for --seconds and prints one row:

  ticks/s      collection ticks a second (`tpw_ticks_total`); the interval's rate when nothing stalls
  max tick     the longest `tpw_tick_duration_seconds` seen
  CPU %        the machine's busy CPU over the run, in % of one core: the exporter, its page parsers, the
               endpoints' HTTP servers and this reader (compare runs on the same idle machine)
  RSS / PSS    peak RSS of the largest process of the exporter's tree, and peak PSS of the whole tree
               (server, collector and, from issue 13 on, the page parsers and their fork server), in MB
  out KB       the largest `/metrics` body
  up, reasons  the hostile endpoint's `tpw_endpoint_up` at the end, and the reasons whose
               `tpw_endpoint_scrape_errors_total` or `tpw_endpoint_dropped_series_total` grew
  healthy      whether the healthy endpoint was up with its series in every read after its first
  bad nums     samples that are NaN or infinite anywhere, or negative in the hostile endpoint's series
  verdict      pass: ticks ≥ 90 % of the interval's rate, no tick longer than the interval, the case's
               expected up and reason, healthy kept, no bad number, output under 1 MiB, PSS under 400 MB

With --together every hostile endpoint runs in one exporter beside `healthy`: the tick and memory columns
are that run's, the state columns each endpoint's. Exit code 1 when a row fails.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from common import REPO, start_exporter, stop

sys.path.insert(0, str(REPO / "tests"))
from engine_server import Behaviour, EngineServer  # the tests' loopback engine server

MIB = 1024 * 1024
OUTPUT_LIMIT_BYTES = MIB
PSS_LIMIT_MB = 400.0
POLL_SECONDS = 0.25
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ---------------------------------------------------------------------------------------------------------
# Pages


def fill(size: int, line: Callable[[int], str]) -> bytes:
    """Lines `line(0)`, `line(1)`, … up to `size` bytes."""
    parts: list[str] = []
    total = 0
    index = 0
    while True:
        text = line(index)
        if total + len(text) > size:
            return "".join(parts).encode()
        parts.append(text)
        total += len(text)
        index += 1


def valid_vllm(size: int) -> bytes:
    """Valid vLLM lines, one model, many data-parallel ranks: every line is one the profile reads."""
    return fill(size, lambda i: f'vllm:generation_tokens_total{{engine="{i}",model_name="m"}} {i}\n')


def slow_vllm(size: int) -> bytes:
    """Valid vLLM lines with 20 empty labels each: about 1 s to parse 4 MiB on one 2020s core."""
    labels = ",".join(f'l{k}=""' for k in range(20))
    return fill(size, lambda i: f'vllm:generation_tokens_total{{{labels},model_name="m"}} {i}\n')


def many_models(count: int) -> bytes:
    return "".join(
        f'vllm:generation_tokens_total{{model_name="model-{i}"}} {i}\n'
        f'vllm:num_requests_running{{model_name="model-{i}"}} 1\n'
        for i in range(count)
    ).encode()


def long_label(length: int) -> bytes:
    return f'vllm:generation_tokens_total{{model_name="{"x" * length}"}} 1\n'.encode()


def gzip_bomb() -> bytes:
    """About 45 KB of gzip that inflates to 15 MiB of one valid vLLM line repeated."""
    line = b'vllm:num_requests_running{model_name="m"} 1\n'
    return gzip.compress(line * (15 * MIB // len(line)), compresslevel=9)


INVALID_VALUES = (
    b'vllm:generation_tokens_total{model_name="nan"} NaN\n'
    b'vllm:generation_tokens_total{model_name="neg-inf"} -Inf\n'
    b'vllm:generation_tokens_total{model_name="negative"} -3\n'
    b'vllm:prompt_tokens_total{model_name="inf"} +Inf\n'
    b'vllm:generation_tokens_total{model_name="huge"} 1e300\n'
    b'vllm:kv_cache_usage_perc{model_name="ratio"} +Inf\n'
    b'vllm:kv_cache_usage_perc{model_name="ratio"} 0.5\n'
    b'vllm:generation_tokens_total{model_name="fine"} 10\n'
)


def healthy_page(started: float) -> Callable[[], bytes]:
    def page() -> bytes:
        tokens = int((time.monotonic() - started) * 1000)
        return (
            f'vllm:generation_tokens_total{{model_name="llama"}} {tokens}\n'
            f'vllm:prompt_tokens_total{{model_name="llama"}} {3 * tokens}\n'
            f'vllm:num_requests_running{{model_name="llama"}} 8\n'
            f'vllm:kv_cache_usage_perc{{model_name="llama"}} 0.4\n'
        ).encode()

    return page


# ---------------------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    behaviour: Callable[[], Behaviour]
    up: bool  # expected tpw_endpoint_up at the end
    reason: str  # expected among the reasons that grew
    endpoint: dict[str, object] = field(default_factory=dict)  # extra endpoint settings (main's keys only)


def _redirect_loop(server: EngineServer) -> None:
    server.behaviour.headers["Location"] = server.url


CASES: tuple[Case, ...] = (
    Case(
        "valid-15MiB",
        "15 MiB of valid vLLM lines",
        lambda: Behaviour(valid_vllm(15 * MIB)),
        False,
        "too_large",
    ),
    Case(
        "gzip-bomb",
        "45 KB gzip inflating to 15 MiB",
        lambda: Behaviour(gzip_bomb(), headers={"Content-Encoding": "gzip"}),
        False,
        "too_large",
    ),
    Case(
        "slow-parse",
        "4 MiB valid page, ~1 s to parse, timeout 0.25 s",
        lambda: Behaviour(slow_vllm(4 * MIB - 64 * 1024)),
        False,
        "timeout",
        {"timeout_seconds": 0.25},
    ),
    Case(
        "100k-models", "100,000 models (5 MiB)", lambda: Behaviour(many_models(100_000)), False, "too_large"
    ),
    Case(
        "5k-models", "5,000 models (0.5 MiB)", lambda: Behaviour(many_models(5_000)), True, "too_many_series"
    ),
    Case(
        "15MiB-label", "one 15 MiB label value", lambda: Behaviour(long_label(15 * MIB)), False, "too_large"
    ),
    Case("1KiB-label", "a 1 KiB model name", lambda: Behaviour(long_label(1024)), True, "label_too_long"),
    Case(
        "invalid",
        "NaN, -Inf, -3, 1e300 counters, +Inf ratio",
        lambda: Behaviour(INVALID_VALUES),
        True,
        "invalid_value",
    ),
    Case("hung", "accepts, never answers", lambda: Behaviour(b"", delay=3600), False, "timeout"),
    Case(
        "trickle",
        "16 bytes every 0.1 s",
        lambda: Behaviour(valid_vllm(64 * 1024), trickle_seconds=0.1),
        False,
        "timeout",
    ),
    Case(
        "endless",
        "chunked body that never ends",
        lambda: Behaviour(b"", stream_forever=True),
        False,
        "too_large",
    ),
    Case("redirect-loop", "302 to itself", lambda: Behaviour(b"", status=302), False, "redirect"),
)


# ---------------------------------------------------------------------------------------------------------
# Measuring


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.split("\n"):
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            head, _, value = line.rpartition(" ")
            labels = dict(LABEL.findall(head[len(name) :])) if "{" in head else {}
            out.append((labels, float(value)))
    return out


def value_of(text: str, name: str, **labels: str) -> float | None:
    for got, value in samples(text, name):
        if all(got.get(key) == wanted for key, wanted in labels.items()):
            return value
    return None


def reasons(text: str, endpoint: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in ("tpw_endpoint_scrape_errors_total", "tpw_endpoint_dropped_series_total"):
        for labels, value in samples(text, family):
            if labels.get("endpoint") == endpoint:
                counts[labels.get("reason", "")] = value
    return counts


def bad_numbers(text: str, endpoint: str) -> int:
    count = 0
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        try:
            value = float(line.rpartition(" ")[2])
        except ValueError:
            continue
        if not math.isfinite(value) or (value < 0 and f'endpoint="{endpoint}"' in line):
            count += 1
    return count


def tree_memory(pid: int) -> tuple[float, float]:
    """(largest RSS of one process, PSS of the whole tree), MB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    rss = pss = 0.0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss = max(rss, info.rss / MIB)
        pss += info.pss / MIB
    return rss, pss


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: every core, every process). A page parser
    ended at its time limit is reaped by the kernel (its fork server ignores SIGCHLD), so its CPU is in no
    surviving process's account: only the machine's total sees it."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """What one exporter run measured."""

    ticks_per_second: float = 0.0
    max_tick: float = 0.0
    peak_rss: float = 0.0
    peak_pss: float = 0.0
    max_output: int = 0
    reads: int = 0
    cpu_percent: float = 0.0  # the machine's busy CPU over the measured time, in % of one core


@dataclass
class Finding:
    up: float | None = None
    reasons: set[str] = field(default_factory=set)
    bad: int = 0


def measure(port: int, pid: int, seconds: float, hostile: list[str]) -> tuple[Run, dict[str, Finding], bool]:
    """Read /metrics every POLL_SECONDS for `seconds`; the run's figures, each hostile endpoint's findings,
    and whether the healthy endpoint kept its series in every read after its first."""
    run = Run()
    findings = {name: Finding() for name in hostile}
    first_reasons: dict[str, dict[str, float]] = {}
    healthy_seen = False
    healthy_kept = True
    first: tuple[float, float] | None = None
    last: tuple[float, float] | None = None
    next_memory = 0.0
    cpu_started, started = machine_cpu_seconds(), time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        time.sleep(POLL_SECONDS)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read()
        connection.close()
        now = time.monotonic()
        text = body.decode("utf-8", "replace")
        run.reads += 1
        run.max_output = max(run.max_output, len(body))
        ticks = value_of(text, "tpw_ticks_total")
        if ticks is not None:
            first = first or (now, ticks)
            last = (now, ticks)
        run.max_tick = max(run.max_tick, value_of(text, "tpw_tick_duration_seconds") or 0.0)
        healthy = value_of(text, "tpw_endpoint_up", endpoint="healthy") == 1 and (
            value_of(text, "tpw_endpoint_generation_tokens_total", endpoint="healthy") is not None
        )
        if healthy:
            healthy_seen = True
        elif healthy_seen:
            healthy_kept = False
        for name in hostile:
            finding = findings[name]
            finding.up = value_of(text, "tpw_endpoint_up", endpoint=name)
            counts = reasons(text, name)
            baseline = first_reasons.setdefault(name, {})
            finding.reasons |= {reason for reason, count in counts.items() if count > baseline.get(reason, 0)}
            finding.bad = max(finding.bad, bad_numbers(text, name))
        if now >= next_memory:
            rss, pss = tree_memory(pid)
            run.peak_rss, run.peak_pss = max(run.peak_rss, rss), max(run.peak_pss, pss)
            next_memory = now + 1.0
    run.cpu_percent = (machine_cpu_seconds() - cpu_started) / (time.monotonic() - started) * 100
    if first is not None and last is not None and last[0] > first[0]:
        run.ticks_per_second = (last[1] - first[1]) / (last[0] - first[0])
    return run, findings, healthy_seen and healthy_kept


def exporter_run(
    cases: list[Case], seconds: float, interval: float, tree: Path
) -> tuple[Run, dict[str, Finding], bool]:
    """One exporter with `healthy` and one endpoint per case; measured for `seconds`."""
    servers: list[EngineServer] = []
    healthy = EngineServer(Behaviour(healthy_page(time.monotonic())))
    servers.append(healthy)
    endpoints: list[dict[str, object]] = [
        {"name": "healthy", "url": healthy.url, "engine": "vllm", "gpus": [0]}
    ]
    for case in cases:
        server = EngineServer(case.behaviour())
        servers.append(server)
        if case.name == "redirect-loop":
            _redirect_loop(server)
        endpoints.append({"name": f"hostile-{case.name}", "url": server.url, "gpus": [1], **case.endpoint})
    config = {"interval": interval, "endpoints": endpoints}
    process, port = start_exporter(["demo", "--gpus", "2"], config=config, quiet=True, tree=tree)
    try:
        return measure(port, process.pid, seconds, [f"hostile-{case.name}" for case in cases])
    finally:
        stop([process])
        for server in servers:
            server.close()


@dataclass(frozen=True)
class Row:
    case: Case
    run: Run
    finding: Finding
    healthy: bool
    interval: float

    @property
    def failures(self) -> list[str]:
        failures = []
        if self.run.ticks_per_second < 0.9 / self.interval:
            failures.append("ticks")
        if self.run.max_tick > self.interval:
            failures.append("tick length")
        if self.finding.up != (1.0 if self.case.up else 0.0):
            failures.append("up")
        if self.case.reason not in self.finding.reasons:
            failures.append("reason")
        if not self.healthy:
            failures.append("healthy lost")
        if self.finding.bad:
            failures.append("bad numbers")
        if self.run.max_output > OUTPUT_LIMIT_BYTES:
            failures.append("output")
        if self.run.peak_pss > PSS_LIMIT_MB:
            failures.append("memory")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures


HEADER = (
    f"{'case':<14} {'ticks/s':>7} {'max tick':>8} {'CPU %':>6} {'RSS':>6} {'PSS':>6} {'out KB':>7} {'up':>3} "
    f"{'reasons':<28} {'healthy':>7} {'bad':>4}  verdict"
)


def format_row(row: Row) -> str:
    up = "-" if row.finding.up is None else f"{row.finding.up:.0f}"
    verdict = "pass" if row.passed else "FAIL: " + ", ".join(row.failures)
    return (
        f"{row.case.name:<14} {row.run.ticks_per_second:>7.2f} {row.run.max_tick:>7.2f}s "
        f"{row.run.cpu_percent:>6.1f} "
        f"{row.run.peak_rss:>6.0f} {row.run.peak_pss:>6.0f} {row.run.max_output / 1024:>7.0f} {up:>3} "
        f"{','.join(sorted(row.finding.reasons)) or '-':<28} {'yes' if row.healthy else 'NO':>7} "
        f"{row.finding.bad:>4}  {verdict}"
    )


def run_cases(
    cases: list[Case], seconds: float, interval: float, together: bool, tree: Path = REPO, echo: bool = True
) -> list[Row]:
    """One row per case: each in its own exporter, or all in one (`together`)."""
    rows: list[Row] = []
    if echo:
        print(HEADER, flush=True)
    groups = [cases] if together else [[case] for case in cases]
    for group in groups:
        run, findings, healthy = exporter_run(group, seconds, interval, tree)
        for case in group:
            row = Row(case, run, findings[f"hostile-{case.name}"], healthy, interval)
            rows.append(row)
            if echo:
                print(format_row(row), flush=True)
    return rows


def gil_contention() -> None:
    """Why pages are not parsed in a thread of the collector (exporter/sources/page_workers.py): 300 calls
    of 0.1 ms that release the GIL, the shape of the NVML source's per-GPU reads, alone and beside one
    thread parsing a 4 MiB page of vLLM lines."""
    sys.path.insert(0, str(REPO))
    from exporter.engines import PROFILES
    from exporter.promtext import parse_selected

    text = valid_vllm(4 * MIB).decode()
    wanted = PROFILES["vllm"].wanted_names()

    def calls(count: int = 300) -> float:
        started = time.perf_counter()
        for _ in range(count):
            time.sleep(0.0001)  # a 0.1 ms call that releases the GIL, as an NVML call into the driver does
        return (time.perf_counter() - started) * 1000

    alone = min(calls() for _ in range(5))
    parser = threading.Thread(target=parse_selected, args=(text, wanted))
    parser.start()
    time.sleep(0.05)
    beside = calls()
    parser.join()
    print(f"300 GIL-releasing calls: {alone:.1f} ms alone, {beside:.1f} ms beside one thread parsing 4 MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per exporter run")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--together", action="store_true", help="every hostile endpoint in one exporter")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose exporter runs")
    parser.add_argument("--gil", action="store_true", help="only measure GIL contention from a parse thread")
    args = parser.parse_args()
    if args.gil:
        gil_contention()
        return 0
    wanted = [name for name in args.cases.split(",") if name]
    unknown = set(wanted) - {case.name for case in CASES}
    if unknown:
        parser.error(
            f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CASES)}"
        )
    cases = [case for case in CASES if not wanted or case.name in wanted]
    print(
        f"{len(cases)} case(s), {args.seconds:g} s each, interval {args.interval:g} s, "
        f"{psutil.cpu_count()} cores, tree {args.tree}"
        + (" (all hostile endpoints in one exporter)" if args.together else "")
    )
    for case in cases:
        print(f"  {case.name:<14} {case.what}")
    rows = run_cases(cases, args.seconds, args.interval, args.together, args.tree)
    failed = [row.case.name for row in rows if not row.passed]
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
