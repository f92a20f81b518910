"""The CLI as a process: check-config, one-line config errors with exit status 2, --help and --version.

Config precedence and validation in process: tests/unit/test_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO
from helpers import write_config as write


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, "interval: 2.5\n")))
    assert result.returncode == 0, result.stderr
    assert "interval: 2.5" in result.stdout
    assert "listen_address: 0.0.0.0:9835" in result.stdout


def test_check_config_rejects_bad_value_without_traceback(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, "simulation:\n  gpus: 0\n")))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "simulation.gpus" in result.stderr and "Traceback" not in result.stderr


def test_bad_flag_value_exits_2_naming_the_field() -> None:
    result = run_cli("demo", "--interval", "0")
    assert result.returncode == 2
    assert "config error: interval" in result.stderr and "Traceback" not in result.stderr


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("serve", "demo", "check-config", "TPW_"):
        assert word in result.stdout
    demo_help = run_cli("demo", "--help").stdout
    assert "--scenario" in demo_help and "memory-bound" in demo_help
    assert run_cli("--version").stdout.startswith("tpw-exporter ")


def test_bad_endpoint_flags_exit_2_with_one_line() -> None:
    for flag, expected in (
        ("novalue", "expected NAME=URL"),
        ("a=http://h/m,colour=red", "unknown option 'colour'"),
        ("a=ftp://h/m", "endpoints.0.url"),
        ("a=http://h/m,engine=magic", "endpoints.0.engine"),
    ):
        result = run_cli("demo", "--endpoint", flag)
        assert result.returncode == 2, flag
        assert expected in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
