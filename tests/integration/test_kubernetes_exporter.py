"""Pod attribution through real tools and the exporter as a process: a page with `tpw_gpu_pod_info`, the
Kubernetes sources and `attribution="kubernetes"` through promtool and the strict OpenMetrics parser; and
`tpw-exporter serve` reading a PodResources socket and an API server (tests/k8s_servers.py), with a
forbidden permission said once in its log however many ticks and refreshes pass."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from exposition_lint import App, assert_valid, sample_values
from helpers import http_get, running_exporter, wait_for
from k8s_servers import ApiServer, ApiState, Container, PodEntry, pod, pod_resources_server, service

from exporter.k8s.view import gpu_pod_families
from exporter.model import EndpointSample, GpuInfo, GpuPod, GpuSample, Snapshot, SourceStatus
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer

MIG = "MIG-7a0e3f1c-2b4d-5e6f-8a9b-0c1d2e3f4a5b"


def test_a_page_with_pod_info_passes_promtool_and_the_strict_parser() -> None:
    gpus = tuple(GpuSample(info=GpuInfo(index=i, uuid=f"GPU-{i}", name="H100")) for i in range(2))
    snapshot = Snapshot(
        tick=3,
        wall_time=1.7e9,
        monotonic_time=10.0,
        duration_seconds=0.01,
        gpus=gpus,
        endpoints=(
            EndpointSample(
                name="vllm",
                engine="vllm",
                url="http://vllm.inference:8000/metrics",
                gpus=(0,),
                gpu_shares=(1.0,),
                attribution="kubernetes",
            ),
        ),
        sources=(
            SourceStatus("kubernetes_pod_resources", True, 0.003),
            SourceStatus("kubernetes_api", False, 0.02, "403 Forbidden"),
        ),
        gpu_pods=(
            GpuPod(0, "GPU-0", "inference", "vllm-0", "engine"),
            GpuPod(1, MIG, "batch", "train-0", "main"),
            GpuPod(1, "MIG-other", "batch", "eval-0", "main"),
        ),
    )
    exposition = Renderer(extra=[endpoint_families, gpu_pod_families]).render(snapshot)
    families = assert_valid(*App().pages(exposition), "a Kubernetes page")
    values = sample_values(families)
    pod_info = [key for key in values if key[0] == "tpw_gpu_pod_info"]
    assert len(pod_info) == 3 and all(values[key] == 1.0 for key in pod_info)
    assert (
        "tpw_endpoint_gpu_info",
        (("attribution", "kubernetes"), ("endpoint", "vllm"), ("gpu", "0")),
    ) in values
    assert values[("tpw_source_up", (("source", "kubernetes_api"),))] == 0.0


def test_the_exporter_reads_the_kubelet_and_the_api_server_and_says_a_forbidden_permission_once(
    tmp_path: Path,
) -> None:
    socket = tmp_path / "kubelet.sock"
    state = ApiState(
        pods=[pod("vllm-0", "inference", "node-a", "10.244.1.7", {"app": "vllm"}, gpus=1)],
        services=[service("vllm", "inference", {"app": "vllm"})],
        allowed={("list", "", "pods")},  # a ClusterRole without Services
    )
    kubelet = [PodEntry("inference", "vllm-0", [Container("engine", [("nvidia.com/gpu", ["GPU-0"])])])]
    config = tmp_path / "config.yaml"
    with pod_resources_server(socket, kubelet), ApiServer(state) as api:
        config.write_text(
            yaml.safe_dump(
                {
                    "interval": 0.5,
                    "derive": {"window": 5},
                    "endpoints": [
                        {"name": "by-ip", "url": "http://10.244.1.7:8000/metrics", "timeout_seconds": 0.2},
                        {
                            "name": "by-service",
                            "url": "http://vllm.inference:8000/metrics",
                            "timeout_seconds": 0.2,
                        },
                    ],
                    "kubernetes": {
                        "enabled": True,
                        "pod_resources_socket": str(socket),
                        "api_url": api.url,
                        "refresh_seconds": 1,
                        "api_refresh_seconds": 1,
                    },
                }
            )
        )
        with running_exporter(["serve", "--config", str(config)], env={"NODE_NAME": "node-a"}) as exporter:

            def both_sources_reported() -> bool:
                text = exporter.metrics()
                return 'source="kubernetes_api"' in text and 'source="kubernetes_pod_resources"} 1.0' in text

            wait_for(both_sources_reported, 20, "the Kubernetes sources on /metrics")
            requests = len(state.requests)
            wait_for(lambda: len(state.requests) >= requests + 3, 20, "three more rounds of API requests")
            text = exporter.metrics()
            status, body = http_get(f"{exporter.url}/api/v1/snapshot")
            output = exporter.output()
    assert 'tpw_source_up{source="kubernetes_api"} 0.0' in text
    assert status == 200
    snapshot = json.loads(body)
    endpoints = {endpoint["name"]: endpoint for endpoint in snapshot["endpoints"]}
    # No NVML here, so no GPU of this node is known: by-ip's pod holds none of them, and it waits.
    assert endpoints["by-ip"]["attribution"] == "pending"
    assert "holds no GPU of this node" in endpoints["by-ip"]["attribution_note"]
    assert "403 Forbidden" in endpoints["by-service"]["attribution_note"]
    sources = {source["name"]: source for source in snapshot["sources"]}
    assert "may not get services (RBAC)" in sources["kubernetes_api"]["error"]
    forbidden = [line for line in output.splitlines() if "403 Forbidden" in line]
    view_lines = [line for line in forbidden if "Kubernetes API server" in line]
    assert len(view_lines) == 1, output
    assert len([line for line in forbidden if "endpoint by-service" in line]) == 1, output
