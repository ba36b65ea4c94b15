import math

import pytest
import torch

from posttrain.training.optim import build_optimizer, build_scheduler, lr_factor, resolve_warmup


def test_warmup_then_cosine():
    f = [lr_factor(s, total_steps=10, warmup_steps=2, schedule="cosine") for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0)  # decay starts after warmup
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


def test_linear_and_constant():
    assert lr_factor(5, total_steps=10, warmup_steps=0, schedule="linear") == pytest.approx(0.5)
    assert lr_factor(9, total_steps=10, warmup_steps=0, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(1, total_steps=10, warmup_steps=0, schedule="step")


def test_resolve_warmup():
    assert resolve_warmup(100, None, 0.1) == 10
    assert resolve_warmup(100, 3, 0.1) == 3


def test_no_decay_on_1d_params_and_scheduler_steps():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, lr=1.0, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
    wds = sorted(g["weight_decay"] for g in opt.param_groups)
    assert wds == [0.0, 0.1]
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    sched = build_scheduler(opt, total_steps=4, warmup_steps=2, schedule="linear")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_frozen_model_is_an_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        build_optimizer(model, lr=1.0, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8)
