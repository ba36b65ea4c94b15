import json

import pytest
import typer
from typer.testing import CliRunner

from posttrain.eval.cli import gate_command
from posttrain.eval.gates import Gate, GateConfigError, evaluate_gates, parse_gates

METRICS = {"constraints/pass_rate": 0.6, "baseline/constraints/pass_rate": 0.5,
           "refusal/benign_rate": 0.1, "baseline/refusal/benign_rate": 0.05}


@pytest.mark.parametrize("gate, passed", [
    (Gate("constraints/pass_rate", "min", 0.6), True),       # equal to the threshold passes
    (Gate("constraints/pass_rate", "min", 0.61), False),
    (Gate("refusal/benign_rate", "max", 0.1), True),
    (Gate("refusal/benign_rate", "max", 0.09), False),
    (Gate("constraints/pass_rate", "min_delta", 0.05), True),   # 0.6 - 0.5 = 0.1
    (Gate("constraints/pass_rate", "min_delta", 0.15), False),
    (Gate("refusal/benign_rate", "min_delta", -0.1), True),     # delta +0.05 >= -0.1
    (Gate("constraints/pass_rate", "max_drop", 0.0), True),     # improved: drop -0.1
    (Gate("refusal/benign_rate", "max_drop", -0.1), False),     # drop -0.05 > -0.1
])
def test_gate_kinds(gate, passed):
    (r,) = evaluate_gates(METRICS, [gate])
    assert r.passed is passed, r.reason
    assert r.value == METRICS[gate.metric]
    assert r.baseline_value == METRICS[f"baseline/{gate.metric}"]


def test_max_drop_fails_on_regression():
    (r,) = evaluate_gates({"capability/accuracy": 0.7, "baseline/capability/accuracy": 0.8},
                          [Gate("capability/accuracy", "max_drop", 0.05)])
    assert not r.passed and "drop 0.1" in r.reason


def test_missing_metric_and_missing_baseline_fail_with_reason():
    missing, no_base = evaluate_gates({"capability/accuracy": 0.9},
                                      [Gate("win/rate", "min", 0.5), Gate("capability/accuracy", "min_delta", 0.0)])
    assert not missing.passed and missing.value is None and "'win/rate' missing" in missing.reason
    assert not no_base.passed and "baseline/capability/accuracy" in no_base.reason


@pytest.mark.parametrize("raw, message", [
    ([{"metric": "a", "min": 1, "max": 2}], r"gates\[0\]: needs exactly one of"),
    ([{"metric": "a"}], "got none"),
    ([{"metric": "a", "minimum": 1}], "unknown key 'minimum'"),
    ([{"min": 1}], r"gates\[0\]\.metric: required"),
    ([{"metric": "a", "min": 1}, {"metric": "b", "max": "high"}], r"gates\[1\]\.max: must be a finite number"),
    ([], "non-empty list"),
    ({"gate": []}, "non-empty list"),
])
def test_config_errors(raw, message):
    with pytest.raises(GateConfigError, match=message):
        parse_gates(raw, "g.yaml")


def test_mapping_form():
    assert parse_gates({"gates": [{"metric": "a", "max_drop": 0}]}) == [Gate("a", "max_drop", 0.0)]


def _app():
    app = typer.Typer()
    app.command()(gate_command)
    return app


def _write(tmp_path, gates_yaml, manifest=True):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    if manifest:
        (tmp_path / "manifest.json").write_text(json.dumps({"stage": "eval", "status": "completed"}))
    (tmp_path / "gates.yaml").write_text(gates_yaml)
    return [str(tmp_path / "metrics.json"), "--gates", str(tmp_path / "gates.yaml")]


def test_gate_command_pass_records_verdicts(tmp_path):
    args = _write(tmp_path, "- {metric: constraints/pass_rate, min: 0.5}\n- {metric: refusal/benign_rate, max: 0.2}\n")
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "2/2 gates passed" in res.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["gates"]["passed"] is True
    assert [r["metric"] for r in manifest["gates"]["results"]] == ["constraints/pass_rate", "refusal/benign_rate"]


def test_gate_command_fail_exits_1(tmp_path):
    args = _write(tmp_path, "gates:\n- {metric: constraints/pass_rate, min: 0.5}\n- {metric: nope/x, min: 0}\n")
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "1/2 gates passed" in res.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["gates"]["passed"] is False
    assert [r["passed"] for r in manifest["gates"]["results"]] == [True, False]


def test_gate_command_without_manifest(tmp_path):
    args = _write(tmp_path, "- {metric: constraints/pass_rate, min: 0.9}\n", manifest=False)
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 1 and not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("gates_yaml", ["- {metric: a, min: 1, max: 2}\n", "- [unclosed\n"])
def test_gate_command_config_error_exits_2(tmp_path, gates_yaml):
    args = _write(tmp_path, gates_yaml)
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "gates.yaml" in res.output
    assert "gates" not in json.loads((tmp_path / "manifest.json").read_text())


def test_gate_command_unreadable_metrics_exits_2(tmp_path):
    args = _write(tmp_path, "- {metric: a, min: 1}\n")
    (tmp_path / "metrics.json").write_text("{not json")
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 2 and "cannot read metrics" in res.output


def test_delta_gates_against_the_base_model():
    metrics = {"group/out_of_distribution/pass_rate": 0.40, "baseline/group/out_of_distribution/pass_rate": 0.35,
               "base/group/out_of_distribution/pass_rate": 0.45}
    gates = parse_gates([{"metric": "group/out_of_distribution/pass_rate", "max_drop": 0.02, "against": "base"},
                         {"metric": "group/out_of_distribution/pass_rate", "max_drop": 0.02},
                         {"metric": "group/out_of_distribution/pass_rate", "min_delta": -0.05, "against": "base"}])
    vs_base, vs_baseline, delta = evaluate_gates(metrics, gates)
    # better than the baseline, but 5 points below the model the recipe started from
    assert not vs_base.passed and vs_base.baseline_value == 0.45 and "drop vs base 0.05" in vs_base.reason
    assert vs_baseline.passed and vs_baseline.baseline_value == 0.35 and vs_baseline.against == "baseline"
    assert delta.passed and "delta vs base -0.05" in delta.reason
    (missing,) = evaluate_gates({"group/out_of_distribution/pass_rate": 0.4}, gates[:1])
    assert not missing.passed and "base/group/out_of_distribution/pass_rate" in missing.reason
    assert "eval --base" in missing.reason


@pytest.mark.parametrize("raw, message", [
    ([{"metric": "a", "min_delta": 0, "against": "sft"}], r"gates\[0\]\.against: must be one of baseline, base"),
    ([{"metric": "a", "min": 0.5, "against": "base"}], "only min_delta and max_drop compare"),
])
def test_bad_against(raw, message):
    with pytest.raises(GateConfigError, match=message):
        parse_gates(raw, "g.yaml")


def test_shipped_gates_name_metrics_an_eval_of_the_builtin_suites_produces():
    """Every gate of examples/gates.yaml finds its metric (and its reference's) in what ``run_eval`` writes for the
    builtin suites with a baseline and a base model: a gate on a misspelt key would fail every release."""
    from pathlib import Path

    from posttrain.eval.gates import load_gates
    from posttrain.eval.run import combine_metrics
    from posttrain.eval.scoring import score_suite
    from posttrain.eval.suites import BUILTIN, load_suite

    gates = load_gates(Path(__file__).resolve().parents[3] / "examples" / "gates.yaml")
    rows = [r for name in BUILTIN for r in load_suite(name)]
    texts = (("model", "A fine answer here."), ("baseline", "Another answer"),
             ("base", "Yet another longer answer from the base model."))
    scored = {role: score_suite(rows, [text] * len(rows), [len(text.split())] * len(rows)) for role, text in texts}
    metrics = combine_metrics(scored["model"][0], {"baseline": scored["baseline"][0], "base": scored["base"][0]},
                              rows, {role: [s.passed for s in scores] for role, (_, scores) in scored.items()},
                              {role: [text] * len(rows) for role, text in texts})
    for gate in gates:
        assert gate.metric in metrics, gate.metric
        if gate.kind in ("min_delta", "max_drop"):
            assert f"{gate.against}/{gate.metric}" in metrics, gate
        if gate.significant:
            assert f"{gate.metric}/delta_vs_{gate.against}/ci_low" in metrics, gate
    assert any(g.against == "base" for g in gates) and any(g.significant for g in gates) and len(gates) >= 12
