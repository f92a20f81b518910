"""Where the exporter's memory goes: what each import and NVML cost, then what the running pair uses.

    python benchmarks/rss_breakdown.py            # on a GPU machine: NVML steps, then `serve`
    python benchmarks/rss_breakdown.py --demo     # anywhere: the simulated node

Part 1 imports, in one fresh interpreter, what the exporter loads, in the order the two processes load
it, printing RSS after each step: the floor any Python exporter built on FastAPI, pydantic and NVML
pays before a line of its own code. Part 2 starts the exporter (server + forked collector) and prints
per process RSS, USS (pages only it holds) and PSS, and the memory the pair costs the node: server RSS
plus collector USS (every page once, as a container's memory accounting counts it).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


STEPS = (
    ("python started", "pass"),
    ("import ssl (httpx and uvicorn need it)", "import ssl"),
    ("import pydantic", "import pydantic.main"),
    ("import exporter.config (the Config model)", "import exporter.config"),
    ("import fastapi, uvicorn (server only)", "import fastapi, uvicorn"),
    ("import prometheus_client, httpx (collector)", "import prometheus_client, httpx"),
    ("import pynvml (collector)", "import pynvml"),
    (
        "import the collector's modules",
        "import exporter.node, exporter.daemon, exporter.attribution, exporter.render.exposition, "
        "exporter.render.derived, exporter.render.endpoints, exporter.sources.endpoints, "
        "exporter.sources.nvml",
    ),
)


def imports() -> None:
    print("part 1: one interpreter, cumulative RSS")
    previous = rss_mb()
    for label, statement in STEPS:
        exec(statement)
        now = rss_mb()
        print(f"  {now:7.1f} MB  (+{now - previous:5.1f})  {label}")
        previous = now
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver here
        print(f"  (no NVML on this machine: {type(exc).__name__}; its own state is not measured)")
        return
    now = rss_mb()
    print(f"  {now:7.1f} MB  (+{now - previous:5.1f})  nvmlInit (the driver library's own state)")
    previous = now

    from exporter.sources.nvml import NvmlSource

    async def collect() -> None:
        source = NvmlSource(gpu_timeout_seconds=2.0)
        for _ in range(5):
            await source.collect()
            await asyncio.sleep(0.2)
        await source.close()

    asyncio.run(collect())
    now = rss_mb()
    print(f"  {now:7.1f} MB  (+{now - previous:5.1f})  NvmlSource: discovery, GPM samples, 5 collects")


def running(command: list[str], seconds: float) -> None:
    import psutil
    from common import start_exporter, stop

    print(f"\npart 2: `tpw-exporter {' '.join(command)}` after {seconds:g} s, one scrape a second")
    process, port = start_exporter(command, config={"interval": 1.0}, quiet=True)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/metrics"], check=False)
            time.sleep(1.0)
        server = psutil.Process(process.pid)
        collector = server.children()[0]
        total = 0.0
        for name, member in (("server", server), ("collector", collector)):
            info = member.memory_full_info()
            print(
                f"  {name:<10} RSS {info.rss / 2**20:6.1f} MB  USS {info.uss / 2**20:6.1f} MB  "
                f"PSS {info.pss / 2**20:6.1f} MB"
            )
            total += info.rss if name == "server" else info.uss
        print(f"  the pair costs the node {total / 2**20:.1f} MB (server RSS + collector USS)")
    finally:
        stop([process])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true", help="part 2 on the simulated node (2 GPUs)")
    parser.add_argument("--seconds", type=float, default=20.0, help="part 2's run before measuring")
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.imports_only:
        imports()
        return 0
    print(f"python {sys.version.split()[0]}")
    # Part 1 in a fresh interpreter: this one has loaded psutil and the benchmark helpers.
    subprocess.run([sys.executable, __file__, "--imports-only"], check=True)
    running(["demo", "--gpus", "2"] if options.demo else ["serve"], options.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
