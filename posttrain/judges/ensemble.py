"""Several judges as one: scoring ensembles (weighted mean of normalised scores) and pairwise ensembles (weighted
vote), with the statistics that show how much the judges disagree.

Normalisation is per score, not per batch, so a candidate's ensemble score does not depend on which other
candidates were scored with it: a judge with a known range ``(lo, hi)`` (verifiers (0, 1), LLM judges (1, 10))
maps to ``(v - lo) / (hi - lo)`` clipped to [0, 1]; an unbounded judge (reward models) maps through ``sigmoid``.

Agreement of one decision = the fraction of judges whose own decision equals the ensemble's (the weighted
majority). Pair building keeps it on each pair (``judge.agreement``), so training can weight or filter by it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from posttrain.judges.types import Message, Score, Verdict


@dataclass
class Member:
    """A judge in an ensemble. ``score_range`` overrides the judge's own ``score_range`` attribute."""

    judge: Any
    weight: float = 1.0
    score_range: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return self.judge.name

    def resolved_range(self) -> tuple[float, float] | None:
        return self.score_range or getattr(self.judge, "score_range", None)


def normalise(value: float, score_range: tuple[float, float] | None) -> float:
    """A score in [0, 1]: linear on a known range (clipped), else a sigmoid. NaN stays NaN."""
    if not math.isfinite(value):
        return math.nan if math.isnan(value) else float(value > 0)
    if score_range is None:
        return 0.5 * (1.0 + math.tanh(value / 2.0))  # sigmoid, without overflow for large |value|
    lo, hi = score_range
    return min(1.0, max(0.0, (value - lo) / (hi - lo)))


def _score_all(judge: Any, items: Sequence[tuple[list[Message], str, dict[str, Any]]]) -> list[Score]:
    if hasattr(judge, "score_many"):
        return list(judge.score_many(items))
    return [judge.score(p, r, m) for p, r, m in items]


def _compare_all(judge: Any, items: Sequence[tuple[list[Message], str, str, dict[str, Any]]]) -> list[Verdict]:
    if hasattr(judge, "compare_many"):
        return list(judge.compare_many(items))
    return [judge.compare(p, a, b, m) for p, a, b, m in items]


REDUCTIONS = ("mean", "min", "mean_minus_std")


def combine_scores(members: Sequence[Member], scores: Sequence[Score], reduce: str = "mean",
                   k: float = 1.0) -> Score:
    """The members' normalised scores (one Score per member, same order) as one: ``mean`` (weighted), ``min``
    (the most pessimistic judge: a response cannot win by fooling one of them; weights unused), or
    ``mean_minus_std`` (weighted mean - k x weighted population std: disagreement lowers the score; seed 002's
    reward-model ensembles). A member whose score is NaN (e.g. an unparseable LLM answer) is left out and the
    weights renormalised; all NaN gives NaN. ``passed`` is the AND of the members that have one, else None."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"ensemble reduce '{reduce}': expected one of {', '.join(REDUCTIONS)}")
    per_judge: dict[str, Any] = {}
    kept: list[tuple[float, float]] = []  # (weight, normalised)
    for member, s in zip(members, scores, strict=True):
        norm = normalise(s.value, member.resolved_range())
        per_judge[member.name] = {"value": s.value, "normalised": norm, "weight": member.weight, "passed": s.passed}
        if not math.isnan(norm):
            kept.append((member.weight, norm))
    passes = [s.passed for s in scores if s.passed is not None]
    weight = sum(w for w, _ in kept)
    if weight <= 0:
        value = math.nan
    elif reduce == "min":
        value = min(v for _, v in kept)
    else:
        value = sum(w * v for w, v in kept) / weight
        if reduce == "mean_minus_std":
            value -= k * math.sqrt(sum(w * (v - value) ** 2 for w, v in kept) / weight)
    return Score(value, all(passes) if passes else None, {"judges": per_judge})


class ScoringEnsemble:
    """A ScoringJudge made of several scoring judges."""

    score_range = (0.0, 1.0)

    def __init__(self, members: Sequence[Member], name: str = "ensemble"):
        if not members:
            raise ValueError("a scoring ensemble needs at least one judge")
        self.members, self.name = list(members), name

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        return self.score_many([(prompt, response, metadata)])[0]

    def score_many(self, items: Sequence[tuple[list[Message], str, dict[str, Any]]]) -> list[Score]:
        per_member = [_score_all(m.judge, items) for m in self.members]
        return [combine_scores(self.members, [col[i] for col in per_member]) for i in range(len(items))]


def score_decisions(chosen: Score, rejected: Score) -> dict[str, str]:
    """Each judge's own decision on a pair built from ensemble scores: "a" (chosen higher), "b" or "tie"."""
    out = {}
    rejected_judges = rejected.details.get("judges", {})
    for name, c in chosen.details.get("judges", {}).items():
        r = rejected_judges.get(name)
        if r is None or math.isnan(c["normalised"]) or math.isnan(r["normalised"]):
            continue
        out[name] = "a" if c["normalised"] > r["normalised"] else "b" if c["normalised"] < r["normalised"] else "tie"
    return out


def agreement(decisions: Mapping[str, str], outcome: str) -> float | None:
    """Fraction of judges whose decision equals ``outcome``; None without judges."""
    return sum(d == outcome for d in decisions.values()) / len(decisions) if decisions else None


def combine_verdicts(members: Sequence[Member], verdicts: Sequence[Verdict]) -> Verdict:
    """Weighted vote. The outcome with the most weight wins; "a" and "b" level on top gives a tie. Confidence =
    the winner's share of the weight; ``details.agreement`` = fraction of judges that voted for the winner."""
    weighted = {"a": 0.0, "b": 0.0, "tie": 0.0}
    votes = {}
    for member, v in zip(members, verdicts, strict=True):
        weighted[v.winner] += member.weight
        votes[member.name] = v.winner
    top = max(weighted.values())
    leaders = [k for k, w in weighted.items() if w == top]
    winner = leaders[0] if len(leaders) == 1 else "tie"
    total = sum(weighted.values())
    details = {"votes": votes, "weighted": weighted, "agreement": agreement(votes, winner),
               "judges": {m.name: v.details for m, v in zip(members, verdicts)}}
    return Verdict(winner, weighted[winner] / total if total > 0 else None, details)


class PairwiseEnsemble:
    """A PairwiseJudge made of several pairwise judges; ``decisions`` keeps every vote for ``agreement_stats``."""

    def __init__(self, members: Sequence[Member], name: str = "ensemble"):
        if not members:
            raise ValueError("a pairwise ensemble needs at least one judge")
        self.members, self.name = list(members), name
        self.decisions: list[dict[str, str]] = []

    def compare(self, prompt: list[Message], response_a: str, response_b: str, metadata: dict[str, Any]) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b, metadata)])[0]

    def compare_many(self, items: Sequence[tuple[list[Message], str, str, dict[str, Any]]]) -> list[Verdict]:
        per_member = [_compare_all(m.judge, items) for m in self.members]
        out = [combine_verdicts(self.members, [col[i] for col in per_member]) for i in range(len(items))]
        self.decisions += [dict(v.details["votes"]) for v in out]
        return out

    def stats(self) -> dict[str, Any]:
        return agreement_stats(self.decisions)


def fleiss_kappa(rows: Sequence[Mapping[str, int]], raters: int) -> float | None:
    """Fleiss' kappa for items each rated by the same number of raters; ``rows`` are per-item category counts.
    None when undefined (fewer than 2 raters, no items, or every rating in one category)."""
    if raters < 2 or not rows:
        return None
    n_items = len(rows)
    p_bar = sum((sum(c * c for c in r.values()) - raters) / (raters * (raters - 1)) for r in rows) / n_items
    totals: dict[str, int] = {}
    for r in rows:
        for k, c in r.items():
            totals[k] = totals.get(k, 0) + c
    p_e = sum((c / (n_items * raters)) ** 2 for c in totals.values())
    return None if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)


def agreement_stats(decisions: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """How much judges disagree, over items that map judge name -> "a" | "b" | "tie".

    ``agreement_matrix[j][k]``: fraction of the items both judged where j and k decided the same.
    ``unanimous_fraction``: fraction of items (judged by 2+ judges) where all decided the same.
    ``fleiss_kappa``: over the items every judge judged (None when undefined).
    """
    judges = sorted({name for d in decisions for name in d})
    matrix: dict[str, dict[str, float | None]] = {j: {} for j in judges}
    for j, k in itertools.product(judges, judges):
        both = [d for d in decisions if j in d and k in d]
        matrix[j][k] = sum(d[j] == d[k] for d in both) / len(both) if both else None
    multi = [d for d in decisions if len(d) >= 2]
    complete = [d for d in decisions if len(d) == len(judges)]
    counts = [{c: list(d.values()).count(c) for c in set(d.values())} for d in complete]
    return {
        "judges": judges,
        "n_items": len(decisions),
        "agreement_matrix": matrix,
        "unanimous_fraction": sum(len(set(d.values())) == 1 for d in multi) / len(multi) if multi else None,
        "fleiss_kappa": fleiss_kappa(counts, len(judges)),
    }
