"""Runs that fail honestly, through the `posttrain` command on tiny-random: a NaN loss fails the run (exit 2, manifest
failed, the last checkpoint kept, no model saved, metrics.jsonl strict JSON); an output location that cannot be
written is one error line naming it, before any model loads; `data inspect` names identical pairs' rows on the
console; `serve --api-key`'s help points at $POSTTRAIN_API_KEY."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

from .helpers import pair_rows, sft_rows, write_jsonl


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def strict_lines(path) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"{path} holds {name}: not valid JSON")

    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text().splitlines() if ln.strip()]


def train_args(data, out, *extra):
    return [f"data.train={data}", f"train.output_dir={out}", "train.progress=false", "optim.batch_size=4",
            "optim.micro_batch_size=4", "data.max_length=64", *extra]


def test_a_nan_loss_fails_the_run_and_keeps_the_last_checkpoint(tmp_path, one_torch_thread):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(12))
    out = tmp_path / "run"
    # lr 1e30 is finite (config accepts it): step 1 trains, its update sends the weights to ~1e30, step 2's loss is
    # NaN. Before: exit 0, status completed, Infinity/NaN in the files and a NaN model saved.
    result = run("sft", *train_args(data, out, "optim.lr=1e30", "optim.max_steps=3", "train.save_every=1"))
    assert result.exit_code == 2, result.output
    error = next(ln for ln in result.output.splitlines() if ln.startswith("error:"))
    assert error.startswith("error: step 2: loss nan, gradient norm nan: not finite, so the run stops")
    assert f"the last checkpoint, {out / 'checkpoints' / 'step-000001'}, is kept" in error
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("NonFiniteLoss: step 2: loss nan")
    assert not (out / "model").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]
    rows = strict_lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] is None and rows[1]["nonfinite"] is True


@pytest.fixture
def no_model_loads(monkeypatch):
    """A tripwire: the output checks must come before any model is loaded."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output location was checked")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _one_error_line(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == f"error: {expected}"


def test_training_output_dir_that_is_a_file_or_inside_one(tmp_path, no_model_loads):
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(8))
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    _one_error_line(run("dpo", *train_args(data, a_file)), f"train.output_dir '{a_file}' is a file, not a folder")
    _one_error_line(run("sft", *train_args(data, a_file / "run")),
                    f"train.output_dir '{a_file}/run': cannot create this folder: '{a_file}' is a file, not a folder")


def test_training_output_dir_nobody_may_write(tmp_path, no_model_loads):
    import os

    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs Linux sysfs (refuses new files even to root)")
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    _one_error_line(run("sft", *train_args(data, "/sys/kernel/posttrain-run")),
                    "train.output_dir '/sys/kernel/posttrain-run': cannot write in '/sys/kernel' (Permission denied)")


def test_generate_eval_judge_and_data_check_their_outputs_first(tmp_path, no_model_loads):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}])
    _one_error_line(run("generate", "--prompts", str(prompts), "--model", "tiny-random", "-o", str(tmp_path)),
                    f"--output '{tmp_path}' is a folder, not a file")
    _one_error_line(run("generate", "--prompts", str(prompts), "--model", "tiny-random", "-o",
                        str(a_file / "c.jsonl")),
                    f"--output '{a_file}/c.jsonl': cannot create this file: '{a_file}' is a file, not a folder")
    _one_error_line(run("eval", "--model", "tiny-random", "-o", str(a_file)), f"--output '{a_file}' is a file, "
                    "not a folder")
    cands = write_jsonl(tmp_path / "c.jsonl", [{"prompt_id": "p", "prompt": [{"role": "user", "content": "hi"}],
                                                "candidate_index": 0, "text": "hello"}])
    _one_error_line(run("judge", "--candidates", str(cands), "-o", str(a_file / "out"), "--judge", "rm:tiny-random",
                        "--no-progress"),
                    f"output folder '{a_file}/out': cannot create this folder: '{a_file}' is a file, not a folder")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    _one_error_line(run("data", "dedup", str(pairs), "-o", str(a_file), "--no-progress"),
                    f"--output '{a_file}' is a file, not a folder")
    _one_error_line(run("data", "inspect", str(pairs), "--json", str(tmp_path), "--no-progress"),
                    f"--json '{tmp_path}' is a folder, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "pairs.jsonl", "prompts.jsonl", "taken.txt"]


def test_data_inspect_names_identical_rows_on_the_console(tmp_path):
    rows = pair_rows(4)
    rows[2]["rejected"] = rows[2]["chosen"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "inspect", str(pairs), "--no-progress"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "warning: 1 pair(s) have identical chosen and rejected (no signal): line 3" in result.output


def test_serve_reads_the_key_from_the_environment_and_its_help_says_to_prefer_it():
    import inspect

    from posttrain.serving.cli import serve_command

    option = inspect.signature(serve_command).parameters["api_key"].default
    assert option.envvar == "POSTTRAIN_API_KEY"
    assert "Prefer setting $POSTTRAIN_API_KEY" in option.help and "visible to every user" in option.help


BOM = b"\xef\xbb\xbf"


def test_bom_files_are_read_by_every_user_file_reader(tmp_path):
    """Feedback events, eval suites, prompt files and judge candidates go through the data readers (or the same
    line reader): a BOM is accepted everywhere, a Latin-1 line is named by file and line."""
    from posttrain.data.schema import DataError
    from posttrain.eval.suites import load_suite
    from posttrain.feedback.events import read_events
    from posttrain.generation.candidates import load_prompts
    from posttrain.judges.run import read_candidates
    from posttrain.models.policy import model_tokenizer

    events = tmp_path / "events.jsonl"
    events.write_bytes(BOM + json.dumps({"event_id": "t1", "kind": "thumbs", "prompt": "Capital of France?",
                                         "response": "Paris.", "rating": "up"}).encode() + b"\n")
    got, errors, _ = read_events([str(events)])
    assert [e.origin.event_id for e in got] == ["t1"] and errors == []
    suite = tmp_path / "suite.jsonl"
    suite.write_bytes(BOM + json.dumps({"id": "q1", "prompt": "2+2?", "kind": "exact", "answer": "4",
                                        "match": "math"}).encode() + b"\n")
    assert [r.id for r in load_suite(str(suite))] == ["q1"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(BOM + b'{"prompt": "Say hi."}\n')
    assert len(load_prompts(prompts, model_tokenizer("tiny-random"))) == 1
    cands = tmp_path / "c.jsonl"
    row = {"prompt_id": "p", "prompt": [{"role": "user", "content": "hi"}], "candidate_index": 0, "text": "x"}
    cands.write_bytes(BOM + json.dumps(row).encode() + b"\n" + json.dumps(dict(row, candidate_index=1, text="caf"))
                      .encode()[:-2] + 'é"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"^{cands}:2: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        read_candidates(cands)
