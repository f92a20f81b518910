"""MIG through the NVML source, against the NVML fake (our H100s have no MIG): enumeration, labels, memory,
processes, GPM per GPU instance on the GPM thread, layout changes on the health cadence, failures."""

from __future__ import annotations

import asyncio

import pynvml
import pytest
from fake_nvml import Clock, FakeGpu, FakeMig, FakeNvml

from exporter.model import GpuSample
from exporter.sources.nvml import NvmlSource, mig_profile

SM_UTIL = pynvml.NVML_GPM_METRIC_SM_UTIL
GIB = 1024**3


def layout() -> list[FakeMig]:
    """An H100 cut 3g.40gb + 2g.20gb + 1g.10gb, the 2g in slot 3 (slots 1 and 2 empty)."""
    return [
        FakeMig(0, 1, 0, "MIG-aaaa", "3g.40gb", 3, 60, 40_320, 30 * GIB, {101: 28 * GIB}),
        FakeMig(3, 5, 0, "MIG-bbbb", "2g.20gb", 2, 32, 20_096, 5 * GIB, {202: 4 * GIB, 203: None}),
        FakeMig(4, 13, 0, "MIG-cccc", "1g.10gb", 1, 16, 9_984, 0),
    ]


def make(gpus: int = 1, mig: bool = True, **kwargs: object) -> tuple[FakeNvml, NvmlSource, Clock]:
    clock = Clock()
    fakes = [FakeGpu(uuid=f"GPU-{i}") for i in range(gpus)]
    for gpu in fakes if mig else ():
        gpu.mig_mode, gpu.mig_devices = 1, layout()
    fake = FakeNvml(fakes, clock, **kwargs)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5, health_interval_seconds=30)
    return fake, source, clock


def collect(source: NvmlSource) -> tuple[GpuSample, ...]:
    return asyncio.run(source.collect()).gpus


def test_mig_off_reads_only_the_mode() -> None:
    fake, source, _ = make(mig=False)
    gpu = collect(source)[0]
    assert gpu.up and gpu.mig_enabled is False and gpu.mig == ()
    assert fake.calls["nvmlDeviceGetMigMode"] == 1
    assert "nvmlDeviceGetMigDeviceHandleByIndex" not in fake.calls
    assert "nvmlGpmMigSampleGet" not in fake.calls


def test_mig_devices_with_labels_memory_and_processes() -> None:
    fake, source, _ = make()
    gpu = collect(source)[0]
    assert gpu.mig_enabled is True
    assert [(d.gpu_instance, d.compute_instance, d.uuid, d.profile) for d in gpu.mig] == [
        (1, 0, "MIG-aaaa", "3g.40gb"),
        (5, 0, "MIG-bbbb", "2g.20gb"),
        (13, 0, "MIG-cccc", "1g.10gb"),
    ]
    first, second, third = gpu.mig
    assert (first.multiprocessors, first.slices) == (60, 3)
    assert first.memory_used_bytes == 30 * GIB and first.memory_total_bytes == 40_320 * 1024**2
    assert third.memory_used_bytes == 0
    assert first.process_ids == (101,) and second.process_ids == (202, 203) and third.process_ids == ()
    # the GPU lists every instance's processes; their memory where NVML reports it (203: not)
    assert gpu.process_ids == (101, 202, 203)
    assert gpu.process_memory == ((101, 28 * GIB), (202, 4 * GIB))
    # 7 slots asked, the empty ones answered NOT_FOUND and are no error
    assert fake.calls["nvmlDeviceGetMigDeviceHandleByIndex"] == 7


def test_gpm_per_gpu_instance_on_the_gpm_thread() -> None:
    fake, source, clock = make(2, gpm_call_seconds=0.002)
    for index in (0, 1):
        fake.set_mig_activity(index, 1, SM_UTIL, 40.0)
        fake.set_mig_activity(index, 5, SM_UTIL, 80.0)
    assert all(d.profiling is None for d in collect(source)[0].mig)  # the first sample opens the window
    clock.advance(1.0)
    gpus = collect(source)
    for gpu in gpus:
        by_instance = {d.gpu_instance: d.profiling for d in gpu.mig}
        assert by_instance[1] is not None and by_instance[1].ratios["sm_active"] == pytest.approx(0.4)
        assert by_instance[5] is not None and by_instance[5].ratios["sm_active"] == pytest.approx(0.8)
        assert by_instance[13] is not None and by_instance[13].ratios["sm_active"] == 0.0
        assert by_instance[1].window_seconds == pytest.approx(1.0)
    assert fake.gpm_overlaps == 0  # every GPM call, whole-GPU and MIG, serialised on one thread


def test_layout_change_is_seen_within_one_health_interval() -> None:
    fake, source, clock = make()
    fake.set_mig_activity(0, 5, SM_UTIL, 50.0)
    collect(source)
    clock.advance(1.0)
    assert [d.gpu_instance for d in collect(source)[0].mig] == [1, 5, 13]
    fake.gpus[0].mig_devices = [d for d in fake.gpus[0].mig_devices if d.gpu_instance != 5]
    fake.gpus[0].mig_devices.append(FakeMig(1, 7, 0, "MIG-dddd", "1g.10gb", 1, 16, 9_984, GIB))
    clock.advance(10.0)
    gpu = collect(source)[0]  # not due yet: the old layout; the destroyed device's reads fail, GPU stays up
    assert gpu.up and [d.uuid for d in gpu.mig] == ["MIG-aaaa", "MIG-bbbb", "MIG-cccc"]
    assert gpu.mig[1].memory_used_bytes is None
    freed = fake.calls.get("nvmlGpmSampleFree", 0)
    clock.advance(20.0)
    gpu = collect(source)[0]
    assert [(d.gpu_instance, d.uuid) for d in gpu.mig] == [(1, "MIG-aaaa"), (7, "MIG-dddd"), (13, "MIG-cccc")]
    assert fake.calls["nvmlGpmSampleFree"] == freed + 2  # the destroyed instance's two GPM samples


def test_mig_unsupported_is_absent_and_not_asked_again() -> None:
    fake, source, clock = make(mig=False)
    fake.gpus[0].mig_mode = None  # NOT_SUPPORTED
    for _ in range(3):
        gpu = collect(source)[0]
        clock.advance(31.0)
    assert gpu.up and gpu.mig_enabled is None and gpu.mig == ()
    assert fake.calls["nvmlDeviceGetMigMode"] == 1


def test_failing_mig_calls_leave_the_gpu_and_the_rest_flowing() -> None:
    fake, source, clock = make()
    fake.gpus[0].mig_errors["nvmlDeviceGetMemoryInfo"] = pynvml.NVML_ERROR_NO_PERMISSION
    fake.gpus[0].errors["nvmlGpmMigSampleGet"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    collect(source)
    clock.advance(1.0)
    gpu = collect(source)[0]
    assert gpu.up and gpu.power_watts == pytest.approx(350.0) and gpu.memory_used_bytes == 20 * GIB
    assert [d.uuid for d in gpu.mig] == ["MIG-aaaa", "MIG-bbbb", "MIG-cccc"]
    assert all(d.memory_used_bytes is None and d.profiling is None for d in gpu.mig)
    assert gpu.mig[0].process_ids == (101,)
    assert fake.calls["nvmlGpmMigSampleGet"] == 1  # NOT_SUPPORTED: not asked again
    assert fake.calls["mig:nvmlDeviceGetMemoryInfo"] == 6  # NO_PERMISSION: asked again each tick


def test_a_lost_gpu_during_mig_enumeration_marks_only_that_gpu_down() -> None:
    fake, source, _ = make(2)
    fake.gpus[0].errors["nvmlDeviceGetMaxMigDeviceCount"] = pynvml.NVML_ERROR_GPU_IS_LOST
    gpus = collect(source)
    assert not gpus[0].up and gpus[1].up and len(gpus[1].mig) == 3


def test_profile_from_attributes_when_the_name_has_none() -> None:
    attributes = pynvml.c_nvmlDeviceAttributes()
    attributes.gpuInstanceSliceCount, attributes.computeInstanceSliceCount = 3, 1
    attributes.memorySizeMB = 40_320
    assert mig_profile("NVIDIA H100 80GB HBM3", attributes) == "1c.3g.39gb"
    attributes.computeInstanceSliceCount = 3
    assert mig_profile("", attributes) == "3g.39gb"
    assert mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None) == "1g.10gb"
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 1c.2g.10gb", attributes) == "1c.2g.10gb"
    assert mig_profile("", None) == ""
