"""The collector process seen from the server: frames, crashes and restarts, clean exits, requests.

The targets here are small functions run in a real forked child over a real socket pair, so the
server-side code under test (`CollectorProcess`) is the code `serve` runs.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import socket
import time

import pytest

from exporter.collector import CollectorError, CollectorProcess, FrameDecoder, encode_frame
from exporter.config import ConfigError
from exporter.published import Format, Published, accepts_gzip, negotiate_format, publish


def test_frames_reassemble_from_any_split() -> None:
    messages = [("published", publish(n, b"t" * n, b"o" * n)) for n in range(1, 6)]
    stream = b"".join(encode_frame(m) for m in messages)
    for step in (1, 7, 4096, len(stream)):
        decoder = FrameDecoder()
        received = []
        for i in range(0, len(stream), step):
            received.extend(decoder.feed(stream[i : i + step]))
        assert [m[1].tick for m in received] == [1, 2, 3, 4, 5]
        assert received[2][1].bodies[Format.TEXT] == b"ttt"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, GZIP;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("deflate", False),
        ("", False),
        ("gzip;q=banana", False),
    ],
)
def test_accept_encoding(header: str, wanted: bool) -> None:
    assert accepts_gzip(header) is wanted


def test_format_negotiation_and_deterministic_gzip() -> None:
    assert negotiate_format("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3") is (
        Format.OPENMETRICS
    )
    assert negotiate_format("text/plain") is Format.TEXT and negotiate_format("") is Format.TEXT
    one = publish(1, b"a 1\n" * 100, b"a 1\n# EOF\n", gzip_formats=[Format.TEXT])
    two = publish(1, b"a 1\n" * 100, b"a 1\n# EOF\n", gzip_formats=[Format.TEXT])
    assert one.gzipped[Format.TEXT] == two.gzipped[Format.TEXT]  # no timestamp in the header
    assert gzip.decompress(one.gzipped[Format.TEXT]) == b"a 1\n" * 100
    assert Format.OPENMETRICS not in one.gzipped


# -- fake collectors: what run_collector does on the wire, without a node


def ticking(sock: socket.socket, restarts: int) -> int:
    """Starts, then publishes a tick every 20 ms, answering gzip and snapshot requests, until EOF."""
    sock.sendall(encode_frame(("started",)))
    decoder, wanted, tick = FrameDecoder(), set(), 0
    sock.settimeout(0.02)
    while True:
        tick += 1
        body = f"restarts {restarts}\ntick {tick}\n".encode()
        sock.sendall(encode_frame(("published", publish(tick, body, body + b"# EOF\n", wanted))))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return 0
        for message in decoder.feed(data):
            if message[0] == "gzip":
                wanted.add(message[1])
            elif message[0] == "snapshot":
                sock.sendall(encode_frame(("snapshot", f'{{"tick": {tick}}}'.encode())))


def crashing_once(sock: socket.socket, restarts: int) -> int:
    """The first collector dies of SIGSEGV after a few ticks; the restarted one ticks normally."""
    if restarts == 0:
        sock.sendall(encode_frame(("started",)))
        sock.sendall(encode_frame(("published", publish(1, b"first\n", b"first\n# EOF\n"))))
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGSEGV)
    return ticking(sock, restarts)


def config_error(sock: socket.socket, restarts: int) -> int:
    sock.sendall(encode_frame(("error", "nvml.devices: no GPU 7 on this node (it has 0-3)")))
    return 2


def exits_at_once(sock: socket.socket, restarts: int) -> int:
    return 3


def slow_reader(sock: socket.socket, restarts: int) -> int:
    """Starts, then reads nothing for a second (a collector busy in a long tick), then reads every frame,
    and answers a snapshot request with what it received: the ids of the history requests in order, or the
    error that decoding the stream raised (a torn frame)."""
    sock.sendall(encode_frame(("started",)))
    sock.sendall(encode_frame(("published", publish(1, b"a 1\n", b"a 1\n# EOF\n"))))
    time.sleep(1.0)
    decoder, ids = FrameDecoder(), []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return 0
        try:
            messages = decoder.feed(data)
        except Exception as exc:  # a torn frame: the stream is garbage from here on
            sock.sendall(encode_frame(("snapshot", f"error {type(exc).__name__}".encode())))
            return 1
        for message in messages:
            if message[0] == "history":
                ids.append(message[1])
            elif message[0] == "snapshot":
                sock.sendall(encode_frame(("snapshot", " ".join(map(str, ids)).encode())))


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_ticks_flow_and_requests_reach_the_collector() -> None:
    collector = CollectorProcess(ticking)
    collector.start(timeout=5)

    async def scenario() -> None:
        collector.attach(asyncio.get_running_loop())
        first = collector.latest().tick
        await until(lambda: collector.latest().tick > first + 2)
        assert collector.latest().ready
        collector.want_gzip(Format.OPENMETRICS)
        await until(lambda: Format.OPENMETRICS in collector.latest().gzipped)
        published: Published = collector.latest()
        assert gzip.decompress(published.gzipped[Format.OPENMETRICS]) == published.bodies[Format.OPENMETRICS]
        assert b'"tick"' in (await collector.snapshot_json() or b"")

    try:
        asyncio.run(scenario())
    finally:
        pid = collector.pid
        collector.stop(timeout=2)
    assert pid is not None
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(pid, os.WNOHANG)


def test_requests_sent_while_the_collector_is_not_reading_never_tear_a_frame() -> None:
    """The server's socket fills while the collector is busy: a frame the socket takes in part is finished
    when it drains, ahead of later ones, which queue behind it; frames that find the socket full are dropped
    whole. The collector decodes the whole stream. (Linux takes a small frame on a Unix socket whole or not
    at all, so the frames that fill it here are large; the server's own requests are small, and this guards
    the framing whatever the kernel does.)"""
    collector = CollectorProcess(slow_reader)
    collector.start(timeout=5)
    sent, torn = 0, 0

    async def scenario() -> bytes | None:
        nonlocal sent, torn
        collector.attach(asyncio.get_running_loop())
        while not collector._unsent and sent < 1000:  # 100 kB frames until one goes out in part
            sent += 1
            collector._send(("history", sent, None, "r" * 100_000, False))
        assert collector._unsent, "the socket never took a frame in part"
        torn = sent
        for _ in range(100):  # small ones queue behind it
            sent += 1
            collector._send(("history", sent, None, "r", False))
        await until(lambda: not collector._unsent)  # the collector reads again: the rest goes out
        return await collector.snapshot_json()

    try:
        answer = asyncio.run(scenario())
    finally:
        collector.stop(timeout=2)
    assert answer is not None and not answer.startswith(b"error"), answer
    ids = [int(i) for i in answer.split()]
    assert ids == sorted(set(ids)) and torn in ids  # in order, none twice, the part-sent one whole
    assert ids[-100:] == list(range(torn + 1, sent + 1))  # the queue behind it went out too


def test_a_crashed_collector_is_reported_down_then_restarted(caplog: pytest.LogCaptureFixture) -> None:
    collector = CollectorProcess(crashing_once, backoff=(0.3,))
    collector.start(timeout=5)
    seen_down: list[Published] = []

    async def scenario() -> None:
        collector.attach(asyncio.get_running_loop())
        await until(lambda: not collector.latest().collector_up)
        down = collector.latest()
        seen_down.append(down)
        assert await collector.snapshot_json() is None
        await until(lambda: collector.latest().collector_up and collector.latest().tick > 0)

    try:
        asyncio.run(scenario())
        restarted = collector.latest()
    finally:
        collector.stop(timeout=2)
    down = seen_down[0]
    assert not down.ready
    assert down.bodies[Format.TEXT] == (
        b"# HELP tpw_exporter_collector_up 1 while the collection process runs and publishes; "
        b"0 after it stopped unexpectedly, until it is restarted.\n"
        b"# TYPE tpw_exporter_collector_up gauge\ntpw_exporter_collector_up 0.0\n"
    )
    assert down.bodies[Format.OPENMETRICS].endswith(b"# EOF\n")
    assert restarted.bodies[Format.TEXT].startswith(b"restarts 1\n")
    assert collector.restarts == 1
    assert any(
        "killed by SIGSEGV" in r.message and "restarting it in 0.3 s" in r.message for r in caplog.records
    )


def test_a_collector_that_exits_cleanly_stops_the_server() -> None:
    stopped: list[bool] = []

    def ticks_then_exits(sock: socket.socket, restarts: int) -> int:
        sock.sendall(encode_frame(("started",)))
        sock.sendall(encode_frame(("published", publish(1, b"x\n", b"x\n# EOF\n"))))
        time.sleep(0.1)
        return 0  # as after SIGTERM from a control-group kill

    collector = CollectorProcess(ticks_then_exits, on_exit=lambda: stopped.append(True), backoff=(0.05,))
    collector.start(timeout=5)

    async def scenario() -> None:
        collector.attach(asyncio.get_running_loop())
        await until(lambda: bool(stopped))
        await asyncio.sleep(0.2)  # and no restart follows

    try:
        asyncio.run(scenario())
    finally:
        collector.stop(timeout=2)
    assert collector.restarts == 0 and collector.pid is None


def test_start_reports_a_config_error_and_a_collector_that_died() -> None:
    with pytest.raises(ConfigError, match=r"nvml\.devices: no GPU 7"):
        CollectorProcess(config_error).start(timeout=5)
    with pytest.raises(CollectorError, match="exit code 3"):
        CollectorProcess(exits_at_once).start(timeout=5)
