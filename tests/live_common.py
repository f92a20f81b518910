"""The demo node's pipeline in simulated time, for the live page's tests and benchmark: the simulated GPUs,
the simulated vLLM engine's real page read by the vLLM profile, attribution and the derive window, each
tick's snapshot recorded into a `History`, with no clock, socket or process involved."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from exporter.attribution import Attributor
from exporter.config import EndpointConfig
from exporter.demo.engine import DEMO_ENDPOINT_NAME, SimulatedEngine
from exporter.derive.window import Deriver
from exporter.live.history import History
from exporter.model import EndpointSample, Snapshot, SourceStatus
from exporter.sources.page import PageJob, interpret
from exporter.sources.simulated import SimulatedSource

WALL_START = 1_750_000_000.0
ENGINE_URL = "http://127.0.0.1:1/metrics"


def simulate(
    schedule: Sequence[tuple[str, float]],
    seconds: float,
    interval: float = 0.5,
    phase: float = 1.5,
    gpus: int = 2,
    window: float = 2.0,
    history: History | None = None,
    on_tick: Callable[[Snapshot], None] | None = None,
) -> History:
    """Play `schedule` for `seconds` of simulated time, one tick every `interval`; the history it filled."""
    now = [0.0]
    source = SimulatedSource(gpus, phase_seconds=phase, clock=lambda: now[0], schedule=schedule)
    engine = SimulatedEngine(source.scenario, gpus, source.elapsed, WALL_START - 3600)
    attributor = Attributor(
        [EndpointConfig(name=DEMO_ENDPOINT_NAME, url=ENGINE_URL, engine="vllm", gpus="all")],
        clock=lambda: now[0],
    )
    deriver = Deriver(window=window, tolerance=interval / 2)
    history = history if history is not None else History(interval)
    errors = 0

    async def run() -> None:
        nonlocal errors
        for tick in range(1, int(seconds / interval) + 1):
            now[0] = t = tick * interval
            collected = await source.collect()
            if engine.available():
                result = interpret(PageJob(engine.page().encode(), "", "vllm"))
                endpoint = EndpointSample(
                    DEMO_ENDPOINT_NAME,
                    result.engine or "vllm",
                    ENGINE_URL,
                    timestamp=t,
                    values=result.values,
                    errors_total=(("http_status", errors),) if errors else (),
                    process_start_time_seconds=result.process_start_time_seconds,
                )
            else:
                errors += 1
                endpoint = EndpointSample(
                    DEMO_ENDPOINT_NAME,
                    "vllm",
                    ENGINE_URL,
                    up=False,
                    error="HTTP 503",
                    timestamp=t,
                    errors_total=(("http_status", errors),),
                )
            snapshot = Snapshot(
                tick=tick,
                wall_time=WALL_START + t,
                monotonic_time=t,
                duration_seconds=0.001,
                gpus=collected.gpus,
                endpoints=(endpoint,),
                sources=(SourceStatus("simulated", True, 0.001),),
                node=collected.node or source.node_at(t),
            )
            snapshot = deriver(attributor(snapshot))
            history.record(snapshot)
            if on_tick is not None:
                on_tick(snapshot)

    asyncio.run(run())
    return history
