"""benchmarks/alignment.py: its Prometheus rate() model matches promtool, its truth is exact, it passes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, promtool

sys.path.insert(0, str(REPO / "benchmarks"))

import alignment

from exporter.demo.scenarios import Scenario


def prometheus_round(value: float, to_nearest: float) -> float:
    """PromQL round(v, to_nearest), as promql/functions.go computes it."""
    inverse = 1.0 / to_nearest
    return math.floor(value * inverse + 0.5) / inverse


def test_prometheus_rate_matches_promtool(tmp_path: Path) -> None:
    """Irregular growth, a counter reset, missed scrapes (gaps that cross the 1.1-interval extrapolation
    threshold), range edges exactly on samples and evaluation times between them."""
    values = [0, 120, 260, None, None, 900, 40, 400, None, 1500, 1501, 2400, None, None, 3100, 3300, 3300]
    samples = [(15.0 * i, float(v)) for i, v in enumerate(values) if v is not None]
    checks = []
    for eval_ms in range(30_000, 240_001, 2_370):
        for range_s in (30, 45, 60, 90):
            rate = alignment.prometheus_rate(samples, eval_ms / 1000, range_s)
            if rate is None:
                continue
            checks.append(
                {
                    "expr": f"round(rate(x[{range_s}s]), 0.000001)",
                    "eval_time": f"{eval_ms}ms",
                    "exp_samples": [{"labels": "{}", "value": prometheus_round(rate, 1e-6)}],
                }
            )
    assert len(checks) > 250
    test_file = tmp_path / "rate_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "evaluation_interval": "1s",
                "tests": [
                    {
                        "interval": "15s",
                        "input_series": [
                            {"series": "x", "values": " ".join("_" if v is None else str(v) for v in values)}
                        ],
                        "promql_expr_test": checks,
                    }
                ],
            }
        )
    )
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_left_open_range_drops_the_sample_on_the_edge() -> None:
    samples = [(0.0, 100.0), (15.0, 150.0), (30.0, 300.0), (45.0, 600.0)]
    closed = alignment.prometheus_rate(samples, 45.0, 45.0)
    open_ = alignment.prometheus_rate(samples, 45.0, 45.0, left_open=True)
    assert closed == pytest.approx(500 / 45)  # the counter's zero point is before the range: no extrapolation
    assert open_ == pytest.approx(450 * (40 / 30) / 45)  # extrapolated to the zero point, 10 s back
    assert alignment.prometheus_rate(samples[:1], 45.0, 45.0) is None


def test_engine_tokens_are_the_integral_of_the_rate() -> None:
    engine = alignment.Engine(Scenario("mixed", 4.7), gpus=2)
    step = 0.001
    total = 0.0
    t = 0.0
    while t < 40.0 - 1e-9:
        middle = t + step / 2
        total += sum(engine.rate(engine.scenario.blend_at(g, middle).end) for g in range(2)) * step
        t += step
    assert engine.tokens(40.0) == pytest.approx(total, rel=1e-6)
    assert engine.tokens(0.0) == 0


def test_quantized_energy_lags_by_at_most_one_update() -> None:
    scenario = Scenario("mixed", 4.7)
    for t in (0.05, 1.0, 7.31, 100.0):
        exact = scenario.energy_joules(0, t)
        quantized = alignment.quantized_energy(scenario, 0, t)
        assert quantized <= exact
        assert exact - quantized <= 0.1 * 700 + 1e-6


def test_short_run_passes_and_reports_both_errors() -> None:
    errors = alignment.simulate(60.0, duration=600.0)
    assert errors.points > 400
    assert 0 <= errors.aligned_at_tick < 0.5  # only the 100 ms energy quantization is left
    assert errors.aligned < errors.two_scrapes


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        alignment.main(["--windows", "10"])  # shorter than two scrapes
    with pytest.raises(SystemExit):
        alignment.main(["--offset", "20"])


def test_benchmark_script_exits_zero() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "alignment.py"),
            "--duration",
            "900",
            "--windows",
            "30",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the aligned window is more accurate" in result.stdout
