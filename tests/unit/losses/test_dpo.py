"""Paired losses against hand-worked values (math module, not the code under test) and invariants."""

import math

import pytest
import torch

from posttrain.losses import LOSSES, PAIRED_LOSS_TYPES, get_loss, preference_loss
from posttrain.losses.dpo import _log1mexp, dpo_loss, hinge_loss, ipo_loss, orpo_loss, robust_dpo_loss, simpo_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# pi_c - ref_c = 1, pi_r - ref_r = -0.5, so h = 1.5
PAIR = dict(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-12.0), reference_chosen_logps=t(-11.0),
            reference_rejected_logps=t(-11.5), chosen_lengths=t(4.0), rejected_lengths=t(5.0))


def call(fn, beta, **params):
    p = PAIR
    return fn(p["policy_chosen_logps"], p["policy_rejected_logps"], p["reference_chosen_logps"],
              p["reference_rejected_logps"], chosen_lengths=p["chosen_lengths"],
              rejected_lengths=p["rejected_lengths"], beta=beta, **params)


def test_dpo_hand_value():
    losses, metrics = call(dpo_loss, 0.1)
    assert losses.item() == pytest.approx(-log_sigmoid(0.15), abs=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.1)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.05)
    assert metrics["rewards/margins"].item() == pytest.approx(0.15)
    assert metrics["rewards/accuracy"].item() == 1.0
    assert metrics["logps/chosen"].item() == -10.0 and metrics["logps/rejected"].item() == -12.0


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
def test_dpo_is_log2_when_policy_equals_reference(beta):
    logps = t(-3.0, -40.0, -7.5)
    other = t(-9.0, -2.0, -7.5)
    losses, _ = dpo_loss(logps, other, logps.clone(), other.clone(), chosen_lengths=t(1, 2, 3),
                         rejected_lengths=t(3, 2, 1), beta=beta)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-12)


def test_cdpo_hand_value_and_eps_zero_is_dpo():
    z = 0.15
    losses, _ = call(dpo_loss, 0.1, label_smoothing=0.2)
    assert losses.item() == pytest.approx(-0.8 * log_sigmoid(z) - 0.2 * log_sigmoid(-z), abs=1e-12)
    assert call(dpo_loss, 0.1, label_smoothing=0.0)[0].item() == pytest.approx(-log_sigmoid(z), abs=1e-12)


def test_rdpo_hand_value_length_term():
    # |y_w| = 4, |y_l| = 5: z = 0.1 * 1.5 + 0.02 * (4 - 5) = 0.13
    losses, metrics = call(dpo_loss, 0.1, length_alpha=0.02)
    assert losses.item() == pytest.approx(-log_sigmoid(0.13), abs=1e-12)
    assert metrics["rewards/margins"].item() == pytest.approx(0.15)  # the implicit reward has no length term
    # a chosen answer longer than the rejected one gets less push: its loss is already lower
    long_chosen = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.5), chosen_lengths=t(40.0), rejected_lengths=t(5.0),
                           beta=0.1, length_alpha=0.02)[0]
    assert long_chosen.item() == pytest.approx(-log_sigmoid(0.15 + 0.7), abs=1e-12)
    assert call(dpo_loss, 0.1, length_alpha=0.0)[0].item() == pytest.approx(-log_sigmoid(0.15), abs=1e-12)
    with pytest.raises(ValueError, match="length_alpha"):
        call(dpo_loss, 0.1, length_alpha=-0.1)


def test_robust_hand_value_and_eps_zero_is_dpo():
    z, eps = 0.15, 0.1
    losses, _ = call(robust_dpo_loss, 0.1, label_smoothing=eps)
    expected = (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    assert call(robust_dpo_loss, 0.1, label_smoothing=0.0)[0].item() == pytest.approx(-log_sigmoid(z), abs=1e-12)


@pytest.mark.parametrize("fn", [dpo_loss, robust_dpo_loss, simpo_loss])
@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_label_smoothing_out_of_range(fn, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        call(fn, 0.1, label_smoothing=eps)


def test_hinge():
    assert call(hinge_loss, 0.1)[0].item() == pytest.approx(1 - 0.15, abs=1e-12)
    assert call(hinge_loss, 1 / 1.5)[0].item() == pytest.approx(0.0, abs=1e-12)  # beta * h == 1
    assert call(hinge_loss, 2.0)[0].item() == 0.0  # beta * h = 3 >= 1


def test_ipo_hand_value_and_zero_at_target():
    # mean log-ratios: chosen (-10 + 11) / 4 = 0.25, rejected (-12 + 11.5) / 5 = -0.1, h_norm = 0.35
    assert call(ipo_loss, 0.1)[0].item() == pytest.approx((0.35 - 5.0) ** 2, abs=1e-12)
    assert call(ipo_loss, 1 / 0.7)[0].item() == pytest.approx(0.0, abs=1e-12)  # 1 / (2 beta) == 0.35


def test_ipo_length_normalises():
    # chosen log-ratio sum 2, rejected 0; beta 0.25 targets h_norm = 2
    def loss(chosen_length):
        return ipo_loss(t(-4.0), t(-5.0), t(-6.0), t(-5.0), chosen_lengths=t(chosen_length), rejected_lengths=t(3.0),
                        beta=0.25)[0].item()

    assert loss(1.0) == pytest.approx(0.0, abs=1e-12)  # h_norm = 2
    assert loss(2.0) == pytest.approx((1.0 - 2.0) ** 2, abs=1e-12)  # doubled length halves it: h_norm = 1


def test_simpo_reference_free_hand_value():
    # mean logps -2 and -3; z = 2 * (-2) - 2 * (-3) - 0.5 = 1.5
    losses, metrics = simpo_loss(t(-6.0), t(-12.0), None, None, chosen_lengths=t(3.0), rejected_lengths=t(4.0),
                                 beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(-log_sigmoid(1.5), abs=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(-4.0)
    assert metrics["rewards/rejected"].item() == pytest.approx(-6.0)
    assert metrics["rewards/margins"].item() == pytest.approx(2.0)
    smoothed, _ = simpo_loss(t(-6.0), t(-12.0), None, None, chosen_lengths=t(3.0), rejected_lengths=t(4.0),
                             beta=2.0, gamma=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(-0.9 * log_sigmoid(1.5) - 0.1 * log_sigmoid(-1.5), abs=1e-12)
    assert not get_loss("simpo").needs_reference and get_loss("simpo").default_beta == 2.0


def test_orpo_reference_free_hand_value():
    a_c, a_r = -0.5, -2.0  # -1 / 2 and -6 / 3
    log_odds = (a_c - math.log(1 - math.exp(a_c))) - (a_r - math.log(1 - math.exp(a_r)))
    losses, metrics = orpo_loss(t(-1.0), t(-6.0), None, None, chosen_lengths=t(2.0), rejected_lengths=t(3.0),
                                beta=0.1)
    assert losses.item() == pytest.approx(0.5 - 0.1 * log_sigmoid(log_odds), abs=1e-12)
    assert metrics["orpo/log_odds"].item() == pytest.approx(log_odds, abs=1e-12)
    assert metrics["orpo/nll"].item() == pytest.approx(0.5)
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05)
    assert not get_loss("orpo").needs_reference


def test_log1mexp_is_stable():
    for a in [-1e-8, -1e-3, -0.5, -0.7, -2.0, -30.0, -700.0]:
        assert _log1mexp(t(a)).item() == pytest.approx(math.log(-math.expm1(a)), rel=1e-12)
    # a mean log-prob of exactly 0 (probability 1) and float32 stay finite
    assert torch.isfinite(_log1mexp(torch.tensor([0.0, -1e-9, -90.0]))).all()


def test_accuracy_and_margins_per_example():
    # chosen log-ratios 1, 0, -1; rejected 0, 0, 1 -> rewards (beta 0.5) margins 0.5, 0, -1
    losses, metrics = dpo_loss(t(-1.0, -2.0, -4.0), t(-5.0, -5.0, -2.0), t(-2.0, -2.0, -3.0), t(-5.0, -5.0, -3.0),
                               chosen_lengths=t(1, 1, 1), rejected_lengths=t(1, 1, 1), beta=0.5)
    assert losses.shape == (3,)
    assert metrics["rewards/accuracy"].tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
    assert torch.allclose(metrics["rewards/margins"], t(0.5, 0.0, -1.0))
    assert all(m.shape == (3,) and not m.requires_grad for m in metrics.values())


def test_rpo_adds_alpha_times_chosen_nll():
    base, _ = preference_loss("dpo", beta=0.1, **PAIR)
    losses, metrics = preference_loss("dpo", beta=0.1, rpo_alpha=0.5, **PAIR)
    assert losses.item() == pytest.approx(base.item() + 0.5 * (10.0 / 4.0), abs=1e-12)
    assert metrics["nll/chosen"].item() == pytest.approx(2.5)
    assert "nll/chosen" not in preference_loss("dpo", beta=0.1, **PAIR)[1]


@pytest.mark.parametrize("loss_type", PAIRED_LOSS_TYPES)
def test_gradients_flow_to_policy_only(loss_type):
    policy_chosen = t(-10.0, -3.0).requires_grad_()
    policy_rejected = t(-12.0, -2.0).requires_grad_()
    reference = {"reference_chosen_logps": t(-11.0, -3.5), "reference_rejected_logps": t(-11.5, -2.5)}
    if not LOSSES[loss_type].needs_reference:
        reference = {}
    losses, metrics = preference_loss(loss_type, policy_chosen_logps=policy_chosen,
                                      policy_rejected_logps=policy_rejected, chosen_lengths=t(4.0, 2.0),
                                      rejected_lengths=t(5.0, 3.0), rpo_alpha=0.1, **reference)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    losses.sum().backward()
    for grad in (policy_chosen.grad, policy_rejected.grad):
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()
    assert all(not m.requires_grad for m in metrics.values())


def test_dpo_gradient_hand_value():
    # d/d pi_c of -log sigma(beta h) = -beta sigma(-beta h)
    policy_chosen = t(-10.0).requires_grad_()
    dpo_loss(policy_chosen, t(-12.0), t(-11.0), t(-11.5), chosen_lengths=t(1.0), rejected_lengths=t(1.0),
             beta=0.1)[0].sum().backward()
    assert policy_chosen.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.15)), abs=1e-12)


def test_reference_inputs_are_not_required_to_track_gradients():
    policy_chosen = t(-10.0).requires_grad_()
    reference_chosen = t(-11.0)  # plain tensor, as produced under torch.no_grad()
    dpo_loss(policy_chosen, t(-12.0), reference_chosen, t(-11.5), chosen_lengths=t(1.0), rejected_lengths=t(1.0),
             beta=0.1)[0].sum().backward()
    assert reference_chosen.grad is None and policy_chosen.grad is not None
