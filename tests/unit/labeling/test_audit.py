"""Audit statistics on hand-worked numbers: Cohen's kappa with its interval, stratum allocation, the stratified
sample, shown verdicts, and the report's per-batch drift."""

import math

import pytest

from posttrain.labeling.audit import allocate, audit_report, cohen_kappa, shown, strata, stratified_sample


def test_cohen_kappa_hand_worked():
    judge = ["left", "left", "right", "right", "tie", "left", "right", "left", "right", "left"]
    human = ["left", "right", "right", "right", "tie", "left", "left", "left", "right", "tie"]
    k = cohen_kappa(judge, human)
    # 7 of 10 agree; judge L5 R4 T1, human L4 R4 T2: p_e = (20 + 16 + 2) / 100
    assert k["n"] == 10 and k["agreement"] == pytest.approx(0.7) and k["expected"] == pytest.approx(0.38)
    assert k["kappa"] == pytest.approx(0.32 / 0.62)
    se = math.sqrt(0.7 * 0.3 / (10 * 0.62 ** 2))
    assert k["se"] == pytest.approx(se)
    assert k["ci95"] == pytest.approx([0.32 / 0.62 - 1.96 * se, 0.32 / 0.62 + 1.96 * se])


def test_cohen_kappa_edges():
    perfect = cohen_kappa(["left", "right"], ["left", "right"])
    assert perfect["kappa"] == 1.0 and perfect["se"] == 0.0 and perfect["ci95"] == [1.0, 1.0]
    # both raters constant and equal: nothing to agree on beyond chance
    assert cohen_kappa(["left"] * 3, ["left"] * 3)["kappa"] is None
    assert cohen_kappa([], [])["agreement"] is None
    # worse than chance is negative, and the interval is clipped at -1
    opposite = cohen_kappa(["left", "right"], ["right", "left"])
    assert opposite["kappa"] == -1.0 and opposite["ci95"][0] == -1.0


def test_allocate_one_each_then_proportional():
    assert allocate({"A": 6, "B": 3, "C": 1}, 5) == {"A": 3, "B": 1, "C": 1}
    assert allocate({"A": 6, "B": 3, "C": 1}, 2) == {"A": 1, "B": 1, "C": 0}  # largest strata first
    assert allocate({"A": 6, "B": 3, "C": 1}, 100) == {"A": 6, "B": 3, "C": 1}  # never more than a stratum holds
    assert allocate({"A": 4, "B": 4}, 6) == {"A": 3, "B": 3}


def _item(i, words, judge="a", confidence=None, category="x"):
    return {"a": "w " * words, "b": "v", "judge": judge, "confidence": confidence, "category": category, "i": i}


def test_strata_buckets_at_tertiles():
    items = [_item(i, words, confidence=c) for i, (words, c) in
             enumerate([(1, 0.1), (2, 0.2), (3, None), (10, 0.9), (20, 0.5), (30, 0.3)])]
    # lengths (a + b words) 2 3 4 11 21 31: cuts at sorted[2] = 4 and sorted[4] = 21
    assert [s["length"] for s in strata(items)] == ["short", "short", "medium", "medium", "long", "long"]
    # confidences 0.1 0.2 0.3 0.5 0.9: cuts at sorted[1] = 0.2 and sorted[3] = 0.5
    assert [s["confidence"] for s in strata(items)] == ["low", "mid", "unknown", "high", "high", "mid"]
    assert {s["verdict"] for s in strata(items)} == {"a"} and strata([_item(0, 1, category=None)])[0]["category"] == "all"


def test_stratified_sample_covers_every_stratum_and_is_seeded():
    items = [_item(i, 5, judge="a", category="common") for i in range(20)]
    items += [_item(20 + i, 5, judge="b", category="rare") for i in range(2)]
    sample = stratified_sample(items, 4, seed=3)
    assert len(sample) == 4 and {s["category"] for s in sample} == {"common", "rare"}
    assert [s["i"] for s in sample] == sorted(s["i"] for s in sample)  # pool order
    assert sample == stratified_sample(items, 4, seed=3)
    assert all(set(s["strata"]) == {"verdict", "category", "length", "confidence"} for s in sample)
    with pytest.raises(ValueError, match="sample size must be > 0"):
        stratified_sample(items, 0)


def test_shown_verdicts():
    assert shown("a", ["a", "b"]) == "left" and shown("a", ["b", "a"]) == "right"
    assert shown("b", ["b", "a"]) == "left" and shown("tie", ["b", "a"]) == "tie"


def _answer(judge, display, side, batch, category="c"):
    return {"side": side, "task": {"judge": judge, "display": display, "batch": batch,
                                   "strata": {"verdict": judge, "category": category, "length": "short",
                                              "confidence": "unknown"}}}


def test_report_per_batch_and_drift():
    answers = [_answer("a", ["a", "b"], "left", "w1"),   # judge left, human left: agree
               _answer("a", ["b", "a"], "right", "w1"),  # judge right, human right: agree
               _answer("a", ["b", "a"], "left", "w2"),   # judge right, human left
               _answer("a", ["a", "b"], "left", "w2", category="d")]  # agree
    report = audit_report(answers)
    assert report["overall"]["n"] == 4 and report["overall"]["agreement"] == 0.75
    assert report["batches"]["w1"]["agreement"] == 1.0 and report["batches"]["w2"]["agreement"] == 0.5
    assert report["drift"] == {"first": "w1", "last": "w2", "agreement_change": -0.5,
                               "kappa_change": report["batches"]["w2"]["kappa"] - report["batches"]["w1"]["kappa"]}
    assert report["strata"]["category"]["d"]["n"] == 1 and report["strata"]["category"]["c"]["agreement"] == 2 / 3
    assert report["confusion"]["right"] == {"left": 1, "right": 1, "tie": 0}


def test_fleiss_kappa_hand_worked():
    from posttrain.labeling.audit import fleiss_kappa

    # 3 items x 2 raters, 2 categories: P_i = 1, 1, 0 -> P_bar 2/3; p = (1/2, 1/2) -> P_e 1/2; kappa 1/3
    assert fleiss_kappa([[2, 0], [0, 2], [1, 1]]) == pytest.approx(1 / 3)
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # no variation: P_e = 1
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])
