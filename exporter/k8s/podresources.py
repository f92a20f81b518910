"""The kubelet's PodResources API (v1): the GPUs each container of this node's pods holds.

One `List` call over gRPC on the kubelet's unix socket, under a time limit, from the Kubernetes view's
thread (never from the tick). The stubs are generated from the upstream proto (`exporter/k8s/proto/`).
Only GPU allocations are kept:

- device plugins: the resources `nvidia.com/gpu`, its shared variants (`nvidia.com/gpu.shared`, time-slicing
  or MPS with `renameByDefault`) and the MIG resources `nvidia.com/mig-<profile>`. NVIDIA's device plugin
  names devices by UUID (`GPU-…`, `MIG-…`; a shared replica `GPU-…::3`); other plugins by index (`0`) or
  device file (`nvidia0`, GKE).
- dynamic resource allocation: claims of NVIDIA's DRA driver (`gpu.nvidia.com`), whose devices are named
  `gpu-<minor number>` (`gpu-0-mig-…` for a MIG slice of it).

`exporter.k8s.devices` maps these names to the GPUs NVML reports.

The kubelet's socket is root's (mode 0755): connecting needs write permission on it, so only root may, and
a non-root exporter gets "permission denied", said once in the log.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.k8s.proto.api_pb2 import ListPodResourcesResponse

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# What the kubelet may send (its podresources server allows 16 MiB); gRPC's client default is 4 MiB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DRA_DRIVER = "gpu.nvidia.com"  # NVIDIA's DRA driver (kubernetes-sigs/dra-driver-nvidia-gpu)


@dataclass(frozen=True, slots=True)
class PodDevice:
    """One GPU device the kubelet allocated to one container of a pod on this node."""

    namespace: str
    pod: str
    container: str
    resource: str  # the device plugin's resource name, or the DRA driver's name
    device_id: str  # as the kubelet reports it: GPU-…, MIG-…, GPU-…::2, 0, nvidia0, gpu-0


def is_gpu_resource(name: str) -> bool:
    """Whether a device plugin's resource is a GPU or a slice of one (NVIDIA's names)."""
    return name == "nvidia.com/gpu" or name.startswith(("nvidia.com/gpu.", "nvidia.com/mig-"))


def gpu_devices(response: ListPodResourcesResponse) -> tuple[PodDevice, ...]:
    """Every GPU allocation in a `List` answer, in its order."""
    devices: list[PodDevice] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for allocation in container.devices:
                if is_gpu_resource(allocation.resource_name):
                    devices.extend(
                        PodDevice(pod.namespace, pod.name, container.name, allocation.resource_name, device)
                        for device in allocation.device_ids
                    )
            for claim in container.dynamic_resources:
                devices.extend(
                    PodDevice(pod.namespace, pod.name, container.name, DRA_DRIVER, resource.device_name)
                    for resource in claim.claim_resources
                    if resource.driver_name == DRA_DRIVER and resource.device_name
                )
    return tuple(devices)


class PodResourcesError(Exception):
    """The PodResources API could not be read; the message is one line for the operator, the same each time
    the same thing goes wrong (it is logged once)."""


def socket_problem(path: str) -> str | None:
    """Why `path` cannot be connected to, if that can be told without connecting: missing, or not ours."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return (
            f"no PodResources socket at {path}: mount the kubelet's {os.path.dirname(path) or path} "
            "(hostPath, read-only)"
        )
    except PermissionError:
        return f"permission denied on the way to {path}"
    except OSError as exc:
        return f"cannot reach {path}: {exc.strerror or errno.errorcode.get(exc.errno or 0, 'error')}"
    if not os.access(path, os.W_OK):
        return (
            f"permission denied on {path}: connecting needs write permission on the socket, which the "
            "kubelet gives root only; run the exporter as uid 0 (the DaemonSet does)"
        )
    return None


class PodResourcesClient:
    """`List` on the kubelet's socket. Not thread-safe: one caller, the Kubernetes view's thread."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_seconds: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout_seconds = timeout_seconds
        self._channel: Any = None
        self._stub: Any = None

    def list_devices(self) -> tuple[PodDevice, ...]:
        """The GPU allocations of every pod on this node, or PodResourcesError saying why not."""
        problem = socket_problem(self.socket_path)
        if problem is not None:  # said before grpc is imported: no memory spent until there is a socket
            self.close()
            raise PodResourcesError(problem)
        import grpc

        from exporter.k8s.proto import api_pb2

        stub = self._open()
        try:
            response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_seconds)
        except grpc.RpcError as exc:
            # A new channel next time: a kubelet that restarted is reached again at once, not after gRPC's
            # reconnect backoff (up to two minutes).
            self.close()
            raise PodResourcesError(self._describe(exc)) from None
        return gpu_devices(response)

    def _open(self) -> Any:
        if self._stub is None:
            import grpc

            from exporter.k8s.proto import api_pb2_grpc

            self._channel = grpc.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def _describe(self, exc: Any) -> str:
        import grpc

        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = " ".join(str(exc.details() if callable(getattr(exc, "details", None)) else exc).split())
        where = f"PodResources List on {self.socket_path}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{where}: no answer within {self.timeout_seconds:g} s"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return f"{where}: the kubelet does not serve PodResources v1 (Kubernetes 1.20 or newer has it)"
        if code == grpc.StatusCode.UNAVAILABLE:
            problem = socket_problem(self.socket_path)
            if problem is not None:
                return problem
            if "permission denied" in details.lower():
                return f"permission denied on {self.socket_path} (a security module, or not root?)"
            return f"{where}: the kubelet does not answer ({details[:160]})"
        name = code.name if code is not None else type(exc).__name__
        return f"{where}: {name}: {details[:160]}"

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None
