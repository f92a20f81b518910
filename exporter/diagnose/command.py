"""`tpw-exporter diagnose`: the subcommand's flags, time parsing and the run (exit 0 with or without
findings; 2 with one line on stderr when Prometheus is unreachable, answers an error, or holds no tpw
series for the window).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from pathlib import Path

EXIT_ERROR = 2
DEFAULT_PROMETHEUS = "http://localhost:9090"
DEFAULT_SINCE = "2h"
PLOT_SUFFIXES = (".html", ".htm", ".svg")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|[smhdw])")

DESCRIPTION = """\
Ask Prometheus what happened to the GPUs and serving endpoints over a window, and name the patterns
tpw-exporter knows, most likely cause first: GPU errors, GPUs/endpoints/exporter down, throttling,
efficiency regression (after a restart or deploy), batch-size drop, memory leak, busy but flat,
input/CPU-bound, bandwidth-bound at peak. Each finding says when it started and ended, on which GPUs and
endpoints, with the numbers behind it, the next thing to check and its runbook. The thresholds are the
alert rules' (read from the rules Prometheus has loaded; the shipped values otherwise).

Exit status: 0 (with or without findings); 2 with one line on stderr when Prometheus cannot be reached,
answers an error, or holds no tpw series in the window."""

EPILOG = """\
examples:
  tpw-exporter diagnose --prometheus http://prometheus:9090 --since 2h
  tpw-exporter diagnose --since 6h --node gpu-node-7 --endpoint llama-70b
  tpw-exporter diagnose --start 2025-06-01T01:00:00Z --end 2025-06-01T03:00:00Z --format json
  tpw-exporter diagnose --since 1h --plot incident.html     (self-contained HTML with SVG charts)

times: RFC 3339 (2025-06-01T01:00:00Z, …+02:00), "2025-06-01 01:00[:00]" (UTC), or Unix seconds.
durations: 90s, 15m, 2h, 1d, 1h30m. The JSON schema: docs/diagnose.md."""


class UsageError(Exception):
    """A flag's value is not usable: one line for the user."""


def parse_duration(text: str) -> float:
    """`2h`, `90s`, `1h30m`, `1.5h`, or plain seconds → seconds (> 0)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise UsageError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d, 1h30m)") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not seconds > 0:
        raise UsageError(f"a duration must be positive, got {text!r}")
    return seconds


def parse_time(text: str, now: float) -> float:
    """RFC 3339, `YYYY-MM-DD HH:MM[:SS]` (UTC), Unix seconds, or `now`."""
    text = text.strip()
    if text == "now":
        return now
    try:
        return float(text)
    except ValueError:
        pass
    candidate = text.replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = dt.datetime.fromisoformat(candidate)
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (RFC 3339 like 2025-06-01T01:00:00Z, '2025-06-01 01:00' in UTC, or Unix "
            "seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def window(args: argparse.Namespace, now: float) -> tuple[float, float]:
    end = parse_time(args.end, now) if args.end else now
    if args.start and args.since:
        raise UsageError("give --start or --since, not both")
    start = parse_time(args.start, now) if args.start else end - parse_duration(args.since or DEFAULT_SINCE)
    if not start < end:
        raise UsageError(
            f"the window must start before it ends ({args.start or args.since} → {args.end or 'now'})"
        )
    return start, end


def default_min_duration(span: float, step: float) -> float:
    """An episode must last 3 samples, and 1/20 of the window up to 5 minutes."""
    return max(3 * step, min(span / 20, 300.0))


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "diagnose",
        help="ask Prometheus which known patterns happened, when, where, and why",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        default=DEFAULT_PROMETHEUS,
        help=f"Prometheus base URL (default {DEFAULT_PROMETHEUS})",
    )
    parser.add_argument(
        "--since", metavar="DURATION", help=f"window ending at --end (default {DEFAULT_SINCE})"
    )
    parser.add_argument("--start", metavar="TIME", help="window start (instead of --since)")
    parser.add_argument("--end", metavar="TIME", help="window end (default now)")
    parser.add_argument(
        "--node", metavar="NODE", help="only this node: its `instance` label, with or without :port"
    )
    parser.add_argument("--endpoint", metavar="NAME", help="only this endpoint (and the GPUs serving it)")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format (default text)"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.html|FILE.svg",
        type=Path,
        help="also draw the window's key series with the findings marked: a self-contained HTML page or SVG "
        "(PNG is not supported: no plotting library is needed)",
    )
    parser.add_argument(
        "--min-duration",
        metavar="DURATION",
        help="shortest episode reported (default: 3 samples, and 1/20 of the window up to 5 minutes)",
    )
    parser.add_argument(
        "--runbook-base-url",
        metavar="URL",
        help="link runbooks under URL (default: the runbook_url of the alert rules loaded in Prometheus, "
        "else the project's docs/runbooks/)",
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, metavar="SECONDS", help="per request (default 15)"
    )
    return parser


def run(args: argparse.Namespace, now: float | None = None) -> int:
    from exporter.diagnose.dataset import NoData, Scope, load
    from exporter.diagnose.detectors import diagnose
    from exporter.diagnose.prometheus import Prometheus, PrometheusError
    from exporter.diagnose.report import Report, clock_for

    now = time.time() if now is None else now
    try:
        start, end = window(args, now)
        if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(
                f"--plot {args.plot}: write .html (self-contained page) or .svg; PNG is not supported (no "
                "plotting library is bundled): open the HTML in a browser and save or print it"
            )
        min_duration = parse_duration(args.min_duration) if args.min_duration else None
    except UsageError as exc:
        return fail(f"diagnose: {exc}")
    scope = Scope(node=args.node, endpoint=args.endpoint)
    with Prometheus(args.prometheus, timeout=args.timeout) as prom:
        try:
            data = load(prom, start, end, scope)
        except PrometheusError as exc:
            return fail(f"diagnose: {exc}")
        except NoData as exc:
            where = f" ({scope.describe()})" if scope.describe() else ""
            return fail(
                f"diagnose: {exc} in Prometheus at {prom.shown} between {_utc(start)} and "
                f"{_utc(end)}{where}: is it "
                "scraping tpw-exporter, and is the window right?"
            )
    if min_duration is None:
        min_duration = default_min_duration(end - start, data.grid.step)
    findings = diagnose(data, min_duration, clock_for(start, end), args.runbook_base_url)
    report = Report(data, findings, min_duration)
    if args.plot is not None:
        from exporter.diagnose.plot import write_plot

        try:
            write_plot(report, args.plot)
        except OSError as exc:
            return fail(f"diagnose: cannot write {args.plot}: {exc.strerror or exc}")
        print(f"tpw-exporter: diagnose: plot written to {args.plot}", file=sys.stderr)
    sys.stdout.write(report.json_text() if args.format == "json" else report.text())
    return 0


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fail(message: str) -> int:
    line = " ".join(message.split())
    print(f"tpw-exporter: {line}", file=sys.stderr)
    return EXIT_ERROR
