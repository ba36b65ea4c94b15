"""Rounds: expansion of a `rounds` block into ordinary stages, its errors and overrides, and the runner's early
stop (`when`, `not run`) with the real best_round stage over small file-writing stand-ins for dpo and eval."""

import json
import os
from pathlib import Path

import pytest

from posttrain.config import ConfigError, load_config
from posttrain.pipeline.registry import STAGES, StageSpec
from posttrain.pipeline.runner import NOT_RUN, condition_reason, run_pipeline
from posttrain.pipeline.load import apply_overrides, parse_pipeline
from posttrain.pipeline.spec import Condition, PipelineError

ROUND_STAGES = ["generate", "judge", "dpo", "eval"]


def rounds_tree(**changes) -> dict:
    rounds = {
        "count": 2, "start": "${sft.output}/model", "reference": "pinned",
        "improve": {"stage": "eval", "metric": "constraints/pass_rate", "min_gain": 0.0},
        "stages": {
            "generate": {"command": "generate", "config": {"prompts": "p.jsonl", "model": "${round.model}",
                                                           "seed": "${round.index}"}},
            "judge": {"command": "judge", "config": {"candidates": "${generate.output}/candidates.jsonl"}},
            "dpo": {"command": "dpo", "config": {"model": {"name": "${round.model}"},
                                                 "data": {"train": "${judge.output}/pairs.jsonl"}}},
            "eval": {"command": "eval", "config": {"model": "${dpo.output}/model", "baseline": "${round.model}",
                                                   "suites": ["constraints"], "note": "round ${round.index}"}},
        }}
    rounds.update(changes)
    return {"run_dir": "runs/r", "stages": {
        "sft": {"command": "sft", "config": {"data": {"train": "d.jsonl"}}},
        "export": {"command": "merge", "config": {"model": "${rounds.output}/model"}},
    }, "rounds": rounds}


def test_rounds_expand_into_ordinary_stages_chained_from_the_previous_round():
    spec = parse_pipeline(rounds_tree())
    expected = [f"r{k}_{s}" for k in (1, 2) for s in ROUND_STAGES]
    assert list(spec.stages) == ["sft", "export", *expected, "rounds"] and spec.rounds is None
    st = spec.stages
    # round 1 starts from `start`; round 2 from round 1's trained model; references stay inside their round
    assert st["r1_generate"].config["model"] == "${sft.output}/model"
    assert st["r2_generate"].config["model"] == "${r1_dpo.output}/model"
    assert st["r2_judge"].config["candidates"] == "${r2_generate.output}/candidates.jsonl"
    assert st["r2_dpo"].config["model"] == {"name": "${r1_dpo.output}/model"}
    assert st["r2_dpo"].config["data"]["train"] == "${r2_judge.output}/pairs.jsonl"
    assert st["r2_eval"].config["baseline"] == "${r1_dpo.output}/model"
    # pinned: every round's DPO reference is the start
    assert st["r1_dpo"].config["loss"] == {"reference_model": "${sft.output}/model"}
    assert st["r2_dpo"].config["loss"] == {"reference_model": "${sft.output}/model"}
    # ${round.index}: the number as a whole value, text inside a string
    assert st["r2_generate"].config["seed"] == 2 and st["r2_eval"].config["note"] == "round 2"
    # round 2 runs only if round 1 improved; round 1 always runs
    assert all(st[f"r1_{s}"].when is None for s in ROUND_STAGES)
    assert all(st[f"r2_{s}"].when == Condition(stage="r1_eval", metric="constraints/pass_rate",
                                               baseline="baseline/constraints/pass_rate", min_gain=0.0)
               for s in ROUND_STAGES)
    select = st["rounds"]
    assert select.command == "best_round" and select.config == {
        "start": "${sft.output}/model", "metric": "constraints/pass_rate", "min_gain": 0.0,
        "rounds": [{"model": "${r1_dpo.output}/model", "metrics": "${r1_eval.output}/metrics.json"},
                   {"model": "${r2_dpo.output}/model", "metrics": "${r2_eval.output}/metrics.json"}]}


def test_previous_reference_leaves_the_reference_to_the_trainer():
    spec = parse_pipeline(rounds_tree(reference="previous"))
    assert "loss" not in spec.stages["r2_dpo"].config  # reference = the model the round starts from


def test_rounds_overrides_reach_the_template_and_the_block(tmp_path):
    tree = apply_overrides(rounds_tree(), ["rounds.count=3", "rounds.improve.min_gain=0.25",
                                           "rounds.stages.dpo.optim.lr=0.00001"])
    spec = parse_pipeline(tree)
    assert [n for n in spec.stages if n.endswith("_dpo")] == ["r1_dpo", "r2_dpo", "r3_dpo"]
    assert all(spec.stages[f"r{k}_dpo"].config["optim"]["lr"] == 0.00001 for k in (1, 2, 3))
    assert spec.stages["r3_eval"].when.min_gain == 0.25 and spec.stages["r3_eval"].when.stage == "r2_eval"
    with pytest.raises(PipelineError, match=r"unknown round stage 'dpx' \(round stages: generate, judge, dpo"):
        apply_overrides(rounds_tree(), ["rounds.stages.dpx.optim.lr=1"])
    with pytest.raises(PipelineError, match="has no rounds"):
        apply_overrides({"run_dir": "r", "stages": {}}, ["rounds.count=2"])


@pytest.mark.parametrize("changes, key, words", [
    ({"count": 0}, "rounds.count", "greater than or equal to 1"),
    ({"count": "two"}, "rounds.count", "integer"),
    ({"improve": {"stage": "evl", "metric": "m"}}, "rounds.improve.stage", "unknown stage 'evl'"),
    ({"improve": {"stage": "judge", "metric": "m"}}, "rounds.improve.stage", "must be an eval stage"),
    ({"improve": {"stage": "eval"}}, "rounds.improve.metric", "required key is missing"),
    ({"start": None}, "rounds.start", "string"),
    ({"reference": "sft"}, "rounds.reference", "pinned"),
    ({"train": "dpx"}, "rounds.train", "unknown stage 'dpx'"),
    ({"rounds": 2}, "rounds.rounds", "unknown key"),
    ({"stages": {}}, "rounds.stages", "at least one stage"),
])
def test_rounds_errors_are_one_line_naming_the_key(changes, key, words):
    with pytest.raises(PipelineError) as e:
        parse_pipeline(rounds_tree(**changes))
    message = str(e.value)
    assert f"key '{key}'" in message and words in message and "\n" not in message


def test_rounds_errors_about_the_template():
    tree = rounds_tree()
    del tree["rounds"]["start"]
    with pytest.raises(PipelineError, match="key 'rounds.start': required key is missing"):
        parse_pipeline(tree)
    tree = rounds_tree()
    tree["rounds"]["stages"]["dpo"]["command"] = "kto"  # kto's trainer takes no loss.reference_model
    with pytest.raises(PipelineError, match=r"key 'rounds.reference': pinned needs .*'dpo' is kto"):
        parse_pipeline(tree)
    tree["rounds"]["reference"] = "previous"
    assert "r2_dpo" in parse_pipeline(tree).stages
    tree = rounds_tree()
    tree["rounds"]["stages"]["sft2"] = {"command": "sft"}  # two training stages: which one feeds the next round?
    with pytest.raises(PipelineError, match=r"key 'rounds.train': name the stage .*several"):
        parse_pipeline(tree)
    tree["rounds"]["train"] = "dpo"
    assert parse_pipeline(tree).stages["r2_generate"].config["model"] == "${r1_dpo.output}/model"
    tree = rounds_tree()
    tree["rounds"]["stages"]["dpo"]["config"]["loss"] = {"reference_model": "x"}
    with pytest.raises(PipelineError, match=r"rounds.stages.dpo.config.loss.reference_model'.*set by reference"):
        parse_pipeline(tree)
    tree = rounds_tree()
    tree["rounds"]["stages"]["generate"]["config"]["seed"] = "${round.seed}"
    with pytest.raises(PipelineError, match=r"rounds.stages.generate.config': unknown '\$\{round.seed\}'"):
        parse_pipeline(tree)
    tree = rounds_tree()
    tree["stages"]["r2_judge"] = {"command": "judge"}
    with pytest.raises(PipelineError, match="round stage r2_judge clashes with stages.r2_judge"):
        parse_pipeline(tree)
    tree = rounds_tree()
    tree["stages"]["rounds"] = {"command": "sft"}
    with pytest.raises(PipelineError, match="key 'stages.rounds'"):
        parse_pipeline(tree)
    tree = rounds_tree()
    tree["rounds"]["stages"]["eval"]["config"]["baseline"] = "${sft.output}/model"  # not the round's start
    with pytest.raises(PipelineError, match=r"baseline: \$\{round.model\}"):
        parse_pipeline(tree)


def test_a_template_config_file_is_merged_before_the_round_references_are_rewritten(tmp_path):
    (tmp_path / "judge.yaml").write_text("candidates: ${generate.output}/candidates.jsonl\n")
    tree = rounds_tree()
    tree["rounds"]["stages"]["judge"] = {"command": "judge", "config_file": "judge.yaml"}
    spec = parse_pipeline(tree, base_dir=tmp_path)
    assert spec.stages["r2_judge"].config["candidates"] == "${r2_generate.output}/candidates.jsonl"


def test_pinned_reference_config_is_checked():
    base = ["data.train=d.jsonl"]
    assert load_config("dpo", None, base + ["loss.reference_model=runs/sft/model"]).loss.reference_model \
        == "runs/sft/model"
    assert load_config("dpo", None, base).loss.reference_model is None  # default: today's reference
    with pytest.raises(ConfigError, match="loss.reference_model is set but loss 'simpo' uses no reference"):
        load_config("dpo", None, base + ["loss.type=simpo", "loss.reference_model=x"])
    with pytest.raises(ConfigError, match="cannot be combined with loss.reference=adapter-disabled"):
        load_config("dpo", None, base + ["loss.reference=adapter-disabled", "loss.reference_model=x"])


def test_training_inputs_hash_the_pinned_reference():
    inputs = STAGES["dpo"].inputs({"model": {"name": "m"}, "data": {"train": "t"}, "loss": {"reference_model": "r"}})
    assert "r" in inputs


def test_condition_reason():
    when = Condition(stage="r1_eval", metric="m", baseline="baseline/m", min_gain=0.0)
    assert condition_reason(when, {"m": 0.5, "baseline/m": 0.4}) is None
    assert condition_reason(when, {"m": 0.4, "baseline/m": 0.4}) == \
        "r1_eval did not improve m by more than 0 (0.4 -> 0.4)"
    assert condition_reason(when, {"m": None, "baseline/m": 0.4}).endswith("(0.4 -> None)")
    tolerant = when.model_copy(update={"min_gain": -0.05})
    assert condition_reason(tolerant, {"m": 0.38, "baseline/m": 0.4}) is None  # a drop within the tolerance
    with pytest.raises(PipelineError, match="stage r1_eval recorded no metric 'baseline/m' \\(it has: m\\)"):
        condition_reason(when, {"m": 0.4})


# ---- the runner: early stop, not run, best round --------------------------------------------------------------

def fake_registry(calls: list) -> dict[str, StageSpec]:
    """dpo writes <out>/model (naming its start and reference); eval writes metrics.json with the scores
    `values[round - 1]` = [starting model's, round model's]."""
    def dpo(params: dict, out: Path, resume: bool) -> dict:
        calls.append(out.name.split("-")[0])
        (out / "model").mkdir()
        (out / "model" / "from.json").write_text(json.dumps({"start": params["model"]["name"],
                                                             "reference": params["loss"]["reference_model"]}))
        return {"loss": 0.5}

    def eval_(params: dict, out: Path, resume: bool) -> dict:
        calls.append(out.name.split("-")[0])
        base, value = params["values"][params["round"] - 1]
        metrics = {"score": value, "baseline/score": base}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return {"dpo": StageSpec(dpo, lambda p: [p["model"]["name"]]),
            "eval": StageSpec(eval_, lambda p: [p["model"]]), "best_round": STAGES["best_round"]}


def fake_tree(tmp_path: Path, values: list, count: int = 3, min_gain: float = 0.0) -> dict:
    start = tmp_path / "start"
    start.mkdir(exist_ok=True)
    return {"run_dir": str(tmp_path / "run"), "stages": {}, "rounds": {
        "count": count, "start": str(start), "improve": {"stage": "eval", "metric": "score", "min_gain": min_gain},
        "stages": {"dpo": {"command": "dpo", "config": {"model": {"name": "${round.model}"}}},
                   "eval": {"command": "eval", "config": {"model": "${dpo.output}/model", "baseline": "${round.model}",
                                                          "round": "${round.index}", "values": values}}}}}


def statuses(manifest: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in manifest["stages"].items()}


def test_a_round_that_does_not_improve_stops_the_rounds_and_the_best_is_picked(tmp_path):
    calls: list = []
    values = [[0.4, 0.5], [0.5, 0.45], [0.45, 0.9]]  # round 1 improves, round 2 drops, round 3 would improve
    said: list = []
    manifest = run_pipeline(parse_pipeline(fake_tree(tmp_path, values)), registry=fake_registry(calls),
                            echo=said.append)
    assert calls == ["r1_dpo", "r1_eval", "r2_dpo", "r2_eval"]
    assert statuses(manifest) == {"r1_dpo": "done", "r1_eval": "done", "r2_dpo": "done", "r2_eval": "done",
                                  "r3_dpo": NOT_RUN, "r3_eval": NOT_RUN, "rounds": "done"}
    why = "r2_eval did not improve score by more than 0 (0.5 -> 0.45)"
    assert manifest["stages"]["r3_dpo"]["reason"] == why and manifest["stages"]["r3_eval"]["reason"] == why
    assert f"r3_dpo: not run: {why}" in said and "folder" not in manifest["stages"]["r3_dpo"]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["r3_eval"]["status"] == NOT_RUN
    # round 2 started from round 1's model, with the start pinned as its reference
    r1, r2 = (Path(manifest["stages"][f"r{k}_dpo"]["folder"]) for k in (1, 2))
    assert json.loads((r2 / "model" / "from.json").read_text()) == {"start": str(r1 / "model"),
                                                                     "reference": str(tmp_path / "start")}
    # best: round 1 (round 2 did not improve on it); `model` links to it
    select = Path(manifest["stages"]["rounds"]["folder"])
    table = json.loads((select / "rounds.json").read_text())
    assert table["best_round"] == 1 and [r["ran"] for r in table["rounds"]] == [True, True, False]
    assert [r.get("improved") for r in table["rounds"]] == [True, False, None]
    assert table["rounds"][1]["gain"] == pytest.approx(-0.05)
    assert (select / "model").is_symlink() and (select / "model").resolve() == (r1 / "model").resolve()
    assert not os.path.isabs(os.readlink(select / "model"))  # relative: the run folder can move
    assert manifest["stages"]["rounds"]["metrics"] == {"best_round": 1, "rounds_run": 2, "best/score": 0.5}

    # a rerun reuses every round that ran and leaves the third out again
    calls.clear()
    again = run_pipeline(parse_pipeline(fake_tree(tmp_path, values)), registry=fake_registry(calls))
    assert calls == [] and statuses(again) == {**statuses(manifest), **{n: "skipped" for n in
                                               ("r1_dpo", "r1_eval", "r2_dpo", "r2_eval", "rounds")}}

    # tolerate the drop: round 3 runs from round 2's model, the first two rounds are reused
    tolerant = run_pipeline(parse_pipeline(fake_tree(tmp_path, values, min_gain=-0.1)), registry=fake_registry(calls))
    assert calls == ["r3_dpo", "r3_eval"] and tolerant["stages"]["rounds"]["metrics"]["best_round"] == 3
    r3 = Path(tolerant["stages"]["r3_dpo"]["folder"])
    assert json.loads((r3 / "model" / "from.json").read_text())["start"] == str(r2 / "model")

    # strict again: round 3's folder from the tolerant run stays on disk but does not count
    calls.clear()
    strict = run_pipeline(parse_pipeline(fake_tree(tmp_path, values)), registry=fake_registry(calls))
    assert calls == [] and strict["stages"]["r3_dpo"]["status"] == NOT_RUN and r3.is_dir()
    assert strict["stages"]["rounds"]["metrics"]["best_round"] == 1
    assert not (tmp_path / "run" / "latest" / "r3_dpo").exists()


def test_no_round_improving_selects_the_start(tmp_path):
    manifest = run_pipeline(parse_pipeline(fake_tree(tmp_path, [[0.5, 0.5]] * 2, count=2)),
                            registry=fake_registry([]))
    assert statuses(manifest)["r2_dpo"] == NOT_RUN
    select = Path(manifest["stages"]["rounds"]["folder"])
    assert (select / "model").resolve() == (tmp_path / "start").resolve()
    assert json.loads((select / "rounds.json").read_text())["best_round"] == 0


def test_a_condition_on_a_metric_the_eval_does_not_record_fails_naming_it(tmp_path):
    tree = fake_tree(tmp_path, [[0.4, 0.5]] * 2, count=2)
    tree["rounds"]["improve"]["metric"] = "scor"
    with pytest.raises(PipelineError) as e:
        run_pipeline(parse_pipeline(tree), registry=fake_registry([]))
    assert str(e.value).startswith("stages.r2_dpo.when: stage r1_eval recorded no metric 'scor'")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["r2_dpo"]["status"] == "failed"
