"""Small numeric helpers for the detectors: series on a common time grid, with `None` where a sample is
missing. Pure Python (the exporter has no numeric dependency); a window holds at most a few thousand
steps, so plain loops are fast enough.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Values = list[float | None]


def present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def mean(values: Iterable[float | None]) -> float | None:
    xs = present(values)
    return sum(xs) / len(xs) if xs else None


def median(values: Iterable[float | None]) -> float | None:
    xs = sorted(present(values))
    if not xs:
        return None
    middle = len(xs) // 2
    return xs[middle] if len(xs) % 2 else (xs[middle - 1] + xs[middle]) / 2


def maximum(values: Iterable[float | None]) -> float | None:
    xs = present(values)
    return max(xs) if xs else None


def minimum(values: Iterable[float | None]) -> float | None:
    xs = present(values)
    return min(xs) if xs else None


def increments(values: Sequence[float | None]) -> Values:
    """Per-step increase of a counter: v[i] − v[i−1], a decrease counted as a reset (the new value is
    the increase, as Prometheus's `increase()` does); None where either end is missing."""
    out: Values = [None] * len(values)
    for i in range(1, len(values)):
        a, b = values[i - 1], values[i]
        if a is None or b is None:
            continue
        out[i] = b - a if b >= a else b
    return out


def median3(values: Sequence[float | None]) -> Values:
    """Centred running median of three (the two neighbours that exist): removes one-step spikes,
    keeps steps and ramps where they are."""
    out: Values = []
    for i in range(len(values)):
        out.append(median(values[max(0, i - 1) : i + 2]) if values[i] is not None else None)
    return out


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    r2: float  # 1 for a perfect line (and for a constant series fitted exactly)
    t_stat: float  # slope / its standard error (±inf for an exact non-zero slope)
    count: int

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least-squares line through the points; None with fewer than three or no spread in x."""
    n = len(xs)
    if n < 3 or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx
    intercept = my - slope * mx
    residual = max(syy - slope * sxy, 0.0)
    r2 = 1.0 - residual / syy if syy > 0 else 1.0
    scale = max(abs(my), 1e-12)
    if residual <= 1e-18 * scale * scale * n:  # exact line (up to rounding)
        t_stat = math.copysign(math.inf, slope) if slope else 0.0
    else:
        stderr = math.sqrt(residual / (n - 2) / sxx)
        t_stat = slope / stderr
    return Fit(slope, intercept, r2, t_stat, n)


def fit_series(times: Sequence[float], values: Sequence[float | None], lo: int, hi: int) -> Fit | None:
    """linear_fit over the present samples of values[lo:hi], x = seconds."""
    pairs = [(times[i], v) for i in range(lo, hi) if (v := values[i]) is not None and math.isfinite(v)]
    if len(pairs) < 3:
        return None
    x0 = pairs[0][0]
    return linear_fit([t - x0 for t, _ in pairs], [v for _, v in pairs])


def runs(mask: Sequence[bool | None], max_gap: int = 0) -> list[tuple[int, int]]:
    """Index ranges [first, last] (inclusive) where mask is True; gaps of at most `max_gap` samples that
    are False or unknown (None) between two True runs join them."""
    out: list[tuple[int, int]] = []
    start = last = -1
    for i, value in enumerate(mask):
        if value:
            if start >= 0 and i - last - 1 <= max_gap:
                last = i
            else:
                if start >= 0:
                    out.append((start, last))
                start = last = i
    if start >= 0:
        out.append((start, last))
    return out


@dataclass(frozen=True)
class Segment:
    """Samples [lo, hi) of a series (indices into the grid) and their weighted mean."""

    lo: int
    hi: int
    mean: float
    weight: float
    count: int


def segments(
    values: Sequence[float | None],
    weights: Sequence[float | None] | None = None,
    *,
    min_len: int = 3,
    min_rel_change: float = 0.05,
    forced: Iterable[int] = (),
    max_segments: int = 24,
    penalty: float = 3.0,
) -> list[Segment]:
    """Piecewise-constant segmentation by binary splitting (weighted least squares).

    The split that removes the most squared error anywhere is made first, again and again, while it keeps
    `min_len` present samples on each side, its two means differ by at least `min_rel_change` of the
    larger, and it removes more than `penalty` × log(n) × the noise variance (estimated from successive
    differences, so level shifts do not inflate it): noise around one level is not split, several
    changes in one window all are. `forced` grid indices always start a new segment (an engine restart).
    With weights, a segment's mean is Σ w·v / Σ w: for tokens per joule per step weighted by joules, its
    tokens ÷ its joules.
    """
    points = [
        (i, float(v), float(w if weights is not None and (w := weights[i]) is not None else 1.0))
        for i, v in enumerate(values)
        if v is not None and math.isfinite(v)
    ]
    points = [p for p in points if p[2] > 0]
    if not points:
        return []
    threshold = penalty * math.log(max(len(points), 2)) * _noise_variance(points)
    cuts = sorted({0, len(points)} | {_position(points, f) for f in forced})
    done: list[tuple[int, int]] = []
    open_: list[tuple[int, int, tuple[float, int] | None]] = []
    for a, b in itertools.pairwise(cuts):
        if b > a:
            open_.append((a, b, _best_split(points, a, b, min_len, min_rel_change, threshold)))
    while open_ and len(done) + len(open_) < max_segments:
        candidates = [k for k, (_, _, split) in enumerate(open_) if split is not None]
        if not candidates:
            break
        k = max(candidates, key=lambda j: open_[j][2][0])  # type: ignore[index]
        a, b, split = open_.pop(k)
        assert split is not None
        middle = split[1]
        for lo, hi in ((a, middle), (middle, b)):
            open_.append((lo, hi, _best_split(points, lo, hi, min_len, min_rel_change, threshold)))
    done.extend((a, b) for a, b, _ in open_)
    done.sort()
    out = []
    for a, b in done:
        weight = sum(p[2] for p in points[a:b])
        total = sum(p[1] * p[2] for p in points[a:b])
        hi = points[b][0] if b < len(points) else points[-1][0] + 1
        out.append(Segment(points[a][0], hi, total / weight, weight, b - a))
    return out


def _noise_variance(points: list[tuple[int, float, float]]) -> float:
    """Per unit weight: the median of d²/(1/wᵢ + 1/wᵢ₋₁) over successive differences d, ÷ 0.455 (the median of
    χ²₁), so that a few level shifts among many steps do not count as noise."""
    scaled = sorted((b[1] - a[1]) ** 2 / (1 / a[2] + 1 / b[2]) for a, b in itertools.pairwise(points))
    if not scaled:
        return 0.0
    return scaled[len(scaled) // 2] / 0.455


def _position(points: list[tuple[int, float, float]], index: int) -> int:
    """Position in `points` of the first point at or after grid index `index`."""
    for position, point in enumerate(points):
        if point[0] >= index:
            return position
    return len(points)


def _best_split(
    points: list[tuple[int, float, float]], a: int, b: int, min_len: int, min_rel: float, threshold: float
) -> tuple[float, int] | None:
    """(gain, position) of the best admissible split of points[a:b], or None."""
    if b - a < 2 * min_len:
        return None
    w = [0.0]
    s = [0.0]
    q = [0.0]
    for _, v, weight in points[a:b]:
        w.append(w[-1] + weight)
        s.append(s[-1] + weight * v)
        q.append(q[-1] + weight * v * v)
    n = b - a
    total_sse = q[n] - s[n] * s[n] / w[n]
    best: tuple[float, int] | None = None
    for k in range(min_len, n - min_len + 1):
        wl, sl, ql = w[k], s[k], q[k]
        wr, sr, qr = w[n] - wl, s[n] - sl, q[n] - ql
        left, right = sl / wl, sr / wr
        scale = max(abs(left), abs(right))
        if scale <= 0 or abs(left - right) < min_rel * scale:
            continue
        sse = (ql - sl * sl / wl) + (qr - sr * sr / wr)
        gain = total_sse - sse
        if gain > threshold and (best is None or gain > best[0]):
            best = (gain, a + k)
    return best
