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
        nvml_costs.main(["--repeat", "2", "--ticks", "2", "--interval", "0.01", "--xid-seconds", "0.1"]) == 0
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
    assert "without the health fields: wall" in out and "with them (health read every 30 s): wall" in out
    assert "the health fields add" in out and "ms per GPU; budget 1 ms per GPU" in out


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
