"""Metric families → exposition bytes: text 0.0.4 and OpenMetrics 1.0, the bytes prometheus_client writes.

prometheus_client's `generate_latest` re-validates and re-escapes every metric and label name of every
sample character by character; at 64 GPUs that was 190 ms of a 200 ms tick. The names here are the
exporter's own, so each is checked once (cached) and only label values and HELP are escaped per use. The
output is byte-for-byte what prometheus_client writes for the same families (tests/unit/test_writer.py
compares them); a family with something this writer does not produce itself (exemplars, native histograms,
timestamps) is handed to prometheus_client, so the bytes stay right, only slower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.validation import _is_valid_legacy_labelname, _is_valid_legacy_metric_name

OPENMETRICS_EOF = "# EOF\n"
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_TEXT_SUFFIXES = {"counter": "_total", "info": "_info"}
_TRAILING_SUFFIXES = ("_created", "_gsum", "_gcount")  # moved to gauges of their own in text 0.0.4
_TRAILING_ENDS = frozenset(suffix[-2:] for suffix in _TRAILING_SUFFIXES)


def go_float(value: float) -> str:
    """A sample value as Go (and prometheus_client's floatToGoString) writes it."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@lru_cache(maxsize=4096)
def _plain_name(name: str) -> bool:
    """True for a metric name this writer may write as it is (the legacy character set, no colon)."""
    return _is_valid_legacy_metric_name(name) and ":" not in name


@lru_cache(maxsize=1024)
def _plain_label(name: str) -> bool:
    return _is_valid_legacy_labelname(name)


@lru_cache(maxsize=4096)
def _plain_labels(names: tuple[str, ...]) -> bool:
    return all(_plain_label(name) for name in names)


def _own_family(metric: Metric) -> bool:
    """True if this writer writes the family itself: plain names, no exemplars, histograms or timestamps."""
    if not _plain_name(metric.name):
        return False
    for sample in metric.samples:
        if sample.exemplar is not None or sample.native_histogram is not None or sample.timestamp is not None:
            return False
        if not _plain_name(sample.name) or not _plain_labels(tuple(sample.labels)):
            return False
    return True


class _Single:
    """A registry of one family, for prometheus_client's own writers."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = []
    for key, value in sorted(labels.items()):
        if "\\" in value or "\n" in value or '"' in value:
            value = _escape_value(value)
        pairs.append(f'{key}="{value}"')
    return "{" + ",".join(pairs) + "}"


def expositions(families: Iterable[Metric]) -> tuple[bytes, bytes]:
    """The families in the Prometheus text format 0.0.4 and in OpenMetrics 1.0 (ending with `# EOF`).

    Written in one pass: a sample's line is the same in both formats.
    """
    text: list[str] = []
    openmetrics: list[str] = []
    for metric in families:
        if not _own_family(metric):
            text.append(generate_latest(_Single(metric)).decode("utf-8"))
            body = generate_openmetrics(_Single(metric)).decode("utf-8")
            openmetrics.append(body.removesuffix(OPENMETRICS_EOF))
            continue
        name = metric.name
        text_name = name + _TEXT_SUFFIXES.get(metric.type, "")
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        text_type = _TEXT_TYPES.get(metric.type, metric.type)
        text.append(f"# HELP {text_name} {help_text}\n# TYPE {text_name} {text_type}\n")
        openmetrics.append(
            f"# HELP {name} {_escape_value(metric.documentation)}\n# TYPE {name} {metric.type}\n"
        )
        if metric.unit:
            openmetrics.append(f"# UNIT {name} {metric.unit}\n")
        trailing: dict[str, list[str]] = {}
        for sample in metric.samples:
            series = sample.name + _labels(sample.labels)
            if sample.value is None:  # (OpenMetrics only: text 0.0.4 has no sample without a value)
                openmetrics.append(f"{series} \n")
                continue
            line = f"{series} {go_float(sample.value)}\n"
            openmetrics.append(line)
            suffix = (
                next((s for s in _TRAILING_SUFFIXES if sample.name == name + s), None)
                if (sample.name[-2:] in _TRAILING_ENDS)
                else None
            )
            if suffix is None:
                text.append(line)
            else:
                trailing.setdefault(suffix, []).append(line)
        for suffix, lines in sorted(trailing.items()):
            text.append(f"# HELP {name}{suffix} {help_text}\n# TYPE {name}{suffix} gauge\n")
            text.extend(lines)
    openmetrics.append(OPENMETRICS_EOF)
    return "".join(text).encode("utf-8"), "".join(openmetrics).encode("utf-8")
