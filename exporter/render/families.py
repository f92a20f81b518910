"""The two ways render/ builds gauge families: one by hand (`gauge`), or a table of them over rows.

A table lists (metric name, help, getter); `table_families` makes one gauge family per entry with a sample
per row whose getter returns a value. A None value leaves that row's sample out (an absent series, never
a made-up 0), and the family is yielded even without samples so HELP and TYPE are always served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from prometheus_client.core import GaugeMetricFamily

Row = TypeVar("Row")
Getter = Callable[[Row], "float | None"]
GaugeTable = Sequence[tuple[str, str, Getter[Row]]]
"""(metric name, help, getter) of each gauge, in the order the families are rendered."""


def gauge(name: str, help_text: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    """An empty gauge family with these label names."""
    return GaugeMetricFamily(name, help_text, labels=list(labels))


def table_families(
    table: GaugeTable[Row], labels: Sequence[str], rows: Iterable[tuple[Sequence[str], Row]]
) -> Iterator[GaugeMetricFamily]:
    """One gauge family per table entry, labelled `labels`; `rows` are (label values, row) pairs."""
    rows = list(rows)
    for name, help_text, getter in table:
        family = gauge(name, help_text, labels)
        for values, row in rows:
            value = getter(row)
            if value is not None:
                family.add_metric(list(values), float(value))
        yield family
