"""Pod attribution on Kubernetes, end to end in process: the kubelet's PodResources API (a real gRPC server on
a unix socket), the API server (a real HTTP server with the API's JSON, read by the official client), the
view's refresh, the stage, the Attributor and the renderer. Only the GPUs are fake (FakeNvml)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_common import k8s_object
from fake_nvml import Clock, FakeGpu, FakeNvml, NVMLError
from k8s_servers import (
    ApiServer,
    ApiState,
    Container,
    PodEntry,
    endpoint_slice,
    pod,
    pod_resources_server,
    service,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.attribution import Attributor
from exporter.config import EndpointConfig
from exporter.k8s.api import KubernetesApi
from exporter.k8s.devices import NvmlDeviceLookup
from exporter.k8s.podresources import PodResourcesClient
from exporter.k8s.view import ClusterView, KubernetesStage
from exporter.model import EndpointSample, GpuInfo, GpuSample, Snapshot
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer

NODE = "node-a"
UUIDS = [f"GPU-{i}1b2c3d4-0000-4000-8000-00000000000{i}" for i in range(6)]
# /dev/nvidiaN minor numbers need not follow NVML's order: GPU 2 is /dev/nvidia3 here.
MINORS = {0: 0, 1: 1, 2: 3, 3: 2, 4: 4, 5: 5}
MIG_TRAIN = "MIG-7a0e3f1c-2b4d-5e6f-8a9b-0c1d2e3f4a5b"
MIG_EVAL = "MIG-8b1f4a2d-3c5e-5f70-9bac-1d2e3f4a5b6c"
OLD_MIG = f"MIG-{UUIDS[5]}/2/0"  # the name before driver R470


class MigFakeNvml(FakeNvml):
    """FakeNvml with minor numbers and MIG slices, as NVML answers for them (handles: MIG ones ≥ 1000)."""

    def __init__(self, gpus: list[FakeGpu], migs: dict[str, int]) -> None:
        super().__init__(gpus, Clock())
        self.migs = migs  # MIG UUID → parent index

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        self._enter("nvmlDeviceGetMinorNumber", handle)
        return MINORS[handle]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        self._enter("nvmlDeviceGetHandleByUUID")
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return index
        if uuid in self.migs:
            return 1000 * (self.migs[uuid] + 1) + sorted(self.migs).index(uuid)
        raise NVMLError(6)  # NVML_ERROR_NOT_FOUND

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: int) -> int:
        self._enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if handle < 1000:
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT: not a MIG device
        return handle // 1000 - 1


def node_a_pods() -> list[dict[str, Any]]:
    return [
        pod("vllm-0", "inference", NODE, "10.244.1.7", {"app": "vllm"}, ports=[8000], gpus=2),
        pod("sglang-0", "default", NODE, "10.244.1.8", {"app": "sglang"}, ports=[30000], gpus=1),
        pod("tgi-0", "inference", NODE, "10.244.1.9", {"app": "tgi"}, hostname="tgi-0", subdomain="tgi"),
        pod("hostnet-engine", "inference", NODE, "", host_network=True, ports=[8080]),
        pod("mig-job", "batch", NODE, "10.244.1.10", {"app": "train"}),
        pod("old-job", "batch", NODE, "10.244.1.11", {"app": "vllm"}, phase="Succeeded"),
    ]


def cluster() -> ApiState:
    pods = [
        *node_a_pods(),
        # Another node's pods: the same labels, never this node's.
        pod("vllm-1", "inference", "node-b", "10.244.2.9", {"app": "vllm"}, host_ip="10.0.0.6", gpus=2),
        pod("remote-only", "inference", "node-b", "10.244.2.10", {"app": "remote"}, host_ip="10.0.0.6"),
    ]
    services = [
        service("vllm", "inference", {"app": "vllm"}, cluster_ip="10.96.12.34"),
        service("router", "default", None, cluster_ip="10.96.40.2"),
        service("elsewhere", "inference", {"app": "remote"}, cluster_ip="10.96.40.3", local=False),
        service("ext", "inference", None, kind="ExternalName"),
    ]
    slices = [
        endpoint_slice(
            "router", "default", [("sglang-0", "10.244.1.8", NODE), ("sglang-9", "10.244.2.4", "node-b")]
        ),
    ]
    return ApiState(pods=pods, services=services, slices=slices)


def kubelet_pods() -> list[PodEntry]:
    """What node-a's kubelet says each pod holds, in every naming the device plugins and DRA use."""
    return [
        PodEntry("inference", "vllm-0", [Container("engine", [("nvidia.com/gpu", [UUIDS[0], UUIDS[1]])])]),
        PodEntry("default", "sglang-0", [Container("engine", [("nvidia.com/gpu", ["nvidia3"])])]),  # GKE
        PodEntry("inference", "tgi-0", [Container("shard", [("nvidia.com/gpu.shared", [f"{UUIDS[3]}::1"])])]),
        PodEntry("inference", "hostnet-engine", [Container("engine", dra=[("gpu.nvidia.com", "gpu-4")])]),
        PodEntry(
            "batch",
            "mig-job",
            [
                Container("train", [("nvidia.com/mig-3g.40gb", [MIG_TRAIN])]),
                Container("eval", [("nvidia.com/mig-1g.10gb", [MIG_EVAL])]),
                Container("probe", [("nvidia.com/mig-1g.10gb", [OLD_MIG])]),
            ],
        ),
    ]


ENDPOINTS = {
    "by-ip": "http://10.244.1.7:8000/metrics",
    "pod-dns": "http://10-244-1-7.inference.pod.cluster.local:8000/metrics",
    "service-fqdn": "http://vllm.inference.svc.cluster.local:8000/metrics",
    "service-short": "http://vllm:8000/metrics",  # the exporter's namespace: inference here
    "service-ns": "http://vllm.inference:8000/metrics",
    "cluster-ip": "http://10.96.12.34:8000/metrics",
    "slices": "http://router.default.svc:30000/metrics",
    "statefulset": "http://tgi-0.tgi.inference.svc.cluster.local/metrics",
    "host-network": "http://10.0.0.5:8080/metrics",
    "elsewhere": "http://elsewhere.inference:8000/metrics",
    "external-name": "http://ext.inference:8000/metrics",
    "not-cluster": "http://vllm.example.com:8000/metrics",
}


def configs(endpoints: dict[str, str] = ENDPOINTS) -> list[EndpointConfig]:
    return [
        *(EndpointConfig(name=name, url=url) for name, url in endpoints.items()),
        EndpointConfig(name="configured", url="http://10.244.1.7:8000/metrics", gpus=[5]),
    ]


@dataclass
class Harness:
    view: ClusterView
    stage: KubernetesStage
    attributor: Attributor
    clock: Clock
    gpus: tuple[GpuSample, ...]
    configs: list[EndpointConfig]

    def snapshot(self, up: bool = True) -> Snapshot:
        snapshot = Snapshot(
            tick=1,
            wall_time=0.0,
            monotonic_time=0.0,
            duration_seconds=0.0,
            gpus=self.gpus,
            endpoints=tuple(
                EndpointSample(name=c.name, engine="vllm", url=c.url, up=up) for c in self.configs
            ),
        )
        return self.attributor(self.stage(snapshot))

    def endpoints(self, up: bool = True) -> dict[str, EndpointSample]:
        return {endpoint.name: endpoint for endpoint in self.snapshot(up).endpoints}

    def page(self, up: bool = True) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (
            Renderer(extra=[endpoint_families, self.stage.families]).render(self.snapshot(up)).text.decode()
        )
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def harness(
    socket_path: Path,
    api_url: str,
    endpoint_configs: list[EndpointConfig] | None = None,
    timeout: float = 1.0,
    refresh_seconds: float = 10.0,
    api_refresh_seconds: float = 60.0,
    grace: float = 10.0,
) -> Harness:
    fakes = [FakeGpu(uuid) for uuid in UUIDS]
    nvml = MigFakeNvml(fakes, {MIG_TRAIN: 5, MIG_EVAL: 5})
    endpoint_configs = configs() if endpoint_configs is None else endpoint_configs
    clock = Clock()
    view = ClusterView(
        PodResourcesClient(str(socket_path), timeout),
        endpoint_configs,
        NODE,
        "inference",
        api=lambda: KubernetesApi(NODE, api_url, timeout),
        refresh_seconds=refresh_seconds,
        api_refresh_seconds=api_refresh_seconds,
        nvml=NvmlDeviceLookup(nvml),
        clock=clock,
        local_addresses=lambda: {"10.244.1.99"},  # the exporter pod's own IP
    )
    stage = KubernetesStage(view, pending_grace_seconds=grace, clock=clock)
    attributor = Attributor(
        endpoint_configs,
        addresses=lambda: {"10.244.1.99"},
        find_pids=lambda port, siblings: None,  # no hostPID: no listener is visible
        clock=clock,
        pending_grace_seconds=grace,
        cluster=stage.attribute,
    )
    gpus = tuple(GpuSample(info=GpuInfo(index=i, uuid=uuid, name="H100")) for i, uuid in enumerate(UUIDS))
    return Harness(view, stage, attributor, clock, gpus, endpoint_configs)


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(cluster()) as server:
        yield server


def info_series(page: dict, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {labels for (sample, labels), value in page.items() if sample == name and value == 1.0}


def test_endpoints_by_pod_ip_service_and_pod_names_get_their_pods_gpus(
    socket_path: Path, api: ApiServer
) -> None:
    with pod_resources_server(socket_path, kubelet_pods()):
        h = harness(socket_path, api.url)
        h.view.refresh()
        endpoints = h.endpoints()
    expected = {
        "by-ip": (0, 1),
        "pod-dns": (0, 1),
        "service-fqdn": (0, 1),
        "service-short": (0, 1),
        "service-ns": (0, 1),
        "cluster-ip": (0, 1),
        "slices": (2,),  # sglang-0 holds nvidia3: the GPU whose minor number is 3, NVML index 2
        "statefulset": (3,),  # a shared replica of GPU 3
        "host-network": (4,),  # DRA's gpu-4: minor number 4
    }
    for name, gpus in expected.items():
        endpoint = endpoints[name]
        assert (endpoint.gpus, endpoint.attribution) == (gpus, "kubernetes"), (
            name,
            endpoint.attribution_note,
        )
        assert endpoint.attribution_note is None, (name, endpoint.attribution_note)
    # vllm-1 has the same labels on node-b, and old-job (Succeeded) the same on this node: neither counts.
    assert any("fieldSelector=spec.nodeName%3Dnode-a" in path for path in api.state.paths)
    assert endpoints["configured"].gpus == (5,) and endpoints["configured"].attribution == "config"


def test_an_endpoint_with_no_pod_on_this_node_is_withheld_not_given_every_gpu(
    socket_path: Path, api: ApiServer
) -> None:
    with pod_resources_server(socket_path, kubelet_pods()):
        h = harness(socket_path, api.url)
        h.view.refresh()
        h.endpoints()
        h.clock.advance(60)  # long past the grace: waiting is not what this is
        endpoints = h.endpoints()
    elsewhere = endpoints["elsewhere"]
    assert (elsewhere.gpus, elsewhere.attribution) == ((), "pending")
    assert elsewhere.attribution_note.startswith("Service inference/elsewhere has no pod on node node-a")
    assert "internalTrafficPolicy is Cluster" in elsewhere.attribution_note
    for name, why in (
        ("external-name", "Kubernetes: Service inference/ext is an ExternalName Service"),
        ("not-cluster", "Kubernetes: vllm.example.com is no cluster name"),
    ):
        endpoint = endpoints[name]
        assert endpoint.attribution == "all" and endpoint.gpus == tuple(range(6)), name
        assert endpoint.attribution_note.startswith(why), endpoint.attribution_note
        assert "remote, so all GPUs are used" in endpoint.attribution_note


def test_gpu_pod_info_names_each_gpu_and_mig_slice_holder(socket_path: Path, api: ApiServer) -> None:
    with pod_resources_server(socket_path, kubelet_pods()):
        h = harness(socket_path, api.url)
        h.view.refresh()
        page = h.page()
    series = info_series(page, "tpw_gpu_pod_info")

    def row(gpu: int, uuid: str, namespace: str, name: str, container: str) -> tuple[tuple[str, str], ...]:
        labels = {"gpu": str(gpu), "uuid": uuid, "namespace": namespace, "pod": name, "container": container}
        return tuple(sorted(labels.items()))

    assert series == {
        row(0, UUIDS[0], "inference", "vllm-0", "engine"),
        row(1, UUIDS[1], "inference", "vllm-0", "engine"),
        row(2, UUIDS[2], "default", "sglang-0", "engine"),
        row(3, UUIDS[3], "inference", "tgi-0", "shard"),
        row(4, UUIDS[4], "inference", "hostnet-engine", "engine"),
        row(5, MIG_TRAIN, "batch", "mig-job", "train"),
        row(5, MIG_EVAL, "batch", "mig-job", "eval"),
        row(5, OLD_MIG, "batch", "mig-job", "probe"),  # the slice's UUID, in the old form
    }
    gpu_info = info_series(page, "tpw_endpoint_gpu_info")
    assert (("attribution", "kubernetes"), ("endpoint", "by-ip"), ("gpu", "0")) in gpu_info
    up = {labels: value for (name, labels), value in page.items() if name == "tpw_source_up"}
    assert up[(("source", "kubernetes_pod_resources"),)] == 1.0
    assert up[(("source", "kubernetes_api"),)] == 1.0


def warnings_from(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def test_rbac_forbidden_leaves_the_rest_working_and_is_said_once(
    socket_path: Path, api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    api.state.allowed = {("list", "", "pods")}  # no Services
    with pod_resources_server(socket_path, kubelet_pods()), caplog.at_level(logging.INFO):
        h = harness(socket_path, api.url, api_refresh_seconds=1)
        for _ in range(4):
            h.view.refresh()
            page = h.page()
            h.clock.advance(2)
        endpoints = h.endpoints()
    assert endpoints["by-ip"].attribution == "kubernetes", "a pod IP needs only the pod list"
    service_fqdn = endpoints["service-fqdn"]
    assert service_fqdn.attribution == "all"
    assert service_fqdn.attribution_note.startswith(
        "Kubernetes: getting Service inference/vllm: 403 Forbidden: the exporter's ServiceAccount may not "
        "get services (RBAC)"
    )
    up = {labels: value for (name, labels), value in page.items() if name == "tpw_source_up"}
    assert up[(("source", "kubernetes_api"),)] == 0.0
    assert up[(("source", "kubernetes_pod_resources"),)] == 1.0
    assert len(info_series(page, "tpw_gpu_pod_info")) == 8, "PodResources goes on"
    said = warnings_from(caplog, "exporter.k8s.view")
    assert len(said) == 1 and "403 Forbidden" in said[0], said
    per_endpoint = [
        m for m in warnings_from(caplog, "exporter.attribution") if m.startswith("endpoint service-fqdn")
    ]
    assert len(per_endpoint) == 1, per_endpoint
    assert sum(1 for path in api.state.paths if path.startswith("/api/v1/pods")) >= 3, (
        "asked again, not stuck"
    )


def test_an_unreachable_api_server_leaves_pod_info_and_is_said_once(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ApiServer() as gone:
        url = gone.url  # closed at once: nothing listens there any more
    with pod_resources_server(socket_path, kubelet_pods()), caplog.at_level(logging.INFO):
        h = harness(socket_path, url, timeout=0.5, api_refresh_seconds=1)
        for _ in range(3):
            h.view.refresh()
            page = h.page()
            h.clock.advance(2)
        endpoints = h.endpoints()
    note = endpoints["by-ip"].attribution_note
    assert endpoints["by-ip"].attribution == "all"
    assert note.startswith(
        f"Kubernetes: listing the pods of node node-a: the API server at {url} is unreachable"
    )
    assert len(info_series(page, "tpw_gpu_pod_info")) == 8
    said = warnings_from(caplog, "exporter.k8s.view")
    assert len(said) == 1 and "unreachable" in said[0], said


def test_no_podresources_socket_falls_back_and_is_said_once(
    socket_path: Path, api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        h = harness(socket_path, api.url)
        for _ in range(3):
            h.view.refresh()
            page = h.page()
        endpoints = h.endpoints()
    assert not info_series(page, "tpw_gpu_pod_info")
    up = {labels: value for (name, labels), value in page.items() if name == "tpw_source_up"}
    assert up[(("source", "kubernetes_pod_resources"),)] == 0.0
    assert endpoints["by-ip"].attribution == "all"
    assert endpoints["by-ip"].attribution_note.startswith(
        f"Kubernetes: no PodResources socket at {socket_path}"
    )
    said = warnings_from(caplog, "exporter.k8s.view")
    assert len(said) == 1 and said[0].startswith("the kubelet's PodResources API: no PodResources socket"), (
        said
    )


def test_a_kubelet_restart_keeps_the_last_allocations_for_a_while(socket_path: Path, api: ApiServer) -> None:
    h = harness(socket_path, api.url, refresh_seconds=10)
    with pod_resources_server(socket_path, kubelet_pods()):
        h.view.refresh()
    h.clock.advance(10)
    h.view.refresh()  # the kubelet is restarting: no socket
    assert h.endpoints()["by-ip"].attribution == "kubernetes"
    assert len(h.snapshot().gpu_pods) == 8
    h.clock.advance(30)
    h.view.refresh()  # gone for longer than three refreshes: the allocations may have changed
    assert h.snapshot().gpu_pods == ()
    assert h.endpoints()["by-ip"].attribution == "all"


def test_pending_until_looked_up_and_a_new_pod_is_found_without_waiting_for_the_api_cadence(
    socket_path: Path, api: ApiServer
) -> None:
    with pod_resources_server(socket_path, kubelet_pods()[1:]) as kubelet:  # vllm-0 not started yet
        api.state.pods = [p for p in api.state.pods if p["metadata"]["name"] != "vllm-0"]
        h = harness(socket_path, api.url, api_refresh_seconds=3600)
        before = h.endpoints(up=False)["service-fqdn"]
        assert (before.attribution, before.gpus) == ("pending", ())
        assert before.attribution_note.startswith("its pods are not looked up in Kubernetes yet")
        h.view.refresh()
        assert h.endpoints(up=False)["service-fqdn"].attribution == "pending"
        api.state.pods.append(node_a_pods()[0])  # the engine's pod is scheduled and its GPUs allocated
        kubelet.servicer.pods = kubelet_pods()
        h.clock.advance(5)
        h.view.refresh()  # a pod gained GPUs: the API server is asked again, an hour early
        endpoint = h.endpoints()["service-fqdn"]
        assert (endpoint.attribution, endpoint.gpus) == ("kubernetes", (0, 1))


def test_the_tick_never_waits_for_a_slow_kubelet(socket_path: Path, api: ApiServer) -> None:
    with pod_resources_server(socket_path, kubelet_pods()) as kubelet:
        h = harness(socket_path, api.url, timeout=1.0, refresh_seconds=0.2, api_refresh_seconds=0.2)
        h.view.start()
        try:
            deadline = time.monotonic() + 10
            while not h.view.state.loaded and time.monotonic() < deadline:
                time.sleep(0.02)
            assert h.endpoints()["by-ip"].attribution == "kubernetes"
            kubelet.servicer.delay = 0.9  # every List now takes 0.9 s of the 1 s allowed
            calls = kubelet.servicer.calls
            while kubelet.servicer.calls == calls and time.monotonic() < deadline:
                time.sleep(0.01)
            started = time.monotonic()  # a List is in flight in the view's thread
            for _ in range(5):
                h.page()
            assert time.monotonic() - started < 0.5, "five ticks' stage, attribution and render"
            assert h.endpoints()["by-ip"].attribution == "kubernetes"
        finally:
            kubelet.servicer.delay = 0.0
            h.view.stop()


def test_the_cluster_role_grants_exactly_what_the_exporter_asks(socket_path: Path, api: ApiServer) -> None:
    """Every request the exporter makes, in every path it takes, is one the ClusterRole grants, and every
    grant is used: least privilege, checked against the requests themselves."""
    role = k8s_object("ClusterRole")
    granted = {
        (verb, group, resource)
        for rule in role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    api.state.allowed = granted
    with pod_resources_server(socket_path, kubelet_pods()):
        h = harness(socket_path, api.url)
        h.view.refresh()
        endpoints = h.endpoints()
    assert set(api.state.requests) == granted
    assert all(e.attribution_note is None or "403" not in e.attribution_note for e in endpoints.values())
    assert endpoints["cluster-ip"].attribution == "kubernetes"  # list services
    assert endpoints["slices"].attribution == "kubernetes"  # list endpointslices
