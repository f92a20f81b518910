"""Fast, filtered parser for the Prometheus text exposition format.

Reads text format 0.0.4 and tolerates OpenMetrics 1.0 text (``# EOF``, ``_created`` series,
``_total`` counters, exemplars after `` # ``, timestamps). Only the samples whose name is wanted
are returned; every other line is skipped after locating the end of its name, without looking at
its labels, which is what makes this several times faster than a full parse.

The grammar accepted for a kept line is deliberately a subset of what
``prometheus_client.parser`` accepts, so that whatever is returned agrees with that parser; a kept
line outside the subset is counted as malformed instead of raising.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

__all__ = ["ParseResult", "Sample", "parse_selected"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", "n": "\n", '"': '"'}
_BLANKS = " \t"


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line: its full name as exposed, its labels and its value."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The wanted samples of a page, in page order, and how many wanted lines were malformed."""

    samples: list[Sample]
    malformed: int
    first_error: str | None


class _Malformed(ValueError):
    """A kept line that does not follow the exposition grammar."""


def parse_selected(text: str, wanted: Callable[[str], bool] | Collection[str]) -> ParseResult:
    """Parse the samples of ``text`` whose name is ``wanted``.

    ``wanted`` is either a collection of exact sample names (``"foo_bucket"``, ``"foo_total"``…)
    or a predicate on the sample name. Comment, HELP, TYPE and blank lines are skipped, and so is
    every line whose name is not wanted. A wanted line that cannot be parsed (or a line whose name
    cannot be read) is counted in ``malformed``; this function never raises for a ``str`` input.
    """
    is_wanted = _predicate(wanted)
    samples: list[Sample] = []
    malformed = 0
    first_error: str | None = None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#":
            continue
        if line[0].isspace():
            line = line.strip()
            if not line or line[0] == "#":
                continue
        name = _leading_name(line)
        if name and not is_wanted(name):
            continue
        try:
            sample = _parse_line(line.strip(), len(name))
        except _Malformed as error:
            malformed += 1
            first_error = first_error or f"line {lineno}: {error}"
            continue
        if name or is_wanted(sample.name):
            samples.append(sample)
    return ParseResult(samples, malformed, first_error)


def _predicate(wanted: Callable[[str], bool] | Collection[str]) -> Callable[[str], bool]:
    """Turn ``wanted`` into a fast membership test."""
    if isinstance(wanted, str):
        return {wanted}.__contains__
    if isinstance(wanted, (set, frozenset)):
        return wanted.__contains__
    if callable(wanted):
        return wanted
    return frozenset(wanted).__contains__


def _leading_name(line: str) -> str:
    """The text before the first ``{``, space or tab (the whole line if there is none)."""
    end = line.find(" ")
    if end == -1:
        end = len(line)
    brace = line.find("{", 0, end)
    if brace != -1:
        end = brace
    tab = line.find("\t", 0, end)
    if tab != -1:
        end = tab
    return line[:end]


def _parse_line(line: str, name_end: int) -> Sample:
    """Parse a stripped sample line whose metric name ends at ``name_end``.

    When ``name_end`` is 0 the line starts with ``{`` and carries its name inside the braces as
    a quoted string (the UTF-8 form of the format: ``{"my.metric", a="b"} 1``).
    """
    name = line[:name_end]
    if name and not _METRIC_NAME.fullmatch(name):
        raise _Malformed(f"invalid metric name {name!r}")
    pos = _skip_blanks(line, name_end)
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        labels, pos, quoted_name = _parse_labels(line, pos + 1, allow_name=not name)
        name = name or quoted_name or ""
    if not name:
        raise _Malformed("metric name not readable")
    return Sample(name, labels, _parse_tail(line[pos:]))


def _skip_blanks(text: str, pos: int) -> int:
    """Index of the first character at or after ``pos`` that is not a space or a tab."""
    while pos < len(text) and text[pos] in _BLANKS:
        pos += 1
    return pos


def _parse_labels(text: str, pos: int, allow_name: bool) -> tuple[dict[str, str], int, str | None]:
    """Parse a label set whose ``{`` precedes ``pos``; return labels, end index and quoted name.

    Accepts blanks around tokens, quoted label names, a trailing comma and, when
    ``allow_name`` is true, a leading bare quoted metric name (``{"my.metric", a="b"}``).
    """
    labels: dict[str, str] = {}
    quoted_name: str | None = None
    first = True
    while True:
        pos = _skip_blanks(text, pos)
        if pos >= len(text):
            raise _Malformed("unterminated label set")
        if text[pos] == "}":
            return labels, pos + 1, quoted_name
        key, quoted, pos = _parse_label_name(text, pos)
        pos = _skip_blanks(text, pos)
        if pos < len(text) and text[pos] == "=":
            pos = _skip_blanks(text, pos + 1)
            if pos >= len(text) or text[pos] != '"':
                raise _Malformed(f"value of label {key!r} is not quoted")
            value, pos = _parse_quoted(text, pos)
            _check_label(key, labels)
            labels[key] = value
        elif first and quoted and allow_name:
            quoted_name = key
        else:
            raise _Malformed(f"label {key!r} has no value")
        first = False
        pos = _skip_blanks(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "}":
            raise _Malformed("expected ',' or '}' in label set")


def _parse_label_name(text: str, pos: int) -> tuple[str, bool, int]:
    """Read a label name (identifier or quoted string) at ``pos``: name, was-quoted, end index."""
    if text[pos] == '"':
        name, end = _parse_quoted(text, pos)
        return name, True, end
    match = _LABEL_NAME.match(text, pos)
    if match is None:
        raise _Malformed(f"invalid label name at column {pos + 1}")
    return match.group(), False, match.end()


def _check_label(key: str, labels: dict[str, str]) -> None:
    """Reject empty, reserved (``__`` prefixed) and duplicate label names."""
    if not key or key.startswith("__"):
        raise _Malformed(f"invalid label name {key!r}")
    if key in labels:
        raise _Malformed(f"duplicate label {key!r}")


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read the quoted string opening at ``pos``; return its unescaped value and end index."""
    close = text.find('"', pos + 1)
    if close == -1:
        raise _Malformed("unterminated quoted string")
    if text.find("\\", pos + 1, close) == -1:
        return text[pos + 1 : close], close + 1
    return _parse_escaped(text, pos + 1)


def _parse_escaped(text: str, pos: int) -> tuple[str, int]:
    """Slow path of :func:`_parse_quoted` for strings holding backslashes.

    ``\\\\``, ``\\n`` and ``\\"`` are unescaped; any other backslash is kept as is.
    """
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(text):
            following = text[pos + 1]
            out.append(_ESCAPES.get(following, "\\" + following))
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise _Malformed("unterminated quoted string")


def _parse_tail(tail: str) -> float:
    """Parse ``value [timestamp] [# {exemplar labels} value [timestamp]]``; return the value."""
    tail = tail.lstrip()
    separator = " " if " " in tail else "\t"
    tokens = [token.strip() for token in tail.split(separator) if token.strip()]
    if not tokens:
        raise _Malformed("missing value")
    value = _parse_number(tokens[0], "value")
    if "#" in tokens[1:3]:
        if tokens[1] != "#":
            _parse_number(tokens[1], "timestamp")
        _parse_exemplar(tail)
    elif len(tokens) == 2:
        _parse_number(tokens[1], "timestamp")
    elif len(tokens) > 2:
        raise _Malformed("unexpected text after the timestamp")
    return value


def _parse_exemplar(tail: str) -> None:
    """Validate the OpenMetrics exemplar of ``tail``: `` # {labels} value [timestamp]``."""
    start = tail.find(" # ")
    if start == -1 or start + 1 != tail.index("#"):
        raise _Malformed("exemplar must follow ' # '")
    exemplar = tail[start + 3 :].lstrip(" ")
    if not exemplar.startswith("{"):
        raise _Malformed("exemplar without a label set")
    _, end, _ = _parse_labels(exemplar, 1, allow_name=False)
    rest = exemplar[end:]
    tokens = [token.strip() for token in rest.split(" ") if token.strip()]
    if not rest.startswith(" ") or not 1 <= len(tokens) <= 2:
        raise _Malformed("exemplar needs a value and an optional timestamp")
    for token in tokens:
        _parse_number(token, "exemplar value")


def _parse_number(token: str, what: str) -> float:
    """Parse a float token (``NaN``, ``+Inf`` and ``-Inf`` included); no digit separators."""
    if "_" in token:
        raise _Malformed(f"invalid {what} {token!r}")
    try:
        return float(token)
    except ValueError:
        raise _Malformed(f"invalid {what} {token!r}") from None
