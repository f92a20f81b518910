# syntax=docker/dockerfile:1
# tpw-exporter: `docker build -t tpw-exporter:0.1.0 .`
#   docker run --rm -p 9835:9835 tpw-exporter:0.1.0                        the simulated demo node
#   docker run --rm --runtime nvidia -e NVIDIA_VISIBLE_DEVICES=all -p 9835:9835 \
#     tpw-exporter:0.1.0 serve                                             this machine's GPUs

FROM python:3.12.12-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# The kubernetes extra: pod attribution on Kubernetes (the PodResources API over gRPC, the API server).
RUN python -m venv /opt/tpw-exporter && /opt/tpw-exporter/bin/pip install '.[kubernetes]'

FROM python:3.12.12-slim-trixie
LABEL org.opencontainers.image.title="tpw-exporter" \
      org.opencontainers.image.description="GPU efficiency (NVML + GPM) joined with serving throughput: throughput per watt for Prometheus" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tpw-exporter /opt/tpw-exporter
RUN groupadd --system --gid 10001 tpw \
 && useradd --system --uid 10001 --gid tpw --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tpw
ENV PATH=/opt/tpw-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9835
# No curl in slim images: Python asks /healthz on the port of TPW_LISTEN_ADDRESS (default 9835).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TPW_LISTEN_ADDRESS', '0.0.0.0:9835').rsplit(':', 1)[1]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3).status == 200 else 1)"]
ENTRYPOINT ["tpw-exporter"]
CMD ["demo"]
