"""Derived values → metric families: throughput per watt, roofline bound, divergence, cost and carbon.

Used as `Renderer(extra=[derived_families])`. Every value that is None (undefined over the window) has no
sample at all, so a dashboard never sees NaN, Inf or a made-up 0. Formulas: `exporter.derive.window` and the
"Derived metrics" section of docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.model import BOUND_STATES, EVIDENCE_SIGNALS, DerivedEndpoint, DerivedGpu, Snapshot
from exporter.render.families import GaugeTable, gauge, table_families

WINDOW_NOTE = "over the derive window (derive.window)"
ENERGY_NOTE = "from GPU energy-counter deltas over the same ticks as the counters, not from power samples"
SHARED_NOTE = "a GPU shared by several endpoints counts by the endpoint's share of it"
FACILITY_NOTE = "facility energy = GPU energy × site.pue; host CPU/DRAM energy is not included"

ENDPOINT_GAUGES: GaugeTable[DerivedEndpoint] = (
    (
        "tpw_endpoint_window_seconds",
        "Time the endpoint's derived values cover: the ticks of the window where it was up and readable.",
        lambda e: e.window_seconds,
    ),
    (
        "tpw_endpoint_generation_tokens_per_second",
        f"Generated (output) tokens per second {WINDOW_NOTE}, counter resets handled like rate().",
        lambda e: e.generation_tokens_per_second,
    ),
    (
        "tpw_endpoint_prompt_tokens_per_second",
        f"Prompt (input) tokens per second {WINDOW_NOTE}.",
        lambda e: e.prompt_tokens_per_second,
    ),
    (
        "tpw_endpoint_requests_per_second",
        f"Finished requests per second, all outcomes summed, {WINDOW_NOTE}.",
        lambda e: e.requests_per_second,
    ),
    (
        "tpw_endpoint_power_watts",
        f"Mean power of the endpoint's attributed GPUs {WINDOW_NOTE}, {ENERGY_NOTE}; {SHARED_NOTE}.",
        lambda e: e.power_watts,
    ),
    (
        "tpw_endpoint_window_energy_joules",
        f"Energy of the endpoint's attributed GPUs {WINDOW_NOTE} ({SHARED_NOTE}).",
        lambda e: e.energy_joules,
    ),
    (
        "tpw_endpoint_tokens_per_joule",
        f"Generated tokens per joule of GPU energy: Δtokens / Δenergy over the same ticks {WINDOW_NOTE}.",
        lambda e: e.tokens_per_joule,
    ),
    (
        "tpw_endpoint_joules_per_token",
        f"GPU energy per generated token {WINDOW_NOTE}; absent while no token was generated.",
        lambda e: e.joules_per_token,
    ),
    (
        "tpw_endpoint_joules_per_request",
        f"GPU energy per finished request {WINDOW_NOTE}; absent while no request finished.",
        lambda e: e.joules_per_request,
    ),
    (
        "tpw_endpoint_gpu_utilization_ratio",
        f"Mean NVML utilization of the endpoint's attributed GPUs {WINDOW_NOTE}.",
        lambda e: e.gpu_utilization_ratio,
    ),
    (
        "tpw_endpoint_tokens_per_busy_gpu_second",
        "Generated tokens per second divided by the summed NVML utilization of the endpoint's GPUs: falls "
        "when batching breaks while utilization stays high.",
        lambda e: e.tokens_per_busy_gpu_second,
    ),
    (
        "tpw_endpoint_goodput_tokens_per_joule",
        "Generated tokens per joule counting only the requests within the endpoint's SLO: tokens per joule × "
        "the share of requests within each latency of the SLO (estimated from the engine's histograms, "
        f"inside the bucket holding the threshold; independence assumed) {WINDOW_NOTE}. Absent without an "
        "SLO or the histograms it needs.",
        lambda e: e.goodput_tokens_per_joule,
    ),
)

WORK_UNIT_GAUGES: GaugeTable[DerivedEndpoint] = (
    (
        "tpw_endpoint_work_units_per_second",
        f"Units of work (label unit) per second of a non-token endpoint {WINDOW_NOTE}.",
        lambda e: e.work_units_per_second,
    ),
    (
        "tpw_endpoint_work_units_per_joule",
        f"Units of work per joule of GPU energy of a non-token endpoint {WINDOW_NOTE}.",
        lambda e: e.work_units_per_joule,
    ),
    (
        "tpw_endpoint_joules_per_work_unit",
        f"GPU energy per unit of work of a non-token endpoint {WINDOW_NOTE}.",
        lambda e: e.joules_per_work_unit,
    ),
)

GPU_GAUGES: GaugeTable[DerivedGpu] = (
    (
        "tpw_gpu_dram_bandwidth_bytes_per_second",
        "Achieved DRAM bandwidth over the current GPM window: DRAM bandwidth utilization × peak bandwidth.",
        lambda g: g.dram_bandwidth_bytes_per_second,
    ),
    (
        "tpw_gpu_window_energy_joules",
        f"Energy the GPU used {WINDOW_NOTE}, from its energy counter (resets handled like increase()).",
        lambda g: g.energy_joules,
    ),
    (
        "tpw_gpu_window_power_watts",
        f"Mean power of the GPU {WINDOW_NOTE}: energy-counter delta / time. Sum this for node power.",
        lambda g: g.power_watts,
    ),
    (
        "tpw_gpu_idle_energy_ratio",
        f"Share of the GPU's energy {WINDOW_NOTE} spent in ticks where none of its endpoints generated "
        "anything; only GPUs attributed to an endpoint.",
        lambda g: g.idle_energy_ratio,
    ),
)


def derived_families(snapshot: Snapshot) -> Iterator[Metric]:
    """The derived metric families of a snapshot; families without samples when nothing is derived."""
    derived = snapshot.derived
    endpoints = derived.endpoints if derived is not None else ()
    gpus = derived.gpus if derived is not None else ()

    window = gauge(
        "tpw_derive_window_seconds",
        "Span the derive window actually covers now, first to last tick (grows to derive.window at start).",
        [],
    )
    if derived is not None:
        window.add_metric([], derived.window_seconds)
    yield window

    tokens = [e for e in endpoints if e.unit == "tokens"]
    yield from table_families(
        ENDPOINT_GAUGES, ["endpoint", "model"], [((e.name, e.model), e) for e in endpoints]
    )
    yield from table_families(
        WORK_UNIT_GAUGES,
        ["endpoint", "model", "unit"],
        [((e.name, e.model, e.unit), e) for e in endpoints if e.unit != "tokens"],
    )

    cost = gauge(
        "tpw_endpoint_energy_cost_per_million_tokens",
        "Electricity cost (label currency) per million generated tokens: GPU energy × site.pue × "
        f"site.electricity_price_per_kwh {WINDOW_NOTE}; {FACILITY_NOTE}.",
        ["endpoint", "model", "currency"],
    )
    co2 = gauge(
        "tpw_endpoint_co2_grams_per_million_tokens",
        "Grams of CO2 per million generated tokens: GPU energy × site.pue × "
        f"site.carbon_intensity_grams_per_kwh {WINDOW_NOTE}; {FACILITY_NOTE}.",
        ["endpoint", "model"],
    )
    currency = derived.currency if derived is not None else ""
    for endpoint in tokens:
        if endpoint.energy_cost_per_million_tokens is not None:
            cost.add_metric(
                [endpoint.name, endpoint.model, currency], endpoint.energy_cost_per_million_tokens
            )
        if endpoint.co2_grams_per_million_tokens is not None:
            co2.add_metric([endpoint.name, endpoint.model], endpoint.co2_grams_per_million_tokens)
    yield from (cost, co2)

    attainment = gauge(
        "tpw_endpoint_slo_attainment_ratio",
        f"Share of the endpoint's requests within its SLO {WINDOW_NOTE}, from the engine's latency "
        "histograms (interpolated inside the bucket holding the threshold): slo = ttft, tpot, or both (their "
        "product, independence assumed). Absent without an SLO, the histogram, or a request in the window.",
        ["endpoint", "model", "slo"],
    )
    for endpoint in endpoints:
        for attained in endpoint.slo_attainment:
            attainment.add_metric([endpoint.name, endpoint.model, attained.slo], attained.ratio)
    yield attainment

    energy = CounterMetricFamily(
        "tpw_endpoint_energy_joules",
        "GPU energy attributed to the endpoint since the exporter started (its share of a shared GPU), read "
        "in the same tick as its token and request counters: rate(tpw_endpoint_generation_tokens_total[w]) "
        "/ rate(tpw_endpoint_energy_joules_total[w]) is tokens per joule over exactly the same samples.",
        labels=["endpoint", "model"],
    )
    for total in derived.energy_totals if derived is not None else ():
        energy.add_metric([total.name, total.model], total.joules)
    yield energy

    yield from table_families(GPU_GAUGES, ["gpu"], [((str(gpu.index),), gpu) for gpu in gpus])

    bound = gauge(
        "tpw_gpu_bound",
        "Roofline bound of the GPU over the derive window, from window-mean GPM ratios: 1 for the current "
        "state (compute, memory, latency = engine busy but SMs idle, idle, mixed), 0 for the others. "
        "Absent without GPM.",
        ["gpu", "bound"],
    )
    evidence = gauge(
        "tpw_gpu_bound_evidence_ratio",
        "Window-mean GPM ratio the bound classification used: tensor, fp (max of fp16/fp32/fp64 pipes), "
        "dram (bandwidth utilization), sm (SM activity), graphics (engine activity).",
        ["gpu", "signal"],
    )
    for gpu in gpus:
        if gpu.bound is None:
            continue
        for state in BOUND_STATES:
            bound.add_metric([str(gpu.index), state], 1.0 if gpu.bound == state else 0.0)
        for signal in EVIDENCE_SIGNALS:
            if signal in gpu.evidence:
                evidence.add_metric([str(gpu.index), signal], gpu.evidence[signal])
    yield from (bound, evidence)
