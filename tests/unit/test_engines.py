"""Tests of exporter.engines against one realistic page per engine (and per notable version).

Expected values are worked out by hand from tests/fixtures/engines/*.prom.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.engines import (
    PROFILES,
    EngineProfile,
    FieldSource,
    NormalizedSeries,
    detect_engine,
    generic_profile,
    is_detection_name,
    normalize,
)
from exporter.model import ENDPOINT_FIELD_NAMES
from exporter.promtext import parse_selected

FIXTURES = Path(__file__).parent.parent / "fixtures" / "engines"

Expected = dict[tuple[str, str, str | None], float]

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN3 = "Qwen/Qwen3-32B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"

EXPECTED: dict[str, tuple[str, Expected]] = {
    "vllm_v0.prom": (
        "vllm",
        {
            # finished_reason stop 412 + length 37; abort 5
            ("requests_total", LLAMA, "success"): 449,
            ("requests_total", LLAMA, "aborted"): 5,
            ("prompt_tokens_total", LLAMA, None): 152340,
            ("generation_tokens_total", LLAMA, None): 98211,
            ("requests_running", LLAMA, None): 7,
            ("requests_waiting", LLAMA, None): 2,
            ("kv_cache_usage_ratio", LLAMA, None): 0.4375,  # vllm:gpu_cache_usage_perc, already 0..1
            ("ttft_seconds_sum", LLAMA, None): 61.84,
            ("ttft_seconds_count", LLAMA, None): 454,
            ("e2e_latency_seconds_sum", LLAMA, None): 1873.5,
            ("e2e_latency_seconds_count", LLAMA, None): 454,
            # V0: vllm:time_per_output_token_seconds, one observation per generated token
            ("tpot_seconds_sum", LLAMA, None): 2461.3,
            ("tpot_seconds_count", LLAMA, None): 97757,
        },
    ),
    "vllm_v1.prom": (
        "vllm",
        {
            # two data-parallel engines, summed: stop 300+280, length 20+25; abort 3+1
            ("requests_total", QWEN3, "success"): 625,
            ("requests_total", QWEN3, "aborted"): 4,
            ("prompt_tokens_total", QWEN3, None): 150000,
            ("generation_tokens_total", QWEN3, None): 78000,
            ("requests_running", QWEN3, None): 9,
            ("requests_waiting", QWEN3, None): 1,
            # kv_cache_usage_perc 0.62 and 0.58 averaged; gpu_cache_usage_perc (same values) ignored
            ("kv_cache_usage_ratio", QWEN3, None): 0.60,
            ("ttft_seconds_sum", QWEN3, None): 58.75,
            ("ttft_seconds_count", QWEN3, None): 629,
            ("e2e_latency_seconds_sum", QWEN3, None): 1750.5,
            ("e2e_latency_seconds_count", QWEN3, None): 629,
            ("queue_time_seconds_sum", QWEN3, None): 22.25,  # 12.75 + 9.5
            ("queue_time_seconds_count", QWEN3, None): 629,
        },
    ),
    "sglang.prom": (
        "sglang",
        {
            ("requests_total", QWEN25, "unknown"): 2100,
            ("prompt_tokens_total", QWEN25, None): 530000,
            ("generation_tokens_total", QWEN25, None): 210000,
            ("requests_running", QWEN25, None): 12,
            ("requests_waiting", QWEN25, None): 3,
            ("kv_cache_usage_ratio", QWEN25, None): 0.71,
            ("ttft_seconds_sum", QWEN25, None): 420.5,
            ("ttft_seconds_count", QWEN25, None): 2100,
            ("e2e_latency_seconds_sum", QWEN25, None): 9800.25,
            ("e2e_latency_seconds_count", QWEN25, None): 2100,
            ("tpot_seconds_sum", QWEN25, None): 4158.0,  # sglang:inter_token_latency_seconds
            ("tpot_seconds_count", QWEN25, None): 207900,
        },
    ),
    "tgi.prom": (
        "tgi",
        {
            ("requests_total", "", "success"): 1210,
            ("requests_total", "", "failure"): 35,  # validation 25 + overloaded 10
            ("requests_total", "", "aborted"): 5,  # dropped
            ("prompt_tokens_total", "", None): 486000,
            ("generation_tokens_total", "", None): 302500,
            ("requests_running", "", None): 16,
            ("requests_waiting", "", None): 4,
            ("e2e_latency_seconds_sum", "", None): 3025.5,
            ("e2e_latency_seconds_count", "", None): 1210,
            ("tpot_seconds_sum", "", None): 30.8,  # tgi_request_mean_time_per_token_duration
            ("tpot_seconds_count", "", None): 1210,
            ("queue_time_seconds_sum", "", None): 95.2,
            ("queue_time_seconds_count", "", None): 1210,
        },
    ),
    "triton.prom": (
        "triton",
        {
            ("requests_total", "ensemble", "success"): 980,
            ("requests_total", "ensemble", "failure"): 7,  # reason OTHER
            ("requests_total", "ensemble", "aborted"): 0,
            ("requests_total", "tensorrt_llm", "success"): 980,
            ("requests_total", "tensorrt_llm", "failure"): 3,  # BACKEND
            ("requests_total", "tensorrt_llm", "aborted"): 4,  # CANCELED
            ("requests_total", "resnet50", "success"): 15230,
            ("requests_total", "resnet50", "failure"): 12,  # REJECTED
            ("requests_total", "resnet50", "aborted"): 0,
            ("prompt_tokens_total", "tensorrt_llm", None): 612500,
            ("generation_tokens_total", "tensorrt_llm", None): 245000,
            ("requests_running", "tensorrt_llm", None): 12,  # request_type="scheduled"
            ("requests_waiting", "tensorrt_llm", None): 5,  # request_type="waiting" beats pending 0
            ("requests_waiting", "ensemble", None): 0,  # nv_inference_pending_request_count
            ("requests_waiting", "resnet50", None): 6,
            ("kv_cache_usage_ratio", "tensorrt_llm", None): 0.65,  # kv_cache_block_type="fraction"
            ("ttft_seconds_sum", "ensemble", None): 245.0,  # 245000 ms
            ("ttft_seconds_count", "ensemble", None): 980,
            ("ttft_seconds_sum", "tensorrt_llm", None): 236.5,
            ("ttft_seconds_count", "tensorrt_llm", None): 980,
            ("e2e_latency_seconds_sum", "ensemble", None): 1960.0,  # 1.96e9 µs
            ("e2e_latency_seconds_count", "ensemble", None): 980,
            ("e2e_latency_seconds_sum", "tensorrt_llm", None): 1850.0,
            ("e2e_latency_seconds_count", "tensorrt_llm", None): 980,
            ("e2e_latency_seconds_sum", "resnet50", None): 182.76,
            ("e2e_latency_seconds_count", "resnet50", None): 15230,
        },
    ),
    "triton_old.prom": (
        "triton",
        {
            ("requests_total", "ensemble", "success"): 120,
            ("requests_total", "ensemble", "failure"): 2,  # no reason label before it existed
            ("requests_total", "tensorrt_llm", "success"): 120,
            ("requests_total", "tensorrt_llm", "failure"): 2,
            ("requests_running", "tensorrt_llm", None): 3,
            ("requests_waiting", "ensemble", None): 0,
            ("requests_waiting", "tensorrt_llm", None): 0,  # no request_type="waiting" yet
            ("kv_cache_usage_ratio", "tensorrt_llm", None): 0.25,  # used 1560 / max 6240
            ("e2e_latency_seconds_sum", "ensemble", None): 101.0,
            ("e2e_latency_seconds_count", "ensemble", None): 120,
            ("e2e_latency_seconds_sum", "tensorrt_llm", None): 96.0,
            ("e2e_latency_seconds_count", "tensorrt_llm", None): 120,
        },
    ),
    "llamacpp_old.prom": (
        "llamacpp",
        {
            ("prompt_tokens_total", "", None): 33065,
            ("generation_tokens_total", "", None): 7801,
            ("requests_running", "", None): 2,
            ("requests_waiting", "", None): 1,
            ("kv_cache_usage_ratio", "", None): 0.34375,
        },
    ),
    "llamacpp_new.prom": (
        "llamacpp",
        {
            ("prompt_tokens_total", "", None): 1362385,
            ("generation_tokens_total", "", None): 247778,
            ("requests_running", "", None): 3,
            ("requests_waiting", "", None): 0,
        },
    ),
}


def read(name: str) -> str:
    """The text of a fixture page."""
    return (FIXTURES / name).read_text(encoding="utf-8")


def as_dict(series: list[NormalizedSeries]) -> Expected:
    """Normalized series keyed by (field, model, outcome); keys must be unique."""
    found = {(s.field, s.model, s.outcome): s.value for s in series}
    assert len(found) == len(series), "one value per (field, model, outcome)"
    return found


def normalized(profile: EngineProfile, text: str) -> Expected:
    """Parse a page with the profile's wanted names and normalize it."""
    result = parse_selected(text, profile.wanted_names())
    assert result.malformed == 0, result.first_error
    return as_dict(normalize(profile, result.samples))


def test_every_fixture_is_covered() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.prom")) == sorted(EXPECTED)


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_fixture_normalizes_to_expected_values(fixture: str) -> None:
    engine, expected = EXPECTED[fixture]
    assert normalized(PROFILES[engine], read(fixture)) == pytest.approx(expected)


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_detect_engine_from_samples_and_names(fixture: str) -> None:
    samples = parse_selected(read(fixture), is_detection_name).samples
    assert detect_engine(samples) == EXPECTED[fixture][0]
    assert detect_engine(sample.name for sample in samples) == EXPECTED[fixture][0]


def test_detect_engine_without_engine_metrics() -> None:
    assert detect_engine([]) is None
    assert detect_engine(["process_cpu_seconds_total", "python_gc_collections_total", "up"]) is None


def test_detect_prefers_the_serving_engine_over_triton() -> None:
    assert detect_engine(["nv_inference_request_success", "vllm:num_requests_running"]) == "vllm"


def test_wanted_names_skip_created_series_and_every_bucket_but_the_latency_histograms() -> None:
    for profile in PROFILES.values():
        names = profile.wanted_names()
        assert names
        assert not any(name.endswith("_created") for name in names)
        latency = {f"{source.base}_bucket" for sources in profile.histograms.values() for source in sources}
        assert {name for name in names if name.endswith("_bucket")} == latency


def test_profiles_only_use_known_fields() -> None:
    for profile in PROFILES.values():
        assert set(profile.fields) <= set(ENDPOINT_FIELD_NAMES)
        assert "work_units_total" not in profile.fields


# --- vLLM renames -------------------------------------------------------------------------------

VLLM_KV_PAGE = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} {old}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} {new}
"""


def kv_ratio(text: str) -> Expected:
    """The KV-cache field of a vLLM page."""
    values = normalized(PROFILES["vllm"], text)
    return {key: value for key, value in values.items() if key[0] == "kv_cache_usage_ratio"}


def test_vllm_prefers_new_kv_name_and_does_not_add_the_old_one() -> None:
    page = VLLM_KV_PAGE.replace("{old}", "0.9").replace("{new}", "0.3")
    assert kv_ratio(page) == {("kv_cache_usage_ratio", "m", None): 0.3}


def test_vllm_old_kv_name_alone_is_read() -> None:
    old_only = "\n".join(VLLM_KV_PAGE.replace("{old}", "0.9").splitlines()[:2])
    assert kv_ratio(old_only) == {("kv_cache_usage_ratio", "m", None): 0.9}


def test_vllm_new_kv_name_alone_is_read() -> None:
    new_only = "\n".join(VLLM_KV_PAGE.replace("{new}", "0.3").splitlines()[2:])
    assert kv_ratio(new_only) == {("kv_cache_usage_ratio", "m", None): 0.3}


def test_vllm_fixture_with_both_names_is_not_double_counted() -> None:
    text = read("vllm_v1.prom")
    assert "vllm:gpu_cache_usage_perc{" in text and "vllm:kv_cache_usage_perc{" in text
    assert kv_ratio(text) == {("kv_cache_usage_ratio", QWEN3, None): pytest.approx(0.60)}


def test_vllm_finish_reasons_map_to_outcomes() -> None:
    page = "\n".join(
        f'vllm:request_success_total{{finished_reason="{reason}",model_name="m"}} {count}'
        for reason, count in [
            ("stop", 1),
            ("length", 2),
            ("abort", 4),
            ("error", 8),
            ("repetition", 16),
            ("new", 32),
        ]
    )
    values = normalized(PROFILES["vllm"], page)
    assert values == {
        ("requests_total", "m", "success"): 19,
        ("requests_total", "m", "aborted"): 4,
        ("requests_total", "m", "failure"): 8,
        ("requests_total", "m", "other"): 32,
    }


def test_openmetrics_vllm_page() -> None:
    page = """\
# TYPE vllm:prompt_tokens counter
# HELP vllm:prompt_tokens Number of prefill tokens processed.
vllm:prompt_tokens_total{engine="0",model_name="a"} 10.0
vllm:prompt_tokens_created{engine="0",model_name="a"} 1.7e+09
vllm:prompt_tokens_total{engine="0",model_name="b"} 20.0 # {trace_id="x"} 5.0
vllm:prompt_tokens_created{engine="0",model_name="b"} 1.7e+09
# EOF
"""
    assert normalized(PROFILES["vllm"], page) == {
        ("prompt_tokens_total", "a", None): 10.0,
        ("prompt_tokens_total", "b", None): 20.0,
    }


# --- scaling and ratios -------------------------------------------------------------------------


def test_percent_is_scaled_to_a_ratio_and_averaged_per_model() -> None:
    profile = EngineProfile(
        name="percent-engine",
        fields={"kv_cache_usage_ratio": ((FieldSource("kv_used_percent", scale=0.01),),)},
        model_labels=("model",),
        detect=("kv_",),
        citation="test",
    )
    page = (
        'kv_used_percent{model="a",rank="0"} 70\nkv_used_percent{model="a",rank="1"} 77\nkv_used_percent 50\n'
    )
    assert normalized(profile, page) == pytest.approx(
        {("kv_cache_usage_ratio", "a", None): 0.735, ("kv_cache_usage_ratio", "", None): 0.5}
    )


def test_ratio_with_zero_denominator_is_left_out() -> None:
    page = (
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="m",version="1"} 0\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="m",version="1"} 0\n'
    )
    assert normalized(PROFILES["triton"], page) == {}


def test_microseconds_and_milliseconds_become_seconds() -> None:
    page = (
        'nv_inference_request_duration_us{model="m",version="1"} 2500000\n'
        'nv_inference_first_response_histogram_ms_sum{model="m",version="1"} 750\n'
    )
    assert normalized(PROFILES["triton"], page) == pytest.approx(
        {("e2e_latency_seconds_sum", "m", None): 2.5, ("ttft_seconds_sum", "m", None): 0.75}
    )


def test_model_versions_are_summed() -> None:
    page = (
        'nv_inference_request_success{model="m",version="1"} 3\n'
        'nv_inference_request_success{model="m",version="2"} 4\n'
    )
    assert normalized(PROFILES["triton"], page) == {
        ("requests_total", "m", "success"): 7,
        ("e2e_latency_seconds_count", "m", None): 7,
    }


# --- generic endpoints --------------------------------------------------------------------------


def test_generic_profile_reads_the_mapped_metrics() -> None:
    profile = generic_profile(
        {"work_units_total": "images_generated_total", "requests_total": "http_requests_total"},
        "images",
        model_labels=("pipeline",),
    )
    assert (profile.name, profile.work_unit, profile.detect) == ("generic", "images", ())
    assert profile.wanted_names() == {"images_generated_total", "http_requests_total"}
    page = (
        'images_generated_total{pipeline="sdxl"} 12\n'
        'images_generated_total{pipeline="flux"} 30\n'
        'http_requests_total{code="200"} 40\n'
        'http_requests_total{code="500"} 2\n'
    )
    assert normalized(profile, page) == {
        ("work_units_total", "sdxl", None): 12,
        ("work_units_total", "flux", None): 30,
        ("requests_total", "", "unknown"): 42,
    }


def test_generic_profile_rejects_unknown_fields_naming_them() -> None:
    with pytest.raises(ValueError, match="'tokens_total'") as error:
        generic_profile({"tokens_total": "x"}, "tokens")
    for name in ENDPOINT_FIELD_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("mapping", "unit", "message"),
    [
        ({"prompt_tokens_total": ""}, "tokens", "'prompt_tokens_total'"),
        ({"prompt_tokens_total": "  "}, "tokens", "'prompt_tokens_total'"),
        ({"work_units_total": "x"}, "tokens", "work_units_total"),
        ({"work_units_total": "x"}, "", "unit"),
    ],
)
def test_generic_profile_validation(mapping: dict[str, str], unit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generic_profile(mapping, unit)
