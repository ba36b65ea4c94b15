"""Preference pairs from judged candidates, in the layout the DPO trainer reads.

From scores (``build_pairs``): per prompt, ``best_vs_worst`` proposes one pair (highest vs lowest score; equal
scores broken by the lower ``candidate_index``), ``all_above_margin`` proposes every unordered pair of candidates.
From a pairwise judge (``build_pairs_pairwise``): ``round_robin`` compares every pair of candidates, scores each by
its win rate (a win 1, a tie 0.5, over its comparisons) and proposes best vs worst; ``all_pairs`` proposes every
comparison with its winner as chosen (scores 1 / 0; a tie 0.5 / 0.5).

Repaired pairs (``repair_rows``, issue 16): a candidate that fails its instruction constraints is edited by
``verifiers/repair.py`` into one that obeys them (same content, the model's own wording); the pair is (repaired,
as sampled, tidied the same way: verbatim repeated sentences dropped, an unfinished tail cut), so the two differ
in the constraint edit alone; the repaired copy is scored by the same judges. ``repair`` (per prompt, how many
failing candidates to repair, lowest ``candidate_index`` first) adds these pairs to a scoring strategy's; the strategy ``repair`` keeps only them. A
repaired candidate has ``candidate_index`` ``-1 - i`` (i: the index it was repaired from) and ``repaired_from: i``.

Each proposed pair meets the filters in this order and is dropped by the first it fails:
``duplicate`` (chosen and rejected texts identical), ``tie`` (equal scores), ``margin`` (chosen - rejected <
``min_margin``), ``length_ratio`` (longer / shorter > ``max_length_ratio``), ``duplicate`` (same prompt and the same
two texts as a pair already kept, in either order, e.g. a prompt that appears twice under two ids).

Length balancing (``length_balance=True``), after filtering: if the fraction of kept pairs whose chosen is
longer than its rejected (equal lengths count as not longer) exceeds ``0.5 + length_balance_tolerance``, drop pairs
with chosen longer, most length-biased first (largest chosen/rejected length ratio; then smallest margin; then
latest), one at a time until the fraction is within the bound (or no pair is left). A judge that prefers long
answers then cannot teach the policy "longer is better" through the pairs.

Lengths are characters, or tokens when a tokenizer is given (or any ``str -> int`` function).
Counts in the summary: ``dropped.unscored`` counts candidates (no score, or NaN), ``dropped.no_candidates`` prompts
(fewer than two scored candidates), every other reason pairs; ``pairs_considered = pairs_kept + dropped`` pairs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.judges.ensemble import agreement, score_decisions
from posttrain.judges.types import Score
from posttrain.verifiers.repair import repair_reply, tidy

STRATEGIES = ("best_vs_worst", "all_above_margin", "repair")
PAIRWISE_STRATEGIES = ("round_robin", "all_pairs")
DROP_REASONS = ("unscored", "no_candidates", "duplicate", "tie", "margin", "length_ratio", "length_balance")
TIE_TOLERANCE = 1e-9


def length_function(tokenizer_or_len_fn: Any = None) -> tuple[Callable[[str], int], str]:
    """(length function, unit): characters; tokens for an object with ``encode``; else the function itself."""
    if tokenizer_or_len_fn is None:
        return len, "chars"
    if hasattr(tokenizer_or_len_fn, "encode"):
        tok = tokenizer_or_len_fn
        return (lambda text: len(tok.encode(text, add_special_tokens=False))), "tokens"
    if callable(tokenizer_or_len_fn):
        return tokenizer_or_len_fn, "custom"
    raise TypeError("tokenizer_or_len_fn must be a tokenizer, a str -> int function, or None")


@dataclass
class _Proposal:
    prompt_id: str
    prompt: list[dict[str, str]]
    chosen: dict[str, Any]  # candidate rows
    rejected: dict[str, Any]
    chosen_score: float
    rejected_score: float
    judge: dict[str, Any] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


def group_by_prompt(candidates: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """prompt_id -> its candidates sorted by ``candidate_index``; prompts in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in candidates:
        groups.setdefault(row["prompt_id"], []).append(row)
    return {pid: sorted(rows, key=lambda r: r["candidate_index"]) for pid, rows in groups.items()}


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return row["prompt_id"], row["candidate_index"]


def _score_proposals(group: list[tuple[dict[str, Any], Score]], strategy: str) -> list[_Proposal]:
    def make(c: tuple[dict, Score], r: tuple[dict, Score]) -> _Proposal:
        judge: dict[str, Any] = {"chosen_index": c[0]["candidate_index"], "rejected_index": r[0]["candidate_index"]}
        decisions = score_decisions(c[1], r[1])
        if decisions:
            judge.update(agreement=agreement(decisions, "a"), decisions=decisions)
        return _Proposal(c[0]["prompt_id"], c[0]["prompt"], c[0], r[0], c[1].value, r[1].value, judge)

    if strategy == "repair":  # (repaired, original): the repair is the chosen side whatever the scores say
        return [make(group[0], group[1])]
    if strategy == "best_vs_worst":
        best = min(group, key=lambda x: (-x[1].value, x[0]["candidate_index"]))
        worst = min(group, key=lambda x: (x[1].value, x[0]["candidate_index"]))
        if best is worst:  # all scores equal: the lowest index is both; propose it against the next one (a tie)
            worst = next(x for x in group if x is not best)
        return [make(best, worst)]
    return [make(x, y) if x[1].value >= y[1].value else make(y, x) for x, y in itertools.combinations(group, 2)]


def _select(proposals: list[_Proposal], *, min_margin: float, max_length_ratio: float | None,
            length_of: Callable[[str], int], dropped: dict[str, int]) -> list[_Proposal]:
    kept, seen = [], set()
    for p in proposals:
        c_text, r_text = p.chosen["text"], p.rejected["text"]
        if c_text == r_text:
            reason = "duplicate"
        elif math.isclose(p.chosen_score, p.rejected_score, rel_tol=0.0, abs_tol=TIE_TOLERANCE):
            reason = "tie"
        elif p.margin < min_margin:
            reason = "margin"
        elif max_length_ratio is not None and _ratio(length_of(c_text), length_of(r_text)) > max_length_ratio:
            reason = "length_ratio"
        elif (key := (json.dumps(p.prompt, sort_keys=True), *sorted((c_text, r_text)))) in seen:
            reason = "duplicate"
        else:
            seen.add(key)
            kept.append(p)
            continue
        dropped[reason] += 1
    return kept


def _ratio(a: int, b: int) -> float:
    longer, shorter = max(a, b), min(a, b)
    return longer / shorter if shorter > 0 else (1.0 if longer == 0 else math.inf)


def _frac_chosen_longer(pairs: list[_Proposal], length_of: Callable[[str], int]) -> float | None:
    if not pairs:
        return None
    return sum(length_of(p.chosen["text"]) > length_of(p.rejected["text"]) for p in pairs) / len(pairs)


def balance_lengths(pairs: list[_Proposal], length_of: Callable[[str], int], tolerance: float) -> list[_Proposal]:
    """Drop chosen-longer pairs, most length-biased first, until at most 0.5 + tolerance have chosen longer."""
    lengths = [(length_of(p.chosen["text"]), length_of(p.rejected["text"])) for p in pairs]
    longer = [i for i, (c, r) in enumerate(lengths) if c > r]
    order = sorted(longer, key=lambda i: (-(lengths[i][0] / lengths[i][1] if lengths[i][1] else math.inf),
                                          pairs[i].margin, -i))
    n_total, n_longer, drop = len(pairs), len(longer), set()
    for i in order:
        if n_total == 0 or n_longer / n_total <= 0.5 + tolerance:
            break
        drop.add(i)
        n_total, n_longer = n_total - 1, n_longer - 1
    return [p for i, p in enumerate(pairs) if i not in drop]


def _finish(proposals: list[_Proposal], *, strategy: str, prompts_in: int, candidates_in: int,
            dropped: dict[str, int], min_margin: float, max_length_ratio: float | None, length_balance: bool,
            length_balance_tolerance: float, tokenizer_or_len_fn: Any, judge_meta: dict[str, Any] | None
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    length_of, unit = length_function(tokenizer_or_len_fn)
    kept = _select(proposals, min_margin=min_margin, max_length_ratio=max_length_ratio, length_of=length_of,
                   dropped=dropped)
    before = _frac_chosen_longer(kept, length_of)
    if length_balance:
        balanced = balance_lengths(kept, length_of, length_balance_tolerance)
        dropped["length_balance"] += len(kept) - len(balanced)
        kept = balanced
    rows = [{"prompt": p.prompt, "chosen": p.chosen["text"], "rejected": p.rejected["text"],
             "prompt_id": p.prompt_id, "chosen_score": p.chosen_score, "rejected_score": p.rejected_score,
             "margin": p.margin, "judge": {**(judge_meta or {}), **p.judge}} for p in kept]
    summary = {
        "strategy": strategy, "prompts_in": prompts_in, "candidates_in": candidates_in,
        "pairs_considered": len(proposals), "pairs_kept": len(rows), "dropped": dropped,
        "length": length_stats(rows, length_of, unit) | {"frac_chosen_longer_before_balance": before},
        "params": {"min_margin": min_margin, "max_length_ratio": max_length_ratio, "length_balance": length_balance,
                   "length_balance_tolerance": length_balance_tolerance},
    }
    return rows, summary


def length_stats(rows: Sequence[dict[str, Any]], length_of: Callable[[str], int], unit: str) -> dict[str, Any]:
    """Mean chosen and rejected lengths (characters, and ``unit`` when not characters), fraction chosen longer."""
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    c, r = [length_of(x["chosen"]) for x in rows], [length_of(x["rejected"]) for x in rows]
    out = {"unit": unit, "chosen_mean": mean(c), "rejected_mean": mean(r),
           "frac_chosen_longer": mean([float(a > b) for a, b in zip(c, r)])}
    if unit != "chars":
        out |= {"chosen_mean_chars": mean([len(x["chosen"]) for x in rows]),
                "rejected_mean_chars": mean([len(x["rejected"]) for x in rows])}
    return out


def repair_rows(candidates: Sequence[dict[str, Any]], scores: dict[tuple[str, int], Score], per_prompt: int
                ) -> list[dict[str, Any]]:
    """Up to ``per_prompt`` repaired copies per prompt of candidates whose constraints fail (lowest
    ``candidate_index`` first; candidates without constraints in their metadata, or that no repair fixes, are
    skipped). Each copy has the repaired ``text``, ``candidate_index = -1 - i`` and ``repaired_from = i``."""
    out = []
    for rows in group_by_prompt(candidates).values():
        made = 0
        for row in rows:
            if made >= per_prompt:
                break
            s = scores.get(_key(row))
            if s is None or not math.isfinite(s.value):
                continue
            truncated = row.get("finish_reason") == "length"
            fixed = repair_reply(row["text"], row.get("metadata"), truncated=truncated)
            if fixed is None:
                continue
            out.append({**row, "text": fixed, "candidate_index": -1 - row["candidate_index"],
                        "repaired_from": row["candidate_index"], "finish_reason": "repaired",
                        "tidied_original": tidy(row["text"], truncated=truncated)})
            made += 1
    return out


def build_pairs(candidates: Sequence[dict[str, Any]], scores: dict[tuple[str, int], Score], *,
                strategy: str = "best_vs_worst", min_margin: float = 0.0, max_length_ratio: float | None = None,
                length_balance: bool = False, length_balance_tolerance: float = 0.05,
                tokenizer_or_len_fn: Any = None, judge_meta: dict[str, Any] | None = None,
                repaired: Sequence[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pair rows, summary) from candidate rows and their scores, keyed by (prompt_id, candidate_index).
    ``repaired`` (from ``repair_rows``, scored in ``scores`` too) adds one (repaired, original) proposal each."""
    if strategy not in STRATEGIES:
        raise ValueError(f"pair strategy '{strategy}': expected one of {', '.join(STRATEGIES)}")
    dropped = dict.fromkeys(DROP_REASONS, 0)
    groups = group_by_prompt(candidates)
    proposals: list[_Proposal] = []
    originals = {_key(r): r for r in candidates}
    for rep in repaired:
        orig = originals[(rep["prompt_id"], rep["repaired_from"])]
        s_rep, s_orig = scores.get(_key(rep)), scores[_key(orig)]
        if s_rep is None or not math.isfinite(s_rep.value):
            dropped["unscored"] += 1
            continue
        # the rejected side is the candidate tidied as its repair was (loops dropped, an unfinished tail cut), so
        # the pair differs in the constraint edit alone, not also in length or a loop
        rejected = {**orig, "text": rep["tidied_original"]}
        proposals += _score_proposals([(rep, s_rep), (rejected, s_orig)], "repair")
    for rows in groups.values() if strategy != "repair" else ():
        scored = []
        for row in rows:
            s = scores.get(_key(row))
            if s is None or not math.isfinite(s.value):
                dropped["unscored"] += 1
            else:
                scored.append((row, s))
        if len(scored) < 2:
            dropped["no_candidates"] += 1
            continue
        proposals += _score_proposals(scored, strategy)
    return _finish(proposals, strategy=strategy, prompts_in=len(groups), candidates_in=len(candidates),
                   dropped=dropped, min_margin=min_margin, max_length_ratio=max_length_ratio,
                   length_balance=length_balance, length_balance_tolerance=length_balance_tolerance,
                   tokenizer_or_len_fn=tokenizer_or_len_fn, judge_meta=judge_meta)


def compare_round_robin(candidates: Sequence[dict[str, Any]], judge: Any) -> list[dict[str, Any]]:
    """Every unordered pair of candidates of each prompt through ``judge`` (in one ``compare_many`` batch when the
    judge has it). Rows: prompt_id, a_index, b_index, winner ("a" | "b" | "tie"), confidence, details."""
    todo = []
    for rows in group_by_prompt(candidates).values():
        todo += list(itertools.combinations(rows, 2))
    items = [(a["prompt"], a["text"], b["text"], dict(a.get("metadata") or {})) for a, b in todo]
    if hasattr(judge, "compare_many"):
        verdicts = list(judge.compare_many(items))
    else:
        verdicts = [judge.compare(*item) for item in items]
    return [{"prompt_id": a["prompt_id"], "a_index": a["candidate_index"], "b_index": b["candidate_index"],
             "winner": v.winner, "confidence": v.confidence, "details": v.details} for (a, b), v in zip(todo, verdicts)]


def win_rates(candidates: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]]
              ) -> dict[tuple[str, int], Score]:
    """Each candidate's round-robin win rate (win 1, tie 0.5) over its comparisons, as a Score."""
    points: dict[tuple[str, int], list[float]] = {_key(r): [] for r in candidates}
    for c in comparisons:
        a, b = (c["prompt_id"], c["a_index"]), (c["prompt_id"], c["b_index"])
        pa = {"a": 1.0, "b": 0.0, "tie": 0.5}[c["winner"]]
        points[a].append(pa)
        points[b].append(1.0 - pa)
    return {k: Score(sum(v) / len(v), None, {"wins": sum(v), "comparisons": len(v)}) for k, v in points.items() if v}


def build_pairs_from_comparisons(candidates: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]], *,
                                 strategy: str = "round_robin", min_margin: float = 0.0,
                                 max_length_ratio: float | None = None, length_balance: bool = False,
                                 length_balance_tolerance: float = 0.05, tokenizer_or_len_fn: Any = None,
                                 judge_meta: dict[str, Any] | None = None
                                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if strategy not in PAIRWISE_STRATEGIES:
        raise ValueError(f"pairwise strategy '{strategy}': expected one of {', '.join(PAIRWISE_STRATEGIES)}")
    opts = dict(min_margin=min_margin, max_length_ratio=max_length_ratio, length_balance=length_balance,
                length_balance_tolerance=length_balance_tolerance, tokenizer_or_len_fn=tokenizer_or_len_fn,
                judge_meta=judge_meta)
    if strategy == "round_robin":
        rows, summary = build_pairs(candidates, win_rates(candidates, comparisons), strategy="best_vs_worst", **opts)
        return rows, summary | {"strategy": "round_robin", "comparisons": len(comparisons)}
    groups = group_by_prompt(candidates)
    by_key = {_key(r): r for r in candidates}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["no_candidates"] = sum(len(rows) < 2 for rows in groups.values())
    proposals = []
    for c in comparisons:
        a, b = by_key[(c["prompt_id"], c["a_index"])], by_key[(c["prompt_id"], c["b_index"])]
        chosen, rejected = (b, a) if c["winner"] == "b" else (a, b)
        s = 0.5 if c["winner"] == "tie" else 1.0
        meta = {"chosen_index": chosen["candidate_index"], "rejected_index": rejected["candidate_index"],
                "confidence": c["confidence"]}
        if "agreement" in c["details"]:
            meta["agreement"] = c["details"]["agreement"]
        proposals.append(_Proposal(a["prompt_id"], a["prompt"], chosen, rejected, s, 1.0 - s, meta))
    rows, summary = _finish(proposals, strategy=strategy, prompts_in=len(groups), candidates_in=len(candidates),
                            dropped=dropped, **opts)
    return rows, summary | {"comparisons": len(comparisons)}


def build_pairs_pairwise(candidates: Sequence[dict[str, Any]], judge: Any, *, strategy: str = "round_robin",
                         **options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pair rows, summary) from a PairwiseJudge: ``compare_round_robin`` then ``build_pairs_from_comparisons``
    (options as there)."""
    if strategy not in PAIRWISE_STRATEGIES:
        raise ValueError(f"pairwise strategy '{strategy}': expected one of {', '.join(PAIRWISE_STRATEGIES)}")
    comparisons = compare_round_robin(candidates, judge)
    return build_pairs_from_comparisons(candidates, comparisons, strategy=strategy, **options)
