"""Validate tokens per joule and the roofline bound on a real GPU with a decode-like PyTorch loop.

    python benchmarks/decode_validation.py [--batches 1 64 1024] [--seconds 20] [--gpu 0]

For each batch size: start `benchmarks/decode_workload.py` (bf16, 8 × [B,4096]×[4096,4096] + tanh per step,
sync each step; it serves `decode_generation_tokens_total` on a local /metrics), let it warm up, then run
the exporter in-process for a window of `--seconds`: a `Daemon` with `NvmlSource`, an endpoint source for
the workload and the `Deriver` stage, ticking every `--interval`. The endpoint source is the exporter's
own (`exporter.sources.endpoints`, generic mapping `generation_tokens_total:
decode_generation_tokens_total`, GPUs from config) when it can be imported (it needs pydantic); otherwise a
minimal httpx scrape of the same page feeds the Deriver the same `EndpointSample`s.

Ground truth, read independently right after the window's first and last ticks: the workload's own token
counter (its /metrics) and NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`).

Prints one row per batch: bound classification, evidence ratios, tokens/s, tokens/J (exporter), tokens/J
(ground truth), error %. Exits 1 if batch 1 is not memory- or latency-bound, batch 1024 is not
compute-bound, or any tokens-per-joule error exceeds `--max-error-percent` (2 %); 2 on bad arguments or
when no GPU can be used.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, free_port

from exporter.daemon import Daemon, SnapshotStage
from exporter.derive.window import Deriver
from exporter.model import EndpointSample, EndpointValue
from exporter.render.derived import derived_families
from exporter.render.exposition import Renderer
from exporter.sources.base import Collected, Source, SourceError

WORKLOAD = REPO / "benchmarks" / "decode_workload.py"
ENDPOINT_NAME = "decode"
TOKENS_METRIC = "decode_generation_tokens_total"
REQUESTS_METRIC = "decode_requests_total"
MAPPING = {"generation_tokens_total": TOKENS_METRIC, "requests_total": REQUESTS_METRIC}
EXPECTED_BOUNDS: dict[int, frozenset[str]] = {
    1: frozenset({"memory", "latency"}),
    1024: frozenset({"compute"}),
}
SIGNALS = ("tensor", "fp", "dram", "sm", "graphics")


def counter_value(text: str, name: str) -> float | None:
    """Sum of the samples called `name` on a Prometheus text page; None if there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return sum(values) if values else None


class WorkloadSource(Source):
    """The fallback endpoint source: scrape the workload's page with httpx into an `EndpointSample`."""

    name = "endpoints"

    def __init__(self, url: str, gpu: int, clock: Callable[[], float] = time.monotonic) -> None:
        import httpx

        self.url = url
        self.gpu = gpu
        self._clock = clock
        self._client = httpx.AsyncClient(trust_env=False, timeout=2.0)

    async def collect(self) -> Collected:
        started = self._clock()
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            text = response.text
        except Exception as exc:
            sample = EndpointSample(
                name=ENDPOINT_NAME,
                engine="generic",
                url=self.url,
                up=False,
                error=str(exc),
                timestamp=started,
            )
            return Collected(endpoints=(sample,))
        values = []
        tokens = counter_value(text, TOKENS_METRIC)
        if tokens is not None:
            values.append(EndpointValue("generation_tokens_total", "", tokens))
        requests = counter_value(text, REQUESTS_METRIC)
        if requests is not None:
            values.append(EndpointValue("requests_total", "", requests, "unknown"))
        sample = EndpointSample(
            name=ENDPOINT_NAME,
            engine="generic",
            url=self.url,
            timestamp=started,
            duration_seconds=self._clock() - started,
            values=tuple(values),
            gpus=(self.gpu,),
            attribution="config",
        )
        return Collected(endpoints=(sample,))

    async def close(self) -> None:
        await self._client.aclose()


def endpoint_pipeline(url: str, gpu: int) -> tuple[Source, list[SnapshotStage], str]:
    """The exporter's endpoint source + attribution stage when importable, else the httpx fallback."""
    try:
        from exporter.attribution import Attributor
        from exporter.config import EndpointConfig
        from exporter.sources.endpoints import EndpointsSource

        config = EndpointConfig(name=ENDPOINT_NAME, url=url, engine="generic", mapping=MAPPING, gpus=[gpu])
        return EndpointsSource([config]), [Attributor([config])], "exporter.sources.endpoints"
    except Exception as exc:  # no pydantic on the GPU host, or the endpoint layer is not there
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return WorkloadSource(url, gpu), [], f"built-in httpx scrape ({reason})"


@dataclass
class Measurement:
    batch: int
    endpoint_path: str
    bound: str | None = None
    evidence: dict[str, float] = field(default_factory=dict)
    tokens_per_second: float | None = None
    tokens_per_joule: float | None = None
    truth_tokens_per_second: float | None = None
    truth_tokens_per_joule: float | None = None
    power_watts: float | None = None
    utilization: float | None = None
    window_seconds: float | None = None
    problem: str | None = None

    @property
    def error_percent(self) -> float | None:
        if self.tokens_per_joule is None or not self.truth_tokens_per_joule:
            return None
        return (self.tokens_per_joule - self.truth_tokens_per_joule) / self.truth_tokens_per_joule * 100


def failures(measurements: Sequence[Measurement], max_error_percent: float) -> list[str]:
    """Why the validation fails (empty when it passes)."""
    found = []
    for m in measurements:
        if m.problem:
            found.append(f"batch {m.batch}: {m.problem}")
            continue
        expected = EXPECTED_BOUNDS.get(m.batch)
        if expected is not None and m.bound not in expected:
            found.append(f"batch {m.batch}: bound {m.bound} (expected {' or '.join(sorted(expected))})")
        error = m.error_percent
        if error is None:
            found.append(f"batch {m.batch}: no tokens per joule from the exporter or the ground truth")
        elif abs(error) > max_error_percent:
            found.append(
                f"batch {m.batch}: tokens per joule off by {error:+.2f} % (limit {max_error_percent} %)"
            )
    return found


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def table(measurements: Sequence[Measurement]) -> str:
    header = (
        f"{'batch':>5}  {'bound':<7}  {'tensor':>6} {'fp':>5} {'dram':>5} {'sm':>5} {'gfx':>5}  "
        f"{'tokens/s':>11}  {'W':>5}  {'tok/J exporter':>14}  {'tok/J truth':>11}  {'error %':>7}"
    )
    lines = [header]
    for m in measurements:
        ratios = " ".join(
            format(m.evidence[s], "6.3f" if s == "tensor" else "5.3f") if s in m.evidence else "    -"
            for s in SIGNALS
        )
        lines.append(
            f"{m.batch:>5}  {m.bound or '-':<7}  {ratios}  {_number(m.tokens_per_second, '11,.0f')}  "
            f"{_number(m.power_watts, '5.0f')}  {_number(m.tokens_per_joule, '14.2f')}  "
            f"{_number(m.truth_tokens_per_joule, '11.2f')}  {_number(m.error_percent, '+7.2f')}"
        )
    return "\n".join(lines)


async def read_counter(url: str) -> float | None:
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        response = await client.get(url)
        response.raise_for_status()
        return counter_value(response.text, TOKENS_METRIC)


async def wait_for_tokens(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the workload exited with {process.returncode} before generating tokens")
        try:
            if (await read_counter(url) or 0) > 0:
                return
        except Exception:
            pass
        await asyncio.sleep(0.25)
    raise RuntimeError(f"the workload generated no token within {timeout:g} s")


async def measure(
    batch: int,
    *,
    gpu: int,
    gpu_source: Source,
    energy_probe: Callable[[], float],
    window: float,
    interval: float,
    warmup: float,
    startup_timeout: float,
    workload_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Measurement:
    """Run the workload at `batch`, the exporter over one window, and the ground truth over the same ticks."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    endpoint_source, stages, path = endpoint_pipeline(url, gpu)
    result = Measurement(batch=batch, endpoint_path=path)
    runtime = startup_timeout + warmup + window + 30
    command = [sys.executable, str(WORKLOAD), str(batch), "--port", str(port), "--seconds", f"{runtime:g}"]
    process = subprocess.Popen([*command, *workload_args], env={**os.environ, **(env or {})})
    # A fresh Deriver sees only this measurement's ticks; its window is a little longer than the
    # measurement so a late tick can never push tick 0 (the ground truth's start) out of it.
    deriver = Deriver(window=window + 2 * interval, tolerance=interval / 2)
    daemon = Daemon(
        [gpu_source, endpoint_source],
        Renderer(extra=[derived_families]),
        interval,
        stages=[*stages, deriver],
    )
    try:
        await wait_for_tokens(url, process, startup_timeout)
        await asyncio.sleep(warmup)
        ticks = round(window / interval)
        next_tick = time.monotonic()
        start = end = None
        for tick in range(ticks + 1):
            await daemon.tick()
            if tick in (0, ticks):
                reading = (time.monotonic(), energy_probe(), await read_counter(url))
                start, end = (reading, end) if tick == 0 else (start, reading)
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        derived = daemon.latest.snapshot.derived
        if start is None or end is None or start[2] is None or end[2] is None:
            result.problem = "could not read the ground truth"
            return result
        truth_tokens = end[2] - start[2]
        truth_energy = end[1] - start[1]
        result.truth_tokens_per_second = truth_tokens / (end[0] - start[0])
        result.truth_tokens_per_joule = truth_tokens / truth_energy if truth_energy > 0 else None
        if derived is None:
            result.problem = "the exporter derived nothing"
            return result
        result.window_seconds = derived.window_seconds
        if abs(derived.window_seconds - (end[0] - start[0])) > interval / 2:
            result.problem = (
                f"the exporter's window ({derived.window_seconds:.2f} s) is not the ground truth's "
                f"({end[0] - start[0]:.2f} s)"
            )
            return result
        endpoint = next((e for e in derived.endpoints if e.name == ENDPOINT_NAME), None)
        if endpoint is None:
            result.problem = "the exporter has no derived values for the workload's endpoint"
            return result
        result.tokens_per_second = endpoint.generation_tokens_per_second
        result.tokens_per_joule = endpoint.tokens_per_joule
        result.power_watts = endpoint.power_watts
        result.utilization = endpoint.gpu_utilization_ratio
        gpu_values = next((g for g in derived.gpus if g.index == gpu), None)
        if gpu_values is not None:
            result.bound = gpu_values.bound
            result.evidence = dict(gpu_values.evidence)
        return result
    except RuntimeError as exc:
        result.problem = str(exc)
        return result
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        await endpoint_source.close()


class NvmlEnergy:
    """Ground-truth energy: NVML's total-energy counter of one GPU, in joules."""

    def __init__(self, gpu: int) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        self.name = pynvml.nvmlDeviceGetName(self.handle)

    def __call__(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024], metavar="B")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    parser.add_argument("--interval", type=float, default=1.0, help="exporter tick interval (default 1)")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds after the first token (default 8)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="for CUDA start-up (default 180)"
    )
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to use (default 0)")
    parser.add_argument("--max-error-percent", type=float, default=2.0)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(batch < 1 for batch in args.batches):
        parser.error("--batches must be positive integers")
    if not args.interval > 0 or not args.seconds >= 2 * args.interval:
        parser.error("--seconds must be at least 2 × --interval (> 0): the window needs two ticks")
    if args.warmup < 0 or args.startup_timeout <= 0 or args.max_error_percent <= 0:
        parser.error("--warmup must be ≥ 0; --startup-timeout and --max-error-percent > 0")
    if args.gpu < 0:
        parser.error("--gpu must be an NVML index ≥ 0")
    return args


async def run(args: argparse.Namespace) -> int:
    from exporter.sources.nvml import NvmlSource

    try:
        probe = NvmlEnergy(args.gpu)
    except Exception as exc:
        print(f"decode_validation: no usable GPU {args.gpu} through NVML: {exc}", file=sys.stderr)
        return 2
    # CUDA device 0 of the workload = NVML index --gpu (both in PCI bus order).
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(args.gpu)}
    measurements = []
    try:
        for batch in args.batches:
            source = NvmlSource(profiling=True, gpu_timeout_seconds=0.8 * args.interval, retry_max_seconds=5)
            try:
                first = await source.collect()
            except SourceError as exc:
                print(f"decode_validation: NVML source failed: {exc}", file=sys.stderr)
                return 2
            info = next((g.info for g in first.gpus if g.info.index == args.gpu), None)
            if info is None or not info.profiling_supported:
                print(
                    f"decode_validation: GPU {args.gpu} has no GPM support (needs Hopper+)", file=sys.stderr
                )
            print(f"batch {batch}: warming up on GPU {args.gpu} ({probe.name}) …", flush=True)
            measurement = await measure(
                batch,
                gpu=args.gpu,
                gpu_source=source,
                energy_probe=probe,
                window=args.seconds,
                interval=args.interval,
                warmup=args.warmup,
                startup_timeout=args.startup_timeout,
                workload_args=["--device", "cuda"],
                env=env,
            )
            await source.close()
            measurements.append(measurement)
            if measurement.utilization is not None and measurement.utilization < 0.3:
                print(
                    f"warning: GPU {args.gpu} utilization {measurement.utilization:.2f}: is the loop there?"
                )
    finally:
        probe.close()
    path = measurements[0].endpoint_path
    print(f"endpoint source: {path}; window {args.seconds:g} s, tick {args.interval:g} s")
    print(table(measurements))
    problems = failures(measurements, args.max_error_percent)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("OK: bounds as expected and tokens per joule within the limit for every batch")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
