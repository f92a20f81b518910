"""Serving engines' Prometheus endpoints, scraped concurrently with httpx and normalized per engine profile.

Each endpoint is scraped by its own `EndpointScraper` under its own time limit, so one slow engine never
delays the others or the GPU metrics. Every failure is data, not a crash: connection refused, time-out,
an HTTP error, a redirect to another host (never followed), a page over the size cap (read as a stream and
cut off, never buffered whole), a body that is not UTF-8 — each marks that endpoint `up 0` for the tick,
counts `tpw_endpoint_scrape_errors_total{reason}` and is logged once per state change. Malformed lines are
skipped and counted; counters that go backwards (an engine restart) are counted as resets
(`tpw_endpoint_resets_total`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from exporter.config import EndpointConfig
from exporter.engines import (
    PROFILES,
    EngineProfile,
    detect_engine,
    generic_profile,
    is_detection_name,
    normalize,
)
from exporter.model import (
    ENDPOINT_COUNTER_FIELDS,
    ENGINE_AUTO,
    ENGINE_GENERIC,
    EndpointSample,
    EndpointValue,
)
from exporter.promtext import ParseResult, parse_selected
from exporter.sources.base import Collected, Source

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
ACCEPT = "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"
PROCESS_START = "process_start_time_seconds"
ALL_PROFILE_NAMES = frozenset().union(*(profile.wanted_names() for profile in PROFILES.values()))


class ScrapeError(Exception):
    """One failed scrape; `reason` is the bounded label value of tpw_endpoint_scrape_errors_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def display_url(url: str) -> str:
    """The URL without credentials, safe for labels and logs."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


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
        self.url = display_url(config.url)
        self._fixed_profile: EngineProfile | None = None
        if config.engine == ENGINE_GENERIC:
            assert config.mapping is not None  # guaranteed by the config model
            model_labels = (config.model_label,) if config.model_label else ()
            self._fixed_profile = generic_profile(config.mapping, config.unit, model_labels=model_labels)
        elif config.engine != ENGINE_AUTO:
            self._fixed_profile = PROFILES[config.engine]
        self._detected: str | None = None
        self._errors: Counter[str] = Counter()
        self._resets = 0
        self._previous: dict[tuple[str, str, str | None], float] = {}
        self._fields: frozenset[str] | None = None
        self._last_state: str | None = None

    # -- fetching -------------------------------------------------------------------------------------
    async def _fetch(self) -> bytes:
        url = self.config.url
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            async with self._client.stream(
                "GET", url, headers={"Accept": ACCEPT}, timeout=self.timeout
            ) as response:
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("location", ""))
                    if urlsplit(target).netloc != origin:
                        raise ScrapeError(
                            "redirect", f"redirect to another host not followed: {display_url(target)}"
                        )
                    url = target
                    continue
                if response.status_code != 200:
                    raise ScrapeError("http_status", f"HTTP {response.status_code} from {display_url(url)}")
                return await self._read_capped(response)
        raise ScrapeError("redirect", f"more than {MAX_REDIRECTS} redirects")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self.config.max_body_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ScrapeError("too_large", f"page of {int(declared)} bytes is over the {cap}-byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise ScrapeError("too_large", f"page is over the {cap}-byte cap; stopped reading")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- one tick -------------------------------------------------------------------------------------
    async def scrape(self) -> EndpointSample:
        started = self._clock()
        try:
            body = await asyncio.wait_for(self._fetch(), timeout=self.timeout)
            sample = self._interpret(body, started)
        except ScrapeError as exc:
            sample = self._failed(exc.reason, str(exc), started)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            sample = self._failed("timeout", f"no answer within {self.timeout:g} s", started)
        except httpx.ConnectError as exc:
            sample = self._failed("connect", f"cannot connect to {self.url}: {_reason(exc)}", started)
        except httpx.HTTPError as exc:
            sample = self._failed("http", f"{type(exc).__name__}: {_reason(exc)}", started)
        self._log_state(sample)
        return sample

    def _failed(self, reason: str, message: str, started: float) -> EndpointSample:
        self._errors[reason] += 1
        return EndpointSample(
            name=self.config.name,
            engine=self._engine_name(),
            url=self.url,
            unit=self.config.unit,
            up=False,
            error=message,
            timestamp=started,
            duration_seconds=self._clock() - started,
            errors_total=tuple(sorted(self._errors.items())),
            resets_total=self._resets,
        )

    def _engine_name(self) -> str:
        if self._fixed_profile is not None:
            return self._fixed_profile.name
        return self._detected or "unknown"

    def _parse(self, text: str) -> tuple[EngineProfile, ParseResult]:
        """Parse only what the endpoint's profile reads; for `auto`, the profile detected last time.

        Detection needs every engine's names (on a vLLM page that is every histogram bucket, ~7× the
        work), so the broad parse runs only until an engine is detected and again when the detected
        engine's metrics vanish from the page.
        """
        profile = self._fixed_profile or (PROFILES[self._detected] if self._detected else None)
        if profile is not None:
            parsed = parse_selected(text, profile.wanted_names() | {PROCESS_START})
            if self._fixed_profile is not None or any(s.name != PROCESS_START for s in parsed.samples):
                return profile, parsed
        parsed = parse_selected(
            text, lambda name: name in ALL_PROFILE_NAMES or name == PROCESS_START or is_detection_name(name)
        )
        return self._detect([s.name for s in parsed.samples]), parsed

    def _detect(self, names: Sequence[str]) -> EngineProfile:
        detected = detect_engine(names)
        if detected is None:
            raise ScrapeError("no_engine", "no known engine's metrics on the page (set `engine` explicitly)")
        if detected != self._detected:
            if self._detected is not None:
                log.warning(
                    "endpoint %s: engine changed from %s to %s", self.config.name, self._detected, detected
                )
            self._detected = detected
        return PROFILES[detected]

    def _interpret(self, body: bytes, started: float) -> EndpointSample:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScrapeError("decode", f"page is not UTF-8 (byte {exc.start})") from None
        profile, parsed = self._parse(text)
        if parsed.malformed:
            self._errors["malformed_line"] += parsed.malformed
            log.debug(
                "endpoint %s: %d malformed line(s), first: %s",
                self.config.name,
                parsed.malformed,
                parsed.first_error,
            )
        values = tuple(normalize(profile, parsed.samples))
        if not values:
            raise ScrapeError("no_metrics", f"no {profile.name} metrics on the page (wrong engine or URL?)")
        self._track_counters(values)
        start_times = [s.value for s in parsed.samples if s.name == PROCESS_START]
        return EndpointSample(
            name=self.config.name,
            engine=profile.name,
            url=self.url,
            unit=profile.work_unit if profile.name == ENGINE_GENERIC else "tokens",
            up=True,
            timestamp=started,
            duration_seconds=self._clock() - started,
            values=values,
            errors_total=tuple(sorted(self._errors.items())),
            resets_total=self._resets,
            process_start_time_seconds=max(start_times) if start_times else None,
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
        state = "up" if sample.up else f"down:{sample.error}"
        if state == self._last_state:
            return
        if sample.up:
            if self._last_state is not None:
                log.info("endpoint %s is up again (%s)", self.config.name, sample.engine)
        else:
            log.warning("endpoint %s is down: %s", self.config.name, sample.error)
        self._last_state = state


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
        self.scrapers = [
            EndpointScraper(config, self._client, clock, tick_budget_seconds) for config in endpoints
        ]

    async def collect(self) -> Collected:
        samples = await asyncio.gather(*(scraper.scrape() for scraper in self.scrapers))
        return Collected(endpoints=tuple(samples))

    async def close(self) -> None:
        await self._client.aclose()
