"""Pairwise win rate against a baseline, its confidence interval, and the length-controlled win rate.

Win indicator per prompt: 1 (model wins), 0 (baseline wins), 0.5 (tie). Asking the judge in both orders and
resolving position bias is the judge's business (``PairwiseJudge.compare``); here ``response_a`` is always the
model and ``response_b`` the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def win_indicators(winners: Sequence[str]) -> list[float]:
    """``"a"`` -> 1.0, ``"b"`` -> 0.0, ``"tie"`` -> 0.5 (a = the model)."""
    table = {"a": 1.0, "b": 0.0, "tie": 0.5}
    bad = [w for w in winners if w not in table]
    if bad:
        raise ValueError(f"verdict winner must be 'a', 'b' or 'tie', got {bad[0]!r}")
    return [table[w] for w in winners]


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials (ties enter ``p`` as halves, so
    ``p * n`` may be fractional; the formula needs only ``p`` and ``n``)."""
    if n == 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(indicators: Sequence[float]) -> dict[str, float]:
    """``win_rate`` (ties as half), 95% Wilson ``ci_low``/``ci_high``, and the counts."""
    n = len(indicators)
    p = sum(indicators) / n if n else 0.0
    lo, hi = wilson_interval(p, n)
    return {"win_rate": p, "ci_low": lo, "ci_high": hi, "n": float(n),
            "wins": float(sum(1 for x in indicators if x == 1.0)),
            "losses": float(sum(1 for x in indicators if x == 0.0)),
            "ties": float(sum(1 for x in indicators if x == 0.5))}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def fit_logistic(x: Sequence[float], y: Sequence[float], *, ridge: float = 1e-3, steps: int = 100
                 ) -> tuple[float, float]:
    """(b0, b1) maximising ``sum y log p + (1 - y) log(1 - p) - ridge/2 * b1^2`` with ``p = sigmoid(b0 + b1 x)``,
    by Newton's method on the 2x2 system. ``y`` may be fractional (ties = 0.5: the soft-label likelihood). The
    small ridge on the slope keeps the fit finite when length separates wins from losses perfectly."""
    b0 = b1 = 0.0
    for _ in range(steps):
        g0 = g1 = 0.0
        h00 = h01 = h11 = 0.0
        for xi, yi in zip(x, y):
            p = _sigmoid(b0 + b1 * xi)
            w = p * (1 - p)
            g0 += yi - p
            g1 += (yi - p) * xi
            h00 += w
            h01 += w * xi
            h11 += w * xi * xi
        g1 -= ridge * b1
        h11 += ridge
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:  # no information (e.g. all y identical with p saturated): stop where we are
            break
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + d0, b1 + d1
        if abs(d0) < 1e-10 and abs(d1) < 1e-10:
            break
    return b0, b1


def length_controlled_win_rate(indicators: Sequence[float], length_diffs: Sequence[float]) -> dict[str, float]:
    """Win rate at zero length difference (in the spirit of AlpacaEval's length-controlled win rate).

    Fit ``P(win) = sigmoid(b0 + b1 * d / sd(d))`` with ``d`` = model length minus baseline length (tokens) and
    ``sd(d)`` its standard deviation (standardised by scale only, not centred, so ``d = 0`` stays "equal
    length"); report ``sigmoid(b0)``, the predicted win rate when the two responses are equally long, and the
    slope ``b1`` (win log-odds per standard deviation of length difference)."""
    if len(indicators) != len(length_diffs):
        raise ValueError(f"{len(indicators)} verdicts but {len(length_diffs)} length differences")
    n = len(indicators)
    if n == 0:
        return {}
    mean = sum(length_diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in length_diffs) / n)
    xs = [d / sd for d in length_diffs] if sd > 0 else [0.0] * n
    b0, b1 = fit_logistic(xs, list(indicators))
    return {"lc_win_rate": _sigmoid(b0), "length_slope": b1}
