"""Pod attribution on Kubernetes: which pod holds each GPU, and which pods an endpoint's URL reaches.

- `podresources`: the kubelet's PodResources API (gRPC on its unix socket): the devices of each container.
- `api`: the API server, through the official `kubernetes` client: this node's pods, Services and
  EndpointSlices.
- `hosts`: what an endpoint URL's host names (a pod IP, a Service, a pod's DNS name, the node) and which of
  this node's pods that is.
- `view`: a thread that reads both on a slow cadence, off the tick; and the tick's side: the stage that puts
  `Snapshot.gpu_pods` (`tpw_gpu_pod_info`) and the Kubernetes sources' health in the snapshot, and the
  attribution of `gpus: auto` endpoints to their pods' GPUs (`attribution="kubernetes"`).

grpc, protobuf and the kubernetes client are imported only when this is enabled, in the collector process:
the `kubernetes` extra (`pip install 'tpw-exporter[kubernetes]'`, which the container image installs).
"""
