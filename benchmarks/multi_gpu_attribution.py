"""Validate attribution and tokens per joule on a multi-GPU node, with the exporter started first.

    python benchmarks/multi_gpu_attribution.py [--tp-gpus 0,1] [--solo-gpu 2] [--shared-gpu 3] [--window 20]

Starts `tpw-exporter serve` first (as under systemd or Kubernetes, where the exporter is up before the
engines), with every engine below as a `generic` endpoint with `gpus: auto`, then starts:
- `tp`: `benchmarks/tp_engine.py`, one worker process per GPU of `--tp-gpus` with an NCCL all-reduce in
  every layer and one /metrics on the launcher;
- `solo`: `benchmarks/decode_workload.py` (batch 64) on `--solo-gpu`;
- `shared-big`, `shared-small`: two decode workloads (batch 256 and 16) on the same `--shared-gpu`.
Engines whose GPUs the node lacks are left out. Checks, from `/api/v1/snapshot`:
1. while an engine is not up yet its endpoint is `pending`, with no GPUs and no tokens per joule;
2. each endpoint is then attributed (`auto`) to exactly its GPUs, and how many ticks that took;
3. tokens per joule of `tp` and `solo` against ground truth over the same `--window` seconds: the
   engine's own token counter and NVML's energy counters of its GPUs, read by this script (≤ 2 %);
4. the two engines on the shared GPU split its energy (shares add up to 1, energies to the GPU's ±1 %).
Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from common import REPO, exporter_env, free_port, start_exporter, stop, verdict

TOKENS = "decode_generation_tokens_total"
MAX_ERROR_PERCENT = 2.0


@dataclass
class Engine:
    name: str
    gpus: list[int]
    command: list[str]
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def token_count(engine: Engine) -> float:
    for line in get(engine.url).decode().splitlines():
        if line.startswith(TOKENS + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{engine.name}: no {TOKENS} on its page")


def engines_for(options: argparse.Namespace, gpu_count: int, seconds: float) -> list[Engine]:
    workload = [sys.executable, str(REPO / "benchmarks" / "decode_workload.py")]
    tp_gpus = [int(item) for item in options.tp_gpus.split(",")]
    engines = []
    if max(tp_gpus) < gpu_count:
        tp = Engine("tp", tp_gpus, [sys.executable, str(REPO / "benchmarks" / "tp_engine.py")])
        tp.command += ["--gpus", options.tp_gpus, "--batch", "64", "--seconds", str(seconds)]
        engines.append(tp)
    if options.solo_gpu < gpu_count:
        engines.append(Engine("solo", [options.solo_gpu], [*workload, "64", "--seconds", str(seconds)]))
    if options.shared_gpu < gpu_count:
        for name, batch in (("shared-big", "256"), ("shared-small", "16")):
            engines.append(Engine(name, [options.shared_gpu], [*workload, batch, "--seconds", str(seconds)]))
    for engine in engines:
        engine.command += ["--port", str(engine.port)]
        if engine.name != "tp":
            engine.env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(engine.gpus[0])}
    return engines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tp-gpus", default="0,1", help="GPUs of the tensor-parallel engine (default 0,1)")
    parser.add_argument("--solo-gpu", type=int, default=2, help="GPU of the single-GPU engine (default 2)")
    parser.add_argument("--shared-gpu", type=int, default=3, help="GPU two engines share (default 3)")
    parser.add_argument("--window", type=float, default=20.0, help="derive window, seconds (default 20)")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for attribution")
    options = parser.parse_args()

    import pynvml

    pynvml.nvmlInit()
    gpu_count = pynvml.nvmlDeviceGetCount()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpu_count)]

    def energy(gpus: list[int]) -> float:
        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(handles[i]) for i in gpus) / 1000

    engines = engines_for(options, gpu_count, seconds=options.timeout + 3 * options.window)
    if not engines:
        raise SystemExit(f"this node has {gpu_count} GPU(s): none of the engines fits")
    config = {
        "interval": 1,
        "derive": {"window": options.window},
        "endpoints": [
            {
                "name": e.name,
                "url": e.url,
                "engine": "generic",
                "gpus": "auto",
                "mapping": {"generation_tokens_total": TOKENS},
            }
            for e in engines
        ],
    }
    env = exporter_env()
    exporter, port = start_exporter(["serve"], config, env)  # up before any engine starts
    children: list[subprocess.Popen[bytes]] = [exporter]
    failures: list[str] = []
    pending_seen: set[str] = set()
    first_up: dict[str, int] = {}
    resolved_at: dict[str, int] = {}
    try:
        for engine in engines:
            engine.process = subprocess.Popen(
                engine.command, env={**env, **engine.env}, stdout=subprocess.DEVNULL
            )
            children.append(engine.process)

        deadline = time.monotonic() + options.timeout
        snapshot: dict = {}
        while time.monotonic() < deadline and len(resolved_at) < len(engines):
            time.sleep(1.0)
            snapshot = json.loads(get(f"http://127.0.0.1:{port}/api/v1/snapshot"))
            derived = {d["name"]: d for d in (snapshot.get("derived") or {}).get("endpoints", [])}
            for endpoint in snapshot["endpoints"]:
                name, tick = endpoint["name"], snapshot["tick"]
                if endpoint["attribution"] == "pending":
                    pending_seen.add(name)
                    if endpoint["gpus"] or (derived.get(name) or {}).get("tokens_per_joule") is not None:
                        failures.append(f"{name}: pending yet has GPUs or tokens per joule (tick {tick})")
                if endpoint["up"]:
                    first_up.setdefault(name, tick)
                if endpoint["attribution"] == "auto" and endpoint["up"]:
                    resolved_at.setdefault(name, tick)
        by_name = {e["name"]: e for e in snapshot.get("endpoints", [])}
        for engine in engines:
            got = by_name.get(engine.name, {})
            if got.get("gpus") != engine.gpus or got.get("attribution") != "auto":
                failures.append(
                    f"{engine.name}: attributed {got.get('gpus')} ({got.get('attribution')}: "
                    f"{got.get('attribution_note')}), expected {engine.gpus}"
                )
            if engine.name not in pending_seen:
                failures.append(f"{engine.name}: never seen pending before its engine came up")

        time.sleep(2.0)  # the derive window must hold only resolved, steady steps
        measured = [e for e in engines if e.name in ("tp", "solo")]
        start = {e.name: (energy(e.gpus), token_count(e)) for e in measured}
        time.sleep(options.window)
        end = {e.name: (energy(e.gpus), token_count(e)) for e in measured}
        snapshot = json.loads(get(f"http://127.0.0.1:{port}/api/v1/snapshot"))
    finally:
        stop(children)
        pynvml.nvmlShutdown()

    derived = {d["name"]: d for d in (snapshot.get("derived") or {}).get("endpoints", [])}
    endpoints = {e["name"]: e for e in snapshot["endpoints"]}
    print(
        f"\n{'endpoint':<13} {'gpus':<7} {'shares':<13} {'up→auto ticks':>13} "
        f"{'tok/J exporter':>14} {'tok/J truth':>11} {'error %':>8}"
    )
    for engine in engines:
        got, d = endpoints.get(engine.name, {}), derived.get(engine.name, {})
        ticks = resolved_at.get(engine.name, -1) - first_up.get(engine.name, 0)
        exported, truth, error = d.get("tokens_per_joule"), None, None
        if engine.name in start:
            joules = end[engine.name][0] - start[engine.name][0]
            truth = (end[engine.name][1] - start[engine.name][1]) / joules if joules > 0 else None
            if truth and exported is not None:
                error = 100 * (exported - truth) / truth
            if error is None or abs(error) > MAX_ERROR_PERCENT:
                failures.append(f"{engine.name}: tokens per joule {exported} vs truth {truth}")
        shares = ",".join(f"{s:.3f}" for s in got.get("gpu_shares", []))
        print(
            f"{engine.name:<13} {got.get('gpus')!s:<7} {shares:<13} {ticks:>13} "
            f"{number(exported, '.2f'):>14} {number(truth, '.2f'):>11} {number(error, '+.2f'):>8}"
        )
    shared = [e for e in engines if e.name.startswith("shared-")]
    if shared:
        gpu = shared[0].gpus[0]
        gpu_energy = next(
            (g["energy_joules"] for g in snapshot["derived"]["gpus"] if g["index"] == gpu), None
        )
        parts = [derived.get(e.name, {}).get("energy_joules") for e in shared]
        share_sum = sum(endpoints[e.name]["gpu_shares"][0] for e in shared)
        samples = next(g.get("process_sm_ratios") for g in snapshot["gpus"] if g["info"]["index"] == gpu)
        print(
            f"\nshared GPU {gpu}: energy {gpu_energy} J over the window; endpoints "
            f"{[round(p, 1) if p else p for p in parts]} J; shares add up to {share_sum:.4f}; "
            f"per-process SM samples {samples}"
        )
        if abs(share_sum - 1) > 1e-9:
            failures.append(f"shared GPU {gpu}: shares add up to {share_sum}")
        if gpu_energy is None or None in parts or abs(sum(parts) - gpu_energy) > 0.01 * gpu_energy:  # type: ignore[arg-type]
            failures.append(f"shared GPU {gpu}: endpoint energies {parts} do not add up to {gpu_energy}")
    return verdict(failures)


if __name__ == "__main__":
    raise SystemExit(main())
