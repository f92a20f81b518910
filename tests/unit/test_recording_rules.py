"""deploy/prometheus/rules/recording.yml: valid, tested with promtool, and only about metrics we export.

What runs promtool is tests/integration/test_recording_rules_promtool.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from recording_rules_common import RULE_TESTS, RULES

from exporter.model import EndpointSample, Snapshot
from exporter.render.derived import derived_families
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer

RECORD_NAME = re.compile(r"^[a-z_]*:tpw_[a-z0-9_]+:[a-z0-9_]+$")
RECORD_USE = re.compile(r"[a-z_]*:tpw_[a-z0-9_]+:[a-z0-9_]+")
RAW_USE = re.compile(r"(?<![:\w])tpw_[a-z0-9_]+")


def exported_names() -> set[str]:
    """Every sample name the exporter can expose (families are rendered even without samples; the
    endpoint families once an endpoint is configured)."""
    endpoint = EndpointSample(name="e", engine="vllm", url="http://e/metrics")
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, endpoints=(endpoint,))
    names = set()
    for family in Renderer(extra=[endpoint_families, derived_families]).families(snapshot):
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
        "endpoint:tpw_generation_tokens:rate1m",
        "endpoint:tpw_energy_joules:rate1m",
        "endpoint:tpw_tokens_per_joule:ratio_rate1m",
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
        name for group in groups for rule in group["rules"] for name in RAW_USE.findall(rule["expr"])
    }
    assert referenced, "no exporter metric referenced"
    assert referenced <= exported, referenced - exported
    # Every record used in another rule is defined before it in the same group (evaluated in order).
    for group in groups:
        defined: set[str] = set()
        for rule in group["rules"]:
            used = set(RECORD_USE.findall(rule["expr"]))
            assert used <= defined, (rule["record"], used - defined)
            defined.add(rule["record"])


def test_tokens_per_joule_records_read_only_aligned_counters_over_1m() -> None:
    """Tokens per joule and joules per token, at every level, come from the counters the exporter reads in
    one tick (docs/metrics.md, "Aligned counters for PromQL"), never from the derive-window gauges; every
    range is the 1m the header comment explains (4 × the default 15 s scrape interval)."""
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    exprs = {rule["record"]: rule["expr"] for rule in rules}

    def raw(record: str) -> set[str]:
        expr = exprs[record]
        return set(RAW_USE.findall(expr)).union(*(raw(used) for used in RECORD_USE.findall(expr)))

    ratios = [name for name in exprs if re.search(r":tpw_(tokens_per_joule|joules_per_token):", name)]
    assert len(ratios) == 7, ratios
    for name in ratios:
        read = raw(name)
        assert read and all(metric.endswith("_total") for metric in read), (name, read)
    assert "tpw_gpu_energy_joules_total" in raw(":tpw_tokens_per_joule:ratio")
    assert "tpw_endpoint_energy_joules_total" in raw("model:tpw_tokens_per_joule:ratio")
    for rule in rules:
        assert set(re.findall(r"\[([^\]]+)\]", rule["expr"])) <= {"1m"}, rule["record"]
        if rule["record"].endswith("rate1m"):
            assert "[1m]" in rule["expr"], rule["record"]


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
