"""SIGTERM while an endpoint's page is being parsed (issue 13, item 7): the exporter is gone within 1 s,
exit 0, and so is every process it started (the collector, the parsers' fork server, the parsing worker)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from engine_server import engine_server
from helpers import ExporterProcess, http_get, wait_for

MIB = 1024 * 1024


def slow_page(size: int = 4 * MIB - 64 * 1024) -> bytes:
    """Valid vLLM lines with 20 empty labels each: over a second to parse 4 MiB on one core."""
    labels = ",".join(f'l{k}=""' for k in range(20))
    line = f'vllm:generation_tokens_total{{{labels},model_name="m"}} 1\n'.encode()
    return line * (size // len(line))


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, …; [] if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, …)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def page_workers(pid: int) -> list[int]:
    """The page parser workers below `pid`: the fork server's children (same command line as it)."""
    parsers = set()
    for child in descendants(pid):
        try:
            if b"page parsers" in Path(f"/proc/{child}/cmdline").read_bytes():
                parsers.add(child)
        except OSError:
            continue
    return [child for child in parsers if _stat(child) and int(_stat(child)[1]) in parsers]


def test_sigterm_during_a_heavy_parse_stops_everything_within_a_second(tmp_path: Path) -> None:
    slow = slow_page()
    small = b'vllm:generation_tokens_total{model_name="m"} 1\n'
    served = {"count": 0}

    def page() -> bytes:
        served["count"] += 1
        return small if served["count"] == 1 else slow  # the first tick is quick, the next ones heavy

    with engine_server(page) as engine:
        config = tmp_path / "config.yaml"
        # A time limit long enough that the parse runs to its end unless the exporter stops it.
        config.write_text(
            f"endpoints:\n  - {{name: slow, url: '{engine.url}', engine: vllm, timeout_seconds: 1.6}}\n"
        )
        exporter = ExporterProcess(["demo", "--gpus", "1", "--interval", "2", "--config", str(config)])
        try:
            wait_for(lambda: http_get(f"{exporter.url}/healthz")[0] == 200, 20, "the HTTP server")
            wait_for(lambda: served["count"] >= 2, 10, "the heavy page to be served", interval=0.01)
            # SIGTERM 0.2 s into the parse (a worker's CPU time), a second or more before it would end.
            wait_for(
                lambda: [pid for pid in page_workers(exporter.process.pid) if cpu_seconds(pid) >= 0.2],
                5,
                "a worker parsing the heavy page",
                interval=0.01,
            )
            tree = descendants(exporter.process.pid)
            started = time.monotonic()
            exporter.process.send_signal(signal.SIGTERM)
            code = exporter.process.wait(timeout=10)
            elapsed = time.monotonic() - started
            deadline = started + 1.0
            while any(running(pid) for pid in tree) and time.monotonic() < deadline:
                time.sleep(0.01)
            left = [pid for pid in tree if running(pid)]
            print(f"stopped in {elapsed:.3f} s")
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        finally:
            if exporter.process.poll() is None:
                exporter.process.kill()
                exporter.process.wait()
            output = exporter.output()
            os.unlink(exporter.log.name)
    assert code == 0, output
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
    assert not left, f"still running 1 s after SIGTERM: {left}"
    assert "Traceback" not in output, output
