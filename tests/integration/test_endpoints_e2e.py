"""End to end: demo GPUs + a local fake engine whose counters advance → normalized, attributed series."""

from __future__ import annotations

import re
import time
from pathlib import Path

from engine_server import engine_server
from helpers import running_exporter, wait_for
from prometheus_client.parser import text_string_to_metric_families


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_fake_engine_counters_flow_through_with_attribution(tmp_path: Path) -> None:
    state = {"scrapes": 0}

    def page() -> bytes:
        state["scrapes"] += 1
        n = state["scrapes"]
        return (
            f'sglang:generation_tokens_total{{model_name="qwen"}} {100 * n}\n'
            f'sglang:prompt_tokens_total{{model_name="qwen"}} {300 * n}\n'
            f'sglang:num_running_reqs{{model_name="qwen"}} 7\n'
            f'sglang:num_queue_reqs{{model_name="qwen"}} 2\n'
            f'sglang:token_usage{{model_name="qwen"}} 0.25\n'
        ).encode()

    with engine_server(page) as engine:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"endpoints:\n  - name: fake-sglang\n    url: {engine.url}\n    engine: auto\n    gpus: [1]\n"
        )
        args = ["demo", "--gpus", "2", "--interval", "0.3", "--config", str(config)]
        with running_exporter(args) as exporter:
            first = wait_for(
                lambda: series(exporter.metrics(), "tpw_endpoint_generation_tokens_total"),
                10,
                "endpoint series",
            )
            time.sleep(1.0)
            text = exporter.metrics()
    key = (("endpoint", "fake-sglang"), ("engine", "sglang"), ("model", "qwen"))
    tokens_then, tokens_now = first[key], series(text, "tpw_endpoint_generation_tokens_total")[key]
    assert tokens_now > tokens_then > 0
    assert tokens_now % 100 == 0 and tokens_now <= 100 * state["scrapes"]
    prompt = series(text, "tpw_endpoint_prompt_tokens_total")[key]
    assert prompt % 300 == 0 and prompt > 0
    assert series(text, "tpw_endpoint_requests_running")[key] == 7
    assert series(text, "tpw_endpoint_requests_waiting")[key] == 2
    assert series(text, "tpw_endpoint_kv_cache_usage_ratio")[key] == 0.25
    attribution = series(text, "tpw_endpoint_gpu_info")
    assert attribution == {
        (("attribution", "config"), ("endpoint", "fake-sglang"), ("gpu", "1")): 1.0,
        (("attribution", "all"), ("endpoint", "demo-vllm"), ("gpu", "0")): 1.0,
        (("attribution", "all"), ("endpoint", "demo-vllm"), ("gpu", "1")): 1.0,
    }
    assert series(text, "tpw_endpoint_up")[(("endpoint", "fake-sglang"), ("engine", "sglang"))] == 1.0


def test_endpoint_flag_and_a_dead_endpoint_keep_the_rest_flowing() -> None:
    with engine_server(b"") as dead:
        url = dead.url  # closed on exit: connection refused from now on
    args = ["demo", "--interval", "0.3", "--endpoint", f"gone={url},engine=vllm,gpus=0+1"]
    with running_exporter(args) as exporter:

        def failing() -> str | None:
            text = exporter.metrics()
            return text if 'tpw_endpoint_scrape_errors_total{endpoint="gone"' in text else None

        text = wait_for(failing, 10, "scrape errors for the dead endpoint")
        output = exporter.output()
    assert 'tpw_endpoint_up{endpoint="gone",engine="vllm"} 0.0' in text
    assert re.search(r'tpw_endpoint_scrape_errors_total\{endpoint="gone",reason="connect"\} [1-9]', text)
    assert 'tpw_source_up{source="endpoints"} 1.0' in text
    assert 'tpw_gpu_up{gpu="0"} 1.0' in text
    # The demo endpoint was not in the flags, but the demo adds its own simulated engine.
    assert 'tpw_endpoint_up{endpoint="demo-vllm",engine="vllm"} 1.0' in text
    # one line for the failure, not one per tick (a timeout on a loaded machine is a second kind: one more)
    assert output.count("endpoint gone is down: cannot connect") == 1
