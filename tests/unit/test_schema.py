"""Each schema fact is defined once (exporter.model) and every user reads it from there."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import exporter.config
from exporter.cli import build_parser
from exporter.config import Config, ConfigError, EndpointConfig, load_config
from exporter.demo.scenarios import SCENARIO_SPECS, SCENARIOS
from exporter.derive.bound import Thresholds, classify_bound
from exporter.engines import PROFILES, generic_profile
from exporter.model import (
    BOUND_STATES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LABEL_LENGTH,
    DEFAULT_MAX_MODELS,
    ENDPOINT_COUNTER_FIELDS,
    ENDPOINT_ENGINES,
    ENDPOINT_FIELD_NAMES,
    ENDPOINT_FIELDS,
    ENGINE_NAMES,
    EVIDENCE_SIGNALS,
    GIB,
    LOG_LEVELS,
    MIB,
    SCENARIO_NAMES,
    WINDOWED_COUNTER_FIELDS,
    Derived,
    DerivedGpu,
    EndpointSample,
    EndpointValue,
    Snapshot,
)
from exporter.render.derived import derived_families
from exporter.render.endpoints import SIMPLE_FIELDS, endpoint_families, simple_metric_name


def test_endpoint_fields_are_unique_and_typed() -> None:
    assert len(set(ENDPOINT_FIELD_NAMES)) == len(ENDPOINT_FIELDS)
    assert {field.kind for field in ENDPOINT_FIELDS} == {"counter", "gauge"}
    assert all(field.help for field in ENDPOINT_FIELDS)
    for profile in PROFILES.values():
        assert set(profile.fields) <= set(ENDPOINT_FIELD_NAMES), profile.name


def test_counter_fields_are_every_counter_and_windowed_fields_the_work_counters() -> None:
    assert {
        "requests_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "work_units_total",
        "ttft_seconds_sum",
        "ttft_seconds_count",
        "e2e_latency_seconds_sum",
        "e2e_latency_seconds_count",
        "tpot_seconds_sum",
        "tpot_seconds_count",
        "queue_time_seconds_sum",
        "queue_time_seconds_count",
    } == ENDPOINT_COUNTER_FIELDS
    assert set(WINDOWED_COUNTER_FIELDS) == {
        "generation_tokens_total",
        "prompt_tokens_total",
        "requests_total",
        "work_units_total",
    }
    assert set(WINDOWED_COUNTER_FIELDS) <= ENDPOINT_COUNTER_FIELDS


def test_simple_endpoint_families_keep_their_names_kinds_and_order() -> None:
    expected = [
        ("prompt_tokens_total", "tpw_endpoint_prompt_tokens", "counter"),
        ("generation_tokens_total", "tpw_endpoint_generation_tokens", "counter"),
        ("requests_running", "tpw_endpoint_requests_running", "gauge"),
        ("requests_waiting", "tpw_endpoint_requests_waiting", "gauge"),
        ("kv_cache_usage_ratio", "tpw_endpoint_kv_cache_usage_ratio", "gauge"),
    ]
    assert [(f.name, simple_metric_name(f), f.kind) for f in SIMPLE_FIELDS] == expected

    values = tuple(EndpointValue(field.name, "m", 1.0) for field in SIMPLE_FIELDS)
    endpoint = EndpointSample(name="e", engine="vllm", url="http://x/metrics", values=values)
    families = {
        family.name: family for family in endpoint_families(Snapshot(1, 0.0, 0.0, 0.0, endpoints=(endpoint,)))
    }
    for field, name, kind in expected:
        family = families[name]
        assert isinstance(family, CounterMetricFamily if kind == "counter" else GaugeMetricFamily), field
        assert [sample.value for sample in family.samples if not sample.name.endswith("_created")] == [1.0]


def test_engine_profiles_are_exactly_the_engine_names() -> None:
    assert tuple(PROFILES) == ENGINE_NAMES
    assert all(PROFILES[name].name == name for name in ENGINE_NAMES)
    assert ("auto", *ENGINE_NAMES, "generic") == ENDPOINT_ENGINES


def test_config_and_cli_list_the_engine_names() -> None:
    assert get_args(EndpointConfig.model_fields["engine"].annotation) == ENDPOINT_ENGINES
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    (endpoint,) = [action for action in serve._actions if action.dest == "endpoint"]
    assert f"engine: {', '.join(ENDPOINT_ENGINES)} (default auto;" in (endpoint.help or "")  # generic too


def test_bound_states_and_evidence_signals_come_from_the_model() -> None:
    corners = [
        dict(zip(EVIDENCE_SIGNALS, values, strict=True))
        for values in [
            (t, f, d, s, g) for t in (0, 1) for f in (0, 1) for d in (0, 1) for s in (0, 1) for g in (0, 1)
        ]
    ]
    assert {classify_bound(evidence, Thresholds()) for evidence in corners} <= set(BOUND_STATES)

    evidence = dict(zip(EVIDENCE_SIGNALS, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True))
    gpu = DerivedGpu(index=0, bound="memory", evidence=evidence)
    snapshot = Snapshot(1, 0.0, 0.0, 0.0, derived=Derived(window_seconds=1.0, gpus=(gpu,)))
    families = {family.name: family for family in derived_families(snapshot)}
    bound = families["tpw_gpu_bound"].samples
    assert [(s.labels["bound"], s.value) for s in bound] == [(b, float(b == "memory")) for b in BOUND_STATES]
    signals = families["tpw_gpu_bound_evidence_ratio"].samples
    assert [(s.labels["signal"], s.value) for s in signals] == list(evidence.items())


def test_log_levels_and_sizes_are_defined_once() -> None:
    assert (
        get_args(Config.model_fields["log_level"].annotation)
        == LOG_LEVELS
        == ("debug", "info", "warning", "error")
    )
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    (flag,) = [action for action in serve._actions if action.dest == "log_level"]
    assert tuple(flag.choices or ()) == LOG_LEVELS
    assert (MIB, GIB) == (2**20, 2**30)
    assert EndpointConfig.model_fields["max_body_bytes"].default == DEFAULT_MAX_BODY_BYTES == 4 * 2**20
    assert EndpointConfig.model_fields["max_models"].default == DEFAULT_MAX_MODELS == 100
    assert EndpointConfig.model_fields["max_label_length"].default == DEFAULT_MAX_LABEL_LENGTH == 256


def test_scenario_specs_are_exactly_the_scenario_names() -> None:
    assert tuple(SCENARIO_SPECS) == SCENARIO_NAMES == SCENARIOS
    assert get_args(Config.model_fields["simulation"].annotation.model_fields["scenario"].annotation) == (
        SCENARIO_NAMES
    )


def _package_imports(path: Path) -> set[str]:
    """The modules of the package `path` imports at run time (not those under `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    imported: set[str] = set()
    for node in ast.walk(tree):  # every import, also those inside functions
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {path}"
            imported.add(node.module or "")
    return {name for name in imported if name == "exporter" or name.startswith("exporter.")}


def test_config_imports_no_module_of_the_package_but_the_model_and_its_leaves() -> None:
    """The config's own leaves: the endpoint auth settings and the redaction, which import no module of the
    package themselves."""
    config = Path(exporter.config.__file__)
    assert _package_imports(config) == {"exporter.model", "exporter.config_auth", "exporter.redact"}
    for leaf in ("config_auth.py", "redact.py"):
        assert _package_imports(config.parent / leaf) == set(), leaf


@pytest.mark.parametrize(
    ("mapping", "unit"),
    [
        ({"tokens_total": "x"}, "tokens"),
        ({"generation_tokens_total": " "}, "tokens"),
        ({"work_units_total": "images_total"}, "tokens"),
    ],
)
def test_config_and_engines_reject_a_bad_generic_mapping_alike(mapping: dict[str, str], unit: str) -> None:
    with pytest.raises(ValueError) as from_engines:
        generic_profile(mapping, unit)
    endpoint = {"name": "g", "url": "http://x/metrics", "engine": "generic", "unit": unit, "mapping": mapping}
    with pytest.raises(ConfigError) as from_config:
        load_config(environ={}, overrides={"endpoints": [endpoint]})
    assert str(from_engines.value) in str(from_config.value)


def test_every_module_logs_under_its_own_name() -> None:
    root = Path(exporter.config.__file__).parent
    odd: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
            ):
                (arg,) = node.args
                if isinstance(arg, ast.Name) and arg.id == "__name__":
                    continue
                name = arg.value if isinstance(arg, ast.Constant) else ast.unparse(arg)
                if name == "httpx":  # another library's logger, quietened
                    continue
                if path.name == "listener.py" and name == "name":  # uvicorn's and asyncio's, rate-limited
                    continue
                if path.name == "redact.py" and name == "name":  # httpx's and httpcore's, redacted
                    continue
                odd.add((path.relative_to(root.parent).as_posix(), str(name)))
    assert odd == set()
