"""The Node and GPU detail dashboard: NVML utilization next to what the SMs really do, memory, power,
clocks and throttling, GPU health (slow or sick: XIDs, memory errors, PCIe and NVLink), pipes and PCIe, the
bound classification, exporter health."""

from __future__ import annotations

from grafana import (
    Board,
    Q,
    bargauge,
    dashed,
    fixed_color,
    gauge_column,
    override,
    right_axis,
    stat,
    state_timeline,
    table,
    threshold_steps,
    timeseries,
    unit_column,
    value_mappings,
)
from tpw import (
    BOUND_DESCRIPTION,
    BOUND_MAPPINGS,
    CLUSTER_VARIABLE,
    GPU,
    GPU_VARIABLE,
    HEALTH_DESCRIPTION,
    HEALTH_MAPPINGS,
    JOB_VARIABLE,
    NODE,
    NODE_VARIABLE,
    UP_DOWN,
    alert_annotation,
    bound_state_expr,
    exporter_annotations,
    health_signals,
    tpw_board,
)

FILE = "tpw-node-gpu.json"


def dashboard() -> Board:
    """The dashboard, laid out; `.to_json()` is what tpw-node-gpu.json holds."""
    board = tpw_board(
        "tpw-node-gpu",
        "TPW / Node and GPU detail",
        "Per GPU: NVML utilization next to what the SMs really do (SM activity, occupancy, tensor pipes, "
        "DRAM bandwidth), power against limit, clocks and throttle reasons, memory, exporter health.",
        variables=[CLUSTER_VARIABLE, JOB_VARIABLE, NODE_VARIABLE, GPU_VARIABLE],
        annotations=[alert_annotation(), *exporter_annotations()],
        time_from="now-30m",
        refresh="10s",
    )
    g = GPU
    by_gpu = "max by (cluster, instance, gpu)"

    board.row('"Utilization" versus what the SMs really do')
    board.add(
        table(
            'NVML says "utilization"; GPM says what the SMs do (now)',
            "NVML utilization (nvidia-smi's GPU-Util) is the fraction of time *any* kernel was running: it "
            "says nothing about how much of the GPU the kernels use. A device-to-device copy and a bf16 "
            "GEMM both read 99 %; here the copy shows tensor pipes 0 % and DRAM bandwidth 89 % "
            "(memory-bound), the GEMM tensor 93 % (compute-bound), and a loop of tiny kernels reads 36 % "
            "utilization with SM activity near 0 (launch-bound). Read each row left to right: a high "
            "first column with low tensor and DRAM columns is a GPU that looks busy and does little. "
            "GPM columns are empty on GPUs without GPM (before Hopper) or with --no-profiling.",
            [
                Q(f"{by_gpu} (tpw_gpu_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_sm_active_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_sm_occupancy_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_tensor_active_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_memory_controller_utilization_ratio{{{g}}})"),
                Q(f"{by_gpu} (tpw_gpu_power_watts{{{g}}})"),
            ],
            columns={
                "instance": "Node",
                "gpu": "GPU",
                "Value #A": "Utilization (NVML)",
                "Value #B": "SM active",
                "Value #C": "SM occupancy",
                "Value #D": "Tensor pipes",
                "Value #E": "DRAM bandwidth",
                "Value #F": "Memory controller (NVML)",
                "Value #G": "Power",
            },
            hidden=("Time", "cluster"),
            overrides=[
                *(
                    gauge_column(name)
                    for name in (
                        "Utilization (NVML)",
                        "SM active",
                        "SM occupancy",
                        "Tensor pipes",
                        "DRAM bandwidth",
                        "Memory controller (NVML)",
                    )
                ),
                unit_column("Power", "watt"),
            ],
        ),
        width=24,
        height=7,
    )
    board.add(
        timeseries(
            "GPU $gpu: NVML utilization vs SM activity, tensor pipes, DRAM bandwidth",
            "The dashed line is NVML utilization; the others are the GPM profiling ratios over the same "
            "collection interval. Utilization high with tensor low and DRAM high: memory-bound. Tensor "
            "high: compute-bound. Utilization high with SM activity low: launch- or latency-bound. "
            "One panel per selected GPU.",
            [
                Q(f"tpw_gpu_utilization_ratio{{{g}}}", "utilization (NVML) {{instance}}"),
                Q(f"tpw_gpu_sm_active_ratio{{{g}}}", "SM active {{instance}}"),
                Q(f"tpw_gpu_sm_occupancy_ratio{{{g}}}", "SM occupancy {{instance}}"),
                Q(f"tpw_gpu_tensor_active_ratio{{{g}}}", "tensor pipes {{instance}}"),
                Q(f"tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}}", "DRAM bandwidth {{instance}}"),
            ],
            "percentunit",
            max_value=1,
            fill=0,
            overrides=[
                override(
                    "byRegexp",
                    "utilization \\(NVML\\).*",
                    custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                    custom__lineWidth=3,
                    color={"mode": "fixed", "fixedColor": "#8e8e8e"},
                )
            ],
            calcs=("mean", "lastNotNull"),
            repeat="gpu",
        ),
        width=12,
        height=9,
    )

    board.row("Memory")
    board.add(
        timeseries(
            "DRAM bandwidth: achieved vs peak",
            "Achieved DRAM bandwidth (GPM DRAM bandwidth utilization × the GPU's theoretical peak) against "
            "the peak itself (dashed; H100 SXM ≈ 3.35 TB/s). Decode-heavy serving is usually bound here.",
            [
                Q(
                    f"tpw_gpu_dram_bandwidth_utilization_ratio{{{g}}}"
                    f" * tpw_gpu_dram_peak_bandwidth_bytes_per_second{{{g}}}",
                    "{{instance}} gpu {{gpu}}",
                ),
                Q(f"tpw_gpu_dram_peak_bandwidth_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} peak"),
            ],
            "Bps",
            overrides=[dashed(".* peak")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Device memory used vs installed",
            "Device memory in use (solid) against installed memory (dashed). Serving engines reserve most "
            "of it for the KV cache up front, so high use alone is normal.",
            [
                Q(f"tpw_gpu_memory_used_bytes{{{g}}}", "{{instance}} gpu {{gpu}}"),
                Q(f"tpw_gpu_memory_total_bytes{{{g}}}", "{{instance}} gpu {{gpu}} installed"),
            ],
            "bytes",
            overrides=[dashed(".* installed")],
        ),
        width=12,
        height=8,
    )
    mig = "only on GPUs with MIG on (tpw-exporter demo --mig shows a layout)"
    board.add(
        timeseries(
            "MIG devices: memory used vs size",
            "Memory in use in each MIG device (solid) against its size (dashed), by GPU, GPU instance and "
            "profile. A MIG device cannot borrow from its neighbours: it runs out at its own size.",
            [
                Q(
                    f"tpw_mig_memory_used_bytes{{{g}}}",
                    "{{instance}} gpu {{gpu}} gi {{gpu_instance}} ci {{compute_instance}} {{mig_profile}}",
                    conditional=mig,
                ),
                Q(
                    f"tpw_mig_memory_total_bytes{{{g}}}",
                    "{{instance}} gpu {{gpu}} gi {{gpu_instance}} ci {{compute_instance}} "
                    "{{mig_profile}} size",
                    conditional=mig,
                ),
            ],
            "bytes",
            overrides=[dashed(".* size")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "MIG devices: SM activity (GPM per GPU instance)",
            "Fraction of each MIG device's SMs busy (GPM of its GPU instance; compute instances of one GPU "
            "instance share the value). MIG devices have no energy counter: the GPU's energy is split "
            "between the endpoints on its MIG devices by the SMs they hold.",
            [
                Q(
                    f"tpw_mig_sm_active_ratio{{{g}}}",
                    "{{instance}} gpu {{gpu}} gi {{gpu_instance}} {{mig_profile}}",
                    conditional=mig + ", with GPM",
                )
            ],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        width=12,
        height=8,
    )

    board.row("Power, clocks and throttling")
    board.add(
        timeseries(
            "Power vs limit",
            "Board power now (solid), average power from the energy counter over the rate window (thin), "
            "the enforced power limit (dashed) and the board's default limit (dashed, thin). Running at the "
            "limit triggers the sw_power_cap clock event below and lowers clocks; an enforced limit under "
            "the default was lowered on purpose, and costs clock all day.",
            [
                Q(f"tpw_gpu_power_watts{{{g}}}", "{{instance}} gpu {{gpu}}"),
                Q(
                    f"rate(tpw_gpu_energy_joules_total{{{g}}}[$__rate_interval])",
                    "{{instance}} gpu {{gpu}} from energy",
                ),
                Q(f"tpw_gpu_power_limit_watts{{{g}}}", "{{instance}} gpu {{gpu}} limit"),
                Q(f"tpw_gpu_power_default_limit_watts{{{g}}}", "{{instance}} gpu {{gpu}} default limit"),
            ],
            "watt",
            overrides=[
                dashed(".* limit"),
                override("byRegexp", ".* default limit", custom__lineWidth=1),
                override("byRegexp", ".* from energy", custom__fillOpacity=0),
            ],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Clocks",
            "SM clock (solid), the GPU's maximum SM clock (dotted) and memory clock (dashed). SM clocks well "
            "below the maximum while busy point at a power or thermal limit or a clocks setting; see the "
            "clock event reasons.",
            [
                Q(f"tpw_gpu_sm_clock_hertz{{{g}}}", "{{instance}} gpu {{gpu}} SM"),
                Q(f"tpw_gpu_memory_clock_hertz{{{g}}}", "{{instance}} gpu {{gpu}} memory"),
                Q(f"tpw_gpu_sm_clock_max_hertz{{{g}}}", "{{instance}} gpu {{gpu}} SM max"),
            ],
            "hertz",
            overrides=[
                dashed(".* memory"),
                override("byRegexp", ".* SM max", custom__lineStyle={"fill": "dot"}, custom__fillOpacity=0),
            ],
            fill=0,
        ),
        width=12,
        height=8,
    )
    board.add(
        state_timeline(
            "Active clock event (throttle) reasons",
            "When each clock-event reason NVML reports was active. gpu_idle is harmless; sw_power_cap "
            "means the GPU runs at its power limit; *thermal* and hw_* reasons mean the hardware slowed "
            "the clocks and throughput suffers.",
            [
                Q(
                    f"tpw_gpu_clock_event_active{{{g}}} == 1",
                    "{{instance}} gpu {{gpu}} {{reason}}",
                    conditional="only while a clock event reason is active (a busy GPU below its power "
                    "limit has none)",
                )
            ],
            value_mappings({"1": ("active", "orange")}),
        ),
        width=12,
        height=8,
    )
    board.add(
        bargauge(
            "Share of time each clock event reason was active",
            "Fraction of the time range each reason was active, averaged over the selected GPUs.",
            [
                Q(
                    f"avg by (reason) (avg_over_time(tpw_gpu_clock_event_active{{{g}}}[$__range]))",
                    "{{reason}}",
                    instant=True,
                )
            ],
            "percentunit",
            max_value=1,
            thresholds=threshold_steps("green", (0.05, "orange"), (0.25, "red")),
        ),
        width=6,
        height=8,
    )
    board.add(
        timeseries(
            "Temperature",
            "GPU die temperature. Thermal slowdown (see the clock event reasons) starts in the high 80s "
            "°C on H100.",
            [Q(f"tpw_gpu_temperature_celsius{{{g}}}", "{{instance}} gpu {{gpu}}")],
            "celsius",
            fill=0,
            min_value=None,
        ),
        width=6,
        height=8,
    )

    def per_interval(counter: str, label: str) -> str:
        """A counter's increase in each interval, per GPU and `label`."""
        return f"sum by (cluster, instance, gpu, {label}) (increase({counter}{{{g}}}[$__rate_interval]))"

    board.row("GPU health: slow or sick?")
    board.add(
        state_timeline(
            "Slow or sick? Health signals of each GPU",
            HEALTH_DESCRIPTION + " Here the NVLink signal compares the selected GPUs with each other.",
            health_signals(g, g),
            HEALTH_MAPPINGS,
        ),
        width=24,
        height=10,
    )
    board.add(
        timeseries(
            "XID errors",
            "XID errors the driver reported per GPU and code, counted in each interval (NVML events, since "
            "the exporter started). NVIDIA's Xid catalogue says what each code means; 48, 64, 74, 79 and 95 "
            "need a reset of the GPU (alert TPWGpuXidError, critical), 63, 92 and 94 attention (warning). "
            "Others, such as 13 or 31, are usually an application's fault.",
            [
                Q(
                    per_interval("tpw_gpu_xid_errors_total", "xid") + " > 0",
                    "{{instance}} gpu {{gpu}} XID {{xid}}",
                    conditional="only when a GPU reported an XID in the time range",
                )
            ],
            "short",
            fill=80,
        ),
        width=12,
        height=8,
    )
    by_gpu_table = "max by (cluster, instance, gpu)"
    board.add(
        table(
            "Memory errors and repairs (now)",
            "Per GPU: ECC errors since the driver loaded and over the GPU's life, memory rows remapped to "
            "spare rows (Ampere and newer) and whether a remap waits for a GPU reset or ever failed, and on "
            "older GPUs retired pages. Corrected errors are what ECC is for; uncorrected ones hit an "
            "application, a pending remap needs a reset, a failed one service.",
            [
                Q(f'{by_gpu_table} (tpw_gpu_ecc_errors_total{{{g}, type="corrected"}})'),
                Q(f'{by_gpu_table} (tpw_gpu_ecc_errors_total{{{g}, type="uncorrected"}})'),
                Q(f'{by_gpu_table} (tpw_gpu_ecc_aggregate_errors_total{{{g}, type="uncorrected"}})'),
                Q(f'{by_gpu_table} (tpw_gpu_remapped_rows{{{g}, cause="correctable"}})'),
                Q(f'{by_gpu_table} (tpw_gpu_remapped_rows{{{g}, cause="uncorrectable"}})'),
                Q(f"{by_gpu_table} (tpw_gpu_row_remap_pending{{{g}}})"),
                Q(f"{by_gpu_table} (tpw_gpu_row_remap_failed{{{g}}})"),
                Q(
                    f"sum by (cluster, instance, gpu) (tpw_gpu_retired_pages{{{g}}})",
                    conditional="only on GPUs before Ampere, which retire pages instead of remapping rows",
                ),
            ],
            columns={
                "instance": "Node",
                "gpu": "GPU",
                "Value #A": "ECC corrected (since driver load)",
                "Value #B": "ECC uncorrected (since driver load)",
                "Value #C": "ECC uncorrected (GPU life)",
                "Value #D": "Rows remapped (correctable)",
                "Value #E": "Rows remapped (uncorrectable)",
                "Value #F": "Remap pending",
                "Value #G": "Remap failed",
                "Value #H": "Retired pages",
            },
            hidden=("Time", "cluster"),
            overrides=[
                unit_column("Remap pending", "none", mappings=HEALTH_MAPPINGS),
                unit_column("Remap failed", "none", mappings=HEALTH_MAPPINGS),
            ],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "ECC errors",
            "ECC memory errors per GPU and type in each interval. A trickle of corrected errors is normal; a "
            "rising rate of them, or any uncorrected one, is a GPU to watch (alert TPWGpuMemoryErrors).",
            [
                Q(
                    per_interval("tpw_gpu_ecc_errors_total", "type"),
                    "{{instance}} gpu {{gpu}} {{type}}",
                )
            ],
            "short",
            overrides=[fixed_color(".* uncorrected", "red")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "PCIe link: generation and width vs maximum",
            "The PCIe link's current generation and width (solid) against what the GPU and its slot can do "
            "together (dashed). An idle GPU steps its generation down to save power; busy, it should run at "
            "its maximum. A width below the maximum means the link trained degraded (alert "
            "TPWGpuInterconnectDegraded).",
            [
                Q(f"tpw_gpu_pcie_link_generation{{{g}}}", "{{instance}} gpu {{gpu}} generation"),
                Q(f"tpw_gpu_pcie_link_max_generation{{{g}}}", "{{instance}} gpu {{gpu}} generation max"),
                Q(f"tpw_gpu_pcie_link_width{{{g}}}", "{{instance}} gpu {{gpu}} width"),
                Q(f"tpw_gpu_pcie_link_max_width{{{g}}}", "{{instance}} gpu {{gpu}} width max"),
            ],
            "none",
            fill=0,
            overrides=[dashed(".* max"), right_axis(".* width.*", "none")],
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "PCIe replays per minute",
            "PCIe packets the link had to send again, per minute. DCGM's health check allows 8 a minute; "
            "more, for 15 minutes, is a marginal link (alert TPWGpuInterconnectDegraded).",
            [
                Q(
                    f"rate(tpw_gpu_pcie_replays_total{{{g}}}[$__rate_interval]) * 60",
                    "{{instance}} gpu {{gpu}}",
                )
            ],
            "short",
            fill=0,
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "NVLink traffic",
            "NVLink data sent (tx, drawn negative) and received (rx) by each GPU over all its links, "
            "protocol overhead excluded. Tensor-parallel engines move activations here every layer; a "
            "data-parallel one barely uses it.",
            [
                Q(
                    f'rate(tpw_gpu_nvlink_bytes_total{{{g}, direction="rx"}}[$__rate_interval])',
                    "{{instance}} gpu {{gpu}} rx",
                ),
                Q(
                    f'-rate(tpw_gpu_nvlink_bytes_total{{{g}, direction="tx"}}[$__rate_interval])',
                    "{{instance}} gpu {{gpu}} tx",
                ),
            ],
            "Bps",
            min_value=None,
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "NVLink links up and errors",
            "NVLink links up per GPU (left) and NVLink errors per interval by type (right, summed over "
            "the links). A GPU with fewer links up than the others, replay or recovery errors, or CRC errors "
            "above 100 a second has a failing link (alert TPWGpuInterconnectDegraded).",
            [
                Q(f"tpw_gpu_nvlink_links_up{{{g}}}", "{{instance}} gpu {{gpu}} links up"),
                Q(
                    per_interval("tpw_gpu_nvlink_errors_total", "type"),
                    "{{instance}} gpu {{gpu}} {{type}} errors",
                ),
            ],
            "none",
            fill=0,
            overrides=[right_axis(".* errors", "short")],
        ),
        width=12,
        height=8,
    )

    board.row("Pipes and PCIe")
    board.add(
        timeseries(
            "Pipe activity: tensor, FP16, FP32, FP64",
            "Fraction of time each pipe was active (GPM). Serving with tensor-core kernels shows up as "
            "tensor activity; the non-tensor FP pipes stay low.",
            [
                Q(f"tpw_gpu_tensor_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} tensor"),
                Q(f"tpw_gpu_fp16_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP16"),
                Q(f"tpw_gpu_fp32_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP32"),
                Q(f"tpw_gpu_fp64_active_ratio{{{g}}}", "{{instance}} gpu {{gpu}} FP64"),
            ],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "PCIe throughput",
            "PCIe traffic into (rx) and out of (tx, negative) each GPU. Steady high rx while serving can "
            "mean weights or KV cache are paged over PCIe.",
            [
                Q(f"tpw_gpu_pcie_rx_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} rx"),
                Q(f"-tpw_gpu_pcie_tx_bytes_per_second{{{g}}}", "{{instance}} gpu {{gpu}} tx"),
            ],
            "Bps",
            min_value=None,
        ),
        width=12,
        height=8,
    )

    board.row("Bound classification (derived)")
    board.add(
        state_timeline(
            "Bound state",
            BOUND_DESCRIPTION,
            [Q(bound_state_expr(g), "{{instance}} gpu {{gpu}}")],
            BOUND_MAPPINGS,
        ),
        width=12,
        height=8,
    )
    board.add(
        timeseries(
            "Bound evidence",
            "The signals the classification weighs, per GPU, over the derive window: each is a 0..1 ratio "
            "(for example tensor activity, DRAM bandwidth utilization, SM activity).",
            [Q(f"tpw_gpu_bound_evidence_ratio{{{g}}}", "{{instance}} gpu {{gpu}} {{signal}}")],
            "percentunit",
            max_value=1,
            fill=0,
        ),
        width=12,
        height=8,
    )

    board.row("Exporter health")
    board.add(
        stat(
            "Scrape up",
            "1 when Prometheus scraped the exporter on its last attempt; 0 means the node's data is stale.",
            [Q(f'up{{job=~"$job", {NODE}}}', "{{instance}}")],
            "none",
            mappings=UP_DOWN,
            graph=False,
        ),
        width=4,
        height=5,
    )
    board.add(
        stat(
            "GPUs up",
            "Per GPU: 1 when NVML answered on the last tick; 0 when the GPU is lost, hung or failing (its "
            "other series then vanish).",
            [Q(f"tpw_gpu_up{{{g}}}", "gpu {{gpu}}")],
            "none",
            mappings=UP_DOWN,
            graph=False,
        ),
        width=6,
        height=5,
    )
    board.add(
        stat(
            "Data age",
            "Seconds since the exporter's last completed collection tick. It should stay near the "
            "collection interval; growth means the collector is stuck.",
            [Q(f"time() - tpw_last_tick_timestamp_seconds{{{NODE}}}", "{{instance}}")],
            "s",
            thresholds=threshold_steps("green", (10, "orange"), (60, "red")),
            decimals=1,
        ),
        width=4,
        height=5,
    )
    board.add(
        timeseries(
            "Source collect duration",
            "How long each source took on each tick (NVML, simulated, endpoints). It must stay well "
            "under the collection interval.",
            [
                Q(
                    f"tpw_source_collect_duration_seconds{{{NODE}}}",
                    "{{instance}} {{source}}",
                ),
                Q(f"tpw_tick_duration_seconds{{{NODE}}}", "{{instance}} whole tick"),
            ],
            "s",
            fill=0,
            calcs=("mean", "max"),
        ),
        width=10,
        height=5,
    )
    board.add(
        table(
            "GPU inventory",
            "Identity of every selected GPU and the node's driver; simulated=true marks the demo node.",
            [
                Q(
                    f"max by (cluster, instance, gpu, name, uuid, pci_bus_id, compute_capability, simulated)"
                    f" (tpw_gpu_info{{{g}}})"
                ),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_profiling_supported{{{g}}})"),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_power_limit_watts{{{g}}})"),
                Q(f"max by (cluster, instance, gpu) (tpw_gpu_memory_total_bytes{{{g}}})"),
            ],
            columns={
                "instance": "Node",
                "gpu": "GPU",
                "name": "Name",
                "uuid": "UUID",
                "pci_bus_id": "PCI bus",
                "compute_capability": "Compute capability",
                "Value #B": "GPM profiling",
                "Value #C": "Power limit",
                "Value #D": "Memory",
                "simulated": "Simulated",
            },
            hidden=("Time", "cluster", "Value #A"),
            overrides=[
                unit_column(
                    "GPM profiling",
                    "none",
                    mappings=value_mappings({"0": ("no", "orange"), "1": ("yes", "green")}),
                ),
                unit_column("Power limit", "watt"),
                unit_column("Memory", "bytes"),
            ],
        ),
        width=24,
        height=6,
    )
    return board
