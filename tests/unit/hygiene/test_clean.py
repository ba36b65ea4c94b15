"""The streaming pass: outputs, removal reasons, report numbers, one-line errors with nothing written, and the
pipeline hook that decontaminates before training."""

import json

import pytest
import yaml

from posttrain.data.schema import DataError
from posttrain.hygiene.clean import HygieneConfig, run_hygiene
from posttrain.pipeline.hygiene_stages import decontaminate_then_train, run_data_stage

EVAL_PROMPT = json.loads(
    __import__("posttrain.eval.suites", fromlist=["x"]).BUILTIN_SUITES["refusal"].read_text().splitlines()[0])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows():
    return [
        {"prompt": "How do I sort a dict by value?", "completion": "Use sorted(d.items(), key=lambda kv: kv[1])."},
        {"prompt": "how do I sort a DICT by value", "completion": "use sorted(d.items(), key=lambda kv: kv[1])"},
        {"prompt": f"Quick one: {EVAL_PROMPT['prompt']}", "completion": "Like this."},
        {"prompt": "Who do I contact?", "completion": "Mail ops@example.org or call 555-867-5309."},
    ]


def test_clean_pass_outputs_and_report(tmp_path):
    src = _write(tmp_path / "sft.jsonl", _rows())
    out = tmp_path / "out"
    report = run_hygiene(str(src), out, HygieneConfig(remove_contaminated=True, progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["clean.jsonl", "clusters.jsonl", "config.yaml",
                                                      "contamination.jsonl", "manifest.json", "removed.jsonl",
                                                      "report.json"]
    kept = [json.loads(line) for line in (out / "clean.jsonl").read_text().splitlines()]
    assert kept == [_rows()[0], {"prompt": "Who do I contact?", "completion": "Mail [EMAIL] or call [PHONE]."}]
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in removed] == [(2, "exact_duplicate"), (3, "contaminated")]
    assert removed[0]["duplicate_of"] == 1 and removed[0]["record"] == _rows()[1]
    (match,) = [json.loads(line) for line in (out / "contamination.jsonl").read_text().splitlines()]
    assert (match["line"], match["eval_set"], match["eval_id"], match["overlap"]) == (3, "refusal",
                                                                                        EVAL_PROMPT["id"], 1.0)
    assert report == json.loads((out / "report.json").read_text())
    assert (report["rows_in"], report["rows_out"], report["removed"]) == (
        4, 2, {"exact_duplicate": 1, "near_duplicate": 0, "contaminated": 1})
    assert report["pii"]["counts"]["email"] == 1 and report["pii"]["counts"]["phone"] == 1
    assert report["pii"]["rows_redacted"] == 1
    assert report["decontamination"]["eval_sets"]["refusal"]["contaminated_rows"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["metrics"]["rows_out"] == 2
    assert manifest["inputs"]["input"]["hash"].startswith("sha256:")
    assert yaml.safe_load((out / "config.yaml").read_text())["threshold"] == 0.8


def test_key_prompt_and_folding_options(tmp_path):
    rows = [{"prompt": "Same prompt", "completion": "answer one is here"},
            {"prompt": "same prompt!", "completion": "a completely different answer"}]
    src = _write(tmp_path / "sft.jsonl", rows)
    base = dict(near=False, decontaminate=False, redact=False, progress=False)
    assert run_hygiene(str(src), tmp_path / "a", HygieneConfig(**base))["rows_out"] == 2
    assert run_hygiene(str(src), tmp_path / "b", HygieneConfig(key="prompt", **base))["rows_out"] == 1
    strict = HygieneConfig(key="prompt", fold_case=False, **base)
    assert run_hygiene(str(src), tmp_path / "c", strict)["rows_out"] == 2


def test_bad_row_is_one_error_and_nothing_written(tmp_path):
    rows = [{"prompt": "fine", "completion": "fine"}] * 3 + [{"prompt": "no completion", "completion": ""}]
    src = _write(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        run_hygiene(str(src), out, HygieneConfig(progress=False, batch_size=2))
    assert str(err.value) == f"{src}:4: field 'completion': is empty"
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DataError):
        run_hygiene(str(src), existing, HygieneConfig(progress=False, batch_size=2))
    assert list(existing.iterdir()) == []


def test_identical_pairs_are_reported_not_rejected(tmp_path):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"}, {"prompt": "r", "chosen": "a b", "rejected": "c"}]
    src = _write(tmp_path / "pairs.jsonl", rows)
    report = run_hygiene(str(src), tmp_path / "out", HygieneConfig(progress=False))
    assert report["kind"] == "preference"
    assert report["diagnostics"]["identical"]["pairs"] == 1
    assert report["diagnostics"]["pairs"] == 2


def test_data_stage(tmp_path):
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.spec import PipelineError

    src = _write(tmp_path / "sft.jsonl", _rows())
    metrics = STAGES["data"].run({"input": str(src), "redact": False}, tmp_path / "stage", False)
    assert metrics["rows_in"] == 4 and metrics["removed/exact_duplicate"] == 1
    assert metrics["decontamination/rows_contaminated"] == 1 and metrics["rows_out"] == 3
    assert STAGES["data"].inputs({"input": str(src), "eval_files": ["x.jsonl"]}) == [str(src), "x.jsonl"]
    with pytest.raises(PipelineError, match="config: key 'treshold': unknown key"):
        run_data_stage({"input": str(src), "treshold": 0.5}, tmp_path / "s2", False)
    with pytest.raises(PipelineError, match="key 'input' is required"):
        run_data_stage({}, tmp_path / "s3", False)


def _fake_training(output_dir, seen):
    """Stands in for the trainer: records what it was given and writes a completed manifest like RunFolder."""
    def train(params, resume):
        seen.append((params, resume, sorted(p.name for p in output_dir.iterdir())))
        (output_dir / "manifest.json").write_text(json.dumps({"status": "completed", "metrics": {"loss": 1.0}}))
        return {"loss": 1.0}
    return train


def test_hook_reports_by_default_and_trains_on_the_original(tmp_path):
    src = _write(tmp_path / "sft.jsonl", _rows())
    out = tmp_path / "sft-stage"
    out.mkdir()
    seen = []
    params = {"data": {"train": str(src)}, "optim": {"max_steps": 1}}
    metrics = decontaminate_then_train("sft", params, out, False, _fake_training(out, seen))
    (given, resume, files_then), = seen
    assert given == params and resume is False and files_then == []  # trainer saw an empty folder
    assert metrics == {"loss": 1.0, "decontamination/rows_checked": 4, "decontamination/rows_contaminated": 1,
                       "decontamination/rows_removed": 0}
    report = json.loads((out / "hygiene" / "report.json").read_text())
    assert report["decontamination"]["rows_contaminated"] == 1
    assert not (out / "hygiene" / "clean.jsonl").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hygiene"]["report"] == "hygiene/report.json"
    assert manifest["hygiene"]["decontamination"]["rows_contaminated"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hygiene")] == []


def test_hook_removes_when_configured_and_can_be_disabled(tmp_path):
    src = _write(tmp_path / "sft.jsonl", _rows())
    out = tmp_path / "sft-stage"
    out.mkdir()
    seen = []
    params = {"data": {"train": str(src)}, "decontaminate": {"remove": True, "ngram": 8}}
    metrics = decontaminate_then_train("sft", params, out, False, _fake_training(out, seen))
    (given, resume, _), = seen
    assert given["data"]["train"] == str(out / "hygiene" / "clean.jsonl") and resume is True
    assert "decontaminate" not in given
    assert len((out / "hygiene" / "clean.jsonl").read_text().splitlines()) == 3
    assert metrics["decontamination/rows_removed"] == 1
    seen.clear()
    off = tmp_path / "off"
    off.mkdir()
    assert decontaminate_then_train("sft", {"data": {"train": str(src)}, "decontaminate": False}, off, False,
                                    _fake_training(off, seen)) == {"loss": 1.0}
    assert not (off / "hygiene").exists()


def test_hook_config_errors_name_the_key(tmp_path):
    from posttrain.pipeline.spec import PipelineError

    with pytest.raises(PipelineError, match="config: key 'decontaminate.ngrams': unknown key"):
        decontaminate_then_train("dpo", {"data": {"train": "x"}, "decontaminate": {"ngrams": 8}}, tmp_path, False,
                                 lambda p, r: {})


def test_rerun_into_the_same_folder_leaves_no_stale_outputs(tmp_path):
    src = _write(tmp_path / "sft.jsonl", _rows())
    out = tmp_path / "out"
    run_hygiene(str(src), out, HygieneConfig(progress=False))
    assert (out / "clusters.jsonl").exists() and (out / "clean.jsonl").exists()
    run_hygiene(str(src), out, HygieneConfig(near=False, write_clean=False, progress=False))
    assert not (out / "clusters.jsonl").exists() and not (out / "clean.jsonl").exists()
    assert json.loads((out / "report.json").read_text())["near_dedup"] is None


def test_config_rejects_unknown_fields_and_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown field 'answer'"):
        HygieneConfig(decontaminate_fields=["prompt", "answer"])
    with pytest.raises(ValidationError, match="extra"):
        HygieneConfig(treshold=0.5)


def test_example_pipeline_parses():
    from pathlib import Path

    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.load import load_pipeline

    spec = load_pipeline(Path(__file__).resolve().parents[3] / "examples" / "hygiene_pipeline.yaml", commands=STAGES)
    assert [s.command for s in spec.stages.values()] == ["data", "sft"]
