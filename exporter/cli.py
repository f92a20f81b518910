"""`tpw-exporter`: parse flags, environment and config file into one Config, then run the daemon and server.

tpw-exporter serve                 real GPUs through NVML
tpw-exporter demo                  the built-in simulated node (no GPU needed)
tpw-exporter check-config FILE     validate a config file and print the effective settings
tpw-exporter diagnose              ask Prometheus which known patterns happened (exporter/diagnose/)
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from exporter import __version__
from exporter.config import (
    DEFAULT_PORT,
    ENV_PREFIX,
    TICK_BUDGET_FRACTION,
    Config,
    ConfigError,
    load_config,
    one_line,
    shown_value,
    unknown_env_variables,
)
from exporter.demo.scenarios import SCENARIOS
from exporter.model import COMPAT_FORMATS, ENDPOINT_ENGINES, ENGINE_AUTO, ENGINE_GENERIC, LOG_LEVELS
from exporter.redact import redact_settings

EXIT_CONFIG_ERROR = 2
log = logging.getLogger(__name__)


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

endpoints: /metrics  /api/v1/snapshot  /healthz  /readyz  / (live page)  /api/v1/history"""


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML config file (env TPW_CONFIG)")
    parser.add_argument(
        "--listen-address",
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help=f"address to serve on (default 0.0.0.0:{DEFAULT_PORT}; env TPW_LISTEN_ADDRESS)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="seconds between collections (default 1; env TPW_INTERVAL)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log verbosity (default info)")
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="FILE",
        help="the Prometheus exporter-toolkit's web configuration file: TLS, basic auth, headers "
        "(env TPW_WEB_CONFIG_FILE; README, Securing the listener)",
    )
    parser.add_argument(
        "--web.max-requests",
        dest="web_max_requests",
        type=int,
        metavar="N",
        help="requests served at once, more get 503; 0: no limit (default 40; env TPW_WEB_MAX_REQUESTS)",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="web_max_connections",
        type=int,
        metavar="N",
        help="connections open at once (default: from the file descriptor limit, at most 512; env "
        "TPW_WEB_MAX_CONNECTIONS)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        metavar="NAME=URL[,engine=E][,gpus=G][,timeout=S][,unit=U]",
        help="a serving engine's metrics page to scrape; repeatable. "
        f"engine: {', '.join(ENDPOINT_ENGINES)} (default {ENGINE_AUTO}; {ENGINE_GENERIC} needs a `mapping`, "
        "so it is set in the config file); "
        "gpus: auto (default), all, or indices/UUIDs joined by '+' (gpus=0+1). "
        "Given --endpoint flags replace the config file's endpoint list. Credentials and TLS (authorization, "
        "basic_auth, http_headers, tls_config) are set in the config file only.",
    )
    parser.add_argument(
        "--compat",
        metavar="FORMAT[,…]",
        help=f"also serve another exporter's metric names: {', '.join(COMPAT_FORMATS)} (dcgm-exporter's "
        "DCGM_FI_* names, units and labels; env TPW_COMPAT)",
    )


def scenario_help() -> str:
    """The demo's scenarios, one line each, with the alert each one makes fire."""
    from exporter.demo.scenarios import SCENARIO_SPECS

    width = max(len(name) for name in SCENARIO_SPECS)
    lines = ["scenarios (phase = --phase-seconds):"]
    for name, spec in SCENARIO_SPECS.items():
        alert = f" [{spec.alert}]" if spec.alert else ""
        text = textwrap.wrap(f"{spec.description}{alert}", width=96 - width)
        lines.append(f"  {name:<{width}}  {text[0]}")
        lines.extend(f"  {'':<{width}}  {more}" for more in text[1:])
    lines.append(
        "\nalert rules: deploy/prometheus/rules/alerts.yml; runbooks: docs/runbooks/. TPWBusyButFlat fires "
        "after ~11 min\nof busy-flat and resolves within a minute of healthy:\n"
        "  tpw-exporter demo --scenario-schedule busy-flat:1200,healthy:600"
    )
    return "\n".join(lines)


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
    serve.add_argument(
        "--devices",
        metavar="LIST",
        help="GPUs to export, NVML indices or UUIDs joined by ',' (e.g. 0,1 or GPU-5c2d…); default all "
        "(env TPW_NVML__DEVICES). A GPU the node does not have is an error (exit 2).",
    )

    demo = commands.add_parser(
        "demo",
        help="export the built-in simulated node (no GPU needed)",
        epilog=scenario_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a deterministic simulated node whose GPUs follow a scenario calibrated on H100 "
        "measurements. Every series is marked simulated "
        '(tpw_gpu_info{simulated="true"}, tpw_simulation_info).',
    )
    _common_flags(demo)
    demo.add_argument("--gpus", type=int, metavar="N", help="number of simulated GPUs (default 2)")
    demo.add_argument(
        "--scenario",
        choices=SCENARIOS,
        metavar="NAME",
        help="workload the GPUs follow (default mixed): one of the scenarios listed below",
    )
    demo.add_argument(
        "--phase-seconds",
        type=float,
        metavar="SECONDS",
        help="length of one phase: each phase of mixed, and the time unit of the alert scenarios' ramps "
        "(default 60)",
    )
    demo.add_argument(
        "--scenario-schedule",
        metavar="SCENARIO:SECONDS[,…]",
        help="change scenario while running, e.g. busy-flat:120,healthy:60 (repeats from the start; "
        "overrides --scenario; env TPW_SIMULATION__SCHEDULE)",
    )
    demo.add_argument(
        "--mig",
        action="store_true",
        default=None,
        help="simulate MIG on every GPU (3g.40gb + 2g.20gb + 2 × 1g.10gb; env TPW_SIMULATION__MIG)",
    )

    from exporter.diagnose.command import add_parser as add_diagnose_parser

    add_diagnose_parser(commands)

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective settings",
        description="Validate FILE merged with TPW_* environment variables; print the effective config as "
        "YAML. Exit 0 if valid, 2 with a one-line error naming the field if not.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument(
        "--show-secrets",
        action="store_true",
        help="print endpoint URLs as given; by default their user info and query values read <redacted>",
    )
    return parser


ENDPOINT_FLAG_KEYS = {"engine": "engine", "gpus": "gpus", "timeout": "timeout_seconds", "unit": "unit"}


def parse_endpoint_flag(text: str) -> dict[str, Any]:
    """`NAME=URL[,key=value…]` → an endpoint config mapping; ValueError with the reason otherwise."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--endpoint {shown_value(text)}: expected NAME=URL[,engine=E][,gpus=G]")
    url, *options = rest.split(",")
    endpoint: dict[str, Any] = {"name": name, "url": url}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ENDPOINT_FLAG_KEYS:
            # Only the key: the text after a comma may be the rest of a URL's query string (a token).
            what = f"unknown option {shown_value(key)}" if sep else "an option without '='"
            allowed = ", ".join(ENDPOINT_FLAG_KEYS)
            raise ValueError(
                f"--endpoint {shown_value(name)}: {what}; allowed: {allowed} (a comma in the URL is "
                "written %2C)"
            )
        if key == "gpus" and value not in ("auto", "all"):
            endpoint["gpus"] = [int(item) if item.isdigit() else item for item in value.split("+") if item]
        else:
            endpoint[ENDPOINT_FLAG_KEYS[key]] = value
    return endpoint


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user actually gave, shaped like the config."""
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen_address", "listen_address"),
        ("interval", "interval"),
        ("log_level", "log_level"),
        ("web_config_file", "web_config_file"),
        ("web_max_requests", "web_max_requests"),
        ("web_max_connections", "web_max_connections"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "endpoint", None):
        try:
            overrides["endpoints"] = [parse_endpoint_flag(text) for text in args.endpoint]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if getattr(args, "compat", None) is not None:
        overrides["compat"] = args.compat  # parsed and validated by Config
    nvml: dict[str, Any] = {}
    if getattr(args, "no_profiling", False):
        nvml["profiling"] = False
    if getattr(args, "devices", None) is not None:
        nvml["devices"] = args.devices  # parsed and validated by NvmlConfig
    if nvml:
        overrides["nvml"] = nvml
    simulation = {
        key: getattr(args, flag)
        for flag, key in (("gpus", "gpus"), ("scenario", "scenario"), ("phase_seconds", "phase_seconds"))
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "scenario_schedule", None) is not None:
        simulation["schedule"] = args.scenario_schedule  # parsed and validated by SimulationConfig
    if getattr(args, "mig", None):
        simulation["mig"] = True
    if simulation:
        overrides["simulation"] = simulation
    return overrides


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas before the worker threads start.

    Each thread that allocates otherwise gets its own arena, and their touched pages add up to tens of MB
    of resident memory in a daemon that only moves a few KB per tick. Same effect as MALLOC_ARENA_MAX=2;
    returns False where the C library is not glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def unknown_env_warning(names: Sequence[str]) -> str:
    """One line naming the ignored `TPW_*` variables (never their values, which may hold secrets)."""
    plural = "s" if len(names) > 1 else ""
    return (
        f"ignoring unknown environment variable{plural} {', '.join(names)}: no such setting (a setting's "
        f"variable is {ENV_PREFIX} plus its key, nested keys joined by __, e.g. {ENV_PREFIX}SIMULATION__GPUS)"
    )


def effective_config_yaml(config: Config, show_secrets: bool = False) -> str:
    """The effective config as YAML; URLs' user info and query values, credentials, passwords and secret
    header values `<redacted>` (exporter.redact) unless `show_secrets`, with a comment saying so when anything
    was left out. Credential files are named, never read."""
    data = config.model_dump(mode="json")
    redacted = not show_secrets and redact_settings(data)
    text = yaml.safe_dump(data, sort_keys=False)
    if redacted:
        text += (
            "# URLs' user info and query values, credentials, passwords and secret header values are "
            "<redacted>; --show-secrets prints them\n"
        )
    return text


def effective_timeouts(config: Config) -> str:
    """YAML comments giving each endpoint's real scrape time limit (capped at the tick's budget)."""
    if not config.endpoints:
        return ""
    lines = [
        f"# effective scrape time limits: timeout_seconds capped at {TICK_BUDGET_FRACTION:.0%} of interval "
        f"({config.tick_budget_seconds:g} s)"
    ]
    for endpoint in config.endpoints:
        timeout = config.endpoint_timeout(endpoint)
        capped = (
            f" (timeout_seconds {endpoint.timeout_seconds:g} capped)"
            if timeout < endpoint.timeout_seconds
            else ""
        )
        lines.append(f"#   {endpoint.name}: {timeout:g} s{capped}")
    return "\n".join(lines) + "\n"


def web_config_summary(config: Config) -> str:
    """A YAML comment saying what the web config file turns on; ConfigError if it is invalid."""
    if config.web_config_file is None:
        return ""
    from exporter.webconfig import load_web_config

    return f"# web config {config.web_config_file}: {load_web_config(config.web_config_file).summary()}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "diagnose":  # reads Prometheus: no config, no TPW_* settings
        from exporter.diagnose.command import run as run_diagnose

        return run_diagnose(args)
    unknown = unknown_env_variables()
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            web_summary = web_config_summary(config)  # checked too: ExecStartPre runs check-config
            if unknown:
                print(f"tpw-exporter: warning: {unknown_env_warning(unknown)}", file=sys.stderr)
            sys.stdout.write(effective_config_yaml(config, show_secrets=args.show_secrets))
            sys.stdout.write(effective_timeouts(config))
            sys.stdout.write(web_summary)
            return 0
        config = load_config(args.config, overrides=flag_overrides(args))
    except ConfigError as exc:
        print(f"tpw-exporter: config error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape is noise
    if unknown:
        log.warning("%s", unknown_env_warning(unknown))
    limit_malloc_arenas()
    try:
        from exporter.server import serve

        return serve(config, args.command)
    except ConfigError as exc:  # the listen address cannot be bound, or the node lacks a GPU the config names
        print(f"tpw-exporter: config error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
