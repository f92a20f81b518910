"""Validate `gpus: auto` attribution on a real GPU node.

    python benchmarks/attribution_validation.py [--gpus 0] [--seconds 25]

For each GPU index given, starts `decode_workload.py` on that GPU (its own process, serving its own
/metrics on a free port), plus one decoy process that serves a /metrics page but uses no GPU. Then runs
`tpw-exporter serve` with every one of them as a `generic` endpoint with `gpus: auto`, and checks, from
`/api/v1/snapshot`, that each workload's endpoint is attributed to exactly its GPU (`attribution: auto`)
and the decoy falls back to all GPUs with a reason (after `pending` for the exporter's grace period, since it
answers with no process on a GPU). Exits non-zero on any mismatch. On a multi-GPU node,
`--gpus 0,1,2` checks that several endpoints are attributed apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

from common import REPO, exporter_env, free_port, start_exporter, stop, verdict

WORKLOAD = REPO / "benchmarks" / "decode_workload.py"
DECOY = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'decode_generation_tokens_total 1\\n'\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="0", help="GPU indices to run one workload on each (default 0)")
    parser.add_argument("--seconds", type=float, default=25.0, help="how long to wait for attribution")
    options = parser.parse_args()
    gpus = [int(item) for item in options.gpus.split(",")]

    env = exporter_env()
    children: list[subprocess.Popen[bytes]] = []
    endpoints = []
    try:
        for gpu in gpus:
            port = free_port()
            children.append(
                subprocess.Popen(
                    [sys.executable, str(WORKLOAD), "64", "--port", str(port), "--seconds", "120"],
                    env={**env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)},
                    stdout=subprocess.DEVNULL,
                )
            )
            endpoints.append({"name": f"decode-gpu{gpu}", "port": port, "expect": [gpu]})
        decoy_port = free_port()
        children.append(subprocess.Popen([sys.executable, "-c", DECOY, str(decoy_port)]))
        endpoints.append({"name": "decoy", "port": decoy_port, "expect": None})

        config = {
            "interval": 1,
            "endpoints": [
                {
                    "name": e["name"],
                    "url": f"http://127.0.0.1:{e['port']}/metrics",
                    "engine": "generic",
                    "gpus": "auto",
                    "mapping": {"generation_tokens_total": "decode_generation_tokens_total"},
                }
                for e in endpoints
            ],
        }
        exporter, exporter_port = start_exporter(["serve"], config, env)
        children.append(exporter)

        deadline = time.monotonic() + options.seconds
        results: dict[str, dict] = {}
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                snapshot = get_json(f"http://127.0.0.1:{exporter_port}/api/v1/snapshot")
            except OSError:
                continue
            results = {e["name"]: e for e in snapshot.get("endpoints", [])}
            settled = all(
                name in results and results[name]["up"] and results[name]["attribution"] == "auto"
                for name in (e["name"] for e in endpoints if e["expect"] is not None)
            )
            # The decoy answers but runs on no GPU: pending for the exporter's grace, then all GPUs.
            if settled and results.get("decoy", {}).get("attribution") == "all":
                break
        all_gpus = sorted(g["info"]["index"] for g in snapshot.get("gpus", []))
    finally:
        stop(children, timeout=15)

    failures = []
    print(f"{'endpoint':<14} {'up':<3} {'attribution':<12} {'gpus':<10} {'expected':<10} note")
    for e in endpoints:
        got = results.get(e["name"])
        if got is None:
            failures.append(f"{e['name']}: not in the snapshot")
            continue
        expected_gpus = e["expect"] if e["expect"] is not None else all_gpus
        expected_method = "auto" if e["expect"] is not None else "all"
        print(
            f"{e['name']:<14} {int(got['up']):<3} {got['attribution']:<12} {got['gpus']!s:<10} "
            f"{expected_gpus!s:<10} {got.get('attribution_note') or ''}"
        )
        if got["gpus"] != expected_gpus or got["attribution"] != expected_method:
            failures.append(
                f"{e['name']}: attributed {got['gpus']} ({got['attribution']}), expected {expected_gpus}"
            )
    return verdict(failures)


if __name__ == "__main__":
    raise SystemExit(main())
