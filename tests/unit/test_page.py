"""Reading a page (`exporter.sources.page.interpret`), in-process: inflating under the cap, the checks on
what may enter the exporter (invalid values, long model names, too many models), detection and errors."""

from __future__ import annotations

import asyncio
import gzip
import math
import pickle
import socket
import time
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest

from exporter.model import ENDPOINT_FIELDS, MAX_COUNTER_VALUE, EndpointValue
from exporter.sources import page, page_workers
from exporter.sources.page import PageError, PageJob, PageResult, inflate, interpret

MIB = 1024 * 1024


def job(body: bytes, engine: str = "vllm", **kwargs: object) -> PageJob:
    return PageJob(
        body=body, content_encoding=str(kwargs.pop("content_encoding", "")), engine=engine, **kwargs
    )  # type: ignore[arg-type]


def values(result: PageResult) -> dict[tuple[str, str, str | None], float]:
    return {(v.field, v.model, v.outcome): v.value for v in result.values}


def zeros_gzip(size: int) -> bytes:
    """gzip of `size` zero bytes, compressed a MiB at a time (never `size` bytes in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * MIB
    parts = [compressor.compress(chunk) for _ in range(size // MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


# -- inflating ------------------------------------------------------------------------------------------


def test_a_gzip_bomb_is_cut_at_the_cap_without_inflating_it_whole() -> None:
    bomb = zeros_gzip(64 * MIB)  # ~64 KB that inflates to 64 MiB
    assert len(bomb) < MIB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PageError) as error:
            inflate(bomb, "gzip", MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason == "too_large" and "stopped inflating" in str(error.value)
    assert peak < 4 * MIB  # a few times the cap: inflated as a stream, never the 64 MiB
    assert time.perf_counter() - started < 0.5


def test_encodings_gzip_deflate_members_and_identity() -> None:
    page = b'vllm:generation_tokens_total{model_name="m"} 5\n'
    assert inflate(gzip.compress(page), "gzip", MIB) == page
    assert inflate(gzip.compress(page), "x-gzip", MIB) == page
    assert inflate(zlib.compress(page), "deflate", MIB) == page
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert inflate(raw.compress(page) + raw.flush(), "deflate", MIB) == page  # raw deflate, as some send
    assert inflate(gzip.compress(page) + gzip.compress(page), "gzip", MIB) == page * 2  # two members
    assert inflate(page, "identity", MIB) == inflate(page, "", MIB) == page
    assert inflate(gzip.compress(gzip.compress(page)), "gzip, gzip", MIB) == page
    exact = b"x" * 1024
    assert inflate(gzip.compress(exact), "gzip", 1024) == exact  # exactly the cap is allowed
    with pytest.raises(PageError, match="over the 1023-byte cap"):
        inflate(gzip.compress(exact), "gzip", 1023)


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "not valid gzip data"),
        (b"\xff\xff\xff\xff", "deflate", "not valid deflate data"),
        (b"page", "br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_or_unknown_encodings_are_decode_errors(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(PageError, match=message) as error:
        inflate(body, encoding, MIB)
    assert error.value.reason == "decode"
    result = interpret(job(body, content_encoding=encoding))
    assert result.error_reason == "decode" and result.values == ()


# -- what may enter -------------------------------------------------------------------------------------

INVALID = (
    'vllm:generation_tokens_total{model_name="nan"} NaN\n'
    'vllm:generation_tokens_total{model_name="neg-inf"} -Inf\n'
    'vllm:generation_tokens_total{model_name="negative"} -3\n'
    'vllm:generation_tokens_total{model_name="huge"} 1e300\n'
    'vllm:generation_tokens_total{model_name="limit"} 9007199254740992\n'
    'vllm:prompt_tokens_total{model_name="fine"} +Inf\n'
    'vllm:generation_tokens_total{model_name="fine"} 10\n'
    'vllm:kv_cache_usage_perc{model_name="fine"} +Inf\n'
    'vllm:kv_cache_usage_perc{model_name="over"} 1.5\n'
    'vllm:kv_cache_usage_perc{model_name="full"} 1\n'
    'vllm:num_requests_running{model_name="fine"} NaN\n'
    'vllm:num_requests_waiting{model_name="fine"} -1\n'
    'vllm:num_requests_waiting{model_name="full"} 0\n'
    "process_start_time_seconds NaN\n"
)


def test_invalid_values_are_left_out_per_series_and_counted() -> None:
    result = interpret(job(INVALID.encode()))
    assert result.error_reason is None
    assert values(result) == {
        ("generation_tokens_total", "fine", None): 10.0,
        ("generation_tokens_total", "limit", None): MAX_COUNTER_VALUE,  # 2**53 itself still counts
        ("kv_cache_usage_ratio", "full", None): 1.0,
        ("requests_waiting", "full", None): 0.0,
    }
    # nan, neg-inf, negative, huge, fine's +Inf prompt, +Inf and 1.5 ratios, NaN running, -1 waiting; the
    # NaN process start time
    assert dict(result.dropped) == {"invalid_value": 10}
    assert result.process_start_time_seconds is None


def test_one_invalid_rank_drops_its_whole_series_never_a_partial_sum() -> None:
    page = (
        'vllm:generation_tokens_total{engine="0",model_name="m"} 100\n'
        'vllm:generation_tokens_total{engine="1",model_name="m"} NaN\n'
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 1e308\n'
        'vllm:prompt_tokens_total{engine="1",model_name="m"} 1e308\n'  # the sum overflows to +Inf
        'vllm:num_requests_running{engine="0",model_name="m"} 4\n'
    )
    result = interpret(job(page.encode()))
    assert values(result) == {("requests_running", "m", None): 4.0}
    assert dict(result.dropped) == {"invalid_value": 2}


def test_every_field_has_a_valid_range() -> None:
    for field in ENDPOINT_FIELDS:
        assert field.valid(0.0) and field.valid(1.0)
        assert not any(field.valid(bad) for bad in (math.nan, math.inf, -math.inf, -1e-9))
        if math.isfinite(field.maximum):
            assert field.valid(field.maximum) and not field.valid(field.maximum * 1.5)
        else:
            assert field.valid(1e300)
    maxima = {field.name: field.maximum for field in ENDPOINT_FIELDS}
    assert maxima["kv_cache_usage_ratio"] == 1.0
    assert maxima["generation_tokens_total"] == maxima["ttft_seconds_sum"] == 2.0**53
    assert maxima["requests_running"] == math.inf


def test_model_names_over_the_length_limit_are_left_out() -> None:
    page = (
        f'vllm:generation_tokens_total{{model_name="{"a" * 256}"}} 1\n'
        f'vllm:generation_tokens_total{{model_name="{"b" * 257}"}} 2\n'
        f'vllm:num_requests_running{{model_name="{"b" * 257}"}} 2\n'
    )
    result = interpret(job(page.encode()))
    assert values(result) == {("generation_tokens_total", "a" * 256, None): 1.0}
    assert dict(result.dropped) == {"label_too_long": 2}
    shorter = interpret(job(page.encode(), max_label_length=100))
    assert shorter.values == () and dict(shorter.dropped) == {"label_too_long": 3}
    assert shorter.error_reason is None  # understood, nothing kept: up, with the drops counted


def many_models(count: int) -> Iterator[str]:
    # newest models first on the page: page order, not name order, decides which are kept
    for index in reversed(range(count)):
        yield f'vllm:generation_tokens_total{{model_name="m{index:03d}"}} {index}\n'
        yield f'vllm:request_success_total{{finished_reason="stop",model_name="m{index:03d}"}} {index}\n'
        yield f'vllm:request_success_total{{finished_reason="abort",model_name="m{index:03d}"}} 1\n'


def test_models_past_the_cap_are_left_out_in_page_order() -> None:
    result = interpret(job("".join(many_models(150)).encode()))
    models = {v.model for v in result.values}
    assert models == {f"m{index:03d}" for index in range(50, 150)}  # the first 100 on the page
    # 50 models left out, 3 series each (tokens, requests success and aborted)
    assert dict(result.dropped) == {"too_many_series": 150}
    assert len(result.values) == 300
    small = interpret(job("".join(many_models(150)).encode(), max_models=2))
    assert {v.model for v in small.values} == {"m149", "m148"}


def test_a_page_within_every_limit_loses_nothing() -> None:
    result = interpret(job("".join(many_models(100)).encode()))
    assert result.dropped == () and len(result.values) == 300


# -- detection, errors, the wire ---------------------------------------------------------------------------


def test_auto_detects_and_reports_the_engine() -> None:
    page = b'sglang:generation_tokens_total{model_name="q"} 3\nprocess_start_time_seconds 1700000000\n'
    result = interpret(job(page, engine="auto"))
    assert result.engine == result.detected == "sglang"
    assert result.process_start_time_seconds == 1700000000.0
    # a page that lost the detected engine's metrics is detected again
    again = interpret(
        job(b'vllm:generation_tokens_total{model_name="m"} 1\n', engine="auto", detected="sglang")
    )
    assert again.detected == "vllm"
    none = interpret(job(b"process_cpu_seconds_total 3\n", engine="auto", detected="sglang"))
    assert none.error_reason == "no_engine" and none.detected == "sglang"  # kept until another is found


def test_no_metrics_counts_the_malformed_lines_it_saw() -> None:
    result = interpret(job(b"tgi_request_success{ 1\nother 2\n", engine="tgi"))
    assert result.error_reason == "no_metrics" and "no tgi metrics" in (result.error or "")
    assert result.malformed == 1 and result.first_error is not None


def test_generic_pages_are_read_with_their_mapping() -> None:
    page = b'images_done_total{model="sdxl"} 42\nimages_done_total{model="bad"} -1\n'
    result = interpret(
        job(
            page,
            engine="generic",
            mapping=(("work_units_total", "images_done_total"),),
            unit="images",
            model_labels=("model",),
        )
    )
    assert result.engine == "generic" and result.detected is None
    assert values(result) == {("work_units_total", "sdxl", None): 42.0}
    assert dict(result.dropped) == {"invalid_value": 1}


def test_results_cross_the_socket_as_plain_tuples() -> None:
    result = PageResult(
        engine="vllm",
        detected="vllm",
        values=(EndpointValue("requests_total", "m", 3.0, "success"),),
        malformed=2,
        first_error="line 3: x",
        process_start_time_seconds=5.0,
        dropped=(("invalid_value", 1),),
    )
    assert PageResult.from_wire(result.to_wire()) == result
    failed = PageResult(error_reason="decode", error="page is not UTF-8 (byte 3)")
    assert PageResult.from_wire(failed.to_wire()) == failed


# -- the worker ---------------------------------------------------------------------------------------------


def test_a_worker_answers_each_job_and_retires_when_its_memory_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_worker_main` in this process over a socket pair: two jobs queued, it answers the first, then sees
    its memory over the limit (0 here), says it retires and stops before the second."""
    monkeypatch.setattr(page, "WORKER_MAX_RSS_BYTES", 0)
    ours, theirs = socket.socketpair()
    for body in (b'vllm:generation_tokens_total{model_name="m"} 7\n', b"second job"):
        frame = pickle.dumps((5.0, job(body)))
        ours.sendall(page.HEADER.pack(len(frame)) + frame)
    ours.shutdown(socket.SHUT_WR)  # a worker that did not retire would answer both, then see the end
    page._worker_main(theirs)
    size = page.HEADER.unpack(ours.recv(page.HEADER.size, socket.MSG_WAITALL))[0]
    wire, retiring = pickle.loads(ours.recv(size, socket.MSG_WAITALL))
    assert retiring is True
    assert values(PageResult.from_wire(wire)) == {("generation_tokens_total", "m", None): 7.0}
    with pytest.raises(BlockingIOError):  # no second answer: that job is left for a fresh worker
        ours.recv(1, socket.MSG_DONTWAIT)
    ours.close()
    theirs.close()


def test_a_worker_past_its_time_limit_ends_itself() -> None:
    """The collector waits longer than the job's limit here: the worker's own timer still ends it there."""
    slow = "vllm:generation_tokens_total{" + ",".join(f'l{k}=""' for k in range(20)) + ',model_name="m"} 1\n'
    body = slow.encode() * (3 * MIB // len(slow))

    async def run() -> float:
        worker = page_workers.PageWorker("slow")
        worker.start()
        started = time.monotonic()
        with pytest.raises(page_workers.WorkerFailed, match="ended without answering"):
            await asyncio.wait_for(worker._exchange(job(body), 0.1), 5.0)
        elapsed = time.monotonic() - started
        await worker.close()
        return elapsed

    assert asyncio.run(run()) < 0.5  # 0.1 s + the 0.05 s grace, far from the ~1 s parse


def test_a_dead_fork_server_is_started_again() -> None:
    server = page_workers.ForkServer()

    async def read_with_a_fresh_worker() -> PageResult:
        worker = page_workers.PageWorker("w", fork_server=server)
        try:
            return await worker.interpret(job(b'vllm:generation_tokens_total{model_name="m"} 3\n'), 5.0)
        finally:
            await worker.close()

    first = asyncio.run(read_with_a_fresh_worker())
    assert server._process is not None
    dead = server._process.pid
    server._process.kill()
    server._process.wait()
    second = asyncio.run(read_with_a_fresh_worker())
    assert server._process is not None and server._process.pid != dead
    assert values(first) == values(second) == {("generation_tokens_total", "m", None): 3.0}
    server._stop()
