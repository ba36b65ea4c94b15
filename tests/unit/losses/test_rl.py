"""RL losses: KL estimators, PPO clipping at the ratio edges, clipped value loss, entropy, GRPO reductions,
Bradley-Terry (hand-worked values)."""

import math

import pytest
import torch

from posttrain.losses.reward import bradley_terry_loss
from posttrain.losses.rl import (clipped_value_loss, entropy_from_logits, grpo_token_losses, kl_estimate,
                                 ppo_clip_loss, reduce_sequence_losses, sequence_loss_weight)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_kl_estimators_hand_worked():
    logp, ref = t(math.log(0.5)), t(math.log(0.25))
    # log r = log(0.25 / 0.5) = -log 2
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    same = kl_estimate(t(-1.0, -2.0), t(-1.0, -2.0), "k3")
    assert same.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200000, replacement=True, generator=g)
    logp, logq = p.log()[samples], q.log()[samples]
    assert kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    k3 = kl_estimate(logp, logq, "k3")
    assert k3.mean().item() == pytest.approx(true_kl, abs=0.01)
    assert (k3 >= 0).all() and (kl_estimate(logp, logq, "k2") >= 0).all()
    # k3 has lower variance than k1 here
    assert k3.var() < kl_estimate(logp, logq, "k1").var()


@pytest.mark.parametrize("ratio, adv, loss, clipped, has_grad", [
    (1.3, 1.0, -1.2, 1.0, False),   # above 1+eps, pushing up: capped, no gradient
    (1.3, -1.0, 1.3, 0.0, True),    # above 1+eps, pushing down: unclipped
    (0.7, 1.0, -0.7, 0.0, True),    # below 1-eps, pushing up: unclipped
    (0.7, -1.0, 0.8, 1.0, False),   # below 1-eps, pushing down: capped, no gradient
    (1.2, 1.0, -1.2, 0.0, True),    # exactly at the edge: both branches equal, still has gradient
    (1.0, 2.0, -2.0, 0.0, True),
])
def test_ppo_clip_edges(ratio, adv, loss, clipped, has_grad):
    old = t(-1.0)[None]
    logps = (old + math.log(ratio)).clone().requires_grad_(True)
    losses, metrics = ppo_clip_loss(logps, old, t(adv)[None], torch.ones(1, 1), clip_range=0.2)
    assert losses.item() == pytest.approx(loss)
    assert metrics["clipped"].item() == clipped
    losses.sum().backward()
    grad = logps.grad.item()
    if has_grad:
        assert grad == pytest.approx(-adv * ratio)  # d/dlogp of -rho A = -rho A
    else:
        assert grad == 0.0


def test_ppo_clip_higher_and_mask():
    old = torch.zeros(1, 3, dtype=torch.float64)
    logps = torch.log(t(1.25, 1.25, 5.0))[None]
    adv = t(1.0)
    losses, metrics = ppo_clip_loss(logps, old, adv, torch.tensor([[1, 1, 0]]), clip_range=0.2, clip_range_high=0.28)
    assert losses[0].tolist() == pytest.approx([-1.25, -1.25, 0.0])  # 1.25 < 1.28: not clipped; masked -> 0
    assert metrics["clipped"][0].tolist() == [0.0, 0.0, 0.0]


def test_clipped_value_loss():
    values, old, ret = t(1.0, 0.0)[None], t(0.0, 0.0)[None], t(2.0, 1.0)[None]
    losses, metrics = clipped_value_loss(values, old, ret, torch.ones(1, 2), clip_range=0.5)
    # token 0: unclipped err (1-2)^2=1, clipped V=0.5 -> 2.25: max -> 0.5*2.25; token 1: (0-1)^2 both -> 0.5
    assert losses[0].tolist() == pytest.approx([1.125, 0.5])
    assert metrics["clipped"][0].tolist() == [1.0, 0.0]
    plain, _ = clipped_value_loss(values, old, ret, torch.ones(1, 2), clip_range=None)
    assert plain[0].tolist() == pytest.approx([0.5, 0.5])


def test_entropy():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_from_logits(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    p = logits.softmax(-1)
    assert entropy_from_logits(logits).tolist() == pytest.approx((-(p * p.log()).sum(-1)).tolist(), abs=1e-6)


def test_grpo_loss_and_reductions():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    token_losses = t(1.0, 2.0, 9.0, 3.0, 9.0, 9.0).reshape(2, 3)
    assert reduce_sequence_losses(token_losses, mask, "grpo").tolist() == [1.5, 3.0]
    assert reduce_sequence_losses(token_losses, mask, "token").tolist() == [3.0, 3.0]
    assert reduce_sequence_losses(token_losses, mask, "dr_grpo", max_tokens=4).tolist() == [0.75, 0.75]
    assert sequence_loss_weight(mask, "token") == 3.0 and sequence_loss_weight(mask, "grpo") == 2.0
    with pytest.raises(ValueError, match="needs max_tokens"):
        reduce_sequence_losses(token_losses, mask, "dr_grpo")
    # on-policy (ratio 1) with policy == reference: loss = -A on every token, KL 0
    logps = t(-1.0, -2.0, -3.0, -1.0, -2.0, -3.0).reshape(2, 3)
    losses, metrics = grpo_token_losses(logps, logps, t(0.5, -1.0), mask, ref_logps=logps, beta=0.1)
    assert losses.tolist() == [[-0.5, -0.5, 0.0], [1.0, 0.0, 0.0]]
    assert metrics["kl"].abs().sum().item() == 0.0
    # the KL term adds beta * k3 on masked tokens
    ref = logps - 1.0
    losses_kl, metrics_kl = grpo_token_losses(logps, logps, t(0.0, 0.0), mask, ref_logps=ref, beta=0.1)
    k3 = math.exp(-1.0) - 1 + 1.0
    assert losses_kl.flatten().tolist() == pytest.approx([0.1 * k3, 0.1 * k3, 0.0, 0.1 * k3, 0.0, 0.0])


def test_bradley_terry():
    losses, metrics = bradley_terry_loss(t(1.0, 0.0), t(0.0, 2.0))
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))])
    assert metrics["accuracy"].tolist() == [1.0, 0.0]
    assert metrics["margin"].tolist() == [1.0, -2.0]
    with_margin, _ = bradley_terry_loss(t(1.0), t(0.0), margin=t(1.0))
    assert with_margin.item() == pytest.approx(math.log(2))
    centred, _ = bradley_terry_loss(t(1.0), t(0.0), centering_coef=0.1)
    assert centred.item() == pytest.approx(math.log(1 + math.exp(-1)) + 0.1)
    # gradient: pushes chosen up, rejected down
    c, r = t(0.0).requires_grad_(True), t(0.0).requires_grad_(True)
    bradley_terry_loss(c, r)[0].sum().backward()
    assert c.grad.item() == pytest.approx(-0.5) and r.grad.item() == pytest.approx(0.5)
