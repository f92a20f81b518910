"""The deployment files as the deployment tests read them: compose services and mounts, the Dockerfile and its
build context, the Kubernetes manifests, the systemd unit. Shared by tests/unit/test_deploy.py and
tests/integration/test_deploy_with_real_tools.py."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import yaml
from helpers import REPO

DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
K8S = DEPLOY / "kubernetes"


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S.glob("*.yaml"))
    }


def k8s_object(kind: str) -> dict[str, Any]:
    (found,) = [doc for docs in k8s_documents().values() for doc in docs if doc.get("kind") == kind]
    return found


def container_mounts(service: str) -> dict[str, Path]:
    """{container path: host path} of the service's bind mounts (relative host paths resolved)."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            mounts[target] = (REPO / source).resolve()
    return mounts


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
