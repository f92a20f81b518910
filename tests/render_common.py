"""Snapshots and a daemon run shared by the rendering tests: tests/unit/test_render.py and
test_render_derived.py, and their promtool / process halves under tests/integration/."""

from __future__ import annotations

import asyncio

from fake_nvml import Clock
from prometheus_client.parser import text_string_to_metric_families

from exporter.daemon import Daemon
from exporter.derive.window import Deriver, Site
from exporter.model import EndpointSample, EndpointValue, Snapshot, SourceStatus
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer
from exporter.sources.base import Collected, Source
from exporter.sources.simulated import SimulatedSource


def simulated_snapshot(gpus: int = 2, scenario: str = "mixed") -> Snapshot:
    clock = Clock()
    source = SimulatedSource(gpus=gpus, scenario=scenario, phase_seconds=10, clock=clock)
    asyncio.run(source.collect())
    clock.advance(1.0)
    collected = asyncio.run(source.collect())
    return Snapshot(
        tick=2,
        wall_time=1.8e9,
        monotonic_time=clock(),
        duration_seconds=0.001,
        gpus=collected.gpus,
        sources=(SourceStatus("simulated", True, 0.0001),),
        node=collected.node,
    )


class Endpoints(Source):
    """Two endpoints whose counters follow the same fake clock as the simulated GPUs."""

    name = "endpoints"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.start = clock()

    async def collect(self) -> Collected:
        t = self.clock() - self.start
        llm = EndpointSample(
            name="llm",
            engine="vllm",
            url="http://x/metrics",
            timestamp=self.clock(),
            values=(
                EndpointValue("generation_tokens_total", "llama-3-8b", 2000.0 * t),
                EndpointValue("prompt_tokens_total", "llama-3-8b", 500.0 * t),
                EndpointValue("requests_total", "llama-3-8b", 4.0 * t, "success"),
                EndpointValue("requests_total", "llama-3-8b", 1.0, "failure"),
            ),
            gpus=(0, 1),
        )
        images = EndpointSample(
            name="sdxl",
            engine="generic",
            url="http://y/metrics",
            unit="images",
            timestamp=self.clock(),
            values=(EndpointValue("work_units_total", "", 0.5 * t),),
            gpus=(1,),
        )
        return Collected(endpoints=(llm, images))


NO_SITE = Site()


def run_daemon(site: Site = NO_SITE, ticks: int = 6) -> Daemon:
    clock = Clock()
    sources = [SimulatedSource(gpus=3, scenario="mixed", phase_seconds=100, clock=clock), Endpoints(clock)]
    daemon = Daemon(
        sources,
        Renderer(extra=[derived_families]),
        interval=1.0,
        stages=[Deriver(window=4, site=site)],
        clock=clock,
    )
    for _ in range(ticks):
        asyncio.run(daemon.tick())
        clock.advance(1.0)
    return daemon


def series(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found
