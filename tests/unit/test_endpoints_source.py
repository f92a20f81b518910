"""The endpoints source against real HTTP servers on loopback: engines, failures, resets, logging."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from engine_server import engine_server, fixture

from exporter.config import ConfigError, EndpointConfig, load_config
from exporter.model import EndpointSample
from exporter.sources.endpoints import EndpointsSource

MODEL = 'model_name="m"'


def vllm_page(tokens: float, running: float = 3, extra: str = "") -> bytes:
    return (
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{engine="0",{MODEL}}} {tokens}\n'
        "# TYPE vllm:prompt_tokens_total counter\n"
        f'vllm:prompt_tokens_total{{engine="0",{MODEL}}} {2 * tokens}\n'
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",{MODEL}}} {running}\n'
        f"{extra}"
    ).encode()


def endpoint(url: str, **kwargs: object) -> EndpointConfig:
    return EndpointConfig(name=str(kwargs.pop("name", "e")), url=url, **kwargs)


def scrape(*configs: EndpointConfig, source: EndpointsSource | None = None) -> tuple[EndpointSample, ...]:
    async def run() -> tuple[EndpointSample, ...]:
        inner = source or EndpointsSource(configs)
        try:
            return (await inner.collect()).endpoints
        finally:
            if source is None:
                await inner.close()

    return asyncio.run(run())


def values(sample: EndpointSample) -> dict[tuple[str, str, str | None], float]:
    return {(v.field, v.model, v.outcome): v.value for v in sample.values}


def errors(sample: EndpointSample) -> dict[str, int]:
    return dict(sample.errors_total)


@pytest.mark.parametrize(
    ("fixture_name", "engine"),
    [
        ("vllm_v0", "vllm"),
        ("vllm_v1", "vllm"),
        ("sglang", "sglang"),
        ("tgi", "tgi"),
        ("triton", "triton"),
        ("llamacpp_new", "llamacpp"),
    ],
)
def test_each_engine_is_detected_and_normalized_over_http(fixture_name: str, engine: str) -> None:
    with engine_server(fixture(fixture_name)) as server:
        (sample,) = scrape(endpoint(server.url))
    assert sample.up, sample.error
    assert sample.engine == engine
    fields = {v.field for v in sample.values}
    assert "generation_tokens_total" in fields
    assert all(v.value >= 0 for v in sample.values)


def test_explicit_engine_reads_exact_values_and_process_start() -> None:
    page = vllm_page(1234.0, running=7, extra="process_start_time_seconds 1700000000.5\n")
    with engine_server(page) as server:
        (sample,) = scrape(endpoint(server.url, engine="vllm"))
    assert sample.up and sample.engine == "vllm"
    got = values(sample)
    assert got[("generation_tokens_total", "m", None)] == 1234.0
    assert got[("prompt_tokens_total", "m", None)] == 2468.0
    assert got[("requests_running", "m", None)] == 7
    assert sample.process_start_time_seconds == 1700000000.5


def test_gzip_pages_are_decoded() -> None:
    body = gzip.compress(vllm_page(5.0))
    with engine_server(body, headers={"Content-Encoding": "gzip"}) as server:
        (sample,) = scrape(endpoint(server.url, engine="vllm"))
    assert values(sample)[("generation_tokens_total", "m", None)] == 5.0


def test_connection_refused_is_down_with_reason() -> None:
    with engine_server(b"") as server:
        url = server.url
    (sample,) = scrape(endpoint(url))
    assert not sample.up and sample.values == ()
    assert "cannot connect" in sample.error
    assert errors(sample) == {"connect": 1}


def test_slow_endpoint_times_out_without_delaying_the_others() -> None:
    with engine_server(vllm_page(1), delay=3.0) as slow, engine_server(vllm_page(2)) as fast:
        started = time.monotonic()
        slow_sample, fast_sample = scrape(
            endpoint(slow.url, name="slow", timeout_seconds=0.3), endpoint(fast.url, name="fast")
        )
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert not slow_sample.up and "no answer within 0.3 s" in slow_sample.error
    assert errors(slow_sample) == {"timeout": 1}
    assert fast_sample.up


def test_timeout_is_capped_at_the_tick_budget(caplog: pytest.LogCaptureFixture) -> None:
    """With a 0.5 s interval an endpoint's 5 s timeout would hold up every other source's tick."""
    with engine_server(vllm_page(1), delay=3.0) as slow:

        async def run() -> EndpointSample:
            source = EndpointsSource([endpoint(slow.url, timeout_seconds=5)], tick_budget_seconds=0.4)
            try:
                return (await source.collect()).endpoints[0]
            finally:
                await source.close()

        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            sample = asyncio.run(run())
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert not sample.up and "no answer within 0.4 s" in sample.error
    assert any("capped at 0.4 s" in r.message for r in caplog.records)


@pytest.mark.parametrize("status", [404, 500, 503])
def test_http_errors(status: int) -> None:
    with engine_server(b"nope", status=status) as server:
        (sample,) = scrape(endpoint(server.url))
    assert not sample.up and f"HTTP {status}" in sample.error
    assert errors(sample) == {"http_status": 1}


def test_declared_oversized_body_is_refused_without_reading() -> None:
    with engine_server(b"x", headers={"Content-Length": str(64 * 1024 * 1024)}) as server:
        (sample,) = scrape(endpoint(server.url, max_body_bytes=1024 * 1024))
    assert not sample.up and "over the 1048576-byte cap" in sample.error
    assert errors(sample) == {"too_large": 1}


def test_endless_streamed_body_is_cut_at_the_cap() -> None:
    with engine_server(b"", stream_forever=True) as server:
        started = time.monotonic()
        (sample,) = scrape(endpoint(server.url, max_body_bytes=256 * 1024, timeout_seconds=10))
        elapsed = time.monotonic() - started
    assert not sample.up and "stopped reading" in sample.error
    assert errors(sample) == {"too_large": 1}
    assert elapsed < 5


def test_non_utf8_body() -> None:
    with engine_server(b"vllm:generation_tokens_total 1\n\xff\xfe\n") as server:
        (sample,) = scrape(endpoint(server.url, engine="vllm"))
    assert not sample.up and "not UTF-8" in sample.error
    assert errors(sample) == {"decode": 1}


def test_malformed_lines_are_skipped_and_counted() -> None:
    bad = (
        "vllm:generation_tokens_total{"
        + MODEL
        + ',engine="1} 5\n'
        + "vllm:num_requests_waiting{"
        + MODEL
        + "} abc\n"
    )
    with engine_server(vllm_page(10.0, extra=bad)) as server:
        (sample,) = scrape(endpoint(server.url, engine="vllm"))
    assert sample.up
    assert values(sample)[("generation_tokens_total", "m", None)] == 10.0
    assert errors(sample) == {"malformed_line": 2}


def test_auto_parses_only_the_detected_engines_series_after_detection() -> None:
    """Detection reads every engine-prefixed line; after it, the buckets of histograms the profile does not
    read (all but the latency ones) are skipped unparsed."""
    bad_bucket = "vllm:request_prompt_tokens_bucket{" + MODEL + ',le="0.1} 3\n'
    with engine_server(vllm_page(7.0, extra=bad_bucket)) as server:

        async def run() -> list[EndpointSample]:
            source = EndpointsSource([endpoint(server.url)])
            samples = [(await source.collect()).endpoints[0] for _ in range(3)]
            await source.close()
            return samples

        first, second, third = asyncio.run(run())
    assert all(s.up and s.engine == "vllm" for s in (first, second, third))
    assert [errors(s).get("malformed_line", 0) for s in (first, second, third)] == [1, 1, 1]
    assert values(third)[("generation_tokens_total", "m", None)] == 7.0


def test_page_without_any_engine_metric() -> None:
    with engine_server(b"# just noise\nprocess_cpu_seconds_total 3\n") as server:
        (auto,) = scrape(endpoint(server.url))
        (fixed,) = scrape(endpoint(server.url, engine="tgi"))
    assert not auto.up and "no known engine" in auto.error and errors(auto) == {"no_engine": 1}
    assert not fixed.up and "no tgi metrics" in fixed.error and errors(fixed) == {"no_metrics": 1}


def test_redirects_same_host_followed_other_host_refused() -> None:
    with engine_server(vllm_page(3)) as target:
        same = {"Location": f"http://127.0.0.1:{target.port}/metrics"}
        other = {"Location": f"http://localhost:{target.port}/metrics"}  # another host name
        with (
            engine_server(b"", status=302, headers=same) as hop,
            engine_server(b"", status=301, headers=other) as away,
        ):
            # `hop` redirects to another port of the same host name: netloc differs, so it is refused too.
            first, second = scrape(
                endpoint(hop.url, name="hop", engine="vllm"), endpoint(away.url, name="away")
            )
            relative = {"Location": "/metrics?x=1"}
            with engine_server(b"", status=307, headers=relative) as loop:
                (third,) = scrape(endpoint(loop.url, name="loop"))
    assert not first.up and "redirect to another host not followed" in first.error
    assert not second.up and errors(second) == {"redirect": 1}
    assert target.behaviour.requests == 0  # neither redirect reached the other server
    assert not third.up and "more than 3 redirects" in third.error


def test_counter_going_backwards_counts_a_reset_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    page = {"body": vllm_page(1000.0)}
    with engine_server(lambda: page["body"]) as server:

        async def run() -> list[EndpointSample]:
            source = EndpointsSource([endpoint(server.url, engine="vllm")])
            samples = [(await source.collect()).endpoints[0]]
            page["body"] = vllm_page(10.0)  # the engine restarted
            samples.append((await source.collect()).endpoints[0])
            page["body"] = vllm_page(20.0)
            samples.append((await source.collect()).endpoints[0])
            await source.close()
            return samples

        with caplog.at_level(logging.INFO):
            first, second, third = asyncio.run(run())
    assert [s.resets_total for s in (first, second, third)] == [0, 1, 1]
    assert any("went backwards" in r.message for r in caplog.records)


def test_state_changes_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    behaviour_page = {"status": 500}
    with engine_server(vllm_page(1)) as server:

        async def run() -> None:
            source = EndpointsSource([endpoint(server.url, name="flappy", engine="vllm")])
            server.behaviour.status = behaviour_page["status"]
            for _ in range(3):
                await source.collect()
            server.behaviour.status = 200
            for _ in range(3):
                await source.collect()
            await source.close()

        with caplog.at_level(logging.INFO):
            asyncio.run(run())
    messages = [r.message for r in caplog.records if "flappy" in r.message]
    assert sum("is down" in m for m in messages) == 1
    assert sum("is up again" in m for m in messages) == 1


def test_a_failure_is_logged_once_per_kind_not_per_message(caplog: pytest.LogCaptureFixture) -> None:
    """HTTP 500 then 503 (same kind, other message): one line; then a connection refused: one more."""
    with engine_server(vllm_page(1)) as server:

        async def run() -> None:
            source = EndpointsSource([endpoint(server.url, name="flaky", engine="vllm")])
            for status in (500, 503, 500):
                server.behaviour.status = status
                await source.collect()
            server.close()
            for _ in range(2):
                await source.collect()
            await source.close()

        with caplog.at_level(logging.INFO):
            asyncio.run(run())
    down = [r.message for r in caplog.records if "flaky is down" in r.message]
    assert len(down) == 2, down
    assert "500" in down[0] and "cannot connect" in down[1]


def test_metric_set_change_and_engine_change_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    page = {"body": vllm_page(1)}
    with engine_server(lambda: page["body"]) as server:

        async def run() -> list[EndpointSample]:
            source = EndpointsSource([endpoint(server.url)])
            out = [(await source.collect()).endpoints[0]]
            page["body"] = vllm_page(2, extra=f"vllm:num_requests_waiting{{{MODEL}}} 4\n")
            out.append((await source.collect()).endpoints[0])
            page["body"] = fixture("sglang")
            out.append((await source.collect()).endpoints[0])
            await source.close()
            return out

        with caplog.at_level(logging.INFO):
            samples = asyncio.run(run())
    assert [s.engine for s in samples] == ["vllm", "vllm", "sglang"]
    assert any("metric set changed" in r.message and "requests_waiting" in r.message for r in caplog.records)
    assert any("engine changed from vllm to sglang" in r.message for r in caplog.records)


def test_generic_endpoint_with_images() -> None:
    page = b'images_done_total{model="sdxl"} 42\nqueue_depth{model="sdxl"} 3\n'
    config = endpoint(
        "http://127.0.0.1:1/metrics",
        engine="generic",
        unit="images",
        mapping={"work_units_total": "images_done_total", "requests_waiting": "queue_depth"},
        model_label="model",
    )
    with engine_server(page) as server:
        (sample,) = scrape(config.model_copy(update={"url": server.url}))
    assert sample.up and sample.unit == "images" and sample.engine == "generic"
    assert values(sample) == {
        ("work_units_total", "sdxl", None): 42.0,
        ("requests_waiting", "sdxl", None): 3.0,
    }


def test_the_url_shown_is_redacted_and_keeps_ipv6_brackets() -> None:
    source = EndpointsSource(
        [
            endpoint("http://user:secret@host:8000/metrics?x=1", name="a"),
            endpoint("http://[::1]:8000/metrics", name="b"),
        ]
    )
    asyncio.run(source.close())
    assert [scraper.url for scraper in source.scrapers] == [
        "http://<redacted>@host:8000/metrics?x=<redacted>",
        "http://[::1]:8000/metrics",
    ]


# -- hostile pages (issue 13): the time limit covers the parse, one endpoint never touches another -------


def slow_page(size: int = 3 * 1024 * 1024) -> bytes:
    """Valid vLLM lines under the default 4 MiB cap that take ~0.5 s or more to parse."""
    labels = ",".join(f'l{k}=""' for k in range(20))
    line = f'vllm:generation_tokens_total{{{labels},model_name="m"}} 1\n'.encode()
    return line * (size // len(line))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_parse_past_the_time_limit_is_a_timeout_its_worker_killed_and_the_others_kept() -> None:
    with engine_server(slow_page()) as slow, engine_server(vllm_page(2)) as fast:

        async def run() -> tuple[float, int, int, tuple[EndpointSample, ...], EndpointSample]:
            source = EndpointsSource(
                [
                    endpoint(slow.url, name="slow", engine="vllm", timeout_seconds=0.2),
                    endpoint(fast.url, name="fast", engine="vllm"),
                ]
            )
            try:
                worker = source.scrapers[0].worker
                first_pid = worker.pid
                started = time.monotonic()
                samples = (await source.collect()).endpoints
                elapsed = time.monotonic() - started
                slow.behaviour.body = vllm_page(7)  # the engine recovers: a fresh worker reads its page
                again = (await source.collect()).endpoints[0]
                assert first_pid is not None and worker.pid is not None
                return elapsed, first_pid, worker.pid, samples, again
            finally:
                await source.close()

        elapsed, first_pid, second_pid, (slow_sample, fast_sample), again = asyncio.run(run())
    assert elapsed < 0.5  # the 0.2 s limit, not the ~1 s parse
    assert not slow_sample.up and slow_sample.values == ()
    assert slow_sample.error == "page not read within 0.2 s (fetch and parse)"
    assert errors(slow_sample) == {"timeout": 1}
    assert fast_sample.up and values(fast_sample)[("generation_tokens_total", "m", None)] == 2.0
    assert second_pid != first_pid
    deadline = time.monotonic() + 2
    while alive(first_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(first_pid)  # killed, not left parsing
    assert again.up and values(again)[("generation_tokens_total", "m", None)] == 7.0


def test_a_page_that_keeps_overrunning_is_backed_off_and_a_page_read_in_time_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each overrun burns a tick's budget of CPU in the worker: after three in a row the page is not fetched
    for 5 s, then 10 s, …; the skipped ticks are down with the reason and the next try, and count no error."""
    from exporter.sources.endpoints import PARSE_BACKOFF_SECONDS, PARSE_OVERRUNS_BEFORE_BACKOFF

    now = [1000.0]
    with engine_server(slow_page()) as slow:

        async def run() -> list[EndpointSample]:
            source = EndpointsSource(
                [endpoint(slow.url, name="slow", engine="vllm", timeout_seconds=0.2)], clock=lambda: now[0]
            )
            seen: list[EndpointSample] = []
            try:
                for _ in range(PARSE_OVERRUNS_BEFORE_BACKOFF):  # overruns 1..3: the third starts the back-off
                    seen.append((await source.collect()).endpoints[0])
                    now[0] += 1
                assert slow.behaviour.requests == PARSE_OVERRUNS_BEFORE_BACKOFF
                now[0] += PARSE_BACKOFF_SECONDS[0] - 2  # a second before the next try: skipped, not fetched
                seen.append((await source.collect()).endpoints[0])
                assert slow.behaviour.requests == PARSE_OVERRUNS_BEFORE_BACKOFF
                now[0] += 1  # the next try: fetched, overruns again, a longer back-off
                seen.append((await source.collect()).endpoints[0])
                assert slow.behaviour.requests == PARSE_OVERRUNS_BEFORE_BACKOFF + 1
                now[0] += PARSE_BACKOFF_SECONDS[1] - 1
                seen.append((await source.collect()).endpoints[0])
                assert slow.behaviour.requests == PARSE_OVERRUNS_BEFORE_BACKOFF + 1
                slow.behaviour.body = vllm_page(7)  # the engine recovers
                now[0] += 1
                seen.append((await source.collect()).endpoints[0])
                slow.behaviour.body = slow_page()  # and overruns once more: no back-off after just one
                now[0] += 1
                seen.append((await source.collect()).endpoints[0])
                now[0] += 1
                seen.append((await source.collect()).endpoints[0])
                assert slow.behaviour.requests == PARSE_OVERRUNS_BEFORE_BACKOFF + 4
                return seen
            finally:
                await source.close()

        with caplog.at_level(logging.WARNING, logger="exporter.sources.endpoints"):
            seen = asyncio.run(run())
    first, second, third, skipped, retried, skipped_again, recovered, once, twice = seen
    assert not any(s.up for s in (first, second, third, skipped, retried, skipped_again, once, twice))
    assert skipped.error == "page not read within 0.2 s 3 times in a row; next try in 1 s"
    assert errors(skipped) == {"timeout": 3}  # the skipped tick is not a scrape, and counts none
    assert (
        errors(retried) == {"timeout": 4} and retried.error == "page not read within 0.2 s (fetch and parse)"
    )
    assert skipped_again.error == "page not read within 0.2 s 4 times in a row; next try in 1 s"
    assert recovered.up and values(recovered)[("generation_tokens_total", "m", None)] == 7.0
    assert errors(twice) == {"timeout": 6}
    backoffs = [r.getMessage() for r in caplog.records if "not fetched again" in r.getMessage()]
    assert backoffs == [
        "endpoint slow: page not read within 0.2 s 3 times in a row; not fetched again for 5 s",
        "endpoint slow: page not read within 0.2 s 4 times in a row; not fetched again for 10 s",
    ]


def test_a_gzip_bomb_is_too_large_and_the_other_endpoint_keeps_its_series() -> None:
    line = b'vllm:num_requests_running{model_name="m"} 1\n'
    bomb = gzip.compress(line * (15 * 1024 * 1024 // len(line)), compresslevel=9)
    assert len(bomb) < 100_000
    with (
        engine_server(bomb, headers={"Content-Encoding": "gzip"}) as hostile,
        engine_server(vllm_page(3)) as healthy,
    ):
        bombed, kept = scrape(
            endpoint(hostile.url, name="bomb", engine="vllm"), endpoint(healthy.url, name="ok", engine="vllm")
        )
    assert not bombed.up and errors(bombed) == {"too_large": 1}
    assert "inflates to over the 4194304-byte cap" in (bombed.error or "")
    assert kept.up and values(kept)[("generation_tokens_total", "m", None)] == 3.0


def test_dropped_series_are_counted_cumulatively() -> None:
    page = vllm_page(5, extra='vllm:generation_tokens_total{model_name="broken"} NaN\n')
    with engine_server(page) as server:

        async def run() -> list[EndpointSample]:
            source = EndpointsSource([endpoint(server.url, engine="vllm")])
            try:
                return [(await source.collect()).endpoints[0] for _ in range(2)]
            finally:
                await source.close()

        first, second = asyncio.run(run())
    assert first.up and second.up
    assert first.dropped_total == (("invalid_value", 1),)
    assert second.dropped_total == (("invalid_value", 2),)
    assert {v.model for v in second.values} == {"m"}


def test_a_dead_worker_is_replaced_and_close_ends_every_worker() -> None:
    with engine_server(vllm_page(4)) as server:

        async def run() -> tuple[list[int], list[EndpointSample], list[int | None]]:
            source = EndpointsSource([endpoint(server.url, name=f"e{i}", engine="vllm") for i in range(2)])
            pids = [pid for scraper in source.scrapers if (pid := scraper.worker.pid) is not None]
            try:
                os.kill(pids[0], signal.SIGKILL)  # the OOM killer, say
                await asyncio.sleep(0.05)
                samples = list((await source.collect()).endpoints)
                new = [scraper.worker.pid for scraper in source.scrapers]
            finally:
                await source.close()
            return pids + [p for p in new if p is not None], samples, [s.worker.pid for s in source.scrapers]

        pids, samples, after_close = asyncio.run(run())
    assert all(sample.up for sample in samples)
    assert len(set(pids)) == 3  # two workers, and one fork replacing the killed one
    assert after_close == [None, None]
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in pids)


def test_an_unexpected_failure_costs_only_its_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with engine_server(vllm_page(1)) as broken, engine_server(vllm_page(2)) as fine:
        source = EndpointsSource(
            [
                endpoint(broken.url, name="broken", engine="vllm"),
                endpoint(fine.url, name="fine", engine="vllm"),
            ]
        )

        async def explode(job: object, timeout: float) -> None:
            raise RuntimeError("a bug\nwith a second line")

        monkeypatch.setattr(source.scrapers[0].worker, "interpret", explode)
        first, second = scrape(source=source)
        asyncio.run(source.scrapers[0].worker.close())
        asyncio.run(source.scrapers[1].worker.close())
    assert not first.up and errors(first) == {"internal": 1}
    assert first.error == "RuntimeError: with a second line"
    assert second.up


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("max_models: 0", "endpoints.0.max_models: Input should be greater than or equal to 1 (got 0)"),
        ("max_label_length: 8", "endpoints.0.max_label_length: Input should be greater than or equal to 16"),
        ("max_body_bytes: 1073741824", "endpoints.0.max_body_bytes: Input should be less than or equal to"),
    ],
)
def test_page_limits_are_validated_with_one_line(tmp_path: Path, setting: str, expected: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"endpoints:\n  - name: e\n    url: http://127.0.0.1:1/metrics\n    {setting}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
