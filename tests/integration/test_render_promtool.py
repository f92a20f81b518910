"""Every output mode through the parsers that read it: `promtool check metrics` on Prometheus text 0.0.4 and
prometheus_client's strict OpenMetrics parser on OpenMetrics 1.0, both as `/metrics` negotiates them
(tests/exposition_lint.py says what each check covers).

The pages are the exporter's own, built in-process from a fake clock (no process per case): the demo node
(simulated GPUs and its simulated vLLM engine, scraped over HTTP on loopback) under every scenario; the NVML
path over the NVML fake with an endpoint per engine fixture, a generic endpoint, a failing one and a pending
one; NVML without a driver; the page before the first tick; the collector-down page. Derived metrics are
linted with cost and CO2 configured (tests/integration/test_render_derived_promtool_and_demo.py checks their
values through a real demo process). The rest of rendering is tests/unit/test_render.py.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml
import pytest
from engine_server import FIXTURES, Behaviour, EngineServer
from exposition_lint import App, assert_valid, sample_values
from fake_nvml import Clock, FakeGpu, FakeNvml
from helpers import free_port

from exporter.attribution import Attributor
from exporter.collector import collector_families
from exporter.config import Config, EndpointConfig
from exporter.daemon import Daemon
from exporter.demo.engine import DEMO_ENDPOINT_NAME, SimulatedEngine, SimulatedEngineServer
from exporter.model import SCENARIO_NAMES
from exporter.node import build_deriver
from exporter.published import collector_down
from exporter.render.derived import derived_families
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Exposition, Renderer
from exporter.sources.base import Source
from exporter.sources.endpoints import EndpointsSource
from exporter.sources.nvml import NvmlSource
from exporter.sources.simulated import SimulatedSource

INTERVAL = 1.0
DEMO_TICKS = 8  # phase_seconds 1: through phase 7, past every scenario's keyframes but memory-leak's
CONFIG = Config.model_validate(
    {
        "interval": INTERVAL,
        "derive": {"window": 4},
        "site": {"electricity_price_per_kwh": 0.12, "carbon_intensity_grams_per_kwh": 380},
    }
)
TTFT_COUNT = "tpw_endpoint_time_to_first_token_seconds_count"


def daemon_for(
    sources: Sequence[Source], endpoints: Sequence[EndpointConfig], clock: Clock, **kw: Any
) -> Daemon:
    """The daemon exporter.node.build_daemon makes (and the collector's own families), on a fake clock."""
    return Daemon(
        sources,
        Renderer(extra=[endpoint_families, derived_families, collector_families(restarts=0)]),
        INTERVAL,
        stages=[Attributor(endpoints, clock=clock, **kw), build_deriver(CONFIG)],
        clock=clock,
    )


async def run_ticks(daemon: Daemon, clock: Clock, ticks: int) -> list[Exposition]:
    expositions = []
    try:
        for _ in range(ticks):
            expositions.append(await daemon.tick())
            clock.advance(INTERVAL)
    finally:
        await daemon.close()
    return expositions


def stop_together(stops: Sequence[Callable[[], None]]) -> None:
    """Stop HTTP servers in parallel: each waits up to its poll interval for its serving loop."""
    threads = [threading.Thread(target=stop) for stop in stops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="module")
def app() -> App:
    return App()


@dataclass
class DemoRun:
    engine: SimulatedEngine
    start: float  # the fake clock when the simulation started
    expositions: list[Exposition]


@pytest.fixture(scope="module")
def demo_runs() -> dict[str, DemoRun]:
    """Every scenario's demo node (2 GPUs, its engine over HTTP), ticked DEMO_TICKS times at 1 s phases.

    Built once for the module, so the engines' HTTP servers stop together (each takes ~0.1 s).
    """
    runs: dict[str, DemoRun] = {}
    servers: list[SimulatedEngineServer] = []
    try:
        for scenario in SCENARIO_NAMES:
            clock = Clock()
            start = clock()
            gpus = SimulatedSource(gpus=2, scenario=scenario, phase_seconds=1.0, clock=clock)
            engine = SimulatedEngine(gpus.scenario, 2, gpus.elapsed, start_time=1.7e9)
            servers.append(SimulatedEngineServer(engine))
            servers[-1].start()
            endpoints = [
                EndpointConfig(name=DEMO_ENDPOINT_NAME, url=servers[-1].url, engine="vllm", gpus="all")
            ]
            daemon = daemon_for([gpus, EndpointsSource(endpoints, clock=clock)], endpoints, clock)
            runs[scenario] = DemoRun(engine, start, asyncio.run(run_ticks(daemon, clock, DEMO_TICKS)))
    finally:
        stop_together([server.stop for server in servers])
    return runs


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_demo_node_pages_lint_under_every_scenario(
    scenario: str, app: App, demo_runs: dict[str, DemoRun]
) -> None:
    run = demo_runs[scenario]
    # The first tick (no derive window, no GPM window yet) and the last (full window, every family).
    first, last = run.expositions[0], run.expositions[-1]
    assert_valid(*app.pages(first), f"{scenario}, first tick")
    families = assert_valid(*app.pages(last), f"{scenario}, tick {DEMO_TICKS}")

    values = sample_values(families)
    names = {family.name for family in families}
    assert values[("tpw_simulation_info", (("scenario", scenario),))] == 1
    assert {"tpw_gpu_bound", "tpw_derive_window_seconds", "tpw_exporter_collector_up"} <= names
    endpoint = (("endpoint", DEMO_ENDPOINT_NAME),)
    assert values[("tpw_endpoint_resets_total", endpoint)] == 0
    up = values[("tpw_endpoint_up", (*endpoint, ("engine", "vllm")))]
    if scenario == "endpoint-down":
        assert up == 0 and not any(name == TTFT_COUNT for name, _ in values)
        return
    assert up == 1
    # The engine's integer count of completed requests, at the last scrape, reaches the page unchanged.
    (count,) = [value for (name, _), value in values.items() if name == TTFT_COUNT]
    scraped_at = last.snapshot.endpoints[0].timestamp - run.start
    assert count == math.floor(run.engine.state(scraped_at).requests)
    if scenario != "idle":
        assert count > 0


def nvml_node_expositions(ticks: int) -> list[Exposition]:
    """Three GPUs (GPM, no GPM, lost) and, on GPU 0/1, an endpoint per engine fixture page; a generic
    endpoint, one that refuses connections and one whose `gpus: auto` is still pending."""
    clock = Clock()
    fake = FakeNvml(
        [
            FakeGpu(uuid="GPU-gpm", activity={pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 60.0}),
            FakeGpu(uuid="GPU-no-gpm", gpm_supported=False),
            FakeGpu(uuid="GPU-lost", errors={"nvmlDeviceGetFieldValues": pynvml.NVML_ERROR_GPU_IS_LOST}),
        ],
        clock,
    )
    nvml = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5)
    fixtures = sorted(FIXTURES.glob("*.prom"))
    assert len(fixtures) >= 5, "an engine fixture per profile"
    generic_page = b"# TYPE images_generated_total counter\nimages_generated_total 12\nqueue_depth 3\n"
    servers = [EngineServer(Behaviour(body=path.read_bytes())) for path in fixtures]
    generic = EngineServer(Behaviour(body=generic_page))
    # Series left out for each reason: an invalid value, a long model name, models past the cap.
    hostile_page = (
        'vllm:generation_tokens_total{model_name="a"} 5\nvllm:generation_tokens_total{model_name="b"} NaN\n'
        'vllm:num_requests_running{model_name="b"} 1\nvllm:kv_cache_usage_perc{model_name="a"} +Inf\n'
        f'vllm:generation_tokens_total{{model_name="{"x" * 40}"}} 1\n'
        'vllm:num_requests_running{model_name="c"} 2\n'
    ).encode()
    hostile = EngineServer(Behaviour(body=hostile_page))
    try:
        endpoints = [
            EndpointConfig(name=path.stem, url=server.url, engine="auto", gpus=[index % 2])
            for index, (path, server) in enumerate(zip(fixtures, servers, strict=True))
        ]
        endpoints += [
            EndpointConfig.model_validate(
                {
                    "name": "images",
                    "url": generic.url,
                    "engine": "generic",
                    "unit": "images",
                    "gpus": "all",
                    "mapping": {
                        "work_units_total": "images_generated_total",
                        "requests_waiting": "queue_depth",
                    },
                }
            ),
            EndpointConfig(
                name="gone", url=f"http://127.0.0.1:{free_port()}/metrics", engine="vllm", gpus=[1]
            ),
            EndpointConfig(name="starting", url=servers[0].url, engine="auto", gpus="auto"),
            EndpointConfig(
                name="hostile", url=hostile.url, engine="vllm", gpus=[0], max_models=2, max_label_length=32
            ),
        ]
        # `gpus: auto` finds the listener, not yet on a GPU: pending for the grace period
        daemon = daemon_for(
            [nvml, EndpointsSource(endpoints, clock=clock)],
            endpoints,
            clock,
            find_pids=lambda port, siblings: {4242},
        )
        return asyncio.run(run_ticks(daemon, clock, ticks))
    finally:
        stop_together([server.close for server in (*servers, generic, hostile)])


def test_nvml_node_with_every_engine_profile_lints(app: App) -> None:
    expositions = nvml_node_expositions(ticks=3)
    for exposition in expositions:
        families = assert_valid(*app.pages(exposition), f"NVML, tick {exposition.snapshot.tick}")
    values = sample_values(families)
    ups = {
        dict(labels)["endpoint"]: value
        for (name, labels), value in values.items()
        if name == "tpw_endpoint_up"
    }
    engines = {dict(labels)["engine"] for (name, labels) in values if name == "tpw_endpoint_up"}
    fixtures = {path.stem for path in FIXTURES.glob("*.prom")}
    assert {name: ups[name] for name in fixtures} == dict.fromkeys(fixtures, 1.0)  # every page was read
    assert {"vllm", "sglang", "tgi", "triton", "llamacpp", "generic"} <= engines
    assert ups["gone"] == 0 and ups["images"] == 1 and ups["hostile"] == 1
    dropped = {
        dict(labels)["reason"]: value
        for (name, labels), value in values.items()
        if name == "tpw_endpoint_dropped_series_total" and dict(labels)["endpoint"] == "hostile"
    }
    # per tick: b's NaN tokens and a's +Inf KV usage, the long name's tokens, and c's running (third model)
    assert dropped == {"invalid_value": 6, "label_too_long": 3, "too_many_series": 3}
    assert values[("tpw_endpoint_attribution_pending", (("endpoint", "starting"),))] == 1
    assert values[("tpw_gpu_up", (("gpu", "2"),))] == 0
    assert ("tpw_gpu_tensor_active_ratio", (("gpu", "0"),)) in values  # GPM on the last tick
    assert ("tpw_gpu_tensor_active_ratio", (("gpu", "1"),)) not in values
    assert any(name == TTFT_COUNT for name, _ in values)


def test_nvml_without_a_driver_lints(app: App) -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid="GPU-0")], clock, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    daemon = daemon_for([NvmlSource(fake, clock=clock)], [], clock)
    (exposition,) = asyncio.run(run_ticks(daemon, clock, 1))
    families = assert_valid(*app.pages(exposition), "NVML without a driver")
    assert sample_values(families)[("tpw_source_up", (("source", "nvml"),))] == 0


def test_pages_without_a_tick_lint(app: App) -> None:
    """Before the first tick (the daemon's empty exposition) and while the collector process is down."""
    clock = Clock()
    before = daemon_for([SimulatedSource(gpus=1, clock=clock)], [], clock).latest
    families = assert_valid(*app.pages(before), "before the first tick")
    assert sample_values(families)[("tpw_exporter_ready", ())] == 0
    families = assert_valid(*app.pages(collector_down()), "collector down")
    assert sample_values(families) == {("tpw_exporter_collector_up", ()): 0}


def test_mig_node_with_per_endpoint_gpu_use_lints(app: App) -> None:
    """The demo with MIG on (issue 14, part 2): MIG families and the endpoint's processes' GPU use."""
    from exporter.model import EndpointSample, Snapshot

    clock = Clock()
    source = SimulatedSource(gpus=2, scenario="healthy", clock=clock, mig=True)
    asyncio.run(source.collect())
    clock.advance(1.0)
    gpus = asyncio.run(source.collect()).gpus
    demo = EndpointConfig(name="demo", url="http://127.0.0.1:1/metrics", gpus="all")
    attributor = Attributor([demo], known_processes={"demo": set(source.engine_process_ids())})
    snapshot = attributor(
        Snapshot(2, 1.8e9, clock(), 0.001, gpus=gpus, endpoints=(EndpointSample("demo", "vllm", demo.url),))
    )
    families = assert_valid(*app.pages(Renderer(extra=[endpoint_families]).render(snapshot)), "MIG demo")
    names = {name for name, _ in sample_values(families)}
    assert {"tpw_mig_info", "tpw_mig_sm_active_ratio", "tpw_endpoint_gpu_memory_used_bytes"} <= names
