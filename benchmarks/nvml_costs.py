"""What each NVML call of a tick costs on this node, in wall time and CPU, and what a whole tick costs.

Part 1 calls, on every GPU in turn, each NVML function the NVML source calls per tick (`--repeat` times,
arguments as the source passes them) and prints per call the median and p99 wall time and the mean CPU
time of the calling thread (user + system: in a VM most of an NVML call is the driver's ioctl, which
counts). It does the same for the GPU-health calls (issue 14): those read every tick (the PCIe link) and
those of the health read (ECC, remapped rows, power limit, PCIe maximum and replays, NVLink states, byte
counters and error totals), read once every `nvml.health_interval_seconds` (30 s), and it measures
the CPU of a thread waiting for XID events (`nvmlEventSetWait_v2`, 0.5 s timeout, as the source waits).
Then, per GPU, what the health fields add to a tick: the new per-tick calls plus the health read divided
by the ticks between two reads. Part 2 runs the NVML source's own tick (`NvmlSource.collect`, one worker
thread per GPU, GPM on where supported) `--ticks` times, once without the health fields (as before issue
14) and once with them, and prints the wall time and the CPU of the whole process per tick (mean and
worst: the worst tick has the health read), so the Python around the calls is the difference. Part 3
(issue 14, part 2) measures the per-process calls (`nvmlDeviceGetProcessUtilization`, which the source reads
every tick on a GPU with compute processes; NOT_FOUND, no sample since the timestamp, is an answer and is
timed too) and the MIG calls: the mode (health cadence) on every GPU, printing "MIG: off" where MIG is off;
where it is on, the enumeration (health cadence) and per MIG device its memory and processes (every tick)
and a GPM window of its GPU instance (`nvmlGpmMigSampleGet` + metrics, every tick). Needs a GPU and its
driver:

    python benchmarks/nvml_costs.py [--repeat 200] [--ticks 100] [--health-interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pynvml

from exporter.sources.nvml import (
    ALL_LINKS,
    CLOCK_MEM,
    CLOCK_SM,
    ECC_COUNTERS,
    ECC_TYPES,
    EVENT_XID,
    FIELD_NVLINK_LINK_COUNT,
    FIELD_NVLINK_RX,
    FIELD_NVLINK_TX,
    FIELD_POWER_INSTANT,
    FIELD_TOTAL_ENERGY,
    GPM_RATE_METRICS,
    GPM_RATIO_METRICS,
    NVLINK_ACTIVE,
    NVLINK_ERROR_COUNTERS,
    NVLINK_ERROR_DL_FIELDS,
    NVLINK_ERROR_TOTAL_FIELDS,
    RETIREMENT_CAUSES,
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


def health_tick_calls() -> dict[str, Call]:
    """The GPU-health calls the source makes every tick."""
    return {
        "PCIe link generation": pynvml.nvmlDeviceGetCurrPcieLinkGeneration,
        "PCIe link width": pynvml.nvmlDeviceGetCurrPcieLinkWidth,
    }


def _checked_fields(handle: Any, fields: list[Any]) -> object:
    """Field values, raising like a getter when a field itself is not supported (its nvmlReturn)."""
    values = pynvml.nvmlDeviceGetFieldValues(handle, fields)
    for value in values:
        if value.nvmlReturn != 0:
            raise pynvml.NVMLError(value.nvmlReturn)
    return values


def _supported(handle: Any, fields: list[Any]) -> bool:
    try:
        _checked_fields(handle, fields)
    except pynvml.NVMLError:
        return False
    return True


def nvlink_links(handle: Any) -> list[int]:
    """The links whose state NVML reports, as the source finds them."""
    count = getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)
    try:
        (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [FIELD_NVLINK_LINK_COUNT])
        if value.nvmlReturn == 0:
            count = int(value.value.uiVal)
    except pynvml.NVMLError:
        pass
    links = []
    for link in range(count):
        try:
            pynvml.nvmlDeviceGetNvLinkState(handle, link)
            links.append(link)
        except pynvml.NVMLError:
            continue
    return links


def _ecc(handle: Any, error_type: int, counter_type: int) -> object:
    return pynvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)


def _retired_pages(handle: Any, cause: int) -> object:
    return pynvml.nvmlDeviceGetRetiredPages(handle, cause)


def health_read_calls(handle: Any) -> dict[str, Call]:
    """The calls of one health read, by name (each NVLink one covering every link, as the source reads)."""
    calls: dict[str, Call] = {
        f"ECC {kind} {counter}": partial(_ecc, error_type=error_type, counter_type=counter_type)
        for kind, error_type in ECC_TYPES.items()
        for counter, counter_type in ECC_COUNTERS.items()
    }
    calls.update(
        {
            f"retired pages {cause}": partial(_retired_pages, cause=source)
            for cause, source in RETIREMENT_CAUSES.items()
        }
    )
    calls.update(
        {
            "retired pages pending": pynvml.nvmlDeviceGetRetiredPagesPendingStatus,
            "remapped rows": pynvml.nvmlDeviceGetRemappedRows,
            "default power limit": pynvml.nvmlDeviceGetPowerManagementDefaultLimit,
            "PCIe max generation": pynvml.nvmlDeviceGetMaxPcieLinkGeneration,
            "PCIe max width": pynvml.nvmlDeviceGetMaxPcieLinkWidth,
            "PCIe replay counter": pynvml.nvmlDeviceGetPcieReplayCounter,
        }
    )
    links = nvlink_links(handle)
    if links:
        up = [link for link in links if pynvml.nvmlDeviceGetNvLinkState(handle, link) == NVLINK_ACTIVE]
        calls[f"NVLink states ({len(links)} links)"] = lambda h: [
            pynvml.nvmlDeviceGetNvLinkState(h, link) for link in links
        ]
        calls["NVLink data bytes (all links)"] = lambda h: _checked_fields(
            h, [(FIELD_NVLINK_TX, ALL_LINKS), (FIELD_NVLINK_RX, ALL_LINKS)]
        )
        totals = list(NVLINK_ERROR_TOTAL_FIELDS.values())
        dl = [(field, ALL_LINKS) for field in NVLINK_ERROR_DL_FIELDS.values()]
        if _supported(handle, totals):
            calls["NVLink error totals (1 call, 4 fields)"] = lambda h: _checked_fields(h, totals)
        elif _supported(handle, dl):
            calls["NVLink error DL fields, all links (1 call, 3 fields)"] = lambda h: _checked_fields(h, dl)
        else:  # the source falls back to every link's counters
            calls[f"NVLink error counters ({len(up)} up × 4)"] = lambda h: [
                pynvml.nvmlDeviceGetNvLinkErrorCounter(h, link, counter)
                for link in up
                for counter in NVLINK_ERROR_COUNTERS.values()
            ]
    return calls


def xid_wait_cpu(seconds: float) -> float | None:
    """CPU µs per second of a thread waiting for XID events of every GPU, as the source's `nvml-xid`
    thread waits (0.5 s timeouts); None when no event set can be made or no GPU delivers XID events."""
    try:
        event_set = pynvml.nvmlEventSetCreate()
        registered = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if pynvml.nvmlDeviceGetSupportedEventTypes(handle) & EVENT_XID:
                pynvml.nvmlDeviceRegisterEvents(handle, EVENT_XID, event_set)
                registered += 1
    except pynvml.NVMLError as exc:
        print(f"XID events: unavailable ({exc})")
        return None
    if not registered:
        pynvml.nvmlEventSetFree(event_set)
        return None
    cpu: list[float] = []

    def wait() -> None:
        started = time.thread_time()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(pynvml.NVMLError):  # TIMEOUT: no event in 0.5 s
                pynvml.nvmlEventSetWait_v2(event_set, 500)
        cpu.append(time.thread_time() - started)

    thread = threading.Thread(target=wait)
    thread.start()
    thread.join()
    pynvml.nvmlEventSetFree(event_set)
    return cpu[0] / seconds * 1e6


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


def answered(call: Call, *absent: int) -> Call:
    """The call, with the NVML return codes `absent` taken as answers (timed like any other)."""

    def wrapped(handle: Any) -> object:
        try:
            return call(handle)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) in absent:
                return None
            raise

    return wrapped


def per_process_calls() -> dict[str, Call]:
    """The per-process call the source makes every tick on a GPU with compute processes."""
    not_found = pynvml.NVML_ERROR_NOT_FOUND
    return {
        "process utilization (all samples)": answered(
            lambda h: pynvml.nvmlDeviceGetProcessUtilization(h, 0), not_found
        ),
        "process utilization (since now)": answered(
            lambda h: pynvml.nvmlDeviceGetProcessUtilization(h, int(time.time() * 1e6)), not_found
        ),
    }


def mig_devices(handle: Any) -> list[Any]:
    """The MIG device handles of a GPU with MIG on (empty slots skipped)."""
    found = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            found.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
        except pynvml.NVMLError:
            continue
    return found


def mig_enumeration(handle: Any) -> object:
    """What the source reads of the layout on the health cadence."""
    return [
        (
            pynvml.nvmlDeviceGetGpuInstanceId(mig),
            pynvml.nvmlDeviceGetComputeInstanceId(mig),
            pynvml.nvmlDeviceGetUUID(mig),
            pynvml.nvmlDeviceGetAttributes(mig),
            pynvml.nvmlDeviceGetName(mig),
        )
        for mig in mig_devices(handle)
    ]


def mig_gpm_pair(handle: Any, gpu_instance: int) -> Call:
    """One GPM window of a GPU instance, as the source takes it."""
    samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    pynvml.nvmlGpmMigSampleGet(handle, gpu_instance, samples[0])
    ids = list(GPM_RATIO_METRICS.values()) + list(GPM_RATE_METRICS.values())
    state = {"previous": 0}

    def step(h: Any) -> object:
        current = 1 - state["previous"]
        pynvml.nvmlGpmMigSampleGet(h, gpu_instance, samples[current])
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


def per_process_and_mig(repeat: int, count: int, ticks_per_read: float) -> None:
    """Part 3: the per-process and MIG calls, and what they add to a tick per GPU."""
    print(f"\nPer-process and MIG calls ({repeat} of each per GPU)")
    print(f"{'call':<40} {'gpu':>3} {'when':>8} {'wall p50 µs':>12} {'wall p99 µs':>12} {'CPU µs':>8}")
    for index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        tick_cpu = read_cpu = 0.0

        def timed(name: str, when: str, call: Call, on: Any = handle, gpu: int = index) -> None:
            nonlocal tick_cpu, read_cpu
            result = measure(call, on, repeat)
            if result is None:
                print(f"{name:<40} {gpu:>3} {when:>8} {'unsupported':>12}")
                return
            p50, p99, cpu = result
            if when == "per tick":
                tick_cpu += cpu
            else:
                read_cpu += cpu
            print(f"{name:<40} {gpu:>3} {when:>8} {p50:>12.0f} {p99:>12.0f} {cpu:>8.0f}")

        for name, call in per_process_calls().items():
            timed(name, "per tick", call)
        timed("MIG mode", "health", pynvml.nvmlDeviceGetMigMode)
        try:
            mode = pynvml.nvmlDeviceGetMigMode(handle)[0]
        except pynvml.NVMLError as exc:
            print(f"GPU {index}: MIG: not supported ({exc})")
            mode = None
        if mode == 1:
            devices = mig_devices(handle)
            print(f"GPU {index}: MIG: on, {len(devices)} MIG device(s)")
            timed("MIG enumeration (all devices)", "health", mig_enumeration)
            for slot, mig in enumerate(devices):
                timed(f"MIG {slot} memory info", "per tick", pynvml.nvmlDeviceGetMemoryInfo, mig)
                processes = pynvml.nvmlDeviceGetComputeRunningProcesses
                timed(f"MIG {slot} compute processes", "per tick", processes, mig)
            for instance in sorted({pynvml.nvmlDeviceGetGpuInstanceId(mig) for mig in devices}):
                try:
                    step = mig_gpm_pair(handle, instance)
                except pynvml.NVMLError as exc:
                    print(f"GPU {index}: GPM of GPU instance {instance}: unsupported ({exc})")
                    continue
                timed(f"MIG GPM window, GPU instance {instance}", "per tick", step)
        elif mode is not None:
            print(f"GPU {index}: MIG: off")
        added = tick_cpu + read_cpu / ticks_per_read
        print(
            f"GPU {index}: per-process and MIG calls add {added / 1000:.3f} ms of CPU per tick "
            f"(per-tick calls {tick_cpu / 1000:.3f} ms + health-cadence reads {read_cpu / 1000:.3f} ms "
            f"every {ticks_per_read:g} ticks); budget 1 ms"
        )


def measure(call: Call, handle: Any, repeat: int) -> tuple[float, float, float] | None:
    """(median wall µs, p99 wall µs, mean thread-CPU µs) of `repeat` calls; None if the call fails."""
    try:
        call(handle)
    except (pynvml.NVMLError, AttributeError):  # AttributeError: this pynvml lacks the function
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


def source_ticks(ticks: int, interval: float, health_interval: float | None) -> dict[str, float]:
    """The NVML source's own tick, one per `interval`: mean and worst wall and process-CPU ms per tick.
    `health_interval` None: without the health fields (the source before issue 14)."""
    source = NvmlSource(
        profiling=True, gpu_timeout_seconds=0.8 * interval, health_interval_seconds=health_interval
    )
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
        return {
            "wall": statistics.fmean(walls) * 1e3,
            "wall_max": max(walls) * 1e3,
            "cpu": statistics.fmean(cpus) * 1e3,
            "cpu_max": max(cpus) * 1e3,
        }
    finally:
        loop.run_until_complete(source.close())
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="calls per function and GPU (default 200)")
    parser.add_argument("--ticks", type=int, default=100, help="source ticks in part 2 (default 100)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (default 1)")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=30.0,
        help="seconds between health reads, as nvml.health_interval_seconds (default 30)",
    )
    parser.add_argument(
        "--xid-seconds", type=float, default=5.0, help="seconds to measure the XID event thread (default 5)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.ticks < 1 or not args.interval > 0 or not args.health_interval > 0:
        parser.error("--repeat and --ticks must be ≥ 1, --interval and --health-interval > 0")
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

    print(
        f"\nGPU health calls ({args.repeat} of each per GPU; per tick: every tick; health: once every "
        f"{args.health_interval:g} s)"
    )
    print(f"{'call':<40} {'gpu':>3} {'when':>8} {'wall p50 µs':>12} {'wall p99 µs':>12} {'CPU µs':>8}")
    ticks_per_read = max(1.0, args.health_interval / args.interval)
    added = [0.0] * count
    for index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        tick_cpu = read_cpu = 0.0
        groups = (("per tick", health_tick_calls()), ("health", health_read_calls(handle)))
        for when, group in groups:
            for name, call in group.items():
                result = measure(call, handle, args.repeat)
                if result is None:
                    print(f"{name:<40} {index:>3} {when:>8} {'unsupported':>12}")
                    continue
                p50, p99, cpu = result
                if when == "per tick":
                    tick_cpu += cpu
                else:
                    read_cpu += cpu
                print(f"{name:<40} {index:>3} {when:>8} {p50:>12.0f} {p99:>12.0f} {cpu:>8.0f}")
        added[index] = tick_cpu + read_cpu / ticks_per_read
        print(
            f"GPU {index}: health fields add {added[index] / 1000:.3f} ms of CPU per tick "
            f"(per-tick calls {tick_cpu / 1000:.3f} ms + a health read of {read_cpu / 1000:.3f} ms every "
            f"{ticks_per_read:g} ticks); budget 1 ms"
        )
    per_process_and_mig(args.repeat, count, ticks_per_read)
    xid_cpu = xid_wait_cpu(args.xid_seconds)
    if xid_cpu is not None:
        print(
            f"XID event thread: {xid_cpu:.0f} µs of CPU per second waiting (0.5 s timeouts, every GPU), "
            f"{xid_cpu * args.interval / 1000:.3f} ms per tick"
        )

    print(f"\nNVML source tick ({count} GPU(s), {args.ticks} ticks every {args.interval:g} s):")
    calls_ms = sum(per_gpu_cpu) / 1000
    runs = {
        "without the health fields": None,
        f"with them (health read every {args.health_interval:g} s)": args.health_interval,
    }
    results = {}
    for label, health_interval in runs.items():
        results[label] = tick = source_ticks(args.ticks, args.interval, health_interval)
        print(
            f"  {label}: wall {tick['wall']:.2f} ms (worst {tick['wall_max']:.2f}), process CPU "
            f"{tick['cpu']:.2f} ms per tick (worst {tick['cpu_max']:.2f}) = "
            f"{tick['cpu'] / 10 / args.interval:.2f} % of a core"
        )
    before, after = results.values()
    print(
        f"  the health fields add {after['cpu'] - before['cpu']:.3f} ms of CPU per tick "
        f"({(after['cpu'] - before['cpu']) / max(1, count):.3f} ms per GPU; budget 1 ms per GPU) and "
        f"{after['wall'] - before['wall']:.3f} ms of wall time; the calls alone (part 1, before the health "
        f"fields) {calls_ms:.2f} ms, the Python around them ≈ {before['cpu'] - calls_ms:.2f} ms"
    )
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
