"""diagnose's answer as a terminal report (text) or for tools (JSON, schema `tpw-exporter/diagnose/v1`,
documented in docs/diagnose.md; fields are only ever added within a version).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.diagnose.dataset import Dataset, rates
from exporter.diagnose.detectors import DETECTORS, PATTERNS, Finding, num, pct, seconds_text
from exporter.diagnose.stats import maximum, mean
from exporter.diagnose.thresholds import SPECS

SCHEMA = "tpw-exporter/diagnose/v1"
WIDTH = 104
GIB = 1024**3


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock_for(start: float, end: float) -> Callable[[float], str]:
    """Times as the report shows them (UTC): HH:MM:SS within one day, with the date otherwise."""
    same_day = (
        dt.datetime.fromtimestamp(start, dt.timezone.utc).date()
        == dt.datetime.fromtimestamp(end, dt.timezone.utc).date()
    )

    def clock(t: float | None) -> str:
        if t is None:
            return "n/a"
        moment = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        return moment.strftime("%H:%M:%S") if same_day else moment.strftime("%m-%d %H:%M:%S")

    return clock


def full_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Report:
    data: Dataset
    findings: list[Finding]
    min_duration: float

    # -- the window at a glance ------------------------------------------------------------------------

    def overview(self) -> dict[str, list[dict[str, Any]]]:
        data = self.data
        endpoints = []
        for endpoint in data.endpoints:
            r = rates(endpoint, data.step_seconds())
            tokens = sum(v for v in r.tokens if v is not None)
            seconds = sum(v for v in r.seconds if v is not None)
            joules = sum(
                e for e, t in zip(r.energy, r.tokens, strict=True) if e is not None and t is not None
            )
            energy_tokens = sum(
                t for e, t in zip(r.energy, r.tokens, strict=True) if e is not None and t is not None
            )
            up = [v for v in endpoint.signal("up") if v is not None]
            endpoints.append(
                {
                    "node": str(endpoint.node),
                    "endpoint": endpoint.name,
                    "engine": endpoint.engine,
                    "models": list(endpoint.models),
                    "gpus": list(endpoint.gpus),
                    "up_fraction": sum(1 for v in up if v >= 1) / len(up) if up else None,
                    "tokens_per_second": tokens / seconds if seconds else None,
                    "tokens_per_second_max": maximum(r.tokens_per_second),
                    "tokens_per_joule": energy_tokens / joules if joules else None,
                    "utilization": mean(endpoint.signal("utilization")),
                    "running": mean(endpoint.signal("running")),
                    "waiting_max": maximum(endpoint.signal("waiting")),
                }
            )
        gpus = []
        for gpu in data.gpus:
            states = Counter(state for state in gpu.bound if state is not None)
            gpus.append(
                {
                    "node": str(gpu.node),
                    "gpu": gpu.gpu,
                    "endpoints": sorted(gpu.endpoints),
                    "utilization": mean(gpu.signal("utilization")),
                    "sm_active": mean(gpu.signal("sm_active")),
                    "power_watts": mean(gpu.signal("power")),
                    "memory_used_bytes_max": maximum(gpu.signal("memory_used")),
                    "memory_total_bytes": maximum(gpu.signal("memory_total")),
                    "bound": states.most_common(1)[0][0] if states else None,
                }
            )
        return {"endpoints": endpoints, "gpus": gpus}

    # -- JSON ----------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = self.data
        thresholds = data.thresholds
        nodes = []
        for node in data.nodes:
            nodes.append(
                {
                    "node": str(node),
                    "cluster": node.cluster or None,
                    "job": node.job,
                    "instance": node.instance,
                    "gpus": [g.gpu for g in data.gpus if g.node == node],
                    "endpoints": [e.name for e in data.endpoints if e.node == node],
                }
            )
        return {
            "schema": SCHEMA,
            "prometheus": data.prometheus,
            "window": {
                "start": data.window_start,
                "end": data.window_end,
                "start_time": iso(data.window_start),
                "end_time": iso(data.window_end),
                "step_seconds": data.grid.step,
                "scrape_interval_seconds": data.grid.interval,
                "min_duration_seconds": self.min_duration,
            },
            "scope": {"node": data.scope.node, "endpoint": data.scope.endpoint},
            "thresholds": {
                "source": thresholds.source,
                "from_rules": sorted(thresholds.from_rules),
                "values": dict(thresholds.values),
            },
            "patterns_checked": sorted(PATTERNS),
            "nodes": nodes,
            "findings": [self._finding_json(f) for f in self.findings],
            "alerts": [
                {
                    "alertname": a.name,
                    "labels": a.labels,
                    "start": a.start,
                    "start_time": iso(a.start),
                    "end": a.end,
                    "end_time": iso(a.end),
                }
                for a in data.alerts
            ],
            "overview": self.overview(),
            "notes": list(data.notes),
        }

    @staticmethod
    def _finding_json(f: Finding) -> dict[str, Any]:
        return {
            "rank": f.rank,
            "pattern": f.pattern,
            "title": f.title,
            "severity": f.severity,
            "alert": f.alert,
            "node": str(f.node),
            "cluster": f.node.cluster or None,
            "job": f.node.job,
            "instance": f.node.instance,
            "endpoint": f.endpoint,
            "gpus": list(f.gpus),
            "start": f.start,
            "start_time": iso(f.start),
            "end": f.end,
            "end_time": iso(f.end),
            "ongoing": f.ongoing,
            "evidence": _clean(f.evidence),
            "summary": list(f.lines),
            "next_check": f.next_check,
            "runbook": f.runbook,
            "related": list(f.related),
        }

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    # -- text ------------------------------------------------------------------------------------------------

    def text(self) -> str:
        data = self.data
        clock = clock_for(data.window_start, data.window_end)
        out: list[str] = []
        span = seconds_text(data.window_end - data.window_start)
        out.append(
            f"tpw-exporter diagnose · {full_time(data.window_start)} → {full_time(data.window_end)} UTC "
            f"({span}; "
            f"a sample every {seconds_text(data.grid.step)}) · Prometheus {data.prometheus}"
        )
        if data.scope.describe():
            out.append(f"scope: {data.scope.describe()}")
        for node in data.nodes:
            gpus = [g.gpu for g in data.gpus if g.node == node]
            endpoints = [e.name for e in data.endpoints if e.node == node]
            out.append(
                f"node {node}: {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}"
                + (
                    f", endpoint{'s' if len(endpoints) != 1 else ''} {', '.join(endpoints)}"
                    if endpoints
                    else ""
                )
            )
        out.append(f"thresholds: {data.thresholds.source}")
        out.append("")
        if self.findings:
            count = len(self.findings)
            out.append(f"{count} finding{'s' if count != 1 else ''}, most likely cause first:")
            for f in self.findings:
                out.append("")
                out.extend(self._finding_text(f, clock))
        else:
            names = ", ".join(sorted(PATTERNS))
            out.extend(
                textwrap.wrap(
                    f"No known pattern in this window (checked: {names}; episodes of at least "
                    f"{seconds_text(self.min_duration)}).",
                    WIDTH,
                )
            )
        out.append("")
        out.extend(self._alerts_text(clock))
        out.extend(self._overview_text())
        for note in data.notes:
            out.extend(textwrap.wrap(f"note: {note}", WIDTH, subsequent_indent="      "))
        return "\n".join(out) + "\n"

    def _finding_text(self, f: Finding, clock: Callable[[float], str]) -> list[str]:
        where = f"{f.endpoint} on {f.node}" if f.endpoint else f"{f.node}"
        if f.gpus:
            where += f", {'GPU' if len(f.gpus) == 1 else 'GPUs'} {', '.join(f.gpus)}"
        end = self.data.window_end if f.end is None else f.end
        when = f"{clock(f.start)} → {'ongoing at the end of the window' if f.end is None else clock(f.end)}"
        when += f" ({seconds_text(end - f.start)})"
        lines = [f"#{f.rank} {f.severity.upper()}  {f.title}"]
        pad = "    "

        def field(label: str, text: str) -> None:
            wrapped = textwrap.wrap(text, WIDTH - 13, break_on_hyphens=False, break_long_words=False) or [""]
            lines.append(f"{pad}{label:<9}{wrapped[0]}")
            lines.extend(f"{pad}{'':<9}{more}" for more in wrapped[1:])

        field("where", where)
        field("when", when)
        for i, line in enumerate(f.lines):
            field("why" if i == 0 else "", line)
        field("next", f.next_check)
        field("runbook", f.runbook)
        if f.related:
            field("see also", ", ".join(f"#{rank}" for rank in f.related))
        return lines

    def _alerts_text(self, clock: Callable[[float], str]) -> list[str]:
        if not self.data.alerts:
            return []
        lines = ["TPW alerts firing in this window (Prometheus's ALERTS):"]
        for alert in self.data.alerts:
            where = ", ".join(
                f"{key}={alert.labels[key]}"
                for key in ("instance", "endpoint", "gpu", "cause")
                if key in alert.labels
            )
            until = "still firing" if alert.end is None else clock(alert.end)
            lines.append(f"  {alert.name} ({where}): {clock(alert.start)} → {until}")
        lines.append("")
        return lines

    def _overview_text(self) -> list[str]:
        view = self.overview()
        lines = ["At a glance (means over the window):"]
        for e in view["endpoints"]:
            parts = [
                f"{num(e['tokens_per_second'])} tokens/s (max {num(e['tokens_per_second_max'])})",
                f"{num(e['tokens_per_joule'])} tokens/J",
                f"GPUs {pct(e['utilization'])} busy",
                f"running {num(e['running'])}",
                f"waiting ≤ {num(e['waiting_max'])}",
            ]
            if e["up_fraction"] is not None and e["up_fraction"] < 1:
                parts.append(f"up {pct(e['up_fraction'])} of the time")
            lines.extend(
                textwrap.wrap(
                    f"{e['endpoint']} on {e['node']}: " + ", ".join(parts),
                    WIDTH,
                    initial_indent="  ",
                    subsequent_indent="      ",
                    break_on_hyphens=False,
                )
            )
        for g in view["gpus"]:
            memory = ""
            if g["memory_used_bytes_max"] is not None and g["memory_total_bytes"]:
                used, total = g["memory_used_bytes_max"] / GIB, g["memory_total_bytes"] / GIB
                memory = f", memory ≤ {num(used)} of {num(total)} GiB"
            bound = (
                f", mostly {g['bound']}-bound" if g["bound"] and g["bound"] not in ("idle", "mixed") else ""
            )
            if g["bound"] in ("idle", "mixed"):
                bound = f", mostly {g['bound']}"
            lines.extend(
                textwrap.wrap(
                    f"{g['node']} GPU {g['gpu']}: utilization {pct(g['utilization'])}, SM activity "
                    f"{pct(g['sm_active'])}, {num(g['power_watts'])} W{memory}{bound}",
                    WIDTH,
                    initial_indent="  ",
                    subsequent_indent="      ",
                    break_on_hyphens=False,
                )
            )
        if not view["endpoints"] and not view["gpus"]:
            lines.append("  (no GPU or endpoint series)")
        return lines


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_clean(v) for v in value]
    return value


__all__ = ["DETECTORS", "SCHEMA", "SPECS", "Report", "clock_for", "iso"]
