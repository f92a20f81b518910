"""No endpoint secret on any surface of the real exporter process (issue 13, item 4): endpoints with tokens
in their URL's query, passwords in its user info, credentials, a credentials file, basic auth and secret
headers, some answering and some failing in every way, read by `python -m exporter demo --log-level debug`;
then /metrics (both formats), /api/v1/snapshot, /, the whole log, and check-config's output are searched for
each secret. In process, with every failure kind: tests/unit/test_endpoint_auth.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine_server import engine_server
from helpers import REPO, http_get, running_exporter, wait_for

PAGE = b'vllm:generation_tokens_total{model_name="m"} 7\nvllm:num_requests_running{model_name="m"} 1\n'
SECRETS = {
    "query": "url-tok-a1b2c3",
    "user info": "url-pw-d4e5f6",
    "dead query": "url-tok-g7h8i9",
    "credentials": "cred-tok-j1k2l3",
    "file": "file-tok-m4n5o6",
    "basic": "basic-pw-p7q8r9",
    "header": "hdr-sec-s1t2u3",
    "redirect": "url-tok-v4w5x6",
}


def test_no_secret_in_metrics_snapshot_logs_or_check_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRETS["file"] + "\n")
    with engine_server(b"") as dead:
        dead_port = dead.port  # closed from here on: connection refused
    guarded_headers = {"Authorization": f"Bearer {SECRETS['credentials']}"}
    location = {"Location": f"http://elsewhere.invalid:1/metrics?token={SECRETS['redirect']}"}
    with (
        engine_server(PAGE, required_headers=guarded_headers) as guarded,
        engine_server(PAGE, required_headers={"Authorization": f"Bearer {SECRETS['file']}"}) as filed,
        engine_server(PAGE, status=302, headers=location) as away,
    ):
        config = tmp_path / "config.yaml"
        config.write_text(
            f"""endpoints:
  - name: ok
    url: '{guarded.url}?token={SECRETS["query"]}'
    engine: vllm
    authorization: {{credentials: '{SECRETS["credentials"]}'}}
  - name: from-file
    url: '{filed.url}'
    engine: vllm
    authorization: {{credentials_file: '{tmp_path / "token"}'}}
  - name: refused
    url: '{guarded.url}'
    engine: vllm
    basic_auth: {{username: prom, password: '{SECRETS["basic"]}'}}
    http_headers: {{X-Api-Key: {{secrets: ['{SECRETS["header"]}']}}}}
  - name: dead
    url: 'http://prom:{SECRETS["user info"]}@127.0.0.1:{dead_port}/metrics?token={SECRETS["dead query"]}'
    engine: vllm
  - name: away
    url: '{away.url}'
    engine: vllm
  - name: no-file
    url: '{guarded.url}'
    engine: vllm
    authorization: {{credentials_file: '{tmp_path / "missing"}'}}
"""
        )
        args = ["demo", "--gpus", "1", "--interval", "0.3", "--log-level", "debug", "--config", str(config)]
        with running_exporter(args) as exporter:

            def every_endpoint_read() -> dict[str, dict[str, object]] | None:
                snapshot = json.loads(http_get(f"{exporter.url}/api/v1/snapshot")[1])
                endpoints = {e["name"]: e for e in snapshot["endpoints"]}
                return endpoints if len(endpoints) == 7 and endpoints["ok"]["up"] else None

            endpoints = wait_for(every_endpoint_read, 15, "every endpoint scraped")
            surfaces = {
                "metrics": exporter.metrics(),
                "openmetrics": http_get(
                    f"{exporter.url}/metrics", headers={"Accept": "application/openmetrics-text"}
                )[1].decode(),
                "snapshot": http_get(f"{exporter.url}/api/v1/snapshot")[1].decode(),
                "index": http_get(f"{exporter.url}/")[1].decode(),
            }
            exporter.stop()
            surfaces["log"] = exporter.output()
    checked = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    surfaces["check-config"] = checked.stdout + checked.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--show-secrets", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout

    assert endpoints["from-file"]["up"] and not endpoints["refused"]["up"]
    assert [endpoints[name]["up"] for name in ("dead", "away", "no-file")] == [False, False, False]
    assert "endpoint no-file is down: authorization.credentials_file" in surfaces["log"]
    assert f'url="{guarded.url}?token=<redacted>"' in surfaces["metrics"]
    assert "DEBUG" in surfaces["log"]
    for secret in SECRETS.values():
        for name, text in surfaces.items():
            assert secret not in text, f"{secret} in {name}"
    # The search is not vacuous: --show-secrets prints what the config file holds.
    assert all(secret in shown for key, secret in SECRETS.items() if key not in ("file", "redirect"))
