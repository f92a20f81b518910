"""Tests of exporter.promtext: tricky lines by example, agreement with prometheus_client by property."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.promtext import Sample, parse_selected

Key = tuple[str, dict[str, str], float]


def keys(samples: Iterable[Sample]) -> list[Key]:
    """Samples as comparable tuples."""
    return [(s.name, s.labels, s.value) for s in samples]


def one(line: str, name: str = "m") -> Sample:
    """Parse a single wanted line that must be valid."""
    result = parse_selected(line, {name})
    assert (result.malformed, result.first_error) == (0, None)
    assert len(result.samples) == 1
    return result.samples[0]


# --- examples -------------------------------------------------------------------------------


def test_keeps_only_wanted_names_in_page_order() -> None:
    page = (
        "# HELP a_total Requests.\n"
        "# TYPE a_total counter\n"
        'a_total{x="1"} 1\n'
        "\n"
        "b 2\n"
        'a_total{x="2"} 3\n'
        "a_bucket 4\n"
    )
    result = parse_selected(page, {"a_total"})
    assert keys(result.samples) == [("a_total", {"x": "1"}, 1.0), ("a_total", {"x": "2"}, 3.0)]
    assert result.malformed == 0


def test_predicate_selects_names() -> None:
    page = 'vllm:a 1\nother 2\nvllm:b{m="x"} 3\n'
    result = parse_selected(page, lambda name: name.startswith("vllm:"))
    assert [s.name for s in result.samples] == ["vllm:a", "vllm:b"]


def test_single_string_is_one_name() -> None:
    assert keys(parse_selected("m 1\nmm 2\n", "m").samples) == [("m", {}, 1.0)]


@pytest.mark.parametrize(
    ("line", "labels"),
    [
        (r'm{a="say \"hi\""} 1', {"a": 'say "hi"'}),
        (r'm{a="C:\\dir\\"} 1', {"a": "C:\\dir\\"}),
        (r'm{a="two\nlines"} 1', {"a": "two\nlines"}),
        (r'm{a="odd \t escape"} 1', {"a": "odd \\t escape"}),
        ('m{a="x,y",b="}{"} 1', {"a": "x,y", "b": "}{"}),
        ('m{a="x=\\"1\\",b=2"} 1', {"a": 'x="1",b=2'}),
        ('m{a="héllo ✓ 日本"} 1', {"a": "héllo ✓ 日本"}),
        ('m{a=""} 1', {"a": ""}),
    ],
)
def test_label_values(line: str, labels: dict[str, str]) -> None:
    assert one(line).labels == labels


@pytest.mark.parametrize(
    "line",
    [
        'm{a="1",b="2"} 1',
        'm {a="1",b="2"} 1',
        'm{ a = "1" , b = "2" } 1',
        'm{a="1",b="2",} 1',
        'm\t{a="1",\tb="2"}\t1',
        'm{a="1",b="2"}1',
    ],
)
def test_label_set_layouts(line: str) -> None:
    assert one(line).labels == {"a": "1", "b": "2"}


def test_empty_label_set_and_no_label_set() -> None:
    assert keys([one("m{} 5"), one("m 5")]) == [("m", {}, 5.0)] * 2


@pytest.mark.parametrize(
    ("token", "expected"),
    [("+Inf", math.inf), ("-Inf", -math.inf), ("1e3", 1000.0), ("-0.5", -0.5), ("7", 7.0), (".25", 0.25)],
)
def test_values(token: str, expected: float) -> None:
    assert one(f"m {token}").value == expected


def test_nan_value() -> None:
    assert math.isnan(one('m{a="b"} NaN').value)


def test_timestamps_are_accepted_and_dropped() -> None:
    assert one("m 3 1712345678901").value == 3.0
    assert one('m{a="b"} 3 1712345678.901').value == 3.0


def test_colon_names() -> None:
    sample = one(
        'vllm:e2e_request_latency_seconds_sum{model_name="x"} 12.5', "vllm:e2e_request_latency_seconds_sum"
    )
    assert (sample.name, sample.labels, sample.value) == (
        "vllm:e2e_request_latency_seconds_sum",
        {"model_name": "x"},
        12.5,
    )


def test_openmetrics_page() -> None:
    page = (
        "# TYPE requests counter\n"
        "# HELP requests Requests served.\n"
        'requests_total{code="200"} 1027 # {trace_id="KOO5S4vxi0o"} 0.67 1712345678.5\n'
        'requests_created{code="200"} 1712340000.0\n'
        "# TYPE latency histogram\n"
        'latency_bucket{le="0.5"} 3 # {trace_id="a b"} 0.25\n'
        'latency_bucket{le="+Inf"} 4\n'
        "latency_sum 2.5\n"
        "latency_count 4\n"
        "# EOF\n"
    )
    result = parse_selected(page, {"requests_total", "latency_sum", "latency_count"})
    assert keys(result.samples) == [
        ("requests_total", {"code": "200"}, 1027.0),
        ("latency_sum", {}, 2.5),
        ("latency_count", {}, 4.0),
    ]
    assert result.malformed == 0


def test_exemplar_without_labels_on_sample() -> None:
    assert one('m 5 # {t="x"} 1').value == 5.0


def test_leading_blanks_and_crlf() -> None:
    page = '  # HELP m x\r\n  m{a="b"} 1\r\n\tm 2\r\n'
    assert keys(parse_selected(page, {"m"}).samples) == [("m", {"a": "b"}, 1.0), ("m", {}, 2.0)]


def test_utf8_quoted_metric_name() -> None:
    page = '{"my.metric", "label.name"="v"} 4\n{"other.metric"} 5\n'
    result = parse_selected(page, {"my.metric"})
    assert keys(result.samples) == [("my.metric", {"label.name": "v"}, 4.0)]
    assert result.malformed == 0


@pytest.mark.parametrize(
    "line",
    [
        'm{a="unterminated} 1',
        'm{a="1" 1',
        "m{a=1} 1",
        'm{a="1"b="2"} 1',
        'm{a="1",,b="2"} 1',
        'm{1a="x"} 1',
        'm{__name__="x"} 1',
        'm{a="1",a="2"} 1',
        'm{"bare"} 1',
        "m",
        "m ",
        "m{} ",
        "m one",
        "m 1_000",
        "m 1 2 3",
        "m 1 two",
        "m 1 #",
        "m 1 # no-labels 2",
        'm 1 # {t="x"}',
        'm 1 # {t="x"} 2 3 4',
        'm 1 # {t="x"}2',
        "m} 1",
        '{a="no name"} 1',
    ],
)
def test_malformed_wanted_line_is_counted(line: str) -> None:
    result = parse_selected(f"# comment\n{line}\nm 9\n", lambda name: True)
    assert result.malformed == 1
    assert result.first_error is not None and result.first_error.startswith("line 2: ")
    assert keys(result.samples)[-1] == ("m", {}, 9.0)


def test_malformed_unwanted_lines_are_ignored() -> None:
    result = parse_selected('junk{a="unterminated} 1\nother 1_000\nm 1\n', {"m"})
    assert (keys(result.samples), result.malformed, result.first_error) == ([("m", {}, 1.0)], 0, None)


def test_first_error_is_the_first_one() -> None:
    result = parse_selected("m x\nm 1\nm y\n", {"m"})
    assert (result.malformed, result.first_error) == (2, "line 1: invalid value 'x'")


def test_empty_and_comment_only_pages() -> None:
    for page in ("", "\n\n", "# EOF\n", "   \n\t\n"):
        result = parse_selected(page, {"m"})
        assert (result.samples, result.malformed, result.first_error) == ([], 0, None)


# --- properties -----------------------------------------------------------------------------

METRIC_NAMES = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,15}", fullmatch=True)
LABEL_NAMES = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,8}", fullmatch=True)
NASTY_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from('"\\\n,}{= #\t\r'), st.characters(codec="utf-8")), max_size=12
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e-9", "0", "-0.0"]),
)


def escape(value: str) -> str:
    """Escape a label value for the text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def sample_lines(draw: st.DrawFn, name: str) -> str:
    """One valid sample line of metric ``name`` in one of the layouts the format allows."""
    labels = draw(st.dictionaries(LABEL_NAMES, NASTY_TEXT, max_size=4))
    pairs = [f'{key}="{escape(value)}"' for key, value in labels.items()]
    comma = draw(st.sampled_from([",", ", ", " , "]))
    body = comma.join(pairs) + draw(st.sampled_from(["", ","] if pairs else [""]))
    label_set = (
        draw(st.sampled_from([f"{{{body}}}", f" {{ {body} }}"])) if pairs or draw(st.booleans()) else ""
    )
    line = f"{name}{label_set} {draw(VALUES)}"
    if draw(st.booleans()):
        line += f" {draw(st.integers(min_value=0, max_value=2**53))}"
    if draw(st.booleans()):
        line += f' # {{trace_id="{draw(st.from_regex(r"[a-z0-9 ]{0,8}", fullmatch=True))}"}} 0.5'
    return line


@st.composite
def pages(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A valid exposition page and the metric names it uses."""
    names = draw(st.lists(METRIC_NAMES, min_size=1, max_size=5, unique=True))
    lines: list[str] = []
    for name in names:
        if draw(st.booleans()):
            lines.append(f"# HELP {name} {escape(draw(NASTY_TEXT))}")
            lines.append(f"# TYPE {name} {draw(st.sampled_from(['gauge', 'untyped']))}")
        lines += draw(st.lists(sample_lines(name), min_size=1, max_size=4))
    if draw(st.booleans()):
        lines.append("# EOF")
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""])), names


def same(expected: list[Key], actual: list[Key]) -> bool:
    """Equality of sample lists where NaN equals NaN."""
    return len(expected) == len(actual) and all(map(same_sample, expected, actual))


def same_sample(a: Key, b: Key) -> bool:
    """Equality of two samples where NaN equals NaN."""
    both_nan = math.isnan(a[2]) and math.isnan(b[2])
    return a[:2] == b[:2] and (both_nan or a[2] == b[2])


def as_float(value: float) -> float:
    """prometheus_client may return huge ints; compare them as floats like the parser does."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def reference(text: str, is_wanted: Callable[[str], bool]) -> list[Key]:
    """prometheus_client's reading of a whole page, restricted to the wanted names."""
    return [
        (s.name, s.labels, as_float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if is_wanted(s.name)
    ]


def reference_per_line(text: str, is_wanted: Callable[[str], bool]) -> list[Key]:
    """prometheus_client's reading of each line on its own (lines it rejects are dropped)."""
    found: list[Key] = []
    for line in text.split("\n"):
        try:
            found += reference(line, is_wanted)
        except Exception:  # the reference raises various errors on bad lines
            continue
    return found


def is_subsequence(small: list[Key], big: list[Key]) -> bool:
    """Whether ``small`` appears in ``big`` in order (NaN-aware)."""
    rest = iter(big)
    return all(any(same_sample(item, other) for other in rest) for item in small)


INSERTED = st.sampled_from(['"', "{", "}", ",", "=", "\\", " ", "#", "\n"])
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(pages(), st.data())
def test_valid_pages_match_prometheus_client(page: tuple[str, list[str]], data: st.DataObject) -> None:
    text, names = page
    kept = set(data.draw(st.lists(st.sampled_from(names), unique=True)))
    result = parse_selected(text, kept)
    assert result.malformed == 0, result.first_error
    assert same(reference(text, kept.__contains__), keys(result.samples))


def check_never_wrong(text: str, wanted: Callable[[str], bool] | set[str]) -> None:
    """Never raises, and every sample returned is one prometheus_client also reads from its line.

    The reference is applied line by line because it gives up on a whole page at the first bad
    line. This is stronger than "same values as the reference, or malformed > 0": it holds even
    when malformed lines were reported.
    """
    result = parse_selected(text, wanted)
    assert result.malformed >= 0 and (result.malformed == 0) == (result.first_error is None)
    is_wanted = wanted if callable(wanted) else wanted.__contains__
    assert is_subsequence(keys(result.samples), reference_per_line(text, is_wanted))


@PROPERTY
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    check_never_wrong(text, lambda name: True)


@PROPERTY
@given(st.text(alphabet=st.sampled_from('m{}",=\\ #\t\n1aeI+-.N_'), max_size=40))
def test_format_like_noise_never_raises(text: str) -> None:
    check_never_wrong(text, {"m", "ma", "a"})


@PROPERTY
@given(pages(), st.data())
def test_mutated_pages_parse_or_report(page: tuple[str, list[str]], data: st.DataObject) -> None:
    text, names = page
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        action = data.draw(st.sampled_from(["truncate", "insert", "delete"]))
        if action == "truncate":
            text = text[:at]
        elif action == "insert":
            text = text[:at] + data.draw(INSERTED) + text[at:]
        else:
            text = text[:at] + text[at + 1 :]
    check_never_wrong(text, set(names))
