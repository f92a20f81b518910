"""Kubernetes in the node: what an endpoint's host names, when the view is built, what it imports, and the
daemon's tick with it (FakeNvml GPUs, the PodResources and API servers of tests/k8s_servers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_nvml import Clock, FakeGpu, FakeNvml
from helpers import REPO
from k8s_servers import ApiServer, ApiState, Container, PodEntry, pod, pod_resources_server, service

from exporter.config import Config, ConfigError, EndpointConfig, KubernetesConfig
from exporter.k8s import view as view_module
from exporter.k8s.hosts import HostSpec, parse_host
from exporter.k8s.view import build_kubernetes
from exporter.node import Node, build_daemon, build_node
from exporter.sources.endpoints import EndpointsSource
from exporter.sources.nvml import NvmlSource

LOCAL = {"10.244.1.99"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://vllm:8000/metrics", HostSpec("service", "vllm", 8000, name="vllm", namespace="monitoring")),
        (
            "http://vllm.inference/m",
            HostSpec("service", "vllm.inference", 80, name="vllm", namespace="inference"),
        ),
        (
            "https://vllm.inference.svc/m",
            HostSpec("service", "vllm.inference.svc", 443, name="vllm", namespace="inference"),
        ),
        (
            "http://VLLM.inference.svc.example.internal.:9000/",
            HostSpec(
                "service", "vllm.inference.svc.example.internal", 9000, name="vllm", namespace="inference"
            ),
        ),
        (
            "http://tgi-0.tgi.inference.svc.cluster.local/metrics",
            HostSpec(
                "pod_hostname",
                "tgi-0.tgi.inference.svc.cluster.local",
                80,
                name="tgi-0",
                namespace="inference",
                subdomain="tgi",
            ),
        ),
        (
            "http://10-244-1-7.inference.pod.cluster.local:8000/",
            HostSpec(
                "ip", "10-244-1-7.inference.pod.cluster.local", 8000, ip="10.244.1.7", namespace="inference"
            ),
        ),
        ("http://10.244.1.7:8000/", HostSpec("ip", "10.244.1.7", 8000, ip="10.244.1.7")),
        ("http://[fd00::7]:8000/", HostSpec("ip", "fd00::7", 8000, ip="fd00::7")),
        ("http://127.0.0.1:8000/", HostSpec("node", "127.0.0.1", 8000)),
        ("http://localhost:8000/", HostSpec("node", "localhost", 8000)),
        ("http://10.244.1.99:8000/", HostSpec("node", "10.244.1.99", 8000)),
        ("http://vllm.example.com:8000/", HostSpec("other", "vllm.example.com", 8000)),
    ],
)
def test_what_an_endpoint_host_names_in_the_cluster(url: str, expected: HostSpec) -> None:
    assert parse_host(url, "monitoring", LOCAL) == expected


def test_enabled_auto_follows_the_socket_or_the_pod_environment(tmp_path: Path) -> None:
    socket = tmp_path / "kubelet.sock"
    settings = KubernetesConfig(pod_resources_socket=str(socket))
    assert not view_module.enabled(settings, {})
    assert view_module.enabled(settings, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    socket.touch()
    assert view_module.enabled(settings, {})
    assert not view_module.enabled(settings.model_copy(update={"enabled": False}), {})
    assert build_kubernetes(settings.model_copy(update={"enabled": False}), [], {}) is None


def test_enabled_true_without_the_extra_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_module, "_importable", lambda name: name != "kubernetes")
    with pytest.raises(
        ConfigError, match=r"^kubernetes.enabled: Kubernetes attribution needs the `kubernetes` extra"
    ):
        build_kubernetes(KubernetesConfig(enabled=True), [], {})
    assert build_kubernetes(KubernetesConfig(api_url="http://127.0.0.1:1"), [], {}) is None  # auto: off, said


IMPORTED = """
import json, logging, sys
logging.disable(logging.CRITICAL)
from exporter.config import load_config
from exporter.node import build_node
node = build_node(load_config(environ=ENV), "serve")
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("grpc", "kubernetes", "google")})
print(json.dumps({"kubernetes": node.kubernetes is not None, "heavy": heavy}))
for stop in node.stop:
    stop()
"""


def node_in_a_fresh_interpreter(environ: dict[str, str]) -> dict[str, object]:
    code = textwrap.dedent(IMPORTED).replace("ENV", repr(environ))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TPW_", "KUBERNETES_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_off_kubernetes_nothing_of_grpc_or_the_client_is_imported(tmp_path: Path) -> None:
    """A node outside Kubernetes (no socket, no pod environment) pays nothing for the feature."""
    socket = str(tmp_path / "kubelet.sock")
    endpoint = '[{"name": "vllm", "url": "http://vllm.inference:8000/metrics"}]'
    off = node_in_a_fresh_interpreter(
        {"TPW_KUBERNETES__POD_RESOURCES_SOCKET": socket, "TPW_ENDPOINTS": endpoint}
    )
    assert off == {"kubernetes": False, "heavy": []}


def test_build_node_starts_the_view_in_serve_and_never_in_demo(tmp_path: Path) -> None:
    socket = tmp_path / "kubelet.sock"
    with pod_resources_server(socket), ApiServer() as api:
        settings = {"pod_resources_socket": str(socket), "api_url": api.url, "node_name": "node-a"}
        config = Config(kubernetes=settings, endpoints=[{"name": "e", "url": "http://vllm.inference:8000/"}])
        node = build_node(config, "serve")
        try:
            assert node.kubernetes is not None and node.kubernetes.stop in node.stop
        finally:
            for stop in node.stop:
                stop()
        demo = build_node(config.model_copy(update={"simulation": config.simulation}), "demo")
        try:
            assert demo.kubernetes is None
        finally:
            for stop in demo.stop:
                stop()


def test_the_daemons_tick_renders_pod_info_and_kubernetes_attribution(tmp_path: Path) -> None:
    uuids = ["GPU-0a0a0a0a-0000-4000-8000-000000000000", "GPU-1b1b1b1b-0000-4000-8000-000000000001"]
    clock = Clock()
    nvml = FakeNvml([FakeGpu(uuid) for uuid in uuids], clock)
    socket = tmp_path / "kubelet.sock"
    state = ApiState(
        pods=[pod("vllm-0", "inference", "node-a", "10.244.1.7", {"app": "vllm"})],
        services=[service("vllm", "inference", {"app": "vllm"})],
    )
    kubelet = [PodEntry("inference", "vllm-0", [Container("engine", [("nvidia.com/gpu", [uuids[1]])])])]
    with pod_resources_server(socket, kubelet), ApiServer(state) as api:
        config = Config(
            interval=0.5,
            derive={"window": 5},
            endpoints=[
                EndpointConfig(name="vllm", url="http://vllm.inference.svc.cluster.local:8000/metrics")
            ],
            kubernetes={"pod_resources_socket": str(socket), "api_url": api.url, "node_name": "node-a"},
        )
        stage = build_kubernetes(config.kubernetes, config.endpoints, {})
        assert stage is not None
        try:
            stage.view.refresh()  # what the view's thread does; here before the tick, to be deterministic
            gpus = NvmlSource(nvml, clock=clock, gpu_timeout_seconds=0.5)
            # The engine's DNS name does not resolve here: the endpoint is down, attributed all the same.
            endpoints = EndpointsSource(config.endpoints, tick_budget_seconds=config.tick_budget_seconds)
            node = Node([gpus, endpoints], list(config.endpoints), [stage.stop], stage)
            exposition = asyncio.run(build_daemon(node, config).tick())
        finally:
            stage.stop()
    text = exposition.text.decode()
    labels = f'container="engine",gpu="1",namespace="inference",pod="vllm-0",uuid="{uuids[1]}"'
    assert f"tpw_gpu_pod_info{{{labels}}} 1.0" in text
    assert 'tpw_endpoint_gpu_info{attribution="kubernetes",endpoint="vllm",gpu="1"} 1.0' in text
    assert 'tpw_source_up{source="kubernetes_pod_resources"} 1.0' in text
    assert 'tpw_source_up{source="kubernetes_api"} 1.0' in text
    (endpoint,) = exposition.snapshot.endpoints
    assert endpoint.gpus == (1,) and endpoint.attribution == "kubernetes"
