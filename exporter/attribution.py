"""Which GPUs serve each endpoint: a daemon stage that fills `EndpointSample.gpus`.

- `gpus: [0, "GPU-…"]` in config: those GPUs (UUIDs are mapped to indices; unknown ones are reported).
- `gpus: all`: every GPU on the node.
- `gpus: auto`: the process listening on the URL's local port, plus its descendants (psutil), matched with
  the PIDs NVML lists as compute processes on each GPU (for TGI, whose GPU shards are siblings of the
  listening router under one launcher, the launcher's other children too). On Kubernetes, when that
  finds nothing (a pod IP or Service URL, a container without `hostPID`), the GPUs the kubelet allocated
  to the pods the URL reaches (`cluster`, `exporter.k8s.view`; attribution `kubernetes`).

`auto` over time. A lookup that finds the endpoint's GPUs is kept, refreshed every `refresh_seconds`, and
redone at once when the endpoint comes (back) up, when its engine's process start time changes (a
restart), or when none of its processes is on a GPU any more. Until a lookup succeeds the endpoint is
`pending`: it has no GPUs and no energy-derived values (tokens per joule would otherwise use every GPU's
energy), and the lookup is retried every tick at first, backing off to every `retry_max_seconds`. It falls
back to all GPUs, saying why once in the log and in `/api/v1/snapshot` (`attribution_note`), only when
waiting cannot help: a remote URL; an endpoint that answers while no listener is visible (another PID
namespace, or no permission); or one that has answered for `pending_grace_seconds` with none of its
processes on a GPU.

A GPU shared by several endpoints has its energy split between them (`EndpointSample.gpu_shares`): by their
processes' SM utilisation on it (NVML's per-process samples) when every one of them has known processes
and some of them were busy, else evenly; the shares of a GPU add up to 1.

MIG. `gpus:` may name MIG devices by UUID (`MIG-…`): the endpoint is attributed their parent GPU (energy is
counted per physical GPU: MIG devices have no energy counter), and `EndpointSample.mig_devices` keeps the
UUIDs; `auto` finds them from the processes NVML lists on each MIG device. Endpoints on MIG devices of one
GPU split its energy by the SMs of their MIG devices (`MigDevice.multiprocessors`, else the slice count):
NVML reports no per-process SM utilisation in MIG mode, a MIG device's SMs and memory are reserved for its
tenant whether busy or not, and the GPU's idle and memory power (most of an inference GPU's draw) scales
with what is reserved, not with what is busy this second. So a 3g.40gb and a 1g.10gb tenant pay 60:16 on an
H100. Slices no endpoint holds are charged to those that do, as a whole GPU's idle time is.

Per endpoint and GPU (`EndpointSample.gpu_usage`), for endpoints whose processes are known (auto
attribution, or `known_processes`, the demo's engine): the device memory of its processes (NVML's
`usedGpuMemory`) and their summed SM utilisation (NVML's per-process samples; absent while the GPU has
none). Never for other processes on the node.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from exporter.config import EndpointConfig
from exporter.model import ATTRIBUTION_PENDING, EndpointGpuUsage, EndpointSample, GpuSample, Snapshot

log = logging.getLogger(__name__)

# Engines whose GPU workers are siblings of the process that listens (children of one launcher). Only for
# these is the listener's parent's tree searched: for others a shared parent (a supervisor, a shell) would
# attribute a neighbour's GPUs.
SIBLING_WORKER_ENGINES = frozenset({"tgi"})

# (port, include_siblings) → PIDs behind the listener, or None when no listener is visible.
PidFinder = Callable[[int, bool], "set[int] | None"]
# (GPU indices, attribution, note): what `auto` decided for one endpoint.
Attribution = tuple[tuple[int, ...], str, "str | None"]
# Kubernetes (`exporter.k8s.view.KubernetesStage.attribute`): given an endpoint, the GPUs and what the process
# lookup found, the attribution to use; asked only when the processes did not tell the endpoint's GPUs.
ClusterAttributor = Callable[[EndpointSample, tuple[GpuSample, ...], Attribution], Attribution]


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
    pids = {
        c.pid
        for c in connections
        if c.pid is not None and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }
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


@dataclass
class _AutoState:
    """What `auto` attribution remembers about one endpoint between ticks."""

    pids: set[int] | None = None  # the process tree that matched GPUs; None while unresolved
    resolved_at: float = 0.0
    start_time: float | None = None  # the engine's process_start_time_seconds when resolved
    next_attempt: float = 0.0
    backoff: float = 0.0
    was_up: bool = False
    up_since: float | None = None  # when the endpoint last came up
    failure: str | None = None  # why the last lookup found no GPU
    hidden: bool = False  # the last lookup saw no listener at all


class Attributor:
    """Daemon stage: resolves each endpoint's GPUs from config, or automatically from processes."""

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        refresh_seconds: float = 30.0,
        find_pids: PidFinder = listener_process_tree,
        clock: Callable[[], float] = time.monotonic,
        addresses: Callable[[], set[str]] = local_addresses,
        retry_max_seconds: float = 8.0,
        pending_grace_seconds: float = 10.0,
        cluster: ClusterAttributor | None = None,
        known_processes: Mapping[str, set[int]] | None = None,
    ) -> None:
        self._configs = {endpoint.name: endpoint for endpoint in endpoints}
        self._known = dict(known_processes or {})
        self._cluster = cluster
        self._refresh = refresh_seconds
        self._find_pids = find_pids
        self._clock = clock
        self._addresses = addresses
        self._retry_max = retry_max_seconds
        self._grace = pending_grace_seconds
        self._auto: dict[str, _AutoState] = {}
        self._notes: dict[str, str | None] = {}

    def __call__(self, snapshot: Snapshot) -> Snapshot:
        if not snapshot.endpoints:
            return snapshot
        attributed = [self._attribute(endpoint, snapshot.gpus) for endpoint in snapshot.endpoints]
        pids = self._known_pids()
        attributed = [
            with_mig_devices(endpoint, snapshot.gpus, pids.get(endpoint.name)) for endpoint in attributed
        ]
        endpoints = share_gpus(attributed, snapshot.gpus, pids)
        endpoints = tuple(
            gpu_usage(endpoint, snapshot.gpus, pids.get(endpoint.name)) for endpoint in endpoints
        )
        return dataclasses.replace(snapshot, endpoints=endpoints)

    def _known_pids(self) -> dict[str, set[int]]:
        found = {name: state.pids for name, state in self._auto.items() if state.pids is not None}
        return {**self._known, **found}

    def _attribute(self, endpoint: EndpointSample, gpus: tuple[GpuSample, ...]) -> EndpointSample:
        config = self._configs.get(endpoint.name)
        every = tuple(gpu.info.index for gpu in gpus)
        wanted = "all" if config is None else config.gpus
        if wanted == "all":
            indices, method, note = every, "all", None
        elif wanted == "auto":
            assert config is not None
            indices, method, note = self._auto_gpus(endpoint, config, gpus)
            if self._cluster is not None and method != "auto":
                indices, method, note = self._cluster(endpoint, gpus, (indices, method, note))
        else:
            indices, method, note = self._configured(wanted, gpus)
        self._log_note(endpoint.name, note)
        mig = _configured_mig(wanted, gpus) if isinstance(wanted, list) else ()
        return dataclasses.replace(
            endpoint, gpus=indices, attribution=method, attribution_note=note, mig_devices=mig
        )

    def _configured(
        self, wanted: Iterable[int | str], gpus: tuple[GpuSample, ...]
    ) -> tuple[tuple[int, ...], str, str | None]:
        by_uuid = {gpu.info.uuid: gpu.info.index for gpu in gpus}
        by_uuid.update({device.uuid: gpu.info.index for gpu in gpus for device in gpu.mig})
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

    def _auto_gpus(
        self, endpoint: EndpointSample, config: EndpointConfig, gpus: tuple[GpuSample, ...]
    ) -> tuple[tuple[int, ...], str, str | None]:
        every = tuple(gpu.info.index for gpu in gpus)
        parts = urlsplit(config.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not is_local_host(host, self._addresses()):
            return every, "all", f"auto attribution needs a local URL; {host} is remote, so all GPUs are used"
        now = self._clock()
        state = self._auto.setdefault(endpoint.name, _AutoState())
        came_up = endpoint.up and not state.was_up
        state.was_up = endpoint.up
        if not endpoint.up:
            state.up_since = None
        elif state.up_since is None:
            state.up_since = now
        if state.pids is not None and self._must_redo(state, endpoint, gpus, came_up):
            state.pids = None
            state.next_attempt, state.backoff = now, 0.0
        elif came_up:  # an unresolved endpoint that starts answering is looked up at once
            state.next_attempt = now
        if state.pids is None and now >= state.next_attempt:
            self._look_up(state, endpoint, port, gpus, now)
        elif state.pids is not None and now - state.resolved_at >= self._refresh:
            self._look_up(state, endpoint, port, gpus, now)  # keeps the old tree if this one finds nothing
        if state.pids is not None:
            matched = tuple(gpu.info.index for gpu in gpus if state.pids.intersection(gpu.process_ids))
            if matched:
                return matched, "auto", None
        failure = state.failure or f"no process behind port {port} found on a GPU yet"
        waited = now - state.up_since if state.up_since is not None else 0.0
        if endpoint.up and (state.hidden or waited >= self._grace):
            return every, "all", f"{failure}; all GPUs are used"
        return (
            (),
            ATTRIBUTION_PENDING,
            f"{failure}; energy-derived values are withheld until its GPUs are known",
        )

    @staticmethod
    def _must_redo(
        state: _AutoState, endpoint: EndpointSample, gpus: tuple[GpuSample, ...], came_up: bool
    ) -> bool:
        """True when the kept process tree may be stale: the engine came (back) up, restarted, or left."""
        assert state.pids is not None
        started = endpoint.process_start_time_seconds
        restarted = started is not None and state.start_time is not None and started != state.start_time
        gone = not any(state.pids.intersection(gpu.process_ids) for gpu in gpus)
        return came_up or restarted or gone

    def _look_up(
        self, state: _AutoState, endpoint: EndpointSample, port: int, gpus: tuple[GpuSample, ...], now: float
    ) -> None:
        pids = self._find_pids(port, False) or set()  # empty: no listener visible
        matched = any(pids.intersection(gpu.process_ids) for gpu in gpus)
        if not matched and pids and endpoint.engine in SIBLING_WORKER_ENGINES:
            # TGI: the launcher spawns the listening router and the GPU shards side by side.
            pids = self._find_pids(port, True) or pids
            matched = any(pids.intersection(gpu.process_ids) for gpu in gpus)
        if matched:
            state.pids, state.resolved_at = pids, now
            state.start_time = endpoint.process_start_time_seconds
            state.failure, state.hidden, state.backoff = None, False, 0.0
            return
        if state.pids is not None:  # a periodic refresh that found nothing: keep what still matches
            state.resolved_at = now
            return
        state.hidden = not pids
        if not pids:
            state.failure = (
                f"no process listening on port {port} is visible (not started yet, another PID namespace, "
                "or no permission)"
            )
        else:
            state.failure = (
                f"none of the {len(pids)} process(es) behind port {port} runs on a GPU NVML reports "
                "(still loading, or a container PID namespace?)"
            )
        state.backoff = min(max(2 * state.backoff, 1.0), self._retry_max)
        state.next_attempt = now + state.backoff

    def _log_note(self, name: str, note: str | None) -> None:
        if self._notes.get(name, "unset") == note:
            return
        if note is not None:
            log.warning("endpoint %s: %s", name, note)
        elif name in self._notes:
            log.info("endpoint %s: GPU attribution resolved", name)
        self._notes[name] = note


def _configured_mig(wanted: Iterable[int | str], gpus: tuple[GpuSample, ...]) -> tuple[str, ...]:
    """The MIG device UUIDs among the configured `gpus:` that this node has now."""
    present = {device.uuid for gpu in gpus for device in gpu.mig}
    return tuple(item for item in wanted if isinstance(item, str) and item in present)


def with_mig_devices(
    endpoint: EndpointSample, gpus: Sequence[GpuSample], pids: set[int] | None
) -> EndpointSample:
    """The endpoint's MIG devices: those configured, and on its GPUs those running its known processes."""
    if not pids:
        return endpoint
    found = list(endpoint.mig_devices)
    for gpu in gpus:
        if gpu.info.index in endpoint.gpus:
            found += [d.uuid for d in gpu.mig if d.uuid not in found and pids.intersection(d.process_ids)]
    return (
        dataclasses.replace(endpoint, mig_devices=tuple(found))
        if len(found) > len(endpoint.mig_devices)
        else endpoint
    )


def _mig_weight(endpoint: EndpointSample, gpu: GpuSample | None) -> float | None:
    """The compute the endpoint's MIG devices on this GPU hold (SMs, else slices); None when it holds none."""
    if gpu is None:
        return None
    held = [d for d in gpu.mig if d.uuid in endpoint.mig_devices]
    if not held:
        return None
    return float(sum(d.multiprocessors or d.slices or 1 for d in held))


def gpu_usage(endpoint: EndpointSample, gpus: Sequence[GpuSample], pids: set[int] | None) -> EndpointSample:
    """The endpoint's processes' memory and SM utilisation on each of its GPUs, where its processes are
    known and on that GPU."""
    if not pids:
        return endpoint
    usage = []
    by_index = {gpu.info.index: gpu for gpu in gpus}
    for index in endpoint.gpus:
        gpu = by_index.get(index)
        if gpu is None or not gpu.up or not pids.intersection(gpu.process_ids):
            continue
        memory = [used for pid, used in gpu.process_memory if pid in pids]
        busy = [ratio for pid, ratio in gpu.process_sm_ratios if pid in pids]
        usage.append(
            EndpointGpuUsage(
                gpu=index,
                memory_used_bytes=sum(memory) if memory else None,
                sm_utilization_ratio=min(sum(busy), 1.0) if gpu.process_sm_ratios else None,
            )
        )
    return dataclasses.replace(endpoint, gpu_usage=tuple(usage))


def share_gpus(
    endpoints: Sequence[EndpointSample], gpus: Sequence[GpuSample], pids: dict[str, set[int]]
) -> tuple[EndpointSample, ...]:
    """Fill each endpoint's `gpu_shares`: the part of each of its GPUs' energy that is its own.

    A GPU with one endpoint is wholly that endpoint's. Several endpoints on MIG devices of one GPU split it
    by the SMs of their MIG devices (see the module docstring). Otherwise several endpoints on one GPU split
    it by the SM utilisation of their processes there when all of them have known processes (auto
    attribution) and the GPU reported per-process samples with some activity; otherwise evenly.
    """
    owners: dict[int, list[str]] = {}
    for endpoint in endpoints:
        for index in endpoint.gpus:
            owners.setdefault(index, []).append(endpoint.name)
    by_index = {gpu.info.index: gpu for gpu in gpus}
    by_name = {endpoint.name: endpoint for endpoint in endpoints}
    shares: dict[tuple[str, int], float] = {}
    for index, names in owners.items():
        if len(names) == 1:
            shares[(names[0], index)] = 1.0
            continue
        gpu = by_index.get(index)
        held = {name: _mig_weight(by_name[name], gpu) for name in names}
        if all(weight is not None for weight in held.values()):  # MIG tenants: by the SMs they hold
            total_held = sum(weight or 0.0 for weight in held.values())
            shares.update({(name, index): (held[name] or 0.0) / total_held for name in names})
            continue
        busy = dict(gpu.process_sm_ratios) if gpu is not None else {}
        activity = {
            name: sum(busy.get(pid, 0.0) for pid in pids[name]) if name in pids else None for name in names
        }
        total = sum(value for value in activity.values() if value is not None)
        if all(value is not None for value in activity.values()) and total > 0:
            shares.update({(name, index): (activity[name] or 0.0) / total for name in names})
        else:
            shares.update({(name, index): 1.0 / len(names) for name in names})
    return tuple(
        dataclasses.replace(
            endpoint, gpu_shares=tuple(shares[(endpoint.name, index)] for index in endpoint.gpus)
        )
        for endpoint in endpoints
    )
