"""MIG and per-endpoint GPU usage on the page: the simulated node with `mig`, rendered, and `--mig`."""

from __future__ import annotations

import asyncio

from fake_nvml import Clock
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from test_render import samples

from exporter.attribution import Attributor
from exporter.cli import build_parser, flag_overrides
from exporter.config import EndpointConfig, load_config
from exporter.model import EndpointSample, Snapshot
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer
from exporter.sources.simulated import SimulatedSource


def page(mig: bool) -> tuple[dict, str]:
    clock = Clock()
    source = SimulatedSource(gpus=2, scenario="healthy", clock=clock, mig=mig)
    asyncio.run(source.collect())
    clock.advance(1.0)
    gpus = asyncio.run(source.collect()).gpus
    demo = EndpointConfig(name="demo", url="http://127.0.0.1:1/metrics", gpus="all")
    attributor = Attributor([demo], known_processes={"demo": set(source.engine_process_ids())})
    endpoint = EndpointSample(name="demo", engine="vllm", url=demo.url)
    snapshot = attributor(Snapshot(1, 0.0, 0.0, 0.0, gpus=gpus, endpoints=(endpoint,)))
    exposition = Renderer(extra=[endpoint_families]).render(snapshot)
    return samples(exposition.text.decode()), exposition.openmetrics.decode()


def test_simulated_mig_devices_are_labelled_and_bounded() -> None:
    values, openmetrics = page(mig=True)
    info = [dict(labels) for name, labels in values if name == "tpw_mig_info"]
    assert len(info) == 8  # 4 MIG devices on each of 2 GPUs
    first = next(i for i in info if i["gpu"] == "0" and i["gpu_instance"] == "1")
    assert first == {
        "gpu": "0",
        "gpu_instance": "1",
        "compute_instance": "0",
        "mig_profile": "3g.40gb",
        "uuid": "MIG-simulated-0000-01-0",
        "simulated": "true",
    }
    key = (("compute_instance", "0"), ("gpu", "0"), ("gpu_instance", "1"), ("mig_profile", "3g.40gb"))
    assert values[("tpw_mig_multiprocessors", key)] == 60
    assert 0 < values[("tpw_mig_memory_used_bytes", key)] <= values[("tpw_mig_memory_total_bytes", key)]
    assert 0 < values[("tpw_mig_sm_active_ratio", key)] <= 1
    idle = (("compute_instance", "0"), ("gpu", "0"), ("gpu_instance", "13"), ("mig_profile", "1g.10gb"))
    assert values[("tpw_mig_sm_active_ratio", idle)] == 0
    assert values[("tpw_gpu_mig_mode", (("gpu", "0"),))] == 1
    # energy stays per physical GPU; the engine's memory on each GPU is its MIG device's
    assert ("tpw_gpu_energy_joules_total", (("gpu", "0"),)) in values
    endpoint = (("endpoint", "demo"), ("gpu", "0"))
    assert (
        values[("tpw_endpoint_gpu_memory_used_bytes", endpoint)] == values[("tpw_mig_memory_used_bytes", key)]
    )
    assert ("tpw_endpoint_gpu_sm_utilization_ratio", endpoint) not in values  # none in MIG mode, as NVML
    list(parse_openmetrics(openmetrics))  # strict OpenMetrics parser accepts the page


def test_without_mig_only_the_mode_and_per_process_usage() -> None:
    values, _ = page(mig=False)
    assert not any(name.startswith("tpw_mig_") for name, _ in values)
    assert values[("tpw_gpu_mig_mode", (("gpu", "1"),))] == 0
    endpoint = (("endpoint", "demo"), ("gpu", "1"))
    used = values[("tpw_gpu_memory_used_bytes", (("gpu", "1"),))]
    assert values[("tpw_endpoint_gpu_memory_used_bytes", endpoint)] == used - 512 * 1024**2
    assert (
        values[("tpw_endpoint_gpu_sm_utilization_ratio", endpoint)]
        == values[("tpw_gpu_sm_active_ratio", (("gpu", "1"),))]
    )


def test_mig_flag_and_setting() -> None:
    def config(*argv: str, environ: dict[str, str] | None = None) -> bool:
        overrides = flag_overrides(build_parser().parse_args(["demo", *argv]))
        return load_config(environ=environ or {}, overrides=overrides).simulation.mig

    assert config("--mig") is True
    assert config() is False
    assert config(environ={"TPW_SIMULATION__MIG": "true"}) is True
