"""Serving-engine profiles: which source samples feed which normalized field.

Each :class:`EngineProfile` lists, per normalized field, candidate sources in preference order
(newest metric name first). :func:`normalize` picks, for every field and every model, the first
candidate that has samples on the page, so an engine that renamed a metric between versions is
read either way and never counted twice. Citations for every name are in ``docs/engines.md``; the
normalized fields themselves are ``exporter.model.ENDPOINT_FIELDS``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.histograms import KINDS, MAX_ENGINE_BOUNDS, rebucket, valid_cumulative
from exporter.model import ENGINE_GENERIC, EndpointHistogram, EndpointValue, check_generic_mapping
from exporter.promtext import Sample

__all__ = [
    "OUTCOMES",
    "PROFILES",
    "EngineProfile",
    "FieldSource",
    "HistogramSource",
    "NormalizedSeries",
    "detect_engine",
    "generic_profile",
    "is_detection_name",
    "normalize",
    "normalize_histograms",
]

OUTCOMES: tuple[str, ...] = ("success", "failure", "aborted", "other", "unknown")
"""Values of the ``outcome`` of ``requests_total``; ``unknown`` when the engine has no split."""

_MEAN_FIELDS = frozenset({"kv_cache_usage_ratio"})
"""Fields averaged (not summed) over the series of one model, e.g. over data-parallel ranks."""

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _no_labels() -> Mapping[str, str]:
    """The shared empty label mapping (a dataclass default factory)."""
    return _EMPTY


@dataclass(frozen=True)
class FieldSource:
    """One source metric of a normalized field.

    ``metric`` is the sample name as exposed (``vllm:generation_tokens_total``,
    ``foo_sum``…). Each sample value is multiplied by ``scale`` (0.01 for percent, 1e-3 for
    ms, 1e-6 for µs). Only samples whose labels equal every pair of ``match`` are read.
    For ``requests_total`` the outcome of a sample is ``outcome_map[labels[outcome_label]]``,
    falling back to ``outcome`` when the label is absent or its value is not mapped.
    With ``divide_by``, the value is this metric over that one, both summed per model
    (e.g. used over total KV-cache blocks).
    """

    metric: str
    scale: float = 1.0
    outcome: str = "unknown"
    outcome_label: str | None = None
    outcome_map: Mapping[str, str] = field(default_factory=_no_labels, hash=False)
    match: Mapping[str, str] = field(default_factory=_no_labels, hash=False)
    divide_by: FieldSource | None = None

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether a sample with these labels belongs to this source."""
        return all(labels.get(key) == value for key, value in self.match.items())

    def outcome_of(self, labels: Mapping[str, str]) -> str:
        """The normalized outcome of a sample with these labels."""
        raw = labels.get(self.outcome_label) if self.outcome_label else None
        return self.outcome if raw is None else self.outcome_map.get(raw, self.outcome)

    def metrics(self) -> Iterator[str]:
        """Every sample name this source reads."""
        yield self.metric
        if self.divide_by is not None:
            yield from self.divide_by.metrics()


Candidate = tuple[FieldSource, ...]
"""Sources summed together to make one candidate reading of a field (e.g. success + failure)."""


@dataclass(frozen=True)
class HistogramSource:
    """One source histogram of a latency kind (``exporter.histograms.KINDS``).

    ``base`` is the histogram's name without suffix: its ``_bucket`` samples are read for the buckets,
    its ``_sum`` and ``_count`` into the kind's normalized fields. Bucket bounds (``le``) and the sum are
    multiplied by ``scale`` (1e-3 for ms); counts are not.
    """

    base: str
    scale: float = 1.0


LatencySources = Mapping[str, tuple[HistogramSource, ...]]
"""Per latency kind, its source histograms in preference order (newest or most precise first)."""


@dataclass(frozen=True, eq=False)
class EngineProfile:
    """How to read one serving engine's metrics page.

    ``fields`` maps a normalized field to its candidates in preference order; ``model_labels``
    are the source labels carrying the model name (first present wins, ``""`` when none);
    ``detect`` are the sample-name prefixes that identify the engine; ``work_unit`` is what
    ``work_units_total`` counts; ``citation`` says where the names come from. Profiles compare
    and hash by identity.
    """

    name: str
    fields: Mapping[str, tuple[Candidate, ...]]
    model_labels: tuple[str, ...]
    detect: tuple[str, ...]
    citation: str
    work_unit: str = "tokens"
    histograms: LatencySources = field(default_factory=lambda: MappingProxyType({}))

    def wanted_names(self) -> frozenset[str]:
        """Every sample name the profile may read, for :func:`exporter.promtext.parse_selected`."""
        return frozenset(
            name
            for candidates in self.fields.values()
            for candidate in candidates
            for source in candidate
            for name in source.metrics()
        ) | {f"{source.base}_bucket" for sources in self.histograms.values() for source in sources}

    def model_of(self, labels: Mapping[str, str]) -> str:
        """The model a sample belongs to."""
        return next((labels[label] for label in self.model_labels if label in labels), "")


NormalizedSeries = EndpointValue
"""One normalized value of an endpoint, per field, model and (for requests) outcome."""


def _labels(**pairs: str) -> Mapping[str, str]:
    """A read-only label mapping, for ``match`` and ``outcome_map``."""
    return MappingProxyType(pairs)


def _one(metric: str, scale: float = 1.0, match: Mapping[str, str] = _EMPTY) -> Candidate:
    """A candidate made of a single source."""
    return (FieldSource(metric, scale=scale, match=match),)


def _latency(sources: LatencySources) -> dict[str, tuple[Candidate, ...]]:
    """The ``_sum`` and ``_count`` fields of each latency kind, read from its histograms in the same order
    as its buckets (:func:`normalize_histograms`)."""
    fields: dict[str, tuple[Candidate, ...]] = {}
    for kind, histograms in sources.items():
        fields[KINDS[kind].sum_field] = tuple(_one(f"{h.base}_sum", scale=h.scale) for h in histograms)
        fields[KINDS[kind].count_field] = tuple(_one(f"{h.base}_count") for h in histograms)
    return fields


# vLLM finish reasons: vllm/v1/engine/__init__.py FINISH_REASON_STRINGS (V0: vllm/sequence.py).
_VLLM_OUTCOMES = _labels(
    stop="success", length="success", repetition="success", abort="aborted", error="failure"
)

# Per-request TPOT (v0.11+) before the per-token inter-token latency (its new and its deprecated name).
_VLLM_LATENCY: LatencySources = {
    "ttft": (HistogramSource("vllm:time_to_first_token_seconds"),),
    "tpot": (
        HistogramSource("vllm:request_time_per_output_token_seconds"),
        HistogramSource("vllm:inter_token_latency_seconds"),
        HistogramSource("vllm:time_per_output_token_seconds"),
    ),
    "e2e": (HistogramSource("vllm:e2e_request_latency_seconds"),),
    "queue": (HistogramSource("vllm:request_queue_time_seconds"),),
}

VLLM = EngineProfile(
    name="vllm",
    fields={
        "requests_total": (
            (
                FieldSource(
                    "vllm:request_success_total",
                    outcome="other",
                    outcome_label="finished_reason",
                    outcome_map=_VLLM_OUTCOMES,
                ),
            ),
        ),
        "prompt_tokens_total": (_one("vllm:prompt_tokens_total"),),
        "generation_tokens_total": (_one("vllm:generation_tokens_total"),),
        "requests_running": (_one("vllm:num_requests_running"),),
        "requests_waiting": (_one("vllm:num_requests_waiting"),),
        # Renamed in v0.9; both are 0..1 fractions ("1 means 100 percent usage").
        "kv_cache_usage_ratio": (_one("vllm:kv_cache_usage_perc"), _one("vllm:gpu_cache_usage_perc")),
        **_latency(_VLLM_LATENCY),
    },
    model_labels=("model_name",),
    detect=("vllm:",),
    citation="vllm-project/vllm vllm/engine/metrics.py (V0 engine), vllm/v1/metrics/loggers.py (V1 engine)",
    histograms=_VLLM_LATENCY,
)

_SGLANG_LATENCY: LatencySources = {
    "ttft": (HistogramSource("sglang:time_to_first_token_seconds"),),
    "tpot": (
        HistogramSource("sglang:inter_token_latency_seconds"),
        HistogramSource("sglang:time_per_output_token_seconds"),
    ),
    "e2e": (HistogramSource("sglang:e2e_request_latency_seconds"),),
    "queue": (HistogramSource("sglang:queue_time_seconds"),),
}

SGLANG = EngineProfile(
    name="sglang",
    fields={
        "requests_total": (_one("sglang:num_requests_total"),),
        "prompt_tokens_total": (_one("sglang:prompt_tokens_total"),),
        "generation_tokens_total": (_one("sglang:generation_tokens_total"),),
        "requests_running": (_one("sglang:num_running_reqs"),),
        "requests_waiting": (_one("sglang:num_queue_reqs"),),
        # num_used_tokens / max_total_num_tokens of the KV pool, a 0..1 fraction.
        "kv_cache_usage_ratio": (_one("sglang:token_usage"),),
        **_latency(_SGLANG_LATENCY),
    },
    model_labels=("model_name",),
    detect=("sglang:",),
    citation="sgl-project/sglang python/sglang/srt/metrics/collector.py",
    histograms=_SGLANG_LATENCY,
)

# No time to first token; the mean time per token is one observation per successful request.
_TGI_LATENCY: LatencySources = {
    "tpot": (HistogramSource("tgi_request_mean_time_per_token_duration"),),
    "e2e": (HistogramSource("tgi_request_duration"),),
    "queue": (HistogramSource("tgi_request_queue_duration"),),
}

TGI = EngineProfile(
    name="tgi",
    fields={
        "requests_total": (
            (
                FieldSource("tgi_request_success", outcome="success"),
                FieldSource(
                    "tgi_request_failure",
                    outcome="failure",
                    outcome_label="err",
                    outcome_map=_labels(dropped="aborted"),
                ),
            ),
        ),
        "prompt_tokens_total": (_one("tgi_request_input_length_sum"),),
        "generation_tokens_total": (_one("tgi_request_generated_tokens_sum"),),
        "requests_running": (_one("tgi_batch_current_size"),),
        "requests_waiting": (_one("tgi_queue_size"),),
        **_latency(_TGI_LATENCY),
    },
    model_labels=(),
    detect=("tgi_",),
    citation="huggingface/text-generation-inference docs/source/reference/metrics.md, router/src/server.rs",
    histograms=_TGI_LATENCY,
)

_TRT_LLM_KV = "nv_trt_llm_kv_cache_block_metrics"
_TRT_LLM_REQUESTS = "nv_trt_llm_request_metrics"

# Time to first response of decoupled models (--metrics-config histogram_latencies=true), in milliseconds.
_TRITON_LATENCY: LatencySources = {
    "ttft": (HistogramSource("nv_inference_first_response_histogram_ms", scale=1e-3),),
}

TRITON = EngineProfile(
    name="triton",
    fields={
        "requests_total": (
            (
                FieldSource("nv_inference_request_success", outcome="success"),
                FieldSource(
                    "nv_inference_request_failure",
                    outcome="failure",
                    outcome_label="reason",
                    outcome_map=_labels(CANCELED="aborted"),
                ),
            ),
        ),
        "prompt_tokens_total": (
            _one("nv_llm_input_token_len_sum", match=_labels(response_metric_type="total_input_tokens")),
        ),
        "generation_tokens_total": (
            _one("nv_llm_output_token_len_sum", match=_labels(response_metric_type="total_output_tokens")),
        ),
        "requests_running": (_one(_TRT_LLM_REQUESTS, match=_labels(request_type="scheduled")),),
        "requests_waiting": (
            _one(_TRT_LLM_REQUESTS, match=_labels(request_type="waiting")),
            _one("nv_inference_pending_request_count"),
        ),
        "kv_cache_usage_ratio": (
            _one(_TRT_LLM_KV, match=_labels(kv_cache_block_type="fraction")),
            (
                FieldSource(
                    _TRT_LLM_KV,
                    match=_labels(kv_cache_block_type="used"),
                    divide_by=FieldSource(_TRT_LLM_KV, match=_labels(kv_cache_block_type="max")),
                ),
            ),
        ),
        **_latency(_TRITON_LATENCY),
        # Cumulative microsecond counters (default) or the optional summary; both cover successes only.
        "e2e_latency_seconds_sum": (
            _one("nv_inference_request_duration_us", scale=1e-6),
            _one("nv_inference_request_summary_us_sum", scale=1e-6),
        ),
        "e2e_latency_seconds_count": (
            _one("nv_inference_request_success"),
            _one("nv_inference_request_summary_us_count"),
        ),
    },
    model_labels=("model",),
    detect=("nv_inference_", "nv_trt_llm_"),
    citation=(
        "triton-inference-server/server docs/user_guide/metrics.md; "
        "triton-inference-server/tensorrtllm_backend "
        "inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc, "
        "all_models/inflight_batcher_llm/tensorrt_llm/1/model.py"
    ),
    histograms=_TRITON_LATENCY,
)

LLAMACPP = EngineProfile(
    name="llamacpp",
    fields={
        "prompt_tokens_total": (_one("llamacpp:prompt_tokens_total"),),
        "generation_tokens_total": (_one("llamacpp:tokens_predicted_total"),),
        "requests_running": (_one("llamacpp:requests_processing"),),
        "requests_waiting": (_one("llamacpp:requests_deferred"),),
        # used cells / n_ctx, removed from /metrics by ggml-org/llama.cpp#13660.
        "kv_cache_usage_ratio": (_one("llamacpp:kv_cache_usage_ratio"),),
    },
    model_labels=(),
    detect=("llamacpp:",),
    citation="ggml-org/llama.cpp examples/server/server.cpp, later tools/server/server-context.cpp",
)

PROFILES: dict[str, EngineProfile] = {
    profile.name: profile for profile in (VLLM, SGLANG, TGI, TRITON, LLAMACPP)
}

# Engine-specific prefixes first: Triton's own metrics can sit on a page next to a backend's.
_DETECT_ORDER = ("vllm", "sglang", "tgi", "llamacpp", "triton")
_DETECT_PREFIXES = tuple(prefix for name in _DETECT_ORDER for prefix in PROFILES[name].detect)


def is_detection_name(name: str) -> bool:
    """Whether a sample name can identify an engine (a cheap ``wanted`` for auto-detection)."""
    return name.startswith(_DETECT_PREFIXES)


def detect_engine(items: Iterable[Sample] | Iterable[str]) -> str | None:
    """The profile name of the engine whose samples (or sample names) these are, or ``None``."""
    found: set[str] = set()
    for item in items:
        name = item if isinstance(item, str) else item.name
        if is_detection_name(name):
            found.update(engine for engine in _DETECT_ORDER if name.startswith(PROFILES[engine].detect))
    return next((engine for engine in _DETECT_ORDER if engine in found), None)


def generic_profile(
    mapping: Mapping[str, str], unit: str, *, model_labels: tuple[str, ...] = ()
) -> EngineProfile:
    """A profile built from user configuration: normalized field -> exact source sample name.

    ``unit`` is what the endpoint's work is counted in (``tokens``, ``images``, ``samples``…);
    ``work_units_total`` may only be mapped when it is not ``tokens``. Raises ``ValueError``
    naming the offending key, and the allowed ones, on a bad mapping.
    """
    check_generic_mapping(mapping, unit)
    return EngineProfile(
        name=ENGINE_GENERIC,
        fields={key: (_one(metric.strip()),) for key, metric in mapping.items()},
        model_labels=model_labels,
        detect=(),
        citation="user configuration",
        work_unit=unit,
    )


SeriesKey = tuple[str, str | None]
"""(model, outcome) of a normalized value; outcome is ``None`` outside ``requests_total``."""


def normalize(profile: EngineProfile, samples: Iterable[Sample]) -> list[NormalizedSeries]:
    """Map a page's samples to normalized series, one per (field, model, outcome).

    Values are summed over every other label (engine rank, ``le``-less duplicates, finish
    reasons mapping to one outcome…), except ``kv_cache_usage_ratio`` which is averaged.
    For each field and model the first candidate with samples wins, so old and new names of a
    renamed metric are never added together.
    """
    wanted = profile.wanted_names()
    by_metric: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.name in wanted:
            by_metric[sample.name].append(sample)
    series: list[NormalizedSeries] = []
    for name, candidates in profile.fields.items():
        series.extend(_normalize_field(profile, name, candidates, by_metric))
    return series


def _normalize_field(
    profile: EngineProfile,
    name: str,
    candidates: tuple[Candidate, ...],
    by_metric: Mapping[str, list[Sample]],
) -> Iterator[NormalizedSeries]:
    """The series of one field, each model taken from the first candidate that has it."""
    covered: set[str] = set()
    for candidate in candidates:
        values = _evaluate(profile, name, candidate, by_metric)
        fresh = [(key, value) for key, value in values.items() if key[0] not in covered]
        covered.update(model for (model, _), _ in fresh)
        for (model, outcome), value in fresh:
            yield NormalizedSeries(field=name, model=model, value=value, outcome=outcome)


def _evaluate(
    profile: EngineProfile,
    name: str,
    candidate: Candidate,
    by_metric: Mapping[str, list[Sample]],
) -> dict[SeriesKey, float]:
    """Aggregate the values of one candidate per (model, outcome)."""
    totals: dict[SeriesKey, list[float]] = {}
    for source in candidate:
        for key, value in _source_values(profile, name, source, by_metric):
            total = totals.setdefault(key, [0.0, 0.0])
            total[0] += value
            total[1] += 1
    if name in _MEAN_FIELDS:
        return {key: total / count for key, (total, count) in totals.items()}
    return {key: total for key, (total, _) in totals.items()}


def _source_values(
    profile: EngineProfile,
    name: str,
    source: FieldSource,
    by_metric: Mapping[str, list[Sample]],
) -> Iterator[tuple[SeriesKey, float]]:
    """The scaled values of one source, keyed by (model, outcome)."""
    if source.divide_by is not None:
        yield from _ratio_values(profile, source, source.divide_by, by_metric)
        return
    with_outcome = name == "requests_total"
    for sample in by_metric.get(source.metric, ()):
        if source.selects(sample.labels):
            outcome = source.outcome_of(sample.labels) if with_outcome else None
            yield (profile.model_of(sample.labels), outcome), sample.value * source.scale


def _ratio_values(
    profile: EngineProfile,
    source: FieldSource,
    divisor: FieldSource,
    by_metric: Mapping[str, list[Sample]],
) -> Iterator[tuple[SeriesKey, float]]:
    """Per model, the sum of ``source`` over the sum of ``divisor`` (skipped when that is 0)."""
    numerators = _sum_by_model(profile, source, by_metric)
    denominators = _sum_by_model(profile, divisor, by_metric)
    for model, numerator in numerators.items():
        denominator = denominators.get(model)
        if denominator:
            yield (model, None), numerator / denominator * source.scale


def _sum_by_model(
    profile: EngineProfile, source: FieldSource, by_metric: Mapping[str, list[Sample]]
) -> dict[str, float]:
    """Sum of a source's selected samples per model, unscaled."""
    sums: dict[str, float] = defaultdict(float)
    for sample in by_metric.get(source.metric, ()):
        if source.selects(sample.labels):
            sums[profile.model_of(sample.labels)] += sample.value
    return sums


# ---------------------------------------------------------------------------------------------------------
# Latency histograms


def normalize_histograms(
    profile: EngineProfile, samples: Iterable[Sample]
) -> tuple[list[EndpointHistogram], Counter[str]]:
    """The page's latency histograms with buckets, one per (kind, model), and what was left out by reason.

    For each kind and model the histogram is the first of the kind's sources with a ``_count`` sample for
    the model, the one its ``_sum``/``_count`` fields come from (:func:`normalize`). Its ``_bucket``
    samples are summed per ``le`` over every other label (ranks, like the counters), scaled to seconds and
    re-bucketed onto the kind's fixed bounds (``exporter.histograms``). A histogram whose counts are not a
    histogram's (a bound that is not a number, no ``+Inf`` bucket, counts NaN, negative, past 2**53 or
    decreasing in ``le``) is left out as ``invalid_value``; one with more than MAX_ENGINE_BOUNDS finite
    bounds as ``too_many_series``. A source with ``_count`` but no ``_bucket`` samples has no histogram
    (its sum and count are still fields).
    """
    roles: dict[str, tuple[str, int, bool]] = {}  # sample name → (kind, source index, is a bucket)
    for kind, sources in profile.histograms.items():
        for index, source in enumerate(sources):
            roles[f"{source.base}_count"] = (kind, index, False)
            roles[f"{source.base}_bucket"] = (kind, index, True)
    chosen: dict[tuple[str, str], int] = {}  # (kind, model) → the first source with a count
    buckets: dict[tuple[str, int, str], dict[float, float]] = {}  # (kind, source, model) → le → count
    broken: set[tuple[str, int, str]] = set()
    for sample in samples:
        role = roles.get(sample.name)
        if role is None:
            continue
        kind, index, is_bucket = role
        model = profile.model_of(sample.labels)
        if not is_bucket:
            if index < chosen.get((kind, model), len(profile.histograms[kind])):
                chosen[(kind, model)] = index
            continue
        key = (kind, index, model)
        le = _bound(sample.labels.get("le"))
        if le is None:
            broken.add(key)
            continue
        per_le = buckets.setdefault(key, {})
        per_le[le] = per_le.get(le, 0.0) + sample.value
    histograms: list[EndpointHistogram] = []
    dropped: Counter[str] = Counter()
    for (kind, model), index in chosen.items():
        key = (kind, index, model)
        if key not in buckets:
            continue
        if key in broken:
            dropped["invalid_value"] += 1
            continue
        scale = profile.histograms[kind][index].scale
        histogram = _histogram(kind, model, buckets[key], scale, dropped)
        if histogram is not None:
            histograms.append(histogram)
    return histograms, dropped


def _bound(text: str | None) -> float | None:
    """A bucket's ``le`` as a number (``+Inf`` included), or None when it is not one."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if value >= 0 else None  # NaN, negative: no latency bound


def _histogram(
    kind: str, model: str, per_le: dict[float, float], scale: float, dropped: Counter[str]
) -> EndpointHistogram | None:
    total = per_le.get(math.inf)
    finite = sorted((le, count) for le, count in per_le.items() if le != math.inf)
    if len(finite) > MAX_ENGINE_BOUNDS:
        dropped["too_many_series"] += 1
        return None
    counts = [count for _, count in finite]
    if total is None or not valid_cumulative(counts, total):
        dropped["invalid_value"] += 1
        return None
    # Engines count whole observations: rounding only changes a float artefact (or a malformed page's
    # fraction) by less than one, and keeps the counts cumulative.
    whole = tuple(round(count) for count in counts)
    bounds = tuple(le * scale for le, _ in finite)
    return EndpointHistogram(
        kind=kind,
        model=model,
        bounds=bounds,
        counts=whole,
        count=round(total),
        buckets=rebucket(bounds, whole, KINDS[kind].bounds),
    )
