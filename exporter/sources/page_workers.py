"""The collector's side of the page parsers: one worker process per endpoint, forked by a fork server.

Why a process, and not the event loop or a thread
-------------------------------------------------
The scrape's time limit must hold for the whole scrape, parse included, whatever the page. Parsed in the
collector's event loop (before issue 13), a page of 15 MiB of valid vLLM lines held every source: on 2 cores
0.30 ticks a second with a 1 s interval, ticks of 2.4 s (`benchmarks/hostile.py --tree` on the old code).
Two other designs were weighed:

* a thread that parses with a cooperative deadline (checked every N lines). It bounds the parse, but a
  CPU-bound Python thread holds the GIL in 5 ms slices, and every other thread of the collector queues
  behind it: 300 calls of 0.1 ms that release the GIL, the shape of the NVML source's per-GPU reads, took
  55 ms alone and about 500 ms beside one thread parsing a 4 MiB page (`benchmarks/hostile.py --gil`). A
  hostile endpoint would slow the GPU reads past their own time limit: one endpoint could blind the GPUs.
  A thread also cannot be stopped, so the deadline is only as good as the check's placement (one 4 MiB
  line, one huge regex);
* a process per parse (spawn or fork each time): correct, but 80 ms to start an interpreter each tick.

So each endpoint has one persistent worker process. Workers are forked from a small fork server (`ForkServer`:
a fresh interpreter started once, before the first tick, that imports only `exporter.sources.page`), not from
the collector: no thread, held lock or grown heap of the collector is copied, and a fork costs under a
millisecond. The collector sends the worker the raw body over a socket pair and awaits the answer on its event
loop, which never parses. A worker that has not answered by the scrape's deadline is abandoned: the endpoint
is `up 0` with reason `timeout`, its result never exists, and the worker ends itself (each job arms an
interval timer whose SIGALRM terminates it at the deadline, whatever it is doing: the bound is the kernel's,
not the parser's good will). Closing the collector's end of the socket mid-parse (a job abandoned, the
exporter stopping, the collector killed) ends the worker at once: while it parses, its socket raises SIGIO on
hangup (O_ASYNC), and SIGIO's default action ends it, so SIGTERM during a 4 MiB parse stops the whole exporter
in about 0.3 s (`tests/integration/test_stop_during_parse.py`). The next scrape gets a freshly forked worker.
One endpoint's worker never holds up another's: with every hostile case at once, ticks stay at the interval's
rate and none is longer than the time limit (`benchmarks/hostile.py`). Workers inherit the collector's
niceness; a worker whose memory grew past `WORKER_MAX_RSS_BYTES` retires after answering. The standard
library's `multiprocessing` forkserver was tried first: it also starts a resource-tracker process (7 MB),
needs a socket file in /tmp, and re-runs the main script in every worker started from the `tpw-exporter`
console script. The cost of this design: the fork server (~6 MB PSS), ~2 MB of private memory per endpoint,
and a copy of each page through a socket (~1 ms per MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading

from exporter.sources import page
from exporter.sources.page import HEADER, PID, PageJob, PageResult

log = logging.getLogger(__name__)

FORK_SERVER_TIMEOUT_SECONDS = 5.0


class ForkServer:
    """A fresh interpreter, started once, that imports `exporter.sources.page` and forks workers on request.

    Forking from it rather than from the collector copies no thread (the collector runs NVML and HTTP
    threads), no lock another thread might hold, and no memory the collector grew; starting it costs an
    interpreter start (~0.1 s, once), a fork from it under a millisecond.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def fork(self, worker_end: socket.socket) -> int:
        """A new worker serving `worker_end`; its PID. OSError if the fork server cannot provide one."""
        with self._lock:
            for attempt in range(2):
                try:
                    control = self._control if self._control is not None else self._start()
                    socket.send_fds(control, [b"f"], [worker_end.fileno()])
                    reply = page._recv_exactly(control, PID.size)
                    if reply is None:
                        raise OSError("the fork server ended")
                    return int(PID.unpack(reply)[0])
                except OSError:
                    self._stop()
                    if attempt:
                        raise
            raise AssertionError("unreachable")

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # This interpreter's import path goes through stdin (a short command line in `ps`); the last
        # argument only names the process there.
        code = (
            "import json, sys; sys.path[:0] = json.loads(sys.stdin.readline()); "
            f"from {page.__name__} import serve_forks; serve_forks({theirs.fileno()})"
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code, "tpw-exporter page parsers"],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.PIPE,
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(sys.path).encode() + b"\n")
            process.stdin.close()
        except (OSError, ValueError) as exc:
            ours.close()
            raise OSError(f"cannot start the page parsers' fork server: {exc}") from None
        finally:
            theirs.close()
        self._process = process
        ours.settimeout(FORK_SERVER_TIMEOUT_SECONDS)
        self._control = ours
        log.debug("page parsers' fork server started (pid %d)", self._process.pid)
        return ours

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)
            self._process = None


_FORK_SERVER = ForkServer()


class WorkerFailed(Exception):
    """The worker could not be started, or died without answering."""


class PageWorker:
    """One endpoint's worker process, seen from the collector: `interpret` a job under a time limit."""

    def __init__(self, name: str, fork_server: ForkServer = _FORK_SERVER) -> None:
        self.name = name
        self._fork_server = fork_server
        self._sock: socket.socket | None = None
        self.pid: int | None = None  # the current worker's (for tests and logs; never signalled)
        self.started = 0  # workers forked so far (the first, and one after each failure or retirement)

    def start(self) -> None:
        """Fork the worker now, if there is none or it is gone (the first call starts the fork server)."""
        if self._sock is not None and not _peer_closed(self._sock):
            return
        self._discard()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = self._fork_server.fork(theirs)
        except OSError as exc:
            ours.close()
            raise WorkerFailed(f"cannot start a page parser process: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self.started += 1

    async def interpret(self, job: PageJob, timeout: float) -> PageResult:
        """The worker's reading of `job`; asyncio.TimeoutError past `timeout` seconds (the worker's answer is
        then never read, and the worker ends itself at that limit), WorkerFailed if it died. Any failure
        leaves no worker behind: the next job gets a fresh one."""
        if timeout <= 0:
            raise asyncio.TimeoutError
        done = False
        try:
            self.start()
            result, retiring = await asyncio.wait_for(self._exchange(job, timeout), timeout)
            done = not retiring
            return result
        finally:
            if not done:
                self._discard()

    async def _exchange(self, job: PageJob, timeout: float) -> tuple[PageResult, bool]:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        payload = pickle.dumps((timeout, job), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await loop.sock_sendall(sock, HEADER.pack(len(payload)))
            await loop.sock_sendall(sock, payload)
            del payload
            header = await _recv_async(loop, sock, HEADER.size)
            answer = await _recv_async(loop, sock, HEADER.unpack(header)[0])
        except OSError as exc:
            raise WorkerFailed(f"page parser process lost: {exc}") from None
        wire, retiring = pickle.loads(answer)
        return PageResult.from_wire(wire), bool(retiring)

    def _discard(self) -> None:
        """Forget the worker: closing its socket ends it (end of file, or its time limit mid-job)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.pid = None

    async def close(self) -> None:
        self._discard()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the worker's end is closed (it exited or was killed while idle)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _recv_async(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = await loop.sock_recv_into(sock, view[got:])
        if count == 0:
            raise WorkerFailed("page parser process ended without answering")
        got += count
    return bytes(buffer)
