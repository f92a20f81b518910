"""The shipped alert rules, their promtool tests and runbooks, and the names the exporter serves: shared by
tests/unit/test_alert_rules.py and tests/integration/test_alert_rules_promtool.py."""

from __future__ import annotations

import re

from helpers import REPO

from exporter.model import EndpointSample, NodeInfo, Snapshot, SourceStatus
from exporter.render.derived import derived_families
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer
from exporter.sources.simulated import SimulatedSource

RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
ALERTS = RULES_DIR / "alerts.yml"
RECORDING = RULES_DIR / "recording.yml"
ALERT_TESTS = (
    REPO / "tests" / "rules" / "alerts_test.yml",
    REPO / "tests" / "rules" / "alerts_regression_test.yml",
    REPO / "tests" / "rules" / "alerts_health_test.yml",
)
RUNBOOKS = REPO / "docs" / "runbooks"
METRIC = re.compile(r"(?<![:\w])tpw_[a-z0-9_]+")


def exported_names() -> set[str]:
    """Every sample name the exporter can serve: a snapshot with a GPU (GPM window) and an endpoint."""
    gpu = SimulatedSource(gpus=1, scenario="healthy", clock=lambda: 0.0).sample(0, 1.0, 1.0)
    snapshot = Snapshot(
        tick=1,
        wall_time=0,
        monotonic_time=0,
        duration_seconds=0,
        gpus=(gpu,),
        endpoints=(EndpointSample(name="e", engine="vllm", url="http://localhost/metrics"),),
        sources=(SourceStatus("nvml", True, 0.1),),
        node=NodeInfo(simulated_scenario="healthy"),
    )
    names = set()
    for family in Renderer(extra=[endpoint_families, derived_families]).families(snapshot):
        names.add(family.name)
        suffixes = {
            "counter": ("_total",),
            "summary": ("_sum", "_count"),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names
