"""Paired intervals for pass-rate differences (posttrain/eval/significance.py) and the gates that use them."""

import random
from types import SimpleNamespace

import pytest

from posttrain.eval.gates import GateConfigError, evaluate_gate, parse_gates
from posttrain.eval.scoring import score_suite
from posttrain.eval.significance import (compare_responses, newcombe_paired_interval, paired_counts, paired_heads,
                                         paired_metrics)
from posttrain.eval.suites import EvalRow


def test_matches_an_independent_implementation_of_newcombe_method_10():
    # 89 rows passed by both, 82 by the model only, 21 by the reference only, 8 by neither: another
    # implementation of the same method reports 0.3050 [0.2118, 0.3911] for this table.
    delta, low, high = newcombe_paired_interval(89, 82, 21, 8)
    assert delta == pytest.approx(0.305, abs=1e-12)
    assert (low, high) == (pytest.approx(0.2118, abs=1e-4), pytest.approx(0.3911, abs=1e-4))


def test_hand_worked_table_of_four_rows_each():
    # a = b = c = d = 5, n = 20: p1 = p2 = 0.5, phi = (25 - 25) / ... = 0, delta = 0.
    # Wilson at p = 0.5, n = 20, z = 1.959964 (z^2 = 3.841459): centre 0.5,
    # half = z sqrt(0.25/20 + z^2/1600) / (1 + z^2/20) = 1.959964 * sqrt(0.0125 + 0.0024009) / 1.1920729
    #      = 1.959964 * 0.1220693 / 1.1920729 = 0.2007020.
    # With phi = 0 the half-width of the difference is sqrt(0.2007020^2 + 0.2007020^2) = 0.2838355, both sides.
    delta, low, high = newcombe_paired_interval(5, 5, 5, 5)
    assert delta == 0.0
    assert (low, high) == (pytest.approx(-0.2838355, abs=1e-6), pytest.approx(0.2838355, abs=1e-6))


def test_swapping_the_models_mirrors_the_interval():
    for counts in [(10, 7, 2, 30), (0, 3, 0, 1), (40, 0, 9, 5)]:
        a, b, c, d = counts
        delta, low, high = newcombe_paired_interval(a, b, c, d)
        m_delta, m_low, m_high = newcombe_paired_interval(a, c, b, d)
        assert (m_delta, m_low, m_high) == (pytest.approx(-delta), pytest.approx(-high), pytest.approx(-low))
        assert -1.0 <= low <= delta <= high <= 1.0


def test_the_same_difference_is_significant_or_not_by_its_discordant_rows():
    """+5 points on 172 rows: 9 gained and none lost is real; 25 gained and 16 lost is not."""
    clean = newcombe_paired_interval(12, 9, 0, 151)
    noisy = newcombe_paired_interval(4, 25, 16, 127)
    assert clean[0] == pytest.approx(noisy[0]) == pytest.approx(9 / 172)
    assert clean[1] > 0 > noisy[1]


def test_coverage_is_close_to_95_percent():
    """Simulated evals of 172 rows whose true pass rates differ by 7 points: the interval holds the true
    difference in about 95% of them (a sign error or a wrong variance term lands far from it)."""
    rng = random.Random(0)
    probs = (0.10, 0.12, 0.05, 0.73)  # both, gained, lost, neither
    true_delta = probs[1] - probs[2]
    hits, trials = 0, 1500
    for _ in range(trials):
        counts = [0, 0, 0, 0]
        for cell in rng.choices(range(4), weights=probs, k=172):
            counts[cell] += 1
        _, low, high = newcombe_paired_interval(*counts)
        hits += low <= true_delta <= high
    assert 0.93 <= hits / trials <= 0.975


def test_bad_counts_and_no_rows():
    with pytest.raises(ValueError, match="non-negative integers"):
        newcombe_paired_interval(1, -1, 0, 0)
    with pytest.raises(ValueError, match="non-negative integers"):
        newcombe_paired_interval(1, 0.5, 0, 0)
    assert newcombe_paired_interval(0, 0, 0, 0) == (0.0, -1.0, 1.0)
    assert paired_counts([True, True, False, False], [True, False, True, False]) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="3 model outcomes but 2"):
        paired_counts([True] * 3, [True] * 2)


def _row(suite, group, kind, i):
    return SimpleNamespace(suite=suite, group=group, kind=kind, id=f"{suite}-{i}")


def test_paired_metrics_counts_each_slice_rows_only():
    rows = ([_row("ood", "out_of_distribution", "constraint", i) for i in range(4)]
            + [_row("cap", "out_of_distribution", "exact", i) for i in range(2)]
            + [_row("held", "in_distribution", "constraint", i) for i in range(2)])
    model = [True, True, True, False, True, False, False, True]
    base = [False, False, True, True, True, True, False, True]
    m = paired_metrics(rows, model, base, "base")
    key = "group/out_of_distribution/constraints/pass_rate/delta_vs_base"
    assert (m[key], m[key + "/gained"], m[key + "/lost"]) == (0.25, 2.0, 1.0)  # 3/4 vs 2/4
    key = "group/out_of_distribution/pass_rate/delta_vs_base"
    assert (m[key], m[key + "/gained"], m[key + "/lost"]) == (0.0, 2.0, 2.0)  # constraints 2 gained 1 lost, exact 1 lost
    assert m["capability/accuracy/delta_vs_base"] == -0.5 and m["capability/accuracy/delta_vs_base/lost"] == 1.0
    assert m["constraints/pass_rate/delta_vs_base"] == pytest.approx(4 / 6 - 3 / 6)
    assert m["suite/held/pass_rate/delta_vs_base"] == 0.0
    assert "group/in_distribution/capability/accuracy/delta_vs_base" not in m  # no exact rows there: no key
    assert paired_heads(m) == sorted(k for k in m if k.endswith("delta_vs_base"))
    with pytest.raises(ValueError, match="8 rows, 7 model"):
        paired_metrics(rows, model[:-1], base, "base")


def test_every_paired_difference_equals_the_difference_of_the_scored_metrics():
    """The interval keys are named after score_suite's metrics and count the same rows."""
    rows = [EvalRow(suite="s1", group="out_of_distribution", kind="constraint", id=f"c{i}", prompt="Answer.",
                    metadata={"constraints": [{"kind": "lowercase"}]}) for i in range(3)]
    rows += [EvalRow(suite="s2", group="in_distribution", kind="exact", id=f"e{i}", prompt="2+2?",
                     metadata={"answer": "4"}) for i in range(2)]
    model_texts = ["all lower", "Not Lower", "fine here", "4", "five"]
    base_texts = ["Upper Case", "Not Lower", "lower", "three", "five"]
    (model, m_scores), (base, b_scores) = (score_suite(rows, t) for t in (model_texts, base_texts))
    paired = paired_metrics(rows, [s.passed for s in m_scores], [s.passed for s in b_scores], "base")
    heads = paired_heads(paired)
    assert len(heads) >= 8
    for head in heads:
        metric = head.rsplit("/", 1)[0]
        assert paired[head] == pytest.approx(model[metric] - base[metric]), metric


def test_significant_gate_reads_the_lower_end_of_the_interval():
    gates = parse_gates([{"metric": "m/pass_rate", "min_delta": 0.0, "against": "base", "significant": True},
                         {"metric": "m/pass_rate", "min_delta": 0.05, "against": "base"}], "g.yaml")
    metrics = {"m/pass_rate": 0.31, "base/m/pass_rate": 0.25, "m/pass_rate/delta_vs_base": 0.06,
               "m/pass_rate/delta_vs_base/ci_low": -0.01, "m/pass_rate/delta_vs_base/ci_high": 0.11}
    noisy, point = (evaluate_gate(metrics, g) for g in gates)
    assert point.passed and not noisy.passed and noisy.significant
    assert noisy.reason == "delta vs base +0.06, 95% interval [-0.01, +0.11]: low < min_delta 0"
    metrics["m/pass_rate/delta_vs_base/ci_low"] = 0.004
    assert evaluate_gate(metrics, gates[0]).passed
    del metrics["m/pass_rate/delta_vs_base/ci_low"]
    missing = evaluate_gate(metrics, gates[0])
    assert not missing.passed and "m/pass_rate/delta_vs_base/ci_low' missing" in missing.reason


@pytest.mark.parametrize("raw, message", [
    ([{"metric": "a", "max_drop": 0.0, "significant": True}], r"gates\[0\]\.significant: only a min_delta gate"),
    ([{"metric": "a", "min_delta": 0.0, "significant": "yes"}], r"gates\[0\]\.significant: must be true or false"),
])
def test_bad_significant(raw, message):
    with pytest.raises(GateConfigError, match=message):
        parse_gates(raw, "g.yaml")


def test_gate_command_shows_the_interval_gate(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from posttrain.eval.cli import gate_command

    app = typer.Typer()
    app.command()(gate_command)
    metrics = {"m": 0.31, "base/m": 0.25, "m/delta_vs_base": 0.06, "m/delta_vs_base/ci_low": 0.01,
               "m/delta_vs_base/ci_high": 0.11}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "gates.yaml").write_text("- {metric: m, min_delta: 0, against: base, significant: true}\n")
    res = CliRunner().invoke(app, [str(tmp_path / "metrics.json"), "--gates", str(tmp_path / "gates.yaml")],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "min_delta 0 vs base (95% low)" in res.output and "1/1 gates passed" in res.output


def test_compare_responses_matches_model_rows_by_suite_and_id():
    def rec(rid, passed, role="model", suite="s", kind="constraint"):
        return {"suite": suite, "id": rid, "kind": kind, "group": "out_of_distribution", "role": role,
                "passed": passed}

    a = [rec("1", False), rec("2", False), rec("3", True), rec("only-a", True), rec("1", True, role="base")]
    b = [rec("3", True), rec("2", True), rec("1", True), rec("only-b", False), rec("1", False, role="baseline"),
         rec("1", True, suite="other")]
    m = compare_responses(a, b)
    key = "group/out_of_distribution/constraints/pass_rate/delta_vs_a"
    assert (m[key], m[key + "/gained"], m[key + "/lost"]) == (pytest.approx(2 / 3), 2.0, 0.0)
    assert m["suite/s/pass_rate/delta_vs_a/gained"] == 2.0 and "suite/other/pass_rate/delta_vs_a" not in m
