"""`posttrain generate` end to end on tiny-random: the candidate file contract, resume after a simulated and a
real kill (no duplicates, no loss, only missing prompts regenerated), dry-run cost, bad rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.generation.candidates import generate_candidates
from posttrain.generation.cli import generate_app

from .helpers import TOPICS, kill_when_written, write_jsonl

runner = CliRunner()
ROW_KEYS = {"prompt_id", "prompt", "candidate_index", "text", "prompt_tokens", "completion_tokens", "finish_reason",
            "sampling", "model", "metadata"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Counting:
    """Wraps a generator and records which prompts it was asked for."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.prompt_keys = inner, inner.tokenizer, []

    def generate(self, prompt_ids, **kw):
        self.prompt_keys.extend(kw["keys"])
        return self.inner.generate(prompt_ids, **kw)


@pytest.fixture(scope="module")
def tiny_generator():
    from posttrain.generation.hf import HFGenerator
    from posttrain.models.policy import load_trained

    model, tok = load_trained("tiny-random")
    return HFGenerator(model, tok, batch_size=64)


def prompt_rows(n: int) -> list[dict]:
    rows = [{"prompt": f"Say something about {TOPICS[i % len(TOPICS)]} number {i}."} for i in range(n)]
    rows[0]["id"] = "first"
    rows[0]["constraints"] = [{"kind": "max_words", "args": {"n": 5}}]
    rows[1 % n]["answer"] = "42"
    return rows


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(prompts, out, gen, **kw):
    settings = dict(n=3, temperatures=[0.7, 1.0], top_p=0.95, max_new_tokens=6, batch_size=3, seed=11,
                    progress=False, generator=gen)
    return generate_candidates(prompts, out, "tiny-random", **{**settings, **kw})


def test_candidate_file_contract_and_resume_after_truncation(tmp_path, tiny_generator):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(6))
    out = tmp_path / "cands.jsonl"
    first = Counting(tiny_generator)
    summary = run(prompts, out, first)
    assert summary["candidates_written"] == 18 and summary["prompts_generated"] == 6
    rows = read_rows(out)
    assert len(rows) == 18 and all(set(r) == ROW_KEYS for r in rows)
    for r in rows:
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["completion_tokens"] <= 6
        assert r["sampling"] == {"temperature": [0.7, 1.0][r["candidate_index"] % 2], "top_p": 0.95,
                                 "max_new_tokens": 6, "seed": 11}
        assert r["model"] == "tiny-random" and r["prompt"][-1]["role"] == "user" and r["prompt_tokens"] > 0
    by_id = {r["prompt_id"]: r for r in rows}
    assert by_id["first"]["metadata"] == {"constraints": [{"kind": "max_words", "args": {"n": 5}}]}
    assert any(r["metadata"] == {"answer": "42"} for r in rows)
    assert len(by_id) == 6

    # A kill: the last prompt's rows half written and a torn last line.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:10]) + lines[10][:25])
    kept = {(r["prompt_id"], r["candidate_index"]) for r in map(json.loads, lines[:9])}
    again = Counting(tiny_generator)
    summary = run(prompts, out, again)
    assert summary["prompts_skipped"] == 3 and summary["prompts_generated"] == 3 and summary["dropped_rows"] == 2
    assert len(again.prompt_keys) == 3 and not {k for k, _ in kept} & set(again.prompt_keys)
    resumed = read_rows(out)
    pairs = [(r["prompt_id"], r["candidate_index"]) for r in resumed]
    assert len(pairs) == len(set(pairs)) == 18 and set(pairs) == {(p, i) for p in by_id for i in range(3)}
    # Per-candidate seeds: the regenerated candidates are the ones the first run wrote.
    assert sorted(json.dumps(r, sort_keys=True) for r in resumed) == sorted(json.dumps(r, sort_keys=True)
                                                                            for r in rows)

    done = Counting(tiny_generator)
    before = out.read_bytes()
    assert run(prompts, out, done)["prompts_generated"] == 0 and not done.prompt_keys
    assert out.read_bytes() == before


def test_other_settings_refuse_to_mix(tmp_path, tiny_generator):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    out = tmp_path / "cands.jsonl"
    run(prompts, out, tiny_generator, n=2)
    before = out.read_bytes()
    from posttrain.data.schema import DataError

    with pytest.raises(DataError, match="other settings"):
        run(prompts, out, tiny_generator, n=2, seed=12)
    assert out.read_bytes() == before


def test_real_kill_then_resume(tmp_path, tiny_generator):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(60))
    out = tmp_path / "cands.jsonl"
    args = [sys.executable, "-m", "posttrain.generation.cli", "--prompts", str(prompts), "--model", "tiny-random",
            "-o", str(out), "-n", "2", "--batch-size", "2", "--max-new-tokens", "24", "--temperature", "1.0",
            "--top-p", "1.0", "--seed", "3", "--no-progress"]
    kill_when_written(args, out, 2)  # killed once the first batch is flushed
    at_kill = out.read_text().count("\n")
    assert 2 <= at_kill < 120

    again = Counting(tiny_generator)
    summary = generate_candidates(prompts, out, "tiny-random", n=2, temperatures=[1.0], top_p=1.0, max_new_tokens=24,
                                  batch_size=64, seed=3, progress=False, generator=again)
    rows = read_rows(out)
    pairs = [(r["prompt_id"], r["candidate_index"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 120
    assert summary["prompts_skipped"] == 60 - summary["prompts_generated"] >= 1
    assert len(again.prompt_keys) == summary["prompts_generated"] == 60 - at_kill // 2


def test_dry_run_prints_cost_and_writes_nothing(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(4))
    out = tmp_path / "cands.jsonl"
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out), "-n", "4",
                                       "--max-new-tokens", "10", "--dry-run", "--price-input", "0.5",
                                       "--price-output", "1.5"])
    assert res.exit_code == 0, res.output
    assert "4 x 4 candidates = 16" in res.output and "48 calls" in res.output and "$" in res.output
    assert not out.exists()


def test_bad_prompt_row_exits_2_naming_file_and_row(tmp_path):
    rows = prompt_rows(3)
    rows[1] = {"text": "no prompt here"}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "cands.jsonl"
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out)])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{prompts}:2: field 'prompt'" in errors[0], res.output
    assert not out.exists()
    rows[1] = dict(rows[2])  # the same prompt twice, no ids
    write_jsonl(prompts, rows)
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out)])
    assert res.exit_code == 2 and f"{prompts}:3: field 'prompt': duplicate of row 2" in res.output, res.output
    assert not out.exists()


def test_cli_generates_with_several_temperatures(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    out = tmp_path / "cands.jsonl"
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o", str(out), "-n", "3",
                                       "--temperature", "0,0.8", "--temperature", "1.2", "--max-new-tokens", "4",
                                       "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert sorted(r["sampling"]["temperature"] for r in rows) == [0.0, 0.0, 0.8, 0.8, 1.2, 1.2]
    assert "6 candidates for 2 prompts" in res.output
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o",
                                       str(tmp_path / "v.jsonl"), "--backend", "vllm"])
    assert res.exit_code == 2 and "vllm is not installed" in res.output


def test_system_prompt_goes_first_in_prompts_without_one(tmp_path, tiny_generator):
    rows = prompt_rows(3)
    own = {"role": "system", "content": "You are terse."}
    rows[2] = {"id": "own", "messages": [own, {"role": "user", "content": "Name a colour."}]}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    plain, steered = tmp_path / "plain.jsonl", tmp_path / "steered.jsonl"
    run(prompts, plain, tiny_generator, n=1)
    run(prompts, steered, tiny_generator, n=1, system_prompt="Keep every reply under 50 words.")
    by_id = lambda path: {r["prompt_id"]: r for r in read_rows(path)}  # noqa: E731
    before, after = by_id(plain), by_id(steered)
    steer = {"role": "system", "content": "Keep every reply under 50 words."}
    assert after["first"]["prompt"] == [steer, *before["first"]["prompt"]]
    # rendered, not only recorded (the chat template's default system prompt, longer, is what it replaces)
    assert after["first"]["prompt_tokens"] != before["first"]["prompt_tokens"]
    assert after["own"]["prompt"] == before["own"]["prompt"] == rows[2]["messages"]  # its own system message stays
    # a row without an id gets the id of the prompt it was sampled for
    assert set(after) - set(before) and len(after) == 3
    res = runner.invoke(generate_app, ["--prompts", str(prompts), "--model", "tiny-random", "-o",
                                       str(tmp_path / "c.jsonl"), "--system-prompt", "Be brief.", "-n", "1",
                                       "--max-new-tokens", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert all(r["prompt"][0]["role"] == "system" for r in read_rows(tmp_path / "c.jsonl"))


def test_pipeline_stage_passes_the_system_prompt(tmp_path):
    from posttrain.pipeline.load import parse_pipeline
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline
    from posttrain.pipeline.spec import PipelineError

    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(2))
    config = {"prompts": str(prompts), "model": "tiny-random", "n": 1, "max_new_tokens": 2, "progress": False,
              "system_prompt": "Be brief."}
    with pytest.raises(PipelineError, match="key 'system_prompt'"):
        STAGES["generate"].check({**config, "system_prompt": ["Be brief."]}, lambda path: False)
    manifest = run_pipeline(parse_pipeline({"run_dir": str(tmp_path / "run"), "stages": {
        "sample": {"command": "generate", "config": config}}}))
    rows = read_rows(Path(manifest["stages"]["sample"]["folder"]) / "candidates.jsonl")
    assert len(rows) == 2 and all(r["prompt"][0] == {"role": "system", "content": "Be brief."} for r in rows)
