"""Serving engines' Prometheus endpoints, scraped concurrently with httpx and normalized per engine profile.

Each endpoint is scraped by its own `EndpointScraper` under its own time limit, which bounds the whole
scrape: fetching, and reading the page, which runs in the endpoint's own worker process
(`exporter.sources.page`, where the design is explained), so no page, however big or hostile, holds up
the tick, another endpoint or the GPU metrics. Every failure is data, not a crash: connection refused,
time-out (fetch or parse), an HTTP error, a redirect to another host (never followed), a page over the size
cap (read as a stream and cut off, never buffered whole; compressed pages inflated as a stream, cut at the
same cap), a body that is not UTF-8, a credential or TLS file that cannot be read, a TLS handshake that fails
(`exporter.sources.endpoint_auth`) — each marks that endpoint `up 0` for the tick, counts
`tpw_endpoint_scrape_errors_total{reason}` and is logged once per state change. Malformed lines are
skipped and counted; series with invalid values, over-long model names or past the per-endpoint model cap
are left out and counted (`tpw_endpoint_dropped_series_total{reason}`); counters that go backwards (an
engine restart) are counted as resets (`tpw_endpoint_resets_total`). An endpoint whose page keeps taking
longer to read than its time limit (`PARSE_OVERRUNS_BEFORE_BACKOFF` in a row) is not fetched again for a
while, growing to a minute (`PARSE_BACKOFF_SECONDS`): each overrun burns up to a tick's budget of CPU in its
worker, and a page that overran three times will overrun the next. It stays `up 0` meanwhile, with the
reason and the time of the next try in its error; the ticks it skips are not counted as scrape errors, and a
page read in time ends the back-off. The URL is shown only through
`exporter.redact` (user info and query values `<redacted>`), and every message through `scrub`, which also
takes out the endpoint's own secret values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from exporter.config import EndpointConfig
from exporter.model import (
    ENDPOINT_COUNTER_FIELDS,
    ENGINE_AUTO,
    ENGINE_GENERIC,
    EndpointSample,
    EndpointValue,
)
from exporter.redact import redact_library_logs, redact_url, scrub
from exporter.sources.base import Collected, Source
from exporter.sources.endpoint_auth import (
    TLS,
    EndpointAuth,
    TlsMaterial,
    closed_without_answer,
    tls_failure,
)
from exporter.sources.page import ACCEPT_ENCODING, PageError, PageJob, PageResult
from exporter.sources.page_workers import PageWorker, WorkerFailed

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
ACCEPT = "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"

# A page that overran its time limit this many times in a row is not fetched for PARSE_BACKOFF_SECONDS[k]
# after the k-th overrun past them (the last value repeating), until one is read in time.
PARSE_OVERRUNS_BEFORE_BACKOFF = 3
PARSE_BACKOFF_SECONDS: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 60.0)

ScrapeError = PageError
"""One failed scrape; `reason` is the bounded label value of tpw_endpoint_scrape_errors_total."""


class EndpointScraper:
    """Scrapes one endpoint; keeps what must survive between ticks (counts, last values, engine)."""

    def __init__(
        self,
        config: EndpointConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        tick_budget_seconds: float | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock
        # A scrape must end inside the tick, or one slow engine would delay the GPU metrics and the
        # other endpoints: the timeout is capped at the tick's budget. Only a timeout the user chose is
        # worth a warning; the default one is capped silently.
        self.timeout = config.effective_timeout(tick_budget_seconds)
        if self.timeout < config.timeout_seconds and config.timeout_set:
            log.warning(
                "endpoint %s: timeout_seconds %g capped at %g s to fit the collection interval; "
                "raise `interval` for engines slower than that",
                config.name,
                config.timeout_seconds,
                self.timeout,
            )
        self.url = redact_url(config.url)
        self.auth = EndpointAuth(config)
        self.tls = TlsMaterial(config.tls_config, _certifi_bundle()) if config.tls_config else None
        self._tls_client: tuple[object, httpx.AsyncClient] | None = None  # (its SSLContext, the client)
        self._fixed_engine = None if config.engine == ENGINE_AUTO else config.engine
        self._detected: str | None = None
        self._errors: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._resets = 0
        self._previous: dict[tuple[str, str, str | None], float] = {}
        self._fields: frozenset[str] | None = None
        self._last_state: str | None = None  # "up", or "down:" + the reason of the last failure
        self._failure_reason = ""
        self._parse_overruns = 0  # pages in a row not read within the time limit (parse phase)
        self._next_try = 0.0  # while backing off, when the page is fetched again (clock seconds)
        self._last_failure: EndpointSample | None = None
        self.worker = PageWorker(config.name)

    # -- fetching -------------------------------------------------------------------------------------
    async def _fetch(self) -> tuple[bytes, str]:
        """The page as sent (compressed or not) and its Content-Encoding."""
        url = self.config.url
        origin = urlsplit(url)
        headers = [("Accept", ACCEPT), ("Accept-Encoding", ACCEPT_ENCODING), *self.auth.headers()]
        client = await self._client_for_scrape()
        server_name = self.config.tls_config.server_name if self.config.tls_config else None
        extensions = {"sni_hostname": server_name} if server_name else None
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream(
                "GET", url, headers=headers, timeout=self.timeout, extensions=extensions
            ) as response:
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("location", ""))
                    if urlsplit(target).netloc != origin.netloc:
                        raise ScrapeError(
                            "redirect", f"redirect to another host not followed: {redact_url(target)}"
                        )
                    if urlsplit(target).scheme.lower() != origin.scheme.lower():  # never https → http
                        raise ScrapeError(
                            "redirect", f"redirect to another scheme not followed: {redact_url(target)}"
                        )
                    url = target
                    continue
                if response.status_code != 200:
                    raise ScrapeError("http_status", _status_message(response.status_code, redact_url(url)))
                return await self._read_capped(response), response.headers.get("content-encoding", "")
        raise ScrapeError("redirect", f"more than {MAX_REDIRECTS} redirects")

    async def _client_for_scrape(self) -> httpx.AsyncClient:
        """The shared client, or, with `tls_config`, this endpoint's own: one per SSLContext, made again
        when the context is (its files changed); PageError tls_config when it cannot be built."""
        if self.tls is None:
            return self._client
        context = self.tls.context()
        if self._tls_client is not None and self._tls_client[0] is context:
            return self._tls_client[1]
        await self.close_client()
        client = httpx.AsyncClient(verify=context, follow_redirects=False, trust_env=False)
        self._tls_client = (context, client)
        return client

    async def close_client(self) -> None:
        """Close this endpoint's own client (`tls_config`), if it has one."""
        if self._tls_client is not None:
            client, self._tls_client = self._tls_client[1], None
            await client.aclose()

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The raw body, read as a stream and cut at the cap (the worker inflates it, capped again)."""
        cap = self.config.max_body_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ScrapeError("too_large", f"page of {int(declared)} bytes is over the {cap}-byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > cap:
                raise ScrapeError("too_large", f"page is over the {cap}-byte cap; stopped reading")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- one tick -------------------------------------------------------------------------------------
    async def scrape(self) -> EndpointSample:
        """This tick's sample; returns within `timeout` (fetch and parse together) and never raises."""
        started = self._clock()
        if started < self._next_try and self._last_failure is not None:
            return self._backing_off(started)
        phase = "fetch"
        try:
            body, encoding = await asyncio.wait_for(self._fetch(), timeout=self.timeout)
            phase = "parse"
            remaining = started + self.timeout - self._clock()
            result = await self.worker.interpret(self._job(body, encoding), remaining)
            sample = self._interpret(result, started)
        except ScrapeError as exc:
            sample = self._failed(exc.reason, str(exc), started)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            if phase == "fetch":
                message = f"no answer within {self.timeout:g} s"
            else:
                message = f"page not read within {self.timeout:g} s (fetch and parse)"
                self._parse_overruns += 1
            sample = self._failed("timeout", message, started)
            if phase == "parse" and self._parse_overruns >= PARSE_OVERRUNS_BEFORE_BACKOFF:
                self._back_off(started)
        except (httpx.HTTPError, OSError) as exc:  # OSError: an SSLError or a reset httpx let through
            if (problem := tls_failure(exc)) is not None:
                sample = self._failed(TLS, f"TLS with {self.url} failed: {problem}", started)
            elif isinstance(exc, httpx.ConnectError):
                sample = self._failed("connect", f"cannot connect to {self.url}: {_reason(exc)}", started)
            else:
                https = self.config.url[:6].lower() == "https:"
                closed = closed_without_answer(exc) if https else None
                sample = self._failed("http", closed or f"{type(exc).__name__}: {_reason(exc)}", started)
        except WorkerFailed as exc:
            sample = self._failed("internal", str(exc), started)
        except Exception as exc:  # a bug must cost this endpoint one tick, never the other endpoints
            trace = self._scrub("".join(traceback.format_exception(exc)))
            log.debug("endpoint %s: scrape failed unexpectedly: %s", self.config.name, trace)
            sample = self._failed("internal", f"{type(exc).__name__}: {_reason(exc)}", started)
        if sample.up:
            self._parse_overruns = 0
        self._log_state(sample)
        return sample

    def _back_off(self, now: float) -> None:
        past = self._parse_overruns - PARSE_OVERRUNS_BEFORE_BACKOFF
        delay = PARSE_BACKOFF_SECONDS[min(past, len(PARSE_BACKOFF_SECONDS) - 1)]
        self._next_try = now + delay
        log.warning(
            "endpoint %s: page not read within %g s %d times in a row; not fetched again for %g s",
            self.config.name,
            self.timeout,
            self._parse_overruns,
            delay,
        )

    def _backing_off(self, now: float) -> EndpointSample:
        """A tick skipped while backing off: down, with the last failure's counts, and why and until when."""
        last = self._last_failure
        assert last is not None
        error = (
            f"page not read within {self.timeout:g} s {self._parse_overruns} times in a row; "
            f"next try in {self._next_try - now:.0f} s"
        )
        return dataclasses.replace(last, error=error, timestamp=now, duration_seconds=0.0)

    def _job(self, body: bytes, encoding: str) -> PageJob:
        config = self.config
        return PageJob(
            body=body,
            content_encoding=encoding,
            engine=config.engine,
            detected=self._detected,
            mapping=tuple(config.mapping.items()) if config.mapping else (),
            unit=config.unit,
            model_labels=(config.model_label,) if config.model_label else (),
            max_body_bytes=config.max_body_bytes,
            max_models=config.max_models,
            max_label_length=config.max_label_length,
        )

    def _scrub(self, text: str) -> str:
        """`text` without URL secrets or any of this endpoint's secret values (messages, logs)."""
        return scrub(text, self.auth.secrets())

    def _failed(self, reason: str, message: str, started: float) -> EndpointSample:
        self._errors[reason] += 1
        self._failure_reason = reason
        self._last_failure = EndpointSample(
            name=self.config.name,
            engine=self._engine_name(),
            url=self.url,
            unit=self.config.unit,
            up=False,
            error=self._scrub(message),
            timestamp=started,
            duration_seconds=self._clock() - started,
            errors_total=tuple(sorted(self._errors.items())),
            dropped_total=tuple(sorted(self._dropped.items())),
            resets_total=self._resets,
        )
        return self._last_failure

    def _engine_name(self) -> str:
        return self._fixed_engine or self._detected or "unknown"

    def _interpret(self, result: PageResult, started: float) -> EndpointSample:
        """The worker's reading of the page as this tick's sample (state: counts, detection, resets)."""
        if result.detected != self._detected and result.detected is not None:
            if self._detected is not None:
                log.warning(
                    "endpoint %s: engine changed from %s to %s",
                    self.config.name,
                    self._detected,
                    result.detected,
                )
            self._detected = result.detected
        if result.malformed:
            self._errors["malformed_line"] += result.malformed
            log.debug(
                "endpoint %s: %d malformed line(s), first: %s",
                self.config.name,
                result.malformed,
                result.first_error,
            )
        if result.error_reason is not None:
            raise ScrapeError(result.error_reason, result.error or result.error_reason)
        self._dropped.update(dict(result.dropped))
        if result.dropped:
            log.debug("endpoint %s: series left out: %s", self.config.name, dict(result.dropped))
        self._track_counters(result.values)
        engine = result.engine or self._engine_name()
        return EndpointSample(
            name=self.config.name,
            engine=engine,
            url=self.url,
            unit=self.config.unit if engine == ENGINE_GENERIC else "tokens",
            up=True,
            timestamp=started,
            duration_seconds=self._clock() - started,
            values=result.values,
            errors_total=tuple(sorted(self._errors.items())),
            dropped_total=tuple(sorted(self._dropped.items())),
            resets_total=self._resets,
            process_start_time_seconds=result.process_start_time_seconds,
            histograms=result.histograms,
        )

    def _track_counters(self, values: tuple[EndpointValue, ...]) -> None:
        """Count scrapes where counters went backwards (engine restart); log when the metric set changes."""
        current: dict[tuple[str, str, str | None], float] = {}
        backwards: list[str] = []
        for value in values:
            if value.field in ENDPOINT_COUNTER_FIELDS:
                key = (value.field, value.model, value.outcome)
                current[key] = value.value
                previous = self._previous.get(key)
                if previous is not None and value.value < previous:
                    backwards.append(f"{value.field} {previous:g} → {value.value:g}")
        if backwards:
            self._resets += 1
            log.info(
                "endpoint %s: counters went backwards (engine restart?): %s",
                self.config.name,
                "; ".join(backwards),
            )
        self._previous = current
        fields = frozenset(value.field for value in values)
        if self._fields is not None and fields != self._fields:
            log.info(
                "endpoint %s: metric set changed: added %s, removed %s",
                self.config.name,
                sorted(fields - self._fields) or "none",
                sorted(self._fields - fields) or "none",
            )
        self._fields = fields

    def _log_state(self, sample: EndpointSample) -> None:
        # One line per change of state or of the kind of failure (connect, timeout, http_status, …), not
        # per message: a message that varies (a port, a byte count) must not make a line per tick.
        state = "up" if sample.up else f"down:{self._failure_reason}"
        if state == self._last_state:
            return
        if sample.up:
            if self._last_state is not None:
                log.info("endpoint %s is up again (%s)", self.config.name, sample.engine)
        else:
            log.warning("endpoint %s is down: %s", self.config.name, sample.error)
        self._last_state = state


def _status_message(status: int, url: str) -> str:
    hint = {401: " (credentials missing or wrong?)", 403: " (credentials not allowed?)"}.get(status, "")
    return f"HTTP {status} from {url}{hint}"


def _certifi_bundle() -> str | None:
    """The CA bundle httpx verifies with by default (certifi), for `tls_config` without `ca_file`."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on it
        return None
    return str(certifi.where())


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class EndpointsSource(Source):
    """All configured endpoints, scraped concurrently within one tick."""

    name = "endpoints"

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        clock: Callable[[], float] = time.monotonic,
        tick_budget_seconds: float | None = None,
    ) -> None:
        # trust_env=False: proxies from the environment must not capture scrapes of local engines.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        redact_library_logs()  # httpx logs each request's URL, query string included
        self.scrapers = [
            EndpointScraper(config, self._client, clock, tick_budget_seconds) for config in endpoints
        ]
        # The worker processes are forked now, before the first tick (the first one also starts the fork
        # server, ~0.1 s); one that cannot start is retried at each scrape, which reports why.
        for scraper in self.scrapers:
            try:
                scraper.worker.start()
            except WorkerFailed as exc:
                log.warning("endpoint %s: %s", scraper.config.name, exc)

    async def collect(self) -> Collected:
        samples = await asyncio.gather(*(scraper.scrape() for scraper in self.scrapers))
        return Collected(endpoints=tuple(samples))

    async def close(self) -> None:
        await asyncio.gather(*(scraper.worker.close() for scraper in self.scrapers))
        await asyncio.gather(*(scraper.close_client() for scraper in self.scrapers))
        await self._client.aclose()
