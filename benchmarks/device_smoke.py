"""Print what the real NVML source sees on this machine: two ticks, one second apart, and their cost.

python benchmarks/device_smoke.py
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict

from exporter.sources.nvml import NvmlSource


async def main() -> None:
    source = NvmlSource(gpu_timeout_seconds=2.0)
    started = time.perf_counter()
    await source.collect()
    print(
        f"first collect (includes NVML init and discovery): {1000 * (time.perf_counter() - started):.1f} ms"
    )
    durations = []
    for _ in range(5):
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        collected = await source.collect()
        durations.append(1000 * (time.perf_counter() - started))
    print("collect durations, ms:", " ".join(f"{d:.2f}" for d in durations))
    print(json.dumps(asdict(collected.node)))
    for gpu in collected.gpus:
        print(json.dumps(asdict(gpu), default=str, indent=1))
    await source.close()


if __name__ == "__main__":
    asyncio.run(main())
