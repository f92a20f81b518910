"""Derived metrics in the exposition: the contract's names and labels, HELP, absent values, the stage.

promtool's linter and a real demo process: tests/integration/test_render_derived_promtool_and_demo.py.
"""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families
from render_common import run_daemon, series

from exporter.config import load_config
from exporter.derive.window import Site
from exporter.node import build_deriver
from exporter.render.derived import derived_families
from exporter.snapshot_json import snapshot_json

ENDPOINT_METRICS = {
    "tpw_endpoint_generation_tokens_per_second",
    "tpw_endpoint_prompt_tokens_per_second",
    "tpw_endpoint_requests_per_second",
    "tpw_endpoint_power_watts",
    "tpw_endpoint_window_energy_joules",
    "tpw_endpoint_tokens_per_joule",
    "tpw_endpoint_joules_per_token",
    "tpw_endpoint_joules_per_request",
    "tpw_endpoint_gpu_utilization_ratio",
    "tpw_endpoint_tokens_per_busy_gpu_second",
    "tpw_endpoint_window_seconds",
}
WORK_UNIT_METRICS = {
    "tpw_endpoint_work_units_per_second",
    "tpw_endpoint_work_units_per_joule",
    "tpw_endpoint_joules_per_work_unit",
}
GPU_METRICS = {
    "tpw_gpu_dram_bandwidth_bytes_per_second",
    "tpw_gpu_window_energy_joules",
    "tpw_gpu_window_power_watts",
    "tpw_gpu_idle_energy_ratio",
}


def test_contract_names_labels_and_values() -> None:
    site = Site(electricity_price_per_kwh=0.12, currency="EUR", pue=1.25, carbon_intensity_grams_per_kwh=350)
    text = run_daemon(site).latest.text.decode()
    found = series(text)
    for name in ENDPOINT_METRICS:
        assert set(found[name]) == {(("endpoint", "llm"), ("model", "llama-3-8b"))} | (
            {(("endpoint", "sdxl"), ("model", ""))}
            if name
            in {
                "tpw_endpoint_power_watts",
                "tpw_endpoint_window_energy_joules",
                "tpw_endpoint_gpu_utilization_ratio",
                "tpw_endpoint_window_seconds",
            }
            else set()
        ), name
    for name in WORK_UNIT_METRICS:
        assert set(found[name]) == {(("endpoint", "sdxl"), ("model", ""), ("unit", "images"))}, name
    cost = found["tpw_endpoint_energy_cost_per_million_tokens"]
    assert set(cost) == {(("currency", "EUR"), ("endpoint", "llm"), ("model", "llama-3-8b"))}
    assert set(found["tpw_endpoint_co2_grams_per_million_tokens"]) == {
        (("endpoint", "llm"), ("model", "llama-3-8b"))
    }
    for name in GPU_METRICS - {"tpw_gpu_idle_energy_ratio"}:
        assert {labels[0][1] for labels in found[name]} == {"0", "1", "2"}, name
    assert {labels[0][1] for labels in found["tpw_gpu_idle_energy_ratio"]} == {"0", "1"}  # 2 not attributed
    assert len(found["tpw_gpu_bound"]) == 3 * 5
    assert {dict(labels)["signal"] for labels in found["tpw_gpu_bound_evidence_ratio"]} == {
        "tensor",
        "fp",
        "dram",
        "sm",
        "graphics",
    }
    assert found["tpw_derive_window_seconds"][()] == pytest.approx(4)

    llm = (("endpoint", "llm"), ("model", "llama-3-8b"))
    assert found["tpw_endpoint_generation_tokens_per_second"][llm] == pytest.approx(2000)
    assert found["tpw_endpoint_requests_per_second"][llm] == pytest.approx(4)
    # mixed scenario, phase 100 s: GPU 0 idle (114 W), GPU 1 compute-bound (695 W), ± 3 W wobble.
    power = found["tpw_endpoint_power_watts"][llm]
    assert power == pytest.approx(114 + 695, abs=6)
    assert found["tpw_endpoint_tokens_per_joule"][llm] == pytest.approx(2000 / power)
    gpu_power = found["tpw_gpu_window_power_watts"]
    assert gpu_power[(("gpu", "0"),)] + gpu_power[(("gpu", "1"),)] == pytest.approx(power)
    bound = {dict(k)["gpu"]: dict(k)["bound"] for k, v in found["tpw_gpu_bound"].items() if v == 1}
    assert bound == {"0": "idle", "1": "compute", "2": "memory"}
    kwh_per_million = power / 2000 * 1e6 * 1.25 / 3.6e6
    assert cost[(("currency", "EUR"), *llm)] == pytest.approx(kwh_per_million * 0.12)


def test_every_family_has_help_and_no_value_is_nan_or_inf() -> None:
    text = run_daemon(
        Site(electricity_price_per_kwh=0.1, carbon_intensity_grams_per_kwh=100)
    ).latest.text.decode()
    names = ENDPOINT_METRICS | WORK_UNIT_METRICS | GPU_METRICS
    names |= {"tpw_gpu_bound", "tpw_gpu_bound_evidence_ratio", "tpw_derive_window_seconds"}
    names |= {"tpw_endpoint_energy_cost_per_million_tokens", "tpw_endpoint_co2_grams_per_million_tokens"}
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in names:
        assert families[name].documentation, name
        assert families[name].type == "gauge", name
    for name in ("tpw_endpoint_energy_cost_per_million_tokens", "tpw_endpoint_co2_grams_per_million_tokens"):
        assert "host CPU/DRAM energy is not included" in families[name].documentation
        assert "site.pue" in families[name].documentation
    for family in families.values():
        for sample in family.samples:
            assert math.isfinite(sample.value), sample


def test_cost_and_carbon_absent_without_site_values() -> None:
    found = series(run_daemon(Site()).latest.text.decode())
    assert "tpw_endpoint_energy_cost_per_million_tokens" not in found
    assert "tpw_endpoint_co2_grams_per_million_tokens" not in found


def test_first_tick_has_no_window_values() -> None:
    found = series(run_daemon(ticks=1).latest.text.decode())
    assert found["tpw_derive_window_seconds"][()] == 0
    assert "tpw_endpoint_tokens_per_joule" not in found
    assert "tpw_gpu_window_power_watts" not in found
    assert "tpw_gpu_bound" not in found  # no GPM window on the first simulated tick


def test_no_derived_values_renders_empty_families() -> None:
    from exporter.model import Snapshot

    families = list(derived_families(Snapshot(tick=0, wall_time=0, monotonic_time=0, duration_seconds=0)))
    assert families and all(not family.samples for family in families)


def test_snapshot_json_carries_derived_values() -> None:
    snapshot = run_daemon().latest.snapshot
    payload = json.loads(snapshot_json(snapshot))
    assert payload["derived"]["window_seconds"] == pytest.approx(4)
    assert {e["name"] for e in payload["derived"]["endpoints"]} == {"llm", "sdxl"}
    assert payload["derived"]["gpus"][1]["bound"] == "compute"


def test_build_deriver_follows_config() -> None:
    config = load_config(
        environ={
            "TPW_INTERVAL": "2",
            "TPW_DERIVE__WINDOW": "60",
            "TPW_DERIVE__BOUND__COMPUTE_PIPE_AT_LEAST": "0.7",
            "TPW_SITE__PUE": "1.4",
            "TPW_SITE__CURRENCY": "GBP",
            "TPW_SITE__ELECTRICITY_PRICE_PER_KWH": "0.3",
        }
    )
    deriver = build_deriver(config)
    assert deriver.window == 60 and deriver.tolerance == 1.0
    assert deriver.thresholds.compute_pipe_at_least == 0.7
    assert deriver.site == Site(electricity_price_per_kwh=0.3, currency="GBP", pue=1.4)


def test_energy_counter_is_a_counter_per_endpoint_that_grows_with_the_window_energy() -> None:
    """`tpw_endpoint_energy_joules_total{endpoint,model}`: a counter, one per attributed endpoint."""
    text = run_daemon().latest.text.decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    family = families["tpw_endpoint_energy_joules"]
    assert family.type == "counter"
    samples = [s for s in family.samples if s.name.endswith("_total")]
    totals = {(s.labels["endpoint"], s.labels["model"]): s.value for s in samples}
    assert set(totals) == {("llm", "llama-3-8b"), ("sdxl", "")}
    window = series(text)["tpw_endpoint_window_energy_joules"]
    for (name, model), joules in totals.items():
        # the counter runs since start, the gauge over the window: at least as much, and some of it
        assert joules >= window[(("endpoint", name), ("model", model))] * (1 - 1e-9) > 0
