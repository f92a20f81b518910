"""Roofline bound classification against every row of docs/h100-reference.md and the seed's table.

The ratios are the reference file's GPM percentages / 100, exactly as measured on an H100 80GB HBM3.
Each row goes through the whole path: GPM windows in snapshots → Deriver → window-mean evidence →
classification → `tpw_gpu_bound` state set in the exposition.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import BoundThresholds
from exporter.derive.bound import BOUND_STATES, Thresholds, bound_evidence, classify_bound
from exporter.derive.window import Deriver
from exporter.model import GpuInfo, GpuSample, Profiling, Snapshot
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer


def gpm(graphics: float, sm: float, occupancy: float, tensor: float, dram: float) -> dict[str, float]:
    """Reference-table percentages → GPM ratios as the NVML source reports them."""
    return {
        "graphics_active": graphics / 100,
        "sm_active": sm / 100,
        "sm_occupancy": occupancy / 100,
        "tensor_active": tensor / 100,
        "dram_bandwidth_utilization": dram / 100,
    }


# docs/h100-reference.md, "NVML GPM metrics over a 1 s window, one workload at a time".
WORKLOADS = [
    ("idle", gpm(0.0, 0.0, 0.0, 0.0, 0.001), "idle"),
    ("bf16 GEMM 8192^3", gpm(99.2, 95.8, 14.2, 93.0, 25.5), "compute"),
    ("device-to-device copy", gpm(99.4, 98.9, 79.3, 0.0, 89.5), "memory"),
    ("1000 tiny kernels then sync", gpm(35.9, 0.035, 0.002, 0.0, 0.001), "latency"),
]

# docs/h100-reference.md, "A decode-like loop across batch sizes" (bf16, 8 × [B,4096]×[4096,4096]).
# The ridge point is ~300 FLOP/byte, so decode is memory-bound up to batch 64, mixed near the ridge (256:
# tensor 35 % and DRAM 43 % both substantial) and compute-bound from 512 on.
DECODE_BATCHES = [
    (1, gpm(85.2, 27.5, 3.9, 1.2, 48.3), "memory"),
    (16, gpm(82.7, 29.8, 4.4, 2.1, 42.5), "memory"),
    (64, gpm(84.7, 57.1, 7.9, 9.3, 46.4), "memory"),
    (256, gpm(89.7, 66.3, 10.5, 34.5, 43.4), "mixed"),
    (512, gpm(93.3, 75.7, 13.9, 60.2, 37.6), "compute"),
    (2048, gpm(97.6, 89.5, 18.0, 76.6, 31.5), "compute"),
]

# The seed's roofline table. Its decode rows use the measured decode loop; it gives no numbers for
# embeddings, so that row is a BERT-like encoder as the seed describes it (memory-bound: high DRAM
# bandwidth, low tensor activity), with illustrative ratios.
SEED_ROWS = [
    ("LLM inference, batch 1", gpm(85.2, 27.5, 3.9, 1.2, 48.3), "memory"),
    ("LLM inference, large batch (2048)", gpm(97.6, 89.5, 18.0, 76.6, 31.5), "compute"),
    ("embeddings (BERT-like encoder)", gpm(90.0, 70.0, 40.0, 15.0, 65.0), "memory"),
]

ALL_ROWS = [
    *[(f"workload: {name}", ratios, bound) for name, ratios, bound in WORKLOADS],
    *[(f"decode batch {batch}", ratios, bound) for batch, ratios, bound in DECODE_BATCHES],
    *[(f"seed: {name}", ratios, bound) for name, ratios, bound in SEED_ROWS],
]

H100 = GpuInfo(index=0, uuid="GPU-h100", name="NVIDIA H100 80GB HBM3", profiling_supported=True)


def snapshots_with(ratios_per_tick: list[dict[str, float]], info: GpuInfo = H100) -> list[Snapshot]:
    """One snapshot per second, GPM window 1 s, energy rising 300 J/s."""
    return [
        Snapshot(
            tick=tick,
            wall_time=0.0,
            monotonic_time=100.0 + tick,
            duration_seconds=0.0,
            gpus=(
                GpuSample(
                    info=info,
                    timestamp=100.0 + tick,
                    energy_joules=300.0 * tick,
                    energy_timestamp=100.0 + tick,
                    profiling=Profiling(window_seconds=1.0, ratios=ratios) if ratios else None,
                ),
            ),
        )
        for tick, ratios in enumerate(ratios_per_tick, start=1)
    ]


def exposed_bound(snapshots: list[Snapshot], deriver: Deriver) -> dict[str, float]:
    derived = None
    for snapshot in snapshots:
        derived = deriver(snapshot)
    assert derived is not None
    text = Renderer(extra=[derived_families]).render(derived).text.decode()
    return {
        s.labels["bound"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tpw_gpu_bound"
    }


@pytest.mark.parametrize(("row", "ratios", "expected"), ALL_ROWS, ids=[row for row, _, _ in ALL_ROWS])
def test_reference_row_is_classified(row: str, ratios: dict[str, float], expected: str) -> None:
    evidence = bound_evidence([Profiling(window_seconds=1.0, ratios=ratios)])
    assert evidence is not None
    assert classify_bound(evidence) == expected, (row, evidence)
    # And end to end: a window of these GPM readings gives the state set with exactly one 1.
    states = exposed_bound(snapshots_with([ratios] * 5), Deriver(window=10))
    assert set(states) == set(BOUND_STATES)
    assert [state for state, value in states.items() if value == 1.0] == [expected]
    assert sum(states.values()) == 1.0


def test_pure_decode_batch_64_is_not_compute_bound_on_an_h100() -> None:
    """The seed calls batch 64 compute-bound; the H100 measurement says tensor 9 %, DRAM 46 %."""
    ratios = next(ratios for batch, ratios, _ in DECODE_BATCHES if batch == 64)
    evidence = bound_evidence([Profiling(window_seconds=3.0, ratios=ratios)])
    assert evidence is not None and classify_bound(evidence) != "compute"


def test_fp_pipes_count_as_compute() -> None:
    """A non-tensor FP64 kernel (e.g. HPC) is compute-bound through the fp evidence."""
    ratios = {**gpm(98, 95, 40, 0, 20), "fp64_active": 0.8, "fp32_active": 0.1}
    evidence = bound_evidence([Profiling(window_seconds=1.0, ratios=ratios)])
    assert evidence is not None
    assert evidence["fp"] == pytest.approx(0.8)
    assert classify_bound(evidence) == "compute"
    assert classify_bound({**evidence, "fp": 0.0}) == "mixed"


def test_thresholds_come_from_config() -> None:
    copy = next(ratios for name, ratios, _ in WORKLOADS if name == "device-to-device copy")
    evidence = bound_evidence([Profiling(window_seconds=1.0, ratios=copy)])
    assert evidence is not None
    strict = BoundThresholds(memory_dram_at_least=0.95).thresholds()
    assert classify_bound(evidence, strict) == "mixed"
    assert BoundThresholds().thresholds() == Thresholds()


def test_classification_uses_the_window_mean_and_does_not_flap() -> None:
    """Alternating memory-like and mixed-like 1 s windows: the 10 s mean decides, every tick the same."""
    memory = gpm(85, 27, 4, 1, 60)
    borderline = gpm(85, 27, 4, 1, 30)  # alone: latency (dram < 0.4, sm < 0.3)
    deriver = Deriver(window=10)
    seen = []
    for snapshot in snapshots_with([memory, borderline] * 10):
        derived = deriver(snapshot).derived
        assert derived is not None
        seen.append(derived.gpus[0].bound)
        evidence = derived.gpus[0].evidence
    assert set(seen[4:]) == {"memory"}  # mean DRAM 0.45
    assert evidence["dram"] == pytest.approx(0.45, abs=0.031)


def test_window_mean_is_weighted_by_gpm_window_length() -> None:
    short = Profiling(window_seconds=1.0, ratios=gpm(90, 90, 10, 90, 10))
    long = Profiling(window_seconds=3.0, ratios=gpm(90, 90, 10, 10, 10))
    evidence = bound_evidence([short, long])
    assert evidence is not None
    assert evidence["tensor"] == pytest.approx((0.9 * 1 + 0.1 * 3) / 4)


def test_gpu_without_gpm_gets_no_classification() -> None:
    no_gpm = GpuInfo(index=0, uuid="GPU-a100", name="NVIDIA A100", profiling_supported=False)
    assert exposed_bound(snapshots_with([{}] * 3, info=no_gpm), Deriver(window=10)) == {}
    # A GPU whose GPM reports lack one of the signals the rules need is not guessed either.
    partial = {key: value for key, value in gpm(99, 95, 14, 93, 25).items() if key != "sm_active"}
    assert bound_evidence([Profiling(window_seconds=1.0, ratios=partial)]) is None
    assert exposed_bound(snapshots_with([partial] * 3), Deriver(window=10)) == {}


def test_a_single_snapshot_uses_its_own_gpm_window() -> None:
    copy = next(ratios for name, ratios, _ in WORKLOADS if name == "device-to-device copy")
    states = exposed_bound(snapshots_with([copy]), Deriver(window=10))
    assert states["memory"] == 1.0
