"""Real servers for the Kubernetes tests: the kubelet's PodResources API and the API server, on loopback.

- `PodResourcesServer`: a gRPC server in this process, on a unix socket, serving the real proto through a
  servicer built from the generated stubs (`exporter/k8s/proto/api_pb2_grpc.py`). Tests set the pods it
  reports, make it slow, or stop it.
- `ApiServer`: a small `http.server` answering the API server's paths the exporter uses, with the JSON the
  real one sends (PodList, Service, ServiceList, EndpointSliceList, Status for 403/404/400). It honours the
  field selector `spec.nodeName=` and the label selector `kubernetes.io/service-name=` (an unsupported one is
  a 400, as on a real API server), enforces an RBAC rule set (403 with the real message otherwise), and
  records every request as (verb, API group, resource) for the RBAC tests.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc

from exporter.k8s.proto import api_pb2, api_pb2_grpc

SERVICE_ACCOUNT = "system:serviceaccount:monitoring:tpw-exporter"

# -------------------------------------------------------------------------------------- PodResources


@dataclass
class Container:
    name: str
    devices: Sequence[tuple[str, Sequence[str]]] = ()  # (resource name, device IDs)
    dra: Sequence[tuple[str, str]] = ()  # (driver name, device name) of DRA claims


@dataclass
class PodEntry:
    namespace: str
    name: str
    containers: Sequence[Container] = ()


class Servicer(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's side: `List` answers with `pods`; `delay` makes it slow."""

    def __init__(self) -> None:
        self.pods: list[PodEntry] = []
        self.delay = 0.0
        self.calls = 0

    def List(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        response = api_pb2.ListPodResourcesResponse()
        for pod in self.pods:
            message = response.pod_resources.add(name=pod.name, namespace=pod.namespace)
            for container in pod.containers:
                entry = message.containers.add(name=container.name)
                entry.cpu_ids.extend([2, 3])  # what a real answer carries besides devices
                for resource, ids in container.devices:
                    entry.devices.add(resource_name=resource, device_ids=list(ids))
                for driver, device in container.dra:
                    claim = entry.dynamic_resources.add(claim_name="gpu-claim", claim_namespace=pod.namespace)
                    claim.claim_resources.add(driver_name=driver, pool_name="node-a", device_name=device)
        return response


class PodResourcesServer:
    """A gRPC server on `socket_path` serving PodResourcesLister (or nothing, with `servicer=None`)."""

    def __init__(self, socket_path: Path, serve: bool = True) -> None:
        self.socket_path = socket_path
        self.servicer = Servicer()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        if serve:
            api_pb2_grpc.add_PodResourcesListerServicer_to_server(self.servicer, self._server)
        self._server.add_insecure_port(f"unix://{socket_path}")

    def start(self) -> PodResourcesServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(2)
        if self.socket_path.exists():
            os.unlink(self.socket_path)


@contextmanager
def pod_resources_server(socket_path: Path, pods: Iterable[PodEntry] = ()) -> Iterator[PodResourcesServer]:
    server = PodResourcesServer(socket_path).start()
    server.servicer.pods = list(pods)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- API server


def pod(
    name: str,
    namespace: str,
    node: str,
    ip: str,
    labels: dict[str, str] | None = None,
    host_network: bool = False,
    ports: Sequence[int] = (),
    host_ports: Sequence[int] = (),
    hostname: str | None = None,
    subdomain: str | None = None,
    phase: str = "Running",
    host_ip: str = "10.0.0.5",
    gpus: int = 0,
) -> dict[str, Any]:
    """A pod as the API server returns it (the fields that matter, and the usual others around them)."""
    container_ports = [{"containerPort": port, "name": f"http-{port}", "protocol": "TCP"} for port in ports]
    container_ports += [
        {"containerPort": port, "hostPort": port, "name": f"host-{port}", "protocol": "TCP"}
        for port in host_ports
    ]
    resources = (
        {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    )
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [
            {
                "name": "engine",
                "image": "vllm/vllm-openai:v0.11.0",
                "ports": container_ports,
                "resources": resources,
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
        "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if host_network:
        spec["hostNetwork"] = True
        ip = host_ip
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-01-12T08:15:04Z",
            "labels": labels or {},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-rs", "uid": "x"}
            ],
        },
        "spec": spec,
        "status": {
            "phase": phase,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "Burstable",
            "startTime": "2026-01-12T08:15:05Z",
        },
    }


def service(
    name: str,
    namespace: str,
    selector: dict[str, str] | None,
    cluster_ip: str = "10.96.12.34",
    local: bool = True,
    kind: str = "ClusterIP",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": kind,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": 8000}],
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Local" if local else "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
    }
    if kind == "ExternalName":
        spec = {"type": kind, "externalName": "vllm.example.com"}
    else:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    if selector is not None:
        spec["selector"] = selector
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"svc-{name}", "resourceVersion": "991"},
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def endpoint_slice(service_name: str, namespace: str, pods: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """An EndpointSlice of a Service: (pod name, IP, node) per endpoint."""
    return {
        "metadata": {
            "name": f"{service_name}-x7k2p",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "example.com/custom-controller",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": name, "namespace": namespace, "uid": f"uid-{name}"},
            }
            for name, ip, node in pods
        ],
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
    }


# What the shipped ClusterRole grants, as (verb, API group, resource).
Permission = tuple[str, str, str]


@dataclass
class ApiState:
    pods: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list)
    allowed: set[Permission] | None = None  # None: everything
    requests: list[Permission] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def _status(code: int, reason: str, message: str, kind: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"kind": kind} if kind else {},
        "code": code,
    }


def _selector(query: dict[str, list[str]], name: str) -> tuple[str, str] | bool | None:
    """`key=value` of a selector parameter; None when absent; False when unsupported."""
    if name not in query:
        return None
    key, sep, value = query[name][0].partition("=")
    if not sep or "," in value:
        return False
    return key.lstrip("="), value.lstrip("=")


class _Handler(BaseHTTPRequestHandler):
    state: ApiState

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        self.state.paths.append(self.path)
        route = self._route(parts)
        if route is None:
            self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return
        verb, group, resource, namespace, name = route
        self.state.requests.append((verb, group, resource))
        allowed = self.state.allowed
        if allowed is not None and (verb, group, resource) not in allowed:
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            target = f'resource "{resource}" in API group "{group}" {scope}'
            message = f'{resource} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} {target}'
            self._send(403, _status(403, "Forbidden", message, resource))
            return
        if resource == "pods":
            self._list_pods(query)
        elif resource == "services" and name is not None:
            found = [s for s in self.state.services if _key(s) == (namespace, name)]
            if found:
                self._send(200, {"kind": "Service", "apiVersion": "v1", **found[0]})
            else:
                self._send(404, _status(404, "NotFound", f'services "{name}" not found', "services"))
        elif resource == "services":
            items = [s for s in self.state.services if namespace is None or _key(s)[0] == namespace]
            self._send(
                200,
                {
                    "kind": "ServiceList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "7"},
                    "items": items,
                },
            )
        else:
            self._list_slices(namespace, query)

    def _route(self, parts: list[str]) -> tuple[str, str, str, str | None, str | None] | None:
        """(verb, group, resource, namespace, name) of an API path the exporter may ask."""
        if parts[:2] == ["api", "v1"]:
            rest, group = parts[2:], ""
        elif parts[:3] == ["apis", "discovery.k8s.io", "v1"]:
            rest, group = parts[3:], "discovery.k8s.io"
        else:
            return None
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) == 1:
            return "list", group, rest[0], namespace, None
        if len(rest) == 2:
            return "get", group, rest[0], namespace, rest[1]
        return None

    def _list_pods(self, query: dict[str, list[str]]) -> None:
        selector = _selector(query, "fieldSelector")
        if selector is False or (selector and selector[0] != "spec.nodeName"):
            message = f'field label "{query["fieldSelector"][0]}" not supported for pods'
            self._send(400, _status(400, "BadRequest", message))
            return
        items = [p for p in self.state.pods if not selector or p["spec"]["nodeName"] == selector[1]]
        self._send(
            200,
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "48213"}, "items": items},
        )

    def _list_slices(self, namespace: str | None, query: dict[str, list[str]]) -> None:
        selector = _selector(query, "labelSelector")
        items = [
            s
            for s in self.state.slices
            if (namespace is None or _key(s)[0] == namespace)
            and (not selector or s["metadata"]["labels"].get(selector[0]) == selector[1])
        ]
        self._send(
            200,
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {},
                "items": items,
            },
        )


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return item["metadata"]["namespace"], item["metadata"]["name"]


class ApiServer:
    """The fake API server on 127.0.0.1; `url` for `kubernetes.api_url`."""

    def __init__(self, state: ApiState | None = None) -> None:
        self.state = state or ApiState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
