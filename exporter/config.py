"""The one configuration model, and how a file, the environment and flags merge into it.

Precedence: command-line flags override `TPW_*` environment variables, which override the YAML file,
which overrides the defaults below. Nested keys use `__` in the environment
(`TPW_SIMULATION__GPUS=8`); a variable's value is taken as written, and JSON-decoded only for a setting
that is a list or a mapping (`TPW_NVML__DEVICES='[0, 1]'`). `TPW_*` variables that name no setting are
left out (`unknown_env_variables` names them for one warning). Every problem becomes a `ConfigError` whose
message is one line naming the field, what is allowed and what was given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import reprlib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

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

from exporter.config_auth import (
    AuthorizationConfig,
    BasicAuthConfig,
    HttpHeaderConfig,
    TlsClientConfig,
    check_endpoint_auth,
    check_header_names,
)
from exporter.model import (
    COMPAT_FORMATS,
    DCGM_HOSTNAME_LABELS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LABEL_LENGTH,
    DEFAULT_MAX_MODELS,
    ENDPOINT_ENGINES,
    ENGINE_AUTO,
    ENGINE_GENERIC,
    LOG_LEVELS,
    MIB,
    PROFILING_SOURCES,
    SCENARIO_NAMES,
    Site,
    Slo,
    Thresholds,
    check_generic_mapping,
)
from exporter.redact import SECRET_KEYS, redact_text
from exporter.redact import redact_url as redact_url  # its home before exporter.redact

ENV_PREFIX = "TPW_"
ENV_CONFIG_FILE = "TPW_CONFIG"
# `TPW_*` variables the project uses that are not settings, never warned about: the config file's path,
# and the address docker-compose.yml publishes its ports on.
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG_FILE, "TPW_BIND"})
DEFAULT_PORT = 9835
# The share of `interval` a tick's collection may take: the limit of each GPU's read
# (`nvml.gpu_timeout_seconds` unset) and the cap on every endpoint's `timeout_seconds`.
TICK_BUDGET_FRACTION = 0.8
# Requests the HTTP server serves at once (node_exporter's --web.max-requests default).
DEFAULT_WEB_MAX_REQUESTS = 40

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
    health_interval_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds between reads of the slow-changing GPU health values (ECC, remapped rows, "
        "limits, PCIe maximum and replays, NVLink states and errors); the first read is at start.",
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: Any) -> Any:
        return parse_gpu_list(value)


MAX_GPU_INDEX = 1023
GPU_UUID_PATTERN = re.compile(r"(GPU|MIG)-[0-9A-Za-z-]{1,80}")


def parse_gpu_list(value: Any, also: str = "") -> Any:
    """`0,1`, `2` or `[0, "GPU-…"]` → a list of NVML indices (0..MAX_GPU_INDEX) and UUIDs, none twice.

    ValueError naming the first bad entry; a value of another type is left to pydantic's own type check.
    `also` names other accepted values in the message (an endpoint's `auto` and `all`).
    """
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return value
    parsed: list[int | str] = []
    for item in items:
        entry = item.strip() if isinstance(item, str) else item
        if isinstance(entry, str) and re.fullmatch(r"[0-9]{1,12}", entry):
            entry = int(entry)
        if isinstance(entry, bool) or not isinstance(entry, (int, str)):
            entry_is = "a boolean" if isinstance(entry, bool) else f"a {type(entry).__name__}"
            raise ValueError(f"expected {also}GPU indices or UUIDs such as 0,1 or GPU-5c2d…; got {entry_is}")
        if isinstance(entry, int) and not 0 <= entry <= MAX_GPU_INDEX:
            raise ValueError(f"GPU indices are 0..{MAX_GPU_INDEX}, got {entry}")
        if isinstance(entry, str) and not GPU_UUID_PATTERN.fullmatch(entry):
            raise ValueError(
                f"expected {also}GPU indices or UUIDs such as 0,1 or GPU-5c2d…; "
                f"{shown_value(entry)} is neither"
            )
        if entry in parsed:
            raise ValueError(f"{f'GPU {entry}' if isinstance(entry, int) else entry} is listed twice")
        parsed.append(entry)
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
    mig: bool = Field(
        False,
        description="Simulate MIG on every GPU: 3g.40gb + 2g.20gb + two 1g.10gb devices, the engine on the "
        "3g.40gb.",
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        return parse_schedule(value) if isinstance(value, str) else value


_THRESHOLDS = Thresholds()
MAX_WINDOW_SECONDS = 86400.0


class SloConfig(_Strict):
    """An endpoint's latency objective: what the goodput and SLO attainment metrics count as good."""

    ttft_seconds: float | None = Field(
        None, gt=0, le=3600, description="Time to first token at most this many seconds."
    )
    tpot_seconds: float | None = Field(
        None, gt=0, le=60, description="Time per output token at most this many seconds."
    )

    @model_validator(mode="after")
    def _check_some(self) -> SloConfig:
        if self.ttft_seconds is None and self.tpot_seconds is None:
            raise ValueError("set ttft_seconds, tpot_seconds or both")
        return self

    def slo(self) -> Slo:
        return Slo(self.ttft_seconds, self.tpot_seconds)


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
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        le=256 * MIB,
        description="Largest page accepted, as sent and once decompressed (each read as a stream and cut "
        "off at the cap).",
    )
    max_models: int = Field(
        DEFAULT_MAX_MODELS,
        ge=1,
        le=10_000,
        description="Most models kept per endpoint (first on the page first); the series of the others are "
        "left out and counted.",
    )
    max_label_length: int = Field(
        DEFAULT_MAX_LABEL_LENGTH,
        ge=16,
        le=4096,
        description="Longest model name kept, in characters; the series of a longer one are left out and "
        "counted.",
    )
    unit: WorkUnit = Field("tokens", description="Unit of work (generic endpoints that do not serve tokens).")
    slo: SloConfig | None = Field(
        None,
        description="Latency objective (ttft_seconds, tpot_seconds): tpw_endpoint_goodput_tokens_per_joule "
        "and tpw_endpoint_slo_attainment_ratio count the requests within it.",
    )
    mapping: dict[str, str] | None = Field(
        None, description="For engine `generic`: normalized field → source metric name."
    )
    model_label: str | None = Field(
        None, description="For engine `generic`: the label carrying the model name."
    )
    # Credentials and TLS, named as in a Prometheus scrape_config (exporter.config_auth).
    authorization: AuthorizationConfig | None = Field(
        None, description="`Authorization: <type> <credentials>` on every scrape (type default Bearer)."
    )
    basic_auth: BasicAuthConfig | None = Field(None, description="HTTP basic authentication.")
    http_headers: dict[str, HttpHeaderConfig] | None = Field(
        None, description="Extra request headers: name → values, secrets and/or files."
    )
    tls_config: TlsClientConfig | None = Field(
        None, description="TLS for an https:// url: CA, client certificate (mTLS), server name, versions."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        check_url(value)
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _parse_gpus(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() in ("auto", "all"):
            return value.strip()
        parsed = parse_gpu_list(value, also="auto, all, or ")
        if parsed == []:
            raise ValueError("expected auto, all, or at least one GPU index or UUID")
        return parsed

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

    @field_validator("http_headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, HttpHeaderConfig] | None) -> Any:
        return check_header_names(headers)

    @model_validator(mode="after")
    def _check_auth(self) -> EndpointConfig:
        check_endpoint_auth(self)
        return self

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


class KubernetesConfig(_Strict):
    """Pod attribution on Kubernetes (`exporter.k8s`): the kubelet's PodResources socket, the API server."""

    enabled: Literal["auto"] | bool = Field(
        "auto",
        description="auto: on when the PodResources socket exists or the exporter runs in a pod "
        "(KUBERNETES_SERVICE_HOST set, or api_url given); true: on, problems are reported; false: off.",
    )
    pod_resources_socket: str = Field(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        min_length=1,
        description="The kubelet's PodResources API socket: which pod holds each GPU (tpw_gpu_pod_info).",
    )
    node_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="This node's name, for the API server's list of its pods; default the NODE_NAME "
        "environment variable (the DaemonSet sets it from spec.nodeName).",
    )
    namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace of a Service named without one in an endpoint URL (http://vllm:8000); default "
        "the exporter's own (POD_NAMESPACE, else its service account's).",
    )
    api_url: str | None = Field(
        None,
        description="The API server's URL; default the in-cluster configuration (the pod's service account).",
    )
    refresh_seconds: float = Field(
        10.0, gt=0, le=3600, description="Seconds between reads of the PodResources API."
    )
    api_refresh_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Seconds between API server lookups of the gpus: auto endpoints' pods while nothing "
        "changes; sooner when a pod on this node gains or loses a GPU, or an endpoint is not resolved.",
    )
    timeout_seconds: float = Field(2.0, gt=0, le=60, description="Time limit of one call to either API.")

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value)
        return value


ProfilingSource = Literal[PROFILING_SOURCES]  # type: ignore[valid-type]
CompatFormat = Literal[COMPAT_FORMATS]  # type: ignore[valid-type]
DcgmHostnameLabel = Literal[DCGM_HOSTNAME_LABELS]  # type: ignore[valid-type]


class ProfilingConfig(_Strict):
    """Where the GPUs' profiling ratios come from: NVML GPM, or a dcgm-exporter page (docs/metrics.md)."""

    source: ProfilingSource = Field(
        "auto",
        description="auto: GPM on GPUs that support it, dcgm-exporter (`url`) for the others; gpm: GPM only; "
        "dcgm-exporter: every GPU from `url`, no GPM calls; off: no profiling metrics.",
    )
    url: str | None = Field(
        None, description="dcgm-exporter's metrics page, e.g. http://localhost:9400/metrics."
    )
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=60,
        description="Time limit for reading the page (fetch and parse); default and cap: 80% of `interval`.",
    )
    max_body_bytes: int = Field(
        16 * MIB,
        ge=1024,
        le=256 * MIB,
        description="Largest page accepted (read as a stream, cut off at the cap).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value)
        return value

    @model_validator(mode="after")
    def _check_source(self) -> ProfilingConfig:
        if self.source == "dcgm-exporter" and self.url is None:
            raise ValueError(
                "source dcgm-exporter needs `url`, dcgm-exporter's metrics page such as "
                "http://localhost:9400/metrics"
            )
        if self.source in ("gpm", "off") and self.url is not None:
            raise ValueError(f"`url` is only read with source auto or dcgm-exporter, not {self.source}")
        return self

    def effective_timeout(self, tick_budget_seconds: float) -> float:
        """The page's time limit: `timeout_seconds`, capped at the tick's budget."""
        return min(self.timeout_seconds or tick_budget_seconds, tick_budget_seconds)


class DcgmCompatConfig(_Strict):
    """dcgm-exporter's labels, for `compat: [dcgm]` (docs/metrics.md, "dcgm-exporter names")."""

    hostname_label: DcgmHostnameLabel = Field(
        "Hostname",
        description="Hostname (every dcgm-exporter release up to 4.5.3-4.8.2), hostname (its main branch "
        "since #655), or none (no such label, as dcgm-exporter --no-hostname).",
    )
    hostname: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Its value; default $NODE_NAME, else this machine's host name (as dcgm-exporter does).",
    )


def parse_compat(value: Any) -> Any:
    """`dcgm` or `dcgm,…` (a flag, an environment variable) → a list; other values are left to pydantic."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


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
    kubernetes: KubernetesConfig = KubernetesConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    compat: list[CompatFormat] = Field(
        default_factory=list,
        description="Other exporters' metric names to serve too: dcgm (dcgm-exporter's DCGM_FI_* names, "
        "units and labels).",
    )
    dcgm_compat: DcgmCompatConfig = DcgmCompatConfig()
    web_config_file: Path | None = Field(
        None,
        description="The Prometheus exporter-toolkit's web configuration file (TLS, basic auth, headers); "
        "unset: plain HTTP, no auth.",
    )
    web_max_requests: int = Field(
        DEFAULT_WEB_MAX_REQUESTS,
        ge=0,
        le=100_000,
        description="Requests served at once; more are answered 503 (0: no limit).",
    )
    web_max_connections: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Connections open at once; past it the oldest without a request in flight is closed. "
        "Default: half the file descriptor limit less 128, at most 512.",
    )

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        split_listen_address(value)
        return value

    @field_validator("compat", mode="before")
    @classmethod
    def _parse_compat(cls, value: Any) -> Any:
        return parse_compat(value)

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
    """`host:port` or `[v6]:port` → (host, port), checked: an IPv4 address, a bracketed IPv6 address or a
    host name, and a port 0..65535 (0: any free port). An empty host is 0.0.0.0. ValueError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]+", port_text):
        raise ValueError(f"expected host:port such as 0.0.0.0:{DEFAULT_PORT}, got {shown_value(value)}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {shown_value(port)}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        if inner is None or not _is_ipv6(inner):
            raise ValueError(
                f"expected an IPv6 address in brackets such as [::1]:{port}, got {shown_value(host)}"
            )
        return inner, port
    if ":" in host:
        raise ValueError(
            f"an IPv6 address is written in brackets, e.g. [::]:{port}; got {shown_value(value)}"
        )
    if not host:
        return "0.0.0.0", port
    check_host(host)
    return host, port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_host(host: str, quote: Callable[[Any], str] | None = None) -> None:
    """ValueError unless `host` is an IPv4 address (all four numbers, each 0..255) or a host name."""
    quote = quote or shown_value
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{quote(host)} is not an IPv4 address (four numbers 0..255 joined by dots)"
            ) from None
        return
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"{quote(host)} is not an IP address or a host name (letters, digits, '-', '_' and '.')"
        )


EXPECTED_URL = "expected an http:// or https:// URL such as http://localhost:8000/metrics"


def check_url(url: str) -> None:
    """ValueError unless `url` is http(s) with a host (IPv4, bracketed IPv6 or a name) and a port 1..65535."""
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        raise ValueError(f"{EXPECTED_URL}: no spaces or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(EXPECTED_URL)
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in re.split(r"[?#]", rest, maxsplit=1)[0][len(authority) :]:
        raise ValueError(
            f"{EXPECTED_URL}: an '@' in the path; percent-encode it as %40 (a password's '/' as %2F)"
        )
    # A password holding an unencoded '?' or '#' ends the authority early: then neither the "host" nor
    # the "port" is quoted, as either may be part of that password.
    quote = shown_value if "@" not in rest[len(authority) :] else (lambda _: "a value not shown")
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):
        host, bracket, after = host_port[1:].partition("]")
        if not bracket or not _is_ipv6(host):
            raise ValueError(
                f"{EXPECTED_URL}: an IPv6 host is an address in brackets, such as http://[::1]:8000/"
            )
        if after and not after.startswith(":"):
            raise ValueError(f"{EXPECTED_URL}: expected :PORT after the IPv6 host")
        port_text = after[1:]
    else:
        host, _, port_text = host_port.partition(":")
        if ":" in port_text:
            raise ValueError(
                f"{EXPECTED_URL}: an IPv6 host is written in brackets, such as http://[::1]:8000/"
            )
        if not host:
            raise ValueError(f"{EXPECTED_URL}: the URL has no host")
        check_host(host, quote)
    if port_text and not (re.fullmatch(r"[0-9]{1,12}", port_text) and 1 <= int(port_text) <= 65535):
        shown = port_text if port_text.isascii() and port_text.isdigit() else quote(port_text)
        raise ValueError(f"the URL's port must be 1..65535, got {shown}")


MAX_SHOWN_CHARS = 80
# The longest error line printed: past it, a message is cut and says how many problems it left out.
MAX_ERROR_CHARS = 1000
_ALREADY_SAYS_GOT = re.compile(r"\bgot\b")
_SETTING_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _ShortRepr(reprlib.Repr):
    """repr that stops early (a value may be huge) and leaves URL secrets out of every string in it."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 4 * MAX_SHOWN_CHARS  # then cut to MAX_SHOWN_CHARS
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 8

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(redact_text(x), level)


_short_repr = _ShortRepr()


def shown_value(value: Any) -> str:
    """`value` as an error message quotes it: repr, secrets left out, at most MAX_SHOWN_CHARS."""
    text = _short_repr.repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as one printable line of at most `limit` characters (control characters become spaces)."""
    line = "".join(" " if not char.isprintable() else char for char in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _shown_location(location: tuple[Any, ...]) -> str:
    """`endpoints.0.url`; a key that cannot be a setting's name (a secret, a line of some other file) as
    `<key not shown>`."""
    parts = [str(part) for part in location]
    return (
        ".".join(part if _SETTING_NAME.fullmatch(part) else "<key not shown>" for part in parts) or "config"
    )


def format_validation_error(error: ValidationError) -> str:
    """One line: `field.path: problem (got value)` for each problem, joined by '; '.

    The value is quoted once: not again when the problem already says what it got, never a mapping, never
    the value of an unknown field, and never a URL's user info or query string. At most MAX_ERROR_CHARS.
    """
    parts = []
    for item in error.errors():
        location = _shown_location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"] and re.match(r"[a-z_]+(\.[a-z_]+)*: ", message):
            parts.append(message)  # a model-level check that already names its field
            continue
        given = item.get("input")
        if item["type"] == "extra_forbidden":
            message, given = "unknown field", {}  # its value is not shown: it may be anything
        says_it = (isinstance(given, str) and repr(given) in message) or _ALREADY_SAYS_GOT.search(message)
        secret = any(str(part) in SECRET_KEYS for part in item["loc"])  # e.g. basic_auth.password
        if isinstance(given, dict) or item["type"] == "missing" or says_it or secret:
            shown = ""
        else:
            shown = f" (got {shown_value(given)})"
        parts.append(f"{location}: {redact_text(message)}{shown}")
    return _joined(parts)


def _joined(parts: list[str]) -> str:
    """`parts` joined by '; ', cut after the last one that fits in MAX_ERROR_CHARS."""
    text = ""
    for count, part in enumerate(parts):
        candidate = f"{text}; {part}" if text else part
        if len(candidate) > MAX_ERROR_CHARS - 40:
            left = len(parts) - count
            return f"{text}; … and {left} more problem{'s' if left > 1 else ''}" if text else one_line(part)
        text = candidate
    return text


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# A config file is a few KB: these bound what a wrong or hostile file can cost before it is refused.
MAX_CONFIG_FILE_BYTES = MIB
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings, counted with every alias expanded
MAX_YAML_DEPTH = 64
_YAML_TOKENS = re.compile(r"'(<[a-z ]+>|[-?:,\[\]{}])'")  # pyyaml's names for tokens, not the file's text
_QUOTED = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def _yaml_problem(problem: str | None) -> str:
    """pyyaml's problem without what it quotes from the file (a character, an alias, a tag)."""
    if not problem:
        return "invalid YAML"

    def keep_tokens(match: re.Match[str]) -> str:
        return match.group(0) if _YAML_TOKENS.fullmatch(match.group(1)) else ""

    return one_line(_QUOTED.sub(keep_tokens, problem), limit=120)


def _limit_error(problem: str, node: yaml.Node) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)


def _check_expansion(root: yaml.Node) -> None:
    """MarkedYAMLError if `root`, with every alias expanded, holds over MAX_YAML_VALUES values, nests over
    MAX_YAML_DEPTH levels, or contains itself. Each node is measured once, so a billion laughs costs what
    its text costs."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (values, levels below it)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            size, height = measured[key]
        else:
            if key in open_nodes:
                raise _limit_error("an alias refers to a collection that contains it", node)
            if depth > MAX_YAML_DEPTH:
                raise _limit_error(f"nested more than {MAX_YAML_DEPTH} levels deep", node)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            open_nodes.add(key)
            size, height = 1, 0
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_YAML_VALUES:
                    raise _limit_error(
                        f"more than {MAX_YAML_VALUES} values once its aliases are expanded", node
                    )
            open_nodes.discard(key)
            measured[key] = (size, height)
        if depth + height > MAX_YAML_DEPTH:
            raise _limit_error(
                f"nested more than {MAX_YAML_DEPTH} levels deep once its aliases are expanded", node
            )
        return size, height

    measure(root, 0)


class _ConfigLoader(yaml.SafeLoader):
    """pyyaml's safe loader, with the document's depth and its size, aliases expanded, capped."""

    _depth = 0
    _nodes = 0  # as written, an alias counting 1: stops a long file early; the expanded size is checked after

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH or self._nodes > MAX_YAML_VALUES:
                too_much = (
                    f"nested more than {MAX_YAML_DEPTH} levels deep"
                    if self._depth > MAX_YAML_DEPTH
                    else f"more than {MAX_YAML_VALUES} values"
                )
                raise yaml.MarkedYAMLError(problem=too_much, problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _position(before: str) -> str:
    """`line L column C` (from 1) of the character that follows `before`."""
    return f"line {before.count(chr(10)) + 1} column {len(before) - before.rfind(chr(10))}"


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML file, or a one-line ConfigError naming the file, and the line and column
    where they are known, and the kind of problem: never the file's text (it may be another file, with
    secrets)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"config file {path}: larger than {MAX_CONFIG_FILE_BYTES // MIB} MiB, too big for a config file"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = _position(raw[: exc.start].decode("utf-8-sig", "replace"))
        raise ConfigError(f"config file {path} {where}: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader, with limits
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = _yaml_problem(exc.problem)
        if exc.context and problem.startswith("but "):  # "expected a single document …, but found …"
            problem = f"{_yaml_problem(exc.context)}, {problem}"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    except yaml.reader.ReaderError as exc:
        kind = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "a character"
        raise ConfigError(
            f"config file {path} {_position(text[: exc.position])}: {kind} is not allowed in YAML"
        ) from None
    except yaml.YAMLError:
        raise ConfigError(f"config file {path}: invalid YAML") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    if data and not any(_SETTING_NAME.fullmatch(str(key)) for key in data):
        raise ConfigError(
            f"config file {path}: expected a mapping of settings; no key in it is a setting name"
        )
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
            except RecursionError:
                raise ConfigError(f"environment variable {name}: JSON nested too deeply") from None
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
