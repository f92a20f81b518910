"""What the HTTP server serves: the bytes one tick prepared, in each format, gzipped where a scraper asked.

The collector builds a `Published` at the end of every tick and hands it to the server (through a socket
when collection runs in its own process); a scrape only picks bytes out of the latest one. Nothing here
imports the collection side, so the server process stays small.
"""

from __future__ import annotations

import enum
import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GZIP_LEVEL = 6  # zlib's default: within a few % of level 9's size at a third of its time


class Format(enum.Enum):
    """The two exposition formats `/metrics` negotiates."""

    TEXT = "text"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return TEXT_CONTENT_TYPE if self is Format.TEXT else OPENMETRICS_CONTENT_TYPE


def negotiate_format(accept: str) -> Format:
    """OpenMetrics when the Accept header asks for it (Prometheus does by default), else text 0.0.4."""
    return Format.OPENMETRICS if "application/openmetrics-text" in accept else Format.TEXT


def accepts_gzip(accept_encoding: str) -> bool:
    """True when Accept-Encoding lists gzip (or *) without q=0."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.replace(" ", "").lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no timestamp, no name) so equal bodies compress to equal bytes."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


@dataclass(frozen=True, slots=True)
class Published:
    """One tick's output. `gzipped` holds a compressed body only for the formats scrapers asked for."""

    tick: int
    bodies: dict[Format, bytes]
    gzipped: dict[Format, bytes] = field(default_factory=dict)
    simulated_scenario: str | None = None
    collector_up: bool = True

    @property
    def ready(self) -> bool:
        return self.collector_up and self.tick > 0


def publish(
    tick: int,
    text: bytes,
    openmetrics: bytes,
    gzip_formats: Iterable[Format] = (),
    simulated_scenario: str | None = None,
) -> Published:
    """A `Published` for one tick, compressing the formats in `gzip_formats` once, here, not per scrape."""
    bodies = {Format.TEXT: text, Format.OPENMETRICS: openmetrics}
    gzipped = {fmt: gzip_bytes(bodies[fmt]) for fmt in set(gzip_formats)}
    return Published(tick, bodies, gzipped, simulated_scenario)


COLLECTOR_DOWN_HELP = (
    "1 while the collection process runs and publishes; "
    "0 after it stopped unexpectedly, until it is restarted."
)


def collector_down() -> Published:
    """What `/metrics` serves while the collection process is down: that fact, and no stale GPU values."""
    lines = [
        f"# HELP tpw_exporter_collector_up {COLLECTOR_DOWN_HELP}",
        "# TYPE tpw_exporter_collector_up gauge",
        "tpw_exporter_collector_up 0.0",
    ]
    text = "\n".join(lines) + "\n"
    openmetrics = text + "# EOF\n"
    return Published(
        tick=0,
        bodies={Format.TEXT: text.encode(), Format.OPENMETRICS: openmetrics.encode()},
        collector_up=False,
    )


class Publication(Protocol):
    """Where the HTTP server gets what it serves: the latest `Published`, and the snapshot on request."""

    def latest(self) -> Published: ...

    def want_gzip(self, fmt: Format) -> None:
        """A scraper asked for `fmt` gzipped: compress it from the next tick on."""

    async def snapshot_json(self) -> bytes | None:
        """The latest snapshot as JSON; None while there is none (collector down)."""

    async def history_json(self, since: int | None, run: str | None, gzip: bool) -> tuple[bytes, bool] | None:
        """The live page's history as JSON (exporter/live/history.py), only what came after tick `since` of
        history `run` where it can, gzipped when `gzip` and worth it: (body, gzipped); None while the
        collector is down."""
