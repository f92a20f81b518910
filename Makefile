# Two commands for a fresh machine:
#   make demo   create .venv, install, run the exporter on the built-in simulated node
#   make test   install what the tests need (Python deps; Debian's prometheus, promtool, amtool,
#               systemd-analyze, chromium), lint, test
# Or half of `make test`:
#   make test-unit          lint, then the tests in process (tests/unit/; no Debian packages needed)
#   make test-integration   the tests that run real components (tests/integration/, marker `integration`:
#                           Prometheus, promtool, amtool, systemd-analyze, chromium, the exporter as a process)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# Where `make demo` serves: loopback only, as the README says (DEMO_ADDRESS=0.0.0.0:9835 for every
# interface; a --listen-address in ARGS wins too).
DEMO_ADDRESS ?= 127.0.0.1:9835

.PHONY: demo serve test test-unit test-integration lint tools benchmarks dashboards prometheusrule podresources-stubs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# No PyTorch here: the tests run benchmarks/decode_workload.py with --device python; its PyTorch run is
# benchmarks/decode_validation.py on a GPU node.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m exporter demo --listen-address $(DEMO_ADDRESS) $(ARGS)

serve: $(VENV)/.installed
	$(PY) -m exporter serve $(ARGS)

# Real components the tests run: Prometheus + promtool, Alertmanager's amtool, systemd-analyze, and Debian's
# chromium for the live page's browser test (Playwright drives it; no browser is downloaded).
TOOLS := prometheus:prometheus promtool:prometheus amtool:prometheus-alertmanager systemd-analyze:systemd \
	chromium:chromium
tools:
	@missing=""; for pair in $(TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@prometheus --version 2>&1 | head -1

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Regenerate the Grafana dashboards (dashboards/*.json) from dashboards/build.py.
dashboards: $(VENV)/.installed
	$(PY) dashboards/build.py

# Regenerate deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/rules/*.yml. RUNBOOK_BASE_URL=URL
# links the alerts to your copy of docs/runbooks/ (default: the project's, on GitHub).
RUNBOOK_BASE_URL ?=
prometheusrule: $(VENV)/.installed
	$(PY) deploy/kubernetes/generate_prometheusrule.py $(if $(RUNBOOK_BASE_URL),--runbook-base-url $(RUNBOOK_BASE_URL))

# Regenerate the kubelet's PodResources API stubs (exporter/k8s/proto/api_pb2*.py*) from api.proto with
# grpcio-tools (a test dependency); tests/unit/test_k8s_proto.py fails while they do not match the proto.
PODRESOURCES_PROTO := exporter/k8s/proto/api.proto
podresources-stubs: $(VENV)/.installed-test
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PODRESOURCES_PROTO)

test: $(VENV)/.installed-test tools lint
	$(PY) -m pytest -q

test-unit: $(VENV)/.installed-test lint
	$(PY) -m pytest -q -m "not integration"

test-integration: $(VENV)/.installed-test tools
	$(PY) -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
