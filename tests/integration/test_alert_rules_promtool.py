"""deploy/prometheus/rules/alerts.yml through promtool: `check rules` on every shipped rule file, the
promtool unit tests, the runbooks' PromQL, the time-scaled copy.

The rest is tests/unit/test_alert_rules.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from alert_rules_common import ALERT_TESTS, ALERTS, METRIC, RECORDING, RULES_DIR, RUNBOOKS, exported_names
from helpers import promtool
from rules.fast_rules import scale_rules, write_scaled


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in yaml.safe_load(RECORDING.read_text())["groups"] for rule in group["rules"]
    }


CONTINUATION = re.compile(r"(and|or|unless)\b|[-+*/%^<>=!)]")


OPEN_END = re.compile(r"(\b(and|or|unless)|[-+*/%^<>=(,])$")


def promql_blocks(text: str) -> list[str]:
    """Each expression of the ```promql blocks: a new one starts at every unindented line that is not a
    comment, does not start with a binary operator or `)`, and does not follow an operator or `(`."""
    expressions: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", text, re.S):
        starts = len(expressions)
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            continues = line[0].isspace() or CONTINUATION.match(line)
            if len(expressions) > starts and (continues or OPEN_END.search(expressions[-1].rstrip())):
                expressions[-1] += "\n" + line
            else:
                expressions.append(line)
    return expressions


def test_promtool_checks_every_shipped_rule_file() -> None:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert ALERTS in files and RECORDING in files
    result = promtool("check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(ALERT_TESTS), result.stdout


def test_runbook_promql_parses_and_uses_real_metrics(tmp_path: Path) -> None:
    known = exported_names() | recorded_names()
    rules = []
    for path in sorted(RUNBOOKS.glob("TPW*.md")):
        expressions = promql_blocks(path.read_text())
        assert len(expressions) >= 2, path.name
        for number, expr in enumerate(expressions):
            rules.append({"record": f"runbook_check:{path.stem.lower()}:{number}", "expr": expr})
            used = set(METRIC.findall(expr)) | set(re.findall(r"\b\w*:tpw_\w+:\w+", expr))
            assert used <= known, (path.name, used - known)
    rule_file = tmp_path / "runbook_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "runbook-queries", "rules": rules}]}))
    result = promtool("check", "rules", "--lint=none", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scaled_copy_changes_nothing_but_durations(tmp_path: Path) -> None:
    shipped = yaml.safe_load(ALERTS.read_text())
    scaled_path = write_scaled(ALERTS, tmp_path / "alerts.yml", 60)
    scaled = yaml.safe_load(scaled_path.read_text())
    assert yaml.safe_load(ALERTS.read_text()) == shipped  # the shipped file is only read
    back = scale_rules(scaled, 1 / 60)
    assert back == shipped  # dividing then multiplying by 60 gives the shipped rules back, exactly
    first = scaled["groups"][0]["rules"][0]
    assert first["alert"] == "TPWBusyButFlat" and first["for"] == "10s" and "[10s]" in first["expr"]
    result = promtool("check", "rules", str(scaled_path))
    assert result.returncode == 0, result.stdout + result.stderr
