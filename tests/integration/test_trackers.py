"""train.report_to: a 3-step tiny-random DPO run writes TensorBoard event files and an MLflow file store, read back
with their own readers: the loss series equals metrics.jsonl's, and the resolved config is logged."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

from .helpers import pair_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tensorboard_and_mlflow_get_every_metric_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is a dev dependency")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    out = tmp_path / "dpo"
    res = CliRunner().invoke(app, ["dpo", f"data.train={data}", "model.name=tiny-random", "optim.max_steps=3",
                                   "optim.batch_size=4", "optim.micro_batch_size=4", "data.max_length=64",
                                   "train.progress=false", f"train.output_dir={out}",
                                   "train.report_to=[tensorboard, mlflow]", "train.run_name=t3"])
    assert res.exit_code == 0, res.output
    losses = {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and r.get("split") != "eval"}
    assert sorted(losses) == [1, 2, 3]

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
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from posttrain.trainers.grpo import train_grpo

    from .test_rl import rl_config

    out = tmp_path / "out"
    cfg = rl_config("grpo", tmp_path, "optim.batch_size=2", "optim.micro_batch_size=8", "optim.max_steps=2",
                    "grpo.num_generations=4", "data.eval=null", "train.log_samples=3",
                    "train.report_to=[tensorboard, mlflow]", "train.run_name=g2")
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
