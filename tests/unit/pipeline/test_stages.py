"""The real feedback and gate stages through the runner (no model), and the CLI's one-line errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.data.runfolder import content_hash
from posttrain.pipeline.cli import app
from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import run_pipeline
from posttrain.pipeline.load import parse_pipeline
from posttrain.pipeline.spec import PipelineError

EVENTS = [
    {"event_id": "t1", "kind": "thumbs", "prompt": "Capital of France?", "response": "Paris.", "rating": "up"},
    {"event_id": "t2", "kind": "thumbs", "prompt": "Capital of France?", "response": "Lyon.", "rating": "down"},
    {"event_id": "s1", "kind": "side_by_side", "prompt": "2+2?", "responses": ["4", "5"], "choice": "a"},
]


def test_feedback_stage_writes_pairs_and_is_cached(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    tree = {"run_dir": str(tmp_path / "run"),
            "stages": {"fb": {"command": "feedback", "config": {"events": str(events), "ranking_mode": "all"}}}}
    first = run_pipeline(parse_pipeline(tree, STAGES))
    stage = first["stages"]["fb"]
    assert stage["status"] == "done" and stage["metrics"]["pairs"] == 2 and stage["main_metric"] == ["pairs", 2]
    pairs = [json.loads(line) for line in (Path(stage["folder"]) / "pairs.jsonl").read_text().splitlines()]
    assert {p["chosen"][0]["content"] for p in pairs} == {"Paris.", "4"}
    assert run_pipeline(parse_pipeline(tree, STAGES))["stages"]["fb"]["status"] == "skipped"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS[:2]))  # new data: a new key, a new run
    third = run_pipeline(parse_pipeline(tree, STAGES))["stages"]["fb"]
    assert third["status"] == "done" and third["key"] != stage["key"] and third["metrics"]["pairs"] == 1
    tree["stages"]["fb"]["config"]["nope"] = 1
    with pytest.raises(PipelineError, match=r"stages.fb.config: unknown key 'nope'"):
        run_pipeline(parse_pipeline(tree, STAGES))


def test_feedback_stage_reads_a_store_keyed_on_its_snapshot(tmp_path):
    """``store:`` instead of ``events``: the stage exports the store's snapshot into its folder and converts it;
    the stage key hashes the snapshot, so no new feedback skips the stage and its dependents, and one new event
    reruns both."""
    from posttrain.feedback.store import FeedbackStore

    store_path = tmp_path / "feedback.db"
    store = FeedbackStore(store_path)
    for event in EVENTS:
        store.add_event(event)
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "fb": {"command": "feedback", "config": {"store": str(store_path)}},
        "fb2": {"command": "feedback", "config": {"events": "${fb.output}/events.jsonl"}}}}
    first = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert first["fb"]["metrics"]["pairs"] == 2 and first["fb2"]["metrics"]["pairs"] == 2
    snapshot = Path(first["fb"]["folder"]) / "events.jsonl"
    assert [json.loads(line)["event_id"] for line in snapshot.read_text().splitlines()] == ["t1", "t2", "s1"]
    assert first["fb"]["inputs"] == {f"feedback-store:{store_path}": {"hash": store.snapshot_hash()}}
    assert store.snapshot_hash() == content_hash(snapshot)  # the digest is the exported file's
    again = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert (again["fb"]["status"], again["fb2"]["status"]) == ("skipped", "skipped")
    store.add_event({"kind": "thumbs", "prompt": "2+2?", "response": "22", "rating": "down"})
    third = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert (third["fb"]["status"], third["fb2"]["status"]) == ("done", "done")
    assert third["fb"]["key"] != first["fb"]["key"] and third["fb"]["metrics"]["unpaired"] == 3
    tree["stages"]["fb"]["config"]["events"] = str(snapshot)
    with pytest.raises(PipelineError, match=r"stages.fb.config: give one of 'events' .* or 'store'"):
        run_pipeline(parse_pipeline(tree, STAGES))


@pytest.mark.skipif("gate" not in STAGES, reason="posttrain.eval is not installed")
def test_gate_stage_passes_and_fails(tmp_path):
    from posttrain.pipeline.eval_stages import GateFailed

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"constraints/pass_rate": 0.4, "baseline/constraints/pass_rate": 0.3}))
    tree = {"run_dir": str(tmp_path / "run"), "stages": {"gate": {"command": "gate", "config": {
        "metrics": str(metrics), "gates": [{"metric": "constraints/pass_rate", "min_delta": 0.05}]}}}}
    assert run_pipeline(parse_pipeline(tree, STAGES))["stages"]["gate"]["metrics"]["gates_passed"] == 1
    tree["stages"]["gate"]["config"]["gates"].append({"metric": "constraints/pass_rate", "min": 0.5})
    with pytest.raises(GateFailed, match=r"1 of 2 gates failed: constraints/pass_rate: 0.4 < min 0.5"):
        run_pipeline(parse_pipeline(tree, STAGES))
    tree["stages"]["gate"]["config"]["gates"] = [{"metric": "x"}]
    with pytest.raises(PipelineError, match=r"stages.gate.config: gates: gates\[0\]: needs exactly one of"):
        run_pipeline(parse_pipeline(tree, STAGES))


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("run_dir: r\nstages:\n  dpo:\n    command: dpo\n"
                        "    config: {data: {train: '${judge.output}/pairs.jsonl'}}\n")
    result = CliRunner().invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: stages.dpo.config: unknown stage 'judge' (stages: dpo)")
    pipeline.write_text("run_dir: r\nstages:\n  sft:\n    command: sft\n    config: {optim: {lr: -1}}\n")
    result = CliRunner().invoke(app, ["run", str(pipeline), f"run_dir={tmp_path / 'run'}",
                                      f"sft.data.train={tmp_path / 'x.jsonl'}"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: stages.sft.config: key 'optim.lr': "
                                                      "Input should be greater than 0")


@pytest.mark.skipif("gate" not in STAGES, reason="posttrain.eval is not installed")
def test_cli_exit_codes_tell_a_failed_gate_from_a_crashed_stage(tmp_path, monkeypatch):
    """`make demo` succeeds on exit 1 (a gate said no: the model was measured) and fails on anything else, so a stage
    that crashes must not exit 1 too."""
    from posttrain.pipeline.registry import StageSpec

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"constraints/pass_rate": 0.4}))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"run_dir: {tmp_path / 'run'}\nstages:\n  gate:\n    command: gate\n    config:\n"
                        f"      metrics: {metrics}\n      gates: [{{metric: constraints/pass_rate, min: 0.5}}]\n")
    result = CliRunner().invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == ("posttrain run: gate failed: 1 of 1 gates failed: "
                                                      "constraints/pass_rate: 0.4 < min 0.5")

    def crash(params, output_dir, resume):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(STAGES, "boom", StageSpec(run=crash, inputs=lambda params: []))
    pipeline.write_text(f"run_dir: {tmp_path / 'run2'}\nstages:\n  b:\n    command: boom\n    config: {{}}\n")
    result = CliRunner().invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 3
    assert "Traceback" in result.output and "in crash" in result.output
    assert result.output.strip().splitlines()[-1] == (
        "posttrain run: crashed: RuntimeError: disk on fire (the run's manifest records the failed stage; "
        "a rerun resumes from it)")
    manifest = json.loads((tmp_path / "run2" / "manifest.json").read_text())
    assert manifest["stages"]["b"]["status"] == "failed"


@pytest.mark.skipif("gate" not in STAGES, reason="posttrain.eval is not installed")
def test_gate_stage_records_verdicts_in_the_eval_manifest(tmp_path):
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"capability/accuracy": 0.5}))
    (tmp_path / "eval" / "manifest.json").write_text(json.dumps({"stage": "eval", "status": "completed"}))
    tree = {"run_dir": str(tmp_path / "run"), "stages": {"gate": {"command": "gate", "config": {
        "metrics": str(metrics), "gates": [{"metric": "capability/accuracy", "min": 0.4}]}}}}
    run_pipeline(parse_pipeline(tree, STAGES))
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["gates"]["passed"] is True
    assert manifest["gates"]["results"][0]["metric"] == "capability/accuracy"
    assert manifest["gates"]["results"][0]["value"] == 0.5


def test_merge_stage_exports_a_plain_folder(tmp_path, one_torch_thread):
    """sft (LoRA, 1 step) -> merge: the export loads with plain transformers and gives the adapter's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.models.policy import load_trained

    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {w}.", "completion": f"{w}."}) + "\n"
                             for w in ("one", "two", "three", "four")))
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "sft": {"command": "sft", "config": {"model": {"name": "tiny-random"}, "data": {"train": str(demos)},
                                             "optim": {"batch_size": 4, "micro_batch_size": 4, "max_steps": 1,
                                                       "lr": 0.01},
                                             "train": {"progress": False}}},
        "export": {"command": "merge", "config": {"model": "${sft.output}/model"}}}}
    result = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    folder = Path(result["export"]["folder"]) / "model"
    assert result["export"]["status"] == "done" and (folder / "model.safetensors").exists()
    assert not (folder / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    adapter, _ = load_trained(str(Path(result["sft"]["folder"]) / "model"))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, adapter(ids).logits, atol=1e-5)
    assert run_pipeline(parse_pipeline(tree, STAGES))["stages"]["export"]["status"] == "skipped"
    tree["stages"]["export"]["config"] = {"model": str(demos)}
    with pytest.raises(PipelineError, match="not an adapter folder"):
        run_pipeline(parse_pipeline(tree, STAGES))


def test_merge_stage_over_several_upstream_models(tmp_path, one_torch_thread):
    """Two SFT runs (full fine-tuning, 1 step, different learning rates) -> merge ``models`` linear 0.5/0.5: every
    weight is the mean of the two folded models' weights; the merged folder is a cached input like any stage
    output."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.models.policy import load_trained

    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {w}.", "completion": f"{w}."}) + "\n"
                             for w in ("one", "two", "three", "four")))

    def sft(lr):
        return {"command": "sft", "config": {"model": {"name": "tiny-random"}, "data": {"train": str(demos)},
                                             "peft": {"method": "none"},
                                             "optim": {"batch_size": 4, "micro_batch_size": 4, "max_steps": 1,
                                                       "lr": lr},
                                             "train": {"progress": False}}}
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "a": sft(0.01), "b": sft(0.05),
        "soup": {"command": "merge", "config": {"models": ["${a.output}/model", "${b.output}/model"],
                                                "method": "linear", "weights": [0.5, 0.5]}}}}
    result = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert result["soup"]["status"] == "done"
    merged = dict(AutoModelForCausalLM.from_pretrained(Path(result["soup"]["folder"]) / "model").named_parameters())
    a = dict(load_trained(str(Path(result["a"]["folder"]) / "model"))[0].named_parameters())
    b = dict(load_trained(str(Path(result["b"]["folder"]) / "model"))[0].named_parameters())
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for name, p in merged.items():
        assert torch.allclose(p, 0.5 * a[name] + 0.5 * b[name], atol=1e-6), name
    assert run_pipeline(parse_pipeline(tree, STAGES))["stages"]["soup"]["status"] == "skipped"
    # ExPO: one model with task arithmetic, extrapolated from another (its reference) at lambda 2: 2 b - a
    tree["stages"]["expo"] = {"command": "merge", "config": {"models": ["${b.output}/model"], "base":
                                                             "${a.output}/model", "method": "task_arithmetic",
                                                             "lambda": 2.0}}
    result = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    assert result["expo"]["status"] == "done"
    expo = dict(AutoModelForCausalLM.from_pretrained(Path(result["expo"]["folder"]) / "model").named_parameters())
    for name, p in expo.items():
        assert torch.allclose(p, 2 * b[name] - a[name], atol=1e-6), name
    # per-module scales: the attention weights extrapolated to 3 (3 b - 2 a), the rest at lambda 2
    tree["stages"]["expo_attn"] = {"command": "merge", "config": {**tree["stages"]["expo"]["config"],
                                                                  "lambda_for": {"self_attn": 3.0}}}
    result = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    folder = Path(result["expo_attn"]["folder"]) / "model"
    attn = dict(AutoModelForCausalLM.from_pretrained(folder).named_parameters())
    assert sum("self_attn" in name for name in attn) > 0 and json.loads((folder / "merge.json").read_text())[
        "lambda_for"] == {"self_attn": 3.0}
    for name, p in attn.items():
        want = 3 * b[name] - 2 * a[name] if "self_attn" in name else 2 * b[name] - a[name]
        assert torch.allclose(p, want, atol=1e-6), name
    del tree["stages"]["expo_attn"]
    # the export of a plain folder that eval measured: the same files, byte for byte (no reload, no re-save)
    tree["stages"]["export"] = {"command": "merge", "config": {"model": "${expo.output}/model"}}
    result = run_pipeline(parse_pipeline(tree, STAGES))["stages"]
    measured, exported = (Path(result[n]["folder"]) / "model" for n in ("expo", "export"))
    assert sorted(f.name for f in exported.iterdir()) == sorted(f.name for f in measured.iterdir())
    assert all((exported / f.name).read_bytes() == f.read_bytes() for f in measured.iterdir())
    assert (exported / "model.safetensors").stat().st_ino == (measured / "model.safetensors").stat().st_ino  # linked
    del tree["stages"]["expo"], tree["stages"]["export"]
    for config, message in [({"models": ["x"], "method": "linear"}, "needs two or more models"),
                            ({"models": ["x"], "method": "task_arithmetic"}, "needs --base"),
                            ({"model": "x", "method": "ties"}, "key 'method' applies to 'models'"),
                            ({"models": ["${a.output}/model", "${b.output}/model"], "method": "ties"},
                             "needs --base"),
                            ({"models": ["x", "y"], "method": "linear", "lambda_for": {"mlp": 2}},
                             "applies to task_arithmetic, ties, dare_ties, not linear"),
                            ({"models": ["x"], "method": "task_arithmetic", "base": "y", "lambda_for": {"mlp": "2"}},
                             "key 'lambda_for': expected a mapping of weight-name patterns to numbers"),
                            ({"models": ["${b.output}/model"], "method": "task_arithmetic",
                              "base": "${a.output}/model", "lambda_for": {"self_atn": 2}},
                             "no weight name contains 'self_atn'")]:
        tree["stages"]["soup"]["config"] = config
        with pytest.raises(PipelineError, match=message):
            run_pipeline(parse_pipeline(tree, STAGES))


def test_mix_stage_concatenates_layouts_with_limits(tmp_path):
    from posttrain.data.layouts import load_examples
    from posttrain.data.schema import DataErrors

    a = tmp_path / "a.jsonl"  # TRL explicit prompt, plain strings
    a.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"}) + "\n"
                         for i in range(5)))
    b = tmp_path / "b.jsonl"  # conversational
    b.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}],
                             "chosen": [{"role": "assistant", "content": "Hello."}],
                             "rejected": [{"role": "assistant", "content": "Go away."}]}) + "\n")
    tree = {"run_dir": str(tmp_path / "run"), "stages": {"mix": {"command": "mix", "config": {
        "inputs": [str(b), {"path": str(a), "limit": 3}]}}}}
    stage = run_pipeline(parse_pipeline(tree, STAGES))["stages"]["mix"]
    assert stage["metrics"] == {"rows": 4, "rows/0": 1, "rows/1": 3}
    out = load_examples(str(Path(stage["folder"]) / "train.jsonl"), "preference")
    assert [p.prompt[-1]["content"] for p in out] == ["Hi?", "Q0?", "Q1?", "Q2?"]
    assert out[0].rejected == [{"role": "assistant", "content": "Go away."}]
    assert out[3].chosen == [{"role": "assistant", "content": "yes 2"}]
    a.write_text(a.read_text() + json.dumps({"prompt": "Q?", "chosen": "same"}) + "\n")  # row 6: no 'rejected'
    with pytest.raises(DataErrors, match=r"a.jsonl:6"):
        run_pipeline(parse_pipeline(tree, STAGES))
    tree["stages"]["mix"]["config"]["inputs"] = [{"path": str(b), "limit": 0}]
    with pytest.raises(PipelineError, match=r"inputs\[0\]: 'limit' must be a positive integer"):
        run_pipeline(parse_pipeline(tree, STAGES))


def test_eval_stage_takes_budgets_trained_on_and_ifeval_options(tmp_path):
    from posttrain.pipeline.eval_stages import check_eval, eval_inputs
    from posttrain.pipeline.registry import nothing_pending

    train = tmp_path / "prompts.jsonl"
    train.write_text('{"prompt": "p", "constraints": [{"kind": "lowercase", "args": {}}]}\n')
    params = {"model": "tiny-random", "base": "tiny-random", "suites": ["constraints", "constraints_ood@128"],
              "trained_on": [str(train)], "trained_kinds": "lowercase", "ifeval_unsupported": "skip"}
    check_eval(params, nothing_pending)
    assert str(train) in eval_inputs(params)
    with pytest.raises(PipelineError, match="ifeval_unsupported"):
        check_eval({**params, "ifeval_unsupported": "ignore"}, nothing_pending)
    with pytest.raises(PipelineError, match="no such suite file 'nope@12'"):
        check_eval({**params, "suites": ["nope@12"]}, nothing_pending)
