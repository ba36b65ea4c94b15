from pathlib import Path

import pytest

from posttrain.pipeline.load import apply_overrides, load_pipeline, parse_pipeline
from posttrain.pipeline.spec import PipelineError, dependencies, downstream, references, substitute, topological_order


def tree(**stages):
    return {"run_dir": "runs/x", "stages": stages}


def test_references_found_in_nested_strings_only():
    config = {"data": {"train": "${judge.output}/pairs.jsonl", "eval": None},
              "list": ["a", "${gen-1.output}", {"x": "${sft.output}/model and ${judge.output}"}],
              "n": 3, "plain": "$judge.output {sft.output}"}
    assert references(config) == ["judge", "gen-1", "sft", "judge"]


def test_substitute_replaces_every_reference():
    config = {"a": "${x.output}/f", "b": ["${y.output}", 1], "c": {"d": "${x.output}${y.output}"}}
    assert substitute(config, {"x": "/r/x-1", "y": "Y"}) == {"a": "/r/x-1/f", "b": ["Y", 1], "c": {"d": "/r/x-1Y"}}


def test_unknown_stage_is_one_line_naming_the_key():
    spec = tree(dpo={"command": "dpo", "config": {"data": {"train": "${judge.output}/pairs.jsonl"}}})
    with pytest.raises(PipelineError) as e:
        parse_pipeline(spec)
    assert "stages.dpo.config" in str(e.value) and "'judge'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PipelineError, match=r"stages.dpo.after: unknown stage 'sft'"):
        parse_pipeline(tree(dpo={"command": "dpo", "after": ["sft"]}))


def test_cycle_is_an_error_naming_it():
    spec = tree(a={"command": "sft", "config": {"x": "${c.output}"}}, b={"command": "sft", "after": ["a"]},
                c={"command": "sft", "config": {"y": "${b.output}"}}, d={"command": "sft"})
    with pytest.raises(PipelineError) as e:
        parse_pipeline(spec)
    message = str(e.value)
    assert "cycle" in message and "\n" not in message
    assert message.endswith("a -> c -> b -> a")
    with pytest.raises(PipelineError, match="itself"):
        parse_pipeline(tree(a={"command": "sft", "config": {"x": "${a.output}"}}))


def test_topological_order_is_stable_by_file_order():
    # dpo is listed first but needs judge; independent stages keep their file order.
    deps = {"dpo": ["judge", "sft"], "sft": [], "other": [], "generate": ["sft"], "judge": ["generate"]}
    assert topological_order(deps) == ["sft", "other", "generate", "judge", "dpo"]
    assert topological_order({"b": [], "a": []}) == ["b", "a"]


def test_dependencies_merge_after_and_references_without_duplicates():
    spec = parse_pipeline(tree(sft={"command": "sft"}, gen={"command": "generate", "config": {"m": "${sft.output}"}},
                               dpo={"command": "dpo", "after": ["gen"],
                                    "config": {"a": "${sft.output}", "b": "${gen.output}", "c": "${sft.output}"}}))
    assert dependencies(spec.stages) == {"sft": [], "gen": ["sft"], "dpo": ["gen", "sft"]}
    assert downstream(dependencies(spec.stages), ["gen"]) == {"gen", "dpo"}
    assert downstream(dependencies(spec.stages), ["sft"]) == {"sft", "gen", "dpo"}


def test_schema_errors_name_the_key():
    with pytest.raises(PipelineError, match=r"key 'stages.sft.comand': unknown key"):
        parse_pipeline(tree(sft={"comand": "sft"}))
    with pytest.raises(PipelineError, match=r"key 'run_dir': required key is missing"):
        parse_pipeline({"stages": {"sft": {"command": "sft"}}})
    with pytest.raises(PipelineError, match=r"key 'stages.sft.command': unknown command 'sfx'"):
        parse_pipeline(tree(sft={"command": "sfx"}), commands=["sft", "dpo"])


def test_overrides_config_file_and_run_dir(tmp_path: Path):
    (tmp_path / "sft.yaml").write_text("command: sft\noptim: {lr: 0.001, batch_size: 4}\ndata: {train: a.jsonl}\n")
    (tmp_path / "pipe.yaml").write_text(
        "run_dir: runs/p\nstages:\n  sft:\n    command: sft\n    config_file: sft.yaml\n"
        "    config: {optim: {batch_size: 8}}\n")
    spec = load_pipeline(tmp_path / "pipe.yaml", ["sft.optim.lr=0.0001", "run_dir=/tmp/elsewhere", "sft.train.seed=3"])
    assert spec.run_dir == "/tmp/elsewhere"
    assert spec.stages["sft"].config == {"optim": {"lr": 1e-4, "batch_size": 8}, "data": {"train": "a.jsonl"},
                                         "train": {"seed": 3}}
    with pytest.raises(PipelineError, match="unknown stage 'dpo'"):
        apply_overrides({"stages": {"sft": {}}}, ["dpo.loss.beta=0.2"])
    with pytest.raises(PipelineError, match="no such pipeline file"):
        load_pipeline(tmp_path / "missing.yaml")
