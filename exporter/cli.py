"""`tpw-exporter`: parse flags, environment and config file into one Config, then run the daemon and server.

tpw-exporter serve                 real GPUs through NVML
tpw-exporter demo                  the built-in simulated node (no GPU needed)
tpw-exporter check-config FILE     validate a config file and print the effective settings
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from exporter import __version__
from exporter.config import DEFAULT_PORT, Config, ConfigError, load_config
from exporter.sources.base import Source
from exporter.sources.simulated import SCENARIOS

EXIT_CONFIG_ERROR = 2

log = logging.getLogger("tpw_exporter")

DESCRIPTION = """\
tpw-exporter joins GPU efficiency (NVML utilisation, power, energy, and GPM profiling metrics: SM
activity, occupancy, tensor and DRAM bandwidth utilisation) with serving throughput, and serves both
plus derived metrics on /metrics for Prometheus.

Settings come from, lowest to highest precedence: built-in defaults, the YAML file given by --config
(or TPW_CONFIG), TPW_* environment variables (nested keys joined by "__", e.g.
TPW_SIMULATION__GPUS=8), and command-line flags."""

EPILOG = f"""\
examples:
  tpw-exporter demo                                 simulated 2-GPU node on :{DEFAULT_PORT}
  tpw-exporter demo --gpus 8 --scenario memory-bound
  tpw-exporter serve --config /etc/tpw-exporter.yaml
  tpw-exporter check-config /etc/tpw-exporter.yaml

endpoints: /metrics  /api/v1/snapshot  /healthz  /readyz"""


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML config file (env TPW_CONFIG)")
    parser.add_argument(
        "--listen-address",
        metavar="HOST:PORT",
        help=f"address to serve on (default 0.0.0.0:{DEFAULT_PORT}; env TPW_LISTEN_ADDRESS)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="seconds between collections (default 1; env TPW_INTERVAL)",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity (default info)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpw-exporter",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tpw-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="export real GPUs through NVML",
        description="Export the GPUs NVML sees. Without a driver it keeps serving with "
        'tpw_source_up{source="nvml"} 0 and retries with backoff.',
    )
    _common_flags(serve)
    serve.add_argument(
        "--no-profiling",
        action="store_true",
        help="do not collect GPM profiling metrics (env TPW_NVML__PROFILING)",
    )

    demo = commands.add_parser(
        "demo",
        help="export the built-in simulated node (no GPU needed)",
        description="Serve a deterministic simulated node whose GPUs follow a scenario calibrated on H100 "
        "measurements. Every series is marked simulated "
        '(tpw_gpu_info{simulated="true"}, tpw_simulation_info).',
    )
    _common_flags(demo)
    demo.add_argument("--gpus", type=int, metavar="N", help="number of simulated GPUs (default 2)")
    demo.add_argument("--scenario", choices=SCENARIOS, help="workload the GPUs follow (default mixed)")
    demo.add_argument(
        "--phase-seconds", type=float, metavar="SECONDS", help="length of each phase of the mixed scenario"
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective settings",
        description="Validate FILE merged with TPW_* environment variables; print the effective config as "
        "YAML. Exit 0 if valid, 2 with a one-line error naming the field if not.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user actually gave, shaped like the config."""
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen_address", "listen_address"),
        ("interval", "interval"),
        ("log_level", "log_level"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "no_profiling", False):
        overrides["nvml"] = {"profiling": False}
    simulation = {
        key: getattr(args, flag)
        for flag, key in (("gpus", "gpus"), ("scenario", "scenario"), ("phase_seconds", "phase_seconds"))
        if getattr(args, flag, None) is not None
    }
    if simulation:
        overrides["simulation"] = simulation
    return overrides


def build_sources(config: Config, command: str) -> list[Source]:
    if command == "demo":
        from exporter.sources.simulated import SimulatedSource

        simulation = config.simulation
        return [SimulatedSource(simulation.gpus, simulation.scenario, simulation.phase_seconds)]
    from exporter.sources.nvml import NvmlSource

    return [
        NvmlSource(
            profiling=config.nvml.profiling,
            gpu_timeout_seconds=config.nvml.gpu_timeout_seconds or 0.8 * config.interval,
            retry_max_seconds=config.nvml.retry_max_seconds,
        )
    ]


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM is a normal stop (exit 0), as systemd and Kubernetes expect."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True
            else:
                super().handle_exit(sig, frame)

    return Server


def serve(config: Config, command: str) -> int:
    """Start collection in its thread and the HTTP server in this one; return when SIGTERM/SIGINT arrives."""
    import uvicorn

    from exporter.app import create_app
    from exporter.daemon import Daemon, DaemonThread
    from exporter.render import Renderer

    daemon = Daemon(build_sources(config, command), Renderer(), config.interval)
    collector = DaemonThread(daemon)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        collector.start()
        log.info(
            "tpw-exporter %s (%s) listening on %s, interval %gs",
            __version__,
            "simulated node" if command == "demo" else "NVML",
            config.listen_address,
            config.interval,
        )
        yield
        collector.stop(timeout=1.0)

    app = create_app(lambda: daemon.latest, lifespan=lifespan)
    server = _server_class()(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=1,
            log_config=None,
        )
    )
    server.run()
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            sys.stdout.write(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
            return 0
        config = load_config(args.config, overrides=flag_overrides(args))
    except ConfigError as exc:
        print(f"tpw-exporter: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return serve(config, args.command)
