"""The H100 decode validation's non-GPU parts: arguments, verdicts, and the whole measurement on CPU.

`benchmarks/decode_validation.py` needs an NVIDIA GPU; here its `measure()` runs end to end with the CPU
fallback of `benchmarks/decode_workload.py` and a simulated GPU (whose energy counter is the ground truth),
through the same Daemon + endpoint source + Deriver path. Tests that start the workload need PyTorch and
need PyTorch (`make test` installs the CPU build).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import decode_validation as validation
import decode_workload as workload

from exporter.sources.simulated import SimulatedSource


def require_torch() -> None:
    """The CPU build of PyTorch is a test dependency (`make test` installs torch==2.13.0); never skip."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("PyTorch is missing: `make test` installs the CPU build (torch==2.13.0)")


def test_workload_arguments_are_checked() -> None:
    args = workload.parse_args(["64", "--port", "9000", "--seconds", "5"])
    assert (args.batch, args.port, args.seconds, args.device) == (64, 9000, 5.0, "auto")
    for bad in (
        ["0", "--port", "9000"],
        ["8"],
        ["8", "--port", "70000"],
        ["8", "--port", "1", "--seconds", "0"],
    ):
        with pytest.raises(SystemExit):
            workload.parse_args(bad)


def test_validation_arguments_are_checked() -> None:
    args = validation.parse_args([])
    assert (args.batches, args.seconds, args.interval, args.max_error_percent) == (
        [1, 64, 1024],
        20.0,
        1.0,
        2.0,
    )
    for bad in (["--seconds", "1"], ["--batches", "0"], ["--interval", "0"], ["--gpu", "-1"]):
        with pytest.raises(SystemExit):
            validation.parse_args(bad)


def test_counter_value_reads_a_prometheus_page() -> None:
    page = (
        "# TYPE decode_generation_tokens_total counter\n"
        "decode_generation_tokens_total 1.5e+06\n"
        "# TYPE decode_requests_total counter\n"
        'decode_requests_total{rank="0"} 10\n'
        'decode_requests_total{rank="1"} 5\n'
    )
    assert validation.counter_value(page, "decode_generation_tokens_total") == 1.5e6
    assert validation.counter_value(page, "decode_requests_total") == 15
    assert validation.counter_value(page, "absent_total") is None


def measurement(
    batch: int, bound: str | None, exporter: float | None, truth: float | None
) -> validation.Measurement:
    return validation.Measurement(
        batch=batch, endpoint_path="x", bound=bound, tokens_per_joule=exporter, truth_tokens_per_joule=truth
    )


def test_verdicts() -> None:
    good = [
        measurement(1, "memory", 17.9, 18.0),
        measurement(64, "memory", 754.0, 750.0),
        measurement(1024, "compute", 3000.0, 3010.0),
    ]
    assert validation.failures(good, 2.0) == []
    assert validation.failures([measurement(1, "latency", 10.0, 10.1)], 2.0) == []
    assert "bound mixed" in validation.failures([measurement(1, "mixed", 10.0, 10.0)], 2.0)[0]
    assert "bound memory" in validation.failures([measurement(1024, "memory", 10.0, 10.0)], 2.0)[0]
    assert "off by +3.00 %" in validation.failures([measurement(64, "mixed", 103.0, 100.0)], 2.0)[0]
    assert "no tokens per joule" in validation.failures([measurement(64, "memory", None, 100.0)], 2.0)[0]
    broken = validation.Measurement(batch=1, endpoint_path="x", problem="the workload exited with 1")
    assert validation.failures([broken], 2.0) == ["batch 1: the workload exited with 1"]
    text = validation.table(good)
    assert "compute" in text and "-0.33" in text and "+0.53" in text


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
