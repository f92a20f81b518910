"""A real HTTP server on loopback that plays a serving engine's /metrics page, misbehaving on request."""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "engines"


@dataclass
class Behaviour:
    """What the next requests get; tests change it between scrapes."""

    body: bytes | Callable[[], bytes] = b""
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    stream_forever: bool = False  # chunked body that never ends (tests the size cap)
    trickle_seconds: float = 0.0  # send the body 16 bytes at a time, this long apart (tests the time limit)
    required_headers: dict[str, str] = field(default_factory=dict)  # else 401 (an engine behind auth)
    requests: int = 0
    seen_headers: list[tuple[str, str]] = field(default_factory=list)  # the last request's


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (a scraper past its time limit or size cap) or fail the TLS handshake are
    expected, not printed."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
            super().handle_error(request, client_address)


class EngineServer:
    """`tls`: serve HTTPS with that server context (a client certificate required if it says so)."""

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        state = behaviour

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                state.requests += 1
                state.seen_headers = list(self.headers.items())
                if any(self.headers.get(name) != value for name, value in state.required_headers.items()):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "Bearer")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if state.delay:
                    time.sleep(state.delay)
                body = state.body() if callable(state.body) else state.body
                self.send_response(state.status)
                for key, value in state.headers.items():
                    self.send_header(key, value)
                if state.stream_forever:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"# filler line\n" * 4096
                    try:
                        for _ in range(10_000):  # bounded: at most ~570 MB, the client stops long before
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    return
                if "Content-Length" not in state.headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if state.trickle_seconds:
                        for start in range(0, len(body), 16):
                            self.wfile.write(body[start : start + 16])
                            self.wfile.flush()
                            time.sleep(state.trickle_seconds)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # handshakes happen in each request's thread (a failed one ends only its own)
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def engine_server(
    body: bytes | Callable[[], bytes] = b"", tls: ssl.SSLContext | None = None, **kwargs: object
) -> Iterator[EngineServer]:
    server = EngineServer(Behaviour(body=body, **kwargs), tls)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.prom").read_bytes()
