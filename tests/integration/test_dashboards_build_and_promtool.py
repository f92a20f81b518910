"""The Grafana dashboards through real tools: dashboards/build.py --check as a script, promtool parsing every
query. The structure checks are tests/unit/test_dashboards.py."""

from __future__ import annotations

import subprocess
import sys

import yaml
from dashboard_tools import DASHBOARDS, FILES, LABEL_VALUES, MODELS, queries, substitute
from helpers import promtool


def test_check_flag_reports_a_stale_dashboard(tmp_path) -> None:
    script = str(DASHBOARDS / "build.py")
    subprocess.run([sys.executable, script, "--out", str(tmp_path)], check=True)
    ok = subprocess.run([sys.executable, script, "--check", "--out", str(tmp_path)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / FILES[0]
    stale.write_text(stale.read_text().replace('"schemaVersion": ', '"schemaVersion": 1'))
    (tmp_path / FILES[1]).unlink()
    result = subprocess.run([sys.executable, script, "--check", "--out", str(tmp_path)], capture_output=True)
    assert result.returncode == 1
    assert FILES[0].encode() in result.stderr and FILES[1].encode() in result.stderr


def test_every_query_is_valid_promql(tmp_path) -> None:
    """promtool parses every expression (variables substituted as Grafana would) as a recording rule."""
    rules = []
    for name in FILES:
        model = MODELS[name]
        values = {v["name"]: ".*" for v in model["templating"]["list"]}
        for index, query in enumerate(queries(model)):
            expr = substitute(query.expr, values)
            if query.kind == "variable":
                expr = LABEL_VALUES.match(expr).group("selector")
            rules.append({"record": f"dashboard:query_{len(rules)}:{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
