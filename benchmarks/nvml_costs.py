"""What each NVML call of a tick costs on this node, in wall time and CPU, and what a whole tick costs.

Part 1 calls, on every GPU in turn, each NVML function the NVML source calls per tick (`--repeat` times,
arguments as the source passes them) and prints per call the median and p99 wall time and the mean CPU
time of the calling thread (user + system: in a VM most of an NVML call is the driver's ioctl, which
counts). Part 2 runs the NVML source's own tick (`NvmlSource.collect`, one worker thread per GPU, GPM on
where supported) `--ticks` times and prints its wall time and the CPU of the whole process per tick, so
the Python around the calls is the difference. Needs a GPU and its driver:

    python benchmarks/nvml_costs.py [--repeat 200] [--ticks 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pynvml

from exporter.sources.nvml import (
    CLOCK_MEM,
    CLOCK_SM,
    FIELD_POWER_INSTANT,
    FIELD_TOTAL_ENERGY,
    GPM_RATE_METRICS,
    GPM_RATIO_METRICS,
    TEMPERATURE_GPU,
    NvmlSource,
)

Call = Callable[[Any], object]


def per_tick_calls() -> dict[str, Call]:
    """The NVML source's per-tick calls by name, each a function of the device handle."""
    return {
        "field values (power + energy)": lambda h: pynvml.nvmlDeviceGetFieldValues(
            h, [FIELD_POWER_INSTANT, FIELD_TOTAL_ENERGY]
        ),
        "enforced power limit": pynvml.nvmlDeviceGetEnforcedPowerLimit,
        "utilization rates": pynvml.nvmlDeviceGetUtilizationRates,
        "memory info": pynvml.nvmlDeviceGetMemoryInfo,
        "SM clock": lambda h: pynvml.nvmlDeviceGetClockInfo(h, CLOCK_SM),
        "memory clock": lambda h: pynvml.nvmlDeviceGetClockInfo(h, CLOCK_MEM),
        "temperature": lambda h: pynvml.nvmlDeviceGetTemperature(h, TEMPERATURE_GPU),
        "clock event reasons": pynvml.nvmlDeviceGetCurrentClocksEventReasons,
        "compute processes": pynvml.nvmlDeviceGetComputeRunningProcesses,
    }


def alternatives() -> dict[str, Call]:
    """Other ways to read power and energy, to tell which part of the field-values call costs what."""
    return {
        "field value: power only": lambda h: pynvml.nvmlDeviceGetFieldValues(h, [FIELD_POWER_INSTANT]),
        "field value: energy only": lambda h: pynvml.nvmlDeviceGetFieldValues(h, [FIELD_TOTAL_ENERGY]),
        "nvmlDeviceGetPowerUsage": pynvml.nvmlDeviceGetPowerUsage,
        "nvmlDeviceGetTotalEnergyConsumption": pynvml.nvmlDeviceGetTotalEnergyConsumption,
    }


def gpm_pair(handle: Any) -> Call | None:
    """One GPM step as the source takes it (a sample, then the metrics between it and the previous one)."""
    try:
        if not pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            return None
    except pynvml.NVMLError:
        return None
    samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    pynvml.nvmlGpmSampleGet(handle, samples[0])
    ids = list(GPM_RATIO_METRICS.values()) + list(GPM_RATE_METRICS.values())
    state = {"previous": 0}

    def step(h: Any) -> object:
        current = 1 - state["previous"]
        pynvml.nvmlGpmSampleGet(h, samples[current])
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(ids)
        request.sample1 = samples[state["previous"]]
        request.sample2 = samples[current]
        for slot, metric_id in enumerate(ids):
            request.metrics[slot].metricId = metric_id
        state["previous"] = current
        return pynvml.nvmlGpmMetricsGet(request)

    return step


def measure(call: Call, handle: Any, repeat: int) -> tuple[float, float, float] | None:
    """(median wall µs, p99 wall µs, mean thread-CPU µs) of `repeat` calls; None if the call fails."""
    try:
        call(handle)
    except pynvml.NVMLError:
        return None
    walls = []
    cpu_start = time.thread_time()
    for _ in range(repeat):
        started = time.perf_counter()
        call(handle)
        walls.append(time.perf_counter() - started)
    cpu = (time.thread_time() - cpu_start) / repeat
    walls.sort()
    return statistics.median(walls) * 1e6, walls[min(len(walls) - 1, int(0.99 * len(walls)))] * 1e6, cpu * 1e6


def source_ticks(ticks: int, interval: float) -> tuple[float, float]:
    """(mean wall ms, mean process CPU ms) of the NVML source's own tick, one tick per `interval`."""
    source = NvmlSource(profiling=True, gpu_timeout_seconds=0.8 * interval)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(source.collect())
        walls, cpus = [], []
        for _ in range(ticks):
            cpu, started = time.process_time(), time.perf_counter()
            loop.run_until_complete(source.collect())
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
            time.sleep(max(0.0, interval - walls[-1]))
        return statistics.fmean(walls) * 1e3, statistics.fmean(cpus) * 1e3
    finally:
        loop.run_until_complete(source.close())
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="calls per function and GPU (default 200)")
    parser.add_argument("--ticks", type=int, default=100, help="source ticks in part 2 (default 100)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (default 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.ticks < 1 or not args.interval > 0:
        parser.error("--repeat and --ticks must be ≥ 1, --interval > 0")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print(f"nvml_costs: NVML unavailable: {exc}", file=sys.stderr)
        return 2
    count = pynvml.nvmlDeviceGetCount()
    driver = pynvml.nvmlSystemGetDriverVersion()
    print(
        f"{count} GPU(s), driver {driver}; {args.repeat} calls of each per GPU (the last four are "
        "alternatives, not part of a tick)"
    )
    print(f"{'call':<32} {'gpu':>3} {'wall p50 µs':>12} {'wall p99 µs':>12} {'CPU µs':>8}")
    per_gpu_cpu = [0.0] * count
    for index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        calls: dict[str, Call | None] = {**per_tick_calls(), "GPM sample + metrics": gpm_pair(handle)}
        for name, call in [*calls.items(), *alternatives().items()]:
            result = measure(call, handle, args.repeat) if call is not None else None
            if result is None:
                print(f"{name:<32} {index:>3} {'unsupported':>12}")
                continue
            p50, p99, cpu = result
            if name in calls:
                per_gpu_cpu[index] += cpu
            print(f"{name:<32} {index:>3} {p50:>12.0f} {p99:>12.0f} {cpu:>8.0f}")
    for index, cpu in enumerate(per_gpu_cpu):
        print(f"GPU {index}: the calls of one tick cost {cpu / 1000:.2f} ms of CPU")
    wall_ms, cpu_ms = source_ticks(args.ticks, args.interval)
    calls_ms = sum(per_gpu_cpu) / 1000
    print(
        f"NVML source tick ({count} GPU(s), {args.ticks} ticks every {args.interval:g} s): "
        f"wall {wall_ms:.2f} ms, process CPU {cpu_ms:.2f} ms per tick = "
        f"{cpu_ms / 10 / args.interval:.2f} % of a core; the calls alone {calls_ms:.2f} ms, "
        f"the Python around them ≈ {cpu_ms - calls_ms:.2f} ms"
    )
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
