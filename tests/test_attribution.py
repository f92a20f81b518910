"""GPU attribution of endpoints: configured, all, automatic through processes, and honest fallbacks."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
from fake_nvml import Clock
from helpers import free_port, wait_for

from exporter.attribution import Attributor, is_local_host, listener_process_tree
from exporter.config import EndpointConfig
from exporter.model import EndpointSample, GpuInfo, GpuSample, Snapshot


def gpus(*process_ids: tuple[int, ...]) -> tuple[GpuSample, ...]:
    return tuple(
        GpuSample(info=GpuInfo(index=i, uuid=f"GPU-{i}", name="H100"), process_ids=pids)
        for i, pids in enumerate(process_ids)
    )


def attribute(
    configs: list[EndpointConfig], gpu_samples: tuple[GpuSample, ...], engine: str = "vllm", **kwargs
) -> dict:
    attributor = Attributor(configs, addresses=lambda: {"127.0.0.1", "10.1.2.3"}, **kwargs)
    snapshot = Snapshot(
        tick=1,
        wall_time=0,
        monotonic_time=0,
        duration_seconds=0,
        gpus=gpu_samples,
        endpoints=tuple(EndpointSample(name=c.name, engine=engine, url=c.url) for c in configs),
    )
    return {e.name: e for e in attributor(snapshot).endpoints}


def config(name: str, url: str = "http://127.0.0.1:8000/metrics", gpus="auto") -> EndpointConfig:
    return EndpointConfig(name=name, url=url, gpus=gpus)


def test_configured_indices_and_uuids() -> None:
    result = attribute([config("a", gpus=[0, "GPU-2"]), config("b", gpus=["GPU-9", 1])], gpus((), (), ()))
    assert result["a"].gpus == (0, 2) and result["a"].attribution == "config"
    assert result["a"].attribution_note is None
    assert result["b"].gpus == (1,)
    assert "not on this node: GPU-9" in result["b"].attribution_note


def test_all() -> None:
    result = attribute([config("a", gpus="all")], gpus((), (), ()))
    assert result["a"].gpus == (0, 1, 2) and result["a"].attribution == "all"


def test_auto_matches_the_listener_process_tree_with_nvml_processes() -> None:
    trees = {8000: {100, 101, 102}, 9000: {200}}
    result = attribute(
        [config("a"), config("b", url="http://10.1.2.3:9000/metrics")],
        gpus((101,), (102, 555), (200,), (999,)),
        find_pids=lambda port, siblings: trees.get(port),
    )
    assert result["a"].gpus == (0, 1) and result["a"].attribution == "auto"
    assert result["b"].gpus == (2,) and result["b"].attribution_note is None


def test_auto_falls_back_to_all_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        remote = attribute(
            [config("r", url="http://gpu-node-7:8000/metrics")],
            gpus((), ()),
            find_pids=lambda port, siblings: {1},
        )
        hidden = attribute([config("h")], gpus((), ()), find_pids=lambda port, siblings: None)
        foreign = attribute([config("f")], gpus((5,), (6,)), find_pids=lambda port, siblings: {7, 8})
    assert remote["r"].gpus == (0, 1) and "remote" in remote["r"].attribution_note
    assert hidden["h"].gpus == (0, 1) and "PID namespace" in hidden["h"].attribution_note
    assert foreign["f"].attribution == "all" and "none of the 2 process(es)" in foreign["f"].attribution_note
    assert sum("gpu-node-7" in r.message for r in caplog.records) == 1


def test_process_lookup_is_cached_and_refreshed() -> None:
    clock = Clock()
    calls = []

    def find(port: int, siblings: bool) -> set[int]:
        calls.append(port)
        return {100}

    attributor = Attributor(
        [config("a")], refresh_seconds=30, find_pids=find, clock=clock, addresses=lambda: set()
    )
    snapshot = Snapshot(
        tick=1,
        wall_time=0,
        monotonic_time=0,
        duration_seconds=0,
        gpus=gpus((100,)),
        endpoints=(EndpointSample(name="a", engine="vllm", url=""),),
    )
    for _ in range(5):
        attributor(snapshot)
    assert calls == [8000]
    clock.advance(31)
    attributor(snapshot)
    assert calls == [8000, 8000]


def test_tgi_uses_sibling_workers_when_the_listener_itself_has_no_gpu() -> None:
    # TGI: the router listens, the shards that use the GPUs are its siblings under the launcher.
    trees = {False: {300}, True: {300, 301, 302}}
    result = attribute(
        [config("t")], gpus((301,), (302,), (999,)), engine="tgi", find_pids=lambda port, s: trees[s]
    )
    assert result["t"].gpus == (0, 1) and result["t"].attribution == "auto"


def test_other_engines_never_borrow_a_siblings_gpus() -> None:
    # Found on the H100: a GPU-less server launched by the same parent as a GPU workload must not be
    # attributed the workload's GPU through their shared parent.
    trees = {False: {300}, True: {300, 301}}
    result = attribute(
        [config("v")],
        gpus(
            (301,),
        ),
        engine="vllm",
        find_pids=lambda port, s: trees[s],
    )
    assert result["v"].attribution == "all" and "none of the 1 process(es)" in result["v"].attribution_note


def test_note_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    attributor = Attributor(
        [config("h")], find_pids=lambda port, siblings: None, addresses=lambda: set(), refresh_seconds=0
    )
    snapshot = Snapshot(
        tick=1,
        wall_time=0,
        monotonic_time=0,
        duration_seconds=0,
        gpus=gpus(()),
        endpoints=(EndpointSample(name="h", engine="vllm", url=""),),
    )
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            attributor(snapshot)
    assert sum("endpoint h:" in r.message for r in caplog.records) == 1


def test_local_host_detection() -> None:
    assert is_local_host("127.0.0.1", set())
    assert is_local_host("::1", set())
    assert is_local_host("10.0.0.5", {"10.0.0.5"})
    assert not is_local_host("example.org", {"127.0.0.1"})


def test_real_listener_process_tree_finds_a_server_and_its_child() -> None:
    port = free_port()
    # A parent that listens on the port and spawns a child, like an engine with worker processes.
    script = (
        "import http.server, subprocess, sys, threading;"
        f"s = http.server.HTTPServer(('127.0.0.1', {port}), http.server.BaseHTTPRequestHandler);"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
        "print(child.pid, flush=True);"
        "s.serve_forever()"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(process.stdout.readline())
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # same launcher: us
    try:
        tree = wait_for(lambda: listener_process_tree(port), 10, "the listener to appear")
        assert process.pid in tree and child_pid in tree
        assert sibling.pid not in tree
        with_siblings = listener_process_tree(port, include_siblings=True)
        assert tree <= with_siblings and sibling.pid in with_siblings
        assert os.getpid() not in with_siblings  # the launcher itself is not a worker
        assert listener_process_tree(free_port()) is None
    finally:
        os.kill(child_pid, signal.SIGKILL)
        for spawned in (process, sibling):
            spawned.kill()
            spawned.wait()
