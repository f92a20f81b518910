"""GPU health (issue 14) beyond the NVML source (tests/unit/test_nvml_health.py): how it renders, what the
simulated node and its health scenarios report, and that the alert rules, dashboards and docs name the same
XID codes and metrics as the exporter."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from helpers import REPO
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.scenarios import HEALTH, Schedule
from exporter.model import (
    NVLINK_ERROR_TYPES,
    XID_ACTIONABLE,
    XID_CRITICAL,
    XID_WARNING,
    GpuHealth,
    GpuInfo,
    GpuSample,
    Snapshot,
)
from exporter.render.exposition import Renderer
from exporter.sources.simulated import SimulatedSource

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HEALTH_FAMILIES = {
    "tpw_gpu_xid_errors": "counter",
    "tpw_gpu_ecc_errors": "counter",
    "tpw_gpu_ecc_aggregate_errors": "counter",
    "tpw_gpu_retired_pages": "gauge",
    "tpw_gpu_retired_pages_pending": "gauge",
    "tpw_gpu_remapped_rows": "gauge",
    "tpw_gpu_row_remap_pending": "gauge",
    "tpw_gpu_row_remap_failed": "gauge",
    "tpw_gpu_power_default_limit_watts": "gauge",
    "tpw_gpu_sm_clock_max_hertz": "gauge",
    "tpw_gpu_pcie_link_generation": "gauge",
    "tpw_gpu_pcie_link_width": "gauge",
    "tpw_gpu_pcie_link_max_generation": "gauge",
    "tpw_gpu_pcie_link_max_width": "gauge",
    "tpw_gpu_pcie_replays": "counter",
    "tpw_gpu_nvlink_bytes": "counter",
    "tpw_gpu_nvlink_links": "gauge",
    "tpw_gpu_nvlink_links_up": "gauge",
    "tpw_gpu_nvlink_errors": "counter",
}


def render(*gpus: GpuSample) -> tuple[Samples, dict[str, str]]:
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, gpus=gpus)
    families = list(text_string_to_metric_families(Renderer().render(snapshot).text.decode()))
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return values, {f.name: f.type for f in families}


def gpu(index: int, **fields: object) -> GpuSample:
    return GpuSample(info=GpuInfo(index=index, uuid=f"GPU-{index}", name="H100"), **fields)  # type: ignore[arg-type]


# -- rendering ------------------------------------------------------------------------------------------


def test_health_renders_counters_gauges_and_labels() -> None:
    health = GpuHealth(
        ecc_corrected_volatile=3,
        ecc_uncorrected_volatile=1,
        ecc_corrected_aggregate=41,
        ecc_uncorrected_aggregate=2,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=1,
        row_remap_pending=True,
        row_remap_failed=False,
        power_default_limit_watts=700.0,
        sm_clock_max_hertz=1980e6,
        pcie_max_generation=5,
        pcie_max_width=16,
        pcie_replays=12,
        nvlink_links=18,
        nvlink_links_up=17,
        nvlink_errors=(("replay", 4), ("recovery", 1)),
    )
    sample = gpu(
        0,
        health=health,
        pcie_generation=1,
        pcie_width=16,
        nvlink_tx_bytes=1024.0,
        nvlink_rx_bytes=2048.0,
        xid_errors=(("48", 0), ("94", 2), ("other", 1)),
    )
    values, types = render(sample)
    g = (("gpu", "0"),)
    assert {name: types[name] for name in HEALTH_FAMILIES} == HEALTH_FAMILIES
    assert values["tpw_gpu_xid_errors_total", (("gpu", "0"), ("xid", "94"))] == 2
    assert values["tpw_gpu_xid_errors_total", (("gpu", "0"), ("xid", "48"))] == 0  # from 0
    assert values["tpw_gpu_xid_errors_total", (("gpu", "0"), ("xid", "other"))] == 1
    assert values["tpw_gpu_ecc_errors_total", (("gpu", "0"), ("type", "uncorrected"))] == 1
    assert values["tpw_gpu_ecc_aggregate_errors_total", (("gpu", "0"), ("type", "corrected"))] == 41
    assert values["tpw_gpu_remapped_rows", (("cause", "uncorrectable"), ("gpu", "0"))] == 1
    assert values["tpw_gpu_row_remap_pending", g] == 1 and values["tpw_gpu_row_remap_failed", g] == 0
    assert values["tpw_gpu_power_default_limit_watts", g] == 700
    assert values["tpw_gpu_sm_clock_max_hertz", g] == 1980e6
    assert (
        values["tpw_gpu_pcie_link_generation", g] == 1 and values["tpw_gpu_pcie_link_max_generation", g] == 5
    )
    assert values["tpw_gpu_pcie_replays_total", g] == 12
    assert values["tpw_gpu_nvlink_bytes_total", (("direction", "tx"), ("gpu", "0"))] == 1024
    assert values["tpw_gpu_nvlink_links_up", g] == 17
    assert values["tpw_gpu_nvlink_errors_total", (("gpu", "0"), ("type", "recovery"))] == 1
    # not measured: absent, never 0 (retired pages on an H100, which remaps rows)
    assert not [key for key in values if key[0].startswith("tpw_gpu_retired_pages")]


def test_no_health_and_down_gpus_render_no_health_series() -> None:
    bare = gpu(0, power_watts=100.0)  # an NVML without any of it, or health reads off
    lost = gpu(1, up=False, xid_errors=(("79", 1),), health=GpuHealth(row_remap_pending=True))
    values, types = render(bare, lost)
    assert HEALTH_FAMILIES.keys() <= types.keys()  # HELP and TYPE are served all the same
    health = [key for key in values if key[0].removesuffix("_total") in HEALTH_FAMILIES]
    assert health == []


# -- the simulated node -----------------------------------------------------------------------------------

PHASE = 10.0


def source(scenario: str, gpus: int = 2) -> SimulatedSource:
    return SimulatedSource(gpus=gpus, scenario=scenario, phase_seconds=PHASE, clock=lambda: 0.0)


def xids(sample: GpuSample) -> dict[str, int]:
    return dict(sample.xid_errors)


def test_a_healthy_simulated_h100_listens_for_xids_and_reports_its_links() -> None:
    sample = source("healthy").sample(0, 3 * PHASE, 1.0)
    assert xids(sample) == {str(code): 0 for code in XID_ACTIONABLE}
    health = sample.health
    assert health is not None
    assert (health.power_default_limit_watts, health.sm_clock_max_hertz) == (700.0, 1980e6)
    assert (sample.pcie_generation, sample.pcie_width, health.pcie_max_generation) == (5, 16, 5)
    assert (health.nvlink_links, health.nvlink_links_up, health.row_remap_pending) == (18, 18, False)
    assert health.retired_pages_pending is None  # an H100 remaps rows instead
    assert dict(health.nvlink_errors) == dict.fromkeys(NVLINK_ERROR_TYPES, 0)
    idle = source("idle").sample(0, 3 * PHASE, 1.0)
    assert idle.pcie_generation == 1  # an idle GPU steps its link down: not a fault


def test_xid_errors_scenario_reports_each_event_once_at_its_phase() -> None:
    node = source("xid-errors")
    assert xids(node.sample(0, 1.9 * PHASE, 1.0)) == {str(code): 0 for code in XID_ACTIONABLE}
    assert xids(node.sample(0, 3 * PHASE, 1.0))["13"] == 1
    even, odd = node.sample(0, 100 * PHASE, 1.0), node.sample(1, 100 * PHASE, 1.0)
    assert {code: n for code, n in xids(even).items() if n} == {"13": 1, "94": 1}
    assert {code: n for code, n in xids(odd).items() if n} == {"31": 1, "74": 1}
    assert xids(node.sample(1, 5.9 * PHASE, 1.0))["74"] == 0


def test_ecc_remap_pending_scenario() -> None:
    node = source("ecc-remap-pending")
    before, after = node.sample(0, 2.9 * PHASE, 1.0).health, node.sample(0, 3.2 * PHASE, 1.0).health
    assert before is not None and after is not None
    assert (before.ecc_uncorrected_volatile, before.row_remap_pending) == (0, False)
    assert (after.ecc_uncorrected_volatile, after.row_remap_pending) == (1, True)
    assert after.remapped_rows_uncorrectable == 1 and before.ecc_corrected_volatile == 2
    odd = node.sample(1, 10 * PHASE, 1.0).health
    assert odd is not None and odd.ecc_corrected_volatile == 50 and odd.ecc_uncorrected_volatile == 0
    assert not odd.row_remap_pending


def test_pcie_and_nvlink_scenarios() -> None:
    pcie = source("pcie-degraded")
    even, odd = pcie.sample(0, 5 * PHASE, 1.0), pcie.sample(1, 5 * PHASE, 1.0)
    assert (even.pcie_width, even.pcie_generation) == (8, 5)
    assert (odd.pcie_width, odd.pcie_generation) == (16, 3)
    assert odd.health is not None and odd.health.pcie_replays == 300  # 60 a phase
    nvlink = source("nvlink-errors")
    down = nvlink.sample(0, 3 * PHASE, 1.0).health
    assert down is not None and down.nvlink_links_up == 17 and dict(down.nvlink_errors)["recovery"] == 2
    replays = nvlink.sample(1, 2 * PHASE, 1.0).health
    assert replays is not None and dict(replays.nvlink_errors)["replay"] == 600


def test_power_capped_scenario_is_capped_from_the_start() -> None:
    for t in (0.0, 5 * PHASE, 500 * PHASE):
        sample = source("power-capped").sample(1, t, 1.0)
        assert sample.power_limit_watts == 400 and sample.sm_clock_hertz == 1200e6
        assert sample.health is not None and sample.health.power_default_limit_watts == 700


@pytest.mark.parametrize("scenario", ["xid-errors", "ecc-remap-pending", "pcie-degraded", "nvlink-errors"])
def test_health_counters_are_whole_and_never_go_back_through_a_schedule(scenario: str) -> None:
    """Counters as NVML's: integers that only grow, also when a schedule plays the scenario again."""
    schedule = [(scenario, 7 * PHASE), ("healthy", 2 * PHASE)]
    node = SimulatedSource(gpus=2, phase_seconds=PHASE, clock=lambda: 0.0, schedule=schedule)
    assert isinstance(node.scenario, Schedule)
    previous: dict[tuple[int, str], int] = {}
    for step in range(0, 400):
        t = step * 0.5
        for index in (0, 1):
            sample = node.sample(index, t, 1.0)
            assert sample.health is not None
            counts = {
                **{f"xid {code}": n for code, n in sample.xid_errors},
                **{f"nvlink {kind}": n for kind, n in sample.health.nvlink_errors},
                "ecc": sample.health.ecc_corrected_volatile or 0,
                "ecc uncorrected": sample.health.ecc_uncorrected_volatile or 0,
                "replays": sample.health.pcie_replays or 0,
            }
            for name, count in counts.items():
                assert isinstance(count, int)
                assert count >= previous.get((index, name), 0), (scenario, t, index, name)
                previous[index, name] = count
    assert any(count > 0 for count in previous.values())


def test_every_health_state_is_used_by_a_scenario() -> None:
    from exporter.demo.scenarios import SCENARIO_SPECS

    used = {
        frame.workload for spec in SCENARIO_SPECS.values() for line in spec.health for frame in line.keyframes
    }
    assert used | {"ok"} == set(HEALTH)


# -- one set of codes and names ------------------------------------------------------------------------


def test_alert_rules_and_dashboards_act_on_the_codes_the_exporter_exports_from_zero() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" / "alerts.yml").read_text())
    by_severity: dict[str, tuple[int, ...]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TPWGpuXidError":
                codes = re.search(r'xid=~"([\d|]+)"', rule["expr"])
                assert codes, rule["expr"]
                by_severity[rule["labels"]["severity"]] = tuple(sorted(map(int, codes.group(1).split("|"))))
    assert by_severity == {"critical": XID_CRITICAL, "warning": XID_WARNING}
    assert not set(XID_CRITICAL) & set(XID_WARNING)
    sys.path.insert(0, str(REPO / "dashboards"))
    try:
        import tpw
    finally:
        sys.path.remove(str(REPO / "dashboards"))
    assert tuple(sorted(map(int, tpw.ACTIONABLE_XIDS.split("|")))) == XID_ACTIONABLE


def test_docs_list_every_health_metric() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    for name, kind in HEALTH_FAMILIES.items():
        documented = f"`{name}_total`" if kind == "counter" else f"`{name}`"
        assert documented in text, name
