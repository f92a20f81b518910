"""What an endpoint URL's host names in the cluster, and which of this node's pods that is.

`parse_host` reads the host as cluster DNS does:

- `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local` (any cluster domain): a Service; a name
  without a namespace is in the exporter's own.
- `host.sub.ns.svc[.domain]`: the pod whose `hostname` and `subdomain` these are (a StatefulSet's pod
  behind its headless Service).
- `10-1-2-3.ns.pod[.domain]`: the pod with that IP.
- an IP address: a pod's IP, this node's IP (a `hostNetwork` pod, or a `hostPort`, on the URL's port), or a
  Service's ClusterIP.
- `localhost` and the exporter's own addresses: this node, as for its IP.

`resolve` answers from what the API server says (`ClusterApi`) with a `Target`: the pods (`pods`); that no
pod of it runs on this node (`absent`: the engine answering is elsewhere, so none of this node's GPUs is
its); or that it cannot tell (`unknown`: the host is no cluster name, or the API server failed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

Json = Mapping[str, Any]
PodKey = tuple[str, str]  # (namespace, name)

DONE_PHASES = frozenset({"Succeeded", "Failed"})


class ApiError(Exception):
    """The API server could not answer; the message is one line, the same each time the same thing fails."""


class ClusterApi(Protocol):
    """The reads `resolve` needs; `exporter.k8s.api.KubernetesApi` does them through the official client."""

    def node_pods(self) -> list[Json]:
        """The pods on this node (`spec.nodeName`), as the API server's JSON."""

    def service(self, namespace: str, name: str) -> Json | None:
        """The Service, or None if there is none of that name."""

    def services(self) -> list[Json]:
        """Every Service in the cluster (to find a ClusterIP)."""

    def endpoint_slices(self, namespace: str, service: str) -> list[Json]:
        """The EndpointSlices of a Service (`kubernetes.io/service-name`)."""


@dataclass(frozen=True, slots=True)
class HostSpec:
    """An endpoint's host as the cluster reads it."""

    kind: Literal["ip", "node", "service", "pod_hostname", "other"]
    text: str  # the host as written, for notes
    port: int
    ip: str | None = None  # kind ip (namespace set for a pod DNS name)
    name: str | None = None  # kind service: its name; pod_hostname: the pod's hostname
    namespace: str | None = None
    subdomain: str | None = None  # kind pod_hostname


@dataclass(frozen=True, slots=True)
class Target:
    """The pods on this node an endpoint reaches, or why there are none."""

    kind: Literal["pods", "absent", "unknown"]
    pods: tuple[PodKey, ...] = ()
    note: str | None = None  # absent / unknown: why; pods: a caution (several pods behind one URL)


def _pod_ip(label: str) -> str | None:
    """`10-1-2-3` → 10.1.2.3 and `fd00--1` → fd00::1 (a pod's DNS name), or None."""
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def parse_host(url: str, default_namespace: str, local: Iterable[str] = ()) -> HostSpec:
    """What the URL's host names (see the module docstring); `local`: this process's own addresses."""
    parts = urlsplit(url)
    text = (parts.hostname or "").rstrip(".").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if text == "localhost" or text in set(local) or (address is not None and address.is_loopback):
        return HostSpec("node", text, port)
    if address is not None:
        return HostSpec("ip", text, port, ip=str(address))
    labels = text.split(".")
    if len(labels) == 1:
        return HostSpec("service", text, port, name=labels[0], namespace=default_namespace)
    if len(labels) == 2 or labels[2] == "svc":
        return HostSpec("service", text, port, name=labels[0], namespace=labels[1])
    if labels[2] == "pod" and _pod_ip(labels[0]) is not None:
        return HostSpec("ip", text, port, ip=_pod_ip(labels[0]), namespace=labels[1])
    if len(labels) >= 4 and labels[3] == "svc":
        return HostSpec("pod_hostname", text, port, name=labels[0], subdomain=labels[1], namespace=labels[2])
    return HostSpec("other", text, port)


def pod_key(pod: Json) -> PodKey:
    metadata = pod.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def _live(pods: Iterable[Json]) -> list[Json]:
    return [pod for pod in pods if (pod.get("status") or {}).get("phase") not in DONE_PHASES]


def _ips(status: Json, single: str, plural: str) -> set[str]:
    ips = {str(item.get("ip")) for item in status.get(plural) or () if item.get("ip")}
    if status.get(single):
        ips.add(str(status[single]))
    return {str(ipaddress.ip_address(ip)) for ip in ips if _is_ip(ip)}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ports(pod: Json, field: str) -> set[int]:
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or ()), *(spec.get("initContainers") or ())]
    return {int(port[field]) for c in containers for port in c.get("ports") or () if port.get(field)}


def _names(pods: Sequence[PodKey]) -> str:
    return ", ".join(f"{namespace}/{name}" for namespace, name in pods)


def _found(pods: Sequence[Json], what: str) -> Target:
    keys = tuple(sorted(pod_key(pod) for pod in pods))
    caution = None
    if len(keys) > 1:
        caution = (
            f"{what} reaches {len(keys)} pods on this node ({_names(keys)}); each scrape reads one of them, "
            "so point the endpoint at one pod"
        )
    return Target("pods", keys, caution)


def resolve_static(spec: HostSpec) -> Target:
    """The answer for a host that is no cluster name, which needs no API server."""
    return Target(
        "unknown",
        note=f"{spec.text} is no cluster name (svc, svc.ns, svc.ns.svc.<domain>, a pod's DNS name or IP)",
    )


def resolve(spec: HostSpec, api: ClusterApi, node: str, pods: Sequence[Json] | None = None) -> Target:
    """Which of this node's pods `spec` names. ApiError when the API server fails; `pods`: this node's, if
    already listed."""
    if spec.kind == "other":
        return resolve_static(spec)
    live = _live(api.node_pods() if pods is None else pods)
    if spec.kind == "node":
        return _on_node(spec, live, node)
    if spec.kind == "pod_hostname":
        matched = [
            pod
            for pod in live
            if pod_key(pod)[0] == spec.namespace
            and (pod.get("spec") or {}).get("hostname") == spec.name
            and (pod.get("spec") or {}).get("subdomain") == spec.subdomain
        ]
        if matched:
            return _found(matched, spec.text)
        return Target("absent", note=f"no pod {spec.text} runs on node {node}")
    if spec.kind == "ip":
        assert spec.ip is not None
        by_ip = [
            pod
            for pod in live
            if not (pod.get("spec") or {}).get("hostNetwork")
            and spec.ip in _ips(pod.get("status") or {}, "podIP", "podIPs")
            and spec.namespace in (None, pod_key(pod)[0])
        ]
        if by_ip:
            return _found(by_ip, spec.text)
        node_ips = set().union(*(_ips(pod.get("status") or {}, "hostIP", "hostIPs") for pod in live))
        if spec.ip in node_ips:
            return _on_node(spec, live, node)
        if spec.namespace is None:
            for service in api.services():
                service_spec = service.get("spec") or {}
                cluster_ips = {*(service_spec.get("clusterIPs") or ()), service_spec.get("clusterIP")}
                if spec.ip in {str(ipaddress.ip_address(ip)) for ip in cluster_ips if ip and _is_ip(ip)}:
                    namespace, name = pod_key(service)
                    return _service(spec, api, node, live, namespace, name, service)
        return Target("absent", note=f"{spec.text} is no pod's IP on node {node} nor a Service's ClusterIP")
    assert spec.name is not None and spec.namespace is not None
    return _service(spec, api, node, live, spec.namespace, spec.name, None)


def _on_node(spec: HostSpec, live: Sequence[Json], node: str) -> Target:
    """This node's address: the pods that listen on it, on the URL's port (hostNetwork, or a hostPort)."""
    matched = [
        pod
        for pod in live
        if spec.port in _ports(pod, "hostPort")
        or ((pod.get("spec") or {}).get("hostNetwork") and spec.port in _ports(pod, "containerPort"))
    ]
    if matched:
        return _found(matched, spec.text)
    return Target(
        "unknown",
        note=f"no pod on node {node} declares port {spec.port} with hostNetwork or a hostPort "
        "(declare the engine's containerPort)",
    )


def _matches(labels: Json, selector: Json) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _service(
    spec: HostSpec,
    api: ClusterApi,
    node: str,
    live: Sequence[Json],
    namespace: str,
    name: str,
    service: Json | None,
) -> Target:
    """A Service's pods on this node: those its selector matches, or its EndpointSlices' without one."""
    if service is None:
        service = api.service(namespace, name)
    what = f"Service {namespace}/{name}"
    if service is None:
        return Target("unknown", note=f"no {what}")
    service_spec = service.get("spec") or {}
    if service_spec.get("type") == "ExternalName":
        return Target("unknown", note=f"{what} is an ExternalName Service")
    selector = service_spec.get("selector") or {}
    in_namespace = [pod for pod in live if pod_key(pod)[0] == namespace]
    if selector:
        matched = [
            pod for pod in in_namespace if _matches((pod.get("metadata") or {}).get("labels") or {}, selector)
        ]
    else:
        names = {
            str((endpoint.get("targetRef") or {}).get("name"))
            for piece in api.endpoint_slices(namespace, name)
            for endpoint in piece.get("endpoints") or ()
            if endpoint.get("nodeName") == node and (endpoint.get("targetRef") or {}).get("kind") == "Pod"
        }
        matched = [pod for pod in in_namespace if pod_key(pod)[1] in names]
    if matched:
        return _found(matched, what)
    note = f"{what} has no pod on node {node}"
    if service_spec.get("internalTrafficPolicy", "Cluster") != "Local":
        note += (
            " (its internalTrafficPolicy is Cluster, so scrapes may reach another node's pod: "
            "set it to Local)"
        )
    return Target("absent", note=note)
