"""Gradient accumulation exactness and exact resume, through the real loop on tiny-random."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from posttrain.training.metrics import read_metrics

from .helpers import assert_resumed_like, pair_rows, sft_rows, stopped_after_step_2, tiny_config, write_jsonl


def _train(command, cfg):
    if command == "sft":
        from posttrain.trainers.sft import train_sft

        return train_sft(cfg)
    from posttrain.trainers.preference import train_preference

    return train_preference(cfg)


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_accumulation_1x8_equals_8x1(tmp_path, command):
    rows = sft_rows(8) if command == "sft" else pair_rows(8)
    # Make sequence lengths differ a lot, so a per-micro-batch token mean would differ from the global one.
    for i, r in enumerate(rows):
        if command == "sft":
            r["messages"][1]["content"] += " and more" * (i * 2)
        else:
            r["chosen"] += " extra" * i
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    results = {}
    for micro in (8, 1):
        out = tmp_path / f"m{micro}"
        cfg = tiny_config(command, data, out, "optim.batch_size=8", f"optim.micro_batch_size={micro}", "data.max_length=160",
                          "optim.max_steps=2", "optim.lr=1e-3", "optim.max_grad_norm=null")
        _train(command, cfg)
        m = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]
        results[micro] = (m, load_file(out / "model" / "adapter_model.safetensors"))
    (m8, w8), (m1, w1) = results[8], results[1]
    for a, b in zip(m8, m1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for k in w8:
        assert (w8[k] - w1[k]).abs().max() < 1e-5, k


def test_resume_reproduces_next_steps(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(24))
    common = ["optim.max_steps=4", "train.save_every=2", "optim.lr=1e-3", "data.shuffle=true"]
    full = tmp_path / "full"
    _train("dpo", tiny_config("dpo", data, full, *common))

    # A run that stopped after its step-2 checkpoint: its folder holds only what existed at that point.
    part = tmp_path / "part"
    stopped_after_step_2(full, part)
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["step-000002"]
    _train("dpo", tiny_config("dpo", data, part, *common, "train.resume=true"))
    assert_resumed_like(full, part)


def test_eval_split_and_eval_loss(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(20))
    summary = _train("dpo", tiny_config("dpo", data, tmp_path / "o", "data.eval_fraction=0.2", "train.eval_every=2"))
    assert summary["eval/rows"] == 4 and summary["train/rows"] == 16
    evals = [r for r in read_metrics(tmp_path / "o" / "metrics.jsonl") if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [2, 3]
    assert all("rewards/accuracy" in r and r["loss"] > 0 for r in evals)
