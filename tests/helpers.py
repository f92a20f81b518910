"""Real processes for end-to-end tests: the exporter as users run it, and a real Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def write_config(directory: Path, text: str) -> Path:
    """A config.yaml with `text` in `directory`."""
    path = directory / "config.yaml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class ExporterProcess:
    """`python -m exporter ARGS` on a free loopback port."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the child, removed on exit
            prefix="tpw-exporter-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args, "--listen-address", f"127.0.0.1:{self.port}"],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"exporter exited with {self.process.returncode}:\n{self.output()}")
            return http_get(f"{self.url}/readyz")[0] == 200

        wait_for(ready, timeout, "exporter /readyz")

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, body
        return body.decode()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> float:
        """SIGTERM; returns seconds until the process exited."""
        if self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


@contextmanager
def running_exporter(args: Sequence[str], env: dict[str, str] | None = None) -> Iterator[ExporterProcess]:
    exporter = ExporterProcess(args, env)
    try:
        exporter.wait_ready()
        yield exporter
    finally:
        exporter.stop()
        os.unlink(exporter.log.name)


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise AssertionError("the `prometheus` binary is missing: run `make test`, which installs it")
    return path


def promtool(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError("`promtool` is missing: run `make test`, which installs the prometheus package")
    return subprocess.run([path, *args], input=input_text, capture_output=True, text=True, timeout=120)


class PrometheusProcess:
    """A real Prometheus server scraping the given targets, with optional rule files."""

    def __init__(
        self,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        scrape_configs: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """`scrape_configs`, when given, replace the one plain-HTTP job `tpw` over `targets`."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="tpw-prometheus-"))
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": list(scrape_configs)
            if scrape_configs is not None
            else [{"job_name": "tpw", "static_configs": [{"targets": list(targets)}]}],
        }
        config_path = self.directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = open(self.directory / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: http_get(f"{self.url}/-/ready")[0] == 200, 30, "prometheus /-/ready")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        _, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=5)
        payload = json.loads(body)
        if payload.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        return wait_for(lambda: self.query(expr), timeout, f"prometheus to return {expr}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running_prometheus(targets: Sequence[str], **kwargs: Any) -> Iterator[PrometheusProcess]:
    prometheus = PrometheusProcess(targets, **kwargs)
    try:
        yield prometheus
    finally:
        prometheus.stop()
