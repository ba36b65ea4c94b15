"""GAE, group normalisation, whitening, per-token rewards, adaptive KL controller: hand-worked values."""

import pytest
import torch

from posttrain.ops.advantages import (AdaptiveKLController, explained_variance, gae, group_advantages,
                                      token_rewards, whiten)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_gamma_lambda_one_is_return_minus_value():
    adv, ret = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_gae_hand_worked_gamma_lambda():
    # delta2 = 1 - 0.7 = 0.3;               A2 = 0.3
    # delta1 = 0.9*0.7 - 0.6 = 0.03;        A1 = 0.03 + 0.9*0.5*0.3 = 0.165
    # delta0 = 0.9*0.6 - 0.5 = 0.04;        A0 = 0.04 + 0.45*0.165 = 0.11425
    adv, ret = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), torch.ones(1, 3), gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.11425, 0.165, 0.3])
    assert ret[0].tolist() == pytest.approx([0.61425, 0.765, 1.0])


def test_gae_padding_ends_the_episode():
    # the padded position's value (9.0) and reward must not leak in
    adv, ret = gae(t([0.0, 1.0, 5.0]), t([0.2, 0.4, 9.0]), torch.tensor([[1, 1, 0]]), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.8, 0.6, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_group_advantages_hand_worked():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    a = group_advantages(rewards, 4, eps=0.0 + 1e-12)
    s = (1 / 3) ** 0.5  # unbiased std of [1, 0, 0, 1]
    assert a[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    assert a[4:].tolist() == [0.0] * 4  # all equal: no signal
    assert group_advantages(rewards, 4, scale_std=False).tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(rewards, 3)


def test_whiten():
    x = t([1.0, 2.0, 3.0, 100.0])
    w = whiten(x, torch.tensor([[1, 1, 1, 0]]))
    assert w[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)  # unbiased std of 1,2,3 is 1
    kept = whiten(t([1.0, 2.0, 3.0]), shift_mean=False)
    assert kept[0].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)  # (x - 2)/1 + 2


def test_token_rewards():
    kl = t([0.1, 0.2, 0.3], [0.5, 0.0, 0.0])
    r = token_rewards(torch.tensor([1.0, -2.0], dtype=torch.float64), kl, torch.tensor([[1, 1, 1], [1, 0, 0]]),
                      kl_coef=0.5)
    assert r.flatten().tolist() == pytest.approx([-0.05, -0.1, -0.15 + 1.0, -0.25 - 2.0, 0.0, 0.0])
    # completion after a prompt (mask starts late): the score lands on the last completion token
    late = token_rewards(torch.tensor([3.0]), torch.zeros(1, 5), torch.tensor([[0, 0, 1, 1, 0]]), kl_coef=0.1)
    assert late[0].tolist() == [0.0, 0.0, 0.0, 3.0, 0.0]


def test_explained_variance():
    ret = t([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(ret, ret) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.5), ret) == pytest.approx(0.0)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(12.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # error clipped to +0.2
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert c.update(5.7, 10) == pytest.approx(0.1 * (1 - 0.05 * 10 / 100))
    fixed = AdaptiveKLController(0.1, target=None)
    assert fixed.update(100.0, 10) == 0.1
