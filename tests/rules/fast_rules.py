"""A time-scaled copy of Prometheus rule files, for end-to-end tests and quick demos.

    python tests/rules/fast_rules.py deploy/prometheus/rules/alerts.yml > /tmp/alerts-fast.yml
    python tests/rules/fast_rules.py --factor 60 deploy/prometheus/rules/alerts.yml -o /tmp/alerts-fast.yml

Every duration is divided by the same factor (default 60, so minutes become seconds): each rule's `for:`,
each group's `interval:`, and in every expression each range `[10m]`, subquery `[1h:5m]` and
`offset 1d`. Nothing else changes: the expressions are otherwise identical to the shipped ones, thresholds
included. Numbers that are not durations (predict_linear's horizon in seconds, `> 120` seconds of
staleness) stay as they are. Text inside string literals is never touched. The shipped files are only read.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

UNITS_MS: dict[str, int] = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
DURATION = r"(?:\d+(?:ms|[ywdhms]))+"
_PART = re.compile(r"(\d+)(ms|[ywdhms])")
_RANGE = re.compile(rf"\[\s*({DURATION})\s*(?::\s*({DURATION})?\s*)?\]")
_OFFSET = re.compile(rf"\boffset\s+(-?)({DURATION})")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def parse_duration(text: str) -> int:
    """A Prometheus duration (`1h30m`, `500ms`) in milliseconds."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(number) * UNITS_MS[unit] for number, unit in _PART.findall(text))


def format_duration(milliseconds: int) -> str:
    """Milliseconds → the shortest exact Prometheus duration (`90000` → `1m30s`)."""
    if milliseconds <= 0:
        raise ValueError(f"a scaled duration must stay positive, got {milliseconds} ms")
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):  # no w/y: they do not always divide evenly when read back
        count, milliseconds = divmod(milliseconds, UNITS_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def scale_duration(text: str, factor: float) -> str:
    scaled = round(parse_duration(text) / factor)
    if scaled < 1:
        raise ValueError(f"{text} divided by {factor:g} is below 1 ms")
    return format_duration(scaled)


def scale_expression(expr: str, factor: float) -> str:
    """Every range, subquery and offset duration of a PromQL expression divided by `factor`."""

    def code(text: str) -> str:
        def scale_range(match: re.Match[str]) -> str:
            window, step = match.group(1), match.group(2)
            if ":" not in match.group(0):
                return f"[{scale_duration(window, factor)}]"
            resolution = scale_duration(step, factor) if step else ""
            return f"[{scale_duration(window, factor)}:{resolution}]"

        text = _RANGE.sub(scale_range, text)
        return _OFFSET.sub(lambda m: f"offset {m.group(1)}{scale_duration(m.group(2), factor)}", text)

    pieces, position = [], 0
    for literal in _STRING.finditer(expr):
        pieces.append(code(expr[position : literal.start()]))
        pieces.append(literal.group(0))
        position = literal.end()
    pieces.append(code(expr[position:]))
    return "".join(pieces)


def scale_rules(data: dict[str, Any], factor: float) -> dict[str, Any]:
    """A rule file (as loaded from YAML) with every duration divided by `factor`; the input is not changed."""
    groups = []
    for group in data.get("groups", []):
        group = dict(group)
        if "interval" in group:
            group["interval"] = scale_duration(str(group["interval"]), factor)
        rules = []
        for rule in group.get("rules", []):
            rule = dict(rule)
            rule["expr"] = scale_expression(str(rule["expr"]), factor)
            if "for" in rule:
                rule["for"] = scale_duration(str(rule["for"]), factor)
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = scale_duration(str(rule["keep_firing_for"]), factor)
            rules.append(rule)
        group["rules"] = rules
        groups.append(group)
    return {**data, "groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as block scalars, so the copy reads like the original."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def write_scaled(source: Path, target: Path, factor: float = 60.0) -> Path:
    """Write the scaled copy of the rule file `source` to `target`."""
    target.write_text(dump(scale_rules(yaml.safe_load(source.read_text(encoding="utf-8")), factor)))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rules", type=Path, help="a Prometheus rule file")
    parser.add_argument("--factor", type=float, default=60.0, help="divide every duration by this (60)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    if not args.factor > 0:
        parser.error("--factor must be > 0")
    text = dump(scale_rules(yaml.safe_load(args.rules.read_text(encoding="utf-8")), args.factor))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
