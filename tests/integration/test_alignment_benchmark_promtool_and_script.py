"""benchmarks/alignment.py through real processes: its Prometheus rate() model matches promtool, and the
script passes. Its truth and arguments, in process: tests/unit/test_alignment_benchmark.py."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import REPO, promtool

sys.path.insert(0, str(REPO / "benchmarks"))

import alignment


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
    assert "OK: the counters beat two scrapes for every window and are aligned within 1 %" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith(("30s", "60s"))]
    assert [row[0] for row in rows] == ["30s", "60s"]
    for row in rows:  # counters over their samples' span (alignment error alone) < two scrape targets
        assert float(row[10].rstrip("%")) < float(row[12].rstrip("%"))
