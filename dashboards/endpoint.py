"""The Endpoint dashboard: one serving endpoint's load, throughput, latency, and what its tokens cost in
energy."""

from __future__ import annotations

from grafana import Board, Q, dashed, fixed_color, right_axis, stat, table, timeseries
from tpw import (
    CLUSTER_VARIABLE,
    ENDPOINT,
    ENDPOINT_MODEL,
    ENDPOINT_MODEL_VARIABLE,
    ENDPOINT_VARIABLE,
    NODE,
    NODE_VARIABLE,
    RATE,
    TOKENS_PER_JOULE,
    TOKENS_PER_SECOND,
    UP_DOWN,
    WHEN_CARBON,
    WHEN_PRICE,
    WHEN_QUEUE,
    WHEN_SLO,
    WHEN_TPOT,
    alert_annotation,
    engine_deploy_annotation,
    tpw_board,
)

FILE = "tpw-endpoint.json"


def dashboard() -> Board:
    """The dashboard, laid out; `.to_json()` is what tpw-endpoint.json holds."""
    board = tpw_board(
        "tpw-endpoint",
        "TPW / Endpoint",
        "One serving endpoint: load, throughput, latency, and what its tokens cost in energy.",
        variables=[CLUSTER_VARIABLE, NODE_VARIABLE, ENDPOINT_VARIABLE, ENDPOINT_MODEL_VARIABLE],
        annotations=[alert_annotation(), engine_deploy_annotation()],
        time_from="now-1h",
        refresh="10s",
    )
    e, em = ENDPOINT, ENDPOINT_MODEL
    by = "sum by (endpoint, model)"
    # The aligned counters, per endpoint (the energy counter's `model` is "multiple" for a multi-model
    # endpoint, so they are summed over models, never matched by model).
    per_endpoint_tokens = f"sum by (endpoint) (rate(tpw_endpoint_generation_tokens_total{{{em}}}{RATE}))"
    per_endpoint_requests = f"sum by (endpoint) (rate(tpw_endpoint_requests_total{{{em}}}{RATE}))"
    per_endpoint_energy = f"sum by (endpoint) (rate(tpw_endpoint_energy_joules_total{{{em}}}{RATE}))"

    def percentiles(metric: str, conditional: str | None = None) -> list[Q]:
        """p50, p90 and p99 of a latency histogram per endpoint (over its models), and the mean, as vLLM's
        own dashboard draws them; the buckets are the exporter's fixed ones, the same for every engine."""
        buckets = f"sum by (le, endpoint) (rate({metric}_bucket{{{em}}}{RATE}))"
        mean = (
            f"sum by (endpoint) (rate({metric}_sum{{{em}}}{RATE}))"
            f" / sum by (endpoint) (rate({metric}_count{{{em}}}{RATE}))"
        )
        return [
            *(
                Q(
                    f"histogram_quantile({q}, {buckets})",
                    f"{{{{endpoint}}}} p{round(q * 100)}",
                    conditional=conditional,
                )
                for q in (0.5, 0.9, 0.99)
            ),
            Q(mean, "{{endpoint}} mean", conditional=conditional),
        ]

    percentile_colors = [
        fixed_color(".* p50", "green"),
        fixed_color(".* p90", "orange"),
        fixed_color(".* p99", "red"),
        dashed(".* mean"),
    ]
    latency_note = (
        " Percentiles by histogram_quantile over the exporter's fixed buckets (the engine's counts "
        "re-bucketed conservatively: never more requests below a bound than the engine counted there), "
        "so they compare across engines; within a bucket they are interpolated. The mean (dashed) is "
        "sum ÷ count."
    )

    board.row("Now")
    board.add(
        stat(
            "Endpoint up",
            "1 when the exporter could scrape the serving engine's metrics on its last tick.",
            [Q(f"tpw_endpoint_up{{{e}}}", "{{endpoint}}")],
            "none",
            mappings=UP_DOWN,
            graph=False,
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Requests/s",
            "Requests finished per second, every outcome (rate of the engine's request counter).",
            [Q(f"sum(rate(tpw_endpoint_requests_total{{{em}}}{RATE}))")],
            "reqps",
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Generation tokens/s",
            "Tokens generated per second by the selected endpoints (rate of the engine's token counter).",
            [Q(f"sum(rate(tpw_endpoint_generation_tokens_total{{{em}}}{RATE}))")],
            TOKENS_PER_SECOND,
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Tokens per joule",
            "Generated tokens per joule of the energy of the GPUs serving the endpoint, derived by the "
            "exporter over its own window (derive.window, default 30 s: tokens and joules of the same "
            "ticks). Kept on the exporter's gauge because it is the freshest aligned figure; a rate over "
            "the dashboard's interval lags it (the Tokens per joule chart below uses the aligned counters). "
            "Higher is better.",
            [Q(f"tpw_endpoint_tokens_per_joule{{{em}}}", "{{endpoint}} {{model}}")],
            TOKENS_PER_JOULE,
            decimals=1,
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Joules per request",
            "GPU energy per finished request over the exporter's own window (derive.window, default 30 s), "
            "its freshest figure, like Tokens per joule beside it. Lower is better; it falls as batches "
            "grow.",
            [Q(f"tpw_endpoint_joules_per_request{{{em}}}", "{{endpoint}} {{model}}")],
            "joule",
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Mean time to first token",
            "Mean TTFT of the requests that got their first token in the rate window.",
            [
                Q(
                    f"sum(rate(tpw_endpoint_time_to_first_token_seconds_sum{{{em}}}{RATE}))"
                    f" / sum(rate(tpw_endpoint_time_to_first_token_seconds_count{{{em}}}{RATE}))"
                )
            ],
            "s",
        ),
        width=4,
        height=4,
    )

    board.row("Load: batch vs queue")
    board.add(
        timeseries(
            "Requests/s by outcome",
            "Finished requests per second by outcome (success, failure, aborted…; unknown when the engine "
            "does not split them).",
            [
                Q(
                    f"sum by (endpoint, outcome) (rate(tpw_endpoint_requests_total{{{em}}}{RATE}))",
                    "{{endpoint}} {{outcome}}",
                )
            ],
            "reqps",
            stack=True,
            overrides=[fixed_color(".* failure", "red"), fixed_color(".* aborted", "orange")],
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Running (batch) vs waiting (queue)",
            "Requests the engine is running now (its batch) and requests waiting for a slot (its queue). "
            "A growing queue with a flat batch means the endpoint is saturated (KV cache or max batch); "
            "a small batch with no queue means there is not enough load to use the GPUs efficiently.",
            [
                Q(f"{by} (tpw_endpoint_requests_running{{{em}}})", "{{endpoint}} running"),
                Q(f"{by} (tpw_endpoint_requests_waiting{{{em}}})", "{{endpoint}} waiting"),
            ],
            "short",
            overrides=[fixed_color(".* waiting", "red")],
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "KV cache usage",
            "Fraction of the KV cache in use. Near 100 % the engine preempts or queues requests.",
            [Q(f"avg by (endpoint, model) (tpw_endpoint_kv_cache_usage_ratio{{{em}}})", "{{endpoint}}")],
            "percentunit",
            max_value=1,
        ),
        width=8,
        height=8,
    )

    board.row("Throughput and latency")
    board.add(
        timeseries(
            "Tokens/s: prompt vs generation",
            "Prompt (prefill) and generated (decode) tokens per second. Prefill is cheap per token "
            "(compute-bound), decode is expensive (memory-bound).",
            [
                Q(f"{by} (rate(tpw_endpoint_prompt_tokens_total{{{em}}}{RATE}))", "{{endpoint}} prompt"),
                Q(
                    f"{by} (rate(tpw_endpoint_generation_tokens_total{{{em}}}{RATE}))",
                    "{{endpoint}} generation",
                ),
            ],
            TOKENS_PER_SECOND,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Time to first token: p50, p90, p99",
            "Time from a request's arrival to its first token: the prefill and queueing delay users feel "
            "first. It rises with the queue." + latency_note,
            percentiles("tpw_endpoint_time_to_first_token_seconds"),
            "s",
            fill=0,
            overrides=percentile_colors,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Time per output token: p50, p90, p99",
            "Decode time per generated token (per request where the engine has it: vLLM 0.11+, TGI; else "
            "per inter-token gap: older vLLM, SGLang). It rises with the batch size." + latency_note,
            percentiles("tpw_endpoint_time_per_output_token_seconds", WHEN_TPOT),
            "s",
            fill=0,
            overrides=percentile_colors,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "End-to-end latency: p50, p90, p99",
            "Request latency from arrival to the last token. An engine that publishes only a duration sum "
            "and count (Triton) has the mean only." + latency_note,
            percentiles("tpw_endpoint_request_latency_seconds"),
            "s",
            fill=0,
            overrides=percentile_colors,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Queue time: p50, p90, p99",
            "Time requests wait in the engine's queue before they are scheduled. vLLM's buckets start at "
            "0.3 s: a queue-free endpoint shows its percentiles interpolated below 0.3 s." + latency_note,
            percentiles("tpw_endpoint_queue_time_seconds", WHEN_QUEUE),
            "s",
            fill=0,
            overrides=percentile_colors,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "SLO attainment",
            "Share of the endpoint's requests within its SLO (the endpoint's `slo` setting) over the "
            "exporter's window (derive.window): ttft and tpot from the engine's histograms, interpolated "
            "inside the bucket holding the threshold (exact when the threshold is one of the engine's "
            "bounds); both = their product (independence assumed).",
            [
                Q(
                    f"tpw_endpoint_slo_attainment_ratio{{{em}}}",
                    "{{endpoint}} {{slo}}",
                    conditional=WHEN_SLO,
                )
            ],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        width=8,
        height=8,
    )

    board.row("Energy efficiency")
    board.add(
        timeseries(
            "Tokens per joule",
            "Generated tokens per joule of the GPUs serving the endpoint: rate of the engine's token counter "
            "÷ rate of the endpoint's energy counter (tpw_endpoint_energy_joules_total), both read by the "
            "exporter in the same tick, so the ratio is aligned over any zoom. It rises with batch size "
            "until the GPUs are compute-bound; a drop at constant load is the signal to investigate. A "
            "multi-model endpoint's energy is not split by model (its energy counter says model "
            '"multiple"): it shows with Model = All.',
            [
                Q(
                    f"{per_endpoint_tokens} / ({per_endpoint_energy} > 0)",
                    "{{endpoint}}",
                )
            ],
            TOKENS_PER_JOULE,
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Goodput per joule: tokens within the SLO",
            "Generated tokens per joule counting only the requests within the endpoint's SLO (tokens per "
            "joule × the share within the SLO, over the exporter's window), against all tokens per joule "
            "(dashed). The gap is energy spent on tokens that came too late.",
            [
                Q(
                    f"tpw_endpoint_goodput_tokens_per_joule{{{em}}}",
                    "{{endpoint}} goodput per joule",
                    conditional=WHEN_SLO,
                ),
                Q(
                    f"{per_endpoint_tokens} / ({per_endpoint_energy} > 0)",
                    "{{endpoint}} all tokens per joule",
                ),
            ],
            TOKENS_PER_JOULE,
            fill=0,
            overrides=[dashed(".* all tokens per joule")],
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Joules per request and per token",
            "GPU energy per finished request (left axis) and per generated token (right axis): rate of the "
            "endpoint's energy counter ÷ rate of the engine's request (every outcome) or token counter, "
            "read in the same tick, so aligned over any zoom.",
            [
                Q(f"{per_endpoint_energy} / ({per_endpoint_requests} > 0)", "{{endpoint}} per request"),
                Q(f"{per_endpoint_energy} / ({per_endpoint_tokens} > 0)", "{{endpoint}} per token"),
            ],
            "joule",
            overrides=[right_axis(".* per token", "joule")],
        ),
        width=8,
        height=8,
    )
    board.add(
        timeseries(
            "Throughput per busy GPU-second",
            "Generated tokens per second of GPU busy time (NVML utilization × GPUs): how much work the "
            "engine gets out of the time its GPUs look busy. Low values with high utilization are the "
            "'99 % busy, doing little' case.",
            [Q(f"tpw_endpoint_tokens_per_busy_gpu_second{{{em}}}", "{{endpoint}} {{model}}")],
            "suffix: tok/busy GPU·s",
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Endpoint power and GPU utilization",
            "Power of the GPUs attributed to the endpoint (left) and their mean NVML utilization (right).",
            [
                Q(f"tpw_endpoint_power_watts{{{em}}}", "{{endpoint}} power"),
                Q(f"tpw_endpoint_gpu_utilization_ratio{{{em}}}", "{{endpoint}} GPU utilization"),
            ],
            "watt",
            overrides=[right_axis(".* GPU utilization", "percentunit")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Energy cost per million tokens",
            "Electricity cost of a million generated tokens at the configured site price.",
            [
                Q(
                    f"tpw_endpoint_energy_cost_per_million_tokens{{{em}}}",
                    "{{endpoint}} {{currency}}",
                    conditional=WHEN_PRICE,
                )
            ],
            "short",
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "CO₂ per million tokens",
            "Grams of CO₂ for a million generated tokens at the configured grid carbon intensity.",
            [
                Q(
                    f"tpw_endpoint_co2_grams_per_million_tokens{{{em}}}",
                    "{{endpoint}}",
                    conditional=WHEN_CARBON,
                )
            ],
            "suffix: g",
        ),
        width=12,
        height=8,
    )

    board.row("Scrape health and attribution")
    board.add(
        timeseries(
            "Endpoint scrape duration",
            "How long the exporter took to fetch and parse the engine's /metrics on each tick.",
            [Q(f"tpw_endpoint_scrape_duration_seconds{{{e}}}", "{{endpoint}}")],
            "s",
            fill=0,
        ),
        width=8,
        height=7,
    )
    board.add(
        timeseries(
            "Endpoint scrape errors/s by reason",
            "Failed scrapes of the engine per second, by reason (timeout, connection, http status, parse).",
            [
                Q(
                    f"sum by (endpoint, reason) (rate(tpw_endpoint_scrape_errors_total{{{e}}}{RATE}))",
                    "{{endpoint}} {{reason}}",
                    conditional="only after a scrape of the endpoint failed since the exporter started",
                )
            ],
            "short",
        ),
        width=8,
        height=7,
    )
    board.add(
        table(
            "Endpoint and its GPUs",
            "The endpoint's engine and URL, and the GPUs whose energy is attributed to it (attribution: "
            "configured, or found from the engine's processes).",
            [
                Q(f"max by (cluster, instance, endpoint, engine, url) (tpw_endpoint_info{{{e}}})"),
                Q(f"max by (cluster, instance, endpoint, gpu, attribution) (tpw_endpoint_gpu_info{{{e}}})"),
            ],
            columns={
                "instance": "Node",
                "endpoint": "Endpoint",
                "engine": "Engine",
                "url": "URL",
                "gpu": "GPU",
                "attribution": "Attribution",
            },
            hidden=("Time", "cluster", "Value #A", "Value #B"),
        ),
        width=8,
        height=7,
    )
    processes = "only for endpoints whose processes the exporter knows (gpus: auto, the demo)"
    board.add(
        timeseries(
            "GPU memory of the endpoint's processes",
            "Device memory the endpoint's own processes hold on each GPU (NVML per-process memory), against "
            "the GPU's memory used by everything (dashed). A steady climb while throughput falls is a leak "
            "in the engine (TPWGpuMemoryLeak names the endpoint).",
            [
                Q(
                    f"tpw_endpoint_gpu_memory_used_bytes{{{e}}}",
                    "{{endpoint}} gpu {{gpu}}",
                    conditional=processes,
                ),
                Q(
                    f"tpw_gpu_memory_used_bytes{{{NODE}}} and on (cluster, instance, gpu) "
                    f"tpw_endpoint_gpu_info{{{e}}}",
                    "gpu {{gpu}} all processes",
                ),
            ],
            "bytes",
            overrides=[dashed(".* all processes")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "SM utilisation of the endpoint's processes",
            "SM utilisation of the endpoint's own processes on each GPU (NVML per-process samples), against "
            "the GPU's SM activity from GPM (dashed). Below the GPU's: another process shares the GPU.",
            [
                Q(
                    f"tpw_endpoint_gpu_sm_utilization_ratio{{{e}}}",
                    "{{endpoint}} gpu {{gpu}}",
                    conditional=processes + "; not in MIG mode",
                ),
                Q(
                    f"tpw_gpu_sm_active_ratio{{{NODE}}} and on (cluster, instance, gpu) "
                    f"tpw_endpoint_gpu_info{{{e}}}",
                    "gpu {{gpu}} all processes (GPM)",
                ),
            ],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        width=12,
        height=8,
    )
    return board
