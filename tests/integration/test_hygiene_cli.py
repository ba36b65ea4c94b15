"""`posttrain data ...` end to end: outputs, exit codes and one-line errors; `posttrain run` decontaminates before
a real (tiny-random) training stage and records the report in the stage's folder and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.eval.suites import BUILTIN_SUITES
from tests.integration.helpers import pair_rows, sft_rows, write_jsonl

runner = CliRunner()
EVAL_ROW = json.loads(BUILTIN_SUITES["refusal"].read_text().splitlines()[2])


def _invoke(*args: str):
    return runner.invoke(app, ["data", *args, "--no-progress"])


def test_clean_command(tmp_path):
    rows = sft_rows(6) + sft_rows(2) + [{"prompt": EVAL_ROW["prompt"], "completion": "sure, from 10.1.2.3"}]
    src = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "out"
    result = _invoke("clean", str(src), "-o", str(out), "--remove-contaminated")
    assert result.exit_code == 0, result.output
    assert "exact duplicates removed" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["rows_in"] == 9 and report["removed"]["exact_duplicate"] == 2
    assert report["removed"]["contaminated"] == 1 and report["rows_out"] == 6
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"


def test_dedup_decontaminate_redact_commands(tmp_path):
    src = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4) + sft_rows(4)
                      + [{"prompt": EVAL_ROW["prompt"], "completion": "mail me: x@y.com"}])
    result = _invoke("dedup", str(src), "-o", str(tmp_path / "d"), "--threshold", "0.9", "--shingle-size", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "report.json").read_text())["rows_out"] == 5
    own = write_jsonl(tmp_path / "mine.jsonl", [{"id": "own-1", "prompt": "Tell me about cats 0."}])
    result = _invoke("decontaminate", str(src), "-o", str(tmp_path / "c"), "--eval-file", str(own), "--ngram", "4",
                     "--suite", "refusal", "--remove")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())["decontamination"]
    assert report["eval_sets"]["mine"]["contaminated_rows"] == 2  # row 1 and its copy, row 5
    assert report["eval_sets"]["refusal"]["contaminated_rows"] == 1
    assert report["rows_removed"] == 3
    result = _invoke("redact", str(src), "-o", str(tmp_path / "r"), "--type", "email")
    assert result.exit_code == 0, result.output
    assert "[EMAIL]" in (tmp_path / "r" / "clean.jsonl").read_text()


def test_bad_input_one_line_exit_2_nothing_written(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(sft_rows(1)[0]) + "\n" + '{"messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out"
    result = _invoke("clean", str(src), "-o", str(out))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {src}:2: field 'messages': has no assistant turn to train on"
    assert not out.exists()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    result = _invoke("dedup", str(broken), "-o", str(out))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {broken}:2: invalid JSON")
    result = _invoke("dedup", str(tmp_path / "missing.jsonl"), "-o", str(out))
    assert result.exit_code == 2 and "no such file or folder" in result.output
    result = _invoke("dedup", str(broken), "-o", str(out), "--threshold", "1.5")
    assert result.exit_code == 2 and "threshold" in result.output
    result = _invoke("decontaminate", str(broken), "-o", str(out), "--suite", "mmlu")
    assert result.exit_code == 2 and "unknown eval suite 'mmlu'" in result.output
    assert not out.exists()


def test_presidio_backend_missing_is_exit_2(tmp_path):
    try:
        import presidio_analyzer  # noqa: F401
        pytest.skip("presidio is installed here")
    except ImportError:
        pass
    src = write_jsonl(tmp_path / "sft.jsonl", sft_rows(2))
    result = _invoke("redact", str(src), "-o", str(tmp_path / "out"), "--backend", "presidio")
    assert result.exit_code == 2 and "pip install presidio-analyzer" in result.output
    assert not (tmp_path / "out").exists()


def test_inspect_prints_table_and_writes_json(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"system": "Be brief.", **r} for r in sft_rows(4)])
    result = _invoke("inspect", str(pairs), "--sft", str(sft), "--json", str(tmp_path / "d.json"))
    assert result.exit_code == 0, result.output
    assert "preference-data diagnostics (4 pairs)" in result.output
    assert "warning: system prompts: 100% of SFT rows have one, 0% of preference rows" in result.output
    diag = json.loads((tmp_path / "d.json").read_text())
    # pair_rows: chosen "one fact about X." is shorter than rejected "I WILL NOT TALK ABOUT X n!"
    assert diag["pairs"] == 4 and diag["length"]["rejected_longer_fraction"] == 1.0
    assert diag["template"]["sft"]["system_prompt_fraction"] == 1.0
    result = _invoke("inspect", str(sft))
    assert result.exit_code == 2 and "field 'chosen': missing" in result.output


def test_pipeline_decontaminates_before_training(tmp_path, one_torch_thread):
    from posttrain.pipeline.runner import run_pipeline
    from posttrain.pipeline.load import parse_pipeline

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(7) + [{"prompt": EVAL_ROW["prompt"], "completion": "ok"}])
    tree = {"run_dir": str(tmp_path / "run"), "stages": {
        "clean": {"command": "data", "config": {"input": str(data), "redact": False, "near": False}},
        "sft": {"command": "sft", "config": {
            "model": {"name": "tiny-random"}, "data": {"train": "${clean.output}/clean.jsonl", "max_length": 64},
            "optim": {"batch_size": 4, "micro_batch_size": 4, "max_steps": 1}, "train": {"progress": False}}}}}
    manifest = run_pipeline(parse_pipeline(tree))
    sft = manifest["stages"]["sft"]
    assert sft["status"] == "done"
    assert sft["metrics"]["decontamination/rows_contaminated"] == 1
    assert sft["metrics"]["decontamination/rows_removed"] == 0
    folder = Path(sft["folder"])
    assert (folder / "model").exists()
    stage_manifest = json.loads((folder / "manifest.json").read_text())
    assert stage_manifest["status"] == "completed"
    assert stage_manifest["hygiene"]["decontamination"]["eval_sets"]["refusal"]["contaminated_rows"] == 1
    (match,) = [json.loads(x) for x in (folder / "hygiene" / "contamination.jsonl").read_text().splitlines()]
    assert match["eval_id"] == EVAL_ROW["id"] and match["overlap"] == 1.0
    assert manifest["stages"]["clean"]["metrics"]["decontamination/rows_contaminated"] == 1
