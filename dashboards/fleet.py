"""The Fleet efficiency dashboard: tokens per joule per model and node, power, throughput, what every GPU
is bound by, firing alerts."""

from __future__ import annotations

from grafana import (
    Board,
    Q,
    bargauge,
    dashed,
    gauge_column,
    link_column,
    stat,
    state_timeline,
    table,
    threshold_steps,
    timeseries,
    unit_column,
)
from tpw import (
    ALERTS,
    BOUND_DESCRIPTION,
    BOUND_MAPPINGS,
    CLUSTER_VARIABLE,
    FLEET_MODEL,
    JOB_VARIABLE,
    MODEL_VARIABLE,
    NODE,
    NODE_VARIABLE,
    TOKENS_PER_JOULE,
    TOKENS_PER_SECOND,
    WHEN_ALERT,
    alert_annotation,
    bound_state_expr,
    exporter_annotations,
    tpw_board,
)

FILE = "tpw-fleet-efficiency.json"


def dashboard() -> Board:
    """The dashboard, laid out; `.to_json()` is what tpw-fleet-efficiency.json holds."""
    board = tpw_board(
        "tpw-fleet",
        "TPW / Fleet efficiency",
        "Tokens per joule per model and node, power, throughput, what every GPU is bound by, firing alerts. "
        "Built on the recording rules of deploy/prometheus/rules/recording.yml, so it shows what the alerts "
        "see.",
        variables=[CLUSTER_VARIABLE, JOB_VARIABLE, NODE_VARIABLE, MODEL_VARIABLE],
        annotations=[alert_annotation(), *exporter_annotations()],
    )
    m, n = FLEET_MODEL, NODE
    by_model = 'cluster=~"$cluster", model=~"$model"'
    node_tokens = f"sum(instance:tpw_generation_tokens_per_second:sum{{{n}}})"
    node_power = f"sum(instance:tpw_gpu_power_watts:sum{{{n}}})"
    zero_is_healthy = threshold_steps("green", (1, "red"))

    board.row("Now")
    board.add(
        stat(
            "Tokens per joule, all GPU energy",
            "Generated tokens per joule of *all* GPU energy of the selected nodes, idle GPUs included "
            "(instance recording rules: Σ rate of the engines' token counters ÷ Σ rate of the GPUs' energy "
            "counters over the last minute; the exporter reads both in the same tick, so they are aligned). "
            "This is what the fleet really gets per joule; the per-model numbers below count only the GPUs "
            "serving each model. Not filtered by model. Higher is better.",
            [Q(f"{node_tokens} / ({node_power} > 0)")],
            TOKENS_PER_JOULE,
            decimals=1,
        ),
        width=5,
        height=4,
    )
    board.add(
        stat(
            "Generation throughput",
            "Tokens generated per second by every endpoint of the selected nodes, over the last minute "
            "(recording rule instance:tpw_generation_tokens_per_second:sum, rate of the engines' counters).",
            [Q(node_tokens)],
            TOKENS_PER_SECOND,
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "GPU power",
            "Mean power of every GPU of the selected nodes over the last minute, from the energy counters "
            "(recording rule instance:tpw_gpu_power_watts:sum): what the fleet draws, and the denominator "
            "of the tokens per joule beside it.",
            [Q(node_power)],
            "watt",
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "GPUs up",
            "GPUs read successfully on the last collection tick, out of the GPUs the exporters know. "
            "A GPU that fell off the bus or hangs counts as down (tpw_gpu_up 0).",
            [Q(f"sum(tpw_gpu_up{{{n}}})", "up"), Q(f"count(tpw_gpu_up{{{n}}})", "known")],
            "none",
            graph=False,
        ),
        width=4,
        height=4,
    )
    board.add(
        stat(
            "Exporters down",
            "Scrape targets of the selected jobs that Prometheus cannot scrape (up == 0). 0 is healthy.",
            [Q(f'count(up{{job=~"$job", {n}}} == 0) or vector(0)')],
            "none",
            thresholds=zero_is_healthy,
            graph=False,
        ),
        width=3,
        height=4,
    )
    board.add(
        stat(
            "TPW alerts firing",
            "Number of tpw-exporter alerts (TPW*) firing now; the table at the bottom lists them.",
            [Q(f"count({ALERTS}) or vector(0)")],
            "none",
            thresholds=zero_is_healthy,
            graph=False,
        ),
        width=4,
        height=4,
    )

    board.row("Efficiency")
    board.add(
        timeseries(
            "Tokens per joule by model",
            "Generated tokens per joule of the GPU energy attributed to each model's endpoints, across all "
            "nodes (recording rule model:tpw_tokens_per_joule:ratio: Σ tokens/s ÷ Σ watts of the endpoints' "
            "aligned token and energy counters over 1 minute, a ratio of sums, so a busy 8-GPU replica "
            "weighs eight times a 1-GPU one; the node filter does not apply). A model whose line "
            "drops while its throughput holds burns more energy per token: look at its batch size "
            "(Endpoint dashboard) and at what its GPUs are bound by.",
            [Q(f"model:tpw_tokens_per_joule:ratio{{{by_model}}}", "{{model}}")],
            TOKENS_PER_JOULE,
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Tokens per joule by node",
            "Generated tokens per joule of all GPU energy of each node, idle GPUs included (recording rule "
            "instance:tpw_tokens_per_joule:ratio: the engines' token counters ÷ the GPUs' energy counters, "
            "read in the same tick, over 1 minute). A node below its peers serves the same models with more "
            "energy per token, or carries idle GPUs.",
            [Q(f"instance:tpw_tokens_per_joule:ratio{{{n}}}", "{{instance}}")],
            TOKENS_PER_JOULE,
        ),
        width=12,
        height=8,
    )
    efficiency_by = "sum by (cluster, instance, model)"
    defined = f"endpoint:tpw_tokens_per_joule:ratio_rate1m{{{m}}}"  # endpoints whose ratio is defined
    board.add(
        table(
            "Efficiency by node and model (now)",
            "One row per node and model: tokens per joule of the attributed GPU energy (Σ tokens/s ÷ Σ "
            "watts of the model's endpoints on the node that have a ratio), generation throughput and "
            "attributed power, all three from the endpoint recording rules on the aligned counters over the "
            "last minute; joules per request and the mean NVML utilization of the GPUs serving it, over the "
            "exporter's derive window. A multi-model endpoint's row says model \"multiple\". Click a node "
            "to open its GPU detail.",
            [
                Q(
                    f"{efficiency_by} (endpoint:tpw_generation_tokens:rate1m{{{m}}} and {defined})"
                    f" / {efficiency_by} (endpoint:tpw_energy_joules:rate1m{{{m}}} and {defined})"
                ),
                Q(f"{efficiency_by} (endpoint:tpw_generation_tokens:rate1m{{{m}}})"),
                Q(f"{efficiency_by} (endpoint:tpw_energy_joules:rate1m{{{m}}})"),
                Q(
                    f"{efficiency_by} (tpw_endpoint_joules_per_request{{{m}}} * "
                    f"tpw_endpoint_requests_per_second{{{m}}}) / {efficiency_by} "
                    f"(tpw_endpoint_requests_per_second{{{m}}} and tpw_endpoint_joules_per_request{{{m}}})"
                ),
                Q(f"avg by (cluster, instance, model) (tpw_endpoint_gpu_utilization_ratio{{{m}}})"),
            ],
            columns={
                "instance": "Node",
                "model": "Model",
                "Value #A": "Tokens per joule",
                "Value #B": "Tokens/s",
                "Value #C": "Power",
                "Value #D": "Joules per request",
                "Value #E": "GPU utilization (NVML)",
            },
            hidden=("Time", "cluster"),
            overrides=[
                unit_column("Tokens per joule", TOKENS_PER_JOULE, decimals=1),
                unit_column("Tokens/s", TOKENS_PER_SECOND),
                unit_column("Power", "watt"),
                unit_column("Joules per request", "joule"),
                gauge_column("GPU utilization (NVML)"),
                link_column(
                    "Node",
                    "GPU detail of ${__value.raw}",
                    "/d/tpw-node-gpu?${__url_time_range}&${datasource:queryparam}&var-node=${__value.raw}",
                ),
            ],
        ),
        width=24,
        height=7,
    )

    board.row("Power and throughput")
    board.add(
        timeseries(
            "GPU power by node",
            "Board power of each node's GPUs now (solid) against the sum of their enforced power limits "
            "(dashed). Power pinned at the limit with falling tokens per joule means the GPUs throttle.",
            [
                Q(f"sum by (cluster, instance) (tpw_gpu_power_watts{{{n}}})", "{{instance}}"),
                Q(f"sum by (cluster, instance) (tpw_gpu_power_limit_watts{{{n}}})", "{{instance}} limit"),
            ],
            "watt",
            overrides=[dashed(".* limit")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Generation throughput by model",
            "Tokens generated per second per model, across all nodes (recording rule "
            "model:tpw_generation_tokens_per_second:sum; the node filter does not apply).",
            [Q(f"model:tpw_generation_tokens_per_second:sum{{{by_model}}}", "{{model}}")],
            TOKENS_PER_SECOND,
        ),
        width=12,
        height=8,
    )
    board.add(
        bargauge(
            "GPU energy in the time range by node",
            "Joules the GPUs of each node used over the dashboard's time range (increase of the NVML "
            "energy counters; 3.6 MJ = 1 kWh).",
            [
                Q(
                    f"sum by (cluster, instance) (increase(tpw_gpu_energy_joules_total{{{n}}}[$__range]))",
                    "{{instance}}",
                    instant=True,
                )
            ],
            "joule",
        ),
        width=12,
        height=7,
    )
    board.add(
        bargauge(
            "Share of serving GPUs' energy spent idle, by node",
            "Of the energy of the GPUs attributed to an endpoint, over the exporter's derive window, the "
            "share spent in ticks where their endpoints generated nothing: power you pay for that serves "
            "no tokens (recording rule instance:tpw_gpu_idle_energy_ratio:ratio, energy-weighted). GPUs "
            "attributed to no endpoint are not counted here.",
            [Q(f"instance:tpw_gpu_idle_energy_ratio:ratio{{{n}}}", "{{instance}}", instant=True)],
            "percentunit",
            max_value=1,
            thresholds=threshold_steps("green", (0.2, "orange"), (0.5, "red")),
        ),
        width=12,
        height=7,
    )

    board.row("What the GPUs are bound by")
    board.add(
        state_timeline(
            "Bound state of every GPU",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(n), "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        width=16,
        height=9,
    )
    board.add(
        bargauge(
            "GPUs by bound state (now)",
            "How many of the selected GPUs are compute-, memory-, latency-bound, idle or mixed right now "
            "(recording rule instance:tpw_gpu_bound:sum, summed over the selected nodes).",
            [Q(f"sum by (bound) (instance:tpw_gpu_bound:sum{{{n}}})", "{{bound}}", instant=True)],
            "none",
        ),
        width=8,
        height=9,
    )

    board.row("Alerts")
    board.add(
        table(
            "Firing TPW alerts",
            "Every tpw-exporter alert (TPW*) firing now, with its labels. Alert rules live in "
            "deploy/prometheus/rules/alerts.yml; their runbooks are in the annotations.",
            [Q(ALERTS, conditional=WHEN_ALERT)],
            columns={
                "alertname": "Alert",
                "severity": "Severity",
                "instance": "Node",
                "gpu": "GPU",
                "endpoint": "Endpoint",
                "model": "Model",
            },
            hidden=("Time", "Value", "__name__", "alertstate", "job", "cluster"),
        ),
        width=24,
        height=6,
    )
    return board
