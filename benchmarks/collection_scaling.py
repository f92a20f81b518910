"""How the NVML tick's collection time grows with the number of GPUs (target: ≤ 1.5× at 8 GPUs vs 1).

    python benchmarks/collection_scaling.py            # modelled GPUs: the test suite's pynvml fake with the
                                                       # per-call latencies measured on an H100 (ctypes calls
                                                       # release the GIL; time.sleep does too)
    python benchmarks/collection_scaling.py --real     # this machine's real GPUs: 1, 2, 4, … and all

Prints the median NvmlSource.collect() time over --ticks ticks per GPU count and the ratio to one GPU.
With --real, each count is a `--devices` selection (GPUs 0..N-1), and for each the script also runs
`tpw-exporter serve --devices …` and scrapes /metrics at random phases of its tick (new connection each,
~10 a second for --scrape-seconds): p50, p99 and max latency as Prometheus would see them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import scrape_at_random_phases, start_exporter, stop

from exporter.sources.nvml import NvmlSource

# Median per-call cost on an H100 (docs/h100-reference.md, "Timing and cadence facts"), seconds.
CALL_SECONDS = {
    "nvmlDeviceGetFieldValues": 0.0032,  # power + energy in one call: the energy counter is not cached
    "nvmlGpmSampleGet": 0.000055,
    "nvmlGpmMetricsGet": 0.0010,
    "nvmlDeviceGetMemoryInfo": 0.00001,
    "nvmlDeviceGetComputeRunningProcesses": 0.000009,
}
DEFAULT_CALL_SECONDS = 0.000003  # cached getters: utilisation, clocks, temperature, limits


class LatencyNvml:
    """Wraps the pynvml fake so every call takes as long as it does on the real driver."""

    def __init__(self, fake: Any) -> None:
        self._fake = fake

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._fake, name)
        if not callable(value) or not name.startswith("nvml"):
            return value
        delay = CALL_SECONDS.get(name, DEFAULT_CALL_SECONDS)

        def call(*args: Any, _value: Callable[..., Any] = value) -> Any:
            time.sleep(delay)
            return _value(*args)

        return call


def modelled_source(gpus: int) -> NvmlSource:
    from fake_nvml import Clock, FakeGpu, FakeNvml

    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(gpus)], Clock())
    return NvmlSource(LatencyNvml(fake), gpu_timeout_seconds=1.0)  # type: ignore[arg-type]


async def median_collect_ms(source: NvmlSource, ticks: int) -> float:
    await source.collect()  # initialisation and the first GPM sample
    durations = []
    for _ in range(ticks):
        started = time.perf_counter()
        await source.collect()
        durations.append(1000 * (time.perf_counter() - started))
        await asyncio.sleep(0.01)
    await source.close()
    return statistics.median(durations)


def serve_scrape_latency(devices: list[int], seconds: float) -> dict[str, float]:
    """Latency of /metrics from `serve --devices …` scraped at random phases of its 1 s tick."""
    args = ["serve", "--interval", "1", "--devices", ",".join(map(str, devices))]
    process, port = start_exporter(args, quiet=True)
    try:
        time.sleep(2.5)  # GPM windows from the second tick on
        return scrape_at_random_phases(port, seconds)
    finally:
        stop([process], timeout=10)


def real(ticks: int, scrape_seconds: float) -> int:
    import pynvml

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    pynvml.nvmlShutdown()
    sizes = sorted({n for n in (1, 2, 4, 8, 16) if n <= count} | {count})
    print(f"real GPUs on this machine: {count} × {name!s}; --devices 0..N-1 for each N")
    print(
        f"{'GPUs':>5} {'median collect ms':>18} {'× one GPU':>10} "
        f"{'scrape p50':>11} {'p99':>7} {'max':>7} {'n':>5}"
    )
    baseline = None
    for size in sizes:
        devices = list(range(size))
        ms = asyncio.run(median_collect_ms(NvmlSource(gpu_timeout_seconds=1.0, devices=devices), ticks))
        baseline = baseline or ms
        latency = serve_scrape_latency(devices, scrape_seconds)
        print(
            f"{size:>5} {ms:18.2f} {ms / baseline:10.2f} {latency['p50']:11.2f} {latency['p99']:7.2f} "
            f"{latency['max']:7.2f} {int(latency['scrapes']):>5}"
        )
    print("target: ≤ 1.50× at 8 GPUs; scrape latency in ms, new connection per scrape, random phases")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="1,2,4,8,16", help="modelled GPU counts (default 1,2,4,8,16)")
    parser.add_argument("--ticks", type=int, default=50, help="ticks per count (default 50)")
    parser.add_argument("--real", action="store_true", help="measure this machine's real GPUs")
    parser.add_argument(
        "--scrape-seconds", type=float, default=15.0, help="with --real: scrape phase per count (default 15)"
    )
    options = parser.parse_args()

    if options.real:
        return real(options.ticks, options.scrape_seconds)

    counts = [int(n) for n in options.gpus.split(",")]
    print(
        "modelled NVML latencies per GPU per tick: "
        "field values (power+energy) 3.2 ms, GPM 1.06 ms, rest ~0.05 ms"
    )
    print(f"{'GPUs':>5} {'median collect ms':>18} {'× one GPU':>10}")
    baseline = None
    for n in counts:
        ms = asyncio.run(median_collect_ms(modelled_source(n), options.ticks))
        baseline = baseline or ms
        print(f"{n:>5} {ms:18.2f} {ms / baseline:10.2f}")
    print(
        "target: ≤ 1.50× at 8 GPUs. GPUs are read concurrently, one worker thread each, but every GPM call "
        "runs on one thread (NVML's GPM calls are not thread-safe), so the GPM part grows with the count"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
