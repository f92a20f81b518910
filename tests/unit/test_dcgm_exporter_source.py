"""dcgm-exporter as a profiling source: real dcgm-exporter pages (tests/fixtures/dcgm_exporter/, each citing
where it comes from) served over real HTTP on loopback, read by the NVML source (fake NVML, GPUs without GPM)
in its tick, into the same `Profiling` GPM gives; the bound, the source info and the failure paths."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from engine_server import engine_server
from fake_nvml import Clock, FakeGpu, FakeNvml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ConfigError, load_config
from exporter.daemon import Daemon
from exporter.derive.window import Deriver
from exporter.model import PROFILING_RATIOS, Snapshot
from exporter.node import build_profiler
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer
from exporter.snapshot_json import snapshot_json
from exporter.sources.dcgm_exporter import DcgmExporterProfiler, PageError, read_page
from exporter.sources.nvml import NvmlSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dcgm_exporter"
A30_0 = "GPU-265c9814-6156-355b-e589-ff2064894f16"  # a30_mig_issue317: GPU 0, four 1g.6gb instances
A30_1 = "GPU-2d20791a-b4a6-ba59-97f1-e95b99fe5b49"  # its GPU 1
A100 = "GPU-2c2f45e8-0886-e3cc-02be-a4181a13fc9b"  # a100_mig_dra166
A30_BUSY = "GPU-603a8873-0edd-c157-ce48-2078e8b1a935"  # a30_mig_busy_issue68
L40S = "GPU-585834da-79ca-0599-5140-4ffdb131ae93"  # l40s_dcgm226, GPU 0
OLD = "GPU-45984919-9e67-f2ec-9b84-a96fefa525ff"  # nonmig_gmt189, GPU 0


def page(name: str) -> str:
    return (FIXTURES / f"{name}.prom").read_text()


def test_every_fixture_cites_its_source() -> None:
    for path in sorted(FIXTURES.glob("*.prom")):
        head = path.read_text().splitlines()[:4]
        assert head[0].startswith("# "), path.name
        assert any("https://github.com/" in line for line in head), f"{path.name} does not cite its source"


# -- the page → profiling values (pure) -----------------------------------------------------------------


def test_whole_gpu_rows_are_read_as_they_are() -> None:
    read = read_page(page("l40s_dcgm226"))
    assert read.gpus[L40S.lower()].ratios == {"graphics_active": 0.0}
    assert read.gpus[L40S.lower()].mig_instances == 0
    assert len(read.gpus) == 3  # the rows with pod labels and the one without
    old = read_page(page("nonmig_gmt189")).gpus[OLD.lower()]
    assert old.ratios == {
        "dram_bandwidth_utilization": 0.0,
        "fp64_active": 0.0,
        "fp32_active": 0.0,
        "fp16_active": 0.0,
    }
    assert old.rates == {"pcie_tx_bytes_per_second": 0.0, "pcie_rx_bytes_per_second": 0.0}
    # GPU 1 of that page has device fields only: no profiling, not a row of zeros.
    assert "gpu-08abd178-8a91-05c5-6a52-1ab4a05bcdaf" not in read_page(page("nonmig_gmt189")).gpus


def test_mig_only_gpus_combine_their_instances_weighted_by_compute_slices() -> None:
    a100 = read_page(page("a100_mig_dra166")).gpus[A100.lower()]
    assert a100.mig_instances == 3
    # Three 1g.10gb instances at 0.029399, 0.033893 and 0: equal weights.
    assert a100.ratios["graphics_active"] == pytest.approx((0.029399 + 0.033893 + 0.0) / 3)
    busy = read_page(page("a30_mig_busy_issue68")).gpus[A30_BUSY.lower()]
    assert busy.ratios == {"graphics_active": 0.381124, "tensor_active": 0.022137}
    assert busy.mig_instances == 1
    a30 = read_page(page("a30_mig_issue317")).gpus
    assert a30[A30_0.lower()].mig_instances == 4 and a30[A30_1.lower()].mig_instances == 2
    assert a30[A30_0.lower()].ratios == dict.fromkeys(
        ("graphics_active", "sm_active", "sm_occupancy", "tensor_active"), 0.0
    )


UUID = "GPU-11111111-2222-3333-4444-555555555555"


def row(name: str, value: str, mig: tuple[str, str] | None = None, gpu: str = "0", uuid: str = UUID) -> str:
    labels = f'gpu="{gpu}",UUID="{uuid}",device="nvidia{gpu}",modelName="NVIDIA A100-SXM4-80GB"'
    if mig is not None:
        labels += f',GPU_I_PROFILE="{mig[0]}",GPU_I_ID="{mig[1]}"'
    return f"{name}{{{labels}}} {value}\n"


def test_a_whole_gpu_row_wins_over_its_mig_rows_and_weights_follow_the_profile() -> None:
    # Synthetic rows in dcgm-exporter's format (no real page has both kinds for one GPU with distinct values).
    text = (
        row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", ("3g.40gb", "1"))
        + row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.1", ("1g.10gb", "2"))
        + row("DCGM_FI_PROF_PCIE_RX_BYTES", "1000", ("3g.40gb", "1"))
        + row("DCGM_FI_PROF_PCIE_RX_BYTES", "500", ("1g.10gb", "2"))
    )
    mig = read_page(text).gpus[UUID.lower()]
    assert mig.ratios["graphics_active"] == pytest.approx((3 * 0.9 + 1 * 0.1) / 4)
    assert mig.rates["pcie_rx_bytes_per_second"] == 1500  # rates add up over the instances
    whole = read_page(text + row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.25")).gpus[UUID.lower()]
    assert whole.ratios == {"graphics_active": 0.25} and whole.mig_instances == 0
    # A profile that names no slices (old versions wrote <<<NULL>>>): every instance weighs the same.
    null = row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", ("<<<NULL>>>", "1"))
    assert read_page(null + row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.1", ("1g.10gb", "2"))).gpus[
        UUID.lower()
    ].ratios["graphics_active"] == pytest.approx(0.5)


def test_values_that_are_no_reading_are_left_out_never_clamped() -> None:
    blank = "140737488355328"  # DCGM_FP64_BLANK
    text = (
        row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", blank)
        + row("DCGM_FI_PROF_SM_ACTIVE", "1.7")
        + row("DCGM_FI_PROF_SM_OCCUPANCY", "NaN")
        + row("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "-0.2")
        + row("DCGM_FI_PROF_DRAM_ACTIVE", "0.4")
        + row("DCGM_FI_PROF_PCIE_TX_BYTES", "9223372036854775792")  # DCGM_INT64_BLANK
        + row("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "1.0000000001")  # float noise past 1: 1
    )
    read = read_page(text)
    assert read.gpus[UUID.lower()].ratios == {"dram_bandwidth_utilization": 0.4, "fp16_active": 1.0}
    assert read.gpus[UUID.lower()].rates == {}
    assert read.invalid == 5


def test_a_uuid_on_several_gpus_is_not_used() -> None:
    # Pages shared in issues mask their UUIDs (h100_masked_issue512: every GPU is GPU-********).
    masked = "GPU-********"
    text = row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", uuid=masked) + row(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.1", gpu="1", uuid=masked
    )
    read = read_page(text)
    assert read.gpus == {} and read.ambiguous == {masked.lower()}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (page("v100_issue250"), "no DCGM_FI_PROF_* series"),
        (page("readme"), "no DCGM_FI_PROF_* series"),
        (page("h100_masked_issue512"), "no DCGM_FI_PROF_* series"),
        ("<html><body>404</body></html>", "not a dcgm-exporter page"),
        ('DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-1"} zero\n', "garbled dcgm-exporter page"),
        ('DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-1" 0.5\n', "garbled dcgm-exporter page"),
    ],
)
def test_pages_that_cannot_feed_profiling_say_why(text: str, reason: str) -> None:
    with pytest.raises(PageError, match=reason.replace("*", r"\*")):
        read_page(text)


# -- in the NVML source's tick, over HTTP ---------------------------------------------------------------


def node(
    uuids: list[str], profiler: DcgmExporterProfiler | None, gpm: bool = False
) -> tuple[NvmlSource, Clock]:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=uuid, name="NVIDIA A30", gpm_supported=gpm) for uuid in uuids], clock)
    return NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5, external_profiler=profiler), clock


def profiler(url: str, clock: Clock | None = None, timeout: float = 0.5) -> DcgmExporterProfiler:
    return DcgmExporterProfiler(url, timeout_seconds=timeout, clock=clock or Clock())


def ticks(source: NvmlSource, clock: Clock, count: int) -> list[Snapshot]:
    """`count` daemon ticks one (fake) second apart, derived over a 10 s window."""
    daemon = Daemon(
        [source], Renderer(extra=[derived_families]), 1.0, stages=[Deriver(window=10)], clock=clock
    )

    async def run() -> list[Snapshot]:
        snapshots = []
        for _ in range(count):
            snapshots.append((await daemon.tick()).snapshot)
            clock.advance(1.0)
        await daemon.close()
        return snapshots

    return asyncio.run(run())


def samples(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = Renderer(extra=[derived_families]).render(snapshot).text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gpus_without_gpm_get_the_pages_ratios_in_the_same_tick() -> None:
    with engine_server(page("a30_mig_issue317").encode()) as server:
        clock = Clock()
        source, _ = node([A30_0, A30_1], profiler(server.url, clock))
        source._clock = clock  # one clock for the NVML source, the profiler and the daemon
        first, second = ticks(source, clock, 2)
        assert server.behaviour.requests == 2  # one read per tick
    assert all(gpu.up and gpu.profiling is None for gpu in first.gpus)  # the first read opens the window
    gpu0 = second.gpus[0]
    assert gpu0.profiling is not None
    assert gpu0.profiling.source == "dcgm-exporter" and gpu0.profiling.mig_instances == 4
    assert gpu0.profiling.window_seconds == pytest.approx(1.0)
    assert set(gpu0.profiling.ratios) == {"graphics_active", "sm_active", "sm_occupancy", "tensor_active"}
    exposed = samples(second)
    assert exposed[("tpw_gpu_sm_active_ratio", (("gpu", "0"),))] == 0.0
    assert exposed[
        ("tpw_gpu_profiling_source_info", (("gpu", "1"), ("scope", "mig"), ("source", "dcgm-exporter")))
    ]
    assert exposed[("tpw_source_up", (("source", "dcgm-exporter"),))] == 1.0
    assert ("tpw_gpu_dram_bandwidth_utilization_ratio", (("gpu", "0"),)) not in exposed  # not on the page
    as_json = json.loads(snapshot_json(second))  # /api/v1/snapshot
    assert as_json["gpus"][0]["profiling"]["source"] == "dcgm-exporter"
    assert {"name": "dcgm-exporter", "up": True}.items() <= next(
        s for s in as_json["sources"] if s["name"] == "dcgm-exporter"
    ).items()


def synthetic_page(uuid: str, graphics: float, sm: float, tensor: float, dram: float) -> bytes:
    """A whole-GPU page in dcgm-exporter's format with the four ratios the bound needs (no real page shared in
    an issue has all four: dcgm-exporter's default counters leave DCGM_FI_PROF_SM_ACTIVE out)."""
    fields = {
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": graphics,
        "DCGM_FI_PROF_SM_ACTIVE": sm,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": tensor,
        "DCGM_FI_PROF_DRAM_ACTIVE": dram,
    }
    lines = []
    for name, value in fields.items():
        lines.append(f"# HELP {name} {name}.\n# TYPE {name} gauge\n")
        lines.append(
            f'{name}{{gpu="0",UUID="{uuid}",pci_bus_id="00000000:18:00.0",device="nvidia0",'
            f'modelName="NVIDIA A100-SXM4-80GB",Hostname="node-a",DCGM_FI_DRIVER_VERSION="580.159.04"}} '
            f"{value:.6f}\n"
        )
    return "".join(lines).encode()


@pytest.mark.parametrize(
    ("ratios", "bound"),
    [
        ((0.992, 0.958, 0.930, 0.255), "compute"),
        ((0.994, 0.989, 0.0, 0.895), "memory"),
        ((0.0, 0.0, 0.0, 0.0), "idle"),
    ],
)
def test_the_bound_and_its_evidence_work_on_dcgm_ratios(ratios: tuple[float, ...], bound: str) -> None:
    # The H100 reference's GEMM and device copy (docs/h100-reference.md), as DCGM would report them.
    with engine_server(synthetic_page(A30_0, *ratios)) as server:
        clock = Clock()
        source, _ = node([A30_0], profiler(server.url, clock))
        source._clock = clock
        last = ticks(source, clock, 4)[-1]
    exposed = samples(last)
    states = {
        dict(labels)["bound"]: value for (name, labels), value in exposed.items() if name == "tpw_gpu_bound"
    }
    assert states[bound] == 1.0 and sum(states.values()) == 1.0
    assert exposed[("tpw_gpu_bound_evidence_ratio", (("gpu", "0"), ("signal", "dram")))] == pytest.approx(
        ratios[3]
    )


def test_no_bound_without_sm_activity_and_one_line_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with engine_server(page("a30_mig_issue317").encode()) as server:
        clock = Clock()
        source, _ = node([A30_0], profiler(server.url, clock))
        source._clock = clock
        with caplog.at_level(logging.WARNING):
            last = ticks(source, clock, 3)[-1]
    assert last.derived is not None and last.derived.gpus[0].bound is None
    lines = [r.getMessage() for r in caplog.records if "DCGM_FI_PROF_DRAM_ACTIVE" in r.getMessage()]
    assert len(lines) == 1 and A30_0 in lines[0]


def test_gpm_gpus_keep_gpm_and_the_page_is_not_read_when_every_gpu_has_it() -> None:
    with engine_server(page("a30_mig_issue317").encode()) as server:
        clock = Clock()
        source, _ = node([A30_0, A30_1], profiler(server.url, clock), gpm=True)
        source._clock = clock
        snapshots = ticks(source, clock, 2)
        assert server.behaviour.requests == 0
    assert all(status.name != "dcgm-exporter" for status in snapshots[-1].sources)
    assert all(gpu.profiling is not None and gpu.profiling.source == "gpm" for gpu in snapshots[-1].gpus)


@pytest.mark.parametrize(
    "serve",
    [
        {"status": 503, "body": b"unavailable"},
        {"body": b"\x00\xff garbage \x1b[0m" * 100},
        {"body": b"DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu=0 UUID=} \n" * 3},
        {"delay": 1.5, "body": page("l40s_dcgm226").encode()},
        None,  # nothing listens
    ],
    ids=["http-503", "binary", "garbled", "slow", "unreachable"],
)
def test_a_broken_page_leaves_the_gpus_up_without_profiling_and_says_why_once(
    serve: dict[str, object] | None, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with engine_server(**(serve or {})) as server:
        url = server.url
        if serve is None:
            server.close()
        source, _ = node([L40S], profiler(url, clock, timeout=0.3))
        source._clock = clock
        with caplog.at_level(logging.WARNING):
            snapshots = ticks(source, clock, 3)
    for snapshot in snapshots:
        assert snapshot.gpus[0].up and snapshot.gpus[0].profiling is None
        status = next(s for s in snapshot.sources if s.name == "dcgm-exporter")
        assert not status.up and status.error and "\n" not in status.error
        assert next(s for s in snapshot.sources if s.name == "nvml").up
    down = [r for r in caplog.records if "source dcgm-exporter is down" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in caplog.records]
    assert samples(snapshots[-1])[("tpw_source_up", (("source", "dcgm-exporter"),))] == 0.0


def test_a_page_over_the_cap_is_refused() -> None:
    body = page("l40s_dcgm226").encode() * 50
    with engine_server(body) as server:
        small = DcgmExporterProfiler(server.url, timeout_seconds=1.0, max_body_bytes=4096)
        result = asyncio.run(small.read([L40S]))
        asyncio.run(small.close())
    assert not result.status.up and "cap" in (result.status.error or "")


def test_it_recovers_when_the_page_comes_back() -> None:
    body = {"page": b"not yet"}
    with engine_server(lambda: body["page"]) as server:
        clock = Clock()
        source, _ = node([L40S], profiler(server.url, clock))
        source._clock = clock
        daemon = Daemon([source], Renderer(), 1.0, clock=clock)

        async def run() -> list[Snapshot]:
            out = []
            for tick in range(4):
                if tick == 1:
                    body["page"] = page("l40s_dcgm226").encode()
                out.append((await daemon.tick()).snapshot)
                clock.advance(1.0)
            await daemon.close()
            return out

        snapshots = asyncio.run(run())
    assert [s.gpus[0].profiling is not None for s in snapshots] == [False, False, True, True]
    assert next(s for s in snapshots[-1].sources if s.name == "dcgm-exporter").up


# -- configuration --------------------------------------------------------------------------------------


def test_the_source_setting_decides_who_reads_the_page() -> None:
    url = "http://localhost:9400/metrics"
    assert build_profiler(load_config(environ={})) is None  # default: GPM where supported, nothing else
    assert build_profiler(load_config(environ={"TPW_PROFILING__URL": url})) is not None  # auto + url
    only = load_config(environ={"TPW_PROFILING__SOURCE": "dcgm-exporter", "TPW_PROFILING__URL": url})
    assert build_profiler(only) is not None
    assert build_profiler(load_config(environ={"TPW_PROFILING__SOURCE": "off"})) is None
    capped = load_config(environ={"TPW_PROFILING__URL": url, "TPW_PROFILING__TIMEOUT_SECONDS": "5"})
    assert capped.profiling.effective_timeout(capped.tick_budget_seconds) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TPW_PROFILING__SOURCE": "dcgm-exporter"}, "profiling: source dcgm-exporter needs `url`"),
        (
            {"TPW_PROFILING__SOURCE": "gpm", "TPW_PROFILING__URL": "http://localhost:9400/metrics"},
            "profiling: `url` is only read with source auto or dcgm-exporter, not gpm",
        ),
        (
            {"TPW_PROFILING__SOURCE": "dcgm"},
            "profiling.source: Input should be 'auto', 'gpm', 'dcgm-exporter'",
        ),
        ({"TPW_PROFILING__URL": "localhost:9400"}, "profiling.url: expected an http:// or https:// URL"),
    ],
)
def test_bad_profiling_settings_are_one_line_naming_the_field(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ=environ)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_profiling_keys_are_the_models() -> None:
    from exporter.sources.dcgm_exporter import DCGM_RATIOS

    assert set(DCGM_RATIOS.values()) == set(PROFILING_RATIOS)
