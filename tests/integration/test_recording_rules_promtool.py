"""deploy/prometheus/rules/recording.yml through promtool: `check rules` and its unit tests.

Names, groups and coverage of the rule test file: tests/unit/test_recording_rules.py.
"""

from __future__ import annotations

from helpers import promtool
from recording_rules_common import RULE_TESTS, RULES


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
