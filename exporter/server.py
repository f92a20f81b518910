"""The exporter's main process: bind the port, fork the collector, serve HTTP until SIGTERM or SIGINT.

The split (see `exporter.collector`) keeps every tick's work out of the process that answers scrapes.
This process imports only the config, the HTTP stack and the small `Published` type; NVML, httpx, the
parser and the renderer are imported by the collector after the fork.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from exporter import __version__
from exporter.config import Config, ConfigError

log = logging.getLogger(__name__)

COLLECTOR_START_TIMEOUT_SECONDS = 120.0  # nvmlInit on an 8-GPU node without persistence mode takes seconds
LISTEN_BACKLOG = 128


def bind(host: str, port: int) -> socket.socket:
    """The listening socket for `host:port` (IPv4, IPv6 or a name); OSError with the reason if it cannot."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _server_class() -> type:
    from exporter.listener import GuardedServer

    class Server(GuardedServer):
        """uvicorn's server, but SIGTERM is a normal stop (exit 0), as systemd and Kubernetes expect."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True
            else:
                super().handle_exit(sig, frame)

    return Server


def bind_listen_address(config: Config) -> socket.socket:
    """The listening socket for `listen_address`, bound before anything is logged as listening.

    ConfigError naming `listen_address` and the address if it cannot be bound (in use, a privileged port,
    an address this host does not have, a name that does not resolve).
    """
    try:
        return bind(config.host, config.port)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"listen_address: cannot listen on {config.listen_address}: {reason}") from None


def serve(config: Config, command: str) -> int:
    """Run the exporter; the exit code. ConfigError when the listen address cannot be bound or the node
    lacks what the config names."""
    from exporter.collector import CollectorError, CollectorProcess, run_collector
    from exporter.webconfig import WebConfigWatcher

    web_config = WebConfigWatcher(config.web_config_file)  # WebConfigError (a ConfigError): exit 2
    listener = bind_listen_address(config)

    server_box: list[Any] = []

    def stop_server() -> None:
        if server_box:
            server_box[0].should_exit = True

    collector = CollectorProcess(
        lambda sock, restarts: run_collector(sock, restarts, config, command), on_exit=stop_server
    )
    gc.freeze()  # what is loaded now is shared with the collector: keep the collector from copying it
    try:
        collector.start(timeout=COLLECTOR_START_TIMEOUT_SECONDS)
    except CollectorError as exc:
        listener.close()
        print(f"tpw-exporter: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        listener.close()
        raise

    import asyncio

    import uvicorn

    from exporter.access import Access
    from exporter.app import create_app
    from exporter.listener import KEEP_ALIVE_SECONDS, ConnectionGuard

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        collector.attach(asyncio.get_running_loop())
        gc.collect()
        gc.freeze()  # the HTTP stack, loaded after the fork, is never garbage: keep collections short
        log.info(
            "tpw-exporter %s (%s) listening on %s, interval %gs, collector pid %s",
            __version__,
            "simulated node" if command == "demo" else "NVML",
            config.listen_address,
            config.interval,
            collector.pid,
        )
        yield
        collector.stop(timeout=2.0)

    guard = ConnectionGuard(listener, web_config, config.web_max_connections)
    app = Access(create_app(collector, lifespan=lifespan), web_config, config.web_max_requests, guard)
    server = _server_class()(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=1,
            log_config=None,
            http="h11",
            ws="none",
            loop="asyncio",
            lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            server_header=False,
            proxy_headers=False,  # scope["client"] is the peer: the connection guard finds it by that
        ),
        guard,
    )
    server_box.append(server)
    try:
        server.run()
    finally:
        collector.stop(timeout=2.0)
    return 0 if server.started else 1
