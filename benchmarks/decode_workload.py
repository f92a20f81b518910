"""A decode-like PyTorch loop that serves its own Prometheus `/metrics`, for validating tokens per joule.

    python benchmarks/decode_workload.py BATCH --port PORT [--seconds 60] [--layers 8] [--hidden 4096]

Each step multiplies a [BATCH, hidden] activation through `layers` random [hidden, hidden] weight matrices
(bf16 on CUDA) with a tanh after each, then synchronizes: the shape of one decode step of a transformer's
weight-streaming part, as in docs/h100-reference.md's batch table. Nothing is downloaded. Every step adds
BATCH to `decode_generation_tokens_total`; each of the BATCH sequences finishes after
`--tokens-per-request` steps, adding BATCH to `decode_requests_total`. `decode_steps_total` counts steps.

Without CUDA (or with `--device cpu`) it runs float32 on the CPU with tiny default sizes (hidden 64,
2 layers). `--device python` does the same tiny products in plain Python, without PyTorch: it smoke-tests
the loop, its counters and its /metrics page on machines without PyTorch (`make test` installs none; the
real run is `benchmarks/decode_validation.py` on a GPU node). PyTorch is imported only to run a step, so
`--help` and argument checks need none; without it, `--device auto|cuda|cpu` exits 2 with one line.
SIGTERM/SIGINT end it cleanly (exit 0); on exit it prints one JSON line with its totals.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import FrameType
from typing import Any

COUNTER_TOKENS = "decode_generation_tokens"  # exposed as decode_generation_tokens_total
COUNTER_REQUESTS = "decode_requests"
COUNTER_STEPS = "decode_steps"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("batch", type=positive_int, help="sequences decoded per step (tokens per step)")
    parser.add_argument("--port", type=port_number, required=True, help="port of the /metrics server")
    parser.add_argument("--address", default="127.0.0.1", help="address of the /metrics server")
    parser.add_argument("--seconds", type=positive_float, default=60.0, help="run time (default 60)")
    parser.add_argument("--layers", type=positive_int, help="weight matrices per step (default 8; CPU 2)")
    parser.add_argument("--hidden", type=positive_int, help="hidden size (default 4096; CPU 64)")
    parser.add_argument("--tokens-per-request", type=positive_int, default=256, help="steps per sequence")
    parser.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu", "python"],
        default="auto",
        help="auto: CUDA if available, else CPU (both need PyTorch); python: plain Python, no PyTorch, "
        "for smoke tests only (default auto)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


class Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


Step = Callable[[], None]


class Unavailable(Exception):
    """The device asked for cannot run here; the message is one line for the user."""


def torch_step(args: argparse.Namespace) -> tuple[Step, dict[str, Any], AbstractContextManager[Any]]:
    """One decode step with PyTorch (bf16 on CUDA, float32 on the CPU), and what the summary reports."""
    try:
        import torch
    except ImportError:
        raise Unavailable(
            "PyTorch is not installed: pip install torch (the GPU run), or --device python for a smoke "
            "test without it"
        ) from None
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        raise Unavailable("--device cuda but CUDA is not available")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    layers = args.layers or (8 if cuda else 2)
    hidden = args.hidden or (4096 if cuda else 64)
    if not cuda:
        torch.set_num_threads(1)
    generator = torch.Generator(device="cpu").manual_seed(0)
    scale = 1.0 / math.sqrt(hidden)
    weights = [
        (torch.randn(hidden, hidden, generator=generator) * scale).to(device=device, dtype=dtype)
        for _ in range(layers)
    ]
    activation = torch.randn(args.batch, hidden, generator=generator).to(device=device, dtype=dtype)

    def step() -> None:
        hidden_state = activation
        for weight in weights:
            hidden_state = torch.tanh(hidden_state @ weight)
        if cuda:
            torch.cuda.synchronize()

    info = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "layers": layers}
    return step, {**info, "hidden": hidden}, torch.inference_mode()


def python_step(args: argparse.Namespace) -> tuple[Step, dict[str, Any], AbstractContextManager[Any]]:
    """The same step in plain Python on tiny sizes (hidden 8, 2 layers): no PyTorch, smoke tests only."""
    layers = args.layers or 2
    hidden = args.hidden or 8
    rng = random.Random(0)
    scale = 1.0 / math.sqrt(hidden)
    weights = [[[rng.gauss(0, scale) for _ in range(hidden)] for _ in range(hidden)] for _ in range(layers)]
    activation = [[rng.gauss(0, 1) for _ in range(hidden)] for _ in range(args.batch)]

    def step() -> None:
        state = activation
        for weight in weights:
            columns = list(zip(*weight, strict=True))
            state = [
                [math.tanh(sum(a * w for a, w in zip(row, column, strict=True))) for column in columns]
                for row in state
            ]

    info = {"device": "python", "dtype": "float64", "layers": layers, "hidden": hidden}
    return step, info, nullcontext()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        step, info, context = python_step(args) if args.device == "python" else torch_step(args)
    except Unavailable as exc:
        print(f"decode_workload: {exc}", file=sys.stderr)
        return 2
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    tokens = Counter(
        COUNTER_TOKENS, "Tokens generated by the decode loop (batch per step).", registry=registry
    )
    requests = Counter(COUNTER_REQUESTS, "Sequences finished by the decode loop.", registry=registry)
    steps = Counter(COUNTER_STEPS, "Decode steps completed.", registry=registry)
    batch_gauge = Gauge("decode_batch_size", "Sequences per decode step.", registry=registry)
    batch_gauge.set(args.batch)

    stop = Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start_http_server(args.port, addr=args.address, registry=registry)

    started = time.monotonic()
    done = 0
    with context:  # torch.inference_mode() for PyTorch
        while not stop.requested and time.monotonic() - started < args.seconds:
            step()
            done += 1
            tokens.inc(args.batch)
            steps.inc()
            if done % args.tokens_per_request == 0:
                requests.inc(args.batch)
    elapsed = time.monotonic() - started
    summary: dict[str, Any] = {
        "device": info["device"],
        "dtype": info["dtype"],
        "batch": args.batch,
        "layers": info["layers"],
        "hidden": info["hidden"],
        "steps": done,
        "tokens": done * args.batch,
        "seconds": round(elapsed, 3),
        "tokens_per_second": round(done * args.batch / elapsed, 1) if elapsed > 0 else None,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
