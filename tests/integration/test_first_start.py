"""The first start, as a new user meets it (issue 12): the exporter as a process, its log and its exit code.

The default demo logs no warning of its own; a stray `TPW_*` variable is one warning that names it (never its
value), and the exporter goes on; `TPW_LISTEN_ADDRESS` takes the README's IPv6 form as written.
In process: tests/unit/test_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO, ExporterProcess, wait_for
from helpers import write_config as write


def test_default_demo_logs_only_one_warning_naming_the_unknown_variable() -> None:
    env = {"TPW_BOGUS": "hunter2", "TPW_BIND": "0.0.0.0", "TPW_CONFIG": ""}
    exporter = ExporterProcess(["demo"], env)
    try:
        exporter.wait_ready()
        # The simulated engine has been scraped, so every endpoint scraper has been built (and would warn).
        wait_for(
            lambda: (
                'tpw_endpoint_up{endpoint="demo-vllm"' in exporter.metrics()
                and 'tpw_endpoint_up{endpoint="demo-vllm"} 0' not in exporter.metrics()
            ),
            20,
            "the demo engine scraped",
        )
    finally:
        exporter.stop()
    output = exporter.output()
    warnings = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1, output
    assert "ignoring unknown environment variable TPW_BOGUS: no such setting" in warnings[0]
    assert "hunter2" not in output and "TPW_BIND" not in output
    assert exporter.process.returncode == 0


def test_listen_address_from_the_environment_in_the_readmes_ipv6_form(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(write(tmp_path, ""))],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "TPW_LISTEN_ADDRESS": "[::]:9835"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "listen_address: '[::]:9835'" in result.stdout
