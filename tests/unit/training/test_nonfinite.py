"""A NaN/inf loss or gradient norm fails the run (or skips the update under train.on_nonfinite=skip), in the shared
loop and in the RL loop; metrics.jsonl stays strict JSON. A tiny linear model through the real loops on CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from posttrain.config import DataSection, OptimSection, TrainSection
from posttrain.training.loop import LoopSettings, NonFiniteLoss, StepFns, check_finite_weights, fit, make_accelerator
from posttrain.training.rollout_loop import RLFns, fit_rl


def settings(tmp_path, **kw) -> LoopSettings:
    """The loop's settings from real config sections; ``kw`` overrides train fields (``on_nonfinite`` unvalidated,
    so that the loop's own check is what refuses a bad value) or optim ones (``save_every`` is train's)."""
    optim = OptimSection(lr=1e-2, schedule="constant", warmup_steps=0, max_grad_norm=None, batch_size=2,
                         micro_batch_size=2, max_steps=4)
    train = TrainSection(output_dir=str(tmp_path), seed=0, log_every=1, keep_checkpoints=5, progress=False,
                         log_samples=0).model_copy(update=kw)
    return LoopSettings(optim=optim, train=train, data=DataSection(train="unused.jsonl", shuffle=False))


def strict_lines(path) -> list[dict]:
    """Every line parsed as strict JSON: NaN / Infinity (Python's json extensions) are errors."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}: not valid JSON")

    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text().splitlines() if ln.strip()]


def step_fns(bad_steps: set[int], value: float = math.nan):
    """Loss = mean squared output; on the (1-based) optimizer steps in ``bad_steps`` it is ``value`` instead
    (multiplied into the graph, so the gradients are non-finite too)."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        out = model(batch["x"]).pow(2).sum()
        if calls["n"] in bad_steps:
            out = out * value
        return out, {"out": out.detach().reshape(1)}, 4

    return StepFns(collate=lambda items: {"x": torch.stack(items)}, weight=lambda b: float(len(b["x"])), loss=loss)


def model_and_items():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1), [torch.randn(3) for _ in range(8)]


def test_nan_loss_fails_the_run_before_the_update(tmp_path):
    model, items = model_and_items()
    snapshots = []
    fns = step_fns({2})
    original_loss = fns.loss

    def loss(m, batch):  # the weights as they were when step 2 began
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original_loss(m, batch)

    fns.loss = loss
    with pytest.raises(NonFiniteLoss) as e:
        fit(model, items, [], fns, settings(tmp_path, save_every=1), make_accelerator("fp32"))
    msg = str(e.value)
    assert msg.startswith("step 2: loss nan, gradient norm nan: not finite") and "\n" not in msg
    assert f"the last checkpoint, {tmp_path / 'checkpoints' / 'step-000001'}, is kept" in msg
    assert "train.on_nonfinite=skip" in msg
    # the bad update was not applied: the weights are those step 2 started from, all finite
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    assert (tmp_path / "checkpoints" / "step-000001" / "state.json").exists()
    rows = strict_lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["nonfinite"] is True and rows[1]["loss"] is None and rows[1]["grad_norm"] is None


def test_inf_loss_fails_too_and_says_so_without_a_checkpoint(tmp_path):
    model, items = model_and_items()
    with pytest.raises(NonFiniteLoss, match=r"^step 3: loss inf, .*no checkpoint was saved before it"):
        fit(model, items, [], step_fns({3}, math.inf), settings(tmp_path), make_accelerator("fp32"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = strict_lines(tmp_path / "metrics.jsonl")
    assert rows[-1]["loss"] is None and rows[-1]["nonfinite"] is True


def test_skip_drops_the_update_and_goes_on(tmp_path, capsys):
    model, items = model_and_items()
    summary = fit(model, items, [], step_fns({2}), settings(tmp_path, on_nonfinite="skip"), make_accelerator("fp32"))
    assert summary["train/skipped_steps"] == 1 and math.isfinite(summary["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = strict_lines(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("nonfinite", False)) for r in rows] == [(1, False), (2, True), (3, False), (4, False)]
    assert "step 2: loss nan, gradient norm nan: not finite, update skipped" in capsys.readouterr().err


def test_skip_with_every_step_bad_is_still_a_failure(tmp_path):
    model, items = model_and_items()
    with pytest.raises(NonFiniteLoss, match="all 4 steps had a non-finite loss"):
        fit(model, items, [], step_fns({1, 2, 3, 4}), settings(tmp_path, on_nonfinite="skip"),
            make_accelerator("fp32"))


def test_unknown_policy_is_a_config_error(tmp_path):
    from posttrain.config import ConfigError

    model, items = model_and_items()
    with pytest.raises(ConfigError, match="train.on_nonfinite 'ignore': expected one of fail, skip"):
        fit(model, items, [], step_fns(set()), settings(tmp_path, on_nonfinite="ignore"), make_accelerator("fp32"))


def test_non_finite_weights_are_never_saved():
    model = torch.nn.Linear(2, 1)
    check_finite_weights(model, 3, lambda t: t, None)  # finite: nothing happens
    with torch.no_grad():
        model.bias.fill_(math.inf)
    with pytest.raises(NonFiniteLoss, match=r"after step 3: trainable weights hold NaN or infinite values "
                                            r"\(first: bias\)"):
        check_finite_weights(model, 3, lambda t: t, None)


def rl_fns(bad_steps: set[int]):
    """One update per step (1 epoch x 1 minibatch): a NaN loss on the steps in ``bad_steps``."""
    state = {"step": 0}

    def rollout(prompts, step):
        state["step"] = step + 1
        return {"num_rows": len(prompts), "x": torch.stack(prompts)}, {"reward/total": 0.5}

    def loss(model, batch):
        out = model(batch["x"]).pow(2).sum()
        if state["step"] in bad_steps:
            out = out * math.nan
        return out, {}, 4

    return RLFns(rollout=rollout, weight=lambda b: float(b["num_rows"]), loss=loss)


def test_rl_nan_loss_fails_the_run(tmp_path):
    model, items = model_and_items()
    with pytest.raises(NonFiniteLoss, match=r"^step 2: loss nan, gradient norm nan: not finite"):
        fit_rl(model, items, rl_fns({2}), settings(tmp_path), make_accelerator("fp32"), update_epochs=1,
               mini_batches=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = strict_lines(tmp_path / "metrics.jsonl")
    assert rows[-1] == {"step": 2, "update": 1, "loss": None, "grad_norm": None, "nonfinite": True}


def test_rl_skip_counts_the_skipped_updates(tmp_path):
    model, items = model_and_items()
    summary = fit_rl(model, items, rl_fns({2}), settings(tmp_path, on_nonfinite="skip"), make_accelerator("fp32"),
                     update_epochs=1, mini_batches=1)
    assert summary["train/skipped_updates"] == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    steps = [r for r in strict_lines(tmp_path / "metrics.jsonl") if "update" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[1]["skipped_updates"] == 1 and steps[1]["loss"] is None
