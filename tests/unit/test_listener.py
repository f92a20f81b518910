"""The connection guard on real loopback sockets in one event loop: the connection cap and which connection
goes, the header timeout, EMFILE at accept; and the bounded logging. The exporter process under a low
`ulimit -n` is tests/integration/test_web_listener.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import pytest

from exporter import listener as listener_module
from exporter.listener import (
    BUSY,
    HEAD,
    IDLE,
    BoundedLog,
    BoundedLogFilter,
    ConnectionGuard,
    connection_cap,
)
from exporter.webconfig import WebConfigWatcher


@pytest.mark.parametrize(
    ("configured", "limit", "expected"),
    [
        (None, 1024, 448),  # half of what is left after the reserve
        (None, 256, 64),
        (None, 20000, 512),  # never more than 512 by default
        (None, None, 512),  # unlimited
        (None, 100, 8),  # a floor
        (300, 1024, 300),
        (2000, 20000, 2000),
    ],
)
def test_connection_cap(configured: int | None, limit: int | None, expected: int) -> None:
    assert connection_cap(configured, limit) == (expected, None)


def test_a_configured_cap_over_the_descriptor_limit_is_lowered_with_a_warning() -> None:
    cap, warning = connection_cap(5000, 1024)
    assert cap == 896
    assert warning == (
        "web_max_connections 5000 does not fit the file descriptor limit (1024, less 128 kept for the "
        "server): using 896; raise the limit (LimitNOFILE=, ulimit -n)"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bounded_log_writes_one_line_per_kind_per_period_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    bounded = BoundedLog(logging.getLogger("test.bounded"), period=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.bounded"):
        for second in range(120):
            clock.now = float(second)
            bounded.report("a", logging.WARNING, "trouble a")
            bounded.report("b", logging.INFO, "trouble b")
        clock.now = 200.0
        bounded.flush()
        bounded.flush()
    assert [record.getMessage() for record in caplog.records] == [
        "trouble a",
        "trouble b",
        "trouble a (59 more like this in the last 60 s)",
        "trouble b (59 more like this in the last 60 s)",
        "trouble a (58 more like this in the last 140 s)",  # the 59 left out since: the last one, and 58 more
        "trouble b (58 more like this in the last 140 s)",
    ]


def test_bounded_filter_drops_repeats_and_resource_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("test.filtered")
    logger.addFilter(BoundedLogFilter(period=60.0, clock=clock))
    try:
        with caplog.at_level(logging.INFO, logger="test.filtered"):
            for _ in range(1000):
                try:
                    raise OSError(errno.EMFILE, "Too many open files")
                except OSError:
                    logger.exception("socket.accept() out of system resource")
                logger.info("informational lines pass")
            clock.now = 61.0
            logger.error("socket.accept() out of system resource")
    finally:
        logger.filters.clear()
    errors = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in errors] == [
        "socket.accept() out of system resource: Too many open files",
        "socket.accept() out of system resource (999 more like this in the last 61 s)",
    ]
    assert all(record.exc_info is None for record in errors)
    assert "Traceback" not in caplog.text
    assert sum(record.levelno == logging.INFO for record in caplog.records) == 1000


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 1.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except asyncio.TimeoutError:  # before OSError: in 3.11 it is the builtin TimeoutError, an OSError
        return False
    except OSError:
        return True


def peer_of(writer: asyncio.StreamWriter) -> tuple[str, int]:
    host, port = writer.get_extra_info("sockname")[:2]
    return (host, port)


async def settle(guard: ConnectionGuard, open_: int) -> None:
    for _ in range(100):
        if guard.open == open_:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"guard has {guard.open} connections open, expected {open_}")


def test_over_the_cap_the_oldest_connection_without_a_request_goes(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        listening = listening_socket()
        port = listening.getsockname()[1]
        guard = ConnectionGuard(listening, WebConfigWatcher(None), max_connections=3)
        guard.start(Recorder)
        a = await connect(port)
        await settle(guard, 1)
        b = await connect(port)
        await settle(guard, 2)
        guard.request_started(peer_of(b[1]))  # b has a request in flight: never evicted
        c = await connect(port)
        await settle(guard, 3)
        d = await connect(port)
        await asyncio.sleep(0.05)
        assert await closed_by_server(a[0])
        assert guard.open == 3
        e = await connect(port)
        await asyncio.sleep(0.05)
        assert await closed_by_server(c[0])
        for kept in (b, d, e):
            assert not await closed_by_server(kept[0], timeout=0.05)
        states = {connection.peer: connection.state for connection in guard._by_peer.values()}
        assert states == {peer_of(b[1]): BUSY, peer_of(d[1]): HEAD, peer_of(e[1]): HEAD}
        guard.request_finished(peer_of(b[1]))
        assert guard._by_peer[peer_of(b[1])].state == IDLE
        for _, writer in (b, d, e):
            writer.close()
        await settle(guard, 0)
        guard.close_listener()

    with caplog.at_level(logging.INFO, logger="exporter.listener"):
        asyncio.run(scenario())
    evictions = [r.getMessage() for r in caplog.records if "connection limit" in r.getMessage()]
    assert evictions == [
        "connection limit (3, web_max_connections) reached: closed the oldest connection without a "
        "request in flight"
    ]  # the second eviction, within the minute, is counted, not written


def test_past_the_cap_a_stale_head_goes_first_then_an_idle_one_and_a_new_one_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "HEAD_GRACE_SECONDS", 0.3)

    async def scenario() -> None:
        listening = listening_socket()
        port = listening.getsockname()[1]
        guard = ConnectionGuard(listening, WebConfigWatcher(None), max_connections=3)
        guard.start(Recorder)
        stale = await connect(port)
        kept_alive = await connect(port)
        await settle(guard, 2)
        guard.request_started(peer_of(kept_alive[1]))
        guard.request_finished(peer_of(kept_alive[1]))  # answered, now idle between requests
        await asyncio.sleep(0.4)  # `stale` has had its grace and sent nothing
        fresh = await connect(port)
        await settle(guard, 3)
        newer = await connect(port)
        assert await closed_by_server(stale[0])
        newest = await connect(port)
        assert await closed_by_server(kept_alive[0])  # before any connection still in its grace
        latest = await connect(port)
        assert await closed_by_server(fresh[0])  # nothing else left to close: the oldest new one
        for kept in (newer, newest, latest):
            assert not await closed_by_server(kept[0], timeout=0.05)
        guard.close_listener()

    asyncio.run(scenario())


def test_a_connection_without_a_request_head_is_closed_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "HEADER_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(listener_module, "SWEEP_SECONDS", 0.05)

    async def scenario() -> None:
        listening = listening_socket()
        port = listening.getsockname()[1]
        guard = ConnectionGuard(listening, WebConfigWatcher(None), max_connections=10)
        guard.start(Recorder)
        idle = await connect(port)
        slow = await connect(port)
        busy = await connect(port)
        await settle(guard, 3)
        guard.request_started(peer_of(busy[1]))
        for _ in range(4):  # a byte at a time does not extend the deadline
            slow[1].write(b"G")
            await asyncio.sleep(0.1)
        assert await closed_by_server(idle[0], timeout=0.5)
        assert await closed_by_server(slow[0], timeout=0.5)
        assert not await closed_by_server(busy[0], timeout=0.4)
        assert guard.open == 1
        busy[1].close()
        guard.close_listener()

    asyncio.run(scenario())


class FailingListener(socket.socket):
    """A listening socket whose accept() fails with EMFILE `failures` times."""

    failures = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if FailingListener.failures:
            FailingListener.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_emfile_at_accept_closes_an_idle_connection_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        listening = FailingListener()
        listening.bind(("127.0.0.1", 0))
        listening.listen(128)
        port = listening.getsockname()[1]
        guard = ConnectionGuard(listening, WebConfigWatcher(None), max_connections=10)
        guard.start(Recorder)
        old = await connect(port)
        await settle(guard, 1)
        FailingListener.failures = 3
        new = await connect(port)
        assert await closed_by_server(old[0])  # closed to free a descriptor
        await settle(guard, 1)  # and the new one got in once accept() worked again
        assert guard._by_peer.keys() == {peer_of(new[1])}
        new[1].close()
        guard.close_listener()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(
        "cannot accept a connection: Too many open files (1 open, file descriptor limit"
    )
    assert "Traceback" not in caplog.text
