"""The listening socket's guard: no client, or thousands of them, can use up the server's file descriptors.

asyncio's own accept loop has no connection limit, and when accept() fails with EMFILE it logs a
traceback and keeps trying the rest of its batch (each failure schedules another retry), so a few
thousand idle sockets used to silence /metrics and write tens of MB of tracebacks a minute. Here the
server accepts itself (`ConnectionGuard`), one connection at a time, and:

- keeps at most `max_connections` open: past that, accepting a new one closes a connection with no
  request in flight: the oldest that has had HEAD_GRACE_SECONDS to send its request and has not, else the
  one idle longest between requests, else the oldest new one; so a fresh scrape gets in and is not closed
  before it has sent its request. The default is derived from RLIMIT_NOFILE and well under it;
- closes a connection whose request head (the TLS handshake included) has not fully arrived
  HEADER_TIMEOUT_SECONDS after it was accepted or, on a kept-alive connection, after its first byte;
  one idle longer than KEEP_ALIVE_SECONDS between requests (uvicorn closes those first, this is the
  backstop); and one whose request has run REQUEST_TIMEOUT_SECONDS (a client that never reads its answer);
- when accept() still fails for lack of descriptors or memory, closes an idle connection or pauses
  accepting for ACCEPT_PAUSE_SECONDS;
- logs each kind of trouble at most once a LOG_PERIOD_SECONDS with the count of the others, never a
  traceback for a resource error (`BoundedLog`; `BoundedLogFilter` does the same for uvicorn's and
  asyncio's loggers).

Each new connection gets the web config's current SSLContext (`exporter.webconfig`), so a reloaded
certificate is used from the next handshake on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from exporter.webconfig import WebConfig, WebConfigWatcher, allowed_san

log = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 5.0
HEAD_GRACE_SECONDS = 1.0  # a new connection's time to send its request (or finish its TLS handshake)
KEEP_ALIVE_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 30.0
SSL_SHUTDOWN_TIMEOUT_SECONDS = 2.0
DEFAULT_MAX_CONNECTIONS = 512
MIN_CONNECTIONS = 8
FD_RESERVE = 128  # descriptors the server keeps for itself: the collector's socket, logs, epoll, /proc reads
ACCEPT_BATCH = 64  # connections accepted per wake-up before the loop serves the others
# The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). Deep, so that a burst
# of connection attempts waits there (no file descriptor) instead of having SYNs dropped: a dropped SYN,
# a scraper's too, is sent again only after a second.
LISTEN_BACKLOG = 1024
ACCEPT_PAUSE_SECONDS = 0.25
SWEEP_SECONDS = 1.0
LOG_PERIOD_SECONDS = 60.0
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

HEAD, BUSY, IDLE = "head", "busy", "idle"


def fd_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int | None, limit: int | None) -> tuple[int, str | None]:
    """The connection limit for `configured` (None: derived) under a file descriptor limit, and a warning
    when a configured value had to be lowered to fit."""
    room = None if limit is None else max(MIN_CONNECTIONS, limit - FD_RESERVE)
    if configured is None:
        derived = DEFAULT_MAX_CONNECTIONS if limit is None else (limit - FD_RESERVE) // 2
        return max(MIN_CONNECTIONS, min(DEFAULT_MAX_CONNECTIONS, derived)), None
    if room is not None and configured > room:
        return room, (
            f"web_max_connections {configured} does not fit the file descriptor limit ({limit}, less "
            f"{FD_RESERVE} kept for the server): using {room}; raise the limit (LimitNOFILE=, ulimit -n)"
        )
    return configured, None


@dataclass
class _Kind:
    last: float
    suppressed: int
    level: int
    message: str


class BoundedLog:
    """At most one line per kind per `period`; the lines left out are counted in the next one."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = LOG_PERIOD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._period = period
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}

    def report(self, kind: str, level: int, message: str) -> None:
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is None or now - entry.last >= self._period:
            more = ""
            if entry is not None and entry.suppressed:
                more = f" ({entry.suppressed} more like this in the last {now - entry.last:.0f} s)"
            self._logger.log(level, "%s%s", message, more)
            self._kinds[kind] = _Kind(now, 0, level, message)
        else:
            entry.suppressed += 1
            entry.message = message

    def flush(self) -> None:
        """Report the counts of kinds that went quiet with lines still left out."""
        now = self._clock()
        for entry in self._kinds.values():
            if entry.suppressed and now - entry.last >= self._period:
                self._logger.log(
                    entry.level,
                    "%s (%d more like this in the last %.0f s)",
                    entry.message,
                    entry.suppressed - 1,
                    now - entry.last,
                )
                entry.last, entry.suppressed = now, 0


class BoundedLogFilter(logging.Filter):
    """For loggers the exporter does not write itself (uvicorn's, asyncio's): warnings and errors at most
    once per message per `period`, and no traceback for running out of descriptors or memory."""

    def __init__(
        self, period: float = LOG_PERIOD_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._period = period
        self._clock = clock
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg)[:200])
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            record.msg = f"{record.getMessage()}: {exc.strerror or exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._period:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({int(seen[1])} more like this in the last {now - seen[0]:.0f} s)"
            )
            record.args = ()
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def install_log_filters() -> BoundedLogFilter:
    bounded = BoundedLogFilter()
    for name in ("uvicorn.error", "uvicorn", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(item, BoundedLogFilter) for item in logger.filters):
            logger.addFilter(bounded)
    return bounded


class Connection(asyncio.Protocol):
    """One accepted connection: where the guard keeps it, and the HTTP protocol it hands bytes to.

    The HTTP protocol (uvicorn's) is made when the first bytes arrive: a connection that never sends any,
    the usual hostile one, costs only this object and its transport.
    """

    def __init__(
        self, guard: ConnectionGuard, sock: socket.socket, peer: tuple[str, int], web: WebConfig
    ) -> None:
        self.guard = guard
        self.sock = sock
        self.peer = peer
        self.web = web
        self.state = HEAD
        self.since = time.monotonic()
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.task: asyncio.Task[Any] | None = None
        self.started = False  # asyncio has taken the socket (and closes it from now on)
        self.closed = False

    def protocol(self) -> Connection:
        """The factory asyncio calls once the socket has a transport."""
        self.started = True
        return self

    def connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            if not self.started:  # cancelled before asyncio took the socket: close it here
                self.sock.close()
            self.guard.forget(self)
            return
        exc = task.exception()
        if exc is not None:  # a failed TLS handshake; asyncio has closed the socket
            self.guard.forget(self)
            self.guard.log.report("handshake", logging.INFO, f"TLS handshake failed: {_reason(exc)}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.closed:
            transport.abort()  # type: ignore[attr-defined]
            return
        tls = self.web.tls
        if tls is not None and not allowed_san(tls, transport.get_extra_info("peercert")):
            self.guard.log.report(
                "san",
                logging.WARNING,
                "closed a TLS connection: its client certificate has no allowed SAN",
            )
            self.guard.close(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.state == IDLE:
            self.guard.move(self, HEAD)
        if self.inner is None:
            self.inner = self.guard.protocol_factory()
            self.inner.connection_made(self.transport)  # type: ignore[arg-type]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]
        elif self.task is not None:
            self.task.cancel()
        else:
            self.sock.close()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class ConnectionGuard:
    """Accepts on `listener` and keeps the connections within the limits (see the module docstring)."""

    def __init__(
        self, listener: socket.socket, watcher: WebConfigWatcher, max_connections: int | None
    ) -> None:
        self.listener = listener
        self.watcher = watcher
        self.limit = fd_limit()
        self.max_connections, self._cap_warning = connection_cap(max_connections, self.limit)
        self.log = BoundedLog(log)
        self.protocol_factory: Callable[[], asyncio.Protocol] = _no_protocol
        self._states: dict[str, dict[Connection, None]] = {HEAD: {}, BUSY: {}, IDLE: {}}
        self._by_peer: dict[tuple[str, int], Connection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._reading = False
        self.accepted = 0

    @property
    def open(self) -> int:
        return sum(len(connections) for connections in self._states.values())

    def start(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self.protocol_factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        self.listener.listen(LISTEN_BACKLOG)  # listening already: this only deepens its queue
        self._start_reading()
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)
        if self._cap_warning:
            log.warning("%s", self._cap_warning)
        limit = "unlimited" if self.limit is None else str(self.limit)
        log.info(
            "listener: %s; at most %d connections (file descriptor limit %s)",
            self.watcher.current.summary(),
            self.max_connections,
            limit,
        )

    def _start_reading(self) -> None:
        assert self._loop is not None
        self._resume = None
        if not self._reading and self.listener.fileno() >= 0:
            self._loop.add_reader(self.listener.fileno(), self._accept)
            self._reading = True

    def _pause(self) -> None:
        assert self._loop is not None
        if self._reading:
            self._loop.remove_reader(self.listener.fileno())
            self._reading = False
        if self._resume is None:
            self._resume = self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._start_reading)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    victim = self._oldest_idle()
                    action = "closed the oldest idle connection" if victim else "pausing accepts"
                    self.log.report(
                        "accept-resource",
                        logging.WARNING,
                        f"cannot accept a connection: {exc.strerror} ({self.open} open, file descriptor "
                        f"limit {self.limit}); {action}",
                    )
                    if victim is not None:
                        self.close(victim, "")
                    else:
                        self._pause()
                else:
                    self.log.report("accept-error", logging.WARNING, f"accept failed: {exc.strerror or exc}")
                    self._pause()
                return
            self._admit(sock, address)

    def _oldest_idle(self) -> Connection | None:
        """The connection to close for room: the oldest that has had HEAD_GRACE_SECONDS to send a request
        and has not, else the longest idle between requests, else the oldest still in its first moments."""
        head = next(iter(self._states[HEAD]), None)
        if head is not None and time.monotonic() - head.since >= HEAD_GRACE_SECONDS:
            return head
        return next(iter(self._states[IDLE]), head)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        assert self._loop is not None
        self.accepted += 1
        while self.open >= self.max_connections:
            victim = self._oldest_idle()
            if victim is None:
                sock.close()
                self.log.report(
                    "full",
                    logging.WARNING,
                    f"refused a connection: {self.open} connections open (web_max_connections), every one "
                    "with a request in flight",
                )
                return
            self.close(
                victim,
                f"connection limit ({self.max_connections}, web_max_connections) reached: closed the oldest "
                "connection without a request in flight",
                kind="evicted",
            )
        web = self.watcher.current
        peer = (str(address[0]), int(address[1]))
        connection = Connection(self, sock, peer, web)
        self._states[HEAD][connection] = None
        self._by_peer[peer] = connection
        kwargs: dict[str, Any] = {}
        if web.ssl_context is not None:
            kwargs = {"ssl": web.ssl_context, "ssl_handshake_timeout": HEADER_TIMEOUT_SECONDS + 1}
            if sys.version_info >= (3, 11):
                kwargs["ssl_shutdown_timeout"] = SSL_SHUTDOWN_TIMEOUT_SECONDS
        task = self._loop.create_task(self._loop.connect_accepted_socket(connection.protocol, sock, **kwargs))
        connection.task = task
        task.add_done_callback(connection.connected)

    def move(self, connection: Connection, state: str) -> None:
        if connection.closed or connection.state == state:
            return
        del self._states[connection.state][connection]
        connection.state = state
        connection.since = time.monotonic()
        self._states[state][connection] = None

    def request_started(self, client: Any) -> None:
        """A request on the connection from `client` (the ASGI scope's) reached the app."""
        connection = self._by_peer.get(tuple(client)) if client else None
        if connection is not None:
            self.move(connection, BUSY)

    def request_finished(self, client: Any) -> None:
        connection = self._by_peer.get(tuple(client)) if client else None
        if connection is not None:
            self.move(connection, IDLE)

    def forget(self, connection: Connection) -> None:
        """The connection is gone (closed by either side, or its handshake failed)."""
        if not connection.closed:
            connection.closed = True
            del self._states[connection.state][connection]
        if self._by_peer.get(connection.peer) is connection:
            del self._by_peer[connection.peer]

    def close(self, connection: Connection, message: str = "", kind: str = "") -> None:
        self.forget(connection)
        connection.abort()
        if message:
            self.log.report(kind or message, logging.WARNING, message)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        for state, timeout, kind, level, message in (
            (HEAD, HEADER_TIMEOUT_SECONDS, "header-timeout", logging.INFO,
             f"closed a connection that sent no complete request within {HEADER_TIMEOUT_SECONDS:g} s"),
            (BUSY, REQUEST_TIMEOUT_SECONDS, "request-timeout", logging.WARNING,
             f"closed a connection whose request ran {REQUEST_TIMEOUT_SECONDS:g} s (a client not reading its "
             "answer?)"),
            (IDLE, KEEP_ALIVE_SECONDS + SWEEP_SECONDS, "", logging.DEBUG, ""),
        ):  # fmt: skip
            connections = self._states[state]
            while connections:
                connection = next(iter(connections))
                if now - connection.since < timeout:
                    break
                self.close(connection)
                if kind:
                    self.log.report(kind, level, message)
        self.watcher.check()
        self.log.flush()
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    # asyncio.Server's interface, as uvicorn's shutdown uses it
    def close_listener(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.listener.fileno())
            self._reading = False
        for handle in (self._resume, self._sweeper):
            if handle is not None:
                handle.cancel()
        self.listener.close()
        for connection in list(self._states[HEAD]):
            if connection.inner is None:  # uvicorn shuts down those it knows; these never sent a byte
                self.close(connection)

    async def wait_closed(self) -> None:
        return None


def _no_protocol() -> asyncio.Protocol:
    raise RuntimeError("ConnectionGuard.start() was not called")


class GuardedServer(uvicorn.Server):
    """uvicorn's server, accepting through a `ConnectionGuard` instead of asyncio's accept loop."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan only: uvicorn is given no socket to serve itself
        if not self.started:
            return
        config, state, loop = self.config, self.server_state, asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state, _loop=loop
            )

        install_log_filters()
        self.guard.start(protocol)
        self.servers = [_ServerHandle(self.guard)]  # type: ignore[list-item]


class _ServerHandle:
    """What uvicorn's shutdown calls on each server: close, then wait_closed."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def close(self) -> None:
        self.guard.close_listener()

    async def wait_closed(self) -> None:
        return None
