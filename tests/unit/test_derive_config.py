"""Config keys `derive` and `site`: defaults, validation with one-line errors naming the field.

The CLI as a process: tests/integration/test_derive_config_cli.py.
"""

from __future__ import annotations

from pathlib import Path

from helpers import write_config as write

from exporter.config import load_config
from exporter.derive.bound import Thresholds
from exporter.derive.window import Site


def test_defaults() -> None:
    config = load_config(environ={})
    assert config.derive.window == 30
    assert config.derive.bound.thresholds() == Thresholds()
    assert config.site.site() == Site(None, "USD", 1.0, None)


def test_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "interval: 5\nderive:\n  window: 60\n  bound:\n    memory_dram_at_least: 0.5\n"
        "site:\n  electricity_price_per_kwh: 0.21\n  currency: EUR\n  pue: 1.2\n"
        "  carbon_intensity_grams_per_kwh: 250\n",
    )
    config = load_config(path, {"TPW_DERIVE__BOUND__LATENCY_SM_BELOW": "0.2"})
    assert config.derive.window == 60
    assert config.derive.bound.memory_dram_at_least == 0.5
    assert config.derive.bound.latency_sm_below == 0.2
    assert config.site.site() == Site(0.21, "EUR", 1.2, 250)


def test_window_of_exactly_two_ticks_is_allowed() -> None:
    assert load_config(environ={"TPW_INTERVAL": "15", "TPW_DERIVE__WINDOW": "30"}).derive.window == 30
