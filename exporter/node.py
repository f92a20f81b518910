"""One daemon's parts from a Config: its sources, the attribution and derive stages, the renderer.

Runs in the collector process (see `exporter.collector`): NVML, httpx and the renderer are imported here,
never by the HTTP server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.config import Config, ConfigError, EndpointConfig
from exporter.derive.window import Deriver
from exporter.sources.base import ExternalProfiler, Source, SourceError

if TYPE_CHECKING:
    from exporter.daemon import Daemon
    from exporter.k8s.view import KubernetesStage
    from exporter.render.exposition import MetricSource

log = logging.getLogger(__name__)


@dataclass
class Node:
    """What one daemon collects: its sources, the endpoints it attributes, and what to stop at exit."""

    sources: list[Source]
    endpoints: list[EndpointConfig]
    stop: list[Callable[[], None]] = field(default_factory=list)
    kubernetes: KubernetesStage | None = None  # pod attribution on Kubernetes, when enabled
    # endpoint → the PIDs of its processes where known without a lookup: the demo's simulated engine
    endpoint_processes: dict[str, set[int]] = field(default_factory=dict)


def build_node(config: Config, command: str) -> Node:
    """GPU source (NVML, or the simulated node for `demo` plus its simulated engine) and endpoints."""
    endpoints = list(config.endpoints)
    stop: list[Callable[[], None]] = []
    processes: dict[str, set[int]] = {}
    if command == "demo":
        from exporter.config import SloConfig
        from exporter.demo.engine import (
            DEMO_ENDPOINT_NAME,
            DEMO_SLO_TPOT_SECONDS,
            DEMO_SLO_TTFT_SECONDS,
            SimulatedEngine,
            SimulatedEngineServer,
        )
        from exporter.sources.simulated import SimulatedSource

        simulation = config.simulation
        schedule = [(entry.scenario, entry.seconds) for entry in simulation.schedule or ()]
        simulated = SimulatedSource(
            simulation.gpus,
            simulation.scenario,
            simulation.phase_seconds,
            schedule=schedule or None,
            mig=simulation.mig,
        )
        processes[DEMO_ENDPOINT_NAME] = set(simulated.engine_process_ids())
        gpu_source: Source = simulated
        engine = SimulatedEngine(simulated.scenario, simulation.gpus, simulated.elapsed, time.time())
        server = SimulatedEngineServer(engine)
        server.start()
        stop.append(server.stop)
        if all(endpoint.name != DEMO_ENDPOINT_NAME for endpoint in endpoints):
            slo = SloConfig(ttft_seconds=DEMO_SLO_TTFT_SECONDS, tpot_seconds=DEMO_SLO_TPOT_SECONDS)
            demo = EndpointConfig(name=DEMO_ENDPOINT_NAME, url=server.url, engine="vllm", gpus="all", slo=slo)
            endpoints.append(demo)
    else:
        from exporter.sources.nvml import DeviceSelectionError, NvmlSource

        gpu_source = NvmlSource(
            profiling=config.nvml.profiling and config.profiling.source in ("auto", "gpm"),
            gpu_timeout_seconds=config.nvml.gpu_timeout_seconds or config.tick_budget_seconds,
            retry_max_seconds=config.nvml.retry_max_seconds,
            devices=config.nvml.devices,
            health_interval_seconds=config.nvml.health_interval_seconds,
            external_profiler=build_profiler(config),
        )
        try:  # open the GPUs now, so that a device the node lacks is a start-up error, not a log line
            gpu_source.initialise()
        except DeviceSelectionError as exc:
            raise ConfigError(str(exc)) from None
        except SourceError as exc:  # no driver yet: the daemon keeps retrying with backoff
            log.warning("%s; retrying in the background", exc)
    sources = [gpu_source]
    if endpoints:
        from exporter.sources.endpoints import EndpointsSource

        sources.append(EndpointsSource(endpoints, tick_budget_seconds=config.tick_budget_seconds))
    kubernetes = None
    if command != "demo":  # which pod holds each GPU, and the pods behind the gpus: auto endpoints
        from exporter.k8s.view import build_kubernetes

        kubernetes = build_kubernetes(config.kubernetes, endpoints)
        if kubernetes is not None:
            stop.append(kubernetes.stop)
    return Node(sources, endpoints, stop, kubernetes, processes)


def build_profiler(config: Config) -> ExternalProfiler | None:
    """dcgm-exporter as the profiling source of the GPUs without GPM (`profiling`), or None."""
    profiling = config.profiling
    if profiling.url is None or profiling.source not in ("auto", "dcgm-exporter"):
        return None
    from exporter.sources.dcgm_exporter import DcgmExporterProfiler

    return DcgmExporterProfiler(
        profiling.url,
        timeout_seconds=profiling.effective_timeout(config.tick_budget_seconds),
        max_body_bytes=profiling.max_body_bytes,
    )


def build_deriver(config: Config, endpoints: Sequence[EndpointConfig] | None = None) -> Deriver:
    """The derive stage: aligned-window throughput per watt, roofline bound, cost (`derive`, `site`), goodput
    per joule of the `endpoints` (default: the configured ones) with an `slo`."""
    endpoints = config.endpoints if endpoints is None else endpoints
    return Deriver(
        window=config.derive.window,
        thresholds=config.derive.bound.thresholds(),
        site=config.site.site(),
        tolerance=config.interval / 2,
        slos={endpoint.name: endpoint.slo.slo() for endpoint in endpoints if endpoint.slo is not None},
    )


def build_daemon(node: Node, config: Config, extra_families: Sequence[MetricSource] = ()) -> Daemon:
    """The tick over the node's sources: attribution, then the derive window, rendered with every family."""
    from exporter.attribution import Attributor
    from exporter.daemon import Daemon
    from exporter.render.derived import derived_families
    from exporter.render.endpoints import endpoint_families
    from exporter.render.exposition import Renderer

    compat: list[MetricSource] = []
    if "dcgm" in config.compat:  # imported only when asked for: off, it costs nothing
        from exporter.render.dcgm_compat import DcgmCompat

        compat.append(DcgmCompat.from_config(config.dcgm_compat).families)
    kubernetes = node.kubernetes  # tpw_gpu_pod_info; its stage runs before the attribution it serves
    if kubernetes is not None:
        extra_families = [*extra_families, kubernetes.families]
    return Daemon(
        node.sources,
        Renderer(extra=[endpoint_families, derived_families, *extra_families, *compat]),
        config.interval,
        stages=[
            *([kubernetes] if kubernetes is not None else []),
            Attributor(
                node.endpoints,
                cluster=kubernetes.attribute if kubernetes is not None else None,
                known_processes=node.endpoint_processes,
            ),
            build_deriver(config, node.endpoints),
        ],
    )
