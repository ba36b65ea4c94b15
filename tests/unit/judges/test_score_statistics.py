import pytest

from posttrain.judges.run import score_statistics


def _row(pid, idx, passed, kind):
    return {"prompt_id": pid, "candidate_index": idx, "value": float(passed), "passed": passed,
            "details": {"constraints": [{"name": kind, "args": {}, "passed": passed, "error": None}]}}


def test_pass_rates_exact():
    rows = [_row("p1", 0, True, "lowercase"), _row("p1", 1, False, "lowercase"),
            _row("p2", 0, False, "no_commas"), _row("p2", 1, False, "no_commas"),
            _row("p3", 0, True, "no_commas"), _row("p3", 1, True, "no_commas")]
    s = score_statistics(rows)
    assert s["candidates_scored"] == 6
    assert s["pass_rate"] == pytest.approx(3 / 6)
    assert s["prompts_with_a_pass"] == pytest.approx(2 / 3)
    assert s["prompts_all_pass"] == pytest.approx(1 / 3)
    assert s["pass_rate_by_constraint"] == {"lowercase": 0.5, "no_commas": 0.5}


def test_scores_without_pass_fail():
    s = score_statistics([{"prompt_id": "p", "candidate_index": 0, "value": 2.0, "passed": None, "details": {}},
                          {"prompt_id": "p", "candidate_index": 1, "value": float("nan"), "passed": None}])
    assert s == {"candidates_scored": 2, "mean_score": 2.0}
