"""Eval answers reused across evals (eval/answer_reuse.py): only for the same weights, prompts, settings and machine."""

import json

import pytest
import torch

from posttrain.eval.answer_reuse import answers_key
from posttrain.eval.run import run_eval

ROWS = [
    {"id": "c1", "prompt": "Say hello. Answer in all lowercase.", "kind": "constraint",
     "constraints": [{"kind": "lowercase", "args": {}}]},
    {"id": "c2", "prompt": "Name three fruits. Do not use any commas.", "kind": "constraint",
     "constraints": [{"kind": "no_commas", "args": {}}]},
    {"id": "e1", "prompt": "What is 2 plus 2? Answer with just the number.", "kind": "exact", "answer": "4"},
]


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def _answers(out):
    return [(r["role"], r["id"], r["text"], r["completion_tokens"], r["finish_reason"])
            for r in map(json.loads, (out / "responses.jsonl").read_text().splitlines())]


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_a_second_eval_reuses_every_answer_and_scores_the_same(tmp_path, suite, monkeypatch):
    from posttrain.generation.hf import HFGenerator

    store = tmp_path / "answers.sqlite"
    first = run_eval("tiny-random", [suite], baseline="tiny-random", max_new_tokens=6, batch_size=2,
                     output_dir=tmp_path / "a", answer_cache=store)
    # the baseline is the same model on the same prompts: its answers are the model's, reused at once
    assert _manifest(tmp_path / "a")["answers"] == {"model": "generated", "baseline": "reused"}
    assert _manifest(tmp_path / "a")["settings"]["answer_cache"] == str(store)

    def refuse(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(HFGenerator, "generate", refuse)
    second = run_eval("tiny-random", [suite], baseline="tiny-random", max_new_tokens=6, batch_size=2,
                      output_dir=tmp_path / "b", answer_cache=store)
    assert _manifest(tmp_path / "b")["answers"] == {"model": "reused", "baseline": "reused"}
    assert _answers(tmp_path / "b") == _answers(tmp_path / "a")
    assert second == first
    # a changed setting is a miss: the refusing generator is reached
    with pytest.raises(AssertionError, match="generated again"):
        run_eval("tiny-random", [suite], max_new_tokens=5, batch_size=2, output_dir=tmp_path / "c",
                 answer_cache=store)
    with pytest.raises(AssertionError, match="generated again"):
        run_eval("tiny-random", [suite], max_new_tokens=6, batch_size=3, output_dir=tmp_path / "d",
                 answer_cache=store)


def test_without_a_store_every_answer_is_generated(tmp_path, suite):
    run_eval("tiny-random", [suite], baseline="tiny-random", max_new_tokens=4, batch_size=2,
             output_dir=tmp_path / "a")
    manifest = _manifest(tmp_path / "a")
    assert manifest["answers"] == {"model": "generated", "baseline": "generated"}
    assert manifest["settings"]["answer_cache"] is None


def test_the_key_covers_weights_prompts_budgets_batching_and_threads(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts, budgets = [[1, 2, 3], [4, 5]], [8, 8]

    def key(**kw):
        args = dict(model=model, prompt_ids=prompts, budgets=budgets, batch_size=2, seed=0) | kw
        return answers_key(args.pop("model"), args.pop("prompt_ids"), args.pop("budgets"), **args)

    base = key()
    assert key() == base
    assert key(prompt_ids=[[4, 5], [1, 2, 3]]) != base  # order: rows are batched in it
    assert key(prompt_ids=[[1, 2, 3], [4, 6]]) != base
    assert key(budgets=[8, 9]) != base
    assert key(batch_size=1) != base
    assert key(seed=1) != base
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        assert key() != base  # another thread count may round differently
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[0] += 1e-3
    assert key() != base
    with torch.no_grad():
        p.view(-1)[0] -= 1e-3
    assert key(model=model.to(torch.float64)) != base


def test_a_pipelines_eval_stages_share_the_run_folders_store(tmp_path, suite):
    import yaml

    from posttrain.pipeline.load import load_pipeline
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline

    run_dir = tmp_path / "run"
    common = {"model": "tiny-random", "suites": [suite], "max_new_tokens": 4, "batch_size": 2}
    tree = {"run_dir": str(run_dir), "stages": {
        "eval_a": {"command": "eval", "config": dict(common)},
        # another stage (its trained kinds differ) asking the same model the same prompts
        "eval_b": {"command": "eval", "config": dict(common, trained_kinds=["lowercase"])}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    manifest = run_pipeline(load_pipeline(path, [], commands=STAGES))
    folders = {name: manifest["stages"][name]["folder"] for name in ("eval_a", "eval_b")}
    assert (run_dir / "eval_answers.sqlite").is_file()
    assert _manifest(tmp_path / folders["eval_a"])["answers"] == {"model": "generated"}
    assert _manifest(tmp_path / folders["eval_b"])["answers"] == {"model": "reused"}
    assert [a[2:] for a in _answers(tmp_path / folders["eval_b"])] == \
        [a[2:] for a in _answers(tmp_path / folders["eval_a"])]


def test_a_store_that_cannot_be_opened_is_a_one_line_error_before_any_model_loads(tmp_path, suite):
    garbage = tmp_path / "notes.sqlite"
    garbage.write_text("not a database\n")
    for bad in (tmp_path, garbage):
        with pytest.raises(ValueError, match=f"answer cache {bad}: cannot be used as an SQLite answer store"):
            run_eval("no-such-model-anywhere", [suite], output_dir=tmp_path / "out", answer_cache=bad)
    assert garbage.read_text() == "not a database\n" and not (tmp_path / "out").exists()
