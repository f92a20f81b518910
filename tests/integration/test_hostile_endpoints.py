"""Hostile endpoints against the real exporter process (issue 13), the short form of benchmarks/hostile.py:
every hostile case at once in one `python -m exporter demo` beside a healthy vLLM endpoint, for a few
seconds. Each case must pass: ticks at the interval's rate and none longer than the interval, the endpoint
reporting the case's up and reason, the healthy endpoint keeping its series in every read, no NaN or
infinite sample, output and memory bounded (benchmarks/hostile.py's `Row.failures`)."""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import hostile  # the benchmark, from the path above


def test_every_hostile_case_at_once_passes() -> None:
    rows = hostile.run_cases(list(hostile.CASES), seconds=5.0, interval=1.0, together=True, echo=False)
    assert [row.case.name for row in rows] == [case.name for case in hostile.CASES]
    table = "\n".join([hostile.HEADER, *(hostile.format_row(row) for row in rows)])
    assert all(row.passed for row in rows), table
    assert rows[0].run.reads >= 15, table  # /metrics answered all along (4 reads a second)
