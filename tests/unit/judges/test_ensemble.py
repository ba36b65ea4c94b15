import math

import pytest

from posttrain.judges.ensemble import (Member, PairwiseEnsemble, ScoringEnsemble, agreement_stats, combine_scores,
                                       combine_verdicts, fleiss_kappa, normalise)
from posttrain.judges.pairs import build_pairs
from posttrain.judges.types import Score, Verdict

PROMPT = [{"role": "user", "content": "q"}]


class Table:
    """A scoring/pairwise judge whose answers are a lookup table."""

    def __init__(self, name, scores=None, verdicts=None, score_range=None):
        self.name, self.scores, self.verdicts, self.score_range = name, scores or {}, verdicts or {}, score_range

    def score(self, prompt, response, metadata):
        return Score(self.scores[response], passed=self.scores[response] > 0.5 if self.score_range == (0, 1) else None)

    def compare(self, prompt, a, b, metadata):
        return Verdict(self.verdicts[(a, b)])


def test_normalise():
    assert normalise(5.5, (1, 10)) == 0.5
    assert normalise(12, (1, 10)) == 1.0 and normalise(-1, (0, 1)) == 0.0
    assert normalise(0.0, None) == 0.5
    assert normalise(2.0, None) == pytest.approx(1 / (1 + math.exp(-2)))
    assert normalise(1e6, None) == 1.0
    assert math.isnan(normalise(math.nan, (0, 1)))


def test_weighted_mean_of_normalised_scores():
    members = [Member(Table("verifier"), 1.0, (0, 1)), Member(Table("llm", score_range=(1, 10)), 3.0),
               Member(Table("rm"), 1.0)]
    s = combine_scores(members, [Score(0.5, True), Score(10.0), Score(0.0)])
    assert s.value == pytest.approx((0.5 + 3 * 1.0 + 0.5) / 5)
    assert s.passed is True
    assert s.details["judges"]["llm"] == {"value": 10.0, "normalised": 1.0, "weight": 3.0, "passed": None}
    # an unparseable LLM score is left out and the other weights renormalised
    s = combine_scores(members, [Score(0.5, False), Score(math.nan), Score(0.0)])
    assert s.value == pytest.approx(0.5) and s.passed is False
    assert math.isnan(combine_scores(members[1:2], [Score(math.nan)]).value)


def test_min_and_mean_minus_std_reductions():
    members = [Member(Table("a"), 1.0, (0, 1)), Member(Table("b"), 3.0, (0, 1)), Member(Table("c"), 1.0, (0, 1))]
    scores = [Score(0.2), Score(0.6), Score(math.nan)]
    assert combine_scores(members, scores, "min").value == pytest.approx(0.2)  # NaN left out, weights unused
    # weighted mean (0.2 + 3 * 0.6) / 4 = 0.5; weighted variance (1 * 0.09 + 3 * 0.01) / 4 = 0.03
    assert combine_scores(members, scores, "mean_minus_std", 2.0).value == pytest.approx(0.5 - 2 * math.sqrt(0.03))
    assert combine_scores(members, scores, "mean_minus_std", 0.0).value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ensemble reduce 'max'"):
        combine_scores(members, scores, "max")


def test_judge_stage_ensemble_option(tmp_path):
    import json

    from posttrain.judges.run import JudgeConfigError, judge_candidates

    texts = ["HELLO THERE FRIEND", "hello there my good friend how are you"]
    rows = [{"prompt_id": "p", "candidate_index": i, "prompt": [{"role": "user", "content": "Greet me briefly."}],
             "text": t, "metadata": {"constraints": [{"kind": "word_count", "args": {"max": 5}}]}}
            for i, t in enumerate(texts)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judges = [{"type": "verifier", "name": "v1"}, {"type": "verifier", "name": "v2", "style_penalty": 0.5}]

    def values(reduce, k=None):
        pairs = {"ensemble": reduce, **({"ensemble_std_k": k} if k is not None else {})}
        summary = judge_candidates(path, tmp_path / f"{reduce}{k}", judges, pairs)
        assert summary["pairs"]["pairs_kept"] == 1
        return [json.loads(x)["value"] for x in (tmp_path / f"{reduce}{k}" / "scores.jsonl").read_text().splitlines()]
    # "HELLO THERE FRIEND" obeys the word count: v1 1.0; v2 finds unrequested capitals, 1 - 0.5 = 0.5. The long one fails: 0, 0
    assert values("mean") == [0.75, 0.0]
    assert values("min") == [0.5, 0.0]
    assert values("mean_minus_std", 2) == [pytest.approx(0.75 - 2 * 0.25), 0.0]
    with pytest.raises(JudgeConfigError, match="pairs.ensemble 'max': expected one of mean, min, mean_minus_std"):
        judge_candidates(path, tmp_path / "x", judges, {"ensemble": "max"})
    with pytest.raises(JudgeConfigError, match="combines scores; strategy 'round_robin' compares pairs"):
        judge_candidates(path, tmp_path / "y", judges, {"ensemble": "min", "strategy": "round_robin"})


def test_scoring_ensemble_and_agreement_on_pairs():
    j1 = Table("j1", {"x": 0.9, "y": 0.1, "z": 0.5}, score_range=(0, 1))
    j2 = Table("j2", {"x": 0.2, "y": 0.3, "z": 0.1}, score_range=(0, 1))
    ens = ScoringEnsemble([Member(j1, 3.0), Member(j2, 1.0)])
    scores = ens.score_many([(PROMPT, t, {}) for t in "xyz"])
    assert [s.value for s in scores] == pytest.approx([(2.7 + 0.2) / 4, (0.3 + 0.3) / 4, (1.5 + 0.1) / 4])
    cands = [{"prompt_id": "p", "prompt": PROMPT, "candidate_index": i, "text": t} for i, t in enumerate("xyz")]
    rows, _ = build_pairs(cands, {("p", i): s for i, s in enumerate(scores)})
    (row,) = rows
    assert (row["chosen"], row["rejected"]) == ("x", "y")
    # j1 prefers x over y, j2 prefers y: half the judges agree with the ensemble
    assert row["judge"]["agreement"] == 0.5
    assert row["judge"]["decisions"] == {"j1": "a", "j2": "b"}


def test_weighted_vote():
    members = [Member(Table("j1"), 2.0), Member(Table("j2"), 1.0), Member(Table("j3"), 1.0)]
    level = combine_verdicts(members, [Verdict("a"), Verdict("b"), Verdict("b")])
    assert level.winner == "tie"  # a and b level at 2.0
    members[0].weight = 3.0
    v = combine_verdicts(members, [Verdict("a"), Verdict("b"), Verdict("b")])
    assert v.winner == "a" and v.confidence == pytest.approx(3 / 5)
    assert v.details["agreement"] == pytest.approx(1 / 3)
    assert v.details["votes"] == {"j1": "a", "j2": "b", "j3": "b"}
    t = combine_verdicts(members, [Verdict("tie"), Verdict("b"), Verdict("a")])
    assert t.winner == "tie" and t.details["agreement"] == pytest.approx(1 / 3)


def test_pairwise_ensemble_records_decisions():
    j1 = Table("j1", verdicts={("x", "y"): "a", ("y", "z"): "a"})
    j2 = Table("j2", verdicts={("x", "y"): "a", ("y", "z"): "b"})
    j3 = Table("j3", verdicts={("x", "y"): "a", ("y", "z"): "b"})
    ens = PairwiseEnsemble([Member(j1), Member(j2), Member(j3)])
    v = ens.compare_many([(PROMPT, "x", "y", {}), (PROMPT, "y", "z", {})])
    assert [x.winner for x in v] == ["a", "b"]
    assert [x.details["agreement"] for x in v] == pytest.approx([1.0, 2 / 3])
    stats = ens.stats()
    assert stats["unanimous_fraction"] == 0.5
    assert stats["agreement_matrix"]["j1"]["j2"] == 0.5 and stats["agreement_matrix"]["j2"]["j3"] == 1.0


def test_agreement_stats_and_fleiss_kappa_by_hand():
    decisions = [
        {"j1": "a", "j2": "a", "j3": "a"},
        {"j1": "a", "j2": "a", "j3": "b"},
        {"j1": "b", "j2": "b", "j3": "b"},
        {"j1": "a", "j2": "b", "j3": "tie"},
    ]
    stats = agreement_stats(decisions)
    # P_i = 1, 1/3, 1, 0 -> P = 7/12; p = (6, 5, 1)/12 -> Pe = 62/144; kappa = (7/12 - 31/72) / (1 - 31/72) = 11/41
    assert stats["fleiss_kappa"] == pytest.approx(11 / 41)
    assert stats["unanimous_fraction"] == 0.5
    m = stats["agreement_matrix"]
    assert (m["j1"]["j2"], m["j1"]["j3"], m["j2"]["j3"], m["j1"]["j1"]) == (0.75, 0.5, 0.5, 1.0)
    assert stats["judges"] == ["j1", "j2", "j3"] and stats["n_items"] == 4
    assert fleiss_kappa([{"a": 3}, {"a": 3}], 3) is None  # every rating in one category: undefined
    assert fleiss_kappa([{"a": 2}, {"b": 2}], 2) == pytest.approx(1.0)
