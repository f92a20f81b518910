"""The NVML source against a thin fake of pynvml: units, GPM windows, unsupported fields, lost GPUs."""

from __future__ import annotations

import asyncio
import threading
import time

import pynvml
import pytest
from fake_nvml import Clock, FakeGpu, FakeNvml

from exporter.sources.base import SourceError
from exporter.sources.nvml import DeviceSelectionError, NvmlSource

SM_UTIL = pynvml.NVML_GPM_METRIC_SM_UTIL
TENSOR = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
DRAM = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
PCIE_RX = pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC


def make(gpus: int = 2, **kwargs: object) -> tuple[FakeNvml, NvmlSource, Clock]:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(gpus)], clock, **kwargs)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5)
    return fake, source, clock


def collect(source: NvmlSource):
    return asyncio.run(source.collect())


def test_units_are_converted_to_base_units() -> None:
    _, source, _ = make(1)
    gpu = collect(source).gpus[0]
    assert gpu.up
    assert gpu.power_watts == pytest.approx(350.0)  # 350 000 mW
    assert gpu.energy_joules == pytest.approx(5000.0)  # 5 000 000 mJ
    assert gpu.power_limit_watts == pytest.approx(700.0)
    assert gpu.utilization_ratio == pytest.approx(0.99)
    assert gpu.memory_utilization_ratio == pytest.approx(0.33)
    assert gpu.sm_clock_hertz == pytest.approx(1755e6)
    assert gpu.memory_clock_hertz == pytest.approx(2619e6)
    assert gpu.memory_used_bytes == 20 * 1024**3
    assert gpu.info.memory_total_bytes == 80 * 1024**3
    assert gpu.temperature_celsius == 64
    assert gpu.clock_event_reasons == pynvml.nvmlClocksEventReasonSwPowerCap
    # 5120-bit bus × 2619 MHz × 2 (DDR) / 8 bits per byte = 3.352 TB/s, the H100 SXM figure.
    assert gpu.info.dram_peak_bandwidth_bytes_per_second == pytest.approx(3.35232e12)
    assert gpu.info.compute_capability == "9.0"
    assert gpu.info.pci_bus_id == "00000000:18:00.0"


def test_power_and_energy_come_from_one_field_values_call() -> None:
    fake, source, _ = make(1)
    collect(source)
    power_energy = [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]
    # the other field-values calls: the NVLink link count at start, the NVLink byte counters each tick
    assert [ids for ids in fake.field_requests if ids == power_energy] == [power_energy]
    assert "nvmlDeviceGetTotalEnergyConsumption" not in fake.calls
    assert "nvmlDeviceGetPowerUsage" not in fake.calls


def test_falls_back_to_single_getters_without_field_values() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].power_mw = 123_000
    first = collect(source).gpus[0]
    asked = fake.calls["nvmlDeviceGetFieldValues"]
    collect(source)
    assert first.power_watts == pytest.approx(123.0)
    assert first.energy_joules == pytest.approx(5000.0)
    # Unsupported is remembered: field values are not asked again on the second tick.
    assert fake.calls["nvmlDeviceGetFieldValues"] == asked
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 2


def test_gpm_window_spans_previous_tick_to_this_tick() -> None:
    fake, source, clock = make(1)
    fake.set_activity(0, SM_UTIL, 20.0)
    first = collect(source).gpus[0]
    assert first.profiling is None  # no previous sample yet: absent, not zero

    clock.advance(0.5)
    fake.set_activity(0, SM_UTIL, 80.0)  # 0.5 s at 20 %, then 0.5 s at 80 %
    clock.advance(0.5)
    second = collect(source).gpus[0]
    assert second.profiling is not None
    assert second.profiling.window_seconds == pytest.approx(1.0)
    assert second.profiling.ratios["sm_active"] == pytest.approx(0.5)

    clock.advance(2.0)  # the next window sees only the 80 % period
    third = collect(source).gpus[0]
    assert third.profiling.window_seconds == pytest.approx(2.0)
    assert third.profiling.ratios["sm_active"] == pytest.approx(0.8)


def test_gpm_ratios_rates_and_per_metric_failures() -> None:
    fake, source, clock = make(1)
    fake.set_activity(0, TENSOR, 93.0)
    fake.set_activity(0, DRAM, 25.5)
    fake.set_activity(0, PCIE_RX, 10.0)  # MiB/s
    fake.gpus[0].gpm_metric_errors[pynvml.NVML_GPM_METRIC_FP64_UTIL] = pynvml.NVML_ERROR_NOT_SUPPORTED
    collect(source)
    clock.advance(1.0)
    profiling = collect(source).gpus[0].profiling
    assert profiling.ratios["tensor_active"] == pytest.approx(0.93)
    assert profiling.ratios["dram_bandwidth_utilization"] == pytest.approx(0.255)
    assert profiling.rates["pcie_rx_bytes_per_second"] == pytest.approx(10 * 1024 * 1024)
    assert "fp64_active" not in profiling.ratios  # that metric failed: absent, others kept


def test_gpu_without_gpm_has_no_profiling() -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid="GPU-a", gpm_supported=False)], clock)
    source = NvmlSource(fake, clock=clock)
    collect(source)
    clock.advance(1)
    gpu = collect(source).gpus[0]
    assert not gpu.info.profiling_supported
    assert gpu.profiling is None
    assert "nvmlGpmSampleGet" not in fake.calls


def test_profiling_can_be_switched_off() -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid="GPU-a")], clock)
    source = NvmlSource(fake, clock=clock, profiling=False)
    collect(source)
    assert "nvmlGpmQueryDeviceSupport" not in fake.calls
    assert "nvmlGpmSampleGet" not in fake.calls


def test_unsupported_field_is_absent_and_not_asked_again() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].errors["nvmlDeviceGetTemperature"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    first = collect(source).gpus[0]
    second = collect(source).gpus[0]
    assert first.up and second.up
    assert first.temperature_celsius is None
    assert fake.calls["nvmlDeviceGetTemperature"] == 1
    assert second.power_watts is not None


def test_transient_field_error_is_retried_next_tick() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"] = pynvml.NVML_ERROR_TIMEOUT
    assert collect(source).gpus[0].utilization_ratio is None
    del fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"]
    assert collect(source).gpus[0].utilization_ratio == pytest.approx(0.99)


def test_lost_gpu_goes_down_while_the_others_keep_flowing() -> None:
    fake, source, _ = make(3)
    fake.gpus[1].errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_GPU_IS_LOST
    gpus = collect(source).gpus
    assert [g.up for g in gpus] == [True, False, True]
    assert "GPU unavailable" in gpus[1].error and "GPU is lost" in gpus[1].error
    assert gpus[0].power_watts is not None and gpus[2].power_watts is not None
    # Recovers if the GPU comes back (e.g. after a reset).
    del fake.gpus[1].errors["nvmlDeviceGetFieldValues"]
    assert collect(source).gpus[1].up


def test_no_driver_raises_and_retries_with_backoff() -> None:
    fake, source, clock = make(1, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(SourceError, match="NVML initialisation failed"):
        collect(source)
    assert fake.calls["nvmlInit"] == 1
    with pytest.raises(SourceError, match="next attempt in"):
        collect(source)  # inside the 1 s backoff: not tried again
    assert fake.calls["nvmlInit"] == 1
    clock.advance(1.1)
    with pytest.raises(SourceError):
        collect(source)
    assert fake.calls["nvmlInit"] == 2
    clock.advance(1.1)  # backoff doubled to 2 s
    with pytest.raises(SourceError, match="next attempt"):
        collect(source)
    fake.init_error = None
    clock.advance(1.0)
    assert collect(source).gpus[0].up
    assert fake.calls["nvmlInit"] == 3


def test_hung_gpu_is_reported_and_not_piled_up() -> None:
    clock = Clock()
    gate = threading.Event()
    fake = FakeNvml([FakeGpu(uuid="GPU-ok"), FakeGpu(uuid="GPU-hung")], clock)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.2)

    async def run() -> None:
        await source.collect()  # discovery happens before the hang starts
        fake.gpus[1].block = gate
        started = time.monotonic()
        first = await source.collect()
        assert time.monotonic() - started < 1.0
        assert first.gpus[0].up and not first.gpus[1].up
        assert "took over 0.2 s" in first.gpus[1].error
        second = await source.collect()
        assert "still running" in second.gpus[1].error
        assert second.gpus[0].up
        gate.set()
        await asyncio.sleep(0.05)
        fake.gpus[1].block = None
        third = await source.collect()
        assert third.gpus[1].up
        await source.close()

    asyncio.run(run())


def test_running_processes_and_node_info() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].processes = (4242, 17, 4242)
    collected = collect(source)
    assert collected.gpus[0].process_ids == (17, 4242)
    assert collected.node.driver_version == "580.159.04"
    assert collected.node.cuda_driver_version == "13.0"


def test_close_frees_gpm_samples_and_shuts_nvml_down() -> None:
    fake, source, _ = make(2)
    collect(source)
    asyncio.run(source.close())
    assert fake.calls["nvmlGpmSampleFree"] == 4
    assert fake.calls["nvmlShutdown"] == 1


def test_gpm_is_right_on_every_gpu_of_a_multi_gpu_node() -> None:
    """NVML's GPM calls share scratch state (the fake models it): they must never run at the same time.

    Each GPU runs a different load; every GPM call lasts 10 ms in the fake, so per-GPU threads calling GPM
    concurrently (as the exporter did before, and as the 2×H100 showed wrong ratios) overlap and mix the
    GPUs' counters here too.
    """
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(4)], clock, gpm_call_seconds=0.01)
    for index in range(4):
        fake.set_activity(index, SM_UTIL, 20.0 * (index + 1))
        fake.set_activity(index, DRAM, 90.0 - 20.0 * index)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=2.0)

    async def run() -> list[list[tuple[float, float]]]:
        ticks = []
        await source.collect()
        for _ in range(4):
            clock.advance(1.0)
            collected = await source.collect()
            ticks.append(
                [
                    (gpu.profiling.ratios["sm_active"], gpu.profiling.ratios["dram_bandwidth_utilization"])
                    for gpu in collected.gpus
                    if gpu.profiling is not None
                ]
            )
        await source.close()
        return ticks

    for tick in asyncio.run(run()):
        assert tick == [(pytest.approx(0.2 * (i + 1)), pytest.approx(0.9 - 0.2 * i)) for i in range(4)]
    assert fake.gpm_overlaps == 0


def test_a_hung_gpm_call_pauses_profiling_but_no_gpu_goes_down() -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1")], clock)
    fake.set_activity(0, SM_UTIL, 50.0)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.2)
    gate = threading.Event()
    original = fake.nvmlGpmSampleGet

    def hanging_sample_get(handle: int, sample: object) -> None:
        if handle == 1:
            gate.wait(10)
        original(handle, sample)

    async def run() -> None:
        await source.collect()
        fake.nvmlGpmSampleGet = hanging_sample_get  # type: ignore[method-assign]
        clock.advance(1.0)
        first = await source.collect()
        assert all(gpu.up for gpu in first.gpus)
        assert first.gpus[0].profiling is not None  # GPU 0 was done before GPU 1's call hung
        assert first.gpus[1].profiling is None
        clock.advance(1.0)
        second = await source.collect()
        assert all(gpu.up and gpu.profiling is None for gpu in second.gpus)
        gate.set()
        await asyncio.sleep(0.05)
        fake.nvmlGpmSampleGet = original  # type: ignore[method-assign]
        clock.advance(1.0)
        third = await source.collect()
        assert third.gpus[0].profiling is not None
        assert third.gpus[0].profiling.ratios["sm_active"] == pytest.approx(0.5)
        await source.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("devices", "indices"), [(None, [0, 1, 2]), ([2, 0], [0, 2]), (["GPU-1"], [1]), ([1, "GPU-1"], [1])]
)
def test_devices_select_gpus_by_index_or_uuid(devices: list[int | str] | None, indices: list[int]) -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(3)], clock)
    source = NvmlSource(fake, clock=clock, devices=devices)
    collected = collect(source)
    assert [gpu.info.index for gpu in collected.gpus] == indices
    assert [gpu.info.uuid for gpu in collected.gpus] == [f"GPU-{i}" for i in indices]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([3], "nvml.devices: GPU index 3 is not on this node (it has 2 GPU(s): 0..1)"),
        (["GPU-nope"], "nvml.devices: no GPU with UUID GPU-nope on this node"),
    ],
)
def test_unknown_device_is_named(devices: list[int | str], message: str) -> None:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(2)], clock)
    source = NvmlSource(fake, clock=clock, devices=devices)
    with pytest.raises(DeviceSelectionError) as raised:
        source.initialise()
    assert str(raised.value) == message
    with pytest.raises(SourceError, match="GPU"):  # later, in the daemon: source up 0 with the reason
        collect(source)


def test_per_process_sm_utilisation_is_read_only_where_processes_share_a_gpu() -> None:
    """2.1-2.3 ms of CPU a call on an H100: asked only where it splits a GPU between processes."""
    fake, source, _ = make(3)
    fake.gpus[0].processes = (11, 22)
    fake.gpus[0].process_sm = {11: 60.0, 22: 20.0}
    fake.gpus[1].processes = (33,)
    fake.gpus[1].process_sm = {33: 90.0}  # one process: the GPU is its own, not asked
    fake.gpus[2].process_sm = {44: 50.0}  # samples, but no compute process listed: not asked
    collected = collect(source)
    assert collected.gpus[0].process_sm_ratios == ((11, pytest.approx(0.6)), (22, pytest.approx(0.2)))
    assert collected.gpus[1].process_sm_ratios == ()
    assert collected.gpus[2].process_sm_ratios == ()
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1


def test_per_process_sm_utilisation_unsupported_is_not_asked_again() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].processes = (11, 12)
    fake.gpus[0].errors["nvmlDeviceGetProcessUtilization"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    for _ in range(3):
        gpu = collect(source).gpus[0]
    assert gpu.up and gpu.process_ids == (11, 12) and gpu.process_sm_ratios == ()
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1


def test_process_memory_comes_from_the_process_list() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].processes = (11, 22, 33)
    fake.gpus[0].process_memory = {11: 3 * 1024**3, 22: None}  # 22: NVML reports no figure; 33: 0
    gpu = collect(source).gpus[0]
    assert gpu.process_memory == ((11, 3 * 1024**3), (33, 0))
