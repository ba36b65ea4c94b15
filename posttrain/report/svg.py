"""Tiny inline-SVG charts for the run report: a line chart (lines and/or point markers) and a bar chart (also
used for grouped histograms). Pure string building, no plotting library. Every chart is one ``<svg>`` element
with a ``<title>`` first (what a screen reader and a hover show); all text is escaped. Values that are ``None``,
NaN or infinite are skipped, a single point is drawn as a marker, and a constant series gets a padded y range."""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
W, H = 520, 240
PAD_L, PAD_R, PAD_T, PAD_B = 66, 14, 40, 44


def finite(value) -> float | None:
    """``value`` as a float when it is a finite number (bools are not numbers here), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def fmt(value, digits: int = 4) -> str:
    """A short human form of a number (ints stay ints); anything else as text."""
    v = finite(value)
    if v is None:
        return "" if value is None else str(value)
    if v == int(v) and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.{digits}g}"


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:  # constant series: centre it in a band instead of dividing by zero
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _open(title: str, width: int, height: int) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">', f"<title>{escape(title)}</title>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
            f"{escape(title)}</text>"]


def _empty(title: str, width: int, height: int, message: str = "no data") -> str:
    return "".join(_open(title, width, height) + [
        f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" font-size="12" fill="#6b7280">'
        f"{escape(message)}</text>", "</svg>"])


def _axes(parts: list[str], width: int, height: int, y_lo: float, y_hi: float, x_label: str, y_label: str) -> None:
    x0, x1, y0, y1 = PAD_L, width - PAD_R, height - PAD_B, PAD_T
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#9ca3af"/>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#9ca3af"/>')
    ticks = [y_lo + (y_hi - y_lo) * i / 4 for i in range(5)]
    digits = next((d for d in range(3, 9) if len({fmt(v, d) for v in ticks}) == len(ticks)), 9)
    for i, v in enumerate(ticks):  # y ticks and grid; enough digits that neighbouring ticks differ
        y = y0 - (y0 - y1) * i / 4
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
                     f"{escape(fmt(v, digits))}</text>")
    if x_label:
        parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11">'
                     f"{escape(x_label)}</text>")
    if y_label:
        parts.append(f'<text x="10" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" font-size="11" '
                     f'transform="rotate(-90 10 {(y0 + y1) / 2:.1f})">{escape(y_label[:30])}</text>')


def _legend(parts: list[str], names: Sequence[str], width: int) -> None:
    if len(names) < 2:
        return
    x = width - PAD_R - 110 * len(names)
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x + 110 * i}" y="{PAD_T - 16}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 110 * i + 14}" y="{PAD_T - 7}" font-size="10">{escape(name[:16])}</text>')


def line_chart(series: dict[str, Iterable[tuple]], title: str, *, x_label: str = "step", y_label: str = "",
               points_only: Iterable[str] = (), width: int = W, height: int = H) -> str:
    """``series``: name -> ``(x, y)`` pairs. Names in ``points_only`` are drawn as markers without a line (eval
    points on a training curve). A series with one point is drawn as a marker."""
    clean = {}
    for name, pts in series.items():
        good = [(finite(x), finite(y)) for x, y in pts]
        good = sorted((x, y) for x, y in good if x is not None and y is not None)
        if good:
            clean[name] = good
    if not clean:
        return _empty(title, width, height)
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x_lo, x_hi = (min(xs), max(xs)) if min(xs) != max(xs) else (min(xs) - 1, max(xs) + 1)
    y_lo, y_hi = _range(ys)
    x0, x1, y0, y1 = PAD_L, width - PAD_R, height - PAD_B, PAD_T

    def sx(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def sy(y: float) -> float:
        return y0 - (y - y_lo) / (y_hi - y_lo) * (y0 - y1)

    parts = _open(title, width, height)
    _axes(parts, width, height, y_lo, y_hi, x_label, y_label)
    for label_x in sorted({x_lo, x_hi} if min(xs) != max(xs) else {min(xs)}):
        parts.append(f'<text x="{sx(label_x):.1f}" y="{y0 + 14}" text-anchor="middle" font-size="10">'
                     f"{escape(fmt(label_x, 4))}</text>")
    dots = set(points_only)
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        if name not in dots and len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{path}">'
                         f"<title>{escape(name)}</title></polyline>")
        if name in dots or len(pts) == 1:
            for x, y in pts:
                parts.append(f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}">'
                             f"<title>{escape(f'{name}: step {fmt(x)} = {fmt(y)}')}</title></circle>")
    _legend(parts, list(clean), width)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(labels: Sequence[str], series: dict[str, Sequence], title: str, *, y_label: str = "",
              width: int = W, height: int = H) -> str:
    """Grouped vertical bars: one group per label, one bar per series in it. Non-finite values draw no bar."""
    labels = list(labels)
    values = {n: [finite(v) for v in vs] for n, vs in series.items()}
    present = [v for vs in values.values() for v in vs if v is not None]
    if not labels or not present:
        return _empty(title, width, height)
    y_lo, y_hi = min(0.0, min(present)), max(0.0, max(present))
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    x0, x1, y0, y1 = PAD_L, width - PAD_R, height - PAD_B, PAD_T
    parts = _open(title, width, height)
    _axes(parts, width, height, y_lo, y_hi, "", y_label)

    def sy(y: float) -> float:
        return y0 - (y - y_lo) / (y_hi - y_lo) * (y0 - y1)

    group = (x1 - x0) / len(labels)
    bar = group * 0.8 / max(1, len(values))
    step = max(1, math.ceil(len(labels) / 12))  # at most ~12 x labels
    # a label gets the width of the groups it stands for (about 6 px per character at font-size 10), so that
    # neighbouring labels never overlap; the full label is the text's tooltip
    fits = max(3, int(group * step / 6.2))
    for g, label in enumerate(labels):
        for s, (name, vs) in enumerate(values.items()):
            v = vs[g] if g < len(vs) else None
            if v is None:
                continue
            top, base = sy(max(v, 0.0)), sy(min(v, 0.0))
            x = x0 + g * group + group * 0.1 + s * bar
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{max(bar - 1, 1):.1f}" '
                         f'height="{max(base - top, 0.5):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                         f"<title>{escape(f'{name} {label}: {fmt(v)}')}</title></rect>")
        if g % step == 0:
            text = str(label) if len(str(label)) <= fits else str(label)[: fits - 1] + "\u2026"
            parts.append(f'<text x="{x0 + (g + 0.5) * group:.1f}" y="{y0 + 14}" text-anchor="middle" font-size="10">'
                         f"<title>{escape(str(label))}</title>{escape(text)}</text>")
    _legend(parts, list(values), width)
    parts.append("</svg>")
    return "".join(parts)


def histogram(samples: dict[str, Iterable], title: str, *, bins: int = 12, x_label: str = "",
              width: int = W, height: int = H) -> str:
    """Counts of each named sample over shared bins (so two distributions compare bar by bar)."""
    clean = {n: [v for v in (finite(x) for x in xs) if v is not None] for n, xs in samples.items()}
    clean = {n: xs for n, xs in clean.items() if xs}
    if not clean:
        return _empty(title, width, height)
    everything = [v for xs in clean.values() for v in xs]
    lo, hi = min(everything), max(everything)
    if hi == lo:
        bins, hi = 1, lo + 1.0
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = {n: [0] * bins for n in clean}
    for n, xs in clean.items():
        for v in xs:
            counts[n][min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    labels = [fmt(edges[i], 3) if bins > 1 else fmt(lo, 3) for i in range(bins)]
    chart = bar_chart(labels, counts, title, y_label="count", width=width, height=height)
    if x_label:
        chart = chart.replace("</svg>", f'<text x="{(PAD_L + width - PAD_R) / 2:.1f}" y="{height - 6}" '
                              f'text-anchor="middle" font-size="11">{escape(x_label)}</text></svg>')
    return chart
