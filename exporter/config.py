"""The one configuration model, and how a file, the environment and flags merge into it.

Precedence: command-line flags override `TPW_*` environment variables, which override the YAML file,
which overrides the defaults below. Nested keys use `__` in the environment
(`TPW_SIMULATION__GPUS=8`). Every problem becomes a `ConfigError` whose message is one line naming the
field, what is allowed and what was given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "TPW_"
ENV_CONFIG_FILE = "TPW_CONFIG"
DEFAULT_PORT = 9835

Scenario = Literal["idle", "compute-bound", "memory-bound", "launch-bound", "mixed"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the operator."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NvmlConfig(_Strict):
    """Real GPUs through NVML."""

    profiling: bool = Field(True, description="Collect GPM profiling metrics on GPUs that support them.")
    retry_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait between attempts to initialise NVML after a failure."
    )
    gpu_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Time limit for one GPU's collection; default 80% of the interval. A GPU over it "
        "reports up 0 for that tick.",
    )


class SimulationConfig(_Strict):
    """The built-in simulated node used by `tpw-exporter demo`."""

    gpus: int = Field(2, ge=1, le=1024, description="Number of simulated GPUs.")
    scenario: Scenario = Field("mixed", description="Workload the simulated GPUs follow.")
    phase_seconds: float = Field(
        60.0, gt=0, description="Length of each phase of the `mixed` scenario, in seconds."
    )


class Config(_Strict):
    """Everything the daemon needs; see `tpw-exporter check-config` for the effective values."""

    listen_address: str = Field(
        f"0.0.0.0:{DEFAULT_PORT}", description="host:port the HTTP server listens on ([::] for IPv6)."
    )
    interval: float = Field(1.0, ge=0.05, le=3600, description="Seconds between collection ticks.")
    log_level: LogLevel = "info"
    nvml: NvmlConfig = NvmlConfig()
    simulation: SimulationConfig = SimulationConfig()

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        split_listen_address(value)
        return value

    @property
    def host(self) -> str:
        return split_listen_address(self.listen_address)[0]

    @property
    def port(self) -> int:
        return split_listen_address(self.listen_address)[1]


def split_listen_address(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port); ValueError with the reason otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected host:port such as 0.0.0.0:{DEFAULT_PORT}, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def format_validation_error(error: ValidationError) -> str:
    """One line: `field.path: message (got value)` for each problem, joined by '; '."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        given = item.get("input")
        shown = "" if isinstance(given, dict) or item["type"] == "missing" else f" (got {given!r})"
        parts.append(f"{location}: {message}{shown}")
    return "; ".join(parts)


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`TPW_A__B=v` → {"a": {"b": v}}; JSON values (lists, objects) are decoded."""
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"environment variable {name}: not valid JSON") from None
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: conflicts with another TPW_ variable")
        node[path[-1]] = value
    return result


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file < environment < overrides onto the defaults and validate."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(ENV_CONFIG_FILE):
        path = Path(environ[ENV_CONFIG_FILE])
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data = _deep_merge(data, env_overrides(environ))
    data = _deep_merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
