"""A finished stage is skipped only while its recorded outputs and inputs still match; every stage's config is
checked before the first stage runs. Small real stages that write files (no models)."""

import json
import time
from pathlib import Path

import pytest

from posttrain.pipeline.registry import STAGES, StageSpec
from posttrain.pipeline.runner import run_pipeline
from posttrain.pipeline.load import parse_pipeline
from posttrain.pipeline.spec import PipelineError


def make_registry(calls: list) -> dict[str, StageSpec]:
    def lines(params: dict, out: Path, resume: bool) -> dict:
        """The source in capitals; ``stamp: true`` appends the time (a stage whose output differs on every run)."""
        name = out.name.split("-")[0]
        calls.append(name)
        text = Path(params["src"]).read_text().upper()
        if params.get("stamp"):
            text += f"run at {time.time_ns()}\n"
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "out.txt").write_text(text)
        return {"chars": len(text)}

    def check(params: dict, pending) -> None:
        if "src" not in params:
            raise PipelineError("config: key 'src' is required")

    return {"lines": StageSpec(lines, lambda p: [p["src"]] if "src" in p else [], check)}


def pipeline(tmp_path: Path, stamp: bool = False) -> dict:
    (tmp_path / "data.txt").write_text("one\ntwo\nthree\n")
    return {"run_dir": str(tmp_path / "run"), "stages": {
        "a": {"command": "lines", "config": {"src": str(tmp_path / "data.txt"), "stamp": stamp}},
        "b": {"command": "lines", "config": {"src": "${a.output}/sub/out.txt"}},
        "c": {"command": "lines", "config": {"src": "${b.output}/sub/out.txt"}},
    }}


def run(tmp_path, calls, stamp=False):
    said: list[str] = []
    manifest = run_pipeline(parse_pipeline(pipeline(tmp_path, stamp)), registry=make_registry(calls), echo=said.append)
    return {n: s["status"] for n, s in manifest["stages"].items()}, said, manifest


@pytest.mark.parametrize("damage", ["mid_file", "line_boundary", "same_size", "missing"])
def test_a_damaged_output_is_recomputed_and_named(tmp_path, damage):
    calls: list = []
    _, _, first = run(tmp_path, calls)
    out = Path(first["stages"]["a"]["folder"]) / "sub" / "out.txt"
    good = out.read_text()
    if damage == "mid_file":
        out.write_text(good[:5])
    elif damage == "line_boundary":
        out.write_text(good.splitlines(keepends=True)[0])
    elif damage == "same_size":
        out.write_text(good.replace("TWO", "TW0"))
    else:
        out.unlink()
    calls.clear()
    statuses, said, _ = run(tmp_path, calls)
    # a is rebuilt; it is deterministic, so b and c find the inputs they recorded and stay cached
    assert calls == ["a"] and statuses == {"a": "done", "b": "skipped", "c": "skipped"}
    assert out.read_text() == good
    why = {"mid_file": "(5 bytes, 14 recorded)", "line_boundary": "(4 bytes, 14 recorded)",
           "same_size": "(hash sha256:", "missing": "is missing since the stage finished"}[damage]
    line = next(s for s in said if s.startswith("a: "))
    assert line.startswith(f"a: {out} ") and why in line and line.endswith(": recomputing"), line


def test_downstream_stages_whose_inputs_changed_are_recomputed(tmp_path):
    calls: list = []
    run(tmp_path, calls, stamp=True)
    b_record = json.loads(next((tmp_path / "run").glob("b-*/stage.json")).read_text())
    a_out = next((tmp_path / "run").glob("a-*/sub/out.txt"))
    before = a_out.read_text()
    a_out.write_text(before[:-3])
    calls.clear()
    statuses, said, manifest = run(tmp_path, calls, stamp=True)
    assert calls == ["a", "b", "c"] and statuses == dict.fromkeys("abc", "done")
    assert a_out.read_text() not in (before, before[:-3])  # a recomputed to new bytes, so b's input changed
    assert f"b: input {a_out} changed since the stage ran" in "\n".join(said)
    assert manifest["stages"]["b"]["key"] == b_record["key"]  # same key and folder, new content
    assert run(tmp_path, calls, stamp=True)[0] == dict.fromkeys("abc", "skipped")


def test_records_without_output_hashes_and_unrecorded_completions_are_recomputed(tmp_path):
    calls: list = []
    _, _, first = run(tmp_path, calls)
    a = Path(first["stages"]["a"]["folder"])
    record = json.loads((a / "stage.json").read_text())
    del record["outputs"]  # what an older posttrain wrote
    (a / "stage.json").write_text(json.dumps(record))
    b = Path(first["stages"]["b"]["folder"])
    (b / "stage.json").unlink()  # killed between the stage finishing and its record being written
    (b / "manifest.json").write_text(json.dumps({"status": "completed"}))
    calls.clear()
    statuses, said, _ = run(tmp_path, calls)
    assert calls == ["a", "b"] and statuses == {"a": "done", "b": "done", "c": "skipped"}
    assert any("records no output hashes" in s and s.endswith("recomputing") for s in said)
    assert any("finished without a stage record" in s for s in said)
    assert not (b / "manifest.json").exists()  # recomputed from an empty folder, not resumed


def test_files_added_later_and_manifest_edits_do_not_unmark_a_stage(tmp_path):
    calls: list = []
    _, _, first = run(tmp_path, calls)
    a = Path(first["stages"]["a"]["folder"])
    (a / "manifest.json").write_text(json.dumps({"gates": {"passed": True}}))  # what a gate adds to an eval
    (a / "checkpoints").mkdir()
    (a / "checkpoints" / "x.pt").write_text("resume state")
    calls.clear()
    assert run(tmp_path, calls)[0] == dict.fromkeys("abc", "skipped") and calls == []


def test_a_config_error_in_the_last_stage_fails_before_the_first_runs(tmp_path):
    calls: list = []
    tree = pipeline(tmp_path)
    tree["stages"]["c"]["config"] = {"scr": "${b.output}/sub/out.txt"}
    with pytest.raises(PipelineError, match=r"^stages\.c\.config: key 'src' is required$"):
        run_pipeline(parse_pipeline(tree), registry=make_registry(calls))
    assert calls == [] and not (tmp_path / "run").exists()


def test_real_training_stage_typo_fails_before_anything_runs(tmp_path):
    """A typo in the last stage of sft -> generate -> judge -> dpo: no model loads, no folder is made. Upstream
    outputs (``${sft.output}/model``, ``${judge.output}/pairs.jsonl``) do not exist yet and are not an error."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"command": "sft", "config": {"data": {"train": str(prompts)}}},
        "generate": {"command": "generate", "config": {"prompts": str(prompts), "adapter": "${sft.output}/model"}},
        "judge": {"command": "judge", "config": {"candidates": "${generate.output}/candidates.jsonl"}},
        "dpo": {"command": "dpo", "config": {"model": {"adapter": "${sft.output}/model"},
                                             "data": {"train": "${judge.output}/pairs.jsonl"},
                                             "optim": {"lrr": 1e-5}}}}}
    with pytest.raises(PipelineError, match=r"^stages\.dpo\.config: key 'optim\.lrr': unknown key"):
        run_pipeline(parse_pipeline(tree, STAGES))
    assert not (tmp_path / "run").exists()


TYPOS = {  # command -> (a valid config with one misspelt key, the key the error must name)
    "sft": ({"data": {"train": "x.jsonl", "max_lenght": 3}}, "data.max_lenght"),
    "dpo": ({"data": {"train": "x.jsonl"}, "loss": {"bta": 0.1}}, "loss.bta"),
    "kto": ({"data": {"train": "x.jsonl"}, "trian": {}}, "trian"),
    "data": ({"input": "x.jsonl", "exactt": True}, "exactt"),
    "generate": ({"prompts": "${up.output}/p.jsonl", "temprature": 1.0}, "temprature"),
    "judge": ({"candidates": "${up.output}/c.jsonl", "judges": [{"type": "verifier", "compnents": []}]},
              "compnents"),
    "feedback": ({"events": "${up.output}/e.jsonl", "ranking_mod": "all"}, "ranking_mod"),
    "merge": ({"model": "${up.output}/model", "dtyp": "float32"}, "dtyp"),
    "mix": ({"inputs": ["${up.output}/train.jsonl"], "knd": "sft"}, "knd"),
    "eval": ({"suites": ["${up.output}/suite.jsonl"], "max_new_token": 3}, "max_new_token"),
    "gate": ({"metrics": "${up.output}/metrics.json", "gates": [{"metric": "x", "mni": 1}]}, "mni"),
    "reward_model": ({"data": {"train": "x.jsonl"}, "optim": {"lrr": 1}}, "optim.lrr"),
    "ppo": ({"data": {"train": "x.jsonl"}, "ppo": {"clip_rnage": 0.2}}, "ppo.clip_rnage"),
    "grpo": ({"data": {"train": "x.jsonl"}, "grpo": {"num_generation": 2}}, "grpo.num_generation"),
    "rejection_sft": ({"data": {"train": "x.jsonl"}, "rejection": {"nn": 2}}, "rejection.nn"),
}


@pytest.mark.parametrize("command", sorted(TYPOS))
def test_every_stage_checks_its_config_up_front(tmp_path, command):
    if command not in STAGES:
        pytest.skip(f"{command} is not registered here")
    (tmp_path / "up.jsonl").write_text('{"prompt": "hi"}\n')
    config, key = TYPOS[command]
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "up": {"command": "mix", "config": {"inputs": [str(tmp_path / "up.jsonl")], "kind": "prompt"}},
        "last": {"command": command, "config": config, "after": ["up"]}}}
    with pytest.raises(PipelineError, match=rf"^stages\.last\.config: .*{key}"):
        run_pipeline(parse_pipeline(tree, STAGES))
    assert not (tmp_path / "run").exists()  # the mix stage before it never ran
