"""Deployment files: docker-compose, Dockerfile, Prometheus/Alertmanager/Grafana config, Kubernetes, systemd.

Docker and a cluster cannot run here; what can be checked without them is: every file parses, every file
a deployment mounts or references exists, the Prometheus config they use passes `promtool check config`
with the rule files as the container sees them, every command line they run parses with the exporter's
own CLI, every config file passes `tpw-exporter check-config`, the image's health check works against a
real exporter, and the package builds from exactly the files the Dockerfile copies.

This file has the static checks; what runs promtool, amtool, systemd-analyze, the CLI, the exporter, pip
or a script is tests/integration/test_deploy_with_real_tools.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_common import (
    COMPOSE,
    DEPLOY,
    K8S,
    RULES,
    SERVICES,
    build_context_files,
    container_mounts,
    copied_sources,
    dockerfile,
    final_stage,
    k8s_documents,
    k8s_object,
    unit,
)
from helpers import REPO

from exporter import __version__
from exporter.config import DEFAULT_PORT, KubernetesConfig

PINNED_IMAGE = re.compile(r"^[a-z0-9./-]+:v?\d+\.\d+\.\d+$")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


def yaml_files() -> list[Path]:
    return sorted([REPO / "docker-compose.yml", *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


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


# ------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_is_pinned_slim_python() -> None:
    bases = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    assert bases and len(set(bases)) == 1, "build and runtime stages share one base"
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", bases[0]), bases[0]


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    final = final_stage()
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid not in {"0", "root"} and uid.isdigit(), "numeric non-root uid (runAsNonRoot can verify it)"
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
    # The package with its kubernetes extra (pod attribution), nothing else.
    assert installs == ["'.[kubernetes]'"], f"pip install '.[kubernetes]' and nothing else: {installs}"
    assert not any("apt-get install" in run for run in runs), "keep the image slim"


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


# ----------------------------------------------------------------------------------------- systemd


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


def test_the_exporter_gets_enough_file_descriptors_for_its_connection_cap() -> None:
    """The listener keeps at most (limit - 128) / 2 connections, 512 at most: 8192 leaves it its 512."""
    from exporter.listener import DEFAULT_MAX_CONNECTIONS, connection_cap

    limits = [value for key, value in unit()["Service"] if key == "LimitNOFILE"]
    assert limits == ["8192"]
    assert connection_cap(None, int(limits[0]))[0] == DEFAULT_MAX_CONNECTIONS
    nofile = SERVICES["exporter"]["ulimits"]["nofile"]
    assert connection_cap(None, nofile["soft"])[0] == DEFAULT_MAX_CONNECTIONS


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_systemd_unit_documentation_is_a_url_that_exists_without_the_checkout() -> None:
    """`pip install` copies no README onto the node: Documentation= links the project's README section."""
    links = [value for key, value in unit()["Unit"] if key == "Documentation"]
    assert links, "the unit names its documentation"
    repository = generator().DEFAULT_RUNBOOK_BASE_URL.removesuffix("docs/runbooks/")
    for link in links:
        assert link.startswith(("https://", "http://", "man:", "info:")), f"{link}: systemd wants a URL"
    (readme_link,) = [link for link in links if link.startswith(repository)]
    page, _, anchor = readme_link.removeprefix(repository).partition("#")
    assert (REPO / page).is_file(), page
    slugs = {
        github_slug(line.lstrip("#"))
        for line in (REPO / page).read_text().splitlines()
        if line.startswith("#")
    }
    assert anchor in slugs, f"#{anchor} is no heading of {page}"


# -------------------------------------------------------------------------------------- Kubernetes


def test_kustomization_lists_every_manifest_and_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    namespace = kustomization["namespace"]
    for name, documents in k8s_documents().items():
        for document in documents:
            if name != "kustomization.yaml" and document["kind"] not in CLUSTER_SCOPED:
                assert document["metadata"]["namespace"] == namespace, name
            elif name != "kustomization.yaml":
                assert "namespace" not in document["metadata"], (
                    f"{name}: {document['kind']} is cluster-scoped"
                )
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
    assert "hostPID" not in pod and "hostNetwork" not in pod, "pod attribution needs neither"
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
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


def test_daemonset_reads_the_kubelets_podresources_socket_read_only_as_root_without_capabilities() -> None:
    """The kubelet's socket accepts root only (mode 0755, root's): uid 0, and nothing else root could use."""
    pod = k8s_object("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    socket = Path(KubernetesConfig().pod_resources_socket)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(socket.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == str(socket.parent), "the kubelet's directory, at the same path"
    assert pod["securityContext"]["runAsUser"] == 0 and pod["securityContext"]["runAsNonRoot"] is False
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]} and "add" not in security["capabilities"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert (
        not security.get("privileged")
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    other_host_paths = [v for v in pod["volumes"] if "hostPath" in v and v is not volume]
    assert not other_host_paths, "the socket's directory is the only host path"
    env = {
        item["name"]: item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for item in container["env"]
    }
    assert env["NODE_NAME"] == "spec.nodeName", "the downward API names the node (kubernetes.node_name)"
    assert env["POD_NAMESPACE"] == "metadata.namespace"


def test_the_service_account_has_read_only_least_rbac_on_what_attribution_reads() -> None:
    """Exactly: list pods (this node's, by field selector), get and list Services, list EndpointSlices.
    That every grant is used and every request granted: tests/unit/test_k8s_attribution.py."""
    pod = k8s_object("DaemonSet")["spec"]["template"]["spec"]
    account = k8s_object("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True, "the API server needs the token"
    role = k8s_object("ClusterRole")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert grants == {
        ("", "pods"): {"list"},
        ("", "services"): {"get", "list"},
        ("discovery.k8s.io", "endpointslices"): {"list"},
    }
    assert not any("*" in value for key in grants for value in key), "no wildcards"
    binding = k8s_object("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert account["metadata"]["namespace"] == k8s_object("DaemonSet")["metadata"]["namespace"]


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


def test_rule_files_link_the_default_runbook_base() -> None:
    base = generator().DEFAULT_RUNBOOK_BASE_URL
    urls = [
        rule["annotations"]["runbook_url"]
        for path in RULES
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert urls and all(url.startswith(base) and url.endswith(".md") for url in urls)
    assert all((REPO / "docs" / "runbooks" / url.removeprefix(base)).is_file() for url in urls)


MIRROR = "https://git.example.com/ops/tpw-exporter/-/blob/v1/docs/runbooks"


def test_prometheusrule_with_another_runbook_base_moves_only_the_runbook_urls() -> None:
    module = generator()
    default = yaml.safe_load(module.render())
    moved = yaml.safe_load(module.render(runbook_base_url=MIRROR))
    changed = 0
    for group, moved_group in zip(default["spec"]["groups"], moved["spec"]["groups"], strict=True):
        for rule, moved_rule in zip(group["rules"], moved_group["rules"], strict=True):
            if "alert" in rule:
                name = rule["alert"]
                assert moved_rule["annotations"]["runbook_url"] == f"{MIRROR}/{name}.md"
                moved_rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"]
                changed += 1
            assert moved_rule == rule, "nothing else changes"
    assert changed >= 10


def test_generator_command_line_takes_the_runbook_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = generator()
    output, rules_output = tmp_path / "prometheusrule.yaml", tmp_path / "rules"
    flags = ["--output", str(output), "--runbook-base-url", MIRROR + "/", "--rules-output", str(rules_output)]
    assert module.main(flags) == 0
    assert module.main([*flags, "--check"]) == 0
    assert f"runbook_url: {MIRROR}/TPWBusyButFlat.md" in output.read_text()
    for path in RULES:  # the rule files, comments and all, with only the runbook URLs moved
        original, written = path.read_text(), (rules_output / path.name).read_text()
        assert written == original.replace(module.DEFAULT_RUNBOOK_BASE_URL, MIRROR + "/")
        assert yaml.safe_load(written) is not None
    assert module.main(["--output", str(output), "--check"]) == 1, "the default base is another file"
    assert "is stale" in capsys.readouterr().err
    assert module.main(["--output", str(output), "--runbook-base-url", "docs/runbooks"]) == 2
    assert capsys.readouterr().err.strip() == (
        "generate_prometheusrule: --runbook-base-url must be an http(s) URL, got 'docs/runbooks'"
    )


def test_an_alert_linking_elsewhere_is_refused(tmp_path: Path) -> None:
    module = generator()
    rules = tmp_path / "rules"
    rules.mkdir()
    alert = {
        "alert": "X",
        "expr": "up == 0",
        "annotations": {"runbook_url": "https://elsewhere.example/X.md"},
    }
    (rules / "alerts.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [alert]}]}))
    with pytest.raises(
        module.GeneratorError, match=re.escape("alert X: runbook_url https://elsewhere.example/X")
    ):
        module.render(rules)


def test_kustomization_lists_every_manifest_and_pins_the_image() -> None:
    """What `kubectl kustomize` would render, checked without a cluster tool: resources and image."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
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
