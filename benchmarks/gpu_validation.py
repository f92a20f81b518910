"""Validate the NVML/GPM path on real GPUs against the H100 reference table.

    python benchmarks/gpu_validation.py [--gpus 0 | 0,1 | all] [--seconds 10]

Starts `tpw-exporter serve --interval 1` first (as in production, where engines start and restart under a
running exporter), then drives the four reference workloads with PyTorch, one at a time, on every chosen
GPU at once (idle, bf16 GEMM 8192³ in a loop, device-to-device copy of 2 GiB buffers, 1000 tiny kernels
then sync), reads `/api/v1/snapshot` once per tick while each runs, and prints each GPU's NVML
utilisation and GPM ratios next to the reference values (docs/h100-reference.md). With two or more GPUs
it ends with a mixed phase: a different workload on each GPU at the same time (GEMM, copy, tiny kernels,
idle, in turn), and checks that each GPU's roofline bound (`tpw_gpu_bound`) follows its own workload.
Exits non-zero if a GPM ratio is missing or the pattern that tells the workloads apart is not seen on
some GPU (tensor high only for the GEMM, DRAM high only for the copy, SMs idle under the tiny-kernel loop).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

from common import exporter_env, start_exporter, stop, verdict

# docs/h100-reference.md, percent: (nvidia-smi util, GRAPHICS, SM, OCCUPANCY, ANY_TENSOR, DRAM_BW, W)
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


# What each workload's GPU must be classified as in the mixed phase (exporter.derive.classify_bound).
EXPECTED_BOUND = {"gemm": "compute", "copy": "memory", "tiny": "latency", "idle": "idle"}
MIXED_ORDER = ("gemm", "copy", "tiny", "idle")
MIXED_WINDOW_SECONDS = 4  # the derive window of the exporter, so the mixed phase settles quickly


def snapshot(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/snapshot", timeout=5) as response:
        return json.load(response)


def observe(port: int, gpus: list[int], samples: int) -> tuple[dict[int, dict[str, float]], dict]:
    """Per GPU, the mean of NVML utilisation, power and the GPM ratios over `samples` ticks; and the last
    snapshot."""
    totals: dict[int, dict[str, list[float]]] = {gpu: {} for gpu in gpus}
    seen_ticks: set[int] = set()
    snap: dict = {}
    while len(seen_ticks) < samples:
        snap = snapshot(port)
        if snap["tick"] in seen_ticks:
            time.sleep(0.2)
            continue
        seen_ticks.add(snap["tick"])
        for gpu in gpus:
            sample = next(g for g in snap["gpus"] if g["info"]["index"] == gpu)
            if not sample["up"]:
                raise SystemExit(f"gpu {gpu} is down: {sample['error']}")
            into = totals[gpu]
            into.setdefault("utilization", []).append(sample["utilization_ratio"])
            into.setdefault("power", []).append(sample["power_watts"])
            for key, value in ((sample.get("profiling") or {}).get("ratios") or {}).items():
                into.setdefault(key, []).append(value)
    means = {gpu: {key: sum(v) / len(v) for key, v in values.items()} for gpu, values in totals.items()}
    return means, snap


class Workloads:
    """One child per GPU, each running its workload; `start` waits until every one is steady."""

    def __init__(self, assignment: dict[int, str], seconds: float, env: dict[str, str]) -> None:
        self.assignment = assignment
        self.children = {
            gpu: subprocess.Popen(
                [sys.executable, __file__, "--workload", name, "--seconds", str(seconds), "--gpus", str(gpu)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for gpu, name in assignment.items()
        }

    def wait_steady(self) -> list[str]:
        return [
            f"workload {self.assignment[gpu]} on GPU {gpu} did not start"
            for gpu, child in self.children.items()
            if child.stdout is None or child.stdout.readline().strip() != "steady"
        ]

    def finish(self) -> list[str]:
        failures = []
        for gpu, child in self.children.items():
            if child.wait() != 0:
                failures.append(f"workload {self.assignment[gpu]} on GPU {gpu} exited {child.returncode}")
        return failures


def check_pattern(gpu: int, by_name: dict[str, dict[str, float]]) -> list[str]:
    """The pattern that tells the reference workloads apart, on one GPU."""
    failures: list[str] = []
    if not all(key in by_name.get(n, {}) for n in REFERENCE for key in RATIOS):
        return [f"GPU {gpu}: GPM ratios missing"]
    if not by_name["gemm"]["tensor_active"] > 0.5 > by_name["copy"]["tensor_active"]:
        failures.append(f"GPU {gpu}: tensor activity does not single out the GEMM")
    if (
        not by_name["copy"]["dram_bandwidth_utilization"]
        > 0.6
        > by_name["gemm"]["dram_bandwidth_utilization"]
    ):
        failures.append(f"GPU {gpu}: DRAM bandwidth utilisation does not single out the copy")
    tiny = by_name["tiny"]
    if not (tiny["graphics_active"] > 0.1 and tiny["sm_active"] < 0.05):
        failures.append(f"GPU {gpu}: tiny-kernel loop does not show a busy engine with idle SMs")
    # What a doubled or mis-paired GPM window looked like on the 2×H100 (docs/multi-gpu.md): SM activity
    # above the engine's own activity, occupancy twice the reference (0.28), DRAM twice (0.48).
    gemm = by_name["gemm"]
    if gemm["sm_active"] > gemm["graphics_active"] + 0.02:
        failures.append(f"GPU {gpu}: GEMM SM activity {gemm['sm_active']:.2f} above graphics activity")
    if not 0.08 <= gemm["sm_occupancy"] <= 0.2:
        failures.append(f"GPU {gpu}: GEMM SM occupancy {gemm['sm_occupancy']:.3f}, reference 0.142")
    if not gemm["dram_bandwidth_utilization"] < 0.4:
        failures.append(f"GPU {gpu}: GEMM DRAM {gemm['dram_bandwidth_utilization']:.2f}, reference 0.255")
    return failures


def print_table(gpu: int, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\nGPM validation on GPU {gpu}: exporter (3-tick mean) vs reference, percent")
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
        if all(key in seen for key in RATIOS):
            values = [100 * seen["utilization"]] + [100 * seen[key] for key in RATIOS]
            print(
                f"{'':<6} {'exporter':<9} " + " ".join(f"{v:6.1f}" for v in values) + f" {seen['power']:6.0f}"
            )


def mixed_phase(port: int, gpus: list[int], seconds: float, env: dict[str, str]) -> list[str]:
    """A different workload on each GPU at once; each GPU's bound must follow its own workload."""
    assignment = {gpu: MIXED_ORDER[slot % len(MIXED_ORDER)] for slot, gpu in enumerate(gpus)}
    workloads = Workloads(assignment, seconds + MIXED_WINDOW_SECONDS, env)
    failures = workloads.wait_steady()
    time.sleep(MIXED_WINDOW_SECONDS + 1.5)  # the derive window lies wholly inside the steady state
    means, snap = observe(port, gpus, samples=2)
    failures += workloads.finish()
    bounds = {
        g["index"]: (g.get("bound"), g.get("evidence") or {})
        for g in (snap.get("derived") or {}).get("gpus", [])
    }
    print(f"\nmixed phase: one workload per GPU at once, bound over a {MIXED_WINDOW_SECONDS} s window")
    print(
        f"{'gpu':>3} {'workload':<8} {'bound':<8} {'expected':<8} "
        f"{'SM':>6} {'TENSOR':>6} {'DRAM':>6} {'GRAPH':>6}"
    )
    for gpu, name in assignment.items():
        bound, _ = bounds.get(gpu, (None, {}))
        seen = means[gpu]
        print(
            f"{gpu:>3} {name:<8} {bound!s:<8} {EXPECTED_BOUND[name]:<8} "
            + " ".join(
                f"{100 * seen.get(k, -0.01):6.1f}"
                for k in ("sm_active", "tensor_active", "dram_bandwidth_utilization", "graphics_active")
            )
        )
        if bound != EXPECTED_BOUND[name]:
            failures.append(
                f"mixed: GPU {gpu} running {name} is classified {bound}, not {EXPECTED_BOUND[name]}"
            )
    return failures


def gpu_list(text: str) -> list[int] | None:
    """`0,1` → [0, 1]; `all` → None (every GPU the exporter sees)."""
    return None if text == "all" else [int(item) for item in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="0", help="GPU indices to drive, or all (default 0)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each workload (default 10)")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one workload in a child
    options = parser.parse_args()
    if options.workload:
        run_workload(options.workload, options.seconds, int(options.gpus))
        return 0

    env = {
        **exporter_env(),
        "TPW_DERIVE__WINDOW": str(MIXED_WINDOW_SECONDS),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    exporter, port = start_exporter(["serve", "--interval", "1"], env=env)
    failures: list[str] = []
    rows: dict[int, list[tuple[str, dict[str, float]]]] = {}
    try:
        gpus = gpu_list(options.gpus) or sorted(g["info"]["index"] for g in snapshot(port)["gpus"])
        for name in REFERENCE:
            workloads = Workloads(dict.fromkeys(gpus, name), options.seconds, env)
            failures += workloads.wait_steady()
            time.sleep(1.5)  # the next GPM window lies wholly inside the steady state
            means, _ = observe(port, gpus, samples=3)
            for gpu in gpus:
                rows.setdefault(gpu, []).append((name, means[gpu]))
            failures += workloads.finish()
        if len(gpus) > 1:
            failures += mixed_phase(port, gpus, options.seconds, env)
    finally:
        stop([exporter], timeout=10)

    for gpu, gpu_rows in rows.items():
        print_table(gpu, gpu_rows)
        failures += check_pattern(gpu, dict(gpu_rows))
    return verdict(failures)


if __name__ == "__main__":
    raise SystemExit(main())
