"""render.families: gauge() and the (name, help, getter) tables every render module turns into families."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from exporter.render.families import GaugeTable, gauge, table_families


def test_gauge_is_an_empty_gauge_family_with_the_label_names() -> None:
    family = gauge("tpw_x", "An x.", iter(["gpu", "reason"]))
    assert isinstance(family, GaugeMetricFamily)
    assert (family.name, family.documentation, family.type, family.samples) == ("tpw_x", "An x.", "gauge", [])
    family.add_metric(["0", "hot"], 1.0)
    assert family.samples[0].labels == {"gpu": "0", "reason": "hot"}
    assert gauge("tpw_y", "A y.").samples == []


def test_table_families_one_family_per_entry_one_sample_per_row_with_a_value() -> None:
    table: GaugeTable[dict[str, int | None]] = (
        ("tpw_a", "A.", lambda row: row["a"]),
        ("tpw_b", "B.", lambda row: row["b"]),
        ("tpw_none", "Never a value.", lambda row: None),
    )
    rows = [(("0", "m"), {"a": 3, "b": None}), (("1", "m"), {"a": 0, "b": 7})]
    families = list(table_families(table, ["gpu", "model"], iter(rows)))  # rows read once, used per entry

    assert [(f.name, f.documentation) for f in families] == [
        ("tpw_a", "A."),
        ("tpw_b", "B."),
        ("tpw_none", "Never a value."),
    ]
    a, b, none = ([(s.labels, s.value) for s in f.samples] for f in families)
    assert a == [
        ({"gpu": "0", "model": "m"}, 3.0),
        ({"gpu": "1", "model": "m"}, 0.0),
    ]  # 0 is a value, None is not
    assert b == [({"gpu": "1", "model": "m"}, 7.0)]
    assert none == []  # the family is still there: HELP and TYPE are always served
    assert all(type(s.value) is float for f in families for s in f.samples)
