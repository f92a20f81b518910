"""Validate the NVML/GPM path on a real GPU against the H100 reference table.

    python benchmarks/gpu_validation.py [--gpu 0] [--seconds 10]

Starts `tpw-exporter serve --interval 1`, drives the four reference workloads with PyTorch, one at a time
(idle, bf16 GEMM 8192³ in a loop, device-to-device copy of 2 GiB buffers, 1000 tiny kernels then sync),
reads the exporter's `/api/v1/snapshot` once per second while each runs, and prints the exporter's NVML
utilisation and GPM ratios next to the reference values from `shared/h100-reference.md`.
Exits non-zero if a GPM ratio is missing or the pattern that tells the workloads apart is not seen
(tensor high only for the GEMM, DRAM high only for the copy, SMs idle under the tiny-kernel loop).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request

from common import REPO, exporter_env, free_port, verdict

# shared/h100-reference.md, percent: (nvidia-smi util, GRAPHICS, SM, OCCUPANCY, ANY_TENSOR, DRAM_BW, W)
REFERENCE = {
    "idle": (0, 0.0, 0.0, 0.0, 0.0, 0.001, 114),
    "gemm": (99, 99.2, 95.8, 14.2, 93.0, 25.5, 700),
    "copy": (99, 99.4, 98.9, 79.3, 0.0, 89.5, 380),
    "tiny": (36, 35.9, 0.035, 0.002, 0.0, 0.001, 126),
}
RATIOS = ("graphics_active", "sm_active", "sm_occupancy", "tensor_active", "dram_bandwidth_utilization")


def run_workload(name: str, seconds: float, gpu: int) -> None:
    """The child process: one workload until the time is up; prints "steady" once it runs at full speed."""
    import torch

    device = torch.device(f"cuda:{gpu}")
    if name == "idle":
        step = lambda: time.sleep(0.05)  # noqa: E731
    elif name == "gemm":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

        def step() -> None:
            for _ in range(10):
                torch.matmul(a, b)
    elif name == "copy":
        src = torch.empty(2 * 1024**3, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)

        def step() -> None:
            for _ in range(10):
                dst.copy_(src)
    elif name == "tiny":
        x = torch.zeros(1, device=device)

        def step() -> None:
            for _ in range(1000):
                x.add_(1)
    else:
        raise SystemExit(f"unknown workload {name!r}")
    step()
    torch.cuda.synchronize(device)  # warm-up done: libraries loaded, kernels chosen
    print("steady", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        step()
        torch.cuda.synchronize(device)


def snapshot(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/snapshot", timeout=5) as response:
        return json.load(response)


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("exporter exited early")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("exporter not ready after 60 s")


def observe(port: int, gpu: int, samples: int) -> dict[str, float]:
    """Mean of NVML utilisation, power and the GPM ratios over `samples` ticks."""
    totals: dict[str, list[float]] = {}
    seen_ticks: set[int] = set()
    while len(seen_ticks) < samples:
        snap = snapshot(port)
        if snap["tick"] in seen_ticks:
            time.sleep(0.2)
            continue
        seen_ticks.add(snap["tick"])
        sample = next(g for g in snap["gpus"] if g["info"]["index"] == gpu)
        if not sample["up"]:
            raise SystemExit(f"gpu {gpu} is down: {sample['error']}")
        totals.setdefault("utilization", []).append(sample["utilization_ratio"])
        totals.setdefault("power", []).append(sample["power_watts"])
        for key, value in ((sample.get("profiling") or {}).get("ratios") or {}).items():
            totals.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", type=int, default=0, help="GPU index to drive (default 0)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each workload (default 10)")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one workload in a child
    options = parser.parse_args()
    if options.workload:
        run_workload(options.workload, options.seconds, options.gpu)
        return 0

    port = free_port()
    env = exporter_env()
    exporter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--interval",
            "1",
            "--listen-address",
            f"127.0.0.1:{port}",
        ],
        cwd=REPO,
        env=env,
    )
    failures: list[str] = []
    rows = []
    try:
        wait_ready(port, exporter)
        for name in REFERENCE:
            child = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--workload",
                    name,
                    "--seconds",
                    str(options.seconds),
                    "--gpu",
                    str(options.gpu),
                ],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            if child.stdout is None or child.stdout.readline().strip() != "steady":
                failures.append(f"workload {name} did not start")
                continue
            time.sleep(1.5)  # the next GPM window lies wholly inside the steady state
            rows.append((name, observe(port, options.gpu, samples=3)))
            child.wait()
            if child.returncode != 0:
                failures.append(f"workload {name} exited {child.returncode}")
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=10)

    print(f"\nGPM validation on GPU {options.gpu}: exporter (3-tick mean) vs reference, percent")
    print(
        f"{'workload':<6} {'source':<9} {'util':>6} {'GRAPH':>6} {'SM':>6} {'OCC':>6} {'TENSOR':>6} "
        f"{'DRAM':>6} {'W':>6}"
    )
    for name, seen in rows:
        ref = REFERENCE[name]
        print(
            f"{name:<6} {'reference':<9} {ref[0]:6.1f} "
            + " ".join(f"{v:6.1f}" for v in ref[1:6])
            + f" {ref[6]:6.0f}"
        )
        missing = [key for key in RATIOS if key not in seen]
        if missing:
            failures.append(f"{name}: GPM ratios missing: {missing}")
            continue
        values = [100 * seen["utilization"]] + [100 * seen[key] for key in RATIOS]
        print(f"{'':<6} {'exporter':<9} " + " ".join(f"{v:6.1f}" for v in values) + f" {seen['power']:6.0f}")
    by_name = dict(rows)
    if all(key in by_name.get(n, {}) for n in REFERENCE for key in RATIOS):
        if not by_name["gemm"]["tensor_active"] > 0.5 > by_name["copy"]["tensor_active"]:
            failures.append("tensor activity does not single out the GEMM")
        if (
            not by_name["copy"]["dram_bandwidth_utilization"]
            > 0.6
            > by_name["gemm"]["dram_bandwidth_utilization"]
        ):
            failures.append("DRAM bandwidth utilisation does not single out the copy")
        tiny = by_name["tiny"]
        if not (tiny["graphics_active"] > 0.1 and tiny["sm_active"] < 0.05):
            failures.append("tiny-kernel loop does not show a busy engine with idle SMs")
    return verdict(failures)


if __name__ == "__main__":
    raise SystemExit(main())
