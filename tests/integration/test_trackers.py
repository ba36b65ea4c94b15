"""train.report_to: 3-step tiny-random DPO runs write TensorBoard event files, an MLflow file store, an offline W&B
run and a trackio project, each read back with its own reader: the loss series equals metrics.jsonl's, and the
resolved config is logged; GRPO's sample tables reach TensorBoard, MLflow and W&B."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

from .helpers import pair_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dpo_3_steps(tmp_path, report_to: str, run_name: str):
    """A 3-step tiny-random DPO run reporting to ``report_to``: (its output folder, its 3 training records)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    out = tmp_path / "dpo"
    res = CliRunner().invoke(app, ["dpo", f"data.train={data}", "model.name=tiny-random", "optim.max_steps=3",
                                   "optim.batch_size=4", "optim.micro_batch_size=4", "data.max_length=64",
                                   "train.progress=false", f"train.output_dir={out}",
                                   f"train.report_to={report_to}", f"train.run_name={run_name}"])
    assert res.exit_code == 0, res.output
    records = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if "loss" in r and r.get("split") != "eval"]
    assert [r["step"] for r in records] == [1, 2, 3]
    return out, records


def test_tensorboard_and_mlflow_get_every_metric_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is a dev dependency")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, records = dpo_3_steps(tmp_path, "[tensorboard, mlflow]", "t3")
    losses = {r["step"]: r["loss"] for r in records}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "t3"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses, rel=1e-6)
    assert "lr" in events.Tags()["scalars"] and "grad_norm" in events.Tags()["scalars"]

    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "t3"]
    [run] = client.search_runs([experiment.experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses, rel=1e-6)
    params = run.data.params
    assert params["loss.beta"] == "0.1" and params["optim.max_steps"] == "3" and params["model.name"] == "tiny-random"


def wandb_records(run_dir):
    """The records of an offline W&B run (``<dir>/wandb/offline-run-*/run-*.wandb``), read with W&B's own protobuf
    classes. The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
    chunks, each ``crc32c (4) | length (2) | type (1: whole, 2: first, 3: middle, 4: last)``; a block's tail shorter
    than a chunk header is padding. (wandb >= 0.18 reads these files in its Go core only.)"""
    import struct

    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def wandb_history(run_dir) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]


def test_wandb_offline_and_trackio_get_every_metric_and_the_config(tmp_path, monkeypatch):
    import importlib.util
    import sys

    pytest.importorskip("wandb", reason="wandb is a dev dependency")
    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is a dev dependency")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # trackio reads TRACKIO_DIR once, when it is first imported: set it before, and make the import fresh
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    for name in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
        monkeypatch.delitem(sys.modules, name)
    out, records = dpo_3_steps(tmp_path, "[wandb, trackio]", "w3")
    losses = {r["step"]: r["loss"] for r in records}

    history = wandb_history(out)
    assert {h["_step"]: h["loss"] for h in history} == pytest.approx(losses, rel=1e-6)
    assert [h["grad_norm"] for h in history] == pytest.approx([r["grad_norm"] for r in records], rel=1e-6)
    [config] = [r.config for r in wandb_records(out) if r.WhichOneof("record_type") == "config"]
    params = {item.key: json.loads(item.value_json) for item in config.update}
    assert params["loss.beta"] == 0.1 and params["optim.max_steps"] == 3 and params["model.name"] == "tiny-random"

    from trackio.sqlite_storage import SQLiteStorage

    assert (tmp_path / "trackio" / "w3.db").is_file()  # the project (named after the run) is this test's own
    [run] = SQLiteStorage.get_runs("w3")
    logs = SQLiteStorage.get_logs("w3", run)
    assert {log["step"]: log["loss"] for log in logs} == pytest.approx(losses, rel=1e-6)
    tracked = SQLiteStorage.get_run_config("w3", run)
    assert tracked["optim.max_steps"] == 3 and tracked["model.name"] == "tiny-random"


@pytest.mark.parametrize("command", ["sft", "dpo", "kto"])
def test_offline_trainers_log_greedy_answers_to_eval_prompts(tmp_path, command):
    """train.log_samples for SFT / DPO / KTO: at each evaluation, the model's greedy answers to the first N eval
    prompts beside the data's answer, in samples.jsonl and TensorBoard; the last ones are exactly what the saved
    model answers."""
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    from posttrain.data.render import render_prompt
    from posttrain.data.schema import PromptExample
    from posttrain.generation.backends import load_generator

    from .helpers import kto_rows, sft_rows

    rows = {"sft": sft_rows, "dpo": pair_rows, "kto": kto_rows}[command](12)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [command, f"data.train={data}", "model.name=tiny-random", "optim.max_steps=4",
                                   "optim.batch_size=4", "optim.micro_batch_size=4", "data.max_length=64",
                                   "data.eval_fraction=0.25", "train.eval_every=2", "train.log_samples=2",
                                   "train.log_samples_max_new_tokens=6", "train.progress=false", "optim.lr=1e-2",
                                   f"train.output_dir={out}", "train.report_to=[tensorboard]", "train.run_name=s"])
    assert res.exit_code == 0, res.output
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [2, 2, 4, 4]
    assert set(samples[0]) == {"step", "prompt", "completion", "reference", "tokens", "finish"} | (
        {"desirable"} if command == "kto" else set())
    answers = {"sft": lambda r: r["messages"][1]["content"], "dpo": lambda r: r["chosen"],
               "kto": lambda r: r["completion"]}[command]
    asked = {"sft": lambda r: r["messages"][0]["content"], "dpo": lambda r: r["prompt"],
             "kto": lambda r: r["prompt"]}[command]
    by_answer = {answers(r): r for r in rows}
    assert all(s["reference"] in by_answer and asked(by_answer[s["reference"]]) in s["prompt"] for s in samples)
    assert all(s["tokens"] <= 6 and s["finish"] in ("stop", "length") for s in samples)

    generator, tokenizer = load_generator(str(out / "model"))
    prompts = [render_prompt(PromptExample([{"role": "user", "content": asked(by_answer[s["reference"]])}],
                                           "t", 0), tokenizer) for s in samples[2:]]
    again = generator.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0)
    assert [o.text for (o,) in again] == [s["completion"] for s in samples[2:]]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "s"), size_guidance={"tensors": 0})
    events.Reload()
    assert [t.step for t in events.Tensors("samples/text_summary")] == [2, 4]


def test_a_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    res = CliRunner().invoke(app, ["dpo", f"data.train={data}", "train.report_to=[wandb]",
                                   f"train.output_dir={tmp_path / 'o'}"])
    assert res.exit_code == 2
    assert "train.report_to: wandb needs the 'wandb' package: pip install 'posttrain[wandb]'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_grpo_sample_tables_reach_samples_jsonl_tensorboard_and_mlflow(tmp_path, monkeypatch):
    """train.log_samples: each logged step's first sampled completions (prompt, completion, reward) go to
    samples.jsonl, to TensorBoard as a text table and to MLflow as a table artifact; the rewards are the ones the
    step's reward/total averages over."""
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is a dev dependency")
    pytest.importorskip("wandb", reason="wandb is a dev dependency")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from posttrain.trainers.grpo import train_grpo

    from .test_rl import rl_config

    out = tmp_path / "out"
    cfg = rl_config("grpo", tmp_path, "optim.batch_size=2", "optim.micro_batch_size=8", "optim.max_steps=2",
                    "grpo.num_generations=4", "data.eval=null", "train.log_samples=3",
                    "train.report_to=[tensorboard, mlflow, wandb]", "train.run_name=g2")
    train_grpo(cfg)
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert set(rows[0]) == {"step", "prompt", "completion", "reward", "tokens", "finish"}
    assert all(isinstance(r["reward"], float) and r["prompt"] for r in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "g2"), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [1, 2]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert table.splitlines()[0] == "| prompt | completion | reward | tokens | finish |"
    assert len(table.splitlines()) == 2 + 3

    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "g2"]
    [run] = client.search_runs([experiment.experiment_id])
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples"))
    assert names == ["samples/step_1.json", "samples/step_2.json"]

    # W&B: a table file per logged step, 3 rows of the same 5 columns, the rows of samples.jsonl
    tables = [h for h in wandb_history(out) if "samples/path" in h]  # a table's fields are nested keys
    assert [h["_step"] for h in tables] == [1, 2]
    assert all(h["samples/_type"] == "table-file" and (h["samples/nrows"], h["samples/ncols"]) == (3, 5)
               for h in tables)
    [files] = out.glob("wandb/offline-run-*/files")
    first = json.loads((files / tables[0]["samples/path"]).read_text())
    assert first["columns"] == ["prompt", "completion", "reward", "tokens", "finish"]
    assert [row[1] for row in first["data"]] == [r["completion"] for r in rows[:3]]
