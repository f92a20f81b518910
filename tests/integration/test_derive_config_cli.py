"""Config keys `derive` and `site` through the CLI as a process: exit status 2 naming the field,
check-config printing them. Defaults and validation in process: tests/unit/test_derive_config.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from helpers import REPO
from helpers import write_config as write


def test_cli_exits_2_naming_derive_window(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", "--interval", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "tpw-exporter: config error: derive.window: must be at least 2 × interval"
    )
    assert result.stderr.strip().count("\n") == 0


def test_check_config_prints_derive_and_site(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(write(tmp_path, "site:\n  pue: 1.1\n"))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["derive"]["window"] == 30
    assert effective["derive"]["bound"]["compute_pipe_at_least"] == 0.5
    assert effective["site"] == {
        "electricity_price_per_kwh": None,
        "currency": "USD",
        "pue": 1.1,
        "carbon_intensity_grams_per_kwh": None,
    }
