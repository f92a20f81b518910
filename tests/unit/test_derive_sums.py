"""The derive window's typed running sums and its one evidence function (derive.window, derive.bound)."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.derive.bound import EVIDENCE_RATIOS, bound_evidence, evidence_from
from exporter.derive.window import (
    ENDPOINT_SLOTS,
    GPU_SLOTS,
    CounterSlots,
    Deriver,
    GpmSlots,
    StepSetSlots,
    window_sums,
)
from exporter.model import EVIDENCE_SIGNALS, WINDOWED_COUNTER_FIELDS, GpuInfo, GpuSample, Profiling, Snapshot


def slots_of(value: object) -> Iterator[int]:
    """Every slot number a layout holds (its `size` excluded)."""
    if isinstance(value, int):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from slots_of(item)
    else:
        for field in dataclasses.fields(value):  # type: ignore[arg-type]
            if field.name != "size":
                yield from slots_of(getattr(value, field.name))


@pytest.mark.parametrize("layout", [ENDPOINT_SLOTS, GPU_SLOTS], ids=["endpoint", "gpu"])
def test_layouts_number_every_slot_once(layout: object) -> None:
    slots = list(slots_of(layout))
    assert sorted(slots) == list(range(layout.size))  # type: ignore[attr-defined]


def test_layouts_hold_the_counters_and_ratios_the_window_uses() -> None:
    for step_set in (ENDPOINT_SLOTS.all, ENDPOINT_SLOTS.energy):
        assert tuple(step_set.counters) == WINDOWED_COUNTER_FIELDS
    assert tuple(ENDPOINT_SLOTS.utilization.counters) == ("generation_tokens_total",)
    assert tuple(GPU_SLOTS.gpm) == EVIDENCE_RATIOS
    assert all(isinstance(gpm, GpmSlots) for gpm in GPU_SLOTS.gpm.values())
    assert isinstance(ENDPOINT_SLOTS.all, StepSetSlots)
    assert isinstance(ENDPOINT_SLOTS.all.counters["requests_total"], CounterSlots)


def test_a_misspelt_sum_is_an_error_not_a_zero() -> None:
    with pytest.raises(KeyError):
        ENDPOINT_SLOTS.utilization.counters["prompt_tokens_total"]  # not summed over that set
    with pytest.raises(KeyError):
        ENDPOINT_SLOTS.all.counters["generation_tokens"]
    with pytest.raises(AttributeError):
        ENDPOINT_SLOTS.energy_joule  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(KeyError):
        GPU_SLOTS.gpm["sm_occupancy"]  # not read by the evidence


def test_window_sums() -> None:
    first, last = array("d", [1.0, 2.0, 5.0]), array("d", [4.0, 2.0, 7.5])
    assert list(window_sums(first, last, 3)) == [3.0, 0.0, 2.5]
    assert list(window_sums(None, last, 3)) == [4.0, 2.0, 7.5]  # nothing before: the totals so far
    assert list(window_sums(first, None, 3)) == [0.0, 0.0, 0.0]  # no step since the start


def test_evidence_from_a_mean_getter() -> None:
    means = {
        "tensor_active": 0.1,
        "dram_bandwidth_utilization": 0.8,
        "sm_active": 0.4,
        "graphics_active": 0.9,
    }
    evidence = evidence_from(means.get)
    assert evidence == {"tensor": 0.1, "dram": 0.8, "sm": 0.4, "graphics": 0.9}  # no fp pipe reported
    assert list(evidence or {}) == [s for s in EVIDENCE_SIGNALS if s != "fp"]
    with_fp = evidence_from({**means, "fp16_active": 0.2, "fp32_active": 0.6}.get)
    assert with_fp is not None and with_fp["fp"] == 0.6 and list(with_fp) == list(EVIDENCE_SIGNALS)
    for core in means:
        assert evidence_from({k: v for k, v in means.items() if k != core}.get) is None


def test_bound_evidence_weights_windows_by_length() -> None:
    short = Profiling(1.0, {key: 0.0 for key in EVIDENCE_RATIOS})
    long = Profiling(3.0, {key: 1.0 for key in EVIDENCE_RATIOS})
    assert bound_evidence([short, long]) == dict.fromkeys(EVIDENCE_SIGNALS, 0.75)


def gpu_at(t: float, window: float, ratios: dict[str, float]) -> GpuSample:
    info = GpuInfo(index=0, uuid="GPU-0", name="H100", profiling_supported=True)
    return GpuSample(
        info=info,
        timestamp=t,
        energy_joules=100.0 * t,
        energy_timestamp=t,
        profiling=Profiling(window, ratios),
    )


ratio = st.floats(0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.2, 3.0), st.fixed_dictionaries({key: ratio for key in EVIDENCE_RATIOS})),
        min_size=2,
        max_size=8,
    )
)
def test_the_window_evidence_is_bound_evidence_of_the_same_gpm_windows(
    ticks: list[tuple[float, dict[str, float]]],
) -> None:
    """Both inputs, one function: running sums over the window give what the GPM windows give directly."""
    deriver = Deriver(window=1e6)
    t = 1000.0
    snapshot = None
    for step, ratios in ticks:
        t += step
        gpus = (gpu_at(t, step, ratios),)
        snapshot = deriver(Snapshot(tick=1, wall_time=0.0, monotonic_time=t, duration_seconds=0.0, gpus=gpus))
    assert snapshot is not None and snapshot.derived is not None
    (gpu,) = snapshot.derived.gpus
    # The first tick's GPM window ends where the derive window starts: the others are inside it.
    windows = [Profiling(step, ratios) for step, ratios in ticks[1:]]
    expected = bound_evidence(windows)
    assert expected is not None
    assert gpu.evidence == pytest.approx(expected, abs=1e-9)
