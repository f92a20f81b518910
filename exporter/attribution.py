"""Which GPUs serve each endpoint: a daemon stage that fills `EndpointSample.gpus`.

- `gpus: [0, "GPU-…"]` in config: those GPUs (UUIDs are mapped to indices; unknown ones are reported).
- `gpus: all`: every GPU on the node.
- `gpus: auto`: the process listening on the URL's local port, plus its descendants (psutil), matched with
  the PIDs NVML lists as compute processes on each GPU (for TGI, whose GPU shards are siblings of the
  listening router under one launcher, the launcher's other children too). When that cannot work — a
  remote URL, no visible listener (another PID namespace, or no permission), no matching GPU process — it
  says why once in the log and in `/api/v1/snapshot` (`attribution_note`) and falls back to all GPUs.
Process lookups are cached and refreshed every `refresh_seconds`, so the per-tick cost is a dict lookup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import psutil

from exporter.config import EndpointConfig
from exporter.model import EndpointSample, GpuSample, Snapshot

log = logging.getLogger(__name__)

# Engines whose GPU workers are siblings of the process that listens (children of one launcher). Only for
# these is the listener's parent's tree searched: for others a shared parent (a supervisor, a shell) would
# attribute a neighbour's GPUs.
SIBLING_WORKER_ENGINES = frozenset({"tgi"})

# (port, include_siblings) → PIDs behind the listener, or None when no listener is visible.
PidFinder = Callable[[int, bool], "set[int] | None"]


def local_addresses() -> set[str]:
    addresses = {"localhost", "0.0.0.0", "::"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%")[0])
    return addresses


def is_local_host(host: str, addresses: set[str]) -> bool:
    if host in addresses:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == socket.gethostname()


def listener_process_tree(port: int, include_siblings: bool = False) -> set[int] | None:
    """PIDs of the process listening on `port` and all its descendants; None if no listener is visible.

    With `include_siblings`, also the descendants of the listener's parent: some engines listen in a
    front-end whose GPU workers are its siblings under one launcher (TGI's router and shards).
    """
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError):
        return None
    pids = {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    pids.discard(None)
    if not pids:
        return None
    tree: set[int] = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            tree.add(pid)
            tree.update(child.pid for child in process.children(recursive=True))
            parent = process.parent() if include_siblings else None
            if parent is not None and parent.pid > 1:
                tree.update(child.pid for child in parent.children(recursive=True))
        except psutil.Error:
            continue
    return tree


class Attributor:
    """Daemon stage: resolves each endpoint's GPUs from config, or automatically from processes."""

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        refresh_seconds: float = 30.0,
        find_pids: PidFinder = listener_process_tree,
        clock: Callable[[], float] = time.monotonic,
        addresses: Callable[[], set[str]] = local_addresses,
    ) -> None:
        self._configs = {endpoint.name: endpoint for endpoint in endpoints}
        self._refresh = refresh_seconds
        self._find_pids = find_pids
        self._clock = clock
        self._addresses = addresses
        self._pid_cache: dict[tuple[str, bool], tuple[float, set[int] | None]] = {}
        self._notes: dict[str, str | None] = {}

    def __call__(self, snapshot: Snapshot) -> Snapshot:
        if not snapshot.endpoints:
            return snapshot
        endpoints = tuple(self._attribute(endpoint, snapshot.gpus) for endpoint in snapshot.endpoints)
        return dataclasses.replace(snapshot, endpoints=endpoints)

    def _attribute(self, endpoint: EndpointSample, gpus: tuple[GpuSample, ...]) -> EndpointSample:
        config = self._configs.get(endpoint.name)
        every = tuple(gpu.info.index for gpu in gpus)
        wanted = "all" if config is None else config.gpus
        if wanted == "all":
            indices, method, note = every, "all", None
        elif wanted == "auto":
            indices, method, note = self._auto(endpoint, config, gpus)
        else:
            indices, method, note = self._configured(wanted, gpus)
        self._log_note(endpoint.name, note)
        return dataclasses.replace(endpoint, gpus=indices, attribution=method, attribution_note=note)

    def _configured(
        self, wanted: Iterable[int | str], gpus: tuple[GpuSample, ...]
    ) -> tuple[tuple[int, ...], str, str | None]:
        by_uuid = {gpu.info.uuid: gpu.info.index for gpu in gpus}
        present = {gpu.info.index for gpu in gpus}
        indices: set[int] = set()
        unknown: list[str] = []
        for item in wanted:
            index = by_uuid.get(item) if isinstance(item, str) else item
            if isinstance(item, str) and item.isdigit():
                index = int(item)
            if index is None or index not in present:
                unknown.append(str(item))
            else:
                indices.add(index)
        note = f"configured GPUs not on this node: {', '.join(unknown)}" if unknown else None
        return tuple(sorted(indices)), "config", note

    def _auto(
        self, endpoint: EndpointSample, config: EndpointConfig | None, gpus: tuple[GpuSample, ...]
    ) -> tuple[tuple[int, ...], str, str | None]:
        name = endpoint.name
        every = tuple(gpu.info.index for gpu in gpus)
        assert config is not None
        parts = urlsplit(config.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not is_local_host(host, self._addresses()):
            return every, "all", f"auto attribution needs a local URL; {host} is remote, so all GPUs are used"
        pids = self._pids(name, port, include_siblings=False)
        if not pids:
            return (
                every,
                "all",
                (
                    f"no process listening on port {port} is visible (other PID namespace or no permission); "
                    "all GPUs are used"
                ),
            )
        matched = tuple(gpu.info.index for gpu in gpus if pids.intersection(gpu.process_ids))
        if not matched and endpoint.engine in SIBLING_WORKER_ENGINES:
            # TGI: the launcher spawns the listening router and the GPU shards side by side.
            pids = self._pids(name, port, include_siblings=True) or pids
            matched = tuple(gpu.info.index for gpu in gpus if pids.intersection(gpu.process_ids))
        if not matched:  # looked up again after refresh_seconds (the engine may restart with new PIDs)
            return (
                every,
                "all",
                (
                    f"none of the {len(pids)} process(es) behind port {port} runs on a GPU NVML reports "
                    "(container PID namespace?); all GPUs are used"
                ),
            )
        return matched, "auto", None

    def _pids(self, name: str, port: int, include_siblings: bool) -> set[int] | None:
        now = self._clock()
        cached = self._pid_cache.get((name, include_siblings))
        if cached is None or now - cached[0] >= self._refresh:
            cached = (now, self._find_pids(port, include_siblings))
            self._pid_cache[(name, include_siblings)] = cached
        return cached[1]

    def _log_note(self, name: str, note: str | None) -> None:
        if self._notes.get(name, "unset") == note:
            return
        if note is not None:
            log.warning("endpoint %s: %s", name, note)
        elif name in self._notes:
            log.info("endpoint %s: GPU attribution resolved", name)
        self._notes[name] = note
