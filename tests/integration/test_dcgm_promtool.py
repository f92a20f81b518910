"""The pages with dcgm-exporter in them through the parsers that read them (tests/exposition_lint.py):
`compat: [dcgm]` on the demo node and on the NVML path whose GPUs take their profiling from a dcgm-exporter
page (tests/fixtures/dcgm_exporter/), read and unreadable.

promtool's lint has two complaints about dcgm-exporter's names, both expected: the label `modelName` is
camelCase, and the name DCGM_FI_DEV_PCIE_REPLAY_COUNTER contains a type ("counter"). They are dcgm-exporter's
names, and renaming them would break the queries compat mode exists for; so each page must draw exactly
those complaints (the first once per DCGM family) and nothing else, and the same page with the two renamed
must pass promtool and the strict OpenMetrics parser, sample for sample.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from engine_server import engine_server
from exposition_lint import App, assert_valid
from fake_nvml import Clock, FakeGpu, FakeNvml
from helpers import promtool

from exporter.daemon import Daemon
from exporter.derive.window import Deriver
from exporter.render.dcgm_compat import DcgmCompat
from exporter.render.derived import derived_families
from exporter.render.exposition import Exposition, Renderer
from exporter.sources.base import Source
from exporter.sources.dcgm_exporter import DcgmExporterProfiler
from exporter.sources.nvml import NvmlSource
from exporter.sources.simulated import SimulatedSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dcgm_exporter"
A30 = ["GPU-265c9814-6156-355b-e589-ff2064894f16", "GPU-2d20791a-b4a6-ba59-97f1-e95b99fe5b49"]
CAMEL = re.compile(r"^(DCGM_FI_\w+) label names should be written in 'snake_case' not 'camelCase'$")
REPLAYS = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'"


def last_exposition(source: Source, clock: Clock, ticks: int = 3) -> Exposition:
    compat = DcgmCompat(hostname="node-a")
    daemon = Daemon(
        [source],
        Renderer(extra=[derived_families, compat.families]),
        1.0,
        stages=[Deriver(window=4)],
        clock=clock,
    )

    async def run() -> Exposition:
        exposition = None
        for _ in range(ticks):
            exposition = await daemon.tick()
            clock.advance(1.0)
        await daemon.close()
        assert exposition is not None
        return exposition

    return asyncio.run(run())


def nvml_with_dcgm(url: str, clock: Clock) -> NvmlSource:
    fake = FakeNvml([FakeGpu(uuid=uuid, name="NVIDIA A30", gpm_supported=False) for uuid in A30], clock)
    profiler = DcgmExporterProfiler(url, timeout_seconds=0.3, clock=clock)
    return NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5, external_profiler=profiler)


def check(exposition: Exposition, where: str, expect: set[str]) -> None:
    text, openmetrics = App().pages(exposition)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE DCGM_")}
    assert expect <= families, f"{where}: missing {expect - families}"
    result = promtool("check", "metrics", input_text=text)
    problems = [line for line in (result.stdout + result.stderr).strip().splitlines() if line != REPLAYS]
    unexpected = [line for line in problems if not CAMEL.match(line)]
    assert not unexpected, f"{where}: promtool: {unexpected}"
    assert {CAMEL.match(line).group(1) for line in problems} == families, where  # type: ignore[union-attr]
    renamed = [
        page.replace("modelName=", "model_name=").replace("_PCIE_REPLAY_COUNTER", "_PCIE_REPLAYS")
        for page in (text, openmetrics)
    ]
    assert_valid(renamed[0], renamed[1], f"{where} (modelName renamed)")


@pytest.mark.parametrize("mig", [False, True], ids=["whole-gpus", "mig"])
def test_demo_node_in_compat_mode(mig: bool) -> None:
    clock = Clock()
    exposition = last_exposition(SimulatedSource(2, "mixed", 1.0, clock=clock, mig=mig), clock)
    check(
        exposition,
        "demo --mig" if mig else "demo",
        {
            "DCGM_FI_DEV_SM_CLOCK",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "DCGM_FI_PROF_SM_ACTIVE",
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        },
    )
    text = App().pages(exposition)[0]
    instances = set(re.findall(r'^DCGM_FI_PROF_SM_ACTIVE\{[^}]*GPU_I_ID="(\d+)"', text, re.MULTILINE))
    assert bool(instances) is mig  # MIG on: a row per GPU instance, labelled as dcgm-exporter does


@pytest.mark.parametrize("readable", [True, False], ids=["page-read", "page-unreachable"])
def test_nvml_with_profiling_from_dcgm_exporter(readable: bool) -> None:
    clock = Clock()
    with engine_server((FIXTURES / "a30_mig_issue317.prom").read_bytes()) as server:
        url = server.url if readable else server.url.replace("/metrics", "/missing")
        if not readable:
            server.behaviour.status = 404
        exposition = last_exposition(nvml_with_dcgm(url, clock), clock)
    text = exposition.text.decode()
    assert ('tpw_source_up{source="dcgm-exporter"} 1.0' in text) is readable
    assert ('source="dcgm-exporter"} 1.0' in text.split("tpw_gpu_profiling_source_info", 1)[-1]) is readable
    expect = {"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_POWER_USAGE"}
    if readable:  # the page's ratios, back under their own names
        expect |= {"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_OCCUPANCY"}
    check(exposition, f"nvml, dcgm-exporter page {'read' if readable else 'unreachable'}", expect)
