"""The tick: sources run concurrently under time limits; one failure never stops the others."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.daemon import Daemon, DaemonThread
from exporter.model import GpuInfo, GpuSample
from exporter.render.exposition import Renderer
from exporter.sources.base import Collected, Source, SourceError


class Steady(Source):
    name = "steady"

    async def collect(self) -> Collected:
        return Collected(gpus=(GpuSample(info=GpuInfo(index=0, uuid="GPU-0", name="x"), power_watts=100.0),))


class Flaky(Source):
    name = "flaky"

    def __init__(self) -> None:
        self.fail = True

    async def collect(self) -> Collected:
        if self.fail:
            raise SourceError("endpoint refused the connection")
        return Collected()


class Slow(Source):
    name = "slow"

    async def collect(self) -> Collected:
        await asyncio.sleep(5)
        return Collected()


def values(daemon: Daemon, name: str) -> dict[str, float]:
    text = daemon.latest.text.decode()
    return {
        ",".join(s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_failing_and_slow_sources_are_marked_down_while_others_flow(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    daemon = Daemon([Steady(), flaky, Slow()], Renderer(), interval=0.2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        asyncio.run(daemon.tick())
        asyncio.run(daemon.tick())
    assert time.monotonic() - started < 1.0  # the slow source is cut off at the interval
    assert values(daemon, "tpw_source_up") == {"steady": 1.0, "flaky": 0.0, "slow": 0.0}
    assert values(daemon, "tpw_gpu_power_watts") == {"0": 100.0}
    errors = {s.name: s.error for s in daemon.latest.snapshot.sources}
    assert errors["flaky"] == "endpoint refused the connection"
    assert errors["slow"] == "timed out after 0.2 s"
    # Logged once per state change, not once per tick.
    assert sum("source flaky is down" in r.message for r in caplog.records) == 1

    flaky.fail = False
    with caplog.at_level(logging.INFO):
        asyncio.run(daemon.tick())
    assert values(daemon, "tpw_source_up")["flaky"] == 1.0
    assert any("source flaky is up again" in r.message for r in caplog.records)


def test_not_ready_until_first_tick_and_stage_applied() -> None:
    seen = []

    def stage(snapshot):
        seen.append(snapshot.tick)
        return snapshot

    daemon = Daemon([Steady()], Renderer(), interval=1.0, stages=[stage])
    assert not daemon.ready
    assert b"tpw_exporter_ready 0.0" in daemon.latest.text
    asyncio.run(daemon.tick())
    assert daemon.ready and seen == [1]
    assert b"tpw_exporter_ready 1.0" in daemon.latest.text


def test_a_broken_stage_keeps_the_previous_exposition() -> None:
    calls = {"n": 0}

    def stage(snapshot):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("bug")
        return snapshot

    daemon = Daemon([Steady()], Renderer(), interval=0.05, stages=[stage])
    thread = DaemonThread(daemon)
    thread.start()
    time.sleep(0.3)
    thread.stop()
    assert calls["n"] > 2  # kept ticking after the failure
    assert daemon.latest.snapshot.tick == 1


def test_thread_ticks_on_cadence_and_stops_promptly() -> None:
    daemon = Daemon([Steady()], Renderer(), interval=0.1)
    thread = DaemonThread(daemon)
    thread.start()
    time.sleep(0.55)
    started = time.monotonic()
    thread.stop(timeout=2)
    assert time.monotonic() - started < 0.5
    assert 4 <= daemon.latest.snapshot.tick <= 7
