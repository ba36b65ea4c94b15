"""Is a pass-rate change real? Confidence intervals for the difference between two models' pass rates on the same
eval rows.

The model and a reference (the baseline, or the base model) answer the same rows, so their two pass rates are
paired. What carries the information is the discordant rows: ``gained`` (the model passes, the reference fails)
and ``lost`` (the other way round). With 172 out-of-distribution rows a +5 point difference can come from
9 gained and 0 lost rows (real) or from 25 gained and 16 lost (noise); a gate on the point estimate cannot tell
them apart, a gate on the interval's lower bound can (``gates.py``: ``significant: true``).

Interval: Newcombe (1998, "Improved confidence intervals for the difference between binomial proportions based
on paired data", Statistics in Medicine 17:2635, method 10): the Wilson score interval of each pass rate,
combined with the correlation of the paired outcomes. Closed form, inside [-1, 1], and close to its nominal
coverage at the row counts of eval suites (tens to hundreds; the unit tests simulate it), where the Wald interval
of the mean difference is too narrow for rare discordant rows.

With ``a`` rows passed by both, ``b`` gained, ``c`` lost, ``d`` failed by both, ``n = a + b + c + d``::

    p1 = (a + b) / n          the model's pass rate,     Wilson interval (l1, u1)
    p2 = (a + c) / n          the reference's,           Wilson interval (l2, u2)
    delta = p1 - p2 = (b - c) / n
    phi = (a d - b c) / sqrt((a + b)(c + d)(a + c)(b + d))      (0 when a margin is empty)
    low  = delta - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
    high = delta + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)

Metric keys (for each pass-rate metric ``m`` the eval produced: ``constraints/pass_rate``, ``capability/accuracy``,
and each group's and suite's ``pass_rate``, ``constraints/pass_rate``, ``capability/accuracy``; and each reference
``ref``): ``m/delta_vs_<ref>`` (the difference, the same number as ``m`` minus ``<ref>/m``), ``.../ci_low``,
``.../ci_high`` (95%), ``.../gained``, ``.../lost`` (row counts), e.g.
``group/out_of_distribution/constraints/pass_rate/delta_vs_base/ci_low``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from posttrain.eval.winrate import Z95, wilson_interval


def paired_counts(model: Sequence[bool], reference: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both passed, model only, reference only, neither) over rows answered by both."""
    if len(model) != len(reference):
        raise ValueError(f"paired_counts: {len(model)} model outcomes but {len(reference)} reference outcomes")
    both = sum(1 for m, r in zip(model, reference) if m and r)
    model_only = sum(1 for m, r in zip(model, reference) if m and not r)
    ref_only = sum(1 for m, r in zip(model, reference) if r and not m)
    return both, model_only, ref_only, len(model) - both - model_only - ref_only


def newcombe_paired_interval(both: int, model_only: int, ref_only: int, neither: int,
                             z: float = Z95) -> tuple[float, float, float]:
    """(delta, low, high): the difference of the model's and the reference's pass rates and its Newcombe
    interval (module docstring). No rows: (0, -1, 1), nothing is known."""
    counts = (both, model_only, ref_only, neither)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise ValueError(f"newcombe_paired_interval: counts must be non-negative integers, got {counts}")
    n = sum(counts)
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (both + model_only) / n, (both + ref_only) / n
    l1, u1 = wilson_interval(p1, n, z)
    l2, u2 = wilson_interval(p2, n, z)
    margins = (both + model_only) * (ref_only + neither) * (both + ref_only) * (model_only + neither)
    phi = (both * neither - model_only * ref_only) / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    low = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return delta, max(-1.0, low), min(1.0, high)


# Pass-rate metrics of ``scoring.score_suite`` that get a paired interval: the metric's suffix, the row kinds it
# counts (None: every row of the slice).
_RATES: dict[str, tuple[str, ...] | None] = {"constraints/pass_rate": ("constraint",),
                                             "capability/accuracy": ("exact",)}
_SLICE_RATES: dict[str, tuple[str, ...] | None] = {"pass_rate": None, **_RATES}


PAIRED_FIELDS = ("ci_low", "ci_high", "gained", "lost")


def paired_heads(metrics: dict[str, float]) -> list[str]:
    """The ``.../delta_vs_<ref>`` keys of ``metrics`` that ``paired_metrics`` wrote (sorted)."""
    return sorted(k for k in metrics if k.rsplit("/", 1)[-1].startswith("delta_vs_") and f"{k}/ci_low" in metrics)


def _members(rows: Sequence[Any]) -> dict[str, list[int]]:
    """Metric name -> the indices of the rows it averages over (names as ``scoring.score_suite`` writes them)."""
    out: dict[str, list[int]] = {}

    def add(name: str, keep: Callable[[Any], bool]) -> None:
        idx = [i for i, r in enumerate(rows) if keep(r)]
        if idx:
            out[name] = idx

    for metric, kinds in _RATES.items():
        add(metric, lambda r, kinds=kinds: r.kind in kinds)
    for key in ("group", "suite"):
        for name in sorted({getattr(r, key) for r in rows}):
            for metric, kinds in _SLICE_RATES.items():
                add(f"{key}/{name}/{metric}",
                    lambda r, name=name, kinds=kinds, key=key: getattr(r, key) == name
                    and (kinds is None or r.kind in kinds))
    return out


def paired_metrics(rows: Sequence[Any], model_passed: Sequence[bool], ref_passed: Sequence[bool],
                   ref: str) -> dict[str, float]:
    """The paired-difference keys (module docstring) of the model against reference ``ref`` (``baseline`` or
    ``base``); ``rows[i]`` (an ``EvalRow``: ``kind``, ``group``, ``suite``) was answered with verdicts
    ``model_passed[i]`` and ``ref_passed[i]``."""
    if not len(rows) == len(model_passed) == len(ref_passed):
        raise ValueError(f"paired_metrics: {len(rows)} rows, {len(model_passed)} model and {len(ref_passed)} "
                         f"{ref} verdicts")
    out: dict[str, float] = {}
    for metric, idx in _members(rows).items():
        both, gained, lost, neither = paired_counts([model_passed[i] for i in idx], [ref_passed[i] for i in idx])
        delta, low, high = newcombe_paired_interval(both, gained, lost, neither)
        key = f"{metric}/delta_vs_{ref}"
        out |= {key: delta, f"{key}/ci_low": low, f"{key}/ci_high": high, f"{key}/gained": float(gained),
                f"{key}/lost": float(lost)}
    return out


def compare_responses(records_a: Sequence[dict[str, Any]], records_b: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Model B against model A on the rows both evals answered: the paired-difference keys of B with A as the
    reference (``<metric>/delta_vs_a``, ...). ``records_*``: the rows of two evals' ``responses.jsonl``; the
    ``model`` role's rows are matched by (suite, id). Two recipes evaluated on the same suites can be told apart
    only this way: their pass rates' own intervals overlap far more than their difference's."""

    def verdicts(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r.get("suite"), r.get("id")): r for r in records
                if r.get("role") == "model" and isinstance(r.get("passed"), bool)}

    a, b = verdicts(records_a), verdicts(records_b)
    keys = [k for k in b if k in a]
    rows = [SimpleNamespace(kind=b[k].get("kind"), group=b[k].get("group"), suite=b[k].get("suite")) for k in keys]
    return paired_metrics(rows, [b[k]["passed"] for k in keys], [a[k]["passed"] for k in keys], "a")

