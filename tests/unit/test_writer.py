"""The exposition writer writes the very bytes prometheus_client does: the exporter's families, odd ones."""

from __future__ import annotations

import math

import pytest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from render_common import run_daemon, simulated_snapshot

from exporter.demo.scenarios import SCENARIO_NAMES
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer
from exporter.render.writer import expositions, go_float


class Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def assert_same_bytes(families: list[Metric]) -> None:
    text, openmetrics = expositions(families)
    assert text.decode() == generate_latest(Families(families)).decode()
    assert openmetrics.decode() == generate_openmetrics(Families(families)).decode()


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_every_demo_scenario_is_written_as_prometheus_client_writes_it(scenario: str) -> None:
    families = Renderer(extra=[derived_families]).families(simulated_snapshot(gpus=3, scenario=scenario))
    assert len(families) > 40
    assert_same_bytes(families)


def test_a_running_daemon_with_endpoints_and_derived_values_is_written_the_same() -> None:
    daemon = run_daemon()
    assert daemon.latest is not None and daemon.latest.snapshot.derived is not None
    assert_same_bytes(Renderer(extra=[derived_families]).families(daemon.latest.snapshot))


def test_escapes_values_and_types_as_prometheus_client_does() -> None:
    counter = CounterMetricFamily(
        "odd_requests", 'Help with \\ a backslash,\na newline and "quotes".', labels=["a"]
    )
    for value in ["plain", "back\\slash", "new\nline", 'quote"d', "ünïcödé ✓", "", "\\n literally"]:
        counter.add_metric([value], 3.0)
    gauge = GaugeMetricFamily("odd_value", "Values Go writes its own way.", labels=["v"], unit="bytes")
    values = [0.0, -0.0, 1.0, -2.5, 1e-7, 123456.0, 1234567.0, 1e22, 2.0**53 + 1, -1e22, math.nan, math.inf]
    for number in [*values, -math.inf]:
        gauge.add_metric([repr(number)], number)
    info = InfoMetricFamily("odd_build", "Build information.", value={"version": "1.2", "commit": 'ab"c'})
    summary = SummaryMetricFamily("odd_latency_seconds", "A summary.", labels=["m"])
    summary.add_metric(["x"], count_value=12, sum_value=3.5)
    created = CounterMetricFamily("odd_created_things", "With a created time.", labels=["k"], created=1.7e9)
    created.add_metric(["b"], 2.0, created=1.8e9)
    histogram = HistogramMetricFamily(
        "odd_size_bytes", "A histogram.", buckets=[("1.0", 2.0), ("+Inf", 5.0)], sum_value=9.0
    )
    gauge_histogram = GaugeHistogramMetricFamily(
        "odd_queue", "A gauge histogram.", buckets=[("10.0", 1.0), ("+Inf", 4.0)], gsum_value=20.0
    )
    state = StateSetMetricFamily("odd_state", "A state set.", value={"on": True, "off": False})
    unknown = UnknownMetricFamily("odd_unknown", "Untyped.", value=7.0)
    assert_same_bytes([counter, gauge, info, summary, created, histogram, gauge_histogram, state, unknown])


def test_what_it_does_not_write_itself_goes_to_prometheus_client_unchanged() -> None:
    stamped = GaugeMetricFamily("stamped_value", "With a timestamp.", labels=["a"])
    stamped.add_metric(["x"], 1.0, timestamp=1.7e9)
    exemplary = CounterMetricFamily("exemplary_requests", "With an exemplar.", labels=["a"])
    exemplary.add_metric(["x"], 4.0)
    exemplary.samples[0] = exemplary.samples[0]._replace(exemplar=Exemplar({"trace_id": "abc"}, 1.0))
    coloned = GaugeMetricFamily("job:odd_value:sum", "A recording-rule style name.", value=2.0)
    assert_same_bytes([stamped, exemplary, coloned, GaugeMetricFamily("after", "A plain one.", value=1.0)])


@pytest.mark.parametrize("number", [0.5, 1e6, 1234567.0, 12345678.9, 1e100, 5e-324, -7.0, 2.0**63])
def test_go_float_is_floattogostring(number: float) -> None:
    assert go_float(number) == floatToGoString(number)
