"""Generated code: the kubelet's PodResources API v1 (`api.proto`), compiled by grpcio-tools.

Never edit `api_pb2.py`, `api_pb2.pyi` or `api_pb2_grpc.py` by hand: change `api.proto` and run
`make podresources-stubs`. Ruff and mypy leave these three files alone (pyproject.toml).
"""
