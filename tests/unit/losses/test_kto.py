import math

import pytest
import torch

from posttrain.losses import get_loss
from posttrain.losses.kto import kto_kl_reference_point, kto_kl_reference_point_from_sums, kto_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_kto_hand_values_desirable_and_undesirable():
    # row 0 desirable, r = 1; row 1 undesirable, r = -2; z0 = 0.5, beta = 0.1
    losses, metrics = kto_loss(t(-5.0, -8.0), t(-6.0, -6.0), torch.tensor([True, False]), torch.tensor(0.5),
                               beta=0.1, desirable_weight=2.0, undesirable_weight=1.5)
    assert losses[0].item() == pytest.approx(2.0 * (1 - sigmoid(0.1 * (1 - 0.5))), abs=1e-12)
    assert losses[1].item() == pytest.approx(1.5 * (1 - sigmoid(0.1 * (0.5 + 2))), abs=1e-12)
    assert torch.allclose(metrics["rewards"], t(0.1, -0.2))
    assert metrics["desirable"].tolist() == [1.0, 0.0]
    assert metrics["kl"].tolist() == [0.5, 0.5]
    assert all(m.shape == (2,) and not m.requires_grad for m in metrics.values())


def test_kto_at_reference_point_is_half_weight():
    losses, _ = kto_loss(t(-3.0, -3.0), t(-3.0, -3.0), torch.tensor([True, False]), 0.0, beta=0.7,
                         desirable_weight=1.0, undesirable_weight=4.0)
    assert losses.tolist() == pytest.approx([0.5, 2.0])


def test_kl_reference_point_mean_and_clamp():
    z0 = kto_kl_reference_point(t(-3.0, -4.0), t(-4.0, -4.5))  # log-ratios 1, 0.5
    assert z0.shape == () and z0.item() == pytest.approx(0.75)
    assert kto_kl_reference_point(t(-6.0, -4.0), t(-4.0, -4.5)).item() == 0.0  # mean -0.75 clamps to 0
    assert kto_kl_reference_point_from_sums(t(1.5).squeeze(), 2).item() == pytest.approx(0.75)
    assert kto_kl_reference_point_from_sums(-3.0, 4).item() == 0.0


def test_kl_reference_point_is_detached_and_gradients_flow_to_policy():
    policy_kl = t(-3.0, -4.0).requires_grad_()
    z0 = kto_kl_reference_point(policy_kl, t(-4.0, -4.5))
    assert not z0.requires_grad
    policy = t(-5.0, -8.0).requires_grad_()
    losses, _ = kto_loss(policy, t(-6.0, -6.0), torch.tensor([True, False]), z0)
    losses.sum().backward()
    assert torch.isfinite(policy.grad).all() and (policy.grad != 0).all()
    # desirable: d/dr w (1 - sigma(beta (r - z0))) = -w beta sigma' ; undesirable pushes r down
    s = sigmoid(0.1 * (1 - 0.75))
    assert policy.grad[0].item() == pytest.approx(-0.1 * s * (1 - s), abs=1e-12)
    assert policy.grad[1].item() > 0


def test_registry_entry():
    spec = get_loss("kto")
    assert spec.fn is kto_loss and spec.needs_reference and spec.kind == "unpaired"
    assert spec.params == ("desirable_weight", "undesirable_weight")
