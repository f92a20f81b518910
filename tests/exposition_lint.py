"""Every page `/metrics` can serve, read by the parsers that consume it (issue 12, "valid output for every
parser"): used by tests/integration/test_render_promtool.py.

- Prometheus text 0.0.4 goes through `promtool check metrics` (its parser and promlint's naming rules).
- OpenMetrics 1.0 goes through prometheus_client's strict parser
  (`prometheus_client.openmetrics.parser`: integer counts, no NaN or negative counter-like samples,
  `# EOF`, grouping…). promtool 2.42 cannot read OpenMetrics (it stops at `unknown metric type "info"`),
  so the two formats are also compared sample for sample: the OpenMetrics page carries exactly what the
  linted text page carries.

The pages are fetched from the real ASGI app (`exporter.app.create_app`) with each `Accept` header, so
format negotiation is part of what is checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fastapi.testclient import TestClient
from helpers import promtool
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.app import create_app
from exporter.daemon import published_from
from exporter.published import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Format, Published
from exporter.render.exposition import Exposition

# What Prometheus 2.x sends: OpenMetrics first, text as the fallback.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class Served:
    """A `Publication` serving whatever `Published` a test puts in `published`."""

    def __init__(self) -> None:
        self.published: Published | None = None

    def latest(self) -> Published:
        assert self.published is not None, "nothing published yet"
        return self.published

    def want_gzip(self, fmt: Format) -> None:
        return

    async def snapshot_json(self) -> bytes | None:
        return None


class App:
    """The exporter's HTTP app (`exporter.app.create_app`) over one `Published` at a time."""

    def __init__(self) -> None:
        self._served = Served()
        self._client = TestClient(create_app(self._served))

    def pages(self, published: Published | Exposition) -> tuple[str, str]:
        """(text 0.0.4, OpenMetrics) as `/metrics` serves them to a plain client and to Prometheus."""
        if isinstance(published, Exposition):
            published = published_from(published, ())
        self._served.published = published
        text = self._client.get("/metrics")
        assert text.status_code == 200 and text.headers["content-type"] == TEXT_CONTENT_TYPE
        openmetrics = self._client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert openmetrics.status_code == 200
        assert openmetrics.headers["content-type"] == OPENMETRICS_CONTENT_TYPE
        return text.text, openmetrics.text


def _samples(families: Iterable[Metric]) -> dict[SampleKey, str]:
    # repr, so that NaN equals NaN; the key is unique within one page
    found: dict[SampleKey, str] = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"sample {key} twice"
            found[key] = "NaN" if math.isnan(sample.value) else repr(float(sample.value))
    return found


def openmetrics_families(openmetrics: str, where: str) -> list[Metric]:
    """The page through the strict OpenMetrics parser; an AssertionError naming `where` if it refuses it."""
    try:
        return list(parse_openmetrics(openmetrics))
    except ValueError as exc:
        raise AssertionError(f"{where}: the strict OpenMetrics parser rejects the page: {exc}") from None


def assert_openmetrics_valid(openmetrics: str, where: str) -> list[Metric]:
    families = openmetrics_families(openmetrics, where)
    assert openmetrics.endswith("# EOF\n"), where
    return families


def assert_valid(text: str, openmetrics: str, where: str) -> list[Metric]:
    """promtool on the text page, the strict parser on the OpenMetrics page, the same samples in both.

    Returns the OpenMetrics families, for the caller's own checks of what the page holds.
    """
    result = promtool("check", "metrics", input_text=text)
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not problems, f"{where}: promtool check metrics: {problems}"
    families = assert_openmetrics_valid(openmetrics, where)
    text_samples, om_samples = _samples(parse_text(text)), _samples(families)
    only_text = sorted(text_samples.keys() - om_samples.keys())
    only_om = sorted(om_samples.keys() - text_samples.keys())
    assert not only_text and not only_om, (
        f"{where}: text only {only_text[:5]}, OpenMetrics only {only_om[:5]}"
    )
    differ = [key for key in text_samples if text_samples[key] != om_samples[key]]
    assert not differ, f"{where}: values differ between the formats: {differ[:5]}"
    return families


def sample_values(families: Iterable[Metric]) -> dict[SampleKey, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
