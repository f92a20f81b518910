"""The one small interface every source implements (node_exporter's collector model).

A source is asked once per tick for what it sees now. It returns a `Collected` or raises; the daemon
times every call, turns an exception or a time-out into `tpw_source_up{source} 0` with a one-line
reason, and keeps the other sources flowing. A source that can fail in part (one GPU of eight, one
endpoint of three) reports the broken part inside its result (`up=False` on that item) instead of raising.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.model import EndpointSample, GpuSample, NodeInfo, Profiling, SourceStatus


class SourceError(Exception):
    """A whole source cannot deliver this tick; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Collected:
    """What one source delivered for one tick."""

    gpus: tuple[GpuSample, ...] = ()
    endpoints: tuple[EndpointSample, ...] = ()
    node: NodeInfo | None = None
    # Health of what the source read from on its behalf this tick (a dcgm-exporter page for the NVML
    # source): each is a `tpw_source_up{source}` of its own beside the source's.
    statuses: tuple[SourceStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class ExternalProfiles:
    """What an external profiler read this tick: `Profiling` by GPU UUID (as `read` was given them), and its
    health."""

    status: SourceStatus
    profiles: dict[str, Profiling] = field(default_factory=dict)


class ExternalProfiler(Protocol):
    """Profiling ratios from outside NVML (`exporter.sources.dcgm_exporter`), read in the NVML source's tick.

    `read` returns within its own time limit and never raises: a failure is a status with `up` False.
    """

    name: str

    async def read(self, uuids: Sequence[str]) -> ExternalProfiles: ...

    async def close(self) -> None: ...


class Source(ABC):
    """Collects one kind of data. `collect` must not block the event loop: run blocking calls in threads."""

    name: str

    @abstractmethod
    async def collect(self) -> Collected:
        """Return this tick's samples, or raise (SourceError for expected failures)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release what the source holds (threads, handles, connections)."""
