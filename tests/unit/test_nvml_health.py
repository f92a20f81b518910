"""GPU health through the NVML source against the fake (tests/fake_nvml.py): ECC, retired pages and
remapped rows, limits and clocks, the PCIe link, NVLink, XID events; their cadence and failure policy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pynvml
import pytest
from fake_nvml import Clock, FakeGpu, FakeNvml

from exporter.model import MAX_XID_CODES, XID_ACTIONABLE, GpuSample
from exporter.sources.nvml import NvmlSource

HEALTH_INTERVAL = 30.0
ACTIONABLE_AT_ZERO = tuple((str(code), 0) for code in XID_ACTIONABLE)


def make(gpus: int = 2, **kwargs: Any) -> tuple[FakeNvml, NvmlSource, Clock]:
    clock = Clock()
    fake = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(gpus)], clock)
    source = NvmlSource(
        fake,
        clock=clock,
        gpu_timeout_seconds=0.5,
        health_interval_seconds=HEALTH_INTERVAL,
        xid_wait_seconds=0.02,
        **kwargs,
    )
    return fake, source, clock


def collect(source: NvmlSource) -> tuple[GpuSample, ...]:
    return asyncio.run(source.collect()).gpus


def close(source: NvmlSource) -> None:
    asyncio.run(source.close())


def eventually(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def xids(sample: GpuSample) -> dict[str, int]:
    return dict(sample.xid_errors)


# -- values and units -------------------------------------------------------------------------------------


def test_health_values_are_read_at_start_in_base_units() -> None:
    fake, source, _ = make(1)
    gpu = fake.gpus[0]
    gpu.remapped_rows = (2, 1, 1, 0)
    gpu.power_default_limit_mw = 700_000
    gpu.pcie_replays = 7
    gpu.nvlink_errors = {(0, 0): 5, (3, 0): 2, (3, 1): 1, (17, 2): 9, (17, 3): 4}  # (link, DL counter)
    sample = collect(source)[0]
    health = sample.health
    assert health is not None
    assert (health.ecc_corrected_volatile, health.ecc_uncorrected_volatile) == (3, 0)
    assert (health.ecc_corrected_aggregate, health.ecc_uncorrected_aggregate) == (41, 0)
    assert (health.remapped_rows_correctable, health.remapped_rows_uncorrectable) == (2, 1)
    assert health.row_remap_pending is True and health.row_remap_failed is False
    assert health.power_default_limit_watts == pytest.approx(700.0)
    assert health.sm_clock_max_hertz == pytest.approx(1980e6)
    assert (health.pcie_max_generation, health.pcie_max_width, health.pcie_replays) == (5, 16, 7)
    assert (health.nvlink_links, health.nvlink_links_up) == (18, 18)
    # (the fake's driver sums them as the H100 VM's does: the ERROR_DL fields, CRC of both kinds)
    assert dict(health.nvlink_errors) == {"replay": 7, "recovery": 1, "crc": 13}
    # an H100 remaps rows instead of retiring pages: absent, never 0
    assert health.retired_pages_single_bit is None and health.retired_pages_pending is None
    # the current PCIe link (generation every tick, width with the health), NVLink data counters (KiB → bytes)
    assert (sample.pcie_generation, sample.pcie_width) == (5, 16)
    assert sample.nvlink_tx_bytes == 1_000 * 1024 and sample.nvlink_rx_bytes == 2_000 * 1024
    close(source)


def test_retired_pages_on_a_gpu_that_retires_pages() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].retired_pages = {0: [0x1000, 0x2000], 1: [0x3000]}
    fake.gpus[0].retired_pages_pending = 1
    health = collect(source)[0].health
    assert health is not None
    assert (health.retired_pages_single_bit, health.retired_pages_double_bit) == (2, 1)
    assert health.retired_pages_pending is True
    close(source)


# -- cadence ----------------------------------------------------------------------------------------------


def test_slow_values_on_the_health_cadence_fast_ones_every_tick() -> None:
    fake, source, clock = make(1)
    gpu = fake.gpus[0]
    collect(source)
    ecc_calls = fake.calls["nvmlDeviceGetTotalEccErrors"]
    assert ecc_calls == 4  # corrected / uncorrected × volatile / aggregate, at the first tick
    gpu.ecc[0, 0] = 10
    gpu.pcie_generation, gpu.nvlink_tx_kib = 1, 5_000  # an idle GPU steps its link down
    gpu.pcie_width = 8
    clock.advance(HEALTH_INTERVAL - 1)
    sample = collect(source)[0]
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == ecc_calls  # not due yet: the last read
    assert sample.health is not None and sample.health.ecc_corrected_volatile == 3
    assert sample.pcie_generation == 1  # the current generation: every tick
    assert sample.pcie_width == 16  # the current width (dear beside other GPUs' calls): with the health
    assert sample.nvlink_tx_bytes == 1_000 * 1024  # NVLink's byte counters: with the health read
    clock.advance(1)
    sample = collect(source)[0]
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 2 * ecc_calls
    assert sample.health is not None and sample.health.ecc_corrected_volatile == 10
    assert sample.nvlink_tx_bytes == 5_000 * 1024 and sample.pcie_width == 8
    assert fake.calls["nvmlDeviceGetCurrPcieLinkWidth"] == 2
    assert fake.calls["nvmlDeviceGetCurrPcieLinkGeneration"] == 3
    assert fake.calls["nvmlDeviceGetMaxClockInfo"] == 2  # the maximum clock: once (GpuInfo, health)
    close(source)


def test_the_gpus_health_reads_run_one_at_a_time() -> None:
    """Their calls contend in the driver when GPUs make them at once (20.6 ms of CPU per GPU on 4 H100s
    against 6.0 ms one after another): the source never runs two GPUs' health reads together, while the
    per-tick reads still run in parallel."""

    class TimedFake(FakeNvml):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.active = {"health": 0, "tick": 0}
            self.most = {"health": 0, "tick": 0}
            self.lock = threading.Lock()

        def _slow(self, kind: str, call: Callable[[], Any]) -> Any:
            with self.lock:
                self.active[kind] += 1
                self.most[kind] = max(self.most[kind], self.active[kind])
            try:
                time.sleep(0.05)
                return call()
            finally:
                with self.lock:
                    self.active[kind] -= 1

        def nvmlDeviceGetRemappedRows(self, handle: int) -> Any:
            return self._slow("health", lambda: super(TimedFake, self).nvmlDeviceGetRemappedRows(handle))

        def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
            return self._slow("tick", lambda: super(TimedFake, self).nvmlDeviceGetUtilizationRates(handle))

    clock = Clock()
    fake = TimedFake([FakeGpu(uuid=f"GPU-{i}") for i in range(4)], clock)
    source = NvmlSource(
        fake,
        clock=clock,
        gpu_timeout_seconds=2.0,
        health_interval_seconds=HEALTH_INTERVAL,
        xid_wait_seconds=0.02,
    )
    gpus = collect(source)
    assert all(g.up and g.health is not None for g in gpus)
    assert fake.calls["nvmlDeviceGetRemappedRows"] == 4 and fake.most["health"] == 1
    assert fake.most["tick"] > 1  # the per-tick reads of the GPUs still overlap
    close(source)


def test_a_health_read_hung_on_one_gpu_never_takes_another_gpu_down(caplog: pytest.LogCaptureFixture) -> None:
    """GPU 0's health read hangs in the driver holding the health lock: GPU 1 waits for it a short while,
    skips its own health read until the next interval and stays up with the rest of its values."""
    hung = threading.Event()

    class HangingFake(FakeNvml):
        def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter_type: int) -> int:
            if handle == 0 and not hung.is_set():
                hung.wait(5)  # the first health call of GPU 0, under the lock
            return super().nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)

        def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any:
            if handle == 1:
                time.sleep(0.05)  # GPU 1 comes to its health read after GPU 0 took the lock
            return super().nvmlDeviceGetComputeRunningProcesses(handle)

    clock = Clock()
    fake = HangingFake([FakeGpu(uuid=f"GPU-{i}") for i in range(2)], clock)
    source = NvmlSource(
        fake,
        clock=clock,
        gpu_timeout_seconds=0.5,
        health_interval_seconds=HEALTH_INTERVAL,
        xid_wait_seconds=0.02,
    )
    try:
        started = time.monotonic()
        gpus = collect(source)
        assert time.monotonic() - started < 1.5
        assert [g.up for g in gpus] == [False, True]
        assert gpus[1].health is None and gpus[1].power_watts is not None  # skipped, the rest flowing
        assert "another GPU's health read has not returned" in caplog.text
    finally:
        hung.set()
    eventually(lambda: collect(source)[0].up)  # GPU 0's call returned: it is read again
    clock.advance(HEALTH_INTERVAL)
    healthy = collect(source)
    assert all(g.up and g.health is not None for g in healthy)
    close(source)


def test_no_health_interval_reads_nothing_new() -> None:
    """The exporter before issue 14 (benchmarks/nvml_costs.py's baseline): none of the new calls."""
    fake, source, _ = make(1)
    source = NvmlSource(fake, clock=fake.clock, gpu_timeout_seconds=0.5, health_interval_seconds=None)
    sample = collect(source)[0]
    assert sample.up and sample.health is None and sample.xid_errors == ()
    assert sample.pcie_generation is None and sample.nvlink_tx_bytes is None
    new = {"nvmlEventSetCreate", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetCurrPcieLinkGeneration"}
    assert not new & fake.calls.keys()
    assert len(fake.field_requests) == 1  # power and energy only
    close(source)


# -- failure policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_unsupported_health_field_is_absent_and_never_asked_again(code: int) -> None:
    fake, source, clock = make(1)
    fake.gpus[0].errors["nvmlDeviceGetRemappedRows"] = code
    first = collect(source)[0]
    clock.advance(HEALTH_INTERVAL)
    second = collect(source)[0]
    assert first.up and second.up
    assert second.health is not None and second.health.remapped_rows_uncorrectable is None
    assert second.health.row_remap_pending is None and second.health.ecc_corrected_volatile == 3
    assert fake.calls["nvmlDeviceGetRemappedRows"] == 1
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 8  # the rest is read on both health reads
    close(source)


def test_a_pynvml_without_the_function_makes_it_absent() -> None:
    class OldPynvml(FakeNvml):
        def __getattribute__(self, name: str) -> Any:
            if name in ("nvmlDeviceGetRemappedRows", "nvmlDeviceGetCurrPcieLinkWidth"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    clock = Clock()
    fake = OldPynvml([FakeGpu(uuid="GPU-0")], clock)
    source = NvmlSource(fake, clock=clock, gpu_timeout_seconds=0.5, xid_wait_seconds=0.02)
    sample = collect(source)[0]
    assert sample.up and sample.pcie_width is None and sample.pcie_generation == 5
    assert sample.health is not None and sample.health.row_remap_pending is None
    assert sample.health.ecc_corrected_volatile == 3
    close(source)


def test_a_failing_health_read_leaves_the_gpu_up_and_is_retried() -> None:
    fake, source, clock = make(2)
    fake.gpus[0].errors["nvmlDeviceGetTotalEccErrors"] = pynvml.NVML_ERROR_TIMEOUT
    fake.gpus[0].errors["nvmlDeviceGetCurrPcieLinkGeneration"] = pynvml.NVML_ERROR_NO_PERMISSION
    first = collect(source)
    assert [g.up for g in first] == [True, True]
    health = first[0].health
    assert health is not None and health.ecc_corrected_volatile is None  # this read failed
    assert health.remapped_rows_correctable == 0 and first[0].power_watts is not None
    assert first[0].pcie_generation is None and first[0].pcie_width == 16
    assert first[1].health is not None and first[1].health.ecc_corrected_volatile == 3
    del fake.gpus[0].errors["nvmlDeviceGetTotalEccErrors"]
    clock.advance(HEALTH_INTERVAL)
    retried = collect(source)[0].health
    assert retried is not None and retried.ecc_corrected_volatile == 3  # asked again at the next read
    close(source)


def test_a_gpu_lost_in_the_health_read_is_down_then_read_again_at_once() -> None:
    fake, source, clock = make(2)
    fake.gpus[1].errors["nvmlDeviceGetRemappedRows"] = pynvml.NVML_ERROR_GPU_IS_LOST
    gpus = collect(source)
    assert [g.up for g in gpus] == [True, False]
    assert "GPU is lost" in (gpus[1].error or "")
    del fake.gpus[1].errors["nvmlDeviceGetRemappedRows"]
    clock.advance(1.0)  # well inside the health interval: the lost read is not "done"
    back = collect(source)[1]
    assert back.up and back.health is not None and back.health.remapped_rows_correctable == 0
    close(source)


# -- NVLink -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["totals", "dl"])
def test_nvlink_error_sums_come_from_the_drivers_totals_in_one_call(way: str) -> None:
    """Not 4 calls a link (57 ms of CPU for 18 links on an H100): the *_ERROR_COUNT_TOTAL fields, else the
    ERROR_DL_* fields over all links (the H100 VM's driver: its CRC counter is both kinds, type crc)."""
    fake, source, clock = make(1)
    gpu = fake.gpus[0]
    gpu.nvlink_error_totals, gpu.nvlink_error_dl = way == "totals", way == "dl"
    gpu.nvlink_errors = {(0, 0): 5, (3, 0): 2, (17, 2): 9, (4, 3): 1}
    for _ in range(2):
        health = collect(source)[0].health
        clock.advance(HEALTH_INTERVAL)
    assert health is not None
    expected = {"replay": 7, "recovery": 0}
    expected |= {"crc_flit": 9, "crc_data": 1} if way == "totals" else {"crc": 10}
    assert dict(health.nvlink_errors) == expected
    assert "nvmlDeviceGetNvLinkErrorCounter" not in fake.calls
    close(source)


def test_a_link_going_down_keeps_the_error_sums_from_going_backwards() -> None:
    """Without the driver's totals, link by link: a down link's last count is kept."""
    fake, source, clock = make(1)
    gpu = fake.gpus[0]
    gpu.nvlink_error_totals = gpu.nvlink_error_dl = False
    gpu.nvlink_errors = {(2, 0): 10, (5, 0): 3}
    collect(source)
    gpu.nvlink_states[2] = 0
    gpu.nvlink_errors = {(2, 0): 0, (5, 0): 4}  # link 2's counter reads 0 while it is down
    clock.advance(HEALTH_INTERVAL)
    health = collect(source)[0].health
    assert health is not None and (health.nvlink_links, health.nvlink_links_up) == (18, 17)
    assert dict(health.nvlink_errors)["replay"] == 14  # 10 kept for link 2, and link 5's 4
    close(source)


def test_a_gpu_without_nvlink_has_no_nvlink_values_and_is_not_asked_each_tick() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].nvlink_states = []
    for _ in range(3):
        sample = collect(source)[0]
    assert sample.health is not None and sample.health.nvlink_links is None
    assert sample.health.nvlink_links_up is None and sample.health.nvlink_errors == ()
    assert sample.nvlink_tx_bytes is None
    throughput = [ids for ids in fake.field_requests if (138, 0xFFFFFFFF) in ids]
    assert throughput == []
    close(source)


def test_nvlink_throughput_without_the_all_links_scope_is_absent_and_not_asked_again() -> None:
    fake, source, _ = make(1)
    fake.gpus[0].field_errors = {138: pynvml.NVML_ERROR_INVALID_ARGUMENT}
    for _ in range(3):
        sample = collect(source)[0]
    assert sample.up and sample.nvlink_tx_bytes is None and sample.nvlink_rx_bytes is None
    assert len([ids for ids in fake.field_requests if (138, 0xFFFFFFFF) in ids]) == 1
    assert sample.health is not None and sample.health.nvlink_links_up == 18
    close(source)


# -- XID events -------------------------------------------------------------------------------------------


def test_xid_events_are_counted_per_gpu_and_code_from_zero() -> None:
    fake, source, _ = make(2)
    first = collect(source)
    assert [g.xid_errors for g in first] == [ACTIONABLE_AT_ZERO, ACTIONABLE_AT_ZERO]
    fake.inject_xid(1, 94)
    fake.inject_xid(1, 94)
    fake.inject_xid(1, 13)
    fake.inject_xid(0, 79)
    eventually(lambda: sum(count for _, count in collect(source)[1].xid_errors) == 3)
    gpu0, gpu1 = collect(source)
    assert xids(gpu1) == {**dict(ACTIONABLE_AT_ZERO), "94": 2, "13": 1}
    assert [code for code, _ in gpu1.xid_errors] == sorted(xids(gpu1), key=int)  # numeric order
    assert xids(gpu0) == {**dict(ACTIONABLE_AT_ZERO), "79": 1}
    close(source)


def test_xid_codes_past_the_cap_count_as_other() -> None:
    fake, source, _ = make(1)
    collect(source)
    codes = list(range(1, 50))  # 49 codes: with the 8 actionable ones, more than MAX_XID_CODES
    for code in codes:
        fake.inject_xid(0, code)
    eventually(lambda: sum(count for _, count in collect(source)[0].xid_errors) == len(codes))
    counts = xids(collect(source)[0])
    assert len(counts) == MAX_XID_CODES + 1 and list(counts)[-1] == "other"
    labelled_before = len(XID_ACTIONABLE)  # already labelled, at 0: the room left is for the first others
    unlabelled = [code for code in codes if code not in XID_ACTIONABLE]
    assert counts["other"] == len(unlabelled) - (MAX_XID_CODES - labelled_before)
    assert counts["48"] == 1 and counts[str(unlabelled[0])] == 1  # an actionable code never falls in other
    close(source)


def test_a_wait_that_blocks_never_blocks_the_tick() -> None:
    fake, source, _ = make(2)
    collect(source)
    fake.inject_xid(0, 48)
    eventually(lambda: xids(collect(source)[0])["48"] == 1)
    gate = threading.Event()
    fake.event_wait_gate = gate  # the driver hangs in nvmlEventSetWait
    time.sleep(0.1)  # the watcher is now stuck in a wait
    fake.inject_xid(0, 48)
    for _ in range(3):
        started = time.monotonic()
        gpus = collect(source)
        assert time.monotonic() - started < 0.4
        assert all(g.up for g in gpus) and xids(gpus[0])["48"] == 1
    fake.event_wait_gate = None
    gate.set()
    eventually(lambda: xids(collect(source)[0])["48"] == 2)
    close(source)


def test_close_stops_the_watcher_and_frees_the_event_set() -> None:
    fake, source, _ = make(1)
    before = set(threading.enumerate())
    collect(source)
    (watcher,) = [t for t in set(threading.enumerate()) - before if t.name == "nvml-xid"]
    close(source)
    assert fake.event_sets_freed == 1
    assert not watcher.is_alive()


def test_close_with_a_hung_wait_returns_in_time_and_leaves_the_set() -> None:
    fake, source, _ = make(1)
    collect(source)
    gate = threading.Event()
    fake.event_wait_gate = gate
    time.sleep(0.1)
    started = time.monotonic()
    close(source)
    assert time.monotonic() - started < 1.0  # the daemon gives a source 1 s to close
    assert fake.event_sets_freed == 0  # never freed under a thread still waiting on it
    gate.set()


def test_no_event_set_leaves_everything_else_working() -> None:
    fake, source, clock = make(2)
    fake.errors["nvmlEventSetCreate"] = pynvml.NVML_ERROR_UNKNOWN
    for _ in range(2):
        gpus = collect(source)
        clock.advance(1.0)
    assert all(g.up and g.xid_errors == () for g in gpus)  # not listening: no XID series at all
    assert all(g.health is not None and g.power_watts is not None for g in gpus)
    close(source)


def test_a_gpu_that_cannot_be_registered_has_no_xid_series_the_others_do() -> None:
    fake, source, _ = make(3)
    fake.gpus[1].errors["nvmlDeviceRegisterEvents"] = pynvml.NVML_ERROR_UNKNOWN
    fake.gpus[2].xid_events = False
    gpus = collect(source)
    assert [g.xid_errors for g in gpus] == [ACTIONABLE_AT_ZERO, (), ()]
    assert all(g.up for g in gpus)
    close(source)


def test_a_failing_wait_backs_off_and_recovers() -> None:
    fake, source, _ = make(1)
    fake.errors["nvmlEventSetWait_v2"] = pynvml.NVML_ERROR_UNKNOWN
    collect(source)
    time.sleep(0.3)
    assert fake.calls["nvmlEventSetWait_v2"] <= 2  # backing off, not spinning
    assert collect(source)[0].up
    del fake.errors["nvmlEventSetWait_v2"]
    fake.inject_xid(0, 92)
    eventually(lambda: xids(collect(source)[0])["92"] == 1, seconds=5.0)
    close(source)
