"""A toy tensor-parallel decode engine: one worker process per GPU, an all-reduce every layer, one /metrics.

    python benchmarks/tp_engine.py --gpus 0,1 --port PORT [--batch 64] [--seconds 60]

Shaped like a tensor-parallel serving engine (vLLM with `--tensor-parallel-size 2`): the launcher process
spawns one worker per GPU, waits until every worker has its weights on its GPU, and only then starts
listening on PORT with its Prometheus page, so an exporter started first sees the engine come up with its
GPU processes already there. Each decode step runs `--layers` Megatron-style MLP blocks: a column-parallel
[hidden, hidden/N] matmul and tanh, a row-parallel [hidden/N, hidden] matmul, then an all-reduce (NCCL on
CUDA, gloo with `--device cpu`) across the N workers, and synchronizes; a one-element all-reduce before each
step lets all workers stop at the same step. Every step adds the batch to
`decode_generation_tokens_total`, the name `benchmarks/decode_workload.py` uses. GPU indices are NVML's
(CUDA_DEVICE_ORDER=PCI_BUS_ID). SIGTERM/SIGINT end it cleanly (exit 0). `--device python` needs no PyTorch:
the same launcher and worker processes, each step a small plain-Python product and a barrier in place of the
all-reduce, so the engine's shape (workers are the listener's children, lock-step, clean stop) is tested
where PyTorch is not installed (`make test`).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier as BarrierType
from multiprocessing.synchronize import Event

from common import free_port
from decode_workload import Stop, positive_float, positive_int


def worker(
    rank: int,
    gpus: list[int] | None,
    world: int,
    options: argparse.Namespace,
    rendezvous_port: int,
    tokens: Synchronized[float],
    ready: Synchronized[int],
    stop: Event,
) -> None:
    """One tensor-parallel rank: its shard of every layer, one all-reduce per layer, until `stop`."""
    import torch
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop
    cuda = gpus is not None
    if cuda:
        assert gpus is not None
        torch.cuda.set_device(gpus[rank])
        device = torch.device("cuda", gpus[rank])
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{rendezvous_port}",
        rank=rank,
        world_size=world,
    )
    hidden, shard = options.hidden, options.hidden // world
    generator = torch.Generator(device="cpu").manual_seed(rank)
    scale = 1.0 / math.sqrt(hidden)
    layers = [
        (
            (torch.randn(hidden, shard, generator=generator) * scale).to(device=device, dtype=dtype),
            (torch.randn(shard, hidden, generator=generator) * scale).to(device=device, dtype=dtype),
        )
        for _ in range(options.layers)
    ]
    activation = torch.randn(options.batch, hidden, generator=generator).to(device=device, dtype=dtype)
    with torch.inference_mode():
        dist.all_reduce(activation.clone())  # warm-up: communicators built, kernels chosen
        if cuda:
            torch.cuda.synchronize()
        with ready.get_lock():
            ready.value += 1
        stopping = torch.zeros(1, device=device)
        while True:
            # Every rank leaves at the same step: one rank leaving alone would leave the others waiting in
            # an all-reduce forever.
            stopping.fill_(1.0 if stop.is_set() else 0.0)
            dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
            if stopping.item() > 0:
                break
            state = activation
            for column, row in layers:
                partial = torch.tanh(state @ column) @ row
                dist.all_reduce(partial)
                state = partial
            if cuda:
                torch.cuda.synchronize()
            if rank == 0:
                with tokens.get_lock():
                    tokens.value += options.batch
    dist.destroy_process_group()


def python_worker(
    rank: int,
    options: argparse.Namespace,
    tokens: Synchronized[float],
    ready: Synchronized[int],
    stop: Event,
    barrier: BarrierType,
    stopping: Synchronized[int],
) -> None:
    """One rank without PyTorch: a plain-Python product per layer, a barrier where the all-reduce would be."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop
    hidden = options.hidden
    weights = [[math.sin(rank + i * hidden + j) for j in range(hidden)] for i in range(options.layers)]
    state = [1.0] * hidden
    with ready.get_lock():
        ready.value += 1
    try:
        while True:
            if rank == 0:  # every rank leaves at the same step, as with the all-reduce of the flag
                stopping.value = 1 if stop.is_set() else 0
            barrier.wait(timeout=30)
            if stopping.value:
                break
            for row in weights:
                total = sum(a * b for a, b in zip(state, row, strict=True))
                state = [math.tanh(total * w / hidden) for w in row]
            barrier.wait(timeout=30)  # the all-reduce: no rank runs ahead
            if rank == 0:
                with tokens.get_lock():
                    tokens.value += options.batch
    except threading.BrokenBarrierError:  # another rank died: end too
        return


class TokenCollector:
    """Exposes the workers' shared token count on the launcher's /metrics."""

    def __init__(self, tokens: Synchronized[float], batch: int) -> None:
        self._tokens = tokens
        self._batch = batch

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        generated = CounterMetricFamily(
            "decode_generation_tokens", "Tokens generated by the tensor-parallel decode loop."
        )
        generated.add_metric([], self._tokens.value)
        yield generated
        batch = GaugeMetricFamily("decode_batch_size", "Sequences per decode step.")
        batch.add_metric([], self._batch)
        yield batch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gpus", default="0,1", help="NVML indices of the GPUs, one worker each (default 0,1)"
    )
    parser.add_argument("--port", type=int, required=True, help="port of the /metrics server")
    parser.add_argument("--batch", type=positive_int, default=64, help="sequences per step (default 64)")
    parser.add_argument("--seconds", type=positive_float, default=60.0, help="run time (default 60)")
    parser.add_argument("--layers", type=positive_int, default=8, help="MLP blocks per step (default 8)")
    parser.add_argument("--hidden", type=positive_int, help="hidden size (default 4096; CPU 64)")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu", "python"],
        default="cuda",
        help="cuda (NCCL), cpu (gloo; PyTorch on the CPU) or python (no PyTorch; default cuda)",
    )
    options = parser.parse_args(argv)
    options.hidden = options.hidden or (4096 if options.device == "cuda" else 64)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    from prometheus_client import CollectorRegistry, start_http_server

    gpu_list = [int(item) for item in options.gpus.split(",")]
    gpus = gpu_list if options.device == "cuda" else None
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # workers inherit it: cuda:N is NVML's GPU N
    context = mp.get_context("spawn")
    tokens = context.Value("d", 0.0)
    ready = context.Value("i", 0)
    stop = context.Event()
    rendezvous = free_port()
    if options.device == "python":
        barrier, stopping = context.Barrier(len(gpu_list)), context.Value("i", 0)
        workers = [
            context.Process(
                target=python_worker,
                args=(rank, options, tokens, ready, stop, barrier, stopping),
                name=f"tp-rank{rank}",
            )
            for rank in range(len(gpu_list))
        ]
    else:
        workers = [
            context.Process(
                target=worker,
                args=(rank, gpus, len(gpu_list), options, rendezvous, tokens, ready, stop),
                name=f"tp-rank{rank}",
            )
            for rank in range(len(gpu_list))
        ]
    for process in workers:
        process.start()

    requested = Stop()  # a plain flag: the handler must not take the Event's lock the main thread may hold
    signal.signal(signal.SIGTERM, requested)
    signal.signal(signal.SIGINT, requested)
    deadline = time.monotonic() + 300
    while ready.value < len(workers) and not requested.requested:
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in workers):
            stop.set()
            print("tp_engine: a worker failed to start", file=sys.stderr)
            return 1
        time.sleep(0.05)
    registry = CollectorRegistry()
    registry.register(TokenCollector(tokens, options.batch))  # type: ignore[arg-type]
    start_http_server(options.port, addr="127.0.0.1", registry=registry)
    print("serving", flush=True)
    end = time.monotonic() + options.seconds
    while not requested.requested and time.monotonic() < end:
        time.sleep(0.1)
    stop.set()
    for process in workers:
        process.join(timeout=30)
    return 0 if all(p.exitcode == 0 for p in workers) else 1


if __name__ == "__main__":
    sys.exit(main())
