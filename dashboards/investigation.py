"""The Investigation dashboard, for on-call: load, throughput, utilization and efficiency on one time
axis, with alert, engine deploy and exporter annotations."""

from __future__ import annotations

from typing import Any

from grafana import (
    Board,
    Q,
    dashed,
    fixed_color,
    override,
    right_axis,
    state_timeline,
    timeseries,
    value_mappings,
)
from tpw import (
    ALERTS,
    BOUND_DESCRIPTION,
    BOUND_MAPPINGS,
    CLUSTER_VARIABLE,
    ENDPOINT,
    ENDPOINT_MODEL,
    ENDPOINT_MODEL_VARIABLE,
    ENDPOINT_VARIABLE,
    HEALTH_DESCRIPTION,
    HEALTH_MAPPINGS,
    NODE,
    NODE_VARIABLE,
    RATE,
    TOKENS_PER_JOULE,
    TOKENS_PER_SECOND,
    WHEN_ALERT,
    WHEN_QUEUE,
    WHEN_SLO,
    WHEN_TPOT,
    alert_annotation,
    bound_state_expr,
    engine_deploy_annotation,
    exporter_annotations,
    health_signals,
    tpw_board,
)

FILE = "tpw-investigation.json"


def dashboard() -> Board:
    """The dashboard, laid out; `.to_json()` is what tpw-investigation.json holds."""
    board = tpw_board(
        "tpw-investigation",
        "TPW / Investigation",
        "For on-call: load, throughput, utilization and efficiency on one time axis, with alert, engine "
        "deploy and exporter annotations. Start here when a TPW alert fires.",
        variables=[CLUSTER_VARIABLE, NODE_VARIABLE, ENDPOINT_VARIABLE, ENDPOINT_MODEL_VARIABLE],
        annotations=[alert_annotation(), engine_deploy_annotation(), *exporter_annotations()],
        time_from="now-3h",
        refresh="30s",
    )
    e, em, n = ENDPOINT, ENDPOINT_MODEL, NODE
    load = f"sum(tpw_endpoint_requests_running{{{em}}}) + sum(tpw_endpoint_requests_waiting{{{em}}})"
    throughput = f"sum(rate(tpw_endpoint_generation_tokens_total{{{em}}}{RATE}))"
    # Tokens per joule from the aligned counters (token and energy counters read in the same tick).
    energy = f"sum(rate(tpw_endpoint_energy_joules_total{{{em}}}{RATE}))"
    efficiency = f"{throughput} / ({energy} > 0)"
    endpoint_gpus = f"on (cluster, instance, gpu) tpw_endpoint_gpu_info{{{e}}}"

    def by_endpoint(counter: str) -> str:
        """The rate of an endpoint counter, summed per endpoint (over models, engines, outcomes)."""
        return f"sum by (endpoint) (rate({counter}{{{em}}}{RATE}))"

    def endpoint_gpus_mean(metric: str) -> str:
        """The mean of a per-GPU metric over the GPUs attributed to the selected endpoints."""
        return f"avg({metric}{{{n}}} and {endpoint_gpus})"

    def own_scale(regex: str, unit: str, color: str, width: int = 2) -> dict[str, Any]:
        """A series drawn on its own hidden 0-based scale: it fills the panel height over the time range."""
        return override(
            "byRegexp",
            regex,
            unit=unit,
            min=0,
            custom__axisPlacement="hidden",
            custom__lineWidth=width,
            color={"mode": "fixed", "fixedColor": color},
        )

    board.add(
        timeseries(
            "Divergence: load, throughput, utilization and efficiency on one time axis",
            "Load (requests running + waiting), throughput (tokens/s) and tokens per joule (token counter ÷ "
            "the endpoints' energy counter, read in the same tick) are each drawn on their own hidden "
            "scale from 0 to their maximum in the time range, so their shapes compare directly; the "
            "utilization ratios (NVML dashed, SM activity) use the 0-100 % axis. Hover for "
            "the real values. Healthy: the lines move together. Investigate where they diverge: utilization "
            "holds or rises while throughput or tokens per joule fall (the GPUs look busy and do less: see "
            "the bound state below), or load rises while throughput stays flat (saturation: queue vs "
            "batch). Annotations mark TPW alerts, engine restarts/deploys and exporter restarts/upgrades.",
            [
                Q(load, "load (running + waiting)"),
                Q(throughput, "throughput"),
                Q(endpoint_gpus_mean("tpw_gpu_utilization_ratio"), "utilization (NVML)"),
                Q(endpoint_gpus_mean("tpw_gpu_sm_active_ratio"), "SM active (GPM)"),
                Q(efficiency, "tokens per joule"),
            ],
            "percentunit",
            fill=0,
            overrides=[
                own_scale("load.*", "short", "blue"),
                own_scale("throughput", TOKENS_PER_SECOND, "green"),
                own_scale("tokens per joule", TOKENS_PER_JOULE, "red", width=3),
                override(
                    "byRegexp",
                    "utilization \\(NVML\\)",
                    max=1,
                    color={"mode": "fixed", "fixedColor": "#8e8e8e"},
                    custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                    custom__lineWidth=2,
                ),
                override("byRegexp", "SM active.*", max=1, color={"mode": "fixed", "fixedColor": "orange"}),
            ],
            calcs=("min", "max", "lastNotNull"),
        ),
        width=24,
        height=10,
    )

    board.row("Each signal in its own unit")
    board.add(
        timeseries(
            "Load: batch, queue and request rate",
            "Requests running (batch) and waiting (queue) on the left axis, finished requests per second "
            "on the right.",
            [
                Q(f"sum by (endpoint) (tpw_endpoint_requests_running{{{em}}})", "{{endpoint}} running"),
                Q(f"sum by (endpoint) (tpw_endpoint_requests_waiting{{{em}}})", "{{endpoint}} waiting"),
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_requests_total{{{em}}}{RATE}))",
                    "{{endpoint}} requests/s",
                ),
            ],
            "short",
            overrides=[fixed_color(".* waiting", "red"), right_axis(".* requests/s", "reqps")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Throughput",
            "Generated and prompt tokens per second of the selected endpoints (counter rates).",
            [
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_generation_tokens_total{{{em}}}{RATE}))",
                    "{{endpoint}} generation",
                ),
                Q(
                    f"sum by (endpoint) (rate(tpw_endpoint_prompt_tokens_total{{{em}}}{RATE}))",
                    "{{endpoint}} prompt",
                ),
            ],
            TOKENS_PER_SECOND,
        ),
        width=12,
        height=8,
    )

    def p90(metric: str) -> str:
        return f"histogram_quantile(0.9, sum by (le, endpoint) (rate({metric}_bucket{{{em}}}{RATE})))"

    board.add(
        timeseries(
            "Latency p90: time to first token, queue, per output token",
            "The 90th percentile of each latency over the exporter's fixed buckets (the same for every "
            "engine). Queueing shows first in queue time and TTFT while the batch is full; time per output "
            "token (right axis) grows with the batch. See the Endpoint dashboard for p50 and p99.",
            [
                Q(p90("tpw_endpoint_time_to_first_token_seconds"), "{{endpoint}} TTFT"),
                Q(
                    p90("tpw_endpoint_queue_time_seconds"),
                    "{{endpoint}} queue",
                    conditional=WHEN_QUEUE,
                ),
                Q(
                    p90("tpw_endpoint_time_per_output_token_seconds"),
                    "{{endpoint}} per output token",
                    conditional=WHEN_TPOT,
                ),
            ],
            "s",
            fill=0,
            overrides=[right_axis(".* per output token", "s")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Within the SLO: attainment and goodput",
            "Share of requests within the endpoint's SLO (left: ttft, tpot, both) and generated tokens "
            "within it per joule (right), over the exporter's window. Attainment falling while tokens per "
            "joule holds: the endpoint is being pushed past what its SLO allows.",
            [
                Q(f"tpw_endpoint_slo_attainment_ratio{{{em}}}", "{{endpoint}} {{slo}}", conditional=WHEN_SLO),
                Q(
                    f"tpw_endpoint_goodput_tokens_per_joule{{{em}}}",
                    "{{endpoint}} goodput tok/J",
                    conditional=WHEN_SLO,
                ),
            ],
            "percentunit",
            max_value=None,
            fill=0,
            overrides=[right_axis(".* goodput tok/J", TOKENS_PER_JOULE)],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Utilization of the endpoint's GPUs: NVML vs GPM",
            "Mean over the GPUs attributed to the selected endpoints: NVML utilization (dashed) against SM "
            "activity, tensor pipes and DRAM bandwidth utilization.",
            [
                Q(endpoint_gpus_mean("tpw_gpu_utilization_ratio"), "utilization (NVML)"),
                Q(endpoint_gpus_mean("tpw_gpu_sm_active_ratio"), "SM active"),
                Q(endpoint_gpus_mean("tpw_gpu_tensor_active_ratio"), "tensor pipes"),
                Q(endpoint_gpus_mean("tpw_gpu_dram_bandwidth_utilization_ratio"), "DRAM bandwidth"),
            ],
            "percentunit",
            max_value=1,
            fill=0,
            overrides=[dashed("utilization \\(NVML\\)")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Efficiency: tokens per joule and joules per request",
            "Tokens per joule (left) and joules per request (right) of each endpoint, from the aligned "
            "counters: rates of the engine's token and request counters and of the endpoint's energy "
            "counter, all read by the exporter in the same tick. A multi-model endpoint shows with Model = "
            "All (its energy is not split by model).",
            [
                Q(
                    f"{by_endpoint('tpw_endpoint_generation_tokens_total')}"
                    f" / ({by_endpoint('tpw_endpoint_energy_joules_total')} > 0)",
                    "{{endpoint}} tokens per joule",
                ),
                Q(
                    f"{by_endpoint('tpw_endpoint_energy_joules_total')}"
                    f" / ({by_endpoint('tpw_endpoint_requests_total')} > 0)",
                    "{{endpoint}} joules per request",
                ),
            ],
            TOKENS_PER_JOULE,
            overrides=[right_axis(".* joules per request", "joule")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Power: endpoint GPUs vs whole node",
            "Power attributed to each endpoint and the board power of all GPUs of its nodes (dashed). The "
            "gap is energy spent on GPUs serving nothing.",
            [
                Q(f"sum by (endpoint) (tpw_endpoint_power_watts{{{em}}})", "{{endpoint}}"),
                Q(f"sum by (cluster, instance) (tpw_gpu_power_watts{{{n}}})", "{{instance}} all GPUs"),
            ],
            "watt",
            overrides=[dashed(".* all GPUs")],
        ),
        width=12,
        height=8,
    )
    board.add(
        state_timeline(
            "Bound state of the endpoint's GPUs",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(n) + f" and {endpoint_gpus}", "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        width=12,
        height=8,
    )
    board.add(
        state_timeline(
            "Slow or sick? Health of the endpoint's GPUs",
            HEALTH_DESCRIPTION + " Only the GPUs attributed to the selected endpoints; the NVLink signal "
            "compares each with the best GPU of its node. When throughput falls, this says whether a GPU "
            "broke or slowed down, before you look at the load.",
            health_signals(n, n, f" and {endpoint_gpus}"),
            HEALTH_MAPPINGS,
        ),
        width=24,
        height=9,
    )
    board.add(
        state_timeline(
            "TPW alerts over time",
            "When each TPW* alert was firing in the time range.",
            [Q(ALERTS, "{{alertname}} {{instance}} {{gpu}} {{endpoint}}", conditional=WHEN_ALERT)],
            value_mappings({"1": ("firing", "red")}),
        ),
        width=24,
        height=6,
    )
    return board
