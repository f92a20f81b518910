"""An endpoint's page → normalized values, worked out in a worker process under the scrape's deadline.

Everything that costs CPU in proportion to what an engine sends happens here, not in the collector's event
loop: inflating a compressed page (capped as it streams: `max_body_bytes` of output, never inflated whole
first), decoding, parsing, detecting the engine, normalizing, and the checks on what may enter the
exporter: per series, a value that is not a reading of its field (NaN, ±Inf, negative, a counter past
2**53, a ratio above 1) is left out as `invalid_value`, a model name longer than `max_label_length` as
`label_too_long`, and the models after the first `max_models` on the page as `too_many_series`.
`interpret` does all of it as one pure function of a `PageJob`.

It runs in a worker process per endpoint (`_worker_main`), forked by a fork server (`serve_forks`); the
collector's side of both, and why parsing runs in processes, is `exporter.sources.page_workers`. This
module imports nothing heavy (no asyncio, no httpx): the fork server and its workers load only it.
"""

from __future__ import annotations

import fcntl
import math
import os
import pickle
import signal
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.engines import (
    PROFILES,
    EngineProfile,
    detect_engine,
    generic_profile,
    is_detection_name,
    normalize,
    normalize_histograms,
)
from exporter.model import (
    ENDPOINT_FIELDS_BY_NAME,
    ENGINE_AUTO,
    ENGINE_GENERIC,
    EndpointHistogram,
    EndpointValue,
)
from exporter.promtext import ParseResult, Sample, parse_selected

PROCESS_START = "process_start_time_seconds"
ALL_PROFILE_NAMES = frozenset().union(*(profile.wanted_names() for profile in PROFILES.values()))
HEADER = struct.Struct("!I")  # a frame's length, then a pickle
PID = struct.Struct("!i")
WORKER_MAX_RSS_BYTES = 256 * 1024 * 1024
ALARM_GRACE_SECONDS = 0.05  # past the job's time limit, the worker ends itself (the collector gave up)
ACCEPT_ENCODING = "gzip, deflate"
_GZIP = ("gzip", "x-gzip")


class PageError(Exception):
    """The page cannot be read; `reason` is the bounded label value of tpw_endpoint_scrape_errors_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PageJob:
    """One page to read, and how: what the collector sends a worker."""

    body: bytes  # as received: compressed when `content_encoding` says so
    content_encoding: str  # the Content-Encoding header ("" for none)
    engine: str  # the configured engine: a profile name, "auto" or "generic"
    detected: str | None = None  # for auto: the engine detected on an earlier page
    mapping: tuple[tuple[str, str], ...] = ()  # generic: normalized field → source sample name
    unit: str = "tokens"  # generic: unit of work
    model_labels: tuple[str, ...] = ()  # generic: label carrying the model name
    max_body_bytes: int = 4 * 1024 * 1024
    max_models: int = 100
    max_label_length: int = 256


@dataclass(frozen=True)
class PageResult:
    """What a page held, or why it could not be read (`error_reason` set, no values)."""

    engine: str | None = None  # the profile that read the page
    detected: str | None = None  # for auto: the engine detected on this page (or still the earlier one)
    values: tuple[EndpointValue, ...] = ()
    malformed: int = 0  # wanted lines that could not be parsed (skipped)
    first_error: str | None = None
    process_start_time_seconds: float | None = None
    dropped: tuple[tuple[str, int], ...] = ()  # (reason, normalized series left out of this page)
    error_reason: str | None = None
    error: str | None = None
    histograms: tuple[EndpointHistogram, ...] = ()  # latency histograms with buckets (exporter.histograms)

    def to_wire(self) -> tuple[Any, ...]:
        """Plain tuples for the socket (slotted frozen dataclasses do not pickle on Python 3.10)."""
        values = tuple((v.field, v.model, v.value, v.outcome) for v in self.values)
        histograms = tuple((h.kind, h.model, h.bounds, h.counts, h.count, h.buckets) for h in self.histograms)
        return (
            self.engine,
            self.detected,
            values,
            self.malformed,
            self.first_error,
            self.process_start_time_seconds,
            self.dropped,
            self.error_reason,
            self.error,
            histograms,
        )

    @classmethod
    def from_wire(cls, wire: tuple[Any, ...]) -> PageResult:
        engine, detected, values, malformed, first_error, start, dropped, reason, error, histograms = wire
        return cls(
            engine,
            detected,
            tuple(EndpointValue(field, model, value, outcome) for field, model, value, outcome in values),
            malformed,
            first_error,
            start,
            dropped,
            reason,
            error,
            tuple(EndpointHistogram(*histogram) for histogram in histograms),
        )


# ---------------------------------------------------------------------------------------------------------
# The work (pure functions; the worker process runs `interpret`)


def inflate(body: bytes, content_encoding: str, cap: int) -> bytes:
    """The body decoded from its Content-Encoding (gzip, deflate, identity, or a list of them), each layer
    inflated as a stream that stops at `cap` bytes of output: PageError too_large past it, decode when the
    encoding is unknown or the data is not what it says."""
    encodings = [part.strip().lower() for part in content_encoding.split(",")]
    for encoding in reversed([part for part in encodings if part not in ("", "identity")]):
        if encoding not in (*_GZIP, "deflate"):
            raise PageError("decode", f"unsupported Content-Encoding {encoding!r}")
        body = _inflate(body, encoding, cap)
    return body


def _inflate(data: bytes, encoding: str, cap: int) -> bytes:
    # HTTP "deflate" is meant to be zlib-wrapped; some servers send raw deflate.
    wbits_choices = (16 + zlib.MAX_WBITS,) if encoding in _GZIP else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for attempt, wbits in enumerate(wbits_choices):
        try:
            return _inflate_stream(data, wbits, cap, members=encoding in _GZIP)
        except zlib.error as exc:
            if attempt + 1 == len(wbits_choices):
                raise PageError("decode", f"page is not valid {encoding} data ({exc})") from None
    raise AssertionError("unreachable")


def _inflate_stream(data: bytes, wbits: int, cap: int, members: bool) -> bytes:
    """Inflate `data` at most `cap` + 1 bytes at a time; gzip may hold several members one after another."""
    out = bytearray()
    decompressor = zlib.decompressobj(wbits)
    rest = data
    while True:
        out += decompressor.decompress(rest, cap + 1 - len(out))
        if len(out) > cap:
            raise PageError("too_large", f"page inflates to over the {cap}-byte cap; stopped inflating")
        rest = decompressor.unconsumed_tail
        if decompressor.eof:
            rest = decompressor.unused_data
            if not (members and rest):
                return bytes(out)
            decompressor = zlib.decompressobj(wbits)
        elif not rest:
            return bytes(out)  # a truncated stream: what arrived (its last line may be malformed)


def interpret(job: PageJob) -> PageResult:
    """Read one page: inflate, decode, parse, detect, normalize, check; never raises for any input."""
    parsed: ParseResult | None = None
    try:
        text = _decode(inflate(job.body, job.content_encoding, job.max_body_bytes))
        profile, parsed = _parse(text, job)
        values = normalize(profile, parsed.samples)
        histograms, dropped = normalize_histograms(profile, parsed.samples)
        if not values:
            raise PageError("no_metrics", f"no {profile.name} metrics on the page (wrong engine or URL?)")
    except PageError as exc:
        return PageResult(
            detected=job.detected,
            malformed=parsed.malformed if parsed is not None else 0,
            first_error=parsed.first_error if parsed is not None else None,
            error_reason=exc.reason,
            error=str(exc),
        )
    kept = limit_series(values, model_order(profile, parsed.samples), job, dropped)
    start_times = [s.value for s in parsed.samples if s.name == PROCESS_START]
    valid_starts = [value for value in start_times if 0 < value < math.inf]
    dropped["invalid_value"] += len(start_times) - len(valid_starts)
    return PageResult(
        engine=profile.name,
        detected=profile.name if job.engine == ENGINE_AUTO else None,
        values=tuple(kept),
        histograms=tuple(limit_histograms(histograms, kept, job, dropped)),
        malformed=parsed.malformed,
        first_error=parsed.first_error,
        process_start_time_seconds=max(valid_starts) if valid_starts else None,
        dropped=tuple(sorted((reason, count) for reason, count in dropped.items() if count)),
    )


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PageError("decode", f"page is not UTF-8 (byte {exc.start})") from None


def job_profile(job: PageJob) -> EngineProfile | None:
    """The profile the job's endpoint is read with: fixed by its config, or detected earlier; None: detect."""
    if job.engine == ENGINE_GENERIC:
        return generic_profile(dict(job.mapping), job.unit, model_labels=job.model_labels)
    if job.engine != ENGINE_AUTO:
        return PROFILES[job.engine]
    return PROFILES.get(job.detected or "")


def _parse(text: str, job: PageJob) -> tuple[EngineProfile, ParseResult]:
    """Parse only what the endpoint's profile reads; for `auto`, the profile detected last time.

    Detection needs every engine's names (on a vLLM page that is every histogram bucket, ~7× the work),
    so the broad parse runs only until an engine is detected and again when the detected engine's metrics
    vanish from the page.
    """
    profile = job_profile(job)
    if profile is not None:
        parsed = parse_selected(text, profile.wanted_names() | {PROCESS_START})
        if job.engine != ENGINE_AUTO or any(s.name != PROCESS_START for s in parsed.samples):
            return profile, parsed
    parsed = parse_selected(
        text, lambda name: name in ALL_PROFILE_NAMES or name == PROCESS_START or is_detection_name(name)
    )
    detected = detect_engine(s.name for s in parsed.samples)
    if detected is None:
        raise PageError("no_engine", "no known engine's metrics on the page (set `engine` explicitly)")
    return PROFILES[detected], parsed


def model_order(profile: EngineProfile, samples: Iterable[Sample]) -> dict[str, int]:
    """Each model's rank by its first sample on the page (pages list series in a stable order)."""
    wanted = profile.wanted_names()
    order: dict[str, int] = {}
    for sample in samples:
        if sample.name in wanted:
            order.setdefault(profile.model_of(sample.labels), len(order))
    return order


def limit_series(
    values: Sequence[EndpointValue], order: dict[str, int], job: PageJob, dropped: Counter[str]
) -> list[EndpointValue]:
    """The values that may enter the exporter; what is left out is counted in `dropped` by reason.

    A value that is not a reading of its field is `invalid_value`, a model name longer than
    `max_label_length` is `label_too_long`, and the series of the models after the first `max_models`
    (in page order) are `too_many_series`.
    """
    valid: list[EndpointValue] = []
    for value in values:
        if not ENDPOINT_FIELDS_BY_NAME[value.field].valid(value.value):
            dropped["invalid_value"] += 1
        elif len(value.model) > job.max_label_length:
            dropped["label_too_long"] += 1
        else:
            valid.append(value)
    models = sorted({value.model for value in valid}, key=lambda model: order.get(model, len(order)))
    if len(models) <= job.max_models:
        return valid
    keep = set(models[: job.max_models])
    kept = [value for value in valid if value.model in keep]
    dropped["too_many_series"] += len(valid) - len(kept)
    return kept


def limit_histograms(
    histograms: Sequence[EndpointHistogram],
    kept: Sequence[EndpointValue],
    job: PageJob,
    dropped: Counter[str],
) -> list[EndpointHistogram]:
    """The histograms of the models `limit_series` kept; one of a model name past `max_label_length` is
    `label_too_long`, one of a model past `max_models` (or without any valid value) `too_many_series`."""
    models = {value.model for value in kept}
    result: list[EndpointHistogram] = []
    for histogram in histograms:
        if len(histogram.model) > job.max_label_length:
            dropped["label_too_long"] += 1
        elif histogram.model not in models:
            dropped["too_many_series"] += 1
        else:
            result.append(histogram)
    return result


# ---------------------------------------------------------------------------------------------------------
# The worker processes and the fork server they come from (the collector's side: page_workers.py)


def _worker_main(sock: socket.socket) -> None:
    """A worker: read a job, answer it, until the collector closes its end (or is gone).

    Each job carries its time limit: an interval timer with SIGALRM's default action (terminate) ends the
    worker there, whatever it is doing, so no parse outlives its deadline even if the collector could not
    say so. The answer says when the worker retires (its memory grew past WORKER_MAX_RSS_BYTES).
    """
    sock.setblocking(True)
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETOWN, os.getpid())  # SIGIO from this socket comes to this worker
    while True:
        header = _recv_exactly(sock, HEADER.size)
        if header is None:
            return
        payload = _recv_exactly(sock, HEADER.unpack(header)[0])
        if payload is None:
            return
        time_limit, job = pickle.loads(payload)
        signal.setitimer(signal.ITIMER_REAL, time_limit + ALARM_GRACE_SECONDS)
        _end_on_hangup(sock, True)
        try:
            result = interpret(job)
        except Exception as exc:  # a bug, not the page: say so rather than die silently
            result = PageResult(error_reason="internal", error=f"page parser failed: {type(exc).__name__}")
        _end_on_hangup(sock, False)
        signal.setitimer(signal.ITIMER_REAL, 0)
        retiring = _rss_bytes() > WORKER_MAX_RSS_BYTES
        answer = pickle.dumps((result.to_wire(), retiring), protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(HEADER.pack(len(answer)) + answer)
        if retiring:
            return  # exit, and give the memory back; the collector forks a fresh worker
        del payload, job, result, answer


def _end_on_hangup(sock: socket.socket, on: bool) -> None:
    """While a page is parsed nothing arrives on the socket but its end: with O_ASYNC on, the collector
    closing its side (it gave up on the job, is stopping, or died) raises SIGIO, whose default action ends
    the worker at once, not at its deadline: a stopping exporter leaves no parse running behind it."""
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags | os.O_ASYNC if on else flags & ~os.O_ASYNC)
    if on:
        try:
            closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            closed = False
        if closed:  # closed before O_ASYNC was on: no SIGIO will come
            os._exit(0)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return bytes(buffer)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def serve_forks(fd: int) -> None:
    """The fork server's main: for each socket the collector passes over `fd`, fork a worker on it and
    answer its PID; exit when the collector is gone. Children are reaped by the kernel (SIGCHLD ignored)."""
    control = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the collector stops us
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not message:
            return
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the server's loop
            code = 0
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _worker_main(socket.socket(fileno=fds[0]))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        for received in fds:
            os.close(received)
        control.sendall(PID.pack(pid))
