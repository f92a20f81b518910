"""Derived metrics checked by promtool's linter and served by a real demo process; the rest is
tests/unit/test_render_derived.py."""

from __future__ import annotations

from exposition_lint import assert_valid
from helpers import running_exporter, wait_for
from render_common import run_daemon, series

from exporter.derive.window import Site


def test_promtool_lint_and_openmetrics() -> None:
    """Derived families of token and non-token endpoints, with cost and CO2 (every other page:
    tests/integration/test_render_promtool.py)."""
    exposition = run_daemon(Site(electricity_price_per_kwh=0.1, carbon_intensity_grams_per_kwh=100)).latest
    families = assert_valid(exposition.text.decode(), exposition.openmetrics.decode(), "derived metrics")
    names = {family.name for family in families}
    assert {
        "tpw_gpu_bound",
        "tpw_endpoint_work_units_per_joule",
        "tpw_endpoint_energy_cost_per_million_tokens",
    } <= names


def test_demo_process_serves_derived_metrics() -> None:
    env = {"TPW_DERIVE__WINDOW": "1", "TPW_SITE__ELECTRICITY_PRICE_PER_KWH": "0.1"}
    with running_exporter(["demo", "--scenario", "memory-bound", "--interval", "0.2"], env=env) as exporter:

        def window_full() -> str:
            text = exporter.metrics()
            return text if series(text)["tpw_derive_window_seconds"][()] >= 0.7 else ""

        text = wait_for(window_full, 10, "a full derive window in the demo")
    assert series(text)["tpw_derive_window_seconds"][()] <= 1.2
    assert 'tpw_gpu_bound{bound="memory",gpu="0"} 1.0' in text
    assert "tpw_gpu_window_power_watts{" in text
