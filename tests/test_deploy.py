"""Deployment files: docker-compose, Dockerfile, Prometheus/Alertmanager/Grafana config, Kubernetes, systemd.

Docker and a cluster cannot run here; what can be checked without them is: every file parses, every file
a deployment mounts or references exists, the Prometheus config they use passes `promtool check config`
with the rule files as the container sees them, every command line they run parses with the exporter's
own CLI, every config file passes `tpw-exporter check-config`, the image's health check works against a
real exporter, and the package builds from exactly the files the Dockerfile copies.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, free_port, promtool, running_exporter

from exporter import __version__
from exporter.cli import build_parser
from exporter.config import DEFAULT_PORT

DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
K8S = DEPLOY / "kubernetes"
PINNED_IMAGE = re.compile(r"^[a-z0-9./-]+:v?\d+\.\d+\.\d+$")
EXAMPLE_LINE = re.compile(r"(?m)^(\s*)#(?! \S)")  # "#key:" / "#  - item": a commented-out example line


def yaml_files() -> list[Path]:
    return sorted([REPO / "docker-compose.yml", *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S.glob("*.yaml"))
    }


def k8s_object(kind: str) -> dict[str, Any]:
    (found,) = [doc for docs in k8s_documents().values() for doc in docs if doc.get("kind") == kind]
    return found


def parse_cli(argv: list[str]) -> Any:
    """The exporter's own parser; an unknown flag or subcommand fails the test instead of exiting."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"tpw-exporter {shlex.join(argv)}: rejected by the CLI") from exc


def assert_flags_documented(argv: list[str]) -> None:
    """Every --flag used appears in `python -m exporter SUBCOMMAND --help`, run as a process."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", argv[0], "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    for flag in (arg.split("=")[0] for arg in argv if arg.startswith("--")):
        assert flag in result.stdout, f"{flag} is not a flag of `tpw-exporter {argv[0]}`"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )


def assert_config_and_its_example_are_valid(text: str, tmp_path: Path, name: str) -> dict[str, Any]:
    """The config as shipped, and with its commented-out example lines enabled, both pass check-config."""
    shipped = tmp_path / f"{name}.yaml"
    shipped.write_text(text)
    result = check_config(shipped)
    assert result.returncode == 0, f"{name}: {result.stderr}"
    example = tmp_path / f"{name}-example.yaml"
    example.write_text(EXAMPLE_LINE.sub(r"\1", text))
    result = check_config(example)
    assert result.returncode == 0, f"{name} with its example enabled: {result.stderr}"
    effective = yaml.safe_load(result.stdout)
    assert effective["endpoints"], f"{name}: the commented example should configure an endpoint"
    return effective


# ------------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_deployment_yaml_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents and all(isinstance(doc, dict) for doc in documents)


# ---------------------------------------------------------------------------------------- compose


def test_compose_services_and_pinned_images() -> None:
    assert set(SERVICES) == {"exporter", "exporter-gpu", "prometheus", "alertmanager", "grafana"}
    images = {name: service["image"] for name, service in SERVICES.items()}
    for name, image in images.items():
        assert PINNED_IMAGE.match(image), f"{name}: {image} is not pinned to an exact version"
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["alertmanager"].startswith("prom/alertmanager:")
    assert images["grafana"].startswith("grafana/grafana:")
    for name in ("exporter", "exporter-gpu"):
        service = SERVICES[name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert service["image"] == f"tpw-exporter:{__version__}"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_compose_runs_the_demo_by_default_and_the_gpu_profile_serves_real_gpus() -> None:
    env = dict(
        line.split("=", 1) for line in (REPO / ".env").read_text().splitlines() if line and line[0] != "#"
    )
    assert env["COMPOSE_PROFILES"] == "demo", "`docker compose up` must start the demo exporter"
    profiled = {name: service.get("profiles") for name, service in SERVICES.items()}
    assert profiled == {
        "exporter": ["demo"],
        "exporter-gpu": ["gpu"],
        "prometheus": None,
        "alertmanager": None,
        "grafana": None,
    }
    demo = parse_cli(SERVICES["exporter"]["command"])
    assert demo.command == "demo"
    gpu_service = SERVICES["exporter-gpu"]
    argv = gpu_service["command"]
    args = parse_cli(argv)
    assert args.command == "serve"
    assert_flags_documented(argv)
    assert gpu_service["runtime"] == "nvidia" and gpu_service["pid"] == "host"
    assert gpu_service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    (device,) = gpu_service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu_service["networks"]["default"]["aliases"] == ["exporter"], "Prometheus scrapes exporter:9835"
    mounts = container_mounts("exporter-gpu")
    assert str(args.config) in mounts, "the --config file is mounted"


def container_mounts(service: str) -> dict[str, Path]:
    """{container path: host path} of the service's bind mounts (relative host paths resolved)."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            mounts[target] = (REPO / source).resolve()
    return mounts


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_host_path_compose_mounts_exists(service: str) -> None:
    named = set(COMPOSE.get("volumes") or {})
    for volume in SERVICES[service].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith(("./", "/")):
            assert (REPO / source).exists(), f"{service} mounts {source}, which is not in the repository"
            assert volume.endswith(":ro"), f"{service}: mount configuration read-only: {volume}"
        else:
            assert source in named, f"{service}: named volume {source} is not declared"


def test_compose_publishes_ports_on_loopback_by_default() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("${TPW_BIND:-127.0.0.1}:"), f"{name}: {port}"


def mirror_container(service: str, root: Path) -> None:
    """Copy what the service's bind mounts show into `root`, at the paths the container sees."""
    for target, source in container_mounts(service).items():
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy(source, destination)


def prometheus_config_path() -> str:
    (flag,) = [arg for arg in SERVICES["prometheus"]["command"] if arg.startswith("--config.file=")]
    return flag.split("=", 1)[1]


def test_prometheus_config_as_compose_mounts_it_passes_promtool(tmp_path: Path) -> None:
    mirror_container("prometheus", tmp_path)
    config = tmp_path / prometheus_config_path().lstrip("/")
    assert config.exists(), "compose mounts the file Prometheus is started with"
    result = promtool("check", "config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "is valid prometheus config" in output
    assert f"SUCCESS: {len(RULES)} rule files found" in output, "every rule file of the repository is loaded"
    for path in RULES:
        assert f"/etc/prometheus/rules/{path.name}" in output, f"{path.name} is not checked"


def test_the_shipped_prometheus_config_passes_promtool_in_place() -> None:
    result = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in result.stdout


def test_prometheus_scrapes_and_alerts_through_compose_service_names() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    names = set(SERVICES) | {"exporter"}
    (tpw,) = [job for job in config["scrape_configs"] if job["job_name"] == "tpw-exporter"]
    assert tpw["static_configs"][0]["targets"] == [f"exporter:{DEFAULT_PORT}"]
    (alertmanager,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = alertmanager.split(":")
    assert host in names and port == "9093"
    assert config["rule_files"] == ["rules/*.yml"], "relative to the config file, as mounted"
    assert "/etc/prometheus/rules" in container_mounts("prometheus")


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    mounts = container_mounts("grafana")
    datasources_dir = mounts["/etc/grafana/provisioning/datasources"]
    providers_dir = mounts["/etc/grafana/provisioning/dashboards"]
    datasources = [
        source
        for path in sorted(datasources_dir.glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["isDefault"] is True
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (tpw,) = [job for job in config["scrape_configs"] if job["job_name"] == "tpw-exporter"]
    assert prometheus["jsonData"]["timeInterval"] == tpw["scrape_interval"], "$__rate_interval needs it"
    (alertmanager,) = [d for d in datasources if d["type"] == "alertmanager"]
    assert alertmanager["url"] == "http://alertmanager:9093"

    (provider,) = [
        p
        for path in sorted(providers_dir.glob("*.yml"))
        for p in yaml.safe_load(path.read_text())["providers"]
    ]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == (REPO / "dashboards").resolve(), "the provider reads the mounted JSON"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (REPO / "dashboards" / Path(home).name).exists()
    assert len(list((REPO / "dashboards").glob("*.json"))) == 4


def test_alertmanager_config_routes_to_a_receiver_that_exists() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {receiver["name"] for receiver in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    assert {"alertname", "instance"} <= set(route["group_by"])
    for child in route.get("routes", []):
        assert child.get("receiver", route["receiver"]) in receivers
    mounts = container_mounts("alertmanager")
    (flag,) = [a for a in SERVICES["alertmanager"]["command"] if a.startswith("--config.file=")]
    assert flag.split("=", 1)[1] in mounts


def test_alertmanager_config_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: `make test` installs Debian's prometheus-alertmanager"
    result = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_base_image_is_pinned_slim_python() -> None:
    bases = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    assert bases and len(set(bases)) == 1, "build and runtime stages share one base"
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", bases[0]), bases[0]


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    final = final_stage()
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid not in {"0", "root"} and uid.isdigit(), "numeric non-root uid (runAsNonRoot can verify it)"
    daemonset = k8s_object("DaemonSet")
    assert str(daemonset["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid
    keywords = [keyword for keyword, _ in final]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in {"RUN", "COPY"})
    (health,) = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert "/healthz" in health and "curl" not in health and "wget" not in health
    (expose,) = [rest for keyword, rest in final if keyword == "EXPOSE"]
    assert expose == str(DEFAULT_PORT)
    assert ("ENTRYPOINT", '["tpw-exporter"]') in final and ("CMD", '["demo"]') in final
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'tpw-exporter = "exporter.cli:main"' in pyproject


def test_dockerfile_installs_the_package_only() -> None:
    runs = [rest for keyword, rest in dockerfile() if keyword == "RUN"]
    installs = [re.search(r"pip install ([^&;]*)", run) for run in runs]
    installs = [match.group(1).strip() for match in installs if match]
    assert installs == ["."], f"pip install . and nothing else: {installs}"
    assert not any("apt-get install" in run for run in runs), "keep the image slim"


def healthcheck_code() -> str:
    (health,) = [rest for keyword, rest in final_stage() if keyword == "HEALTHCHECK"]
    command = yaml.safe_load(health.split("CMD", 1)[1].strip())  # the JSON exec form
    assert command[:2] == ["python", "-c"]
    return command[2]


def test_the_image_healthcheck_passes_on_a_live_exporter_and_fails_on_a_dead_one() -> None:
    code = healthcheck_code()
    with running_exporter(["demo", "--interval", "0.5"]) as exporter:
        env = {"PATH": "/usr/bin:/bin", "TPW_LISTEN_ADDRESS": f"0.0.0.0:{exporter.port}"}
        alive = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10)
        assert alive.returncode == 0, alive.stderr
    env = {"PATH": "/usr/bin:/bin", "TPW_LISTEN_ADDRESS": f"[::]:{free_port()}"}
    dead = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10)
    assert dead.returncode != 0


def dockerignore_allows(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder wins; `!` re-includes."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    allowed = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        body = pattern.lstrip("!").rstrip("/")
        variants = {body, body.removeprefix("**/")}  # `**/` also matches no folder at all
        if any(fnmatch.fnmatchcase(prefix, variant) for prefix in prefixes for variant in variants):
            allowed = pattern.startswith("!")
    return allowed


def build_context_files() -> list[str]:
    files = []
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not relative.startswith((".git/", ".venv/")) and dockerignore_allows(relative):
            files.append(relative)
    return sorted(files)


def copied_sources() -> list[str]:
    sources = []
    for keyword, rest in dockerfile():
        if keyword == "COPY" and "--from" not in rest:
            sources.extend(rest.split()[:-1])
    return sources


def test_dockerfile_copies_only_files_the_build_context_contains() -> None:
    context = build_context_files()
    assert ".git/config" not in context and not any(f.startswith("tests/") for f in context)
    assert not any("__pycache__" in f for f in context)
    for source in copied_sources():
        assert (REPO / source).exists(), source
        assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), (
            f"COPY {source}: excluded by .dockerignore"
        )
    readme = re.search(r'^readme = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert readme in copied_sources(), "pyproject's readme must be in the image or `pip install .` fails"


def test_the_package_builds_from_exactly_the_files_the_image_copies(tmp_path: Path) -> None:
    assert importlib.util.find_spec("setuptools"), "setuptools is a test dependency (pyproject [test])"
    source = tmp_path / "src"
    for relative in build_context_files():
        if any(relative == c or relative.startswith(c.rstrip("/") + "/") for c in copied_sources()):
            destination = source / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / relative, destination)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("tpw_exporter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (REPO / "exporter").rglob("*.py"):
        assert module.relative_to(REPO).as_posix() in names, f"{module.name} missing from the image's package"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tpw-exporter = exporter.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ----------------------------------------------------------------------------------------- systemd


def unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in (DEPLOY / "systemd" / "tpw-exporter.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            assert current is not None
            current.append((key, value))
    return sections


def unit_value(section: str, key: str) -> str:
    values = [value for k, value in unit()[section] if k == key]
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def test_systemd_unit_runs_serve_with_the_example_config() -> None:
    argv = shlex.split(unit_value("Service", "ExecStart"))
    assert Path(argv[0]).name == "tpw-exporter"
    args = parse_cli(argv[1:])
    assert args.command == "serve" and str(args.config) == "/etc/tpw-exporter/config.yaml"
    assert_flags_documented(argv[1:])
    pre = shlex.split(unit_value("Service", "ExecStartPre"))
    assert parse_cli(pre[1:]).command == "check-config" and pre[-1] == str(args.config)
    assert unit_value("Service", "Restart") == "on-failure"
    assert unit_value("Install", "WantedBy") == "multi-user.target"


def test_systemd_unit_is_hardened_but_keeps_the_gpus_visible() -> None:
    service = dict(unit()["Service"])
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "", "root")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ProtectKernelModules": "yes",
    }.items():
        assert service.get(key) == value, f"{key}={value}"
    assert service.get("PrivateDevices", "no") == "no", "PrivateDevices hides /dev/nvidia*: NVML needs them"
    assert "DevicePolicy" not in service or "nvidia" in " ".join(
        v for k, v in unit()["Service"] if k == "DeviceAllow"
    )


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """Every directive known to systemd; the binary path pointed at this environment's exporter."""
    exporter = shutil.which("tpw-exporter") or str(Path(sys.executable).with_name("tpw-exporter"))
    assert Path(exporter).exists()
    text = (DEPLOY / "systemd" / "tpw-exporter.service").read_text()
    copy = tmp_path / "tpw-exporter.service"
    copy.write_text(text.replace("/opt/tpw-exporter/bin/tpw-exporter", exporter))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("path", ["deploy/systemd/config.yaml", "deploy/docker/config.yaml"])
def test_example_configs_pass_check_config(path: str, tmp_path: Path) -> None:
    effective = assert_config_and_its_example_are_valid(
        (REPO / path).read_text(), tmp_path, Path(path).parent.name
    )
    assert effective["listen_address"].endswith(f":{DEFAULT_PORT}")


# -------------------------------------------------------------------------------------- Kubernetes


def test_kustomization_lists_every_manifest_and_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    namespace = kustomization["namespace"]
    for name, documents in k8s_documents().items():
        for document in documents:
            if name != "kustomization.yaml":
                assert document["metadata"]["namespace"] == namespace, name
    (image,) = kustomization["images"]
    assert image["name"] == "tpw-exporter" and image["newTag"] == __version__


def test_daemonset_runs_on_gpu_nodes_with_the_nvidia_runtime() -> None:
    daemonset = k8s_object("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert (
        daemonset["spec"]["selector"]["matchLabels"].items()
        <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["hostPID"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    for bucket in container["resources"].values():
        assert not any(name.startswith("nvidia.com/") for name in bucket), (
            "never allocate GPUs to the exporter"
        )
    assert "memory" in container["resources"]["limits"]
    assert container["image"].split(":")[1].split()[0] == __version__
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": DEFAULT_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_daemonset_args_use_existing_flags_and_a_mounted_config(tmp_path: Path) -> None:
    pod = k8s_object("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_cli(container["args"])
    assert args.command == "serve"
    assert_flags_documented(container["args"])
    config = Path(str(args.config))
    (mount,) = [m for m in container["volumeMounts"] if config.parent == Path(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = k8s_object("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config.name in configmap["data"], "the ConfigMap has the key the exporter reads"


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    text = k8s_object("ConfigMap")["data"]["config.yaml"]
    assert_config_and_its_example_are_valid(text, tmp_path, "configmap")


def test_service_and_servicemonitor_select_the_exporter_pods() -> None:
    pod_labels = k8s_object("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = k8s_object("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["clusterIP"] == "None", "headless: one target per node"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == DEFAULT_PORT
    monitor = k8s_object("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel["instance"] == ["__meta_kubernetes_pod_node_name"], "dashboards read instance as the node"


def generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_prometheusrule", K8S / "generate_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_the_current_rule_files() -> None:
    text = (K8S / "prometheusrule.yaml").read_text()
    assert text == generator().render(), (
        "prometheusrule.yaml is stale: run python deploy/kubernetes/generate_prometheusrule.py"
    )
    rule = k8s_object("PrometheusRule")
    groups = [group for path in RULES for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])]
    assert rule["spec"]["groups"] == groups, "the PrometheusRule carries exactly the rule files' groups"
    assert RULES, "deploy/prometheus/rules has rule files"


def test_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump({"groups": k8s_object("PrometheusRule")["spec"]["groups"]}))
    result = promtool("check", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in k8s_object("PrometheusRule")["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_prometheusrule_check_flag_notices_a_changed_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(DEPLOY / "prometheus" / "rules", rules)
    script = [sys.executable, str(K8S / "generate_prometheusrule.py")]
    output = tmp_path / "prometheusrule.yaml"
    subprocess.run([*script, "--rules", str(rules), "--output", str(output)], check=True)
    assert (
        subprocess.run([*script, "--check", "--rules", str(rules), "--output", str(output)]).returncode == 0
    )
    (rules / "extra.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "extra", "rules": [{"record": "x:y:z", "expr": "vector(1)"}]}]})
    )
    stale = subprocess.run(
        [*script, "--check", "--rules", str(rules), "--output", str(output)], capture_output=True, text=True
    )
    assert stale.returncode == 1 and "stale" in stale.stderr


def test_kustomization_lists_every_manifest_and_pins_the_image() -> None:
    """What `kubectl kustomize` would render, checked without a cluster tool: resources and image."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = [yaml.safe_load((K8S / name).read_text()) for name in kustomization["resources"]]
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == ["ConfigMap", "DaemonSet", "PrometheusRule", "Service", "ServiceMonitor"]
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests == set(kustomization["resources"])
    (daemonset,) = [doc for doc in documents if doc["kind"] == "DaemonSet"]
    (image,) = kustomization["images"]
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0] == image["name"]
    assert image["newTag"] == __version__


# ------------------------------------------------------------------------------------------ README


def test_readme_documents_each_deployment_path() -> None:
    readme = (REPO / "README.md").read_text()
    dashboards = readme.index("\n## Dashboards")
    deploying = readme.index("\n## Deploying")
    assert dashboards < deploying
    section = readme[deploying:]
    for needle in (
        "docker compose up",
        "COMPOSE_PROFILES=gpu",
        "kubectl apply -k deploy/kubernetes",
        "deploy/systemd/tpw-exporter.service",
        "generate_prometheusrule.py",
    ):
        assert needle in section, needle
    assert "python dashboards/build.py" in readme[dashboards:deploying]
