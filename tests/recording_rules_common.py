"""The shipped recording rules and their promtool test file: shared by tests/unit/test_recording_rules.py and
tests/integration/test_recording_rules_promtool.py."""

from __future__ import annotations

from helpers import REPO

RULES = REPO / "deploy" / "prometheus" / "rules" / "recording.yml"
RULE_TESTS = REPO / "tests" / "rules" / "recording_test.yml"
