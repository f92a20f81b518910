"""The tensor-parallel toy engine (benchmarks/tp_engine.py) on CPU: two ranks behind one /metrics.

On a GPU node `benchmarks/multi_gpu_attribution.py` runs it with NCCL; here, where `make test` installs no
PyTorch, it runs its plain-Python workers (`--device python`: a barrier in place of the all-reduce) so that
its shape is checked where CI runs: the listener serves the workers' tokens, the workers are its children
(what `gpus: auto` relies on to give the engine all its GPUs), and SIGTERM ends it cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

from helpers import REPO, free_port, wait_for

from exporter.attribution import listener_process_tree


def tokens(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("decode_generation_tokens_total "):
                return float(line.split()[1])
    raise ValueError("no token counter")


def test_tp_engine_serves_its_workers_tokens_and_its_workers_are_its_children() -> None:
    import psutil

    port = free_port()
    options = ["--device", "python", "--gpus", "0,1", "--port", str(port), "--batch", "8", "--seconds", "60"]
    engine = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "tp_engine.py"), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert engine.stdout is not None and engine.stdout.readline().strip() == "serving"
        first = wait_for(lambda: tokens(port), 30, "the first tokens")
        wait_for(lambda: tokens(port) > first, 30, "more tokens")
        assert tokens(port) % 8 == 0
        tree = listener_process_tree(port)
        assert tree is not None and engine.pid in tree
        workers = {p.pid for p in psutil.Process(engine.pid).children()}
        assert len(workers) >= 2 and workers <= tree
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 0
