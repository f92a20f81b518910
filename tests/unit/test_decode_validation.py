"""The H100 decode validation's non-GPU parts: arguments and verdicts.

The whole measurement on CPU, which starts the workload: tests/integration/test_decode_validation_workload.py.
"""

from __future__ import annotations

import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import decode_validation as validation
import decode_workload as workload


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
