"""Small, dependency-free charts as inline SVG (for reports that must work offline).

Three chart kinds, each returning one ``<svg>`` element as a string:

- :func:`xy_chart`: lines, steps and scatter points on linear or log axes, with a legend;
- :func:`box_chart`: one box (quartiles, 1.5 IQR whiskers) per category with its points
  strip-plotted over it;
- :func:`bar_chart`: horizontal bars (e.g. importances), labels on the left.

Every piece of text is escaped; NaN, infinities (and values <= 0 on a log axis) are dropped, so
they are never drawn nor printed. Points may carry a tooltip (an SVG ``<title>``), which browsers
show on hover without any script.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
           "#ff9da7", "#9c755f", "#bab0ac")
INK = "#222"
GRID = "#e4e4e4"
MUTED = "#666"
FONT = "font-family=\"system-ui,-apple-system,'Segoe UI',Roboto,sans-serif\""

SeriesKind = Literal["line", "step", "scatter"]


def esc(text: object) -> str:
    """Text safe inside SVG/HTML elements and attribute values."""
    return html.escape(str(text), quote=True)


def finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def number(value: float | None, digits: int = 4) -> str:
    """A short human number; an em dash for missing, NaN or infinite values."""
    if not finite(value):
        return "—"
    assert value is not None
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


# -- scales ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps data values in ``[low, high]`` onto pixels ``[start, end]``."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def _t(self, value: float) -> float:
        if self.log:
            return math.log10(value)
        return value

    def __call__(self, value: float) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        frac = 0.5 if hi == lo else (self._t(value) - lo) / (hi - lo)
        return self.start + frac * (self.end - self.start)

    def ticks(self, target: int = 5) -> list[float]:
        return log_ticks(self.low, self.high) if self.log else \
            linear_ticks(self.low, self.high, target)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    magnitude: float = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude


def linear_ticks(low: float, high: float, target: int = 5) -> list[float]:
    if not (finite(low) and finite(high)) or high <= low:
        return [low] if finite(low) else []
    step = _nice_step(high - low, target)
    first = math.ceil(low / step - 1e-9)
    ticks = []
    k = first
    while k * step <= high + step * 1e-9:
        value = k * step
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        k += 1
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    """Decades (every n-th when there are many), or 1-2-5 steps when the range is narrow."""
    if not (finite(low) and finite(high)) or low <= 0 or high <= low:
        return [low] if finite(low) and low > 0 else []
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decades = hi - lo
    every = max(1, math.ceil(decades / 7))
    ticks = [10.0**e for e in range(lo, hi + 1) if (e - lo) % every == 0]
    inside = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
    if len(inside) >= 3:
        return inside
    for mantissas in ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)):
        dense = [m * 10.0**e for e in range(lo, hi + 1) for m in mantissas]
        inside = [t for t in dense if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(inside) >= 3:
            return inside
    return [low, high]


def domain(values: Sequence[float], log: bool, pad: float = 0.05) -> tuple[float, float]:
    """A padded ``(low, high)`` around ``values`` (assumed finite, and positive when ``log``)."""
    if not values:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(values), max(values)
    if log:
        a, b = math.log10(lo), math.log10(hi)
        span = b - a if b > a else 1.0
        return 10 ** (a - pad * span), 10 ** (b + pad * span)
    if hi == lo:
        delta = abs(lo) * 0.1 or 1.0
        return lo - delta, hi + delta
    span = hi - lo
    return lo - pad * span, hi + pad * span


def usable(value: float | None, log: bool) -> bool:
    return finite(value) and (not log or (value is not None and value > 0))


# -- drawing helpers ------------------------------------------------------------------------


def _text(x: float, y: float, content: str, *, anchor: str = "start", size: int = 12,
          fill: str = INK, weight: str = "normal", rotate: bool = False,
          klass: str = "") -> str:
    transform = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    cls = f' class="{esc(klass)}"' if klass else ""
    bold = f' font-weight="{weight}"' if weight != "normal" else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}"{bold}{transform}{cls}>{esc(content)}</text>')


def _open_svg(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} '
            f'{height}" width="{width}" height="{height}" role="img" {FONT}>',
            f"<title>{esc(title)}</title>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
            _text(12, 20, title, size=14, weight="600")]


@dataclass
class _Legend:
    entries: list[tuple[str, str, SeriesKind]]
    width: int
    rows: list[list[tuple[str, str, SeriesKind, float]]] = field(default_factory=list)

    def layout(self, left: float) -> int:
        row: list[tuple[str, str, SeriesKind, float]] = []
        x = left
        for name, col, kind in self.entries:
            w = 26 + 7 * len(name)
            if row and x + w > self.width - 8:
                self.rows.append(row)
                row, x = [], left
            row.append((name, col, kind, x))
            x += w + 12
        if row:
            self.rows.append(row)
        return 18 * len(self.rows)

    def draw(self, top: float) -> list[str]:
        out = []
        for i, row in enumerate(self.rows):
            y = top + 18 * i
            for name, col, kind, x in row:
                if kind == "scatter":
                    out.append(f'<circle cx="{x + 8:.1f}" cy="{y - 4:.1f}" r="4" fill="{col}"/>')
                else:
                    out.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 16:.1f}" '
                               f'y2="{y - 4:.1f}" stroke="{col}" stroke-width="2.5"/>')
                out.append(_text(x + 22, y, name, size=11))
        return out


def _axes(parts: list[str], xs: Scale | None, ys: Scale, *, left: float, right: float,
          top: float, bottom: float, x_label: str, y_label: str,
          x_categories: Sequence[tuple[str, float]] = ()) -> None:
    for t in ys.ticks():
        y = ys(t)
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                     f'stroke="{GRID}"/>')
        parts.append(_text(left - 6, y + 4, number(t, 3), anchor="end", size=11, fill=MUTED,
                           klass="tick"))
    if xs is not None:
        for t in xs.ticks():
            x = xs(t)
            parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                         f'stroke="{GRID}"/>')
            parts.append(_text(x, bottom + 16, number(t, 3), anchor="middle", size=11,
                               fill=MUTED, klass="tick"))
    for name, x in x_categories:
        parts.append(_text(x, bottom + 16, name, anchor="middle", size=11, fill=INK,
                           klass="tick"))
    parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
                 f'height="{bottom - top:.1f}" fill="none" stroke="#999"/>')
    parts.append(_text((left + right) / 2, bottom + 36, x_label, anchor="middle", size=12))
    parts.append(_text(16, (top + bottom) / 2, y_label, anchor="middle", size=12, rotate=True))


def _no_data(parts: list[str], left: float, right: float, top: float, bottom: float,
             message: str) -> None:
    parts.append(_text((left + right) / 2, (top + bottom) / 2, message, anchor="middle",
                       fill=MUTED))


# -- charts ---------------------------------------------------------------------------------


@dataclass
class Series:
    """A named series: ``points`` are ``(x, y)``; ``labels`` (optional) are per-point tooltips."""

    name: str
    points: Sequence[tuple[float, float]]
    kind: SeriesKind = "scatter"
    color: str | None = None
    labels: Sequence[str] | None = None
    radius: float = 3.5


def xy_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
             x_log: bool = False, y_log: bool = False, width: int = 680, height: int = 360,
             empty_message: str = "no data yet") -> str:
    """Lines, steps and points of several series on shared axes (linear or log)."""
    kept: list[tuple[Series, list[tuple[float, float, str | None]]]] = []
    for s in series:
        pts = []
        for i, (x, y) in enumerate(s.points):
            if usable(x, x_log) and usable(y, y_log):
                pts.append((float(x), float(y), s.labels[i] if s.labels else None))
        kept.append((s, pts))
    parts = _open_svg(width, height, title)
    legend = _Legend([(s.name, s.color or color(i), s.kind) for i, (s, _) in enumerate(kept)],
                     width)
    left, right = 70.0, width - 16.0
    top = 34.0 + legend.layout(left)
    bottom = height - 46.0
    parts += legend.draw(40.0)
    xs_all = [p[0] for _, pts in kept for p in pts]
    ys_all = [p[1] for _, pts in kept for p in pts]
    xs = Scale(*domain(xs_all, x_log), left, right, x_log)
    ys = Scale(*domain(ys_all, y_log), bottom, top, y_log)
    _axes(parts, xs, ys, left=left, right=right, top=top, bottom=bottom, x_label=x_label,
          y_label=y_label)
    if not xs_all:
        _no_data(parts, left, right, top, bottom, empty_message)
    for i, (s, pts) in enumerate(kept):
        col = s.color or color(i)
        if not pts:
            continue
        if s.kind in ("line", "step"):
            coords = []
            for j, (x, y, _) in enumerate(pts):
                if s.kind == "step" and j > 0:
                    coords.append(f"{xs(x):.1f},{ys(pts[j - 1][1]):.1f}")
                coords.append(f"{xs(x):.1f},{ys(y):.1f}")
            parts.append(f'<polyline class="series" fill="none" stroke="{col}" '
                         f'stroke-width="2" points="{" ".join(coords)}"/>')
        else:
            parts.append(f'<g class="series" fill="{col}" fill-opacity="0.8">')
            for x, y, label in pts:
                tip = f"<title>{esc(label)}</title>" if label else ""
                parts.append(f'<circle cx="{xs(x):.1f}" cy="{ys(y):.1f}" r="{s.radius}">'
                             f"{tip}</circle>")
            parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def box_chart(groups: Mapping[str, Sequence[tuple[float, str]]], *, title: str, y_label: str,
              x_label: str = "", y_log: bool = False, colors: Mapping[str, str] | None = None,
              width: int = 680, height: int = 360, empty_message: str = "no data yet") -> str:
    """One box per group (quartiles, whiskers to the furthest point within 1.5 IQR) with the
    group's points over it; ``groups`` maps a name to ``(value, tooltip)`` pairs."""
    kept = {name: [(float(v), label) for v, label in pts if usable(v, y_log)]
            for name, pts in groups.items()}
    parts = _open_svg(width, height, title)
    left, right, top, bottom = 70.0, width - 16.0, 34.0, height - 46.0
    values = [v for pts in kept.values() for v, _ in pts]
    ys = Scale(*domain(values, y_log), bottom, top, y_log)
    n = max(1, len(kept))
    band = (right - left) / n
    centers = [(name, left + band * (i + 0.5)) for i, name in enumerate(kept)]
    _axes(parts, None, ys, left=left, right=right, top=top, bottom=bottom, x_label=x_label,
          y_label=y_label, x_categories=centers)
    if not values:
        _no_data(parts, left, right, top, bottom, empty_message)
    half = min(40.0, band * 0.3)
    for i, (name, cx) in enumerate(centers):
        pts = kept[name]
        col = (colors or {}).get(name) or color(i)
        if not pts:
            parts.append(_text(cx, (top + bottom) / 2, "no values", anchor="middle", size=11,
                               fill=MUTED))
            continue
        vals = sorted(v for v, _ in pts)
        q1, med, q3 = quartiles(vals)
        iqr = q3 - q1
        lo_w = min(v for v in vals if v >= q1 - 1.5 * iqr)
        hi_w = max(v for v in vals if v <= q3 + 1.5 * iqr)
        parts.append(f'<g class="box" stroke="{col}" stroke-width="1.5">')
        parts.append(f'<line x1="{cx:.1f}" y1="{ys(lo_w):.1f}" x2="{cx:.1f}" '
                     f'y2="{ys(q1):.1f}"/>')
        parts.append(f'<line x1="{cx:.1f}" y1="{ys(q3):.1f}" x2="{cx:.1f}" '
                     f'y2="{ys(hi_w):.1f}"/>')
        for w in (lo_w, hi_w):
            parts.append(f'<line x1="{cx - half / 2:.1f}" y1="{ys(w):.1f}" '
                         f'x2="{cx + half / 2:.1f}" y2="{ys(w):.1f}"/>')
        top_px, bottom_px = ys(q3), ys(q1)
        parts.append(f'<rect x="{cx - half:.1f}" y="{min(top_px, bottom_px):.1f}" '
                     f'width="{2 * half:.1f}" height="{max(1.0, abs(bottom_px - top_px)):.1f}" '
                     f'fill="{col}" fill-opacity="0.15"/>')
        parts.append(f'<line x1="{cx - half:.1f}" y1="{ys(med):.1f}" x2="{cx + half:.1f}" '
                     f'y2="{ys(med):.1f}" stroke-width="2.5"/>')
        parts.append("</g>")
        parts.append(f'<g class="series" fill="{col}" fill-opacity="0.75">')
        for j, (v, label) in enumerate(pts):
            jitter = ((j * 0.618034) % 1.0 - 0.5) * half * 1.4  # deterministic spread
            tip = f"<title>{esc(label)}</title>" if label else ""
            parts.append(f'<circle cx="{cx + jitter:.1f}" cy="{ys(v):.1f}" r="3">{tip}</circle>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(values: Mapping[str, float], *, title: str, x_label: str,
              bar_color: str = PALETTE[0], width: int = 680,
              empty_message: str = "no data") -> str:
    """Horizontal bars, largest first, each labelled with its value."""
    kept = sorted(((name, float(v)) for name, v in values.items() if finite(v) and v >= 0),
                  key=lambda kv: -kv[1])
    label_width = min(240.0, 16.0 + 6.6 * max((len(n) for n, _ in kept), default=8))
    row = 24.0
    height = int(34 + 12 + row * max(1, len(kept)) + 40)
    parts = _open_svg(width, height, title)
    left, right, top = label_width, width - 60.0, 40.0
    bottom = top + row * max(1, len(kept))
    high = max((v for _, v in kept), default=1.0) or 1.0
    xs = Scale(0.0, high, left, right)
    for t in xs.ticks(4):
        x = xs(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                     f'stroke="{GRID}"/>')
        parts.append(_text(x, bottom + 16, number(t, 3), anchor="middle", size=11, fill=MUTED,
                           klass="tick"))
    if not kept:
        _no_data(parts, left, right, top, bottom, empty_message)
    for i, (name, v) in enumerate(kept):
        y = top + row * i
        parts.append(_text(left - 8, y + row / 2 + 4, name, anchor="end", size=12))
        parts.append(f'<rect class="bar" x="{left:.1f}" y="{y + 4:.1f}" '
                     f'width="{max(1.0, xs(v) - left):.1f}" height="{row - 8:.1f}" '
                     f'fill="{bar_color}"><title>{esc(name)}: {esc(number(v, 3))}</title></rect>')
        parts.append(_text(xs(v) + 6, y + row / 2 + 4, number(v, 2), size=11, fill=MUTED))
    parts.append(f'<line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" '
                 f'stroke="#999"/>')
    parts.append(_text((left + right) / 2, bottom + 34, x_label, anchor="middle", size=12))
    parts.append("</svg>")
    return "\n".join(parts)
