"""The tick: run every source concurrently under its own time limit, build one snapshot, render it once.

The daemon runs its own asyncio loop in a background thread, so collection (NVML in worker threads,
endpoint scrapes over httpx) never shares an event loop with the HTTP server. The HTTP side reads
`Daemon.latest`, a reference swapped atomically at the end of each tick: serving a scrape costs the same
whatever the number of GPUs or endpoints, and a hung source can never hang a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from exporter.model import EndpointSample, GpuSample, NodeInfo, Snapshot, SourceStatus
from exporter.published import Format, Published, publish
from exporter.render.exposition import Exposition, Renderer
from exporter.sources.base import Collected, Source, SourceError

log = logging.getLogger(__name__)

# A stage that turns the collected snapshot into the one that is rendered (derived values, attribution).
SnapshotStage = Callable[[Snapshot], Snapshot]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Daemon:
    """Collects, derives and renders once per interval; `latest` always holds a complete exposition."""

    def __init__(
        self,
        sources: Sequence[Source],
        renderer: Renderer,
        interval: float,
        stages: Sequence[SnapshotStage] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = tuple(sources)
        self.renderer = renderer
        self.interval = interval
        self.stages = tuple(stages)
        self._clock = clock
        self._wall_clock = wall_clock
        self._tick = 0
        self._node = NodeInfo()
        self._source_up: dict[str, bool] = {}
        self._gpu_up: dict[str, bool] = {}
        empty = Snapshot(tick=0, wall_time=wall_clock(), monotonic_time=clock(), duration_seconds=0.0)
        self.latest: Exposition = renderer.render(empty)
        # Called with each new exposition (the collector process sends it to the HTTP server).
        self.publish: Callable[[Exposition], None] | None = None

    @property
    def ready(self) -> bool:
        return self.latest.snapshot.tick > 0

    async def _collect(self, source: Source) -> tuple[Collected | None, SourceStatus]:
        started = self._clock()
        error: str | None
        try:
            collected = await asyncio.wait_for(source.collect(), timeout=self.interval)
        except asyncio.TimeoutError:
            error = f"timed out after {self.interval:g} s"
            collected = None
        except Exception as exc:  # a source's failure is data for the operator, never a crash
            error = one_line(exc)
            collected = None
            if not isinstance(exc, SourceError):
                log.debug("source %s raised unexpectedly", source.name, exc_info=True)
        else:
            error = None
        status = SourceStatus(source.name, collected is not None, self._clock() - started, error)
        self._log_change(self._source_up, source.name, status.up, f"source {source.name}", error)
        return collected, status

    def _log_change(self, states: dict[str, bool], key: str, up: bool, what: str, error: str | None) -> None:
        """Log once per state change, not once per tick."""
        previous = states.get(key)
        states[key] = up
        if previous is None and up:
            return
        if previous != up:
            if up:
                log.info("%s is up again", what)
            else:
                log.warning("%s is down: %s", what, error)

    async def tick(self) -> Exposition:
        started = self._clock()
        results = await asyncio.gather(*(self._collect(source) for source in self.sources))
        gpus: list[GpuSample] = []
        endpoints: list[EndpointSample] = []
        statuses = [status for _, status in results]
        for collected, _ in results:
            if collected is None:
                continue
            gpus.extend(collected.gpus)
            endpoints.extend(collected.endpoints)
            for status in collected.statuses:  # what a source read on its behalf (a dcgm-exporter page)
                statuses.append(status)
                self._log_change(
                    self._source_up, status.name, status.up, f"source {status.name}", status.error
                )
            if collected.node is not None:
                self._node = collected.node
        for gpu in gpus:
            self._log_change(self._gpu_up, gpu.info.uuid, gpu.up, f"gpu {gpu.info.index}", gpu.error)
        self._tick += 1
        snapshot = Snapshot(
            tick=self._tick,
            wall_time=self._wall_clock(),
            monotonic_time=started,
            duration_seconds=0.0,
            gpus=tuple(sorted(gpus, key=lambda g: g.info.index)),
            endpoints=tuple(endpoints),
            sources=tuple(statuses),
            node=self._node,
        )
        for stage in self.stages:
            snapshot = stage(snapshot)
        snapshot = dataclasses.replace(snapshot, duration_seconds=self._clock() - started)
        self.latest = self.renderer.render(snapshot)
        if self.publish is not None:
            self.publish(self.latest)
        return self.latest

    async def run(self, stop: asyncio.Event) -> None:
        """Tick on a fixed cadence until `stop` is set; a slow tick skips the slots it overran. A tick in
        progress when `stop` is set is cancelled (a page being parsed, a slow GPU): stopping never waits for
        the tick's time limit."""
        next_tick = self._clock()
        while not stop.is_set():
            tick = asyncio.ensure_future(self.tick())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((tick, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                if not tick.done():
                    tick.cancel()
            if tick.cancelled() or not tick.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await tick
                return
            try:
                tick.result()
            except Exception:  # a bug in a stage or the renderer must not end collection
                log.exception("tick failed; keeping the previous exposition")
            next_tick += self.interval
            now = self._clock()
            if next_tick < now:
                next_tick += (now - next_tick) // self.interval * self.interval + self.interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - now))

    async def close(self) -> None:
        for source in self.sources:
            try:
                await asyncio.wait_for(source.close(), timeout=1.0)
            except Exception as exc:
                log.warning("source %s did not close cleanly: %s", source.name, one_line(exc))


class DaemonThread:
    """Runs a Daemon's loop in a background thread; `stop()` ends it within about a second."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tpw-collector", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        try:
            await self.daemon.run(self._stop)
        finally:
            await self.daemon.close()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def stop(self, timeout: float = 1.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def published_from(exposition: Exposition, gzip_formats: Iterable[Format]) -> Published:
    """What the HTTP server serves for one tick's exposition, compressing `gzip_formats` now."""
    snapshot = exposition.snapshot
    return publish(
        snapshot.tick,
        exposition.text,
        exposition.openmetrics,
        gzip_formats,
        snapshot.node.simulated_scenario,
    )


class InProcessPublication:
    """`Publication` over a Daemon in this process (tests, embedding); `serve` uses the collector process."""

    def __init__(self, daemon: Daemon) -> None:
        from exporter.live.history import History

        self.daemon = daemon
        self._gzip: set[Format] = set()
        self._published: tuple[Exposition, Published] | None = None
        self.history = History(daemon.interval)
        publish = daemon.publish

        def record(exposition: Exposition) -> None:
            self.history.record(exposition.snapshot)
            if publish is not None:
                publish(exposition)

        daemon.publish = record

    def latest(self) -> Published:
        exposition = self.daemon.latest
        if self._published is None or self._published[0] is not exposition:
            self._published = (exposition, published_from(exposition, self._gzip))
        return self._published[1]

    def want_gzip(self, fmt: Format) -> None:
        if fmt not in self._gzip:
            self._gzip.add(fmt)
            self._published = None

    async def snapshot_json(self) -> bytes | None:
        from exporter.snapshot_json import snapshot_json

        return snapshot_json(self.daemon.latest.snapshot)

    async def history_json(self, since: int | None, run: str | None, gzip: bool) -> tuple[bytes, bool] | None:
        from exporter.live.history import history_reply

        return history_reply(self.history, since, run, gzip)
