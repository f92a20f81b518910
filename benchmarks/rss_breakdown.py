"""Where the exporter's resident memory goes: RSS after each start-up step, on this machine's GPUs.

python benchmarks/rss_breakdown.py
"""

from __future__ import annotations

import asyncio
import ctypes
import resource
import sys
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(label: str) -> None:
    print(f"{rss_mb():8.1f} MB  {label}", flush=True)


async def collect_a_few() -> None:
    import pynvml

    from exporter.sources.nvml import NvmlSource

    pynvml.nvmlInit()
    step("nvmlInit")
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
    step("two GPM samples allocated for GPU 0")
    for sample in samples:
        pynvml.nvmlGpmSampleFree(sample)
    del handle

    source = NvmlSource(gpu_timeout_seconds=2.0)
    await source.collect()
    step("NvmlSource: nvmlInit, discovery, GPM samples allocated, first collect")
    for _ in range(5):
        await asyncio.sleep(0.2)
        await source.collect()
    step("after 5 more collects")
    await source.close()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    step("malloc_trim(0): free heap pages returned to the OS")


def main() -> int:
    step(f"python {sys.version.split()[0]} started")
    import pynvml  # noqa: F401

    step("import pynvml")
    import prometheus_client  # noqa: F401

    step("import prometheus_client")
    import pydantic  # noqa: F401

    step("import pydantic")
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    step("import fastapi, uvicorn")
    import exporter.cli
    import exporter.daemon
    import exporter.render.exposition  # noqa: F401

    step("import exporter")
    asyncio.run(collect_a_few())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
