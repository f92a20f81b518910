"""GPU attribution of endpoints: configured, all, automatic through processes, and honest fallbacks.

The process lookup against real processes: tests/integration/test_attribution_process_tree.py.
"""

from __future__ import annotations

import logging

import pytest
from fake_nvml import Clock

from exporter.attribution import Attributor, is_local_host
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
        foreign = attribute(
            [config("f")], gpus((5,), (6,)), find_pids=lambda port, siblings: {7, 8}, pending_grace_seconds=0
        )
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
        pending_grace_seconds=0,
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


class Node:
    """An Attributor over a scripted node: GPU processes, the endpoint's state and its listener."""

    def __init__(self, **kwargs: object) -> None:
        self.clock = Clock()
        self.listener: set[int] | None = None
        self.lookups: list[float] = []
        self.attributor = Attributor(
            [config("e")], find_pids=self.find, clock=self.clock, addresses=lambda: set(), **kwargs
        )

    def find(self, port: int, siblings: bool) -> set[int] | None:
        self.lookups.append(self.clock.now)
        return self.listener

    def tick(
        self, *gpu_pids: tuple[int, ...], up: bool = True, started: float | None = None
    ) -> EndpointSample:
        snapshot = Snapshot(
            tick=1,
            wall_time=0,
            monotonic_time=self.clock.now,
            duration_seconds=0,
            gpus=gpus(*gpu_pids),
            endpoints=(
                EndpointSample(name="e", engine="vllm", url="", up=up, process_start_time_seconds=started),
            ),
        )
        result = self.attributor(snapshot).endpoints[0]
        self.clock.advance(1.0)
        return result


def test_exporter_started_before_the_engine_is_pending_then_resolves_the_tick_it_comes_up() -> None:
    node = Node()
    for _ in range(5):  # the engine is loading: nothing listens yet, its page is refused
        pending = node.tick((), (), up=False)
        assert pending.attribution == "pending" and pending.gpus == () and pending.gpu_shares == ()
        assert "withheld" in pending.attribution_note
    assert len(node.lookups) < 5  # retried, backing off
    node.listener = {40, 41}
    resolved = node.tick((), (41,), up=True)  # it came up: looked up at once, whatever the backoff
    assert (resolved.gpus, resolved.attribution, resolved.attribution_note) == ((1,), "auto", None)
    assert resolved.gpu_shares == (1.0,)


def test_unresolved_lookups_back_off_to_the_retry_maximum() -> None:
    node = Node(retry_max_seconds=4, pending_grace_seconds=1000)
    node.listener = {7}  # listening, but not on a GPU (yet)
    for _ in range(16):
        assert node.tick((99,), up=True).attribution == "pending"
    assert node.lookups == [1000.0, 1001.0, 1003.0, 1007.0, 1011.0, 1015.0]


def test_an_endpoint_answering_without_gpu_processes_falls_back_after_the_grace() -> None:
    node = Node(pending_grace_seconds=3)
    node.listener = {7}
    states = [node.tick((99,), up=True).attribution for _ in range(5)]
    assert states == ["pending", "pending", "pending", "all", "all"]


def test_an_endpoint_answering_with_no_visible_listener_falls_back_at_once() -> None:
    node = Node()  # another PID namespace: waiting cannot help
    result = node.tick((5,), up=True)
    assert result.attribution == "all" and result.gpus == (0,)
    assert "PID namespace" in result.attribution_note


def test_engine_restart_is_re_resolved_at_once() -> None:
    node = Node()
    node.listener = {10}
    assert node.tick((10,), (), started=100.0).gpus == (0,)
    node.listener = {20}  # restarted on the other GPU, with a new start time
    assert node.tick((), (20,), started=200.0).gpus == (1,)


def test_engine_that_left_its_gpus_is_pending_until_it_returns() -> None:
    node = Node()
    node.listener = {10}
    assert node.tick((10,), ()).gpus == (0,)
    node.listener = None
    assert node.tick((), (), up=False).attribution == "pending"
    node.listener = {30}
    assert node.tick((), (30,), up=True).gpus == (1,)


def test_a_shared_gpu_is_split_by_process_sm_share_and_shares_add_up_to_one() -> None:
    trees = {8000: {100}, 9000: {200}, 9100: {300}}
    shared = GpuSample(
        info=GpuInfo(index=0, uuid="GPU-0", name="H100"),
        process_ids=(100, 200),
        process_sm_ratios=((100, 0.6), (200, 0.2)),
    )
    alone = GpuSample(info=GpuInfo(index=1, uuid="GPU-1", name="H100"), process_ids=(300,))
    result = attribute(
        [config("a"), config("b", url="http://127.0.0.1:9000/"), config("c", url="http://127.0.0.1:9100/")],
        (shared, alone),
        find_pids=lambda port, siblings: trees.get(port),
    )
    assert result["a"].gpu_shares == (pytest.approx(0.75),)
    assert result["b"].gpu_shares == (pytest.approx(0.25),)
    assert result["c"].gpus == (1,) and result["c"].gpu_shares == (1.0,)


def test_a_shared_gpu_without_process_samples_or_known_processes_is_split_evenly() -> None:
    idle = gpus((100, 200), ())  # no per-process samples: nobody was busy
    trees = {8000: {100}, 9000: {200}}
    result = attribute(
        [config("a"), config("b", url="http://127.0.0.1:9000/")],
        idle,
        find_pids=lambda port, siblings: trees.get(port),
    )
    assert result["a"].gpu_shares == result["b"].gpu_shares == (0.5,)
    configured = attribute([config("x", gpus=[0, 1]), config("y", gpus=[1])], gpus((), ()))
    assert configured["x"].gpu_shares == (1.0, 0.5) and configured["y"].gpu_shares == (0.5,)


def test_pending_and_shares_are_rendered() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.render.endpoints import endpoint_families
    from exporter.render.exposition import Renderer

    endpoints = (
        EndpointSample(name="p", engine="vllm", url="", up=False, attribution="pending"),
        EndpointSample(
            name="a", engine="vllm", url="", gpus=(0, 1), gpu_shares=(1.0, 0.25), attribution="auto"
        ),
    )
    snapshot = Snapshot(tick=1, wall_time=0, monotonic_time=0, duration_seconds=0, endpoints=endpoints)
    text = Renderer(extra=[endpoint_families]).render(snapshot).text.decode()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("tpw_endpoint_attribution", "tpw_endpoint_gpu"))
    }
    assert values[("tpw_endpoint_attribution_pending", (("endpoint", "p"),))] == 1.0
    assert values[("tpw_endpoint_attribution_pending", (("endpoint", "a"),))] == 0.0
    assert values[("tpw_endpoint_gpu_energy_share_ratio", (("endpoint", "a"), ("gpu", "1")))] == 0.25
    assert not any(name == "tpw_endpoint_gpu_info" and ("endpoint", "p") in labels for name, labels in values)
