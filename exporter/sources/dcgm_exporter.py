"""dcgm-exporter's page as a profiling source: its `DCGM_FI_PROF_*` series → the `Profiling` GPM gives.

GPM is Hopper and newer; an A100, A30 or L40S has DCGM's profiling fields only, and a node run by the GPU
Operator already has dcgm-exporter reading them. `profiling.source` (`exporter.config.ProfilingConfig`)
decides which GPUs take their ratios from here: `auto`, the GPUs without GPM when `profiling.url` is set;
`dcgm-exporter`, every GPU (no GPM call is made). The NVML source reads the page in the same tick as the
GPUs, concurrently, under the tick's time limit, and matches its rows to the GPUs by UUID (label `UUID`,
or `uuid` where dcgm-exporter runs with its old label names). The ratios keep their keys
(`exporter.model.PROFILING_RATIOS`), so the bound, its evidence and the derived metrics read them as they
read GPM's.

Rows with `GPU_I_ID` (and `GPU_I_PROFILE`) are MIG instances, not the whole GPU. A GPU with a whole-GPU row
takes that row's values and its MIG rows are ignored. A GPU with MIG rows only (MIG mode: DCGM reports
profiling per GPU instance, each ratio relative to its instance) gets, for each ratio, the mean over its
instances weighted by their compute slices (the `1` of `1g.10gb`, the `1` of `1c.3g.40gb`); slices no
instance holds are not counted, so it reads what the partitioned part of the GPU does. A profile that
names no slices (`<<<NULL>>>` from old versions) gives every instance of that GPU weight 1. Rates
(PCIe, NVLink bytes per second) are summed over the instances instead.

dcgm-exporter writes DCGM's "blank" values (2**47 and up for floats, 2**63 − 16 and up for integers) when
a field has no reading; a ratio outside 0..1, a negative or blank rate, NaN and ±Inf are left out and
counted, never clamped into a number. A page that cannot be read, is not dcgm-exporter's, or has no
profiling series at all (its profiling module is not loaded, or its counters CSV enables none) makes the
source down for the tick (`tpw_source_up{source="dcgm-exporter"} 0`, the reason in `/api/v1/snapshot`,
one log line when it changes); the GPUs stay up, without profiling.

The window of a reading is the time since the previous good read, as GPM's is the time between two GPM
samples: the first read after start or after a failure opens the window and delivers nothing. The values
are DCGM's latest, refreshed every `-c` milliseconds of dcgm-exporter (30 000 by default: run it with
`-c 1000` for values as fresh as the tick).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from exporter.model import MIB, PROFILING_SOURCE_DCGM, Profiling, SourceStatus
from exporter.promtext import parse_selected
from exporter.redact import redact_text, redact_url
from exporter.sources.base import ExternalProfiles

log = logging.getLogger(__name__)

# DCGM field → profiling key (exporter.model.PROFILING_RATIOS / PROFILING_RATES). Ratios are 0..1.
DCGM_RATIOS: dict[str, str] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "graphics_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_bandwidth_utilization",
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": "fp64_active",
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": "fp32_active",
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": "fp16_active",
}
# Rates in bytes per second (DCGM's definition of these fields, whatever TYPE the page declares).
DCGM_RATES: dict[str, str] = {
    "DCGM_FI_PROF_PCIE_TX_BYTES": "pcie_tx_bytes_per_second",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "pcie_rx_bytes_per_second",
    "DCGM_FI_PROF_NVLINK_TX_BYTES": "nvlink_tx_bytes_per_second",
    "DCGM_FI_PROF_NVLINK_RX_BYTES": "nvlink_rx_bytes_per_second",
}
DCGM_FIELDS: frozenset[str] = frozenset(DCGM_RATIOS) | frozenset(DCGM_RATES)
# The ratios the roofline bound cannot do without (exporter.derive.bound.EVIDENCE_KEYS), by DCGM field.
EVIDENCE_FIELDS: dict[str, str] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "graphics_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_bandwidth_utilization",
}
DCGM_BLANK = float(2**47)  # DCGM_FP64_BLANK; the int64 blanks (2**63 − 16 …) are larger still
RATIO_SLACK = 1e-6  # a ratio this far past 0..1 is float noise and is clamped; further is invalid
DEFAULT_MAX_BODY_BYTES = 16 * MIB  # dcgm-exporter's page: ~50 KB a GPU, more with MIG and pods
_SLICES = re.compile(r"(?:(\d+)c\.)?(\d+)g\.")


def _slices(profile: str) -> int | None:
    """Compute slices of a MIG profile: `1g.10gb` → 1, `3g.40gb+me` → 3, `1c.3g.40gb` → 1; None if unnamed."""
    match = _SLICES.match(profile)
    if match is None:
        return None
    return int(match.group(1) or match.group(2)) or None


@dataclass
class _Gpu:
    """One UUID's rows on a page: whole-GPU values, and per MIG instance its profile and values."""

    gpu: str  # the page's `gpu` label (several for one UUID: the UUID is ambiguous)
    ambiguous: bool = False
    whole: dict[str, float] = field(default_factory=dict)
    instances: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """One GPU's profiling values from a page; `mig_instances` > 0 when combined from MIG rows."""

    ratios: dict[str, float]
    rates: dict[str, float]
    mig_instances: int = 0
    missing_evidence: tuple[str, ...] = ()  # DCGM fields the bound needs that the page lacks for it


@dataclass(frozen=True, slots=True)
class Page:
    """What a dcgm-exporter page says about profiling, by lower-case UUID."""

    gpus: dict[str, GpuProfile]
    ambiguous: frozenset[str] = frozenset()  # UUIDs labelled with several `gpu` indices (masked UUIDs)
    samples: int = 0  # profiling samples read (valid or not)
    invalid: int = 0  # samples left out: blank, NaN, ±Inf, a ratio outside 0..1, a negative rate
    malformed: int = 0  # profiling lines the parser could not read
    first_error: str | None = None


class PageError(Exception):
    """The page cannot feed profiling; the message is one line for the operator."""


def _valid(field_name: str, value: float) -> float | None:
    if not math.isfinite(value) or abs(value) >= DCGM_BLANK:
        return None
    if field_name in DCGM_RATIOS:
        if not -RATIO_SLACK <= value <= 1 + RATIO_SLACK:
            return None
        return min(max(value, 0.0), 1.0)
    return value if value >= 0 else None


def read_page(text: str) -> Page:
    """The profiling values of a dcgm-exporter page (pure; `PageError` when it has none to give)."""
    if "DCGM_FI_" not in text:
        raise PageError("not a dcgm-exporter page: no DCGM_FI_* series on it")
    parsed = parse_selected(text, DCGM_FIELDS)
    rows: dict[str, _Gpu] = {}
    invalid = 0
    for sample in parsed.samples:
        uuid = sample.labels.get("UUID") or sample.labels.get("uuid")
        value = _valid(sample.name, sample.value)
        if not uuid or value is None:
            invalid += 1
            continue
        gpu_label = sample.labels.get("gpu", "")
        entry = rows.setdefault(uuid.lower(), _Gpu(gpu=gpu_label))
        if gpu_label != entry.gpu:
            entry.ambiguous = True
        instance = sample.labels.get("GPU_I_ID", "")
        if instance:
            profile = sample.labels.get("GPU_I_PROFILE", "")
            _, values = entry.instances.setdefault(instance, (profile, {}))
            values.setdefault(sample.name, value)  # a GPU shared by pods repeats its row once per pod
        else:
            entry.whole.setdefault(sample.name, value)
    if not parsed.samples:
        if parsed.malformed:
            raise PageError(
                f"garbled dcgm-exporter page: {parsed.malformed} unreadable profiling line(s), "
                f"{parsed.first_error}"
            )
        raise PageError(
            "dcgm-exporter serves no DCGM_FI_PROF_* series (its profiling module is not loaded, the GPUs "
            "have none, or its counters CSV enables none)"
        )
    gpus = {uuid: _combine(entry) for uuid, entry in rows.items() if not entry.ambiguous}
    return Page(
        gpus={uuid: profile for uuid, profile in gpus.items() if profile is not None},
        ambiguous=frozenset(uuid for uuid, entry in rows.items() if entry.ambiguous),
        samples=len(parsed.samples),
        invalid=invalid,
        malformed=parsed.malformed,
        first_error=parsed.first_error,
    )


def _combine(entry: _Gpu) -> GpuProfile | None:
    """The GPU's values: its whole-GPU row, else its MIG instances' (slice-weighted ratios, summed rates)."""
    if entry.whole:
        values, instances = entry.whole, 0
    elif entry.instances:
        values, instances = _mig_values(list(entry.instances.values())), len(entry.instances)
    else:
        return None
    return GpuProfile(
        ratios={DCGM_RATIOS[name]: value for name, value in values.items() if name in DCGM_RATIOS},
        rates={DCGM_RATES[name]: value for name, value in values.items() if name in DCGM_RATES},
        mig_instances=instances,
        missing_evidence=tuple(name for name in EVIDENCE_FIELDS if name not in values),
    )


def _mig_values(instances: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    slices = [_slices(profile) for profile, _ in instances]
    weights = [1 if None in slices else int(count or 1) for count in slices]
    combined: dict[str, float] = {}
    for name in sorted({name for _, values in instances for name in values}):
        present = [
            (weight, values[name])
            for weight, (_, values) in zip(weights, instances, strict=True)
            if name in values
        ]
        if name in DCGM_RATES:
            combined[name] = sum(value for _, value in present)
        else:
            combined[name] = sum(weight * value for weight, value in present) / sum(w for w, _ in present)
    return combined


class DcgmExporterProfiler:
    """Reads dcgm-exporter's page once per tick for the GPUs the NVML source asks about (an
    `exporter.sources.base.ExternalProfiler`)."""

    name = PROFILING_SOURCE_DCGM

    def __init__(
        self,
        url: str,
        timeout_seconds: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # in messages and logs: user info and query values <redacted>
        self.timeout = timeout_seconds
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._client: httpx.AsyncClient | None = None  # opened on the first read, in the collector's loop
        self._previous: float | None = None  # when the last good read started (the next window opens there)
        self._gpu_problems: dict[str, str] = {}  # UUID → what keeps its profiling away (logged once)
        self._page_notes: set[str] = set()

    async def read(self, uuids: Sequence[str]) -> ExternalProfiles:
        started = self._clock()
        try:
            page = await asyncio.wait_for(self._read_page(), timeout=self.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return self._failed(started, f"{self.shown_url}: no page within {self.timeout:g} s")
        except PageError as exc:
            return self._failed(started, f"{self.shown_url}: {exc}")
        except httpx.HTTPError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return self._failed(started, f"{self.shown_url}: {type(exc).__name__}: {redact_text(reason)}")
        except Exception as exc:  # a bug must cost the GPUs their profiling for a tick, never the GPUs
            log.debug("dcgm-exporter: read failed unexpectedly", exc_info=True)
            return self._failed(started, f"{self.shown_url}: {type(exc).__name__}: {redact_text(str(exc))}")
        window = started - self._previous if self._previous is not None else None
        self._previous = started
        self._note_page(page)
        profiles: dict[str, Profiling] = {}
        for uuid in uuids:
            profile = page.gpus.get(uuid.lower())
            self._note_gpu(uuid, page, profile)
            if profile is not None and window is not None and window > 0:
                profiles[uuid] = Profiling(
                    window_seconds=window,
                    ratios=profile.ratios,
                    rates=profile.rates,
                    source=PROFILING_SOURCE_DCGM,
                    mig_instances=profile.mig_instances,
                )
        status = SourceStatus(self.name, True, self._clock() - started)
        return ExternalProfiles(status=status, profiles=profiles)

    def _failed(self, started: float, error: str) -> ExternalProfiles:
        self._previous = None  # the next good read opens a new window, as GPM does after a failure
        line = " ".join(error.split())
        return ExternalProfiles(status=SourceStatus(self.name, False, self._clock() - started, line[:300]))

    async def _read_page(self) -> Page:
        body = await self._fetch()
        text = body.decode("utf-8", "replace")
        return await asyncio.to_thread(read_page, text)

    async def _fetch(self) -> bytes:
        headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip, identity"}
        if self._client is None:
            # trust_env=False: a proxy from the environment must not capture the scrape of a local exporter.
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        async with self._client.stream("GET", self.url, headers=headers, timeout=self.timeout) as response:
            if response.is_redirect:
                raise PageError(f"HTTP {response.status_code} redirect, not followed")
            if response.status_code != 200:
                raise PageError(f"HTTP {response.status_code}")
            cap = self.max_body_bytes
            encoding = response.headers.get("content-encoding", "").strip().lower()
            if encoding not in ("", "identity", "gzip"):
                raise PageError(f"unsupported Content-Encoding {encoding[:20]!r}")
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                if inflate is not None:
                    chunk = inflate.decompress(chunk, cap + 1 - size)
                size += len(chunk)
                if size > cap:
                    raise PageError(
                        f"page over the {cap}-byte cap (profiling.max_body_bytes); stopped reading"
                    )
                chunks.append(chunk)
            return b"".join(chunks)

    def _note_page(self, page: Page) -> None:
        """One log line per kind of page problem, the first time it is seen."""
        notes = []
        if page.invalid:
            notes.append(
                "left out profiling values that are no reading (DCGM blank values, NaN, ratios outside 0..1, "
                "negative rates, rows without a UUID)"
            )
        if page.malformed:
            notes.append(f"skipped unreadable profiling lines ({page.first_error})")
        for note in notes:
            kind = note.split(" (")[0]
            if kind not in self._page_notes:
                self._page_notes.add(kind)
                log.warning("dcgm-exporter %s: %s", self.shown_url, note)

    def _note_gpu(self, uuid: str, page: Page, profile: GpuProfile | None) -> None:
        """Log, once per change, why a GPU gets no (or no bound-capable) profiling from the page."""
        if uuid.lower() in page.ambiguous:
            problem = f"GPU {uuid}: its UUID labels several GPUs on the dcgm-exporter page; not used"
        elif profile is None:
            problem = f"GPU {uuid}: no DCGM_FI_PROF_* series with this UUID on the dcgm-exporter page"
        elif profile.missing_evidence:
            problem = (
                f"GPU {uuid}: dcgm-exporter does not report {', '.join(profile.missing_evidence)}: its "
                "ratios are exported, but no roofline bound without them (enable them in dcgm-exporter's "
                "counters CSV)"
            )
        else:
            problem = ""
        previous = self._gpu_problems.get(uuid, "")
        if problem == previous:
            return
        self._gpu_problems[uuid] = problem
        if problem:
            log.warning("%s", problem)
        else:
            log.info("GPU %s: profiling from dcgm-exporter", uuid)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
