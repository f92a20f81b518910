"""Deployment files through real tools and processes: `promtool check config` / `check rules` with the rule
files as the container sees them, `amtool check-config`, `systemd-analyze verify`, every command line's
flags in the exporter's own `--help` and every config file through `tpw-exporter check-config` (the CLI as a
process), the image's health check against a real exporter, the package built from exactly the files the
Dockerfile copies, and generate_prometheusrule.py --check. The static checks are tests/unit/test_deploy.py.
"""

from __future__ import annotations

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
from deploy_common import (
    DEPLOY,
    K8S,
    RULES,
    SERVICES,
    build_context_files,
    container_mounts,
    copied_sources,
    final_stage,
    k8s_object,
    unit,
)
from helpers import REPO, free_port, promtool, running_exporter

from exporter.cli import build_parser
from exporter.config import DEFAULT_PORT

EXAMPLE_LINE = re.compile(r"(?m)^(\s*)#(?! \S)")  # "#key:" / "#  - item": a commented-out example line


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


# ---------------------------------------------------------------------------------------- compose


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
    for static in (REPO / "exporter" / "static").iterdir():  # the live page's files: package data
        assert static.relative_to(REPO).as_posix() in names, f"{static.name} missing from the image's package"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tpw-exporter = exporter.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ----------------------------------------------------------------------------------------- systemd


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
