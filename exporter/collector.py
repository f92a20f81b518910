"""Collection in its own process, so that a scrape never waits on a tick.

A tick (NVML reads, endpoint scrapes, parsing, derivation, rendering) is Python work that holds the
interpreter for milliseconds at a time, tens of them on a large node; in one process every scrape that
lands meanwhile waits for it. So the server forks a collector process at start-up. The collector ticks and
sends each tick's `Published` bytes over a socket pair; the server only swaps a reference when a frame
arrives and answers scrapes from it.

Frames, both directions: a 4-byte big-endian length, then a pickle of a tuple.
  collector → server  ("started",) once its sources are open, or ("error", message) if they cannot be;
                      ("published", Published) after every tick; ("snapshot", json_bytes) on request;
                      ("history", id, body, gzipped) answering a history request.
  server → collector  ("gzip", Format): a scraper wants that format compressed; ("snapshot",): send the
                      latest snapshot as JSON; ("history", id, since, run, gzip): the live page's history
                      (exporter/live/history.py) as JSON, gzipped if asked and worth it. End of file: the
                      server is gone, stop.

If the collector dies (a driver bug that segfaults, the OOM killer) the server keeps answering: `/metrics`
says `tpw_exporter_collector_up 0` and nothing stale, `/readyz` fails, and a new collector is forked after
1, 2, 4 … 30 s; it counts the restarts in `tpw_exporter_collector_restarts_total`. A collector that exits
cleanly (SIGTERM from a control-group kill) stops the server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from exporter.published import Format, Published, collector_down

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from exporter.config import Config
    from exporter.live.history import History
    from exporter.model import Snapshot
    from exporter.render.exposition import Exposition

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
RESTART_BACKOFF_SECONDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_SECONDS = 60.0  # a collector up this long resets the restart backoff
SNAPSHOT_TIMEOUT_SECONDS = 5.0
MAX_UNSENT_BYTES = 64 * 1024  # requests queued behind a frame the socket took only in part
COLLECTOR_NICENESS = 10

# The collector's code: given its end of the socket pair and the restart count, collect until told to stop;
# returns the process's exit code.
CollectorTarget = Callable[[socket.socket, int], int]


class CollectorError(Exception):
    """The collector process could not be started."""


def encode_frame(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Reassembles frames from a byte stream read in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages: list[tuple[Any, ...]] = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[HEADER.size : end]))
            del self._buffer[:end]
        return messages


def describe_exit(status: int) -> str:
    """'exit code 1' or 'killed by SIGSEGV' for a wait status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


# ---------------------------------------------------------------------------------------------------------
# The collector's side


class CollectorChannel:
    """The collector's end: publishes each tick, answers the server's requests, notices when it is gone."""

    def __init__(self, sock: socket.socket, stop: asyncio.Event, history: History | None = None) -> None:
        self._sock = sock
        self._stop = stop
        self._decoder = FrameDecoder()
        self._gzip: set[Format] = set()
        self._latest: Exposition | None = None
        self._history = history

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self._sock.sendall(encode_frame(message))
        except OSError:  # the server is gone: stop rather than tick for no one
            self._stop.set()

    def publish(self, exposition: Exposition) -> None:
        from exporter.daemon import published_from

        self._latest = exposition
        self.send(("published", published_from(exposition, self._gzip)))
        if self._history is not None:  # after the send: the server has the tick's bytes first
            self._history.record(exposition.snapshot)

    def on_readable(self) -> None:
        try:
            data = self._sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop.set()
            return
        for message in self._decoder.feed(data):
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == "gzip":
            if message[1] not in self._gzip:
                self._gzip.add(message[1])
                if self._latest is not None:  # compressed from now, not from the next tick
                    self.publish(self._latest)
        elif message[0] == "snapshot" and self._latest is not None:
            from exporter.snapshot_json import snapshot_json

            self.send(("snapshot", snapshot_json(self._latest.snapshot)))
        elif message[0] == "history" and self._history is not None:
            from exporter.live.history import history_reply

            self.send(("history", message[1], *history_reply(self._history, *message[2:])))


def collector_families(restarts: int) -> Callable[[Snapshot], Iterator[Metric]]:
    """The collector's own series: up, and how often the server had to restart it."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from exporter.published import COLLECTOR_DOWN_HELP

    def families(_: Snapshot) -> Iterator[Metric]:
        up = GaugeMetricFamily("tpw_exporter_collector_up", COLLECTOR_DOWN_HELP)
        up.add_metric([], 1.0)
        yield up
        count = CounterMetricFamily(
            "tpw_exporter_collector_restarts",
            "Times the collection process died and was restarted since the exporter started.",
        )
        count.add_metric([], float(restarts))
        yield count

    return families


def run_collector(sock: socket.socket, restarts: int, config: Config, command: str) -> int:
    """The collector process's main: open the node's sources, tick until the server goes; the exit code."""
    from exporter.config import ConfigError

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us
    # Collection is background work and scrapes are not: on a busy node the scheduler runs the server
    # (woken by a scrape) ahead of a tick in progress rather than after the tick's time slice.
    with contextlib.suppress(OSError):
        os.nice(COLLECTOR_NICENESS)
    try:
        asyncio.run(_collect(sock, restarts, config, command))
    except ConfigError as exc:
        with contextlib.suppress(OSError):
            sock.sendall(encode_frame(("error", str(exc))))
        return 2
    return 0


async def _collect(sock: socket.socket, restarts: int, config: Config, command: str) -> None:
    from exporter.node import build_daemon, build_node

    node = build_node(config, command)  # a ConfigError here is reported to the server, which exits 2
    try:
        stop = asyncio.Event()
        from exporter.live.history import History

        channel = CollectorChannel(sock, stop, History(config.interval))
        daemon = build_daemon(node, config, extra_families=[collector_families(restarts)])
        daemon.publish = channel.publish
        channel.send(("started",))
        channel.publish(daemon.latest)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(sock.fileno(), channel.on_readable)
        try:
            await daemon.run(stop)
        finally:
            loop.remove_reader(sock.fileno())
            await daemon.close()
    finally:
        for stop_part in node.stop:
            stop_part()


# ---------------------------------------------------------------------------------------------------------
# The server's side


class CollectorProcess:
    """The server's handle on the collector: forks it, reads its frames, restarts it when it dies.

    Implements `exporter.published.Publication` for the HTTP app. `on_exit` is called when the collector
    exits cleanly on its own (it was sent SIGTERM): the server should stop too.
    """

    def __init__(
        self,
        target: CollectorTarget,
        on_exit: Callable[[], None] = lambda: None,
        backoff: tuple[float, ...] = RESTART_BACKOFF_SECONDS,
    ) -> None:
        self._target = target
        self._on_exit = on_exit
        self._backoff = backoff
        self._restarts = 0
        self._failures = 0
        self._pid: int | None = None
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._started_at = 0.0
        self._latest = collector_down()
        self._gzip: set[Format] = set()
        self._waiters: list[asyncio.Future[bytes | None]] = []
        self._history_waiters: dict[int, asyncio.Future[tuple[bytes, bool] | None]] = {}
        self._history_requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restart_handle: asyncio.TimerHandle | None = None
        self._stopping = False
        self._unsent = bytearray()  # the rest of a request frame the socket took only in part, and
        self._queued_bytes = 0  # the frames queued behind it

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def restarts(self) -> int:
        return self._restarts

    # -- Publication

    def latest(self) -> Published:
        return self._latest

    def want_gzip(self, fmt: Format) -> None:
        if fmt not in self._gzip:
            self._gzip.add(fmt)
            self._send(("gzip", fmt))

    async def snapshot_json(self) -> bytes | None:
        if self._sock is None or not self._latest.collector_up:
            return None
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._send(("snapshot",))
        try:
            return await asyncio.wait_for(asyncio.shield(future), SNAPSHOT_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)

    async def history_json(self, since: int | None, run: str | None, gzip: bool) -> tuple[bytes, bool] | None:
        if self._sock is None or not self._latest.collector_up:
            return None
        self._history_requests += 1
        request = self._history_requests  # answers are matched by id: each asks for its own `since`
        future: asyncio.Future[tuple[bytes, bool] | None] = asyncio.get_running_loop().create_future()
        self._history_waiters[request] = future
        self._send(("history", request, since, run, gzip))
        try:
            return await asyncio.wait_for(asyncio.shield(future), SNAPSHOT_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            return None
        finally:
            self._history_waiters.pop(request, None)

    # -- life cycle

    def start(self, timeout: float) -> None:
        """Fork the collector and wait until its sources are open and it published its first exposition;
        ConfigError if the config names what the node lacks, CollectorError if it died or did not answer
        within `timeout` seconds."""
        from exporter.config import ConfigError

        self._fork()
        assert self._sock is not None and self._pid is not None
        self._sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self._sock.recv(1 << 20)
                if not data:
                    raise CollectorError(f"collector process ended during start-up ({self._reap()})")
                for message in self._decoder.feed(data):
                    if message[0] == "error":
                        self._reap()
                        raise ConfigError(message[1])
                    self._handle(message)
                if self._started_at and self._latest.collector_up:  # started, and its first exposition
                    break
        except TimeoutError:
            self._kill()
            raise CollectorError(f"collector process did not start within {timeout:g} s") from None
        self._sock.setblocking(False)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the collector's frames on the server's event loop from now on."""
        self._loop = loop
        if self._sock is not None:
            loop.add_reader(self._sock.fileno(), self._on_readable)

    def stop(self, timeout: float = 2.0) -> None:
        """Close the socket (the collector stops at end of file), wait up to `timeout`, then kill."""
        self._stopping = True
        if self._restart_handle is not None:
            self._restart_handle.cancel()
        self._detach()
        if self._pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._pid = None
                return
            time.sleep(0.01)
        log.warning("collector process %d did not stop within %g s; killing it", self._pid, timeout)
        self._kill()

    # -- internals

    def _fork(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent, child):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        if threading.active_count() > 1:
            log.warning("forking the collector from a process with %d threads", threading.active_count())
        pid = os.fork()
        if pid == 0:  # the collector: never returns into the server's stack
            code = 1
            try:
                # Only stdio and its socket: a listening socket or a scraper's connection inherited from
                # the server would otherwise stay open as long as the collector lives.
                os.closerange(3, child.fileno())
                os.closerange(child.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
                asyncio.events._set_running_loop(None)  # forked inside the server's loop (restarts)
                code = self._target(child, self._restarts)
            except BaseException:
                log.exception("collector process failed")
            finally:
                os._exit(code)
        child.close()
        self._pid = pid
        self._sock = parent
        self._decoder = FrameDecoder()
        self._stop_flushing()
        self._started_at = 0.0

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send a request frame without blocking the server. A frame the socket takes only in part has its
        rest sent when the socket is writable again (`_flush`), ahead of any later frame; while it waits,
        later frames queue behind it up to `MAX_UNSENT_BYTES`. A frame that finds the socket full, or the
        queue at its cap, is dropped whole (a collector that stopped reading: its asker times out), so the
        stream never carries a torn frame."""
        if self._sock is None:
            return
        frame = encode_frame(message)
        if self._unsent:
            if self._queued_bytes + len(frame) <= MAX_UNSENT_BYTES:
                self._unsent += frame
                self._queued_bytes += len(frame)
            return
        try:
            sent = self._sock.send(frame)
        except OSError:  # full (BlockingIOError), or a dead collector, which the reader notices
            return
        if sent < len(frame):
            self._unsent = bytearray(frame[sent:])
            if self._loop is not None:
                self._loop.add_writer(self._sock.fileno(), self._flush)

    def _flush(self) -> None:
        """Send what `_send` left unsent, as much as the socket takes now."""
        if self._sock is None or not self._unsent:
            self._stop_flushing()
            return
        try:
            sent = self._sock.send(self._unsent)
        except BlockingIOError:
            return
        except OSError:
            self._stop_flushing()
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._stop_flushing()

    def _stop_flushing(self) -> None:
        self._unsent.clear()
        self._queued_bytes = 0
        if self._sock is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._sock.fileno())

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "published":
            self._latest = message[1]
        elif kind == "snapshot":
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(message[1])
        elif kind == "history":
            asked = self._history_waiters.get(message[1])
            if asked is not None and not asked.done():
                asked.set_result((message[2], message[3]))
        elif kind == "started":
            self._started_at = time.monotonic()
            for fmt in self._gzip:
                self._send(("gzip", fmt))
        elif kind == "error":
            log.error("collector could not start: %s", message[1])

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._collector_ended()
                return
            for message in self._decoder.feed(data):
                self._handle(message)

    def _detach(self) -> None:
        self._stop_flushing()
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _reap(self) -> str:
        """Wait for the collector that closed its socket; its exit described."""
        if self._pid is None:
            return "not running"
        deadline = time.monotonic() + 1.0
        while True:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._pid = None
                return describe_exit(status)
            if time.monotonic() > deadline:
                self._kill()
                return "did not exit after closing its socket; killed"
            time.sleep(0.005)

    def _kill(self) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)
        self._pid = None

    def _collector_ended(self) -> None:
        self._detach()
        up_for = time.monotonic() - self._started_at if self._started_at else 0.0
        how = self._reap()
        self._latest = collector_down()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        for asked in self._history_waiters.values():
            if not asked.done():
                asked.set_result(None)
        if self._stopping:
            return
        if how == "exit code 0":
            log.info("collector process stopped (%s); stopping the server", how)
            self._on_exit()
            return
        if up_for >= STABLE_AFTER_SECONDS:
            self._failures = 0
        delay = self._backoff[min(self._failures, len(self._backoff) - 1)]
        self._failures += 1
        log.error("collector process died (%s); restarting it in %g s", how, delay)
        assert self._loop is not None
        self._restart_handle = self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_handle = None
        if self._stopping:
            return
        self._restarts += 1
        self._fork()
        assert self._sock is not None and self._loop is not None
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
