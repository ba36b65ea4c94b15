"""Auditing a judge: a stratified sample of its decisions, shown blind to people, and how often they agree.

Strata (``strata``): the judge's verdict (``a`` / ``b`` / ``tie``; a pairs file's decisions are all ``a``, the chosen
response), the prompt's category (its metadata ``category``, else its constraint kinds, else ``all``), a length
bucket (the two responses' words together, cut at the pool's tertiles: ``short`` / ``medium`` / ``long``) and a
confidence bucket (the judge's margin or confidence, cut at the pool's tertiles: ``low`` / ``mid`` / ``high``;
``unknown`` without one). ``stratified_sample`` draws n items so that every stratum present gets at least one where
n allows, the rest proportional to stratum size (largest remainder), seeded.

Agreement is measured on what the person saw: each decision is shown with the two responses in a random order
(``display``), so both verdicts are read as the side they favour (``left`` / ``right`` / ``tie``). A judge whose
decisions all say "the first response" then still has varied shown verdicts, and Cohen's kappa measures agreement
beyond what the position alone would give.

Cohen's kappa (Cohen 1960): ``p_o`` the fraction of items where both agree, ``p_e = sum_k p_judge(k) * p_human(k)``
over the three shown verdicts, ``kappa = (p_o - p_e) / (1 - p_e)`` (None when ``p_e`` = 1: no variation to agree
beyond); its large-sample standard error ``sqrt(p_o (1 - p_o) / (n (1 - p_e)^2))`` and the 95% interval
``kappa +- 1.96 se``, clipped to [-1, 1]. The report has the overall numbers, the same per value of each stratum
dimension and per audit batch, and the drift between the first and the last batch.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

SHOWN = ("left", "right", "tie")
DIMENSIONS = ("verdict", "category", "length", "confidence")
Z95 = 1.96


def _tertile_cuts(values: Sequence[float]) -> tuple[float, float] | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[len(ordered) // 3], ordered[(2 * len(ordered)) // 3]


def _bucket(value: float | None, cuts: tuple[float, float] | None, names: tuple[str, str, str]) -> str:
    if value is None or cuts is None:
        return "unknown"
    return names[0] if value < cuts[0] else names[1] if value < cuts[1] else names[2]


def strata(items: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The stratum of each item (``verdict``, ``category``, ``length``, ``confidence``; module docstring). Items
    have ``a``, ``b`` (texts), ``judge`` (a / b / tie), and optionally ``category`` and ``confidence``."""
    lengths = [len(it["a"].split()) + len(it["b"].split()) for it in items]
    confidences = [it.get("confidence") for it in items]
    length_cuts = _tertile_cuts(lengths)
    confidence_cuts = _tertile_cuts([c for c in confidences if c is not None])
    return [{"verdict": it["judge"], "category": it.get("category") or "all",
             "length": _bucket(n, length_cuts, ("short", "medium", "long")),
             "confidence": _bucket(c, confidence_cuts, ("low", "mid", "high"))}
            for it, n, c in zip(items, lengths, confidences)]


def allocate(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """How many of ``n`` to draw from each stratum of ``sizes``: one from each (largest strata first) while n
    allows, the rest proportional to size by largest remainder, never more than a stratum holds."""
    n = min(n, sum(sizes.values()))
    keys = sorted(sizes, key=lambda k: (-sizes[k], str(k)))
    take = {k: 0 for k in keys}
    for k in keys[:n]:
        take[k] = 1
    left = n - sum(take.values())
    while left > 0:
        room = {k: sizes[k] - take[k] for k in keys if sizes[k] > take[k]}
        total = sum(sizes[k] for k in room)
        quotas = {k: left * sizes[k] / total for k in room}
        add = {k: min(room[k], math.floor(q)) for k, q in quotas.items()}
        if not any(add.values()):  # every quota below 1: the largest remainders get one each
            for k in sorted(room, key=lambda k: (-quotas[k], str(k)))[:left]:
                add[k] = 1
        for k, a in add.items():
            take[k] += a
        left = n - sum(take.values())
    return take


def stratified_sample(items: Sequence[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` items drawn across strata (``allocate``), each with its ``strata`` added; seeded, in pool order."""
    if n <= 0:
        raise ValueError(f"the sample size must be > 0, got {n}")
    labels = strata(items)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(labels):
        groups[tuple(s[d] for d in DIMENSIONS)].append(i)
    take = allocate({k: len(v) for k, v in groups.items()}, n)
    rng = random.Random(seed)
    chosen: list[int] = []
    for key in sorted(groups, key=str):
        chosen += rng.sample(groups[key], take[key])
    return [{**items[i], "strata": labels[i]} for i in sorted(chosen)]


def shown(verdict: str, display: Sequence[str]) -> str:
    """A verdict in the responses' labels (a / b / tie) as the side it favours on screen."""
    if verdict == "tie":
        return "tie"
    return "left" if display[0] == verdict else "right"


def cohen_kappa(judge: Sequence[str], human: Sequence[str]) -> dict[str, Any]:
    """Agreement of two raters over the same items (module docstring): n, agreement (p_o), expected (p_e), kappa,
    se and the 95% interval (None where undefined)."""
    n = len(judge)
    if n == 0:
        return {"n": 0, "agreement": None, "expected": None, "kappa": None, "se": None, "ci95": None}
    po = sum(j == h for j, h in zip(judge, human)) / n
    pj, ph = Counter(judge), Counter(human)
    pe = sum(pj[k] * ph[k] for k in set(pj) | set(ph)) / (n * n)
    if math.isclose(pe, 1.0):
        return {"n": n, "agreement": po, "expected": pe, "kappa": None, "se": None, "ci95": None}
    kappa = (po - pe) / (1 - pe)
    se = math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    ci = [max(-1.0, kappa - Z95 * se), min(1.0, kappa + Z95 * se)]
    return {"n": n, "agreement": po, "expected": pe, "kappa": kappa, "se": se, "ci95": ci}


def audit_report(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The agreement report over audit answers (``FeedbackStore.label_answers("audit")``: each with ``side``, the
    human's shown verdict, and ``task`` holding ``judge``, ``display``, ``strata``, ``batch``)."""
    rows = [{"judge": shown(a["task"]["judge"], a["task"]["display"]), "human": a["side"],
             "strata": a["task"].get("strata") or {}, "batch": a["task"].get("batch") or "default"} for a in answers]

    def over(subset: list[dict[str, Any]]) -> dict[str, Any]:
        return cohen_kappa([r["judge"] for r in subset], [r["human"] for r in subset])

    by_dimension = {}
    for dim in DIMENSIONS:
        values = sorted({r["strata"].get(dim, "unknown") for r in rows})
        by_dimension[dim] = {v: over([r for r in rows if r["strata"].get(dim, "unknown") == v]) for v in values}
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    per_batch = {b: over([r for r in rows if r["batch"] == b]) for b in batches}
    drift = None
    if len(batches) >= 2:
        first, last = per_batch[batches[0]], per_batch[batches[-1]]
        drift = {"first": batches[0], "last": batches[-1],
                 "agreement_change": last["agreement"] - first["agreement"],
                 "kappa_change": (None if first["kappa"] is None or last["kappa"] is None
                                  else last["kappa"] - first["kappa"])}
    confusion = Counter((r["judge"], r["human"]) for r in rows)
    return {"overall": over(rows), "strata": by_dimension, "batches": per_batch, "drift": drift,
            "confusion": {j: {h: confusion[(j, h)] for h in SHOWN} for j in SHOWN}}


LABEL_CHOICES = ("a", "b", "tie", "both_bad")


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa (Fleiss 1971) for items each rated by the same number m >= 2 of raters: ``counts[i][k]`` is
    how many raters put item i in category k. P_i = (sum_k n_ik^2 - m) / (m (m - 1)), P_bar their mean,
    p_k = sum_i n_ik / (N m), P_e = sum_k p_k^2, kappa = (P_bar - P_e) / (1 - P_e); None when P_e = 1."""
    if not counts:
        return None
    m = sum(counts[0])
    if m < 2 or any(sum(row) != m for row in counts):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    n_items = len(counts)
    p_bar = sum((sum(x * x for x in row) - m) / (m * (m - 1)) for row in counts) / n_items
    p_e = sum((sum(row[k] for row in counts) / (n_items * m)) ** 2 for k in range(len(counts[0])))
    return None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


def labeler_agreement(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Inter-labeler agreement on side-by-side tasks answered by two or more people (``label add --answers N``),
    on the response each chose (``a`` / ``b`` / ``tie`` / ``both_bad``, the display order undone): the tasks, the
    fraction of tasks where all agree, the mean pairwise agreement, Fleiss' kappa over the tasks with the most common
    number of answers, and per labeler pair (two who answered the same tasks) their agreement and task count."""
    by_task: dict[int, dict[str, str]] = defaultdict(dict)
    for ans in answers:
        by_task[ans["task"]["id"]][ans["user_id"]] = ans["choice"]
    multi = {t: v for t, v in by_task.items() if len(v) >= 2}
    if not multi:
        return {"tasks": 0}
    pair_agree: dict[tuple[str, str], list[int]] = defaultdict(list)
    pairwise = []
    for votes in multi.values():
        users = sorted(votes)
        same = [int(votes[u] == votes[v]) for i, u in enumerate(users) for v in users[i + 1:]]
        pairwise.append(sum(same) / len(same))
        for i, u in enumerate(users):
            for v in users[i + 1:]:
                pair_agree[(u, v)].append(int(votes[u] == votes[v]))
    m = Counter(len(v) for v in multi.values()).most_common(1)[0][0]
    counts = [[Counter(v.values())[c] for c in LABEL_CHOICES] for v in multi.values() if len(v) == m]
    return {"tasks": len(multi), "all_agree": sum(len(set(v.values())) == 1 for v in multi.values()) / len(multi),
            "pairwise_agreement": sum(pairwise) / len(pairwise), "fleiss_kappa": fleiss_kappa(counts),
            "fleiss_tasks": len(counts), "raters_per_task": m,
            "pairs": {f"{u}|{v}": {"tasks": len(x), "agreement": sum(x) / len(x)}
                      for (u, v), x in sorted(pair_agree.items())}}
