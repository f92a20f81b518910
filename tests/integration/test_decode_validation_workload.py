"""The H100 decode validation's workload, started for real: the whole measurement on CPU.

`benchmarks/decode_validation.py` needs an NVIDIA GPU; here its `measure()` runs end to end with the CPU
fallback of `benchmarks/decode_workload.py` (started as a process) and a simulated GPU (whose energy counter
is the ground truth), through the same Daemon + endpoint source + Deriver path. Tests that start the workload
need PyTorch (`make test` installs the CPU build).

Arguments and verdicts: tests/unit/test_decode_validation.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import decode_validation as validation

from exporter.sources.simulated import SimulatedSource


def require_torch() -> None:
    """The CPU build of PyTorch is a test dependency (`make test` installs torch==2.13.0); never skip."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("PyTorch is missing: `make test` installs the CPU build (torch==2.13.0)")


def test_workload_smoke_on_cpu() -> None:
    require_torch()
    port = validation.free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(validation.WORKLOAD),
            "3",
            "--port",
            str(port),
            "--seconds",
            "30",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        asyncio.run(validation.wait_for_tokens(url, process, timeout=60))  # type: ignore[arg-type]
        first = asyncio.run(validation.read_counter(url))
        second = asyncio.run(validation.read_counter(url))
        assert first is not None and second is not None and second >= first > 0
        assert first % 3 == 0  # batch tokens per step
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert '"device": "cpu"' in out and '"batch": 3' in out


@pytest.mark.parametrize("fallback", [False, True], ids=["exporter-endpoint-source", "httpx-fallback"])
def test_measure_end_to_end_on_cpu_with_a_simulated_gpu(
    fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_torch()
    if fallback:
        monkeypatch.setitem(
            sys.modules, "exporter.sources.endpoints", None
        )  # import fails as without pydantic
    gpus = SimulatedSource(gpus=1, scenario="memory-bound")

    def energy() -> float:
        return gpus.scenario.energy_joules(0, gpus.elapsed())

    result = asyncio.run(
        validation.measure(
            1,
            gpu=0,
            gpu_source=gpus,
            energy_probe=energy,
            window=3.0,
            interval=0.5,
            warmup=0.5,
            startup_timeout=60,
            workload_args=["--device", "cpu"],
        )
    )
    assert result.problem is None, result.problem
    assert result.endpoint_path.startswith("built-in httpx" if fallback else "exporter.sources.endpoints")
    assert result.window_seconds == pytest.approx(3.0, abs=0.3)
    assert result.bound == "memory"  # the simulated GPU runs the device-to-device copy profile
    assert set(result.evidence) == {"tensor", "fp", "dram", "sm", "graphics"}
    assert result.power_watts == pytest.approx(380, abs=5)
    assert result.tokens_per_second is not None and result.truth_tokens_per_second is not None
    assert result.tokens_per_second == pytest.approx(result.truth_tokens_per_second, rel=0.05)
    assert result.error_percent is not None and abs(result.error_percent) < 2.0
    assert validation.failures([result], 2.0) == []
