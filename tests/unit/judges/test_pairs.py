import math

import pytest

from posttrain.judges.pairs import balance_lengths, build_pairs, build_pairs_pairwise, length_function
from posttrain.judges.types import Score, Verdict


def prompt(pid):
    return [{"role": "user", "content": f"question {pid}"}]


def make(spec):
    """spec: {prompt_id: [(text, score or None), ...]} -> (candidate rows, scores)."""
    cands, scores = [], {}
    for pid, items in spec.items():
        for i, (text, score) in enumerate(items):
            cands.append({"prompt_id": pid, "prompt": prompt(pid.split("#")[0]), "candidate_index": i, "text": text,
                          "metadata": {}})
            if score is not None:
                scores[(pid, i)] = Score(score)
    return cands, scores


def test_best_vs_worst_row_layout():
    cands, scores = make({"p1": [("aaa", 0.2), ("bbbb", 0.9), ("cc", 0.5)]})
    rows, summary = build_pairs(cands, scores, judge_meta={"judges": ["j"]})
    assert rows == [{"prompt": prompt("p1"), "chosen": "bbbb", "rejected": "aaa", "prompt_id": "p1",
                     "chosen_score": 0.9, "rejected_score": 0.2, "margin": pytest.approx(0.7),
                     "judge": {"judges": ["j"], "chosen_index": 1, "rejected_index": 0}}]
    assert summary["prompts_in"] == 1 and summary["candidates_in"] == 3
    assert summary["pairs_considered"] == 1 and summary["pairs_kept"] == 1
    assert summary["length"] == {"unit": "chars", "chosen_mean": 4.0, "rejected_mean": 3.0, "frac_chosen_longer": 1.0,
                                 "frac_chosen_longer_before_balance": 1.0}


def test_every_drop_reason_counted_exactly():
    cands, scores = make({
        "keep": [("good answer", 1.0), ("bad answer!", 0.0)],
        "tie": [("one", 0.5), ("two", 0.5), ("six", 0.5)],
        "margin": [("alpha", 0.5), ("gamma", 0.45)],
        "long": [("x" * 10, 1.0), ("y" * 40, 0.0)],
        "same": [("identical", 1.0), ("identical", 0.0)],
        "dup#1": [("first", 0.9), ("second", 0.1)],  # the same prompt text as dup#2 under another id
        "dup#2": [("second", 0.2), ("first", 0.8)],
        "lonely": [("only one", 1.0)],
        "unscored": [("has none", None), ("has nan", math.nan), ("scored", 0.3)],
    })
    rows, summary = build_pairs(cands, scores, min_margin=0.1, max_length_ratio=3.0)
    assert [r["prompt_id"] for r in rows] == ["keep", "dup#1"]
    assert summary["dropped"] == {"unscored": 2, "no_candidates": 2, "duplicate": 2, "tie": 1, "margin": 1,
                                  "length_ratio": 1, "length_balance": 0}
    assert summary["pairs_considered"] == 7 and summary["pairs_kept"] == 2
    assert summary["prompts_in"] == 9 and summary["candidates_in"] == 19
    # without the filters the margin and length pairs are kept
    rows, summary = build_pairs(cands, scores)
    assert summary["dropped"]["margin"] == 0 and summary["dropped"]["length_ratio"] == 0
    assert summary["pairs_kept"] == 4


def test_all_above_margin():
    cands, scores = make({"p": [("a0", 0.9), ("a1", 0.5), ("a2", 0.5), ("a3", 0.1)]})
    rows, summary = build_pairs(cands, scores, strategy="all_above_margin", min_margin=0.3)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a0", "a1"), ("a0", "a2"), ("a0", "a3"), ("a1", "a3"),
                                                            ("a2", "a3")]
    assert summary["dropped"]["tie"] == 1 and summary["pairs_considered"] == 6
    rows, summary = build_pairs(cands, scores, strategy="all_above_margin", min_margin=0.45)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a0", "a3")]
    assert summary["dropped"]["margin"] == 4 and summary["dropped"]["tie"] == 1
    with pytest.raises(ValueError, match="pair strategy 'nope'"):
        build_pairs(cands, scores, strategy="nope")


def test_best_vs_worst_breaks_equal_scores_by_lowest_index():
    cands, scores = make({"p": [("w1", 0.0), ("b1", 1.0), ("b2", 1.0), ("w2", 0.0)]})
    (row,), _ = build_pairs(cands, scores)
    assert (row["chosen"], row["rejected"]) == ("b1", "w1")


def test_length_balance_drops_most_biased_first():
    lengths = {"r2": (20, 10), "r3": (30, 10), "r15": (15, 10), "short": (5, 10)}  # (chosen, rejected) chars
    cands, scores = make({pid: [("c" * c, 1.0), ("r" * r, 0.0)] for pid, (c, r) in lengths.items()})
    rows, summary = build_pairs(cands, scores, length_balance=True)
    # 3/4 chosen longer > 0.55: drop ratio 3.0 (2/3 still > 0.55), then ratio 2.0 (1/2 <= 0.55)
    assert [r["prompt_id"] for r in rows] == ["r15", "short"]
    assert summary["dropped"]["length_balance"] == 2
    assert summary["length"]["frac_chosen_longer_before_balance"] == 0.75
    assert summary["length"]["frac_chosen_longer"] == 0.5
    rows, summary = build_pairs(cands, scores, length_balance=True, length_balance_tolerance=0.3)
    assert len(rows) == 4 and summary["dropped"]["length_balance"] == 0  # 0.75 <= 0.8
    rows, _ = build_pairs(cands, scores, length_balance=False)
    assert len(rows) == 4


def test_length_balance_ties_broken_by_smaller_margin():
    cands, scores = make({"big": [("cc", 1.0), ("r", 0.0)], "small": [("dd", 0.6), ("s", 0.5)],
                          "short": [("c", 1.0), ("rr", 0.0)]})
    rows, summary = build_pairs(cands, scores, length_balance=True)
    # big and small both have ratio 2 with chosen longer (2/3 > 0.55): the smaller margin goes first, then 1/2
    assert [r["prompt_id"] for r in rows] == ["big", "short"]
    assert summary["dropped"]["length_balance"] == 1
    # all chosen longer: nothing can balance it, every pair goes
    only_longer = [c for c in cands if c["prompt_id"] != "short"]
    rows, summary = build_pairs(only_longer, scores, length_balance=True)
    assert rows == [] and summary["dropped"]["length_balance"] == 2
    assert balance_lengths([], len, 0.05) == []


def test_lengths_in_tokens():
    class WordTokenizer:
        def encode(self, text, add_special_tokens=False):
            return text.split()

    cands, scores = make({"p": [("one two three four", 1.0), ("onetwothreefourfive", 0.0)]})
    # characters: 18 vs 19 -> ratio ~1.06; tokens: 4 vs 1 -> ratio 4
    _, by_chars = build_pairs(cands, scores, max_length_ratio=2.0)
    assert by_chars["pairs_kept"] == 1
    _, by_tokens = build_pairs(cands, scores, max_length_ratio=2.0, tokenizer_or_len_fn=WordTokenizer())
    assert by_tokens["dropped"]["length_ratio"] == 1
    rows, summary = build_pairs(cands, scores, tokenizer_or_len_fn=WordTokenizer())
    assert summary["length"] == {"unit": "tokens", "chosen_mean": 4.0, "rejected_mean": 1.0, "frac_chosen_longer": 1.0,
                                 "chosen_mean_chars": 18.0, "rejected_mean_chars": 19.0,
                                 "frac_chosen_longer_before_balance": 1.0}
    assert length_function(lambda s: 7)[1] == "custom"


class QualityJudge:
    """Pairwise judge from a quality table; equal quality is a tie. Counts its comparisons."""

    name = "quality"

    def __init__(self, quality):
        self.quality, self.calls = quality, 0

    def compare(self, prompt, a, b, metadata):
        self.calls += 1
        qa, qb = self.quality[a], self.quality[b]
        return Verdict("tie" if qa == qb else "a" if qa > qb else "b", 1.0)


def test_pairwise_round_robin_best_vs_worst():
    judge = QualityJudge({"mid": 2, "best": 3, "worst": 1, "x": 5, "y": 5})
    cands, _ = make({"p": [("mid", None), ("best", None), ("worst", None)], "q": [("x", None), ("y", None)]})
    rows, summary = build_pairs_pairwise(cands, judge)
    assert judge.calls == 4  # 3 for p, 1 for q
    assert [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in rows] == [
        ("best", "worst", 1.0, 0.0)]
    assert summary["strategy"] == "round_robin" and summary["comparisons"] == 4
    assert summary["dropped"]["tie"] == 1  # x vs y


def test_pairwise_all_pairs():
    judge = QualityJudge({"mid": 2, "best": 3, "worst": 1, "twin": 2})
    cands, _ = make({"p": [("mid", None), ("best", None), ("worst", None), ("twin", None)]})
    rows, summary = build_pairs_pairwise(cands, judge, strategy="all_pairs", max_length_ratio=10.0)
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == sorted(
        [("best", "mid"), ("mid", "worst"), ("best", "worst"), ("best", "twin"), ("twin", "worst")])
    assert summary["dropped"]["tie"] == 1 and summary["pairs_considered"] == 6
    assert all(r["margin"] == 1.0 and r["judge"]["confidence"] == 1.0 for r in rows)
    with pytest.raises(ValueError, match="pairwise strategy"):
        build_pairs_pairwise(cands, judge, strategy="best_vs_worst")
