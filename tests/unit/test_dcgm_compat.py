"""`compat: [dcgm]`: dcgm-exporter's names, units and labels for the fields tpw-exporter has, none made up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import build_parser, flag_overrides
from exporter.config import ConfigError, load_config
from exporter.model import MIB, GpuInfo, GpuSample, MigDevice, NodeInfo, Profiling, Snapshot
from exporter.render.dcgm_compat import FIELDS, DcgmCompat, _health, snapshot_pods
from exporter.render.exposition import Renderer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dcgm_exporter"
H100 = GpuInfo(
    index=1,
    uuid="GPU-58e8f5ea-13cc-013a-d88f-2bcf5ae8bc77",
    name="NVIDIA H100 80GB HBM3",
    pci_bus_id="00000000:40:00.0",
    memory_total_bytes=81559 * MIB,
    minor_number=1,
)
GPU = GpuSample(
    info=H100,
    power_watts=158.25,
    energy_joules=129931554.972,
    utilization_ratio=0.14,
    memory_utilization_ratio=0.03,
    memory_used_bytes=51958 * MIB + 123,
    sm_clock_hertz=1980e6,
    memory_clock_hertz=2619e6,
    temperature_celsius=37.0,
    profiling=Profiling(
        window_seconds=1.0,
        ratios={"graphics_active": 0.93, "tensor_active": 0.41, "dram_bandwidth_utilization": 0.27},
        rates={"pcie_rx_bytes_per_second": 2.5e9},
    ),
)
NODE = NodeInfo(driver_version="535.129.03")


def snapshot(*gpus: GpuSample, node: NodeInfo = NODE) -> Snapshot:
    return Snapshot(tick=1, wall_time=0.0, monotonic_time=0.0, duration_seconds=0.0, gpus=gpus, node=node)


def page(compat: DcgmCompat, *gpus: GpuSample) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = Renderer(extra=[compat.families]).render(snapshot(*gpus)).text.decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("DCGM_")
    }


def values(compat: DcgmCompat, *gpus: GpuSample) -> dict[str, float]:
    return {name: samples[0][1] for name, samples in page(compat, *gpus).items()}


def test_units_are_dcgm_exporters() -> None:
    got = values(DcgmCompat(hostname="gsrh100-074"), GPU)
    assert got == {
        "DCGM_FI_DEV_SM_CLOCK": 1980.0,  # MHz
        "DCGM_FI_DEV_MEM_CLOCK": 2619.0,
        "DCGM_FI_DEV_GPU_TEMP": 37.0,  # °C
        "DCGM_FI_DEV_POWER_USAGE": 158.25,  # W
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 129931554972.0,  # mJ, whole as NVML counts them
        "DCGM_FI_DEV_GPU_UTIL": pytest.approx(14.0),  # %
        "DCGM_FI_DEV_MEM_COPY_UTIL": pytest.approx(3.0),
        "DCGM_FI_DEV_FB_FREE": 81559.0 - 51958 - 1,  # MiB, whole (NVML's free = total − used)
        "DCGM_FI_DEV_FB_USED": 51958.0,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.93,  # ratios stay 0..1
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.41,
        "DCGM_FI_PROF_DRAM_ACTIVE": 0.27,
        "DCGM_FI_PROF_PCIE_RX_BYTES": 2.5e9,  # bytes/s
    }


def test_fields_we_do_not_have_are_absent_never_zero() -> None:
    bare = GpuSample(
        info=GpuInfo(index=0, uuid="GPU-0", name="NVIDIA A100-SXM4-80GB"), temperature_celsius=41.0
    )
    assert values(DcgmCompat(hostname="n"), bare) == {"DCGM_FI_DEV_GPU_TEMP": 41.0}
    down = GpuSample(info=H100, up=False, error="GPU unavailable")
    assert values(DcgmCompat(hostname="n"), down) == {}


def test_labels_are_those_of_a_real_dcgm_exporter_row() -> None:
    # h100_masked_issue512.prom, GPU 1: a whole H100 under a pod, as dcgm-exporter labels it.
    real = next(
        sample.labels
        for family in text_string_to_metric_families((FIXTURES / "h100_masked_issue512.prom").read_text())
        for sample in family.samples
        if sample.labels["gpu"] == "1"
    )
    ours = page(DcgmCompat(hostname="gsrh100-074"), GPU)["DCGM_FI_DEV_GPU_TEMP"][0][0]
    assert set(ours) == set(real) - {"container", "namespace", "pod"}  # no pod attribution here
    assert ours == {
        "gpu": "1",
        "UUID": H100.uuid,
        "pci_bus_id": "00000000:40:00.0",
        "device": "nvidia1",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "gsrh100-074",
        "DCGM_FI_DRIVER_VERSION": "535.129.03",
    }
    # The pod hook (pod attribution plugs in here) adds dcgm-exporter's pod labels, by GPU UUID.
    pods = {H100.uuid: {"namespace": "ml", "pod": "vllm-0", "container": "vllm"}}
    with_pod = page(DcgmCompat(hostname="gsrh100-074", pods=lambda _: pods), GPU)["DCGM_FI_DEV_GPU_TEMP"][0][
        0
    ]
    assert set(with_pod) == set(real)
    assert (with_pod["namespace"], with_pod["pod"], with_pod["container"]) == ("ml", "vllm-0", "vllm")


def test_pod_labels_come_from_pod_attribution_for_a_gpu_one_container_holds() -> None:
    def held(uuid: str, pod: str, container: str = "main") -> SimpleNamespace:
        return SimpleNamespace(uuid=uuid, namespace="ml", pod=pod, container=container)

    pods = snapshot_pods(
        SimpleNamespace(  # type: ignore[arg-type]
            gpu_pods=(
                held("GPU-a", "vllm-0"),
                held("GPU-b", "train-0"),  # a GPU two containers share (time-slicing): no pod labels
                held("GPU-b", "train-1"),
                held("MIG-c/1/0", "small-0"),  # a MIG device: labels its GPU instance's rows
            )
        )
    )
    assert pods["GPU-a"] == {"namespace": "ml", "pod": "vllm-0", "container": "main"}
    assert "GPU-b" not in pods and pods["MIG-c/1/0"]["pod"] == "small-0"
    assert snapshot_pods(snapshot(GPU)) == {}  # pod attribution off


def mig_gpu() -> GpuSample:
    """GPU 0 of h100_mig_pods_issue512.prom: MIG on, GPU instance 7 with two compute instances, 8 with one."""

    def device(gi: int, ci: int, uuid: str, used_mib: int, busy: float) -> MigDevice:
        return MigDevice(
            gpu_instance=gi,
            compute_instance=ci,
            uuid=uuid,
            profile="1g.10gb",
            memory_total_bytes=9984 * MIB,
            memory_used_bytes=used_mib * MIB + 5,
            profiling=Profiling(window_seconds=1.0, ratios={"graphics_active": busy, "sm_active": busy / 2}),
        )

    info = GpuInfo(
        index=0,
        uuid="GPU-58e8f5ea-13cc-013a-d88f-2bcf5ae8bc77",
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id="00000000:1A:00.0",
        memory_total_bytes=81559 * MIB,
        minor_number=0,
    )
    return GpuSample(
        info=info,
        power_watts=120.0,
        memory_used_bytes=3000 * MIB,
        mig_enabled=True,
        mig=(
            device(7, 0, "MIG-aaaa", 1200, 0.6),
            device(7, 1, "MIG-bbbb", 1200, 0.6),  # a second compute instance of GPU instance 7
            device(8, 0, "MIG-cccc", 10, 0.0),
        ),
    )


def test_mig_instances_have_dcgm_exporters_rows_and_the_gpus_own_fields_stay_one_row() -> None:
    real = [
        sample.labels
        for family in text_string_to_metric_families((FIXTURES / "h100_mig_pods_issue512.prom").read_text())
        for sample in family.samples
    ]
    pods = {"MIG-aaaa": {"namespace": "ml", "pod": "embed-0", "container": "kserve-container"}}
    got = page(DcgmCompat(hostname="gsrh100-074", pods=lambda _: pods), mig_gpu())
    active = {
        labels.get("GPU_I_ID"): (labels, value) for labels, value in got["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    }
    assert sorted(active, key=str) == ["7", "8"]  # one row per GPU instance, not per compute instance
    held, free = active["7"][0], active["8"][0]
    assert set(held) == set(real[0])  # dcgm-exporter's labels, pod labels included
    assert set(free) == set(real[1]) and free["GPU_I_PROFILE"] == "1g.10gb"
    assert (held["pod"], held["UUID"], held["gpu"]) == ("embed-0", mig_gpu().info.uuid, "0")
    assert active["7"][1] == 0.6 and active["8"][1] == 0.0
    fb = {labels.get("GPU_I_ID"): value for labels, value in got["DCGM_FI_DEV_FB_USED"]}
    assert fb == {None: 3000.0, "7": 1200.0, "8": 10.0}  # the whole GPU's row and each instance's, in MiB
    assert {labels.get("GPU_I_ID"): value for labels, value in got["DCGM_FI_DEV_FB_FREE"]}[
        "8"
    ] == 9973.0  # whole MiB free, rounded down
    # the GPU's own fields: one row, without instance labels (dcgm-exporter repeats them per instance)
    assert [("GPU_I_ID" in labels, value) for labels, value in got["DCGM_FI_DEV_POWER_USAGE"]] == [
        (False, 120.0)
    ]


@pytest.mark.parametrize(
    ("setting", "label"), [("Hostname", "Hostname"), ("hostname", "hostname"), ("none", None)]
)
def test_the_host_label_is_configurable(setting: str, label: str | None) -> None:
    labels = page(DcgmCompat(hostname_label=setting, hostname="node-a"), GPU)["DCGM_FI_DEV_GPU_TEMP"][0][0]
    host_labels = {key for key in labels if key.lower() == "hostname"}
    assert host_labels == ({label} if label else set())


def test_the_host_name_defaults_to_node_name_as_dcgm_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    assert DcgmCompat().hostname == "worker-7"
    monkeypatch.delenv("NODE_NAME")
    assert DcgmCompat().hostname  # the machine's host name
    assert (
        DcgmCompat.from_config(load_config(environ={"TPW_DCGM_COMPAT__HOSTNAME": "n1"}).dcgm_compat).hostname
        == "n1"
    )


def test_health_fields_map_when_the_gpu_reports_them() -> None:
    gpu = SimpleNamespace(health=SimpleNamespace(pcie_replays=3, row_remap_failed=False))
    assert _health("pcie_replays")(gpu) == 3.0  # type: ignore[arg-type]
    assert _health("row_remap_failed")(gpu) == 0.0  # type: ignore[arg-type]
    assert _health("remapped_rows_correctable")(gpu) is None  # type: ignore[arg-type]
    assert _health("pcie_replays")(SimpleNamespace(health=None)) is None  # type: ignore[arg-type]


def test_every_field_has_dcgm_exporters_name_and_help() -> None:
    for field in FIELDS:
        assert field.name.startswith(("DCGM_FI_DEV_", "DCGM_FI_PROF_")) and field.help
        assert field.type in ("gauge", "unknown")
    # The names of dcgm-exporter's default counters CSV that compat serves (etc/default-counters.csv).
    default_counters = {
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "DCGM_FI_PROF_PCIE_RX_BYTES",
    }
    assert default_counters <= {field.name for field in FIELDS}


def test_compat_is_a_flag_a_variable_and_a_setting() -> None:
    args = build_parser().parse_args(["demo", "--compat", "dcgm"])
    assert load_config(environ={}, overrides=flag_overrides(args)).compat == ["dcgm"]
    assert load_config(environ={"TPW_COMPAT": "dcgm"}).compat == ["dcgm"]
    assert load_config(environ={}).compat == []
    with pytest.raises(ConfigError, match=r"^compat\.0: Input should be 'dcgm' \(got 'prometheus'\)$"):
        load_config(environ={"TPW_COMPAT": "prometheus"})


def test_off_it_is_not_even_imported() -> None:
    program = """
import sys
from exporter.config import load_config
from exporter.node import Node, build_daemon
build_daemon(Node([], []), load_config(environ={}))
assert "exporter.render.dcgm_compat" not in sys.modules
build_daemon(Node([], []), load_config(environ={"TPW_COMPAT": "dcgm"}))
assert "exporter.render.dcgm_compat" in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
