"""Rendering checked by promtool's linter, `promtool check metrics`.

The rest is tests/unit/test_render.py.
"""

from __future__ import annotations

from helpers import promtool
from render_common import simulated_snapshot

from exporter.render.exposition import Renderer


def test_promtool_check_metrics_passes() -> None:
    text = Renderer().render(simulated_snapshot(2)).text.decode()
    result = promtool("check", "metrics", input_text=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
