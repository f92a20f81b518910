"""benchmarks/alignment.py: its Prometheus rate() model matches promtool, its truth is exact, it passes.

promtool and the script as a process: tests/integration/test_alignment_benchmark_promtool_and_script.py.
"""

from __future__ import annotations

import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import alignment

from exporter.demo.scenarios import Scenario


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


def test_the_exporters_counters_are_aligned_and_two_scrapes_are_not() -> None:
    """rate(tokens)/rate(energy) from one exposition: off its span's truth by the 100 ms quantization only."""
    errors = alignment.simulate(30.0, duration=600.0)
    assert errors.counters_span_p95 < 1.0
    assert errors.two_scrapes_span > 5 * errors.counters_span  # the 0.37 s offset between the two targets
    assert errors.counters < errors.two_scrapes
    # against [T − w, T] staleness dominates every scraped value: several %, for the counters too
    assert errors.counters > 10 * errors.counters_span


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        alignment.main(["--windows", "10"])  # shorter than two scrapes
    with pytest.raises(SystemExit):
        alignment.main(["--offset", "20"])
