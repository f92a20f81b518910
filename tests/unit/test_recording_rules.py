"""deploy/prometheus/rules/recording.yml: valid, tested with promtool, and only about metrics we export.

What runs promtool is tests/integration/test_recording_rules_promtool.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from recording_rules_common import RULE_TESTS, RULES

from exporter.model import Snapshot
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer

RECORD_NAME = re.compile(r"^[a-z_]*:tpw_[a-z0-9_]+:[a-z_]+$")


def exported_names() -> set[str]:
    """Every sample name the exporter can expose (families are rendered even without samples)."""
    empty = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0)
    names = set()
    for family in Renderer(extra=[derived_families]).families(empty):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_rule_names_groups_and_referenced_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert groups and all(group["name"].startswith("tpw-recording-") for group in groups)
    records = [rule["record"] for group in groups for rule in group["rules"]]
    assert len(records) == len(set(records))
    for name in records:
        assert RECORD_NAME.match(name), name
    for required in (
        "model:tpw_generation_tokens_per_second:sum",
        "model:tpw_power_watts:sum",
        "model:tpw_tokens_per_joule:ratio",
        "instance:tpw_tokens_per_joule:ratio",
        ":tpw_tokens_per_joule:ratio",
        "instance:tpw_gpu_power_watts:sum",
    ):
        assert required in records, required
    exported = exported_names()
    referenced = {
        name
        for group in groups
        for rule in group["rules"]
        for name in re.findall(r"(?<![:\w])tpw_[a-z0-9_]+", rule["expr"])
    }
    assert referenced, "no exporter metric referenced"
    assert referenced <= exported, referenced - exported
    # Every record used in another rule is defined before it in the same group (evaluated in order).
    for group in groups:
        defined: set[str] = set()
        for rule in group["rules"]:
            used = set(re.findall(r"[a-z_]*:tpw_[a-z0-9_]+:[a-z_]+", rule["expr"]))
            assert used <= defined, (rule["record"], used - defined)
            defined.add(rule["record"])


def test_rule_test_file_covers_every_record() -> None:
    records = {
        rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    tested = {
        check["expr"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in test.get("promql_expr_test", [])
    }
    assert records <= tested, records - tested


def test_rules_path_is_the_one_the_test_file_loads() -> None:
    rule_files = yaml.safe_load(RULE_TESTS.read_text())["rule_files"]
    assert [(RULE_TESTS.parent / path).resolve() for path in rule_files] == [Path(RULES).resolve()]
