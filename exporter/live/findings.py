"""The live page's findings: diagnose's own detectors, over the collector's history instead of Prometheus.

diagnose's detectors (exporter/diagnose/detectors.py) read a `Dataset`: every series on one grid of
points, as `exporter.diagnose.dataset.load` builds it from Prometheus's answers. `dataset` builds the same
from the ring buffer (exporter/live/history.py): one node (this exporter), one point per history step, each
series under the name the detectors read, the GPU error counters under their Prometheus names. So the
patterns, their criteria, the thresholds (the shipped alert rules' values, as diagnose uses without a
Prometheus to read them from), the shortest episode (diagnose's default: 3 points, and 1/20 of the window)
and the JSON of each finding are diagnose's, computed in one place.

What the history cannot show: `exporter-down` (the exporter is the one answering) and the alerts that
fired (no Prometheus); the SM clock's maximum "of the last day" is the highest seen since the collector
started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.diagnose.command import default_min_duration
from exporter.diagnose.dataset import Dataset, EndpointData, GpuData, Grid, Node, Scope
from exporter.diagnose.detectors import diagnose
from exporter.diagnose.report import Report, clock_for
from exporter.diagnose.thresholds import Thresholds
from exporter.live.history import CLOCK_REASONS, ENDPOINT_SIGNALS, GPU_SIGNALS, History

NODE = Node("", "", "this exporter")
THRESHOLDS = Thresholds(origin="the shipped alert rules' values")


@dataclass
class HistoryDataset(Dataset):
    """A `Dataset` whose steps are the seconds between the points' ticks (Prometheus's are one scrape
    each): the newest point's step may not be over yet, and its rates must not count it as a whole one."""

    steps: list[float] = field(default_factory=list)

    def step_seconds(self) -> list[float]:
        return self.steps


def dataset(history: History) -> Dataset | None:
    """The history's window as diagnose's `Dataset`; None before it holds two points."""
    slots = history.slots()
    if len(slots) < 2:
        return None
    grid = Grid(history.time_of(slots[0]), history.step, len(slots), 0.0, history.step)
    gpus = []
    for index, track in history.gpus.items():
        if track.last_slot < slots[0]:
            continue
        gpus.append(
            GpuData(
                node=NODE,
                gpu=str(index),
                signals={name: history.values(track.series(name), slots) for name in GPU_SIGNALS},
                bound=history.bound_states(index, slots),
                reasons={r: history.values(track.series(f"reason:{r}"), slots) for r in CLOCK_REASONS},
                clock_max_1d=history.clock_max(index),
                errors={name: history.values(column, slots) for name, column in track.extra.items()},
                endpoints=set(track.meta.get("endpoints", ())),
            )
        )
    endpoints = []
    for name, track in history.endpoints.items():
        if track.last_slot < slots[0]:
            continue
        endpoints.append(
            EndpointData(
                node=NODE,
                name=name,
                gpus=tuple(track.meta.get("gpus", ())),
                signals={signal: history.values(track.series(signal), slots) for signal in ENDPOINT_SIGNALS},
                scrape_errors={
                    reason: history.values(column, slots) for reason, column in track.extra.items()
                },
                engine=track.meta.get("engine", ""),
                models=tuple(track.meta.get("models", ())),
            )
        )
    nvml_up = history.nvml_up(slots)
    return HistoryDataset(
        prometheus="this exporter's history",
        window_start=grid.times[0],
        window_end=grid.times[-1],
        grid=grid,
        scope=Scope(),
        thresholds=THRESHOLDS,
        nodes=[NODE],
        target_up={},
        nvml_up={NODE: nvml_up} if any(v is not None for v in nvml_up) else {},
        gpus=gpus,
        endpoints=endpoints,
        error_metrics=sorted({series.partition("{")[0] for gpu in gpus for series in gpu.errors}),
        steps=history.step_seconds(slots),
    )


def findings_json(history: History) -> tuple[list[dict[str, Any]], float]:
    """diagnose's findings on the history, most likely cause first, as diagnose's JSON report writes each
    (docs/diagnose.md), and the shortest episode reported (seconds)."""
    data = dataset(history)
    if data is None:
        return [], 0.0
    min_duration = default_min_duration(data.window_end - data.window_start, data.grid.step)
    found = diagnose(data, min_duration, clock_for(data.window_start, data.window_end))
    return [Report._finding_json(finding) for finding in found], min_duration
