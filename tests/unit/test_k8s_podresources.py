"""The PodResources client against a real gRPC server on a unix socket serving the kubelet's proto."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_servers import Container, PodEntry, PodResourcesServer, pod_resources_server

from exporter.k8s.podresources import PodDevice, PodResourcesClient, PodResourcesError, socket_problem

GPU_A = "GPU-5c2d7e8f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
GPU_B = "GPU-9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"
MIG_1 = "MIG-3b1c4a5e-7f60-5d2e-9a8b-0c1d2e3f4a5b"


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"


def test_lists_the_gpu_allocations_of_every_pod_and_nothing_else(socket_path: Path) -> None:
    pods = [
        PodEntry(
            "inference",
            "vllm-0",
            [
                Container(
                    "engine",
                    [("nvidia.com/gpu", [GPU_A, GPU_B]), ("example.com/sriov-nic", ["0000:3b:00.2"])],
                ),
                Container("sidecar"),
            ],
        ),
        PodEntry("batch", "mig-job", [Container("train", [("nvidia.com/mig-1g.10gb", [MIG_1])])]),
        PodEntry("shared", "notebook", [Container("lab", [("nvidia.com/gpu.shared", [f"{GPU_A}::3"])])]),
        PodEntry(
            "dra",
            "claimer",
            [Container("main", dra=[("gpu.nvidia.com", "gpu-1"), ("other.vendor.com", "x")])],
        ),
        PodEntry("kube-system", "coredns", [Container("coredns")]),
    ]
    with pod_resources_server(socket_path, pods):
        devices = PodResourcesClient(str(socket_path), timeout_seconds=2).list_devices()
    assert devices == (
        PodDevice("inference", "vllm-0", "engine", "nvidia.com/gpu", GPU_A),
        PodDevice("inference", "vllm-0", "engine", "nvidia.com/gpu", GPU_B),
        PodDevice("batch", "mig-job", "train", "nvidia.com/mig-1g.10gb", MIG_1),
        PodDevice("shared", "notebook", "lab", "nvidia.com/gpu.shared", f"{GPU_A}::3"),
        PodDevice("dra", "claimer", "main", "gpu.nvidia.com", "gpu-1"),
    )


def test_no_socket_is_said_without_importing_grpc_work(socket_path: Path) -> None:
    client = PodResourcesClient(str(socket_path))
    with pytest.raises(PodResourcesError) as caught:
        client.list_devices()
    message = str(caught.value)
    assert message.startswith(f"no PodResources socket at {socket_path}")
    assert f"mount the kubelet's {socket_path.parent}" in message


@pytest.fixture
def world_reachable_dir() -> Iterator[Path]:
    """A directory any user may enter (pytest's own is root's, mode 0700), like /var/lib/kubelet."""
    path = Path(tempfile.mkdtemp(prefix="tpw-kubelet-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def run_as_nobody(path: Path) -> tuple[str, int]:
    """(the client's error, connect()'s errno) in a child process of uid 65534: a non-root exporter."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # no logging, no gRPC here: only the system calls under test
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                PodResourcesClient(str(path)).list_devices()
                message = "no error"
            except PodResourcesError as exc:
                message = str(exc)
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                code = 0
            except OSError as exc:
                code = exc.errno or -1
            os.write(write, f"{code}\n{message}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        code, message = pipe.read().split("\n", 1)
    os.waitpid(child, 0)
    return message, int(code)


def test_permission_denied_on_the_kubelets_root_only_socket(world_reachable_dir: Path) -> None:
    """The kubelet's socket is root's, mode 0755: a non-root exporter may not connect (EACCES)."""
    path = world_reachable_dir / "kubelet.sock"
    with pod_resources_server(path, [PodEntry("a", "b", [Container("c", [("nvidia.com/gpu", [GPU_A])])])]):
        if os.geteuid() == 0:
            path.chmod(0o755)
            message, code = run_as_nobody(path)
        else:  # the owner without write permission is refused the same way
            path.chmod(0o555)
            with pytest.raises(PodResourcesError) as caught:
                PodResourcesClient(str(path)).list_devices()
            message = str(caught.value)
            probe = socket.socket(socket.AF_UNIX)
            with pytest.raises(PermissionError):
                probe.connect(str(path))
            code = 13
        assert code == 13, "connect() must be refused, as the kubelet's socket refuses a non-root process"
        assert message.startswith(f"permission denied on {path}: connecting needs write permission")
        assert "uid 0" in message
        if os.geteuid() == 0:  # root may: why the DaemonSet runs the exporter as uid 0
            assert len(PodResourcesClient(str(path)).list_devices()) == 1


def test_a_kubelet_that_does_not_answer_in_time(socket_path: Path) -> None:
    with pod_resources_server(socket_path) as server:
        server.servicer.delay = 1.0
        client = PodResourcesClient(str(socket_path), timeout_seconds=0.3)
        started = time.monotonic()
        with pytest.raises(PodResourcesError, match=r"no answer within 0\.3 s$"):
            client.list_devices()
        assert time.monotonic() - started < 0.9, "the call is cut at its time limit"


def test_a_restarted_kubelet_is_read_again_at_once(socket_path: Path) -> None:
    entry = PodEntry("inference", "vllm-0", [Container("engine", [("nvidia.com/gpu", [GPU_A])])])
    client = PodResourcesClient(str(socket_path), timeout_seconds=1)
    with pod_resources_server(socket_path, [entry]):
        assert len(client.list_devices()) == 1
    with pytest.raises(PodResourcesError, match="no PodResources socket"):
        client.list_devices()
    moved = PodEntry("inference", "vllm-1", [Container("engine", [("nvidia.com/gpu", [GPU_B])])])
    with pod_resources_server(socket_path, [moved]):
        (device,) = client.list_devices()  # no reconnect backoff: a new channel
        assert device.pod == "vllm-1"


def test_a_socket_that_serves_no_podresources(socket_path: Path) -> None:
    server = PodResourcesServer(socket_path, serve=False).start()
    try:
        with pytest.raises(PodResourcesError, match="does not serve PodResources v1"):
            PodResourcesClient(str(socket_path), timeout_seconds=1).list_devices()
    finally:
        server.stop()


def test_a_socket_nobody_listens_on(socket_path: Path) -> None:
    """A socket file left by a dead kubelet: connection refused, said as such."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.close()  # the file stays, nobody accepts
    assert socket_problem(str(socket_path)) is None
    with pytest.raises(PodResourcesError, match="the kubelet does not answer"):
        PodResourcesClient(str(socket_path), timeout_seconds=1).list_devices()
