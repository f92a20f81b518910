"""Derived values over an aligned sliding window: throughput per watt, roofline bound, divergence, cost.

The exporter reads the GPU energy counters and the serving endpoints' counters in the same tick, so a
token count and an energy count can be taken over exactly the same interval. Everything here is a pure
function of snapshots (no clock, no I/O); `Deriver` only keeps what the window needs of its past ticks.

How the window is measured
--------------------------
A *step* is the interval between two consecutive snapshots of the window. For each step and each
counter the increase is computed the way Prometheus's `increase()` does between two samples: a decrease
is a counter reset, and the new value is then the increase. A series (model, outcome) counts only in steps
where it is present at both ends, as in Prometheus. Per endpoint, the steps used are those where the
endpoint was up at both ends, its main counter (generated tokens, or work units) was readable, and every
attributed GPU was up with an energy reading at both ends (same UUID): the tokens and the joules are then
sums over the very same steps, so tokens per joule is Δtokens / Δenergy over one interval, not a ratio of
two rates taken at different moments. A value that cannot be defined (no step, no energy, no tokens) is
None, which the renderer leaves absent: never NaN, never Inf.

A GPU attributed to several endpoints is split between them by their shares
(`EndpointSample.gpu_shares`, see `exporter.attribution`), so their energies add up to the GPU's; sum
`tpw_gpu_window_power_watts` for node power (every GPU once, unattributed ones too).
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from exporter.derive.bound import EVIDENCE_RATIOS, bound_evidence, classify_bound, evidence_from
from exporter.derive.goodput import SLO_KINDS, Share, SloIncrease, attainments, goodput, share, slo_step
from exporter.model import (
    ENDPOINT_FIELDS_BY_NAME,
    WINDOWED_COUNTER_FIELDS,
    Derived,
    DerivedEndpoint,
    DerivedGpu,
    EndpointEnergyTotal,
    EndpointSample,
    GpuSample,
    Site,
    Slo,
    SloAttainment,
    Snapshot,
    Thresholds,
)

TOKENS = "tokens"
GENERATION_TOKENS = "generation_tokens_total"  # the main counter of a token endpoint
JOULES_PER_KWH = 3.6e6
MULTIPLE_MODELS = "multiple"


# ---------------------------------------------------------------------------------------------------------
# Counters


def counter_increase(previous: float, current: float) -> float:
    """Increase of a counter between two samples, Prometheus style: a decrease is a reset to 0."""
    return current - previous if current >= previous else current


def counter_series(sample: EndpointSample, field_name: str) -> dict[tuple[str, str | None], float]:
    """The endpoint's series of one counter field, keyed by (model, outcome); duplicates are summed.

    The source leaves out values that are not readings of their field (`exporter.sources.page`); one that
    gets here anyway (NaN, ±Inf, negative, past 2**53) is skipped too: no increase is ever taken of it, so
    the running totals stay finite.
    """
    valid = ENDPOINT_FIELDS_BY_NAME[field_name].valid
    series: dict[tuple[str, str | None], float] = {}
    for value in sample.values:
        if value.field == field_name and valid(value.value):
            key = (value.model, value.outcome)
            series[key] = series.get(key, 0.0) + value.value
    return series


def field_increase(previous: EndpointSample, current: EndpointSample, field_name: str) -> float | None:
    """Summed increase of a counter field over every series present at both ends; None if none is."""
    before = counter_series(previous, field_name)
    after = counter_series(current, field_name)
    common = before.keys() & after.keys()
    if not common:
        return None
    return sum(counter_increase(before[key], after[key]) for key in common)


def model_label(sample: EndpointSample) -> str:
    """The endpoint's model: its single model name, "multiple" if several, "" if the engine has none."""
    models = {value.model for value in sample.values if value.model}
    if len(models) > 1:
        return MULTIPLE_MODELS
    return next(iter(models), "")


@dataclass(frozen=True, slots=True)
class GpuStep:
    """One GPU between two consecutive snapshots (both up, same UUID, energy read at both ends)."""

    energy_joules: float
    seconds: float  # between the two energy readings
    utilization_ratio: float | None  # NVML utilization at the end of the step


@dataclass(frozen=True, slots=True)
class EndpointStep:
    """One endpoint between two consecutive snapshots where it was up at both ends."""

    seconds: float  # between the two reads of its page
    increases: dict[str, float]  # counter field → summed increase (only fields readable at both ends)
    gpus: tuple[int, ...]  # attribution at the end of the step
    shares: tuple[float, ...] = ()  # per GPU: the part of its energy that is this endpoint's (default 1)
    # per latency its SLO sets (exporter.derive.goodput): observations and those within the threshold
    slo: Mapping[str, SloIncrease] = dataclasses.field(default_factory=dict)


def _energy_time(gpu: GpuSample, fallback: float) -> float:
    if gpu.energy_timestamp is not None:
        return gpu.energy_timestamp
    return gpu.timestamp or fallback


def _counter_value(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def gpu_step(
    previous: GpuSample, current: GpuSample, previous_time: float, current_time: float
) -> GpuStep | None:
    """The energy a GPU used between two samples, or None if it cannot be known for this step."""
    if not (previous.up and current.up) or previous.info.uuid != current.info.uuid:
        return None
    if not (_counter_value(previous.energy_joules) and _counter_value(current.energy_joules)):
        return None
    assert previous.energy_joules is not None and current.energy_joules is not None
    seconds = _energy_time(current, current_time) - _energy_time(previous, previous_time)
    if not seconds > 0:
        return None
    utilization = current.utilization_ratio
    if utilization is not None and not (math.isfinite(utilization) and utilization >= 0):
        utilization = None
    return GpuStep(counter_increase(previous.energy_joules, current.energy_joules), seconds, utilization)


def endpoint_step(
    previous: EndpointSample,
    current: EndpointSample,
    previous_time: float,
    current_time: float,
    slo: Slo | None = None,
) -> EndpointStep | None:
    """The counter increases of an endpoint between two samples (with `slo`, its latencies within it too),
    or None if it was down at either end."""
    if not (previous.up and current.up):
        return None
    seconds = current.timestamp - previous.timestamp
    if not (previous.timestamp > 0 and seconds > 0):
        seconds = current_time - previous_time
    if not seconds > 0:
        return None
    increases = {
        name: increase
        for name in WINDOWED_COUNTER_FIELDS
        if (increase := field_increase(previous, current, name)) is not None
    }
    slo_increases = slo_step(previous, current, slo) if slo is not None else {}
    return EndpointStep(seconds, increases, current.gpus, current.gpu_shares, slo_increases)


def main_field_candidates(unit: str) -> tuple[str, ...]:
    """Counters that measure an endpoint's work, in preference order, by its unit."""
    if unit == TOKENS:
        return (GENERATION_TOKENS,)
    if unit == "requests":
        return ("work_units_total", "requests_total")
    return ("work_units_total",)


def _step_main(unit: str, step: EndpointStep) -> str | None:
    return next((name for name in main_field_candidates(unit) if name in step.increases), None)


# ---------------------------------------------------------------------------------------------------------
# Frames: each snapshot of the window with running totals since the Deriver started
#
# Every quantity the window needs is a sum over steps, so each tick carries cumulative sums (the previous
# tick's plus this step's contribution) and the window's sum is `last − first`: the per-tick cost does not
# depend on the window's length, and the history keeps only a `Mark` (time + compact totals) per tick, not
# the snapshots. The totals are flat `array('d')`s whose slots `ENDPOINT_SLOTS` and `GPU_SLOTS` name, so a
# misspelt sum is an AttributeError or a KeyError, never a silent 0. Endpoint totals are kept per
# "variant": the steps where a given main counter was readable (or every usable step, variant ""), so the
# window can pick its main counter. GPU totals are keyed by (index, UUID): a replaced GPU starts from zero.

Sums = Sequence[float]  # a running total, or the sums over a window: indexed by ENDPOINT_SLOTS or GPU_SLOTS
Contribution = dict[int, float]  # what one step adds, by slot
EndpointKey = tuple[str, str]  # (endpoint name, variant: main counter field or "")
GpuKey = tuple[int, str]  # (index, UUID)
ALL_STEPS = ""


@dataclass(frozen=True, slots=True)
class CounterSlots:
    """One counter field over a set of steps: the steps where it was readable, its summed increase."""

    steps: int
    increase: int


@dataclass(frozen=True, slots=True)
class StepSetSlots:
    """One set of an endpoint's steps: how many, their duration, and the sums of its counter fields."""

    steps: int
    seconds: int
    counters: Mapping[str, CounterSlots]  # by counter field; a field without slots is a KeyError


@dataclass(frozen=True, slots=True)
class SloSlots:
    """One SLO latency over a set of steps: the steps where it was readable, its observations, and those
    within the threshold (lower bound, upper bound, estimate; `exporter.derive.goodput`)."""

    steps: int
    total: int
    lower: int
    upper: int
    estimate: int


@dataclass(frozen=True, slots=True)
class EndpointSlots:
    """Where an endpoint's sums sit in its running totals (`size` slots), over three nested sets of steps.

    all          every step where the endpoint was up at both ends (seconds: between reads of its page)
    energy       those where every attributed GPU had an energy increase (seconds: the GPUs' energy-clock
                 time), with `energy_joules`: the endpoint's share of those GPUs' energy
    utilization  those where every GPU also reported its utilization (seconds: page time), with `busy`
                 (Σ utilization × Δt) and `mean_busy` (mean utilization × Δt); counters: generated tokens
    """

    all: StepSetSlots
    energy: StepSetSlots
    energy_joules: int
    utilization: StepSetSlots
    busy: int
    mean_busy: int
    slo_all: Mapping[str, SloSlots]  # per SLO latency over the `all` steps
    slo_energy: Mapping[str, SloSlots]  # the same over the `energy` steps
    size: int


@dataclass(frozen=True, slots=True)
class GpmSlots:
    """One GPM ratio over the window: the GPM window seconds that reported it, ratio × seconds."""

    seconds: int
    weighted: int


@dataclass(frozen=True, slots=True)
class GpuSlots:
    """Where a GPU's sums sit in its running totals (`size` slots).

    `steps`, `energy_joules`, `seconds`: its energy steps. `owned_energy`: the energy of the steps where the
    GPU served at least one endpoint and every such endpoint's work counter was readable; `idle_energy`:
    the part of it where none of them did any work. `gpm`: per GPM ratio the evidence reads.
    """

    steps: int
    energy_joules: int
    seconds: int
    owned_energy: int
    idle_energy: int
    gpm: Mapping[str, GpmSlots]
    size: int


class _Allocator:
    """Hands out consecutive slot numbers; `size` is how many it gave."""

    def __init__(self) -> None:
        self.size = 0

    def slot(self) -> int:
        self.size += 1
        return self.size - 1

    def counters(self, fields: Iterable[str]) -> dict[str, CounterSlots]:
        return {name: CounterSlots(self.slot(), self.slot()) for name in fields}

    def step_set(self, fields: Iterable[str]) -> StepSetSlots:
        steps, seconds = self.slot(), self.slot()
        return StepSetSlots(steps, seconds, self.counters(fields))


def _endpoint_slots() -> EndpointSlots:
    new = _Allocator()
    every = new.step_set(WINDOWED_COUNTER_FIELDS)
    energy = new.step_set(WINDOWED_COUNTER_FIELDS)
    energy_joules = new.slot()
    utilization = new.step_set((GENERATION_TOKENS,))
    busy, mean_busy = new.slot(), new.slot()

    def slo_slots() -> dict[str, SloSlots]:
        return {kind: SloSlots(*(new.slot() for _ in range(5))) for kind in SLO_KINDS}

    slo_all, slo_energy = slo_slots(), slo_slots()
    return EndpointSlots(
        every, energy, energy_joules, utilization, busy, mean_busy, slo_all, slo_energy, new.size
    )


def _gpu_slots() -> GpuSlots:
    new = _Allocator()
    steps, energy_joules, seconds, owned, idle = (new.slot() for _ in range(5))
    gpm = {key: GpmSlots(new.slot(), new.slot()) for key in EVIDENCE_RATIOS}
    return GpuSlots(steps, energy_joules, seconds, owned, idle, gpm, new.size)


ENDPOINT_SLOTS = _endpoint_slots()
GPU_SLOTS = _gpu_slots()


@dataclass(frozen=True, slots=True)
class Mark:
    """What the window needs of a past tick: its time and the running totals through it."""

    time: float
    endpoints: dict[EndpointKey, array[float]]  # ENDPOINT_SLOTS
    gpus: dict[GpuKey, array[float]]  # GPU_SLOTS


@dataclass(frozen=True, slots=True)
class Frame:
    """The latest snapshot, indexed, with its step from the previous one and the running totals."""

    snapshot: Snapshot
    gpus: dict[int, GpuSample]
    endpoints: dict[str, EndpointSample]
    gpu_steps: dict[int, GpuStep]
    endpoint_steps: dict[str, EndpointStep]
    mark: Mark
    models: dict[str, str]  # model label from the newest sample of each endpoint that had values
    attributions: dict[str, tuple[int, ...]]  # GPUs of each endpoint at its newest step
    units: dict[str, str]  # unit of work of every endpoint seen, from its newest sample
    energy_totals: dict[str, float]  # attributed energy of each endpoint since start (see `energy_totals`)

    @property
    def time(self) -> float:
        return self.snapshot.monotonic_time


def _add(totals: array[float] | None, contribution: Contribution, size: int) -> array[float]:
    result = array("d", totals) if totals is not None else array("d", bytes(8 * size))
    for slot, value in contribution.items():
        result[slot] += value
    return result


def window_sums(first: array[float] | None, last: array[float] | None, size: int) -> Sums:
    """The sums over the steps after `first` up to `last` (running totals of `size` slots)."""
    if last is None:
        return array("d", bytes(8 * size))
    if first is None:
        return last
    return array("d", (after - before for before, after in zip(first, last, strict=True)))


def _count(contribution: Contribution, steps: StepSetSlots, increases: Mapping[str, float]) -> None:
    for name, increase in increases.items():
        slots = steps.counters[name]
        contribution[slots.steps] = 1.0
        contribution[slots.increase] = increase


def _count_slo(
    contribution: Contribution, slots: Mapping[str, SloSlots], increases: Mapping[str, SloIncrease]
) -> None:
    for kind, increase in increases.items():
        slot = slots[kind]
        contribution[slot.steps] = 1.0
        contribution[slot.total] = increase.total
        contribution[slot.lower] = increase.lower
        contribution[slot.upper] = increase.upper
        contribution[slot.estimate] = increase.estimate


def endpoint_contribution(step: EndpointStep, gpu_steps: Sequence[GpuStep | None]) -> Contribution:
    """What one endpoint step adds: its rates, and its energy and utilization when all its GPUs had them.

    The energy is each attributed GPU's energy times this endpoint's share of that GPU (see
    `exporter.attribution.share_gpus`), so the endpoints on a shared GPU add up to the GPU's energy. The
    slots are `ENDPOINT_SLOTS`'s.
    """
    slots = ENDPOINT_SLOTS
    contribution: Contribution = {slots.all.steps: 1.0, slots.all.seconds: step.seconds}
    _count(contribution, slots.all, step.increases)
    _count_slo(contribution, slots.slo_all, step.slo)
    known = [gpu for gpu in gpu_steps if gpu is not None]
    if not step.gpus or len(known) != len(gpu_steps):
        return contribution
    shares = step.shares if len(step.shares) == len(known) else (1.0,) * len(known)
    contribution[slots.energy.steps] = 1.0
    energies = (gpu.energy_joules * share for gpu, share in zip(known, shares, strict=True))
    contribution[slots.energy_joules] = sum(energies)
    contribution[slots.energy.seconds] = sum(gpu.seconds for gpu in known) / len(known)
    _count(contribution, slots.energy, step.increases)
    _count_slo(contribution, slots.slo_energy, step.slo)
    utilizations = [gpu.utilization_ratio for gpu in known]
    if all(value is not None for value in utilizations):
        busy = sum(value for value in utilizations if value is not None)
        contribution[slots.utilization.steps] = 1.0
        contribution[slots.utilization.seconds] = step.seconds
        contribution[slots.busy] = busy * step.seconds
        contribution[slots.mean_busy] = busy / len(utilizations) * step.seconds
        if GENERATION_TOKENS in step.increases:
            _count(contribution, slots.utilization, {GENERATION_TOKENS: step.increases[GENERATION_TOKENS]})
    return contribution


def gpu_contribution(
    gpu: GpuSample, step: GpuStep | None, owners: Sequence[tuple[EndpointSample, EndpointStep | None]]
) -> Contribution:
    """What one GPU adds this tick: energy over its step, its GPM window, and the idle-energy tally.

    The slots are `GPU_SLOTS`'s (see `GpuSlots` for what each sums).
    """
    slots = GPU_SLOTS
    contribution: Contribution = {}
    if step is not None:
        contribution[slots.steps] = 1.0
        contribution[slots.energy_joules] = step.energy_joules
        contribution[slots.seconds] = step.seconds
        if owners:
            work = 0.0
            for endpoint, endpoint_step_ in owners:
                main = _step_main(endpoint.unit, endpoint_step_) if endpoint_step_ is not None else None
                if endpoint_step_ is None or main is None:
                    break
                work += endpoint_step_.increases[main]
            else:
                contribution[slots.owned_energy] = step.energy_joules
                contribution[slots.idle_energy] = step.energy_joules if work == 0 else 0.0
    if gpu.up and gpu.profiling is not None and gpu.profiling.window_seconds > 0:
        seconds = gpu.profiling.window_seconds
        for key, gpm in slots.gpm.items():
            value = gpu.profiling.ratios.get(key)
            if value is not None and math.isfinite(value):
                contribution[gpm.seconds] = seconds
                contribution[gpm.weighted] = value * seconds
    return contribution


def make_frame(snapshot: Snapshot, previous: Frame | None, slos: Mapping[str, Slo] | None = None) -> Frame:
    """The frame of `snapshot`: its steps from `previous` and the running totals through it; `slos`: the
    endpoints' latency objectives, by name."""
    slos = slos or {}
    gpus = {gpu.info.index: gpu for gpu in snapshot.gpus}
    endpoints = {endpoint.name: endpoint for endpoint in snapshot.endpoints}
    gpu_steps: dict[int, GpuStep] = {}
    endpoint_steps: dict[str, EndpointStep] = {}
    if previous is not None:
        for index, gpu in gpus.items():
            before = previous.gpus.get(index)
            if before is not None and (
                step_g := gpu_step(before, gpu, previous.time, snapshot.monotonic_time)
            ):
                gpu_steps[index] = step_g
        for name, endpoint in endpoints.items():
            before_endpoint = previous.endpoints.get(name)
            if before_endpoint is not None and (
                step_e := endpoint_step(
                    before_endpoint, endpoint, previous.time, snapshot.monotonic_time, slos.get(name)
                )
            ):
                endpoint_steps[name] = step_e

    endpoint_totals = dict(previous.mark.endpoints) if previous else {}
    models = dict(previous.models) if previous else {}
    attributions = dict(previous.attributions) if previous else {}
    units = dict(previous.units) if previous else {}
    for name, endpoint in endpoints.items():
        units[name] = endpoint.unit
        if endpoint.values:
            models[name] = model_label(endpoint)
        step = endpoint_steps.get(name)
        if step is None:
            continue
        attributions[name] = step.gpus
        contribution = endpoint_contribution(step, [gpu_steps.get(index) for index in step.gpus])
        for variant in (ALL_STEPS, *main_field_candidates(endpoint.unit)):
            if variant == ALL_STEPS or variant in step.increases:
                key = (name, variant)
                endpoint_totals[key] = _add(endpoint_totals.get(key), contribution, ENDPOINT_SLOTS.size)

    gpu_totals = dict(previous.mark.gpus) if previous else {}
    for index, gpu in gpus.items():
        owners = [
            (endpoint, endpoint_steps.get(endpoint.name))
            for endpoint in snapshot.endpoints
            if index in endpoint.gpus
        ]
        contribution = gpu_contribution(gpu, gpu_steps.get(index), owners)
        if contribution:
            gpu_key = (index, gpu.info.uuid)
            gpu_totals[gpu_key] = _add(gpu_totals.get(gpu_key), contribution, GPU_SLOTS.size)
    mark = Mark(snapshot.monotonic_time, endpoint_totals, gpu_totals)
    energy = energy_totals(snapshot.endpoints, gpu_steps, previous.energy_totals if previous else {})
    return Frame(
        snapshot, gpus, endpoints, gpu_steps, endpoint_steps, mark, models, attributions, units, energy
    )


def energy_totals(
    endpoints: Iterable[EndpointSample], gpu_steps: Mapping[int, GpuStep], previous: Mapping[str, float]
) -> dict[str, float]:
    """Each attributed endpoint's energy counter: `previous` plus its share of its GPUs' energy this step.

    An endpoint's counter starts at 0 on the first tick its GPUs are known and grows by the step's energy
    whenever every attributed GPU has one, whether or not the endpoint's page was readable: the engine's
    own counters keep counting meanwhile, so over any range the two increases still cover the same time.
    A step where one of its GPUs has no energy reading adds nothing (its tokens still count): the one case
    where the counters' ratio is not aligned, and the window's `tokens_per_joule` skips that step instead.
    """
    totals = dict(previous)
    for endpoint in endpoints:
        if not endpoint.gpus:
            continue
        if endpoint.name not in totals:
            totals[endpoint.name] = 0.0  # the first value covers no step
            continue
        steps = [gpu_steps.get(index) for index in endpoint.gpus]
        shares = endpoint.gpu_shares
        if len(shares) != len(steps):
            shares = (1.0,) * len(steps)
        if all(step is not None for step in steps):
            totals[endpoint.name] += sum(
                step.energy_joules * share for step, share in zip(steps, shares, strict=True) if step
            )
    return totals


# ---------------------------------------------------------------------------------------------------------
# The window


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator when both are finite and the denominator is > 0; None otherwise."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def _total(sums: Sums, steps: StepSetSlots, field_name: str | None) -> float | None:
    """A counter's increase over a set of steps, only if it was readable in every one of them."""
    count = sums[steps.steps]
    if field_name is None or not count > 0:
        return None
    counter = steps.counters[field_name]
    if sums[counter.steps] != count:
        return None
    return max(0.0, sums[counter.increase])


def _slo_share(sums: Sums, slots: SloSlots, steps: float) -> Share | None:
    """An SLO latency's within-threshold share over a set of `steps` steps, if readable in every one."""
    if not steps > 0 or sums[slots.steps] != steps:
        return None
    return share(sums[slots.total], sums[slots.lower], sums[slots.upper], sums[slots.estimate])


def derive_endpoint(
    name: str, first: Mark, last: Frame, site: Site = Site(), slo: Slo | None = None
) -> DerivedEndpoint | None:
    """One endpoint over the window: rates, energy over the same steps, efficiency, cost; None if no step.

    Rates use every step where the endpoint was up at both ends and its main counter (generated tokens;
    work units, or requests, for other units) was readable. Values per joule use the subset where every
    attributed GPU also has an energy increase, with the counters re-summed over exactly that subset; the
    utilization-based values use the subset of those where every GPU also reported its utilization. With
    an `slo`: its attainment over the first set, goodput per joule over the energy set
    (`exporter.derive.goodput`).
    """
    unit = last.units[name]
    slots = ENDPOINT_SLOTS
    main = None
    for variant in (*main_field_candidates(unit), ALL_STEPS):
        key = (name, variant)
        sums = window_sums(first.endpoints.get(key), last.mark.endpoints.get(key), slots.size)
        if sums[slots.all.steps] > 0:
            main = variant or None
            break
    if not sums[slots.all.steps] > 0:
        return None
    is_tokens = unit == TOKENS
    work_field = main if not is_tokens else None

    seconds = sums[slots.all.seconds]
    values: dict[str, float | None] = {
        "requests_per_second": _ratio(_total(sums, slots.all, "requests_total"), seconds)
    }
    if is_tokens:
        values["generation_tokens_per_second"] = _ratio(_total(sums, slots.all, GENERATION_TOKENS), seconds)
        values["prompt_tokens_per_second"] = _ratio(_total(sums, slots.all, "prompt_tokens_total"), seconds)
    else:
        values["work_units_per_second"] = _ratio(_total(sums, slots.all, work_field), seconds)

    # No energy increase means the counter told us nothing (stuck, or a window shorter than its 100 ms
    # update period): every energy-based value is then undefined, not 0.
    energy = sums[slots.energy_joules]
    power = (
        _ratio(energy, sums[slots.energy.seconds]) if sums[slots.energy.steps] > 0 and energy > 0 else None
    )
    joules = energy if power is not None else None
    values["joules_per_request"] = _ratio(joules, _total(sums, slots.energy, "requests_total"))
    if is_tokens:
        tokens = _total(sums, slots.energy, GENERATION_TOKENS)
        values["tokens_per_joule"] = _ratio(tokens, joules)
        values["joules_per_token"] = _ratio(joules, tokens)
        facility_kwh = joules / JOULES_PER_KWH * site.pue if joules is not None else None
        kwh_per_token = _ratio(facility_kwh, tokens)
        if kwh_per_token is not None:
            if site.electricity_price_per_kwh is not None:
                values["energy_cost_per_million_tokens"] = (
                    kwh_per_token * 1e6 * site.electricity_price_per_kwh
                )
            if site.carbon_intensity_grams_per_kwh is not None:
                values["co2_grams_per_million_tokens"] = (
                    kwh_per_token * 1e6 * site.carbon_intensity_grams_per_kwh
                )
    else:
        work = _total(sums, slots.energy, work_field)
        values["work_units_per_joule"] = _ratio(work, joules)
        values["joules_per_work_unit"] = _ratio(joules, work)

    util_seconds = sums[slots.utilization.seconds]
    if sums[slots.utilization.steps] > 0 and util_seconds > 0:
        values["gpu_utilization_ratio"] = max(0.0, sums[slots.mean_busy]) / util_seconds
        if is_tokens:
            values["tokens_per_busy_gpu_second"] = _ratio(
                _total(sums, slots.utilization, GENERATION_TOKENS), sums[slots.busy]
            )

    attained: tuple[SloAttainment, ...] = ()
    good = None
    if slo is not None:
        every = {kind: _slo_share(sums, k, sums[slots.all.steps]) for kind, k in slots.slo_all.items()}
        aligned = {
            kind: _slo_share(sums, k, sums[slots.energy.steps]) for kind, k in slots.slo_energy.items()
        }
        attained = attainments(every, slo)
        if is_tokens:
            good = goodput(_finite(values["tokens_per_joule"]), aligned, slo)

    return DerivedEndpoint(
        name=name,
        model=last.models.get(name, ""),
        unit=unit,
        gpus=last.attributions.get(name, ()),
        window_seconds=seconds,
        energy_joules=_finite(joules),
        power_watts=_finite(power),
        **{key: _finite(value) for key, value in values.items()},
        slo_attainment=attained,
        goodput_tokens_per_joule=good[0] if good is not None else None,
        goodput_tokens_per_joule_bounds=good[1] if good is not None else None,
    )


def _finite(value: float | None) -> float | None:
    """The value, or None (absent) if it is not finite: a derived value is never NaN or ±Inf."""
    return value if value is None or math.isfinite(value) else None


def _gpm_mean(sums: Sums, key: str) -> float | None:
    """A GPM ratio's window mean from the GPU's sums, weighted by GPM window length; None if unreported."""
    gpm = GPU_SLOTS.gpm[key]
    weight = sums[gpm.seconds]
    if not weight > 1e-9:  # (running totals: a difference of equal sums may leave rounding noise)
        return None
    return min(max(sums[gpm.weighted] / weight, 0.0), 1.0)


def derive_gpu(index: int, first: Mark, last: Frame, thresholds: Thresholds = Thresholds()) -> DerivedGpu:
    """One GPU over the window: energy, power, achieved DRAM bandwidth, idle share, roofline bound."""
    latest = last.gpus[index]
    key = (index, latest.info.uuid)
    slots = GPU_SLOTS
    sums = window_sums(first.gpus.get(key), last.mark.gpus.get(key), slots.size)
    energy = sums[slots.energy_joules]
    power = _ratio(energy, sums[slots.seconds]) if sums[slots.steps] > 0 and energy > 0 else None

    bandwidth = None
    if latest.profiling is not None and latest.info.dram_peak_bandwidth_bytes_per_second is not None:
        ratio = latest.profiling.ratios.get("dram_bandwidth_utilization")
        if ratio is not None and math.isfinite(ratio):
            bandwidth = ratio * latest.info.dram_peak_bandwidth_bytes_per_second

    # GPM windows inside the derive window: those of every frame after the first (the first frame's
    # window ends where the derive window starts); the latest window alone while there is one frame.
    if first is not last.mark:
        evidence = evidence_from(lambda key: _gpm_mean(sums, key))
    else:
        evidence = bound_evidence([latest.profiling]) if latest.profiling is not None else None

    idle = None
    if any(index in endpoint.gpus for endpoint in last.snapshot.endpoints):
        idle = _ratio(sums[slots.idle_energy], sums[slots.owned_energy])
    return DerivedGpu(
        index=index,
        energy_joules=energy if power is not None else None,
        power_watts=power,
        dram_bandwidth_bytes_per_second=bandwidth,
        idle_energy_ratio=idle,
        bound=classify_bound(evidence, thresholds) if evidence is not None else None,
        evidence=evidence or {},
    )


def derive(
    first: Mark,
    last: Frame,
    thresholds: Thresholds = Thresholds(),
    site: Site = Site(),
    slos: Mapping[str, Slo] | None = None,
) -> Derived:
    """Everything derived over the window from the tick marked `first` to the `last` frame."""
    slos = slos or {}
    endpoints = tuple(
        derived
        for name in last.units
        if (derived := derive_endpoint(name, first, last, site, slos.get(name))) is not None
    )
    gpus = tuple(derive_gpu(index, first, last, thresholds) for index, gpu in last.gpus.items() if gpu.up)
    totals = tuple(
        EndpointEnergyTotal(name, last.models.get(name, ""), joules)
        for name, joules in sorted(last.energy_totals.items())
    )
    return Derived(
        window_seconds=last.time - first.time,
        endpoints=endpoints,
        gpus=gpus,
        currency=site.currency,
        energy_totals=totals,
    )


class Deriver:
    """The daemon stage: keeps the snapshots inside `window` seconds and attaches `Derived` to each.

    `tolerance` (seconds, typically half the tick interval) keeps a snapshot that is a hair older than
    the window, so tick jitter does not make the window flap between N and N-1 intervals. The cost of a
    tick does not grow with the window (frames carry running totals, see `make_frame`), and neither does
    the memory: at most `max_marks` past ticks are kept, at least window / max_marks seconds apart, so a
    long window starts on a tick within 1/max_marks of its length (the span is always reported exactly).
    """

    max_marks = 600

    def __init__(
        self,
        window: float = 30.0,
        thresholds: Thresholds = Thresholds(),
        site: Site = Site(),
        tolerance: float = 0.0,
        slos: Mapping[str, Slo] | None = None,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.window = window
        self.thresholds = thresholds
        self.site = site
        self.slos = dict(slos or {})  # endpoint name → its latency objective
        self.tolerance = max(0.0, tolerance)
        self._marks: deque[Mark] = deque()
        self._last: Frame | None = None

    @property
    def marks(self) -> tuple[Mark, ...]:
        """The ticks the window holds now, oldest first."""
        return tuple(self._marks)

    def __call__(self, snapshot: Snapshot) -> Snapshot:
        snapshot = dataclasses.replace(snapshot, derived=None)  # never keep a chain of derived values
        if self._last is not None and snapshot.monotonic_time <= self._last.time:
            self._marks.clear()  # time went backwards (a new clock): start a new window
            self._last = None
        frame = make_frame(snapshot, self._last, self.slos)
        self._last = frame
        # Past marks stay at least `spacing` apart; the newest one floats until it is that far from the
        # one before, then settles and the next tick starts a new one.
        spacing = self.window / self.max_marks
        if len(self._marks) < 2 or self._marks[-1].time - self._marks[-2].time >= spacing:
            self._marks.append(frame.mark)
        else:
            self._marks[-1] = frame.mark
        oldest_allowed = snapshot.monotonic_time - self.window - self.tolerance
        while len(self._marks) > 1 and self._marks[0].time < oldest_allowed:
            self._marks.popleft()
        derived = derive(self._marks[0], frame, self.thresholds, self.site, self.slos)
        return dataclasses.replace(snapshot, derived=derived)
