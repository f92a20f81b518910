"""The H100 decode validation's workload, started for real: the whole measurement without a GPU.

`benchmarks/decode_validation.py` needs an NVIDIA GPU (and PyTorch); here its `measure()` runs end to end
with `benchmarks/decode_workload.py --device python` (started as a process: the same loop, counters and
/metrics page, its products in plain Python) and a simulated GPU (whose energy counter is the ground truth),
through the same Daemon + endpoint source + Deriver path. None of it needs PyTorch, which `make test` does
not install: the PyTorch run is decode_validation.py on a GPU node (README, "Development"). Without PyTorch
the workload still parses its arguments and says in one line why it cannot run.

Arguments and verdicts: tests/unit/test_decode_validation.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import decode_validation as validation

from exporter.sources.simulated import SimulatedSource

# Runs the workload as `python decode_workload.py ARGS` would, in a Python where `import torch` fails.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(validation.WORKLOAD), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_and_argument_checks_need_no_torch() -> None:
    result = run_without_torch("--help")
    assert result.returncode == 0, result.stderr
    assert "--device {auto,cuda,cpu,python}" in result.stdout
    result = run_without_torch("0", "--port", "9000")
    assert result.returncode == 2 and "must be a positive integer, got 0" in result.stderr


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_without_torch_it_exits_2_with_one_line_saying_why(device: str) -> None:
    result = run_without_torch("3", "--port", str(validation.free_port()), "--device", device)
    assert result.returncode == 2
    assert result.stderr == (
        "decode_workload: PyTorch is not installed: pip install torch (the GPU run), or --device python "
        "for a smoke test without it\n"
    )
    assert result.stdout == ""


def test_workload_smoke_without_torch() -> None:
    port = validation.free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            str(validation.WORKLOAD),
            "3",
            "--port",
            str(port),
            "--seconds",
            "30",
            "--device",
            "python",
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
    summary = json.loads(out)
    assert (summary["device"], summary["batch"]) == ("python", 3)
    assert summary["tokens"] == 3 * summary["steps"] >= second


@pytest.mark.parametrize("fallback", [False, True], ids=["exporter-endpoint-source", "httpx-fallback"])
def test_measure_end_to_end_without_gpu_or_torch_on_a_simulated_gpu(
    fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
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
            workload_args=["--device", "python"],
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
    # The plumbing, not the accuracy (that is the GPU run's): a 3 s window of wall-clock ticks on 2 shared
    # CI cores is off by a tick's jitter, ~2 %, at worst; a broken pairing is off by far more.
    assert result.error_percent is not None and abs(result.error_percent) < 5.0
    assert validation.failures([result], 5.0) == []
