"""The NVML source against a thin fake of pynvml: units, GPM windows, unsupported fields, lost GPUs."""

from __future__ import annotations

import asyncio
import threading
import time

import pynvml
import pytest
from fake_nvml import Clock, FakeGpu, FakeNvml

from exporter.sources.base import SourceError
from exporter.sources.nvml import NvmlSource

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
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1
    assert "nvmlDeviceGetTotalEnergyConsumption" not in fake.calls
    assert "nvmlDeviceGetPowerUsage" not in fake.calls


def test_falls_back_to_single_getters_without_field_values() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.gpus[0].power_mw = 123_000
    first = collect(source).gpus[0]
    collect(source)
    assert first.power_watts == pytest.approx(123.0)
    assert first.energy_joules == pytest.approx(5000.0)
    # Unsupported is remembered: field values are not asked again on the second tick.
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1
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
