"""The live page's history: each GPU's and endpoint's key series over the last 15 minutes, in the collector.

The collector owns the snapshots, so the history lives there: `History.record` takes each tick's snapshot
(a few dozen array writes, no allocation once a GPU or endpoint is known) and `History.json` answers
`/api/v1/history`, which the server asks for over the collector's socket like `/api/v1/snapshot`. Nothing
of it travels with a tick's `Published`: a scrape of /metrics costs what it cost before, and a node where
nobody opens the page pays only the recording.

Points and resolution: one point per `step`, a whole number of ticks of at least MIN_STEP_SECONDS (1 s), so
a 0.25 s interval keeps every fourth tick's values (the latest tick of each step overwrites the step's
point: the newest point is always the latest tick) and a 15 s interval keeps every tick. The ring holds
WINDOW_SECONDS (15 min) of steps, at most MAX_POINTS (900).

Memory bound, whatever the node: every series is an `array('d')` of `capacity` ≤ 900 floats, created once.
Per point: 40 bytes of slot, tick, wall and monotonic time and NVML state; per GPU 16 series (129 bytes with
the bound state) plus at most MAX_EXTRA_SERIES (8) GPU error counters that ever rose (64); per endpoint 13
series (104) plus at most 8 scrape-error reasons (64). At most MAX_GPUS (16) GPUs and MAX_ENDPOINTS (16)
endpoints are kept (the first by index, the first seen; the others are counted as left out):
900 × (40 + 16 × 193 + 16 × 168) = 5,234,400 bytes (5.0 MiB) at most, `MEMORY_BOUND_BYTES`; 2 GPUs and
one endpoint take 362 KB.
The JSON answer is bounded the same way (`MAX_JSON_BYTES`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from exporter.model import BOUND_STATES, CLOCK_EVENT_REASONS, EndpointSample, GpuSample, Snapshot

SCHEMA = "tpw-exporter/live/v1"
WINDOW_SECONDS = 900.0
MIN_STEP_SECONDS = 1.0
MAX_POINTS = 900
MAX_GPUS = 16
MAX_ENDPOINTS = 16
MAX_EXTRA_SERIES = 8  # per GPU: error counters that rose; per endpoint: scrape-error reasons
MAX_FINDINGS = 50  # the most likely first; and at most MAX_FINDINGS_BYTES of them in the JSON
MAX_FINDINGS_BYTES = 256 * 1024
FINDINGS_EVERY_SECONDS = 2.0  # findings are recomputed on request, at most this often
FINDINGS_CPU_SHARE = 0.02  # … and at most this share of the time
NAN = math.nan

# The clock-event reasons diagnose's throttling detector reads (exporter.diagnose.dataset: THERMAL_REASONS
# and POWER_CAP_REASON; a test keeps them equal), each kept as a 0/1 series.
CLOCK_REASONS: tuple[str, ...] = (
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_slowdown",
    "hw_power_brake_slowdown",
    "sw_power_cap",
)
# GPU series, named as diagnose's GPU signals (exporter.diagnose.dataset.GPU_QUERIES), then the reasons.
GPU_SIGNALS: tuple[str, ...] = (
    "utilization",
    "sm_active",
    "tensor",
    "dram",
    "power",
    "power_limit",
    "sm_clock",
    "temperature",
    "memory_used",
    "memory_total",
    "up",
)
GPU_SERIES: tuple[str, ...] = (*GPU_SIGNALS, *(f"reason:{r}" for r in CLOCK_REASONS))
# Endpoint series, named as diagnose's endpoint signals (ENDPOINT_QUERIES), then the derive window's
# throughput and throughput per joule (in the endpoint's unit: tokens, or its work units).
ENDPOINT_SIGNALS: tuple[str, ...] = (
    "tokens",
    "energy",
    "requests",
    "running",
    "waiting",
    "kv_cache",
    "up",
    "start_time",
    "resets",
    "utilization",
    "gpu_count",
)
ENDPOINT_SERIES: tuple[str, ...] = (*ENDPOINT_SIGNALS, "tokens_per_second", "tokens_per_joule")
# What the page draws, and shows as the current value.
PAGE_GPU_SERIES: tuple[str, ...] = ("utilization", "sm_active", "tensor", "dram", "power", "power_limit")
PAGE_ENDPOINT_SERIES: tuple[str, ...] = ("tokens_per_second", "tokens_per_joule", "running", "waiting")

POINT_BYTES = 5 * 8  # slot, tick, wall and monotonic time, NVML up
GPU_BYTES = len(GPU_SERIES) * 8 + 1 + MAX_EXTRA_SERIES * 8
ENDPOINT_BYTES = len(ENDPOINT_SERIES) * 8 + MAX_EXTRA_SERIES * 8
MEMORY_BOUND_BYTES = MAX_POINTS * (POINT_BYTES + MAX_GPUS * GPU_BYTES + MAX_ENDPOINTS * ENDPOINT_BYTES)
# The longest JSON answer: every page series of every kept GPU and endpoint at ≤ 11 characters a value
# ("-1.234e+05,"), the points' slot, tick and time (≤ 40), the findings, and 64 KB for the rest (names,
# current values).
MAX_JSON_BYTES = (
    MAX_POINTS
    * (11 * (MAX_GPUS * (len(PAGE_GPU_SERIES) + 1) + MAX_ENDPOINTS * len(PAGE_ENDPOINT_SERIES)) + 40)
    + MAX_FINDINGS_BYTES
    + 64 * 1024
)


def step_for(interval: float) -> float:
    """The history's resolution: the smallest whole number of ticks that is at least MIN_STEP_SECONDS."""
    return interval * max(1, math.ceil(MIN_STEP_SECONDS / interval - 1e-9))


def _column(capacity: int) -> array[float]:
    return array("d", [NAN]) * capacity


class Track:
    """One GPU's or endpoint's columns: a fixed array per series, plus a few lazily made ones (GPU error
    counters that rose, scrape-error reasons), each written at the position of the point's slot."""

    def __init__(self, names: Sequence[str], capacity: int, first_slot: int) -> None:
        self.columns = [_column(capacity) for _ in names]
        self.index = {name: i for i, name in enumerate(names)}
        self.capacity = capacity
        self.extra: dict[str, array[float]] = {}
        self.extra_now: dict[str, float] = {}  # the latest tick's values of the candidates
        self.extra_before: dict[str, float] = {}  # their values at the last tick of the previous point
        self.extra_left_out: set[str] = set()
        self.first_slot = first_slot
        self.last_slot = first_slot  # the last point this track was present at
        self.meta: dict[str, Any] = {}

    def series(self, name: str) -> array[float]:
        return self.columns[self.index[name]]

    def write(self, position: int, values: Iterable[float | None]) -> None:
        for column, value in zip(self.columns, values, strict=True):
            column[position] = NAN if value is None else value

    def clear(self, position: int) -> None:
        for column in self.columns:
            column[position] = NAN
        for column in self.extra.values():
            column[position] = NAN

    def write_extra(
        self,
        position: int,
        previous: int | None,
        new_point: bool,
        values: dict[str, float],
        absent: float | None,
    ) -> None:
        """The candidate counters of this tick: a series gets its column when its value first differs from
        0; its value at the previous point (`absent` where it had none) is written there, so that the rise
        is an increase between two points, as diagnose reads it."""
        if new_point:
            self.extra_before = self.extra_now
        self.extra_now = values
        for name, value in values.items():
            column = self.extra.get(name)
            if column is None:
                if value == 0 or name in self.extra_left_out:
                    continue
                if len(self.extra) >= MAX_EXTRA_SERIES:
                    self.extra_left_out.add(name)
                    continue
                column = self.extra[name] = _column(self.capacity)
                if previous is not None:
                    before = self.extra_before.get(name, absent)
                    column[previous] = NAN if before is None else before
            column[position] = value
        for name, column in self.extra.items():
            if name not in values:
                column[position] = NAN


def _sum(values: Iterable[float]) -> float | None:
    total = None
    for value in values:
        total = value if total is None else total + value
    return total


def endpoint_field(
    sample: EndpointSample, field: str, combine: Callable[[Iterable[float]], Any] = _sum
) -> float | None:
    """One normalized field over the endpoint's models (and outcomes): summed, or `combine`d; None if none."""
    values = [value.value for value in sample.values if value.field == field]
    return combine(values) if values else None


@functools.lru_cache(maxsize=64)
def _xid_series(code: str) -> str:
    return f'tpw_gpu_xid_errors_total{{xid="{code}"}}'


def gpu_error_series(gpu: GpuSample) -> dict[str, float]:
    """The GPU's error counters and states that diagnose reports (its `error_rule`), named as Prometheus
    shows them: XID events by code, uncorrected ECC errors, uncorrectable remapped rows, double-bit retired
    pages, a pending or failed remap, a pending retirement."""
    out = {_xid_series(code): float(count) for code, count in gpu.xid_errors}
    health = gpu.health
    if health is not None:
        for name, value in (
            ('tpw_gpu_ecc_errors_total{type="uncorrected"}', health.ecc_uncorrected_volatile),
            ('tpw_gpu_remapped_rows{cause="uncorrectable"}', health.remapped_rows_uncorrectable),
            ('tpw_gpu_retired_pages{cause="double_bit"}', health.retired_pages_double_bit),
            ("tpw_gpu_row_remap_pending", health.row_remap_pending),
            ("tpw_gpu_row_remap_failed", health.row_remap_failed),
            ("tpw_gpu_retired_pages_pending", health.retired_pages_pending),
        ):
            if value is not None:
                out[name] = float(value)
    return out


def _gpu_values(gpu: GpuSample) -> list[float | None]:
    if not gpu.up:
        return [None] * (len(GPU_SIGNALS) - 1) + [0.0] + [None] * len(CLOCK_REASONS)
    ratios = gpu.profiling.ratios if gpu.profiling is not None else {}
    reasons = gpu.clock_event_reasons
    return [
        gpu.utilization_ratio,
        ratios.get("sm_active"),
        ratios.get("tensor_active"),
        ratios.get("dram_bandwidth_utilization"),
        gpu.power_watts,
        gpu.power_limit_watts,
        gpu.sm_clock_hertz,
        gpu.temperature_celsius,
        gpu.memory_used_bytes,
        gpu.info.memory_total_bytes,
        1.0,
        *(None if reasons is None else float(bool(reasons & CLOCK_EVENT_REASONS[r])) for r in CLOCK_REASONS),
    ]


def _number(value: float) -> str:
    """A series value in the JSON: 4 significant digits, null where there is none."""
    return "%.4g" % value if math.isfinite(value) else "null"  # noqa: UP031 - the fastest format


def _exact(value: float) -> float | None:
    return value if math.isfinite(value) else None


class History:
    """The ring buffer of the live page; `record` every tick, `json` on request (see the module's doc)."""

    def __init__(self, interval: float, window_seconds: float = WINDOW_SECONDS) -> None:
        self.interval = interval
        self.step = step_for(interval)
        self.capacity = max(2, min(MAX_POINTS, math.ceil(window_seconds / self.step - 1e-9)))
        self.run = os.urandom(6).hex()  # tells the page that a restarted collector's ticks start again
        self._slots = array("q", [-1]) * self.capacity
        self._ticks = array("q", [0]) * self.capacity
        self._times = _column(self.capacity)
        self._monotonic = _column(self.capacity)
        self._nvml_up = _column(self.capacity)
        self._gpus: dict[int, Track] = {}
        self._bounds: dict[int, array[int]] = {}
        self._endpoints: dict[str, Track] = {}
        self._origin: float | None = None  # monotonic time of slot 0's start
        self._wall_offset = 0.0  # wall time − monotonic time
        self._first_slot = -1
        self._slot = -1
        self._previous_slot = -1  # the point before the latest one
        self._tick = 0
        self._scenario: str | None = None
        self._clock_max: dict[int, float] = {}  # the highest SM clock seen per GPU (diagnose: of a day)
        self.left_out = {"gpus": 0, "endpoints": 0}
        self._findings: tuple[int, float, list[dict[str, Any]], float] | None = None
        self._findings_cost = 0.0
        self._gaps_cache: tuple[tuple[int, int, int], list[int]] = ((-1, -1, -1), [])

    # -- recording, every tick -------------------------------------------------------------------------

    def record(self, snapshot: Snapshot) -> None:
        """Keep the snapshot's values (a snapshot already recorded, or tick 0, is ignored)."""
        if snapshot.tick <= self._tick:
            return
        if self._origin is None:
            self._origin = snapshot.monotonic_time - self.interval / 2  # ticks land mid-slot
            self._wall_offset = snapshot.wall_time - snapshot.monotonic_time
        slot = max(int((snapshot.monotonic_time - self._origin) // self.step), self._slot)
        new_point = slot != self._slot
        if new_point:
            self._previous_slot = self._slot
        previous = self._previous_slot % self.capacity if self._previous_slot >= 0 else None
        if self._first_slot < 0:
            self._first_slot = slot
        position = slot % self.capacity
        self._slots[position] = slot
        self._ticks[position] = snapshot.tick
        self._times[position] = snapshot.wall_time
        self._monotonic[position] = snapshot.monotonic_time
        nvml = [s.up for s in snapshot.sources if s.name == "nvml"]
        self._nvml_up[position] = float(nvml[0]) if nvml else NAN
        self._scenario = snapshot.node.simulated_scenario
        derived = snapshot.derived
        bounds = {g.index: g.bound for g in derived.gpus} if derived is not None else {}
        served: dict[int, list[str]] = {}
        for endpoint in snapshot.endpoints:
            for index in endpoint.gpus:
                served.setdefault(index, []).append(endpoint.name)

        seen_gpus = 0
        present: set[int] = set()
        for gpu in snapshot.gpus:
            index = gpu.info.index
            track = self._gpus.get(index) or self._new_gpu(index, slot)
            if track is None:
                seen_gpus += 1
                continue
            present.add(index)
            track.last_slot = slot
            track.meta = {"name": gpu.info.name, "uuid": gpu.info.uuid, "endpoints": served.get(index, [])}
            track.write(position, _gpu_values(gpu))
            bound = bounds.get(index)
            self._bounds[index][position] = BOUND_STATES.index(bound) if bound in BOUND_STATES else -1
            track.write_extra(position, previous, new_point, gpu_error_series(gpu) if gpu.up else {}, None)
            if gpu.sm_clock_hertz is not None:
                self._clock_max[index] = max(self._clock_max.get(index, 0.0), gpu.sm_clock_hertz)
        for index, track in self._gpus.items():
            if index not in present:
                track.clear(position)
                self._bounds[index][position] = -1
        self.left_out["gpus"] = seen_gpus

        utilization = {g.info.index: g.utilization_ratio for g in snapshot.gpus if g.up}
        endpoint_derived = {e.name: e for e in derived.endpoints} if derived is not None else {}
        energy: dict[str, float] = {}
        for total in derived.energy_totals if derived is not None else ():
            energy[total.name] = energy.get(total.name, 0.0) + total.joules
        seen_endpoints = 0
        names: set[str] = set()
        for endpoint in snapshot.endpoints:
            if endpoint.name in names:
                continue
            track = self._endpoints.get(endpoint.name) or self._new_endpoint(endpoint.name, slot)
            if track is None:
                seen_endpoints += 1
                continue
            names.add(endpoint.name)
            track.last_slot = slot
            track.meta = {
                "engine": endpoint.engine,
                "unit": endpoint.unit,
                "gpus": [str(i) for i in endpoint.gpus],
                "models": sorted({v.model for v in endpoint.values if v.model}),
            }
            busy = [u for i in endpoint.gpus if (u := utilization.get(i)) is not None]
            d = endpoint_derived.get(endpoint.name)
            tokens = endpoint.unit == "tokens"
            track.write(
                position,
                (
                    endpoint_field(endpoint, "generation_tokens_total" if tokens else "work_units_total"),
                    energy.get(endpoint.name),
                    endpoint_field(endpoint, "requests_total"),
                    endpoint_field(endpoint, "requests_running"),
                    endpoint_field(endpoint, "requests_waiting"),
                    endpoint_field(endpoint, "kv_cache_usage_ratio", max),
                    1.0 if endpoint.up else 0.0,
                    endpoint.process_start_time_seconds,
                    float(endpoint.resets_total),
                    sum(busy) / len(busy) if busy else None,
                    float(len(busy)) if busy else None,
                    None
                    if d is None
                    else (d.generation_tokens_per_second if tokens else d.work_units_per_second),
                    None if d is None else (d.tokens_per_joule if tokens else d.work_units_per_joule),
                ),
            )
            errors = {reason: float(count) for reason, count in endpoint.errors_total}
            track.write_extra(position, previous, new_point, errors, 0.0)
        for name, track in self._endpoints.items():
            if name not in names:
                track.clear(position)
        self.left_out["endpoints"] = seen_endpoints
        self._slot = slot
        self._tick = snapshot.tick

    def _new_gpu(self, index: int, slot: int) -> Track | None:
        if len(self._gpus) >= MAX_GPUS and not self._evict(self._gpus, slot):
            return None
        track = self._gpus[index] = Track(GPU_SERIES, self.capacity, slot)
        self._bounds[index] = array("b", [-1]) * self.capacity
        self._gpus = dict(sorted(self._gpus.items()))
        return track

    def _new_endpoint(self, name: str, slot: int) -> Track | None:
        if len(self._endpoints) >= MAX_ENDPOINTS and not self._evict(self._endpoints, slot):
            return None
        track = self._endpoints[name] = Track(ENDPOINT_SERIES, self.capacity, slot)
        return track

    def _evict(self, tracks: dict[Any, Track], slot: int) -> bool:
        """Drop one track with no point left in the window, to make room; False if every one has."""
        for key, track in tracks.items():
            if track.last_slot <= slot - self.capacity:
                del tracks[key]
                self._bounds.pop(key, None)
                return True
        return False

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def tick(self) -> int:
        return self._tick

    def nbytes(self) -> int:
        """Bytes held by the ring's arrays (the bound in the module's doc is on this)."""
        arrays: list[array[Any]] = [self._slots, self._ticks, self._times, self._monotonic, self._nvml_up]
        arrays += self._bounds.values()
        for track in (*self._gpus.values(), *self._endpoints.values()):
            arrays += [*track.columns, *track.extra.values()]
        return sum(a.itemsize * len(a) for a in arrays)

    def slots(self) -> range:
        """The window's slots, oldest first (a slot with no point in it is a gap)."""
        if self._slot < 0:
            return range(0)
        return range(max(self._first_slot, self._slot - self.capacity + 1), self._slot + 1)

    def has(self, slot: int) -> bool:
        return self._slots[slot % self.capacity] == slot

    def time_of(self, slot: int) -> float:
        """The wall time of a slot's point; a gap's, where its tick would have been."""
        if self.has(slot):
            return self._times[slot % self.capacity]
        assert self._origin is not None
        return self._wall_offset + self._origin + slot * self.step + self.interval / 2

    def values(self, column: array[Any], slots: range) -> list[float | None]:
        """A column over `slots` (a run of the window's): None in gaps and where nothing was read."""
        if not slots:
            return []
        start = slots[0] % self.capacity
        out: list[float | None] = [
            None if v != v else v for v in (column[start:] + column[:start]).tolist()[: len(slots)]
        ]
        for i in self._gaps(slots):
            out[i] = None
        return out

    def _gaps(self, slots: range) -> list[int]:
        """Indices in `slots` of the slots with no point (remembered for the last `slots` asked about)."""
        key = (slots.start, slots.stop, self._tick)
        if self._gaps_cache[0] != key:
            self._gaps_cache = (key, [i for i, slot in enumerate(slots) if not self.has(slot)])
        return self._gaps_cache[1]

    @property
    def gpus(self) -> dict[int, Track]:
        return self._gpus

    @property
    def endpoints(self) -> dict[str, Track]:
        return self._endpoints

    def bound_states(self, index: int, slots: range) -> list[str | None]:
        column = self._bounds[index]
        return [
            BOUND_STATES[code] if self.has(slot) and (code := column[slot % self.capacity]) >= 0 else None
            for slot in slots
        ]

    def nvml_up(self, slots: range) -> list[float | None]:
        return self.values(self._nvml_up, slots)

    def step_seconds(self, slots: range) -> list[float]:
        """Seconds from each point's tick to the previous point's (`step` where either is a gap): the newest
        point's step may hold fewer ticks than the others, and ticks jitter."""
        at = self.values(self._monotonic, slots)
        return [
            b - a if i and (a := at[i - 1]) is not None and (b := at[i]) is not None and b > a else self.step
            for i in range(len(at))
        ]

    def clock_max(self, index: int) -> float | None:
        return self._clock_max.get(index)

    # -- the JSON answer ---------------------------------------------------------------------------------

    def json(self, since: int | None = None, run: str | None = None, now: float | None = None) -> bytes:
        """`/api/v1/history`: the window's points, or only those after tick `since` of this `run` (the
        page's last answer; a point whose step got a newer tick is sent again), each GPU's and endpoint's
        page series and current values (the latest tick's, exact), and the findings (`findings()`)."""
        window = self.slots()
        oldest = next((self._ticks[s % self.capacity] for s in window if self.has(s)), None)
        after = since if since is not None and run == self.run else None
        if after is None or oldest is None or not oldest <= after <= self._tick:
            after = None  # the whole window: a first request, a restarted collector, or a page left behind
        incremental = after is not None
        slots = [
            s for s in window if after is None or (self.has(s) and self._ticks[s % self.capacity] > after)
        ]
        if incremental and slots:  # gaps since the page's last point, so that its lines break there too
            slots = list(range(slots[0], window[-1] + 1))
        latest = self._slot % self.capacity
        ticks = ",".join(str(self._ticks[s % self.capacity]) if self.has(s) else "null" for s in slots)
        parts = [
            f'{{"schema":{json.dumps(SCHEMA)},"run":"{self.run}","tick":{self._tick},'
            f'"full":{"false" if incremental else "true"},"interval_seconds":{self.interval!r},'
            f'"step_seconds":{self.step!r},"window_seconds":{self.capacity * self.step!r},'
            f'"simulated_scenario":{json.dumps(self._scenario)},"bound_states":{json.dumps(BOUND_STATES)},'
            f'"left_out":{json.dumps(self.left_out)},"memory_bytes":{self.nbytes()},',
            f'"slots":[{",".join(map(str, slots))}],',
            f'"ticks":[{ticks}],',
            f'"times":[{",".join("%.3f" % self.time_of(s) for s in slots)}],',  # noqa: UP031
        ]

        def series(column: array[Any]) -> str:
            return (
                "["
                + ",".join(_number(column[s % self.capacity]) if self.has(s) else "null" for s in slots)
                + "]"
            )

        gpus = []
        for index, track in self._gpus.items():
            bounds = self._bounds[index]
            present = track.last_slot == self._slot
            current: dict[str, float | str | None] = {
                name: _exact(track.series(name)[latest]) if present else None for name in PAGE_GPU_SERIES
            }
            code = bounds[latest] if present else -1
            current["bound"] = BOUND_STATES[code] if code >= 0 else None
            body = ",".join(f'"{name}":{series(track.series(name))}' for name in PAGE_GPU_SERIES)
            codes = ",".join(
                str(c) if self.has(s) and (c := bounds[s % self.capacity]) >= 0 else "null" for s in slots
            )
            head = json.dumps({"gpu": str(index), **track.meta, "present": present, "current": current})
            gpus.append(f'{head[:-1]},"series":{{{body},"bound":[{codes}]}}}}')
        endpoints = []
        for name, track in self._endpoints.items():
            present = track.last_slot == self._slot
            current = {n: _exact(track.series(n)[latest]) if present else None for n in PAGE_ENDPOINT_SERIES}
            current["up"] = present and track.series("up")[latest] == 1.0
            body = ",".join(f'"{n}":{series(track.series(n))}' for n in PAGE_ENDPOINT_SERIES)
            head = json.dumps({"endpoint": name, **track.meta, "present": present, "current": current})
            endpoints.append(f'{head[:-1]},"series":{{{body}}}}}')
        findings, findings_tick, min_duration = self.findings(now)
        parts.append(f'"gpus":[{",".join(gpus)}],"endpoints":[{",".join(endpoints)}],')
        parts.append(
            f'"findings_tick":{findings_tick},"min_duration_seconds":{min_duration!r},'
            f'"findings":{json.dumps(findings, ensure_ascii=False, allow_nan=False)}}}'
        )
        return "".join(parts).encode()

    def findings(self, now: float | None = None) -> tuple[list[dict[str, Any]], int, float]:
        """diagnose's findings on the window (exporter.live.findings), as diagnose's JSON writes them, the
        tick they were computed at and the shortest episode reported. On request only, and at most every
        FINDINGS_EVERY_SECONDS or FINDINGS_CPU_SHARE⁻¹ times what the last computation took, whichever is
        longer: while pages are open, findings take at most 2 % of a core (32 ms for 8 GPUs × 900 points)."""
        now = time.monotonic() if now is None else now
        cached = self._findings
        every = max(FINDINGS_EVERY_SECONDS, self._findings_cost / FINDINGS_CPU_SHARE)
        if cached is not None and (cached[0] == self._tick or now - cached[1] < every):
            return cached[2], cached[0], cached[3]
        from exporter.live.findings import findings_json

        started = time.perf_counter()
        found, min_duration = findings_json(self)
        self._findings_cost = time.perf_counter() - started
        kept, size = [], 0
        for finding in found[:MAX_FINDINGS]:
            size += len(json.dumps(finding, ensure_ascii=False).encode()) + 1
            if size > MAX_FINDINGS_BYTES:
                break
            kept.append(finding)
        self._findings = (self._tick, now, kept, min_duration)
        return kept, self._tick, min_duration


GZIP_ABOVE_BYTES = 1024


def history_reply(history: History, since: int | None, run: str | None, gzip: bool) -> tuple[bytes, bool]:
    """The collector's answer to a history request: the JSON, gzipped (here, off the server's loop) when
    the page accepts it and it is worth it; and whether it is."""
    body = history.json(since, run)
    if gzip and len(body) > GZIP_ABOVE_BYTES:
        from exporter.published import gzip_bytes

        return gzip_bytes(body), True
    return body, False
