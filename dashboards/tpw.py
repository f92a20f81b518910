"""What the TPW dashboards share: label filters, units, variables, annotations, the bound-state encoding,
and `tpw_board`, a Board with the TPW tags and the link to the other TPW dashboards.

Every query goes through the `${datasource}` variable. Filters: `cluster` (a label you add to your
targets or through your long-term store; absent labels match the `.*` of "All"), `node` (the `instance`
label), `gpu`, `endpoint` and `model` where they apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafana import Board, Q, annotation, dashboards_link, query_variable, value_mappings

TAGS = ["tpw", "gpu", "efficiency"]

# Label filters, the same in every dashboard.
NODE = 'cluster=~"$cluster", instance=~"$node"'
GPU = NODE + ', gpu=~"$gpu"'
ENDPOINT = NODE + ', endpoint=~"$endpoint"'
ENDPOINT_MODEL = ENDPOINT + ', model=~"$model"'
FLEET_MODEL = NODE + ', model=~"$model"'
RATE = "[$__rate_interval]"

# The value each state of `tpw_gpu_bound` (exporter.model.BOUND_STATES, tests/unit/test_dashboards.py checks
# the set) has in the state timelines: stable codes, since saved panels and their colours depend on them.
BOUND_CODES = {"idle": 1, "compute": 2, "memory": 3, "latency": 4, "mixed": 5}
BOUND_COLORS = {
    "unknown": "#8e8e8e",
    "idle": "#c8c8c8",
    "compute": "#73bf69",
    "memory": "#5794f2",
    "latency": "#ff9830",
    "mixed": "#b877d9",
}
ALERTS = 'ALERTS{alertname=~"TPW.*", alertstate="firing", ' + NODE + "}"
WHEN_ALERT = "only while a TPW* alert fires"
WHEN_PRICE = "only when a site electricity price is configured (site.electricity_price_per_kwh)"
WHEN_CARBON = "only when a grid carbon intensity is configured (site.carbon_intensity_grams_per_kwh)"
WHEN_SLO = "only for endpoints with an slo whose engine publishes the latency histograms it needs"
WHEN_TPOT = "only for engines that publish a time-per-output-token histogram (not Triton, llama.cpp)"
WHEN_QUEUE = "only for engines that publish a queue-time histogram (vLLM, SGLang, TGI)"

TOKENS_PER_SECOND = "suffix: tok/s"
TOKENS_PER_JOULE = "suffix: tok/J"
UP_DOWN = value_mappings({"0": ("down", "red"), "1": ("up", "green")})

# ----------------------------------------------------------------------------------------- variables

CLUSTER_VARIABLE = query_variable(
    "cluster",
    "Cluster",
    "label_values(tpw_build_info, cluster)",
    description="The `cluster` label, if your targets or your long-term store add one; All matches series "
    "without it too.",
)
JOB_VARIABLE = query_variable(
    "job",
    "Job",
    'label_values(tpw_build_info{cluster=~"$cluster"}, job)',
    all_value=None,
    description="Scrape jobs that serve tpw-exporter metrics (used by the `up` panels).",
)
NODE_VARIABLE = query_variable(
    "node",
    "Node",
    'label_values(tpw_build_info{cluster=~"$cluster"}, instance)',
    description="The `instance`.",
)
GPU_VARIABLE = query_variable(
    "gpu", "GPU", f"label_values(tpw_gpu_info{{{NODE}}}, gpu)", description="NVML device index.", sort=3
)
ENDPOINT_VARIABLE = query_variable(
    "endpoint",
    "Endpoint",
    f"label_values(tpw_endpoint_up{{{NODE}}}, endpoint)",
    description="Configured name.",
)
MODEL_VARIABLE = query_variable(
    "model",
    "Model",
    f"label_values(tpw_endpoint_requests_total{{{NODE}}}, model)",
    description="The model name the serving engine reports.",
)
ENDPOINT_MODEL_VARIABLE = query_variable(
    "model",
    "Model",
    f"label_values(tpw_endpoint_requests_total{{{ENDPOINT}}}, model)",
    description="The model name the serving engine reports.",
)

# --------------------------------------------------------------------------------------- annotations


def alert_annotation() -> dict[str, Any]:
    """TPW* alerts while they fire."""
    return annotation(
        "TPW alerts",
        ALERTS,
        color="red",
        step="30s",
        title="{{alertname}}",
        text="{{instance}} {{gpu}} {{endpoint}} ({{severity}})",
        tag_keys="alertname,severity",
        conditional=WHEN_ALERT,
    )


def engine_deploy_annotation() -> dict[str, Any]:
    """Serving engine restarts and deploys (its process start time changed)."""
    return annotation(
        "Engine restarts / deploys",
        f"changes(tpw_endpoint_process_start_time_seconds{{{ENDPOINT}}}[2m]) > 0",
        color="purple",
        step="60s",
        title="{{endpoint}} restarted",
        text="the serving engine's process start time changed (restart or deploy) on {{instance}}",
        tag_keys="endpoint",
        conditional="only within two minutes after a serving engine restarted or was redeployed",
    )


def exporter_annotations() -> list[dict[str, Any]]:
    """Exporter restarts and version upgrades."""
    build = f"tpw_build_info{{{NODE}}}"
    return [
        annotation(
            "Exporter restarts",
            f"resets(tpw_ticks_total{{{NODE}}}[2m]) > 0",
            color="orange",
            step="60s",
            title="tpw-exporter restarted",
            text="{{instance}}",
            tag_keys="instance",
            conditional="only within two minutes after an exporter restarted",
        ),
        annotation(
            "Exporter upgrades",
            f"count by (cluster, instance, version) ({build}) "
            f"unless count by (cluster, instance, version) ({build} offset 10m) "
            f"and on (cluster, instance) count by (cluster, instance) ({build} offset 10m)",
            color="blue",
            step="60s",
            title="tpw-exporter {{version}}",
            text="{{instance}} now runs tpw-exporter {{version}}",
            tag_keys="version",
            conditional="only within ten minutes after an exporter changed version",
        ),
    ]


# --------------------------------------------------------------------------------------- bound state


def bound_state_expr(selector: str) -> str:
    """One series per GPU whose value codes the active `bound` state (0 = none of them / unknown)."""
    parts = [f'tpw_gpu_bound{{{selector}, bound="{state}"}} * {code}' for state, code in BOUND_CODES.items()]
    return "sum by (cluster, instance, gpu) (" + " or ".join(parts) + ")"


BOUND_MAPPINGS = value_mappings(
    {"0": ("unknown", BOUND_COLORS["unknown"])}
    | {str(code): (state, BOUND_COLORS[state]) for state, code in BOUND_CODES.items()}
)
BOUND_DESCRIPTION = (
    "What limits each GPU, as the exporter classifies it from the GPM evidence over its derive window: "
    "compute (tensor/SM pipes busy), memory (DRAM bandwidth near its peak), latency (the engine is busy "
    "but the SMs are not: launch-bound or host-bound work, tiny batches), idle, or mixed. "
    "NVML utilization cannot tell these apart; see the Node / GPU dashboard for the evidence."
)

# -------------------------------------------------------------------------------------------- health

# The XID codes the alert rules act on (exporter.model.XID_ACTIONABLE; tests/unit/test_gpu_health.py).
ACTIONABLE_XIDS = "48|63|64|74|79|92|94|95"
# Clock-event reasons that hold the clocks down (gpu_idle, sync_boost and display_clock_setting do not).
HOLDING_REASONS = (
    "sw_power_cap|hw_slowdown|sw_thermal_slowdown|hw_thermal_slowdown|hw_power_brake_slowdown"
    "|applications_clocks_setting"
)
HEALTH_MAPPINGS = value_mappings({"0": ("no", "green"), "1": ("yes", "red")})
HEALTH_DESCRIPTION = (
    "Slow or sick? For each GPU, five signals, each yes or no. Slow (the GPU works, at less than it can): "
    "its clocks are held down (power cap, thermal or hardware slowdown, a clocks setting), or its PCIe link "
    "runs below what it and its slot can do (narrower, or a lower generation while busy; an idle GPU steps "
    "its link down on purpose). Sick (something is broken): an actionable XID in the interval (NVIDIA's "
    "Xid catalogue), a memory row remap pending or failed (or a page retirement pending), fewer NVLink "
    "links up than the node's best GPU. A sick GPU needs a reset or service; a slow one, a setting or a "
    "reseat. The TPWGpu* alerts fire on the same signals held long enough."
)


def health_signals(selector: str, node: str, suffix: str = "") -> list[Q]:
    """The five 0/1 health signals per GPU of `selector` (`node`: the same nodes, every GPU); `suffix` is
    appended to each query (e.g. `and on (…) tpw_endpoint_gpu_info{…}` to keep an endpoint's GPUs)."""
    s, by = selector, "max by (cluster, instance, gpu)"
    gpu = "{{instance}} gpu {{gpu}}"
    return [
        Q(
            f'{by} (tpw_gpu_clock_event_active{{{s}, reason=~"{HOLDING_REASONS}"}}){suffix}',
            f"{gpu} slow: clocks held down",
        ),
        Q(
            f"{by} (clamp_max((tpw_gpu_pcie_link_width{{{s}}} < bool tpw_gpu_pcie_link_max_width{{{s}}})"
            f" + (tpw_gpu_pcie_link_generation{{{s}}} < bool tpw_gpu_pcie_link_max_generation{{{s}}})"
            f" * (tpw_gpu_utilization_ratio{{{s}}} >= bool 0.5), 1)){suffix}",
            f"{gpu} slow: PCIe link below its maximum",
        ),
        Q(
            f'{by} (increase(tpw_gpu_xid_errors_total{{{s}, xid=~"{ACTIONABLE_XIDS}"}}[$__rate_interval])'
            f" > bool 0){suffix}",
            f"{gpu} sick: XID",
        ),
        Q(
            f"{by} (tpw_gpu_row_remap_pending{{{s}}} or tpw_gpu_row_remap_failed{{{s}}}"
            f" or tpw_gpu_retired_pages_pending{{{s}}}){suffix}",
            f"{gpu} sick: memory remap pending or failed",
        ),
        Q(
            f"{by} (tpw_gpu_nvlink_links_up{{{s}}} < bool on (cluster, instance) group_left ()"
            f" max by (cluster, instance) (tpw_gpu_nvlink_links_up{{{node}}})){suffix}",
            f"{gpu} sick: NVLink link down",
        ),
    ]


# --------------------------------------------------------------------------------------------- board


def tpw_board(
    uid: str,
    title: str,
    description: str,
    *,
    variables: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    time_from: str = "now-1h",
    refresh: str = "30s",
) -> Board:
    """An empty TPW dashboard: the TPW tags and a dropdown of the other TPW dashboards."""
    return Board(
        uid,
        title,
        description,
        variables=variables,
        annotations=annotations,
        tags=TAGS,
        links=[dashboards_link("TPW dashboards", ["tpw"])],
        time_from=time_from,
        refresh=refresh,
    )
