"""benchmarks/nvml_costs.py and benchmarks/device_smoke.py run on the GPU machines; here they run against
the NVML fake (its functions put in place of pynvml's), so that a broken script is found before a GPU run.
The numbers are the fake's; what is checked is that every part runs and says what it measured."""

from __future__ import annotations

import asyncio
import re
import sys

import pynvml
import pytest
from fake_nvml import Clock, FakeGpu, FakeNvml
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import device_smoke
import nvml_costs


@pytest.fixture
def fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """GPU 0 an HGX H100 (18 NVLink links), GPU 1 without NVLink."""
    fake = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1", nvlink_states=[])], Clock())
    for name in dir(fake):
        if name.startswith("nvml"):
            monkeypatch.setattr(pynvml, name, getattr(fake, name))
    return fake


def test_nvml_costs_runs_every_part(fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        nvml_costs.main(
            [
                "--repeat",
                "2",
                "--pairs",
                "2",
                "--block-ticks",
                "3",
                "--interval",
                "0.01",
                "--xid-seconds",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for gpu in (0, 1):
        assert f"GPU {gpu}: health fields add" in out and f"GPU {gpu}: the calls of one tick cost" in out
    assert (
        "NVLink error DL fields, all links (1 call, 3 fields)" in out and "ECC uncorrected aggregate" in out
    )
    assert re.search(r"NVLink data bytes \(all links\)\s+0\s+health\s", out)  # on the health cadence
    assert not re.search(r"NVLink [^\n]*\s1\s+(per tick|health)\s", out)  # GPU 1 has no NVLink
    assert "retired pages single_bit" in out and "unsupported" in out  # an H100 remaps rows instead
    assert "XID event thread:" in out
    # part 1b: the source's health read alone and on every GPU at once, with the calls that cost most
    assert re.search(r"one GPU after another: \d+\.\d\d ms of CPU per read per GPU \(ms per read: \w+", out)
    assert re.search(r"all 2 GPUs at once: \d+\.\d\d ms of CPU per read per GPU", out)
    assert "at once / one after another:" in out
    # part 2: interleaved blocks, A B then B A, and the pairs' mean difference with its interval
    blocks = re.findall(r"^\s+(\d) (without|with)\s+\d+\.\d\d\s", out, re.MULTILINE)
    assert blocks == [("0", "without"), ("0", "with"), ("1", "with"), ("1", "without")]
    assert re.search(
        r"the health fields add -?\d+\.\d{3} ± \d+\.\d{3} ms of CPU per tick \(95 % interval over 2 pairs\)",
        out,
    )
    assert "ms per GPU; budget 1 ms per GPU:" in out


def test_no_pairs_skip_the_source_ticks(fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]) -> None:
    assert nvml_costs.main(["--repeat", "1", "--pairs", "0", "--xid-seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "health fields add" in out and "NVML source tick" not in out


def test_one_pair_claims_no_interval(fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--repeat",
        "1",
        "--pairs",
        "1",
        "--block-ticks",
        "1",
        "--interval",
        "0.01",
        "--xid-seconds",
        "0.05",
    ]
    assert nvml_costs.main(args) == 0
    out = capsys.readouterr().out
    assert "(one pair: no interval)" in out and "not shown either way by one pair" in out and "±" not in out


def test_a_block_with_the_health_fields_reads_them_once_in_its_counted_ticks(fake_pynvml: FakeNvml) -> None:
    """Part 2's blocks hold the daemon's share of health reads: one per block, in its last tick (the first,
    uncounted tick reads them too); a block without them reads none."""
    nvml_costs.source_block(4, 0.1, with_health=False)
    assert "nvmlDeviceGetRemappedRows" not in fake_pynvml.calls
    nvml_costs.source_block(4, 0.1, with_health=True)
    assert fake_pynvml.calls["nvmlDeviceGetRemappedRows"] == 2 * 2  # two reads on each of the two GPUs
    assert fake_pynvml.calls["nvmlDeviceGetUtilizationRates"] == 2 * (1 + 4) * 2  # two blocks of 1 + 4 ticks


def test_device_smoke_prints_what_each_gpu_supports(
    fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_pynvml.gpus[0].remapped_rows = (0, 1, 1, 0)
    asyncio.run(device_smoke.main(ticks=2, interval=0.01))
    out = capsys.readouterr().out
    assert "GPU health (what this GPU and driver support" in out
    assert "XID events: listening; events so far: none" in out
    assert "row_remap_pending            True" in out
    assert "retired_pages_pending        absent (not supported)" in out
    assert "nvlink_links_up              18" in out
    assert "NVLink bytes: absent" in out  # GPU 1
    assert "PCIe link now: Gen 5 x16 (max Gen 5 x16" in out
    assert "clock event reasons now: sw_power_cap" in out


def test_nvml_costs_measures_per_process_and_mig_calls(
    fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]
) -> None:
    from fake_nvml import FakeMig

    fake_pynvml.gpus[1].mig_mode = 1
    fake_pynvml.gpus[1].mig_devices = [
        FakeMig(0, 1, 0, "MIG-a", "3g.40gb", 3, 60, 40_192),
        FakeMig(2, 5, 0, "MIG-b", "2g.20gb", 2, 32, 20_096),
    ]
    fake_pynvml.gpus[0].processes = (11,)
    fake_pynvml.gpus[0].process_sm = {11: 50.0}
    assert (
        nvml_costs.main(
            [
                "--repeat",
                "2",
                "--pairs",
                "1",
                "--block-ticks",
                "1",
                "--interval",
                "0.01",
                "--xid-seconds",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "GPU 0: MIG: off" in out  # what the H100s print
    assert re.search(r"process utilization \(all samples\)\s+0\s+per tick\s+\d", out)
    assert re.search(r"process utilization \(since now\)\s+1\s+per tick\s+\d", out)  # NOT_FOUND is timed
    assert "GPU 1: MIG: on, 2 MIG device(s)" in out
    assert re.search(r"MIG enumeration \(all devices\)\s+1\s+health\s+\d", out)
    assert re.search(r"MIG 1 compute processes\s+1\s+per tick\s+\d", out)
    assert re.search(r"MIG GPM window, GPU instance 5\s+1\s+per tick\s+\d", out)
    assert "GPU 1: per-process and MIG calls add" in out and "budget 1 ms" in out


def test_device_smoke_prints_mig_and_processes(
    fake_pynvml: FakeNvml, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_pynvml.gpus[0].processes = (11,)
    fake_pynvml.gpus[0].process_memory = {11: 4096}
    fake_pynvml.gpus[0].process_sm = {11: 50.0}
    fake_pynvml.gpus[1].mig_mode = None
    asyncio.run(device_smoke.main(ticks=1, interval=0.01))
    out = capsys.readouterr().out
    # the fake's clock stands still: the second tick has no new per-process sample
    assert (
        "GPU 0:\n  MIG: off\n  compute processes: 1\n    pid 11: memory 4096 B, SM utilisation no sample"
        in out
    )
    assert "GPU 1:\n  MIG: absent (not supported)" in out
