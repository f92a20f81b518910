"""The checked-in PodResources stubs are the upstream proto's: regenerated `make podresources-stubs` would
change nothing that matters, and the gRPC stubs serve the service and methods the kubelet serves."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from helpers import REPO

from exporter.k8s.proto import api_pb2, api_pb2_grpc

PROTO = REPO / "exporter" / "k8s" / "proto" / "api.proto"
PROTO_NAME = "exporter/k8s/proto/api.proto"  # as protoc is run from the repository root (the Makefile)
# The kubelet's service and its methods: (name, request, response), as kubernetes/kubelet serves them.
METHODS = {
    "List": ("ListPodResourcesRequest", "ListPodResourcesResponse"),
    "GetAllocatableResources": ("AllocatableResourcesRequest", "AllocatableResourcesResponse"),
    "Get": ("GetPodResourcesRequest", "GetPodResourcesResponse"),
}


def header_and_body() -> tuple[str, str]:
    text = PROTO.read_text()
    header, _, body = text.partition("\n\n")
    return header, body


def test_the_proto_is_the_upstream_file_under_a_header() -> None:
    header, body = header_and_body()
    assert all(line.startswith("//") for line in header.splitlines())
    recorded = re.search(r"SHA-256 is\s*//\s*([0-9a-f]{64})", header)
    assert recorded, "the header records the upstream file's SHA-256"
    assert hashlib.sha256(body.encode()).hexdigest() == recorded.group(1), "api.proto differs from upstream"
    assert "gogoproto" not in body
    assert re.search(r"^package v1;$", body, re.M)
    assert "make podresources-stubs" in header


def compiled_descriptor(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "api.desc"
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--descriptor_set_out={out}", PROTO_NAME],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (descriptor,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    for (
        message
    ) in descriptor.message_type:  # protoc adds json_name here, derived from the name; the stub omits it
        for item in message.field:
            item.ClearField("json_name")
    return descriptor


def test_the_checked_in_message_stubs_are_the_proto_compiled_now(tmp_path: Path) -> None:
    """Any change to a message, field, enum or the service in api.proto changes the descriptor."""
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)
    assert checked_in == compiled_descriptor(tmp_path), "stale stubs: run make podresources-stubs"


def test_the_grpc_stubs_serve_the_kubelets_service_and_methods() -> None:
    (service,) = api_pb2.DESCRIPTOR.services_by_name.values()
    assert service.full_name == "v1.PodResourcesLister"
    methods = {method.name: (method.input_type.name, method.output_type.name) for method in service.methods}
    assert methods == METHODS

    class Recorder:
        def __init__(self) -> None:
            self.paths: dict[str, tuple[object, object]] = {}

        def unary_unary(
            self, path: str, request_serializer: object, response_deserializer: object, **_: object
        ) -> str:
            self.paths[path] = (request_serializer, response_deserializer)
            return path

    channel = Recorder()
    stub = api_pb2_grpc.PodResourcesListerStub(channel)
    assert set(channel.paths) == {f"/v1.PodResourcesLister/{name}" for name in METHODS}
    for name, (request, response) in METHODS.items():
        assert getattr(stub, name) == f"/v1.PodResourcesLister/{name}"
        serializer, deserializer = channel.paths[f"/v1.PodResourcesLister/{name}"]
        assert serializer == getattr(api_pb2, request).SerializeToString
        assert deserializer == getattr(api_pb2, response).FromString
    servicer_methods = {
        name for name in vars(api_pb2_grpc.PodResourcesListerServicer) if not name.startswith("_")
    }
    assert servicer_methods == set(METHODS)


def test_a_raw_call_on_the_kubelets_method_path_reaches_the_generated_servicer(tmp_path: Path) -> None:
    """The bytes on the wire: what a kubelet answers at /v1.PodResourcesLister/List, the stub decodes."""
    from k8s_servers import Container, PodEntry, pod_resources_server

    socket_path = tmp_path / "kubelet.sock"
    entry = PodEntry("inference", "vllm-0", [Container("engine", [("nvidia.com/gpu", ["GPU-a"])])])
    with (
        pod_resources_server(socket_path, [entry]),
        grpc.insecure_channel(f"unix://{socket_path}") as channel,
    ):
        raw = channel.unary_unary("/v1.PodResourcesLister/List")(b"", timeout=5)
        response = api_pb2.ListPodResourcesResponse.FromString(raw)
        (pod,) = response.pod_resources
        assert (pod.namespace, pod.name) == ("inference", "vllm-0")
        assert list(pod.containers[0].devices[0].device_ids) == ["GPU-a"]
