"""Endpoint samples → metric families: health, attribution and the normalized serving counters."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.histograms import KINDS
from exporter.model import (
    ATTRIBUTION_PENDING,
    ENDPOINT_COUNTER_FIELDS,
    ENDPOINT_FIELDS,
    EndpointField,
    EndpointSample,
    Snapshot,
)
from exporter.render.families import gauge
from exporter.render.latency import latency_families

LABELS = ["endpoint", "engine", "model"]
# Fields with a label of their own (requests_total: outcome, work_units_total: unit) or in a latency
# histogram (exporter.render.latency).
_OWN_FAMILY_FIELDS = frozenset(
    {"requests_total", "work_units_total"}
    | {field for kind in KINDS.values() for field in (kind.sum_field, kind.count_field)}
)
# The other fields, one family each: tpw_endpoint_<field without _total>, a counter or a gauge like the field.
SIMPLE_FIELDS: tuple[EndpointField, ...] = tuple(
    f for f in ENDPOINT_FIELDS if f.name not in _OWN_FAMILY_FIELDS
)
_FIELD_HELP: dict[str, str] = {f.name: f.help for f in ENDPOINT_FIELDS}


def counter_value(value: float) -> float | None:
    """An engine's counter-like value as rendered: None (no sample) unless finite and ≥ 0.

    OpenMetrics forbids NaN and negative `_total`, `_sum` and `_count` samples (a strict parser rejects the
    whole page); such a value is a broken engine page, not a measurement. Pages are checked where they are
    read (`exporter.sources.page.limit_series` leaves such series out and counts them), so this is only the
    last guard for the output's validity, whatever built the snapshot.
    """
    return value if math.isfinite(value) and value >= 0 else None


def simple_metric_name(field: EndpointField) -> str:
    """The metric family of a simple field: `tpw_endpoint_` + the field's name without `_total`."""
    return f"tpw_endpoint_{field.name.removesuffix('_total')}"


def _health_families(endpoints: tuple[EndpointSample, ...]) -> Iterator[Metric]:
    up = gauge(
        "tpw_endpoint_up",
        "1 if the endpoint's metrics page was scraped and understood this tick.",
        labels=["endpoint", "engine"],
    )
    duration = gauge(
        "tpw_endpoint_scrape_duration_seconds",
        "Time the last scrape of the endpoint took.",
        labels=["endpoint"],
    )
    info = gauge(
        "tpw_endpoint_info",
        "Always 1: the endpoint's engine, URL (user info and query values <redacted>) and unit of work.",
        labels=["endpoint", "engine", "url", "unit"],
    )
    errors = CounterMetricFamily(
        "tpw_endpoint_scrape_errors",
        "Scrape problems since start by reason: connect, timeout, http_status, redirect, too_large, decode, "
        "no_engine, no_metrics, http, tls (handshake or certificate), auth_config (a credentials file), "
        "tls_config (a TLS file), internal, malformed_line (lines skipped).",
        labels=["endpoint", "reason"],
    )
    dropped = CounterMetricFamily(
        "tpw_endpoint_dropped_series",
        "Normalized series of the endpoint's pages left out since start, by reason: too_many_series (models "
        "past max_models), label_too_long (model name past max_label_length), invalid_value (NaN, infinite, "
        "negative, a counter past 2^53, a ratio above 1).",
        labels=["endpoint", "reason"],
    )
    resets = CounterMetricFamily(
        "tpw_endpoint_resets",
        "Scrapes since start in which the engine's counters went backwards (an engine restart or reset).",
        labels=["endpoint"],
    )
    attribution = gauge(
        "tpw_endpoint_gpu_info",
        "Always 1: a GPU attributed to the endpoint; "
        "attribution = config | auto | kubernetes (its pods' GPUs) | all (fallback: every GPU); none while "
        "auto is pending.",
        labels=["endpoint", "gpu", "attribution"],
    )
    share = gauge(
        "tpw_endpoint_gpu_energy_share_ratio",
        "Part of the GPU's energy counted as the endpoint's (1 unless endpoints share the GPU: then split by "
        "their processes' SM utilisation, or evenly); a GPU's shares add up to 1.",
        labels=["endpoint", "gpu"],
    )
    pending = gauge(
        "tpw_endpoint_attribution_pending",
        "1 while gpus: auto has not found the endpoint's GPUs yet (its energy-derived metrics are absent "
        "meanwhile), else 0.",
        labels=["endpoint"],
    )
    gpu_memory = gauge(
        "tpw_endpoint_gpu_memory_used_bytes",
        "Device memory the endpoint's own processes hold on the GPU (NVML's per-process usedGpuMemory, "
        "summed); only where its processes are known (gpus: auto).",
        labels=["endpoint", "gpu"],
    )
    gpu_sm = gauge(
        "tpw_endpoint_gpu_sm_utilization_ratio",
        "SM utilisation of the endpoint's own processes on the GPU (NVML's per-process samples since the "
        "last tick, summed, 0..1); absent where NVML has no per-process sample (idle, MIG mode).",
        labels=["endpoint", "gpu"],
    )
    start = gauge(
        "tpw_endpoint_process_start_time_seconds",
        "The engine's own process_start_time_seconds: a change marks a restart or a deploy.",
        labels=["endpoint"],
    )
    for endpoint in endpoints:
        up.add_metric([endpoint.name, endpoint.engine], 1.0 if endpoint.up else 0.0)
        duration.add_metric([endpoint.name], endpoint.duration_seconds)
        info.add_metric([endpoint.name, endpoint.engine, endpoint.url, endpoint.unit], 1.0)
        for reason, count in endpoint.errors_total:
            errors.add_metric([endpoint.name, reason], float(count))
        for reason, count in endpoint.dropped_total:
            dropped.add_metric([endpoint.name, reason], float(count))
        resets.add_metric([endpoint.name], float(endpoint.resets_total))
        for gpu in endpoint.gpus:
            attribution.add_metric([endpoint.name, str(gpu), endpoint.attribution], 1.0)
        for gpu, part in zip(endpoint.gpus, endpoint.gpu_shares, strict=False):
            share.add_metric([endpoint.name, str(gpu)], part)
        pending.add_metric([endpoint.name], 1.0 if endpoint.attribution == ATTRIBUTION_PENDING else 0.0)
        if endpoint.process_start_time_seconds is not None:
            start.add_metric([endpoint.name], endpoint.process_start_time_seconds)
        for usage in endpoint.gpu_usage:
            if usage.memory_used_bytes is not None:
                gpu_memory.add_metric([endpoint.name, str(usage.gpu)], float(usage.memory_used_bytes))
            if usage.sm_utilization_ratio is not None:
                gpu_sm.add_metric([endpoint.name, str(usage.gpu)], usage.sm_utilization_ratio)
    yield from (up, duration, info, errors, dropped, resets, attribution, share, pending, start)
    yield from (gpu_memory, gpu_sm)


def _value_families(endpoints: tuple[EndpointSample, ...]) -> Iterator[Metric]:
    live = [endpoint for endpoint in endpoints if endpoint.up]
    requests = CounterMetricFamily(
        "tpw_endpoint_requests", _FIELD_HELP["requests_total"], labels=[*LABELS, "outcome"]
    )
    work = CounterMetricFamily(
        "tpw_endpoint_work_units", _FIELD_HELP["work_units_total"], labels=[*LABELS, "unit"]
    )
    simple: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        field.name: CounterMetricFamily(simple_metric_name(field), field.help, labels=LABELS)
        if field.kind == "counter"
        else gauge(simple_metric_name(field), field.help, LABELS)
        for field in SIMPLE_FIELDS
    }
    # (endpoint, engine, model) → {field: value} for the latency sums and counts
    latency: dict[tuple[str, str, str], dict[str, float]] = {}
    for endpoint in live:
        for value in endpoint.values:
            labels = [endpoint.name, endpoint.engine, value.model]
            if value.field not in ENDPOINT_COUNTER_FIELDS:  # a gauge (checked where the page was read)
                simple[value.field].add_metric(labels, value.value)
                continue
            # A counter-like value that is NaN, infinite or negative is left out (see counter_value).
            checked = counter_value(value.value)
            if checked is None:
                continue
            if value.field == "requests_total":
                requests.add_metric([*labels, value.outcome or "unknown"], checked)
            elif value.field == "work_units_total":
                work.add_metric([*labels, endpoint.unit], checked)
            elif value.field in simple:
                simple[value.field].add_metric(labels, checked)
            else:
                latency.setdefault((endpoint.name, endpoint.engine, value.model), {})[value.field] = checked
    yield from (requests, work, *simple.values())
    yield from latency_families(live, latency)


def endpoint_families(snapshot: Snapshot) -> Iterator[Metric]:
    """All endpoint metric families of one snapshot (none when no endpoint is configured)."""
    if not snapshot.endpoints:
        return
    yield from _health_families(snapshot.endpoints)
    yield from _value_families(snapshot.endpoints)
