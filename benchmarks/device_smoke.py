"""Print what the real NVML source sees on this machine: six ticks, a second apart, their cost, and which
GPU-health values each GPU supports, with their values (issue 14).

python benchmarks/device_smoke.py [--ticks 5] [--interval 1]

Per GPU, the health summary says for every value whether NVML supports it here (a value) or not (`absent`:
the exporter serves no series for it), whether the GPU delivers XID events (the codes counted so far), the
PCIe link now against its maximum, the NVLink byte counters' change over the run, and the clock-event
reasons by name. Then MIG (issue 14, part 2): "MIG: off" / "MIG: absent (not supported)", or each MIG device
with its ids, profile, memory and GPM; and the compute processes NVML lists, with the memory and SM
utilisation the exporter reads per process (what `tpw_endpoint_gpu_*` sum for an endpoint's processes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.model import CLOCK_EVENT_REASONS, GpuSample
from exporter.sources.nvml import NvmlSource


def health_summary(first: GpuSample, last: GpuSample, seconds: float) -> list[str]:
    """Lines saying what this GPU supports and reads; `first`/`last`: the run's first and last samples."""
    lines = [f"GPU {last.info.index} ({last.info.name}, {last.info.uuid}): up={last.up}"]
    if not last.up:
        return [*lines, f"  down: {last.error}"]
    if last.xid_errors:
        seen = {code: count for code, count in last.xid_errors if count}
        lines.append(f"  XID events: listening; events so far: {seen or 'none'}")
    else:
        lines.append("  XID events: not listening (no event set, or no XID events on this GPU: see the log)")
    health = last.health
    if health is None:
        return [*lines, "  health: not read"]
    for field in dataclasses.fields(health):
        value = getattr(health, field.name)
        shown = "absent (not supported)" if value is None or value == () else value
        lines.append(f"  {field.name:<28} {shown}")
    lines.append(
        f"  PCIe link now: Gen {last.pcie_generation} x{last.pcie_width} "
        f"(max Gen {health.pcie_max_generation} x{health.pcie_max_width}; idle GPUs step the generation down)"
    )
    if last.nvlink_tx_bytes is None or first.nvlink_tx_bytes is None:
        lines.append("  NVLink bytes: absent (no NVLink, or no all-links throughput field on this driver)")
    else:
        tx = (last.nvlink_tx_bytes - first.nvlink_tx_bytes) / seconds
        rx = ((last.nvlink_rx_bytes or 0.0) - (first.nvlink_rx_bytes or 0.0)) / seconds
        lines.append(
            f"  NVLink bytes: tx {last.nvlink_tx_bytes:.0f}, rx {last.nvlink_rx_bytes:.0f} "
            f"(over the run: tx {tx:.0f} B/s, rx {rx:.0f} B/s)"
        )
    reasons = last.clock_event_reasons
    if reasons is None:
        lines.append("  clock event reasons: absent")
    else:
        active = [name for name, bit in CLOCK_EVENT_REASONS.items() if reasons & bit] or ["none"]
        lines.append(f"  clock event reasons now: {', '.join(active)} (bitmask {reasons:#x})")
    lines.append(
        f"  power limit {last.power_limit_watts} W of default {health.power_default_limit_watts} W; "
        f"SM clock {last.sm_clock_hertz} Hz of max {health.sm_clock_max_hertz} Hz"
    )
    return lines


def mig_and_processes(gpu: GpuSample) -> list[str]:
    """What MIG and the per-process reads give on this GPU."""
    if not gpu.up:
        return []
    mode = {None: "absent (not supported)", False: "off", True: f"on, {len(gpu.mig)} MIG device(s)"}
    lines = [f"  MIG: {mode[gpu.mig_enabled]}"]
    for device in gpu.mig:
        sm = device.profiling.ratios.get("sm_active") if device.profiling is not None else None
        lines.append(
            f"    gi {device.gpu_instance} ci {device.compute_instance} {device.profile or '?'} "
            f"{device.uuid}: {device.multiprocessors} SMs, memory {device.memory_used_bytes} of "
            f"{device.memory_total_bytes} B, "
            f"SM active {sm if sm is not None else 'absent'}, processes {list(device.process_ids)}"
        )
    memory = dict(gpu.process_memory)
    busy = dict(gpu.process_sm_ratios)
    lines.append(f"  compute processes: {len(gpu.process_ids)}")
    for pid in gpu.process_ids:
        shown = f"{busy[pid]:.2f}" if pid in busy else "no sample"
        lines.append(f"    pid {pid}: memory {memory.get(pid, 'absent')} B, SM utilisation {shown}")
    return lines


async def main(ticks: int = 5, interval: float = 1.0) -> None:
    source = NvmlSource(gpu_timeout_seconds=2.0)
    started = time.perf_counter()
    first = await source.collect()
    print(
        f"first collect (includes NVML init and discovery, XID registration and the first health read): "
        f"{1000 * (time.perf_counter() - started):.1f} ms"
    )
    durations = []
    run_started = time.monotonic()
    for _ in range(ticks):
        await asyncio.sleep(interval)
        started = time.perf_counter()
        collected = await source.collect()
        durations.append(1000 * (time.perf_counter() - started))
    seconds = time.monotonic() - run_started
    print("collect durations, ms:", " ".join(f"{d:.2f}" for d in durations))
    print(json.dumps(asdict(collected.node) if collected.node else None))
    for gpu in collected.gpus:
        print(json.dumps(asdict(gpu), default=str, indent=1))
    print("\nGPU health (what this GPU and driver support; absent values get no series):")
    before = {gpu.info.index: gpu for gpu in first.gpus}
    for gpu in collected.gpus:
        print("\n".join(health_summary(before.get(gpu.info.index, gpu), gpu, seconds)))
    print("\nMIG and per-process reads:")
    for gpu in collected.gpus:
        print(f"GPU {gpu.info.index}:")
        print("\n".join(mig_and_processes(gpu)))
    await source.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=5, help="ticks after the first (default 5)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (default 1)")
    args = parser.parse_args()
    asyncio.run(main(args.ticks, args.interval))
