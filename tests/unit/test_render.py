"""Rendering: absent stays absent, naming conventions, both formats (promtool's linter:
tests/integration/test_render_promtool.py)."""

from __future__ import annotations

import math
import re

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from render_common import simulated_snapshot

from exporter.model import EndpointSample, EndpointValue, GpuInfo, GpuSample, Profiling, Snapshot
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_absent_fields_render_no_series() -> None:
    bare = GpuSample(info=GpuInfo(index=0, uuid="GPU-x", name="old GPU"), power_watts=50.0)
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, gpus=(bare,))
    text = Renderer().render(snapshot).text.decode()
    assert 'tpw_gpu_power_watts{gpu="0"} 50.0' in text
    assert "tpw_gpu_sm_active_ratio{" not in text
    assert "tpw_gpu_temperature_celsius{" not in text
    assert 'tpw_gpu_profiling_supported{gpu="0"} 0.0' in text


def test_down_gpu_keeps_identity_and_drops_its_values() -> None:
    info = GpuInfo(index=1, uuid="GPU-lost", name="H100")
    lost = GpuSample(info=info, up=False, error="GPU is lost", power_watts=None)
    alive = GpuSample(info=GpuInfo(index=0, uuid="GPU-ok", name="H100"), power_watts=300.0, energy_joules=9.0)
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, gpus=(alive, lost))
    values = samples(Renderer().render(snapshot).text.decode())
    assert values[("tpw_gpu_up", (("gpu", "1"),))] == 0
    assert values[("tpw_gpu_up", (("gpu", "0"),))] == 1
    assert ("tpw_gpu_energy_joules_total", (("gpu", "0"),)) in values
    assert not any(name == "tpw_gpu_power_watts" and dict(labels)["gpu"] == "1" for name, labels in values)


def test_profiling_ratios_and_rates_render_with_units() -> None:
    profiling = Profiling(1.0, {"tensor_active": 0.93}, {"pcie_rx_bytes_per_second": 2048.0})
    gpu = GpuSample(info=GpuInfo(index=0, uuid="u", name="n", profiling_supported=True), profiling=profiling)
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, gpus=(gpu,))
    values = samples(Renderer().render(snapshot).text.decode())
    assert values[("tpw_gpu_tensor_active_ratio", (("gpu", "0"),))] == 0.93
    assert values[("tpw_gpu_pcie_rx_bytes_per_second", (("gpu", "0"),))] == 2048.0
    assert values[("tpw_gpu_profiling_window_seconds", (("gpu", "0"),))] == 1.0


def test_clock_event_reasons_become_a_bounded_label_set() -> None:
    gpu = GpuSample(info=GpuInfo(index=0, uuid="u", name="n"), clock_event_reasons=0x4 | 0x40)
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, gpus=(gpu,))
    values = samples(Renderer().render(snapshot).text.decode())
    active = {dict(k[1])["reason"] for k, v in values.items() if k[0] == "tpw_gpu_clock_event_active" and v}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}


def test_every_family_has_help_and_follows_conventions() -> None:
    text = Renderer().render(simulated_snapshot(4)).text.decode()
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("tpw_")]
    assert len(ours) > 25
    for family in ours:
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.name.endswith("_ratio"):
            assert all(0.0 <= s.value <= 1.0 for s in family.samples), family.name
    # Simulated GPUs are labelled as such.
    assert re.search(r'tpw_gpu_info\{[^}]*simulated="true"', text)
    assert 'tpw_simulation_info{scenario="mixed"} 1.0' in text


def test_openmetrics_output_is_valid_and_terminated() -> None:
    exposition = Renderer().render(simulated_snapshot(2))
    om = exposition.openmetrics.decode()
    assert om.endswith("# EOF\n")
    assert "# TYPE tpw_gpu_energy_joules counter" in om
    assert "# TYPE tpw_gpu info" in om


def test_engine_counts_render_as_integers_and_broken_counter_values_are_left_out() -> None:
    """OpenMetrics wants integer histogram counts and no NaN or negative counter-like sample, whatever the
    engine sent: a fractional count is rounded, a broken counter value leaves its series out."""
    values = (
        EndpointValue("ttft_seconds_sum", "m", 61.84),
        EndpointValue("ttft_seconds_count", "m", 192.69),  # a fraction from a malformed page: 193
        EndpointValue("e2e_latency_seconds_sum", "m", math.nan),  # this histogram goes: no _sum, no _count
        EndpointValue("e2e_latency_seconds_count", "m", 454.0),
        EndpointValue("generation_tokens_total", "m", -3.0),
        EndpointValue("prompt_tokens_total", "m", math.inf),
        EndpointValue("requests_total", "m", 10.5, "success"),  # a counter may be fractional
        EndpointValue("requests_total", "m", math.nan, "failure"),
        EndpointValue("requests_running", "m", math.nan),  # a gauge may be NaN
    )
    endpoint = EndpointSample(name="e", engine="vllm", url="http://x/metrics", values=values)
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, endpoints=(endpoint,))
    exposition = Renderer(extra=[endpoint_families]).render(snapshot)
    om = {  # the strict parser raises on any of the values above rendered as given
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_openmetrics(exposition.openmetrics.decode())
        for s in family.samples
    }
    assert om.keys() == samples(exposition.text.decode()).keys()  # the same series in both formats
    labels = (("endpoint", "e"), ("engine", "vllm"), ("model", "m"))
    assert om[("tpw_endpoint_time_to_first_token_seconds_count", labels)] == 193
    assert om[("tpw_endpoint_time_to_first_token_seconds_sum", labels)] == 61.84
    assert om[("tpw_endpoint_requests_total", (*labels, ("outcome", "success")))] == 10.5
    assert math.isnan(om[("tpw_endpoint_requests_running", labels)])
    rendered = {name for name, _ in om}
    assert not rendered & {
        "tpw_endpoint_request_latency_seconds_sum",
        "tpw_endpoint_request_latency_seconds_count",
        "tpw_endpoint_generation_tokens_total",
        "tpw_endpoint_prompt_tokens_total",
    }
    assert ("tpw_endpoint_requests_total", (*labels, ("outcome", "failure"))) not in om
    assert om[("tpw_endpoint_resets_total", (("endpoint", "e"),))] == 0
