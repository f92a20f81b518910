"""The endpoints' latency histograms: TTFT, time per output token, end-to-end and queue time.

Each kind (`exporter.histograms.KINDS`) is one histogram family, labelled endpoint, engine, model. An engine
that publishes the histogram's buckets has them here on the kind's fixed bounds (re-bucketed where the page
was read), so `histogram_quantile` works across engines; the `+Inf` bucket and `_count` are the engine's
`+Inf` count, `_sum` its sum. An engine with a sum and a count but no buckets (Triton's request duration,
generic mappings) gets the `+Inf` bucket only: its mean is there, no made-up distribution. A kind without
a valid sum (or without a count) is absent for that model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from exporter.histograms import KINDS
from exporter.model import EndpointHistogram, EndpointSample

Series = tuple[str, str, str]  # (endpoint, engine, model)

# The `le` label of every fixed bound, written as the Prometheus client libraries write them.
_LE: dict[float, str] = {bound: floatToGoString(bound) for kind in KINDS.values() for bound in kind.bounds}


def latency_families(
    live: Iterable[EndpointSample], sums_and_counts: Mapping[Series, Mapping[str, float]]
) -> Iterator[Metric]:
    """One histogram family per kind, from the endpoints' histograms and their `_sum`/`_count` fields
    (`sums_and_counts`: per series, field → value, already checked finite and ≥ 0)."""
    histograms: dict[tuple[Series, str], EndpointHistogram] = {
        ((endpoint.name, endpoint.engine, histogram.model), histogram.kind): histogram
        for endpoint in live
        for histogram in endpoint.histograms
    }
    for kind in KINDS.values():
        family = HistogramMetricFamily(kind.metric, kind.help, labels=["endpoint", "engine", "model"])
        for series, fields in sorted(sums_and_counts.items()):
            total = fields.get(kind.sum_field)
            if total is None:
                continue
            histogram = histograms.get((series, kind.kind))
            if histogram is not None:
                count = histogram.count
                buckets = [
                    (_LE[bound], min(cumulative, count))
                    for bound, cumulative in zip(kind.bounds, histogram.buckets, strict=True)
                ]
            elif kind.count_field in fields:
                # OpenMetrics requires an integer count. Engines count whole observations, so rounding only
                # changes a float artefact (453.9999999) or a malformed page's fraction, by less than one.
                count, buckets = round(fields[kind.count_field]), []
            else:
                continue
            family.add_metric(list(series), [*buckets, ("+Inf", count)], total)
        yield family
