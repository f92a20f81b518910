"""The API server's answers `exporter.k8s.hosts.resolve` needs, through the official `kubernetes` client.

In a pod the client's in-cluster configuration is used (the service account's token, which it re-reads as
the kubelet rotates it, and CA); `kubernetes.api_url` points it elsewhere (tests, a proxy). Each call has a
time limit and no retries; the JSON is read as it comes (`_preload_content=False`), not turned into the
client's model objects. What the exporter asks, which is all its ClusterRole grants
(deploy/kubernetes/rbac.yaml):

- list pods, all namespaces, `fieldSelector=spec.nodeName=<node>` (served from the API server's cache:
  `resourceVersion=0`);
- get a Service by name; list Services, only to find a ClusterIP;
- list a Service's EndpointSlices, only for a Service without a selector.

Failures become `ApiError` with a one-line message that is the same each time the same thing fails (so it
is logged once): a 403 names the permission the ServiceAccount lacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from exporter.k8s.hosts import ApiError, Json

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class KubernetesApi:
    """`ClusterApi` over the kubernetes client; `api_url` None: the in-cluster configuration."""

    def __init__(self, node: str, api_url: str | None = None, timeout_seconds: float = 2.0) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        if api_url is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException as exc:
                raise ApiError(
                    f"no in-cluster configuration ({' '.join(str(exc).split())[:120]}); "
                    "set kubernetes.api_url"
                ) from None
        else:
            configuration.host = api_url.rstrip("/")
        configuration.retries = False  # one try per call: the view's thread retries on its own cadence
        self.host = configuration.host
        self.node = node
        self.timeout_seconds = timeout_seconds
        self._client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._client)
        self._discovery = client.DiscoveryV1Api(self._client)

    def _call(self, what: str, permission: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(
                *args,
                _preload_content=False,
                _request_timeout=(self.timeout_seconds, self.timeout_seconds),
                **kwargs,
            )
            return json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ApiError(_status_problem(what, permission, exc.status, exc.reason)) from None
        except ValueError:
            raise ApiError(f"{what}: the API server's answer is not JSON") from None
        except Exception as exc:  # urllib3's and the socket's errors, whatever their class
            raise ApiError(f"{what}: {_transport_problem(exc, self.host, self.timeout_seconds)}") from None

    def node_pods(self) -> list[Json]:
        data = self._call(
            f"listing the pods of node {self.node}",
            "list pods",
            self._core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={self.node}",
            resource_version="0",
        )
        return list((data or {}).get("items") or [])

    def service(self, namespace: str, name: str) -> Json | None:
        data = self._call(
            f"getting Service {namespace}/{name}",
            "get services",
            self._core.read_namespaced_service,
            name,
            namespace,
        )
        return data if isinstance(data, dict) else None

    def services(self) -> list[Json]:
        data = self._call(
            "listing Services (to find a ClusterIP)",
            "list services",
            self._core.list_service_for_all_namespaces,
            resource_version="0",
        )
        return list((data or {}).get("items") or [])

    def endpoint_slices(self, namespace: str, service: str) -> list[Json]:
        data = self._call(
            f"listing the EndpointSlices of Service {namespace}/{service}",
            "list endpointslices.discovery.k8s.io",
            self._discovery.list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={service}",
            resource_version="0",
        )
        return list((data or {}).get("items") or [])

    def close(self) -> None:
        self._client.close()


def _status_problem(what: str, permission: str, status: int | None, reason: str | None) -> str:
    if status == 403:
        return f"{what}: 403 Forbidden: the exporter's ServiceAccount may not {permission} (RBAC)"
    if status == 401:
        return f"{what}: 401 Unauthorized: the API server refused the service account token"
    return f"{what}: HTTP {status} {' '.join(str(reason or '').split())[:60]}".rstrip()


def _transport_problem(exc: BaseException, host: str, timeout: float) -> str:
    """Why a call got no HTTP answer, by the error's kind (urllib3's messages hold object addresses)."""
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the cause
    cause = reason if isinstance(reason, BaseException) else exc
    kind = type(cause).__name__
    if "Timeout" in kind or isinstance(cause, TimeoutError):
        return f"the API server at {host} did not answer within {timeout:g} s"
    if "SSL" in kind or "Certificate" in kind:
        return f"TLS with the API server at {host} failed ({kind})"
    if isinstance(cause, ConnectionRefusedError) or "NewConnection" in kind or "Connection" in kind:
        return f"the API server at {host} is unreachable ({kind})"
    return f"no answer from the API server at {host} ({kind})"
