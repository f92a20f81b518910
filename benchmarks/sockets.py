"""Hostile sockets against the real exporter's listener: /metrics must keep answering (issue 13).

    python benchmarks/sockets.py                              # 2,000 idle sockets, exporter at ulimit -n 1024
    python benchmarks/sockets.py --cases idle,slow-headers,keep-alive,tls-idle --sockets 2000 --seconds 15
    python benchmarks/sockets.py --tree /path/to/checkout     # the same against another checkout (a baseline)

Each case starts `python -m exporter demo` with RLIMIT_NOFILE set to --nofile (soft and hard, as
`ulimit -n` does) in the child, then opens --sockets connections to it from this process and holds them
for --seconds, while a probe opens a new connection and GETs /metrics every 100 ms (2 s time limit):

  idle          connect, then send nothing
  slow-headers  connect, then send a request head one byte a second, never finishing it (slowloris)
  keep-alive    one complete request (HEAD /metrics), its answer read, then the connection held open
  tls-idle      the exporter serves TLS (--web.config.file, a throwaway self-signed certificate); connect
                and never start the handshake. The probe speaks TLS.

Columns: `burst max`, the slowest probe of the first second, while the kernel still queues the
connection attempts (a probe whose SYN finds the listen backlog full is dropped and sent again after
1 s: no server answers that one in milliseconds); then, from the second second on, the probes answered of
those sent and their latency (p50, p99, max in ms, of those answered); the exporter's log during the
attack (lines, KB, tracebacks); the server process's peak open file descriptors; how many hostile
sockets the exporter had closed by the end; whether it still runs. Verdict, on the probes after the first
second: every one answered, p99 under 10 ms, under 100 log lines, no traceback, still running.
Exit code 1 when a row fails.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import resource
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import REPO, exporter_env, free_port

PROBE_EVERY_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 2.0
BURST_SECONDS = 1.0
TARGET_P99_MS = 10.0
TARGET_LOG_LINES = 100
CASES = ("idle", "slow-headers", "keep-alive", "tls-idle")
SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 4096


@dataclass
class Row:
    case: str
    burst: list[float]
    sent: int
    answered: int
    latencies: list[float]
    log_lines: int
    log_bytes: int
    tracebacks: int
    peak_fds: int
    closed_by_server: int
    sockets: int
    running: bool

    @property
    def passed(self) -> bool:
        return (
            self.answered == self.sent
            and bool(self.latencies)
            and quantile(self.latencies, 0.99) < TARGET_P99_MS
            and self.log_lines < TARGET_LOG_LINES
            and self.tracebacks == 0
            and self.running
        )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def start_exporter(
    tree: Path, nofile: int, log_path: Path, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = exporter_env()
    if tree != REPO:
        env["PYTHONPATH"] = str(tree)

    def limit_fds() -> None:  # in the child, before exec: what `ulimit -n` does
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "demo", "--listen-address", f"127.0.0.1:{port}", *extra],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_fds,  # no threads in this process yet
        )
    return process, port


def probe(port: int, context: ssl.SSLContext | None) -> float | None:
    """ms for one GET /metrics on a new connection, or None if it failed or took over the time limit."""
    started = time.perf_counter()
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_SECONDS)
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=PROBE_TIMEOUT_SECONDS, context=context
        )
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            return None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return (time.perf_counter() - started) * 1000


def wait_ready(port: int, process: subprocess.Popen[bytes], context: ssl.SSLContext | None) -> None:
    deadline = time.monotonic() + 60
    while probe(port, context) is None:
        if process.poll() is not None:
            raise SystemExit(f"exporter exited with code {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("exporter not answering /metrics after 60 s")
        time.sleep(0.2)


class Hostiles:
    """`count` non-blocking connections to the port, each behaving as its case says."""

    def __init__(self, port: int, count: int, case: str) -> None:
        self.case = case
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.closed: set[int] = set()
        self.sent: dict[int, int] = {}
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))  # EINPROGRESS: the kernel finishes it
            self.sockets.append(sock)
            if case == "keep-alive":
                self.selector.register(sock, selectors.EVENT_WRITE)

    def step(self) -> None:
        """Advance the keep-alive requests; send slow-headers their next byte."""
        if self.case == "keep-alive":
            for key, events in self.selector.select(timeout=0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if events & selectors.EVENT_WRITE:
                        sock.send(b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        self.selector.modify(sock, selectors.EVENT_READ)
                    elif not sock.recv(65536):
                        raise ConnectionResetError
                    else:
                        self.selector.unregister(sock)  # answered: now held, never read again
                except OSError:
                    self.selector.unregister(sock)
                    self.closed.add(sock.fileno())
        elif self.case == "slow-headers":
            for sock in self.sockets:
                position = self.sent.get(sock.fileno(), 0)
                if sock.fileno() in self.closed or position >= len(SLOW_HEAD):
                    continue
                try:
                    self.sent[sock.fileno()] = position + sock.send(SLOW_HEAD[position : position + 1])
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:  # not connected yet: next second
                        self.closed.add(sock.fileno())

    def count_closed(self) -> int:
        """Connections the exporter has closed (end of file or reset when peeked at)."""
        for sock in self.sockets:
            if sock.fileno() in self.closed:
                continue
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    self.closed.add(sock.fileno())
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    self.closed.add(sock.fileno())
        return len(self.closed)

    def close(self) -> None:
        self.selector.close()
        for sock in self.sockets:
            sock.close()


def run_case(case: str, args: argparse.Namespace, directory: Path) -> Row:
    extra: list[str] = []
    context: ssl.SSLContext | None = None
    if case == "tls-idle":
        cert, key = self_signed(directory)
        web_config = directory / "web-config.yml"
        web_config.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
        extra = ["--web.config.file", str(web_config)]
        context = ssl.create_default_context(cafile=str(cert))
    log_path = directory / f"{case}.log"
    process, port = start_exporter(args.tree, args.nofile, log_path, extra)
    hostiles: Hostiles | None = None
    try:
        wait_ready(port, process, context)
        server = psutil.Process(process.pid)
        log_before = log_path.read_bytes()
        hostiles = Hostiles(port, args.sockets, "idle" if case == "tls-idle" else case)
        latencies: list[float] = []
        burst: list[float] = []
        sent = peak_fds = 0
        started = next_probe = next_step = time.monotonic()
        end = started + args.seconds
        while time.monotonic() < end and process.poll() is None:
            now = time.monotonic()
            if now >= next_step:
                hostiles.step()
                next_step = now + (1.0 if case == "slow-headers" else 0.05)
                with contextlib.suppress(psutil.Error):
                    peak_fds = max(peak_fds, server.num_fds())
            if now >= next_probe:
                latency = probe(port, context)
                if now - started < BURST_SECONDS:
                    burst.append(PROBE_TIMEOUT_SECONDS * 1000 if latency is None else latency)
                else:
                    sent += 1
                    if latency is not None:
                        latencies.append(latency)
                next_probe = max(next_probe + PROBE_EVERY_SECONDS, time.monotonic())
            time.sleep(0.005)
        closed = hostiles.count_closed()
        running = process.poll() is None
        log = log_path.read_bytes()[len(log_before) :]
    finally:
        if hostiles is not None:
            hostiles.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Row(
        case=case,
        burst=burst,
        sent=sent,
        answered=len(latencies),
        latencies=latencies,
        log_lines=log.count(b"\n"),
        log_bytes=len(log),
        tracebacks=log.count(b"Traceback"),
        peak_fds=peak_fds,
        closed_by_server=closed,
        sockets=args.sockets,
        running=running,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="idle", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--sockets", type=int, default=2000, help="hostile connections held open")
    parser.add_argument("--nofile", type=int, default=1024, help="the exporter's RLIMIT_NOFILE")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long they are held, per case")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose exporter runs")
    args = parser.parse_args()
    cases = [name for name in args.cases.split(",") if name]
    if set(cases) - set(CASES):
        parser.error(
            f"unknown case(s) {', '.join(sorted(set(cases) - set(CASES)))}; known: {', '.join(CASES)}"
        )
    if "tls-idle" in cases and shutil.which("openssl") is None:
        parser.error("tls-idle needs the openssl command")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.sockets + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            parser.error(f"this shell's file descriptor limit ({hard}) is below {wanted}: raise `ulimit -Hn`")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    print(
        f"{args.sockets} hostile sockets held {args.seconds:g} s, exporter at RLIMIT_NOFILE {args.nofile}, "
        f"probe every {PROBE_EVERY_SECONDS * 1000:g} ms ({PROBE_TIMEOUT_SECONDS:g} s limit), "
        f"{psutil.cpu_count()} cores, tree {args.tree}"
    )
    header = (
        f"{'case':<13} {'burst max':>9} {'answered':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'log lines':>9} {'log KB':>8} {'tracebacks':>10} {'peak fds':>8} {'closed':>6} {'running':>7}  "
        "verdict"
    )
    print(header)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpw-sockets-") as directory:
        for case in cases:
            row = run_case(case, args, Path(directory))
            rows.append(row)
            p50 = statistics.median(row.latencies) if row.latencies else float("nan")
            p99 = quantile(row.latencies, 0.99) if row.latencies else float("nan")
            top = max(row.latencies) if row.latencies else float("nan")
            print(
                f"{row.case:<13} {max(row.burst, default=float('nan')):9.1f} "
                f"{f'{row.answered}/{row.sent}':>9} {p50:7.2f} {p99:7.2f} {top:7.2f} "
                f"{row.log_lines:9d} {row.log_bytes / 1024:8.1f} {row.tracebacks:10d} {row.peak_fds:8d} "
                f"{f'{row.closed_by_server}':>6} {'yes' if row.running else 'no':>7}  "
                f"{'pass' if row.passed else 'FAIL'}",
                flush=True,
            )
    failed = [row.case for row in rows if not row.passed]
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
