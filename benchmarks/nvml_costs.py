"""What each NVML call of a tick costs on this node, in wall time and CPU, and what a whole tick costs.

Part 1 calls, on every GPU in turn, each NVML function the NVML source calls per tick (`--repeat` times,
arguments as the source passes them) and prints per call the median and p99 wall time and the mean CPU
time of the calling thread (user + system: in a VM most of an NVML call is the driver's ioctl, which
counts). It does the same for the GPU-health calls (issue 14): those read every tick (the PCIe generation) and
those of the health read (ECC, remapped rows, power limit, PCIe maximum and replays, NVLink states, byte
counters and error totals), read once every `nvml.health_interval_seconds` (30 s), and it measures
the CPU of a thread waiting for XID events (`nvmlEventSetWait_v2`, 0.5 s timeout, as the source waits).
Then, per GPU, what the health fields add to a tick: the new per-tick calls plus the health read divided
by the ticks between two reads. Part 2 runs the NVML source's own tick (`NvmlSource.collect`, one worker
thread per GPU, GPM on where supported) in blocks of `--block-ticks` ticks, each block a fresh source
without the health fields (as before issue 14) or with them (one health read per block), `--pairs` pairs
interleaved so that a drift of the machine falls on both. Per block it prints the process CPU per tick (the
waits between ticks included: the XID thread counts) and the wall time of a tick; then what the health
fields add per tick and per GPU, the mean of the pairs' differences with its 95 % confidence interval,
against the budget of 1 ms per GPU (a figure whose interval reaches past the budget is not called within).
Part 3 (issue 14, part 2) measures the per-process calls (`nvmlDeviceGetProcessUtilization`, which the source
reads every tick on a GPU that more than one compute process shares; NOT_FOUND, no sample since the
timestamp, is an answer and is timed too) and the MIG calls: the mode (health cadence) on every GPU,
printing "MIG: off" where MIG is off; where it is on, the enumeration (health cadence) and per MIG device
its memory and processes (every tick) and a GPM window of its GPU instance (`nvmlGpmMigSampleGet` + metrics,
every tick). Needs a GPU and its driver:

    python benchmarks/nvml_costs.py [--repeat 200] [--pairs 5] [--block-ticks 30] [--health-interval 30]
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
from types import ModuleType
from typing import Any, cast

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
    GpuReader,
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
            "PCIe link width": pynvml.nvmlDeviceGetCurrPcieLinkWidth,
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
    return gpm_window(pynvml.nvmlGpmSampleGet, handle)


def gpm_window(take: Callable[[Any, Any], object], handle: Any) -> Call:
    """A call that takes the next GPM sample with `take(handle, sample)` and reads the metrics between it and
    the previous one, alternating two samples (the first taken now)."""
    samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    take(handle, samples[0])
    ids = list(GPM_RATIO_METRICS.values()) + list(GPM_RATE_METRICS.values())
    state = {"previous": 0}

    def step(h: Any) -> object:
        current = 1 - state["previous"]
        take(h, samples[current])
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
    return gpm_window(lambda h, sample: pynvml.nvmlGpmMigSampleGet(h, gpu_instance, sample), handle)


class CallTimer:
    """pynvml, each of its functions timed: the calling thread's CPU per function name, summed."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)
        if not (name.startswith("nvml") and callable(value)):
            return value

        def timed(*args: Any) -> Any:
            started = time.thread_time()
            try:
                return value(*args)
            finally:
                spent = time.thread_time() - started
                with self._lock:
                    self.cpu[name] = self.cpu.get(name, 0.0) + spent

        return timed


def health_read_concurrency(count: int, repeat: int) -> None:
    """Part 1b: the source's own health read (`GpuReader._read_health`), GPUs one after another and every GPU
    at once from its own thread (as the source's workers would without `HEALTH_READ_LOCK`): the CPU of a read
    per GPU and the calls that cost most. Some calls contend inside the driver when GPUs make them at once."""
    timer = CallTimer()
    readers = [
        GpuReader(cast(ModuleType, timer), index, False, time.monotonic, 0.0) for index in range(count)
    ]
    for reader in readers:
        reader.read()  # the first read: NVLink discovery, the maximum SM clock
    print(f"\nThe source's health read ({repeat} per GPU), one GPU after another and every GPU at once")

    def run(reader: GpuReader, spent: list[float], barrier: threading.Barrier | None) -> None:
        for _ in range(repeat):
            if barrier is not None:
                barrier.wait()
            started = time.thread_time()
            reader._read_health()
            spent.append(time.thread_time() - started)

    results = {}
    for mode in ("one GPU after another", f"all {count} GPUs at once"):
        timer.cpu.clear()
        spent: list[float] = []
        if mode.startswith("one"):
            for reader in readers:
                run(reader, spent, None)
        else:
            barrier = threading.Barrier(count)
            threads = [threading.Thread(target=run, args=(r, spent, barrier)) for r in readers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        reads = repeat * count
        results[mode] = statistics.fmean(spent) * 1e3
        top = sorted(timer.cpu.items(), key=lambda item: -item[1])[:4]
        costly = ", ".join(f"{name.removeprefix('nvmlDevice')} {cpu / reads * 1e3:.2f}" for name, cpu in top)
        print(f"  {mode}: {results[mode]:.2f} ms of CPU per read per GPU (ms per read: {costly})")
    for reader in readers:
        reader.close()
    alone, together = results.values()
    print(f"  at once / one after another: {together / alone:.1f}× the CPU (the source serialises them)")


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


# two-sided 95 % quantile of Student's t by degrees of freedom (beyond the table: the normal's 1.96)
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def source_block(ticks: int, interval: float, with_health: bool) -> dict[str, float]:
    """One block of the NVML source's own tick: a fresh source, a first tick not counted (static reads, the
    first health read, the first GPM sample), then `ticks` ticks one per `interval`. Returns the mean wall
    ms of a tick and the process CPU ms per tick over the whole block, the waits between ticks included (the
    XID thread's waits count). With the health fields the health read is due once in the block, in its last
    tick (every `(ticks - 0.5) × interval` s), so a block holds as many health reads per tick as the
    daemon at `nvml.health_interval_seconds = ticks × interval`; without them the source is the one before
    issue 14."""
    health_interval = (ticks - 0.5) * interval if with_health else None
    source = NvmlSource(
        profiling=True, gpu_timeout_seconds=0.8 * interval, health_interval_seconds=health_interval
    )
    loop = asyncio.new_event_loop()
    try:
        first = time.perf_counter()
        loop.run_until_complete(source.collect())
        walls = []
        cpu = time.process_time()
        for tick in range(1, ticks + 1):
            time.sleep(max(0.0, first + tick * interval - time.perf_counter()))  # on the tick's schedule
            started = time.perf_counter()
            loop.run_until_complete(source.collect())
            walls.append(time.perf_counter() - started)
        time.sleep(max(0.0, first + (ticks + 1) * interval - time.perf_counter()))  # the last tick's interval
        return {
            "cpu": (time.process_time() - cpu) / ticks * 1e3,
            "wall": statistics.fmean(walls) * 1e3,
            "wall_max": max(walls) * 1e3,
        }
    finally:
        loop.run_until_complete(source.close())
        loop.close()


def mean_and_interval(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95 % confidence interval (Student's t; 0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def source_ticks_ab(pairs: int, ticks: int, interval: float, count: int, calls_ms: float) -> None:
    """Part 2: blocks without and with the health fields, interleaved (A B, B A, A B, …) so that a drift of
    the machine falls on both; the health fields' cost is the mean of the pairs' differences."""
    print(
        f"\nNVML source tick ({count} GPU(s)): {pairs} pairs of blocks without and with the health fields, "
        f"interleaved; a block: a fresh source, {ticks} ticks every {interval:g} s, one health read"
    )
    print(f"{'pair':>4} {'block':<8} {'CPU ms/tick':>12} {'wall ms/tick':>13} {'worst wall':>11}")
    without: list[float] = []
    with_health: list[float] = []
    walls: dict[bool, list[float]] = {False: [], True: []}
    for pair in range(pairs):
        for health in (False, True) if pair % 2 == 0 else (True, False):
            block = source_block(ticks, interval, health)
            (with_health if health else without).append(block["cpu"])
            walls[health].append(block["wall"])
            name = "with" if health else "without"
            print(
                f"{pair:>4} {name:<8} {block['cpu']:>12.2f} {block['wall']:>13.2f} {block['wall_max']:>11.2f}"
            )
    added, half = mean_and_interval([b - a for a, b in zip(without, with_health, strict=True)])
    before = statistics.fmean(without)
    print(
        f"  without the health fields: {before:.2f} ms of process CPU per tick "
        f"({before / 10 / interval:.2f} % of a core), wall {statistics.fmean(walls[False]):.2f} ms; "
        f"with them: {statistics.fmean(with_health):.2f} ms, wall {statistics.fmean(walls[True]):.2f} ms"
    )
    per_gpu = 1 / max(1, count)
    if pairs > 1:
        spread = f" ± {half:.3f} ms of CPU per tick (95 % interval over {pairs} pairs)"
        per_gpu_spread = f" ± {half * per_gpu:.3f}"
        verdict = "within" if (added + half) * per_gpu <= 1 else "NOT shown within"
    else:  # one difference has no spread: it shows nothing either way
        spread, per_gpu_spread = " ms of CPU per tick (one pair: no interval)", ""
        verdict = "not shown either way by one pair (--pairs 2 or more)"
    print(
        f"  the health fields add {added:.3f}{spread} = {added * per_gpu:.3f}{per_gpu_spread} ms per GPU; "
        f"budget 1 ms per GPU: {verdict}; the calls alone (part 1, before the health fields) "
        f"{calls_ms:.2f} ms, the Python around them ≈ {before - calls_ms:.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="calls per function and GPU (default 200)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=5,
        help="part 2: pairs of blocks without and with the health fields (default 5; 0 skips part 2)",
    )
    parser.add_argument(
        "--block-ticks",
        type=int,
        default=30,
        help="part 2: ticks per block, one health read each (default 30: the daemon's 30 s at 1 s ticks)",
    )
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
    if (
        min(args.repeat, args.block_ticks) < 1
        or args.pairs < 0
        or not args.interval > 0
        or not args.health_interval > 0
    ):
        parser.error(
            "--repeat and --block-ticks must be ≥ 1, --pairs ≥ 0, --interval and --health-interval > 0"
        )
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
    if count > 1:
        health_read_concurrency(count, max(1, min(args.repeat, 20)))
    per_process_and_mig(args.repeat, count, ticks_per_read)
    xid_cpu = xid_wait_cpu(args.xid_seconds)
    if xid_cpu is not None:
        print(
            f"XID event thread: {xid_cpu:.0f} µs of CPU per second waiting (0.5 s timeouts, every GPU), "
            f"{xid_cpu * args.interval / 1000:.3f} ms per tick"
        )

    if args.pairs:
        source_ticks_ab(args.pairs, args.block_ticks, args.interval, count, sum(per_gpu_cpu) / 1000)
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
