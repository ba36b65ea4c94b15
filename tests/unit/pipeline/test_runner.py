"""Keys, skipping, resume and --force with a registry of small real stages (they write files, no models)."""

import json
from pathlib import Path

import pytest

from posttrain.pipeline.registry import StageSpec, select_prompts, training_config
from posttrain.pipeline.runner import plan_pipeline, run_pipeline, stage_key
from posttrain.pipeline.load import parse_pipeline
from posttrain.pipeline.spec import PipelineError


def make_registry(calls: list, fail_in: set | None = None) -> dict[str, StageSpec]:
    def copy_upper(params: dict, out: Path, resume: bool) -> dict:
        calls.append((out.name.split("-")[0], resume))
        if fail_in and out.name.split("-")[0] in fail_in:
            (out / "partial.txt").write_text("half")
            raise RuntimeError("killed")
        text = Path(params["src"]).read_text() + params.get("suffix", "")
        (out / "out.txt").write_text(text.upper())
        return {"chars": len(text)}

    return {"copy": StageSpec(copy_upper, lambda p: [p["src"]], main_metric="chars")}


def pipeline(tmp_path: Path, **suffixes) -> dict:
    (tmp_path / "data.txt").write_text("abc")
    return {"run_dir": str(tmp_path / "run"), "stages": {
        "a": {"command": "copy", "config": {"src": str(tmp_path / "data.txt"), "suffix": suffixes.get("a", "")}},
        "b": {"command": "copy", "config": {"src": "${a.output}/out.txt", "suffix": suffixes.get("b", "")}},
        "c": {"command": "copy", "config": {"src": "${b.output}/out.txt", "suffix": suffixes.get("c", "")}},
        "side": {"command": "copy", "config": {"src": str(tmp_path / "data.txt")}},
    }}


def keys(tmp_path, registry, **suffixes) -> dict[str, str]:
    return {p.name: p.key for p in plan_pipeline(parse_pipeline(pipeline(tmp_path, **suffixes)), registry)}


def test_key_changes_only_for_changed_stage_and_dependents(tmp_path):
    registry = make_registry([])
    base = keys(tmp_path, registry)
    assert len(set(base.values())) == 4
    assert keys(tmp_path, registry) == base  # deterministic
    changed = keys(tmp_path, registry, b="!")
    assert changed["a"] == base["a"] and changed["side"] == base["side"]
    assert changed["b"] != base["b"] and changed["c"] != base["c"]


def test_input_content_changes_the_key(tmp_path):
    registry = make_registry([])
    spec = parse_pipeline(pipeline(tmp_path))
    before = {p.name: p.key for p in plan_pipeline(spec, registry)}
    (tmp_path / "data.txt").write_text("xyz")
    after = {p.name: p.key for p in plan_pipeline(spec, registry)}
    assert all(after[n] != before[n] for n in before)


def test_stage_key_uses_upstream_keys_not_folders():
    config = {"src": "${a.output}/out.txt"}
    k1 = stage_key("copy", config, {"a": "k" * 64}, {}, "0.1.0")
    assert k1 == stage_key("copy", config, {"a": "k" * 64}, {}, "0.1.0")
    assert k1 != stage_key("copy", config, {"a": "j" * 64}, {}, "0.1.0")
    assert k1 != stage_key("copy", config, {"a": "k" * 64}, {}, "0.2.0")
    assert k1 != stage_key("copy", config, {"a": "k" * 64}, {"x": "sha256:1"}, "0.1.0")
    assert k1 != stage_key("sft", config, {"a": "k" * 64}, {}, "0.1.0")


def test_run_skip_change_force_and_resume(tmp_path):
    calls: list = []
    registry = make_registry(calls)
    first = run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry)
    assert {n: s["status"] for n, s in first["stages"].items()} == dict.fromkeys("abc", "done") | {"side": "done"}
    folder_c = Path(first["stages"]["c"]["folder"])
    assert (folder_c / "out.txt").read_text() == "ABC"
    assert first["stages"]["c"]["main_metric"] == ["chars", 3]
    assert (tmp_path / "run" / "latest" / "c").resolve() == folder_c.resolve()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "completed"

    calls.clear()
    again = run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry)
    assert calls == [] and {s["status"] for s in again["stages"].values()} == {"skipped"}
    assert again["stages"]["c"]["metrics"] == {"chars": 3}

    changed = run_pipeline(parse_pipeline(pipeline(tmp_path, b="x")), registry=registry)
    assert [c for c, _ in calls] == ["b", "c"]
    assert {n: s["status"] for n, s in changed["stages"].items()} == {
        "a": "skipped", "b": "done", "c": "done", "side": "skipped"}
    assert (Path(changed["stages"]["c"]["folder"]) / "out.txt").read_text() == "ABCX"

    calls.clear()
    forced = run_pipeline(parse_pipeline(pipeline(tmp_path)), force=["b"], registry=registry)
    assert [c for c, _ in calls] == ["b", "c"] and all(not resume for _, resume in calls)
    assert forced["stages"]["b"]["key"] == first["stages"]["b"]["key"]
    with pytest.raises(PipelineError, match="--force nope: unknown stage"):
        run_pipeline(parse_pipeline(pipeline(tmp_path)), force=["nope"], registry=registry)


def test_a_stage_made_by_other_code_is_skipped_with_a_line_that_says_so(tmp_path, monkeypatch):
    import posttrain.pipeline.runner as runner_module
    from posttrain.data.runfolder import code_fingerprint

    calls: list = []
    registry = make_registry(calls)
    first = run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry)
    here = code_fingerprint()
    assert len(here) == 16 and first["code"] == here == code_fingerprint()
    record_b = Path(first["stages"]["b"]["folder"]) / "stage.json"
    assert json.loads(record_b.read_text())["code"] == here
    lines: list = []
    run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry, echo=lines.append)
    assert [line for line in lines if "other posttrain code" in line] == []
    # an upgrade that kept the version string: the same keys, so skipped, but each such stage says so
    monkeypatch.setattr(runner_module, "code_fingerprint", lambda: "0123456789abcdef")
    lines.clear()
    calls.clear()
    again = run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry, echo=lines.append)
    assert calls == [] and {s["status"] for s in again["stages"].values()} == {"skipped"}
    said = [line for line in lines if "other posttrain code" in line]
    assert len(said) == 4 and f"b: skipped (complete in {first['stages']['b']['folder']}), but made by other " \
        f"posttrain code ({here}; this install: 0123456789abcdef): --force b recomputes it" in said[1]
    assert again["stages"]["b"]["made_by_code"] == here and again["code"] == "0123456789abcdef"
    # a folder finished before fingerprints were recorded
    record = json.loads(record_b.read_text())
    del record["code"]
    record_b.write_text(json.dumps(record))
    lines.clear()
    run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=registry, echo=lines.append)
    assert any(line.startswith("b: skipped") and "(not recorded; this install" in line for line in lines)


def test_failed_stage_is_recorded_and_resumed(tmp_path):
    calls: list = []
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=make_registry(calls, fail_in={"b"}))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["b"]["status"] == "failed"
    assert "c" not in manifest["stages"] and "RuntimeError: killed" in manifest["stages"]["b"]["error"]
    calls.clear()
    done = run_pipeline(parse_pipeline(pipeline(tmp_path)), registry=make_registry(calls))
    assert calls == [("b", True), ("c", False), ("side", False)]
    assert done["stages"]["a"]["status"] == "skipped" and done["stages"]["b"]["resumed"] is True


def test_a_stage_config_tree_becomes_the_command_config_directly(tmp_path):
    """No string round trip: the stage's tree is validated as the command's config, values as given (a float, a
    string with spaces, a list, a null), the command's own defaults under a partial section, the stage folder as
    train.output_dir."""
    from posttrain.config import load_config

    tree = {"optim": {"lr": 1e-4, "max_steps": 2}, "data": {"train": "a b.jsonl", "eval": None},
            "peft": {"method": "lora", "target_modules": ["q_proj", "v_proj"]}, "train": {"progress": False}}
    cfg = training_config("dpo", tree, tmp_path / "out", False)
    assert (cfg.optim.lr, cfg.optim.max_steps, cfg.data.train, cfg.data.eval) == (1e-4, 2, "a b.jsonl", None)
    assert cfg.peft.target_modules == ["q_proj", "v_proj"] and cfg.train.progress is False
    assert (cfg.train.output_dir, cfg.train.resume, cfg.train.overwrite) == (str(tmp_path / "out"), False, False)
    from_cli = load_config("dpo", None, ["optim.lr=1e-4", "optim.max_steps=2", "data.train=a b.jsonl",
                                         "peft.method=lora", "peft.target_modules=[q_proj, v_proj]",
                                         "train.progress=false", f"train.output_dir={tmp_path / 'out'}"])
    assert cfg.model_dump() == from_cli.model_dump()
    with pytest.raises(PipelineError, match=r"^config: key 'optim.lr': "):
        training_config("dpo", {"optim": {"lr": "fast"}, "data": {"train": "x"}}, tmp_path, False)
    with pytest.raises(PipelineError, match=r"^config: key 'trian': unknown key \(expected: "):
        training_config("sft", {"trian": {}, "data": {"train": "x"}}, tmp_path, False)


def test_select_prompts_filters_kinds_and_limits(tmp_path):
    rows = [{"prompt": f"p{i}", "constraints": [{"kind": "lowercase" if i % 2 else "all_caps", "args": {}}]}
            for i in range(10)] + [{"prompt": "none"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["prompt"] for r in select_prompts(str(path), 3, ["lowercase"])] == ["p1", "p3", "p5"]
    assert len(select_prompts(str(path), None, None)) == 11


def test_select_prompts_reads_a_bom_and_names_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "p0"}\n{"prompt": "p1"}\n')
    assert [r["prompt"] for r in select_prompts(str(path), None, None)] == ["p0", "p1"]
    path.write_bytes(b'{"prompt": "p0"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PipelineError, match=r"p.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        select_prompts(str(path), None, None)
    path.write_text('{"prompt": "p0"}\n\n{"prompt": \n')
    with pytest.raises(PipelineError, match=r"p.jsonl:3: not a JSON object"):
        select_prompts(str(path), None, None)


def test_run_dir_that_cannot_be_a_folder_fails_before_any_stage(tmp_path):
    calls: list = []
    tree = pipeline(tmp_path)
    (tmp_path / "afile").write_text("x")
    tree["run_dir"] = str(tmp_path / "afile" / "run")
    with pytest.raises(PipelineError, match=r"run_dir .*afile"):
        run_pipeline(parse_pipeline(tree), registry=make_registry(calls))
    assert calls == []
