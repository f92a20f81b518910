"""The one small interface every source implements (node_exporter's collector model).

A source is asked once per tick for what it sees now. It returns a `Collected` or raises; the daemon
times every call, turns an exception or a time-out into `tpw_source_up{source} 0` with a one-line
reason, and keeps the other sources flowing. A source that can fail in part (one GPU of eight, one
endpoint of three) reports the broken part inside its result (`up=False` on that item) instead of raising.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from exporter.model import EndpointSample, GpuSample, NodeInfo


class SourceError(Exception):
    """A whole source cannot deliver this tick; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Collected:
    """What one source delivered for one tick."""

    gpus: tuple[GpuSample, ...] = ()
    endpoints: tuple[EndpointSample, ...] = ()
    node: NodeInfo | None = None


class Source(ABC):
    """Collects one kind of data. `collect` must not block the event loop: run blocking calls in threads."""

    name: str

    @abstractmethod
    async def collect(self) -> Collected:
        """Return this tick's samples, or raise (SourceError for expected failures)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release what the source holds (threads, handles, connections)."""
