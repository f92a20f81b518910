"""Attribution on MIG devices (configured MIG UUIDs, auto through MIG processes, energy split by the SMs
held) and the per-endpoint GPU usage of the endpoints' own processes only."""

from __future__ import annotations

import pytest
from test_attribution import attribute, config

from exporter.model import GpuInfo, GpuSample, MigDevice

GIB = 1024**3


def mig_gpu(index: int = 0) -> GpuSample:
    """A GPU with MIG on: 3g.40gb (60 SMs, pid 100), 2g.20gb (32 SMs, pid 200), 1g.10gb (16 SMs, idle)."""
    devices = (
        MigDevice(1, 0, f"MIG-{index}-a", "3g.40gb", multiprocessors=60, slices=3, process_ids=(100,)),
        MigDevice(5, 0, f"MIG-{index}-b", "2g.20gb", multiprocessors=32, slices=2, process_ids=(200,)),
        MigDevice(13, 0, f"MIG-{index}-c", "1g.10gb", multiprocessors=16, slices=1),
    )
    return GpuSample(
        info=GpuInfo(index=index, uuid=f"GPU-{index}", name="H100"),
        process_ids=(100, 200),
        process_memory=((100, 30 * GIB), (200, 5 * GIB)),
        mig_enabled=True,
        mig=devices,
    )


def test_configured_mig_uuids_attribute_the_parent_gpu_and_split_its_energy_by_sms() -> None:
    plain = GpuSample(info=GpuInfo(index=1, uuid="GPU-1", name="H100"))
    result = attribute(
        [
            config("big", gpus=["MIG-0-a"]),
            config("small", gpus=["MIG-0-b", "GPU-1"]),
            config("x", gpus=["MIG-9"]),
        ],
        (mig_gpu(), plain),
    )
    assert result["big"].gpus == (0,) and result["big"].mig_devices == ("MIG-0-a",)
    assert result["small"].gpus == (0, 1) and result["small"].mig_devices == ("MIG-0-b",)
    assert result["big"].gpu_shares == (pytest.approx(60 / 92),)
    assert result["small"].gpu_shares == (pytest.approx(32 / 92), 1.0)
    assert result["x"].gpus == () and "not on this node: MIG-9" in result["x"].attribution_note


def test_auto_finds_the_mig_devices_of_its_processes() -> None:
    trees = {8000: {100}, 9000: {200}}
    result = attribute(
        [config("big"), config("small", url="http://127.0.0.1:9000/")],
        (mig_gpu(),),
        find_pids=lambda port, siblings: trees.get(port),
    )
    assert result["big"].attribution == "auto" and result["big"].mig_devices == ("MIG-0-a",)
    assert result["small"].mig_devices == ("MIG-0-b",)
    assert result["big"].gpu_shares == (pytest.approx(60 / 92),)


def test_a_whole_gpu_tenant_beside_a_mig_tenant_falls_back_to_the_process_rule() -> None:
    # "all" holds no MIG device on GPU 0: the SM split cannot apply, the GPU is split as before (evenly)
    result = attribute([config("big", gpus=["MIG-0-a"]), config("every", gpus="all")], (mig_gpu(),))
    assert result["big"].gpu_shares == result["every"].gpu_shares == (0.5,)


def test_gpu_usage_is_the_endpoints_own_processes_only() -> None:
    shared = GpuSample(
        info=GpuInfo(index=0, uuid="GPU-0", name="H100"),
        process_ids=(100, 101, 999),
        process_memory=((100, 10 * GIB), (101, 2 * GIB), (999, 50 * GIB)),  # 999: a stranger
        process_sm_ratios=((100, 0.5), (101, 0.25), (999, 0.2)),
    )
    idle = GpuSample(info=GpuInfo(index=1, uuid="GPU-1", name="H100"), process_ids=(102,))
    result = attribute(
        [config("a"), config("fixed", url="http://127.0.0.1:9000/", gpus=[0])],
        (shared, idle),
        find_pids=lambda port, siblings: {100, 101, 102} if port == 8000 else None,
    )
    usage = {u.gpu: u for u in result["a"].gpu_usage}
    assert usage[0].memory_used_bytes == 12 * GIB and usage[0].sm_utilization_ratio == pytest.approx(0.75)
    # GPU 1: its process holds no reported memory and NVML had no per-process sample: both absent
    assert usage[1].memory_used_bytes is None and usage[1].sm_utilization_ratio is None
    assert result["fixed"].gpu_usage == ()  # configured: its processes are unknown, nothing is guessed


def test_known_processes_give_usage_without_a_lookup() -> None:
    result = attribute([config("demo", gpus="all")], (mig_gpu(),), known_processes={"demo": {100}})
    assert [(u.gpu, u.memory_used_bytes, u.sm_utilization_ratio) for u in result["demo"].gpu_usage] == [
        (0, 30 * GIB, None)  # MIG mode: no per-process SM samples
    ]
    assert result["demo"].mig_devices == ("MIG-0-a",)
