"""`--plot FILE.html|FILE.svg`: the window's key series on one time axis, the findings marked.

Plain SVG written by hand (no plotting library, no script, nothing fetched): a self-contained HTML page
(charts, then the findings with their evidence and runbook links) or the bare SVG. Panels: tokens/s and
tokens per joule per endpoint; running vs waiting requests; per GPU NVML utilization (solid) vs SM activity
(dashed), power (its limit dotted) and memory used (the memory installed dotted). Each finding is a shaded
band from its start to its end (or the window's end), labelled with its rank in every panel.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.diagnose.dataset import Dataset, rates
from exporter.diagnose.report import Report, clock_for, full_time
from exporter.diagnose.stats import Values, present

WIDTH = 1100
LEFT, RIGHT = 74, 16
PANEL_HEIGHT = 150
PANEL_GAP = 46
TOP = 30
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff9f1c", "info": "#4f8fd6"}
GIB = 1024**3


@dataclass
class Line:
    label: str
    values: Values
    colour: str
    dash: str = ""  # SVG stroke-dasharray


@dataclass
class Panel:
    title: str
    unit: str
    lines: list[Line]
    fixed_max: float | None = None
    scale: float = 1.0  # values are divided by this for display


def panels(data: Dataset) -> list[Panel]:
    out: list[Panel] = []
    steps = data.step_seconds()
    tokens, tpj, running = [], [], []
    for k, endpoint in enumerate(data.endpoints):
        colour = PALETTE[k % len(PALETTE)]
        name = f"{endpoint.name} ({endpoint.node})" if len(data.nodes) > 1 else endpoint.name
        r = rates(endpoint, steps)
        tokens.append(Line(name, r.tokens_per_second, colour))
        tpj.append(Line(name, r.tokens_per_joule, colour))
        running.append(Line(f"{name} running", endpoint.signal("running"), colour))
        running.append(Line(f"{name} waiting", endpoint.signal("waiting"), colour, "6 4"))
    out.append(Panel("Generated tokens per second", "tokens/s", tokens))
    out.append(Panel("Tokens per joule (aligned counters)", "tokens/J", tpj))
    out.append(Panel("Requests running (solid) and waiting (dashed)", "requests", running))
    util, power, memory = [], [], []
    for k, gpu in enumerate(data.gpus):
        colour = PALETTE[k % len(PALETTE)]
        name = f"{gpu.node} GPU {gpu.gpu}" if len(data.nodes) > 1 else f"GPU {gpu.gpu}"
        util.append(Line(f"{name} utilization", gpu.signal("utilization"), colour))
        util.append(Line(f"{name} SM activity", gpu.signal("sm_active"), colour, "6 4"))
        power.append(Line(f"{name} power", gpu.signal("power"), colour))
        power.append(Line(f"{name} limit", gpu.signal("power_limit"), colour, "2 3"))
        memory.append(Line(f"{name} used", gpu.signal("memory_used"), colour))
        memory.append(Line(f"{name} installed", gpu.signal("memory_total"), colour, "2 3"))
    out.append(
        Panel("GPU utilization, NVML (solid) vs SM activity (dashed)", "%", util, fixed_max=100.0, scale=0.01)
    )
    out.append(Panel("GPU power (limit dotted)", "W", power))
    out.append(Panel("GPU memory used (installed dotted)", "GiB", memory, scale=GIB))
    return out


def nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for factor in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        candidate = factor * 10**exponent
        if candidate >= value:
            return candidate
    return 10 ** (exponent + 1)


TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def time_ticks(start: float, end: float, wanted: int = 8) -> list[float]:
    span = max(end - start, 1e-9)
    step = next((s for s in TICK_STEPS if span / s <= wanted), 86400 * math.ceil(span / 86400 / wanted))
    first = math.ceil(start / step) * step
    return [first + k * step for k in range(int((end - first) // step) + 1)]


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def svg(report: Report) -> str:
    data = report.data
    times = data.times
    start, end = data.window_start, data.window_end
    if times:
        start, end = min(start, times[0]), max(end, times[-1])
    plot_width = WIDTH - LEFT - RIGHT
    clock = clock_for(data.window_start, data.window_end)
    all_panels = panels(data)
    height = TOP + len(all_panels) * (PANEL_HEIGHT + PANEL_GAP) + 10

    def x(t: float) -> float:
        return LEFT + (t - start) / (end - start) * plot_width if end > start else LEFT

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} '
        f'{height}" '
        'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="11">',
        f"<title>tpw-exporter diagnose: {html.escape(full_time(data.window_start))} to "
        f"{html.escape(full_time(data.window_end))} UTC</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    ticks = time_ticks(start, end)
    for p, panel in enumerate(all_panels):
        top = TOP + p * (PANEL_HEIGHT + PANEL_GAP)
        bottom = top + PANEL_HEIGHT
        values = [v / panel.scale for line in panel.lines for v in present(line.values)]
        ymax = panel.fixed_max or nice_max(max(values, default=0.0))

        def y(value: float, top: float = top, ymax: float = ymax) -> float:
            return top + PANEL_HEIGHT - max(0.0, min(value, ymax * 1.05)) / ymax * PANEL_HEIGHT

        parts.append(
            f'<text x="{LEFT}" y="{top - 8}" font-size="13" '
            f'font-weight="600">{html.escape(panel.title)}</text>'
        )
        parts.append(
            f'<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="#fafafa" '
            'stroke="#cccccc"/>'
        )
        for finding in report.findings:
            x0 = x(finding.start)
            x1 = x(finding.end if finding.end is not None else end)
            colour = SEVERITY_COLOURS.get(finding.severity, "#999999")
            parts.append(
                f'<rect class="finding" data-rank="{finding.rank}" x="{x0:.1f}" y="{top}" '
                f'width="{max(x1 - x0, 1.5):.1f}" height="{PANEL_HEIGHT}" fill="{colour}" '
                'fill-opacity="0.13" '
                f'stroke="{colour}" stroke-opacity="0.5"><title>#{finding.rank} '
                f"{html.escape(finding.title)}: "
                f"{html.escape(clock(finding.start))} → "
                f"{html.escape(clock(finding.end) if finding.end else 'end')}</title></rect>"
            )
            parts.append(
                f'<text x="{x0 + 3:.1f}" y="{top + 12}" fill="{colour}" '
                f'font-weight="700">#{finding.rank}</text>'
            )
        for k in range(5):
            value = ymax * k / 4
            yy = y(value)
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + plot_width}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6e6e6"/>'
            )
            parts.append(
                f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#555555">{fmt(value)}</text>'
            )
        parts.append(
            f'<text x="14" y="{top + PANEL_HEIGHT / 2:.0f}" fill="#555555" '
            f'transform="rotate(-90 14 {top + PANEL_HEIGHT / 2:.0f})" '
            f'text-anchor="middle">{html.escape(panel.unit)}</text>'
        )
        for tick in ticks:
            xx = x(tick)
            parts.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#888888"/>'
            )
            parts.append(
                f'<text x="{xx:.1f}" y="{bottom + 16}" text-anchor="middle" '
                f'fill="#555555">{html.escape(clock(tick))}</text>'
            )

        def scaled(value: float, panel: Panel = panel, y: Callable[[float], float] = y) -> float:
            return y(value / panel.scale)

        for line in panel.lines:
            for segment in _segments(times, line.values, x, scaled):
                dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
                parts.append(
                    f'<polyline class="series" fill="none" stroke="{line.colour}" stroke-width="1.6"{dash} '
                    f'points="{segment}"><title>{html.escape(line.label)}</title></polyline>'
                )
        legend_x = float(LEFT + plot_width)
        title_end = LEFT + 7.6 * len(panel.title) + 16  # the legend stops short of the panel's title
        for line in reversed(panel.lines):
            label = html.escape(line.label)
            width = 6.6 * len(line.label) + 30
            legend_x -= width
            if legend_x < title_end:
                break
            dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
            parts.append(
                f'<line x1="{legend_x:.0f}" x2="{legend_x + 20:.0f}" y1="{top - 12}" y2="{top - 12}" '
                f'stroke="{line.colour}" stroke-width="2"{dash}/>'
            )
            parts.append(f'<text x="{legend_x + 24:.0f}" y="{top - 8}" fill="#333333">{label}</text>')
        if not values:
            parts.append(
                f'<text x="{LEFT + plot_width / 2:.0f}" y="{top + PANEL_HEIGHT / 2:.0f}" '
                'text-anchor="middle" '
                'fill="#999999">no data in this window</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _segments(
    times: list[float], values: Values, x: Callable[[float], float], y: Callable[[float], float]
) -> list[str]:
    """The line as point lists, broken where a sample is missing."""
    out: list[str] = []
    current: list[str] = []
    for t, v in zip(times, values, strict=False):
        if v is None or not math.isfinite(v):
            if current:
                out.append(" ".join(current))
                current = []
            continue
        current.append(f"{x(t):.1f},{y(v):.1f}")
    if current:
        out.append(" ".join(current))
    return out


def page(report: Report) -> str:
    data = report.data
    clock = clock_for(data.window_start, data.window_end)
    title = f"tpw-exporter diagnose: {full_time(data.window_start)} → {full_time(data.window_end)} UTC"
    items = []
    for f in report.findings:
        colour = SEVERITY_COLOURS.get(f.severity, "#999999")
        where = f"{f.endpoint} on {f.node}" if f.endpoint else str(f.node)
        if f.gpus:
            where += f", GPU{'s' if len(f.gpus) > 1 else ''} {', '.join(f.gpus)}"
        when = f"{clock(f.start)} → {clock(f.end) if f.end is not None else 'ongoing'}"
        evidence = "".join(f"<li>{html.escape(line)}</li>" for line in f.lines)
        items.append(
            f'<li id="finding-{f.rank}"><span class="sev" '
            f'style="background:{colour}">{html.escape(f.severity)}</span> '
            f"<b>#{f.rank} {html.escape(f.title)}</b><br>{html.escape(where)} · {html.escape(when)}"
            f"<ul>{evidence}</ul><p>next: {html.escape(f.next_check)}<br>runbook: "
            f'<a href="{html.escape(f.runbook)}">{html.escape(f.runbook)}</a></p></li>'
        )
    findings = (
        f"<ol class=findings>{''.join(items)}</ol>" if items else "<p>No known pattern in this window.</p>"
    )
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222}"
        "h1{font-size:18px}.meta{color:#555}.findings{padding-left:0;list-style:none}"
        ".findings>li{margin:14px 0}"
        ".sev{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;text-transform:uppercase}"
        "ul{margin:4px 0}p{margin:4px 0}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p class=meta>Prometheus {html.escape(data.prometheus)} · a sample every {fmt(data.grid.step)} s · "
        f"thresholds: {html.escape(data.thresholds.source)}</p>\n"
        f"{findings}\n{svg(report)}</body>\n</html>\n"
    )


def write_plot(report: Report, path: Path) -> None:
    text = svg(report) if path.suffix.lower() == ".svg" else page(report)
    path.write_text(text, encoding="utf-8")
