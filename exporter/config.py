"""The one configuration model, and how a file, the environment and flags merge into it.

Precedence: command-line flags override `TPW_*` environment variables, which override the YAML file,
which overrides the defaults below. Nested keys use `__` in the environment
(`TPW_SIMULATION__GPUS=8`); a variable's value is taken as written, and JSON-decoded only for a setting
that is a list or a mapping (`TPW_NVML__DEVICES='[0, 1]'`). `TPW_*` variables that name no setting are
left out (`unknown_env_variables` names them for one warning). Every problem becomes a `ConfigError` whose
message is one line naming the field, what is allowed and what was given.
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter.model import (
    ENDPOINT_ENGINES,
    ENGINE_AUTO,
    ENGINE_GENERIC,
    LOG_LEVELS,
    MIB,
    SCENARIO_NAMES,
    Site,
    Thresholds,
    check_generic_mapping,
)

ENV_PREFIX = "TPW_"
ENV_CONFIG_FILE = "TPW_CONFIG"
# `TPW_*` variables the project uses that are not settings, never warned about: the config file's path,
# and the address docker-compose.yml publishes its ports on.
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG_FILE, "TPW_BIND"})
DEFAULT_PORT = 9835
# The share of `interval` a tick's collection may take: the limit of each GPU's read
# (`nvml.gpu_timeout_seconds` unset) and the cap on every endpoint's `timeout_seconds`.
TICK_BUDGET_FRACTION = 0.8

# The one list of scenarios is exporter.model.SCENARIO_NAMES (the CLI's --scenario choices too).
Scenario = Literal[SCENARIO_NAMES]  # type: ignore[valid-type]
LogLevel = Literal[LOG_LEVELS]  # type: ignore[valid-type]


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
    devices: list[int | str] | None = Field(
        None,
        min_length=1,
        description='GPUs to export: NVML indices or UUIDs (GPU-…), e.g. [0, 1] or "0,1"; default all. A '
        "device the node does not have stops start-up with an error naming it.",
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(value, int):
            items = [value]
        if not isinstance(items, list):
            return value
        parsed: list[Any] = []
        for item in items:
            text = item.strip() if isinstance(item, str) else item
            if isinstance(text, str) and text.isdigit():
                text = int(text)
            if isinstance(text, str) and not re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-]{1,80}", text):
                raise ValueError(
                    f"expected GPU indices or UUIDs such as 0,1 or GPU-5c2d…; {text!r} is neither"
                )
            if isinstance(text, int) and not isinstance(text, bool) and text < 0:
                raise ValueError(f"GPU indices are 0 or more, got {text}")
            parsed.append(text)
        return parsed


class ScheduleEntry(_Strict):
    """One turn of a demo schedule: run `scenario` for `seconds`."""

    scenario: Scenario
    seconds: float = Field(gt=0, description="How long this scenario runs before the next one starts.")


def parse_schedule(text: str) -> list[dict[str, str]]:
    """`busy-flat:60,healthy:30` → [{"scenario": "busy-flat", "seconds": "60"}, …] (validated later)."""
    entries = []
    for item in text.split(","):
        name, sep, seconds = item.strip().rpartition(":")
        if not sep or not name or not seconds:
            raise ValueError(
                f"expected SCENARIO:SECONDS[,…] such as busy-flat:60,healthy:60; {item!r} is not"
            )
        entries.append({"scenario": name, "seconds": seconds})
    return entries


class SimulationConfig(_Strict):
    """The built-in simulated node used by `tpw-exporter demo`."""

    gpus: int = Field(2, ge=1, le=1024, description="Number of simulated GPUs.")
    scenario: Scenario = Field("mixed", description="Workload the simulated GPUs follow.")
    phase_seconds: float = Field(
        60.0,
        gt=0,
        description="Length of one phase in seconds: each phase of `mixed`, and the time unit of the alert "
        "scenarios' ramps.",
    )
    schedule: list[ScheduleEntry] | None = Field(
        None,
        min_length=1,
        description="Scenarios in turn, each for its seconds, repeating (overrides `scenario`); also "
        "written `busy-flat:60,healthy:60`.",
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        return parse_schedule(value) if isinstance(value, str) else value


_THRESHOLDS = Thresholds()
MAX_WINDOW_SECONDS = 86400.0


EngineName = Literal[ENDPOINT_ENGINES]  # type: ignore[valid-type]
WorkUnit = Literal["tokens", "images", "samples", "requests"]
ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class EndpointConfig(_Strict):
    """One serving engine's Prometheus endpoint."""

    name: str = Field(pattern=ENDPOINT_NAME_PATTERN, description="Label value `endpoint`; unique.")
    url: str = Field(description="http(s) URL of the engine's Prometheus metrics page.")
    engine: EngineName = Field(
        ENGINE_AUTO, description="Engine profile, or `auto` to detect from metric names."
    )
    gpus: Literal["auto", "all"] | list[int | str] = Field(
        "auto",
        description="GPUs serving this endpoint: indices or UUIDs, `all`, or `auto` (match the process "
        "listening on the URL's local port with NVML's compute processes; falls back to all).",
    )
    timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Time limit for one scrape, capped at 80% of `interval` (a value set above the cap is "
        "logged at start; the default is capped silently).",
    )
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="Largest page accepted (decompressed).")
    unit: WorkUnit = Field("tokens", description="Unit of work (generic endpoints that do not serve tokens).")
    mapping: dict[str, str] | None = Field(
        None, description="For engine `generic`: normalized field → source metric name."
    )
    model_label: str | None = Field(
        None, description="For engine `generic`: the label carrying the model name."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("expected an http:// or https:// URL such as http://localhost:8000/metrics")
        return value

    @field_validator("mapping")
    @classmethod
    def _check_mapping(cls, mapping: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        if mapping is not None and info.data.get("engine") == ENGINE_GENERIC:
            check_generic_mapping(mapping, info.data.get("unit", "tokens"))  # ValueError naming the bad key
        return mapping

    @property
    def timeout_set(self) -> bool:
        """Whether `timeout_seconds` was given (file, environment, flag) rather than left at its default."""
        return "timeout_seconds" in self.model_fields_set

    def effective_timeout(self, tick_budget_seconds: float | None) -> float:
        """The scrape's time limit: `timeout_seconds`, capped at the tick's budget."""
        if tick_budget_seconds is None:
            return self.timeout_seconds
        return min(self.timeout_seconds, tick_budget_seconds)

    @model_validator(mode="after")
    def _check_generic(self) -> EndpointConfig:
        if self.engine == ENGINE_GENERIC and not self.mapping:
            raise ValueError("engine generic needs `mapping` (normalized field → source metric name)")
        if self.engine != ENGINE_GENERIC and self.mapping is not None:
            raise ValueError(f"`mapping` is only for engine generic, not {self.engine}")
        return self


class BoundThresholds(_Strict):
    """Roofline classification thresholds on window-mean GPM ratios; defaults calibrated on an H100."""

    idle_graphics_below: float = Field(
        _THRESHOLDS.idle_graphics_below,
        ge=0.0,
        le=1.0,
        description="idle when graphics-engine activity is below.",
    )
    compute_pipe_at_least: float = Field(
        _THRESHOLDS.compute_pipe_at_least,
        ge=0.0,
        le=1.0,
        description="compute-bound when max(tensor, fp16/32/64 pipe activity) is at least this.",
    )
    memory_dram_at_least: float = Field(
        _THRESHOLDS.memory_dram_at_least,
        ge=0.0,
        le=1.0,
        description="memory-bound when DRAM bandwidth utilization is at least this (and tensor is low).",
    )
    low_tensor_below: float = Field(
        _THRESHOLDS.low_tensor_below,
        ge=0.0,
        le=1.0,
        description="tensor activity below this counts as low (for memory- and latency-bound).",
    )
    latency_sm_below: float = Field(
        _THRESHOLDS.latency_sm_below,
        ge=0.0,
        le=1.0,
        description="latency-bound when SM activity is below this while the engine is busy.",
    )

    def thresholds(self) -> Thresholds:
        return Thresholds(**self.model_dump())


class DeriveConfig(_Strict):
    """Derived metrics over a sliding window of ticks (throughput per watt, roofline bound)."""

    window: float = Field(
        30.0,
        gt=0,
        le=MAX_WINDOW_SECONDS,
        description="Seconds of history the derived metrics cover; at least 2 × interval. Tens of seconds "
        "or more: the energy counter advances in 100 ms steps.",
    )
    bound: BoundThresholds = BoundThresholds()


class SiteConfig(_Strict):
    """Facility figures for energy cost and carbon per token; unset values leave those metrics absent."""

    electricity_price_per_kwh: float | None = Field(
        None, ge=0, description="Electricity price per kWh, in `currency`."
    )
    currency: str = Field("USD", description="ISO 4217 code of the price, e.g. USD, EUR.")
    pue: float = Field(1.0, ge=1.0, le=10.0, description="Power usage effectiveness: facility / IT energy.")
    carbon_intensity_grams_per_kwh: float | None = Field(
        None, ge=0, description="Grid carbon intensity in gCO2 per kWh."
    )

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError("must be a 3-letter upper-case ISO 4217 code such as USD or EUR")
        return value

    def site(self) -> Site:
        return Site(**self.model_dump())


class Config(_Strict):
    """Everything the daemon needs; see `tpw-exporter check-config` for the effective values."""

    listen_address: str = Field(
        f"0.0.0.0:{DEFAULT_PORT}", description="host:port the HTTP server listens on ([::] for IPv6)."
    )
    interval: float = Field(1.0, ge=0.05, le=3600, description="Seconds between collection ticks.")
    log_level: LogLevel = "info"
    nvml: NvmlConfig = NvmlConfig()
    simulation: SimulationConfig = SimulationConfig()
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    derive: DeriveConfig = DeriveConfig()
    site: SiteConfig = SiteConfig()

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        split_listen_address(value)
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_unique_endpoints(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        seen: set[str] = set()
        for endpoint in endpoints:
            if endpoint.name in seen:
                raise ValueError(f"endpoint name {endpoint.name!r} is used twice; names must be unique")
            seen.add(endpoint.name)
        return endpoints

    @model_validator(mode="after")
    def _check_derive_window(self) -> Config:
        window, interval = self.derive.window, self.interval
        if window < 2 * interval:
            raise ValueError(
                f"derive.window: must be at least 2 × interval ({2 * interval:g} s) so the window holds two "
                f"ticks (got {window:g})"
            )
        return self

    @property
    def tick_budget_seconds(self) -> float:
        """How long one tick's collection may take (GPU reads, endpoint scrapes)."""
        return TICK_BUDGET_FRACTION * self.interval

    def endpoint_timeout(self, endpoint: EndpointConfig) -> float:
        """The time limit the exporter really gives `endpoint`'s scrapes."""
        return endpoint.effective_timeout(self.tick_budget_seconds)

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


MAX_SHOWN_CHARS = 80
_ALREADY_SAYS_GOT = re.compile(r"\bgot\b")


def _without_secrets(text: str) -> str:
    """A URL without its user info, query and fragment (tokens live there); other text as it is."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text.split("://", 1)[0] + "://…"
    if not (parts.username or parts.password or parts.query or parts.fragment):
        return text
    netloc = parts.hostname or ""
    if port is not None:
        netloc = f"{netloc}:{port}"
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def shown_value(value: Any) -> str:
    """`value` as an error message quotes it: repr, secrets left out, at most MAX_SHOWN_CHARS."""
    text = repr(_without_secrets(value) if isinstance(value, str) else value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def format_validation_error(error: ValidationError) -> str:
    """One line: `field.path: problem (got value)` for each problem, joined by '; '.

    The value is quoted once: not again when the problem already says what it got, never a mapping, and
    never a URL's user info or query string.
    """
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"] and re.match(r"[a-z_]+(\.[a-z_]+)*: ", message):
            parts.append(message)  # a model-level check that already names its field
            continue
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        given = item.get("input")
        says_it = (isinstance(given, str) and repr(given) in message) or _ALREADY_SAYS_GOT.search(message)
        if isinstance(given, dict) or item["type"] == "missing" or says_it:
            shown = ""
        else:
            shown = f" (got {shown_value(given)})"
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


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (`NvmlConfig`, `X | None`, …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        return [model for arg in get_args(annotation) for model in _models_in(arg)]
    return []


def _is_structured(annotation: Any) -> bool:
    """Whether a setting of this type can be a list or a mapping (so its variable may hold JSON)."""
    if _models_in(annotation):
        return True
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_structured(arg) for arg in get_args(annotation))
    return origin in (list, tuple, dict) or annotation in (list, tuple, dict)


def _env_setting(name: str) -> tuple[list[str], Any] | None:
    """`TPW_A__B` → (["a", "b"], the annotation of setting a.b), or None if it names no setting."""
    path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
    models: list[type[BaseModel]] = [Config]
    annotation: Any = None
    for depth, part in enumerate(path):
        fields = [model.model_fields[part] for model in models if part in model.model_fields]
        if not fields:
            return None
        annotation = fields[0].annotation
        if depth < len(path) - 1:
            models = _models_in(annotation)  # only a nested model has keys below it
    return path, annotation


def _env_names(environ: Mapping[str, str]) -> list[str]:
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in ENV_NOT_SETTINGS)


def unknown_env_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The `TPW_*` variable names that are no setting (a typo, another tool's): ignored, worth one warning."""
    environ = os.environ if environ is None else environ
    return [name for name in _env_names(environ) if _env_setting(name) is None]


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`TPW_A__B=v` → {"a": {"b": "v"}}, for every variable that names a setting.

    Values are strings as written (pydantic converts numbers and booleans), except that a list or mapping
    setting given as JSON (`[…]`, `{…}`) is decoded: `TPW_LISTEN_ADDRESS=[::]:9835` stays a string.
    """
    result: dict[str, Any] = {}
    for name in _env_names(environ):
        setting = _env_setting(name)
        if setting is None:
            continue  # unknown_env_variables() names it
        path, annotation = setting
        raw = environ[name]
        value: Any = raw
        if _is_structured(annotation) and raw.lstrip()[:1] in ("[", "{"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {name}: not valid JSON ({exc.msg})") from None
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
