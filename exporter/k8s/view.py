"""The Kubernetes view: read off the tick in a thread, used by the tick without waiting.

`ClusterView` runs one thread. Every `refresh_seconds` it lists the node's GPU allocations from the
kubelet's PodResources API; it asks NVML about device IDs it cannot map by name (MIG UUIDs, minor numbers);
and, for the `gpus: auto` endpoints, it asks the API server which of this node's pods each endpoint's URL
reaches: at the start, when a pod on the node gains or loses a GPU, every `api_refresh_seconds`, and sooner
(1 s, backing off to `refresh_seconds`) while an endpoint is not resolved. Each call has a time limit;
what it learnt is one immutable `ClusterState`, swapped in at the end. A failure keeps the last allocations
for three refreshes, is said once in the log (and again when it changes or ends), and shows as
`tpw_source_up{source="kubernetes_pod_resources"|"kubernetes_api"} 0` with the reason in
`/api/v1/snapshot`.

`KubernetesStage` is the tick's side, which only reads the latest state: as a daemon stage it puts the GPU
allocations in `Snapshot.gpu_pods` (`tpw_gpu_pod_info`) and the two sources' health in `Snapshot.sources`;
as the `Attributor`'s cluster hook it attributes a `gpus: auto` endpoint that the process lookup did not
resolve to the GPUs of its pods (`attribution="kubernetes"`). An endpoint whose pods are not known yet is
`pending` while waiting can help (as for the process lookup: until it has answered for
`pending_grace_seconds`); one whose URL the API server says reaches no pod on this node stays `pending`
(no GPU of this node serves it); one the cluster cannot tell about keeps what the process lookup found,
with the reason added to its note.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.config import ConfigError, EndpointConfig, KubernetesConfig
from exporter.k8s.devices import DeviceMap, NvmlDeviceLookup, needs_mig_parent, needs_minor
from exporter.k8s.hosts import ApiError, ClusterApi, PodKey, Target, parse_host, resolve, resolve_static
from exporter.k8s.podresources import PodDevice, PodResourcesClient, PodResourcesError
from exporter.model import (
    ATTRIBUTION_KUBERNETES,
    ATTRIBUTION_PENDING,
    EndpointSample,
    GpuPod,
    GpuSample,
    Snapshot,
    SourceStatus,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

POD_RESOURCES_SOURCE = "kubernetes_pod_resources"
API_SOURCE = "kubernetes_api"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
STALE_AFTER_REFRESHES = 3  # a failing PodResources read keeps the last allocations this many refreshes
RETRY_FIRST_SECONDS = 1.0
EXTRA_NEEDED = "the `kubernetes` extra (pip install 'tpw-exporter[kubernetes]'; the container image has it)"

Attribution = tuple[tuple[int, ...], str, "str | None"]


@dataclass(frozen=True)
class ClusterState:
    """What the view's thread learnt at its last refresh."""

    loaded: bool = False  # a refresh has completed
    devices: tuple[PodDevice, ...] | None = None  # None: never read, or failing for too long
    devices_problem: str | None = None
    devices_seconds: float = 0.0  # how long the last PodResources read took
    device_map: DeviceMap = field(default_factory=DeviceMap)
    targets: Mapping[str, Target] = field(default_factory=dict)  # gpus: auto endpoint → its pods
    api_used: bool = False  # some endpoint needs the API server
    api_problem: str | None = None
    api_seconds: float = 0.0


class ClusterView:
    """The thread that reads the PodResources API and the API server; `state` is its latest answer."""

    def __init__(
        self,
        pod_resources: PodResourcesClient,
        endpoints: Sequence[EndpointConfig],
        node: str | None,
        namespace: str,
        api: Callable[[], ClusterApi] | None = None,
        refresh_seconds: float = 10.0,
        api_refresh_seconds: float = 60.0,
        nvml: NvmlDeviceLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        local_addresses: Callable[[], set[str]] | None = None,
    ) -> None:
        self._pod_resources = pod_resources
        self._node = node
        self._make_api = api
        self._api: ClusterApi | None = None
        self._refresh = refresh_seconds
        self._api_refresh = api_refresh_seconds
        self._nvml = nvml or NvmlDeviceLookup()
        self._clock = clock
        local = local_addresses() if local_addresses is not None else set()
        specs = {
            endpoint.name: parse_host(endpoint.url, namespace, local)
            for endpoint in endpoints
            if endpoint.gpus == "auto"
        }
        # Hosts that are no cluster name are answered once, without the API server.
        self._static = {name: resolve_static(spec) for name, spec in specs.items() if spec.kind == "other"}
        self._specs = {name: spec for name, spec in specs.items() if spec.kind != "other"}
        self.state = ClusterState(targets=dict(self._static), api_used=bool(self._specs))
        self._devices_at: float | None = None
        self._api_at: float | None = None
        self._api_pods: frozenset[PodKey] | None = None
        self._api_retry = 0.0  # 0: every endpoint resolved, else the wait before the API is asked again
        self._api_forced = False
        self._said: dict[str, str | None] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tpw-kubernetes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():  # inside a call still: it ends with its time limit, or the process
                return
        self._pod_resources.close()
        close = getattr(self._api, "close", None)
        if callable(close):
            close()

    def wake(self) -> None:
        """Refresh both APIs soon (an endpoint came up unresolved); at most once a second."""
        self._api_forced = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # a bug here must not end the thread: the tick keeps the last state
                log.exception("Kubernetes refresh failed")
            wait = self._refresh
            if self._specs and self._api_at is not None:
                wait = min(wait, self._api_at + self._api_interval() - self._clock())
            self._stop.wait(RETRY_FIRST_SECONDS)  # never twice a second, even when woken
            self._wake.wait(max(0.0, wait - RETRY_FIRST_SECONDS))
            self._wake.clear()

    # -- one refresh ------------------------------------------------------------------------------------
    def refresh(self) -> ClusterState:
        """Read both APIs once (as the thread does every round) and publish the new state."""
        previous = self.state
        now = self._clock()
        started = time.monotonic()
        devices, devices_problem = previous.devices, None
        try:
            devices = self._pod_resources.list_devices()
            self._devices_at = now
        except PodResourcesError as exc:
            devices_problem = str(exc)
            if self._devices_at is None or now - self._devices_at > STALE_AFTER_REFRESHES * self._refresh:
                devices = None
        devices_seconds = time.monotonic() - started
        self._say(POD_RESOURCES_SOURCE, devices_problem, "the kubelet's PodResources API")
        device_map = self._device_map(previous.device_map, devices or ())

        targets, api_problem, api_seconds = previous.targets, previous.api_problem, previous.api_seconds
        pods = frozenset((device.namespace, device.pod) for device in devices or ())
        if self._specs and self._api_due(now, pods):
            started = time.monotonic()
            targets, api_problem = self._resolve_all()
            api_seconds = time.monotonic() - started
            self._api_at, self._api_pods, self._api_forced = now, pods, False
            self._say(API_SOURCE, api_problem, "the Kubernetes API server")
            unresolved = any(
                target.kind != "pods" or not pods.intersection(target.pods)
                for name, target in targets.items()
                if name in self._specs
            )
            self._api_retry = (
                min(max(2 * self._api_retry, RETRY_FIRST_SECONDS), self._api_refresh) if unresolved else 0.0
            )
        self.state = ClusterState(
            loaded=True,
            devices=devices,
            devices_problem=devices_problem,
            devices_seconds=devices_seconds,
            device_map=device_map,
            targets=targets,
            api_used=bool(self._specs),
            api_problem=api_problem,
            api_seconds=api_seconds,
        )
        return self.state

    def _api_interval(self) -> float:
        """While an endpoint is not resolved, 1 s doubling up to api_refresh_seconds; else that."""
        return self._api_retry or self._api_refresh

    def _api_due(self, now: float, pods: frozenset[PodKey]) -> bool:
        """At the start, when asked, when this node's GPU pods changed, or when the interval has passed."""
        if self._api_at is None or self._api_forced or pods != self._api_pods:
            return True
        return now - self._api_at >= self._api_interval()

    def _resolve_all(self) -> tuple[dict[str, Target], str | None]:
        """Each auto endpoint's target, from one list of this node's pods; (targets, the first problem)."""
        problem: str | None = None
        try:
            if self._node is None:
                raise ApiError(
                    "this node's name is unknown: set the NODE_NAME environment variable from the downward "
                    "API (spec.nodeName) or kubernetes.node_name"
                )
            if self._api is None:
                assert self._make_api is not None
                self._api = self._make_api()
            api, node = self._api, self._node
            pods = api.node_pods()
        except ApiError as exc:
            problem = str(exc)
            return {
                **self._static,
                **{name: Target("unknown", note=problem) for name in self._specs},
            }, problem
        targets: dict[str, Target] = dict(self._static)
        for name, spec in self._specs.items():
            try:
                targets[name] = resolve(spec, api, node, pods)
            except ApiError as exc:
                targets[name] = Target("unknown", note=str(exc))
                problem = problem or str(exc)
        return targets, problem

    def _device_map(self, known: DeviceMap, devices: Sequence[PodDevice]) -> DeviceMap:
        """`known`, plus what NVML says about the MIG UUIDs and minor numbers it has not told yet."""
        migs = {mig for device in devices if (mig := needs_mig_parent(device.device_id))}
        minors = {minor for device in devices if (minor := needs_minor(device.device_id)) is not None}
        mig_parents = dict(known.mig_parents)
        if migs - mig_parents.keys():
            mig_parents.update(self._nvml.mig_parents(migs - mig_parents.keys()))
        minor_map = dict(known.minors)
        if minors - minor_map.keys():
            minor_map = self._nvml.minor_numbers() or minor_map
        if mig_parents == known.mig_parents and minor_map == known.minors:
            return known
        return DeviceMap(mig_parents, minor_map)

    def _say(self, what: str, problem: str | None, name: str) -> None:
        """Log a problem once, and once when it is gone."""
        if self._said.get(what, None) == problem:
            return
        if problem is not None:
            log.warning("%s: %s", name, problem)
        else:
            log.info("%s answers again", name)
        self._said[what] = problem


class KubernetesStage:
    """The tick's side of the view: a daemon stage, the Attributor's cluster hook, the render family."""

    def __init__(
        self,
        view: ClusterView,
        pending_grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self._grace = pending_grace_seconds
        self._clock = clock
        self._pod_gpus: dict[PodKey, set[int]] = {}
        self._up_since: dict[str, float | None] = {}

    def stop(self) -> None:
        self.view.stop()

    # -- the stage --------------------------------------------------------------------------------------
    def __call__(self, snapshot: Snapshot) -> Snapshot:
        state = self.view.state
        if not state.loaded:
            return snapshot
        gpu_pods, pod_gpus = allocations(state, snapshot.gpus)
        self._pod_gpus = pod_gpus
        sources = [
            SourceStatus(
                POD_RESOURCES_SOURCE,
                state.devices_problem is None,
                state.devices_seconds,
                state.devices_problem,
            )
        ]
        if state.api_used:
            sources.append(
                SourceStatus(API_SOURCE, state.api_problem is None, state.api_seconds, state.api_problem)
            )
        return dataclasses.replace(snapshot, gpu_pods=gpu_pods, sources=(*snapshot.sources, *sources))

    # -- the Attributor's hook --------------------------------------------------------------------------
    def attribute(
        self, endpoint: EndpointSample, gpus: tuple[GpuSample, ...], found: Attribution
    ) -> Attribution:
        """The attribution of a `gpus: auto` endpoint whose processes did not tell its GPUs (`found`)."""
        indices, method, note = found
        now = self._clock()
        was_up = self._up_since.get(endpoint.name) is not None
        if not endpoint.up:
            self._up_since[endpoint.name] = None
        elif not was_up:
            self._up_since[endpoint.name] = now
        since = self._up_since.get(endpoint.name)
        waiting = since is None or now - since < self._grace
        state = self.view.state
        target = state.targets.get(endpoint.name)
        if target is None or not state.loaded:
            if endpoint.up and not was_up:
                self.view.wake()
            if waiting:
                return _pending("its pods are not looked up in Kubernetes yet")
            return found
        if target.kind == "unknown":
            return indices, method, _joined(f"Kubernetes: {target.note}", note)
        if target.kind == "absent":
            return _pending(target.note or "no pod of it runs on this node")
        if state.devices is None:
            return indices, method, _joined(f"Kubernetes: {state.devices_problem}", note)
        held = sorted(set().union(*(self._pod_gpus.get(pod, set()) for pod in target.pods)))
        if held:
            return tuple(held), ATTRIBUTION_KUBERNETES, target.note
        if endpoint.up and not was_up:
            self.view.wake()
        names = ", ".join(f"{namespace}/{name}" for namespace, name in target.pods)
        why = f"its pod {names} holds no GPU of this node in the kubelet's PodResources"
        if waiting:
            return _pending(why)
        return indices, method, _joined(f"Kubernetes: {why}", note)

    # -- rendering --------------------------------------------------------------------------------------
    def families(self, snapshot: Snapshot) -> Iterator[Metric]:
        return gpu_pod_families(snapshot)


def gpu_pod_families(snapshot: Snapshot) -> Iterator[Metric]:
    """`tpw_gpu_pod_info`: one series per GPU (or MIG slice) and container that holds it."""
    from prometheus_client.core import InfoMetricFamily

    info = InfoMetricFamily(
        "tpw_gpu_pod",
        "The pod and container the kubelet allocated this GPU (or MIG slice: uuid) to "
        "(PodResources API); join on `gpu`.",
        labels=["gpu"],
    )
    for pod in snapshot.gpu_pods:
        info.add_metric(
            [str(pod.gpu)],
            {"uuid": pod.uuid, "namespace": pod.namespace, "pod": pod.pod, "container": pod.container},
        )
    yield info


def allocations(
    state: ClusterState, gpus: Sequence[GpuSample]
) -> tuple[tuple[GpuPod, ...], dict[PodKey, set[int]]]:
    """The allocations on the snapshot's GPUs, and each pod's GPU indices."""
    index_uuids = {gpu.info.index: gpu.info.uuid for gpu in gpus}
    by_uuid = {gpu.info.uuid: gpu.info.index for gpu in gpus}
    found: set[GpuPod] = set()
    pod_gpus: dict[PodKey, set[int]] = {}
    for device in state.devices or ():
        gpu_uuid = state.device_map.gpu_uuid(device.device_id, index_uuids)
        index = by_uuid.get(gpu_uuid) if gpu_uuid is not None else None
        if index is None:
            continue
        assert gpu_uuid is not None
        uuid = state.device_map.device_uuid(device.device_id, gpu_uuid)
        found.add(GpuPod(index, uuid, device.namespace, device.pod, device.container))
        pod_gpus.setdefault((device.namespace, device.pod), set()).add(index)
    ordered = tuple(sorted(found, key=lambda p: (p.gpu, p.uuid, p.namespace, p.pod, p.container)))
    return ordered, pod_gpus


def _pending(why: str) -> Attribution:
    return (), ATTRIBUTION_PENDING, f"{why}; energy-derived values are withheld until its GPUs are known"


def _joined(first: str, second: str | None) -> str:
    return f"{first}; {second}" if second else first


def own_namespace(environ: Mapping[str, str]) -> str:
    """The exporter pod's namespace: POD_NAMESPACE, else its service account's, else `default`."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def enabled(settings: KubernetesConfig, environ: Mapping[str, str]) -> bool:
    """`kubernetes.enabled`, with `auto` read from the node: the socket, or a pod's environment."""
    if settings.enabled != "auto":
        return bool(settings.enabled)
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST")) or settings.api_url is not None
    return in_pod or os.path.exists(settings.pod_resources_socket)


def build_kubernetes(
    settings: KubernetesConfig,
    endpoints: Sequence[EndpointConfig],
    environ: Mapping[str, str] | None = None,
    pending_grace_seconds: float = 10.0,
    nvml: Any = None,
) -> KubernetesStage | None:
    """The started view and its stage when `kubernetes` is enabled, else None (nothing imported)."""
    environ = os.environ if environ is None else environ
    if not enabled(settings, environ):
        return None
    missing = [name for name in ("grpc", "google.protobuf", "kubernetes") if not _importable(name)]
    if missing:
        problem = f"Kubernetes attribution needs {EXTRA_NEEDED}; {', '.join(missing)} missing"
        if settings.enabled is True:
            raise ConfigError(f"kubernetes.enabled: {problem}")
        log.warning("%s: it is off", problem)
        return None
    from exporter.attribution import local_addresses

    node = settings.node_name or environ.get("NODE_NAME") or None
    timeout = settings.timeout_seconds

    def api() -> ClusterApi:
        from exporter.k8s.api import KubernetesApi

        assert node is not None
        return KubernetesApi(node, settings.api_url, timeout)

    view = ClusterView(
        PodResourcesClient(settings.pod_resources_socket, timeout),
        endpoints,
        node,
        settings.namespace or own_namespace(environ),
        api=api,
        refresh_seconds=settings.refresh_seconds,
        api_refresh_seconds=settings.api_refresh_seconds,
        nvml=NvmlDeviceLookup(nvml),
        local_addresses=local_addresses,
    )
    view.start()
    return KubernetesStage(view, pending_grace_seconds)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
