"""Paired preference losses: DPO and its family (cDPO, robust DPO, hinge/SLiC, IPO, SimPO, ORPO, RPO's NLL term).

Every paired loss has one keyword signature, so the table in ``posttrain.losses`` can call any of them::

    fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
       chosen_lengths, rejected_lengths, beta, **params) -> (losses, metrics)

Shapes and meaning:
    ``*_logps``: (B,) per-sequence SUMS of completion token log-probs, log pi(y|x). The reference ones may be
        None for reference-free losses (SimPO, ORPO).
    ``chosen_lengths``, ``rejected_lengths``: (B,) float completion token counts |y|; ``logps / lengths`` is the
        mean token log-prob. Lengths are clamped at 1 so an empty completion gives a mean of 0, not NaN.
    ``losses``: (B,) per-example losses; the trainer reduces them.
    ``metrics``: detached (B,) tensors: ``rewards/chosen``, ``rewards/rejected`` (beta * (log pi - log pi_ref)
        of the sums for reference-based losses, beta * mean token log-prob for reference-free ones, as SimPO
        defines its implicit reward), ``rewards/margins`` (chosen - rejected), ``rewards/accuracy`` (1.0 where the
        chosen reward is strictly larger), ``logps/chosen``, ``logps/rejected`` (the policy sums).

Throughout, h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) is the log-ratio margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _check_label_smoothing(label_smoothing: float, loss: str) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"{loss}: label_smoothing must be in [0, 0.5), got {label_smoothing}")


def _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                      loss: str) -> Tensor:
    """h (B,) = (pi_c - ref_c) - (pi_r - ref_r)."""
    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError(f"{loss} needs reference log-probs (reference_chosen_logps, reference_rejected_logps)")
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def _mean_logps(logps: Tensor, lengths: Tensor) -> Tensor:
    """Mean token log-prob (B,) = sum / |y|."""
    return logps / lengths.clamp(min=1)


def _smoothed_sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): the preference label flipped with probability eps."""
    loss = -F.logsigmoid(z)
    if label_smoothing > 0:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def _metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, policy_chosen_logps: Tensor,
             policy_rejected_logps: Tensor) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
        "logps/chosen": policy_chosen_logps.detach(),
        "logps/rejected": policy_rejected_logps.detach(),
    }


def _reference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                       beta: float) -> dict[str, Tensor]:
    return _metrics(beta * (policy_chosen_logps - reference_chosen_logps),
                    beta * (policy_rejected_logps - reference_rejected_logps),
                    policy_chosen_logps, policy_rejected_logps)


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
             reference_rejected_logps: Tensor, *, chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float,
             label_smoothing: float = 0.0, length_alpha: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid DPO, Rafailov et al. 2023 ("Direct Preference Optimization"), eq. 7:
    L = -log sigma(beta * h).

    With ``label_smoothing`` eps > 0 this is conservative DPO (cDPO, Mitchell 2023), which assumes each label is
    flipped with probability eps: L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).
    With ``length_alpha`` a > 0 this is length-regularized DPO (R-DPO, Park et al. 2024, "Disentangling Length
    from Quality in Direct Preference Optimization", eq. 9): z = beta h + a (|y_w| - |y_l|). A longer chosen answer
    already explains part of the preference, so the loss pushes its log-ratio up less: length stops being a
    cheap way to win. Shapes: all inputs (B,); returns losses (B,). Lengths are used only by R-DPO.
    """
    _check_label_smoothing(label_smoothing, "dpo")
    if length_alpha < 0:
        raise ValueError(f"dpo: length_alpha must be >= 0, got {length_alpha}")
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, "dpo")
    z = beta * h
    if length_alpha > 0:
        z = z + length_alpha * (chosen_lengths - rejected_lengths)
    losses = _smoothed_sigmoid_loss(z, label_smoothing)
    return losses, _reference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                      reference_rejected_logps, beta)


def robust_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
                    reference_rejected_logps: Tensor, *, chosen_lengths: Tensor, rejected_lengths: Tensor,
                    beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Robust DPO (rDPO), Chowdhury et al. 2024 ("Provably Robust DPO"), eq. 9, the unbiased loss under labels
    flipped with known probability eps = ``label_smoothing`` in [0, 0.5):
    L = (-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps).

    At eps = 0 it is DPO. Shapes: all inputs (B,); returns losses (B,).
    """
    _check_label_smoothing(label_smoothing, "robust")
    eps = label_smoothing
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, "robust")
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return losses, _reference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                      reference_rejected_logps, beta)


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
               reference_rejected_logps: Tensor, *, chosen_lengths: Tensor, rejected_lengths: Tensor,
               beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Hinge loss on the log-ratio margin: the rank-calibration loss of SLiC-HF (Zhao et al. 2023,
    "SLiC-HF: Sequence Likelihood Calibration with Human Feedback") applied to reference log-ratios, as in
    RSO (Liu et al. 2024): L = max(0, 1 - beta * h), i.e. margin delta = 1 / beta.

    Zero once beta * h >= 1. Shapes: all inputs (B,); returns losses (B,).
    """
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, "hinge")
    losses = torch.relu(1 - beta * h)
    return losses, _reference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                      reference_rejected_logps, beta)


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
             reference_rejected_logps: Tensor, *, chosen_lengths: Tensor, rejected_lengths: Tensor,
             beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO, Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human Preferences"),
    eq. 17: L = (h_norm - 1 / (2 beta))^2, a squared loss that regresses the margin to 1 / (2 beta) instead of
    pushing it to infinity.

    ``beta`` is the paper's tau. The paper writes h on whole sequences; here, as in TRL, h_norm uses
    length-normalised log-ratios (mean token log-probs) so long completions do not dominate the margin:
    h_norm = (pi_c / |y_w| - ref_c / |y_w|) - (pi_r / |y_l| - ref_r / |y_l|).
    Rewards in the metrics are beta * (sum log-ratios), like every reference-based loss here.
    Shapes: all inputs (B,); returns losses (B,).
    """
    if beta <= 0:
        raise ValueError(f"ipo: beta must be > 0, got {beta}")
    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError("ipo needs reference log-probs (reference_chosen_logps, reference_rejected_logps)")
    chosen_log_ratio = _mean_logps(policy_chosen_logps - reference_chosen_logps, chosen_lengths)
    rejected_log_ratio = _mean_logps(policy_rejected_logps - reference_rejected_logps, rejected_lengths)
    h_norm = chosen_log_ratio - rejected_log_ratio
    losses = (h_norm - 1 / (2 * beta)) ** 2
    return losses, _reference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                      reference_rejected_logps, beta)


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor | None = None, reference_rejected_logps: Tensor | None = None, *,
               chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float, gamma: float = 0.5,
               label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO, Meng et al. 2024 ("SimPO: Simple Preference Optimization with a Reference-Free Reward"), eq. 6:
    L = -log sigma(beta / |y_w| log pi(y_w) - beta / |y_l| log pi(y_l) - gamma).

    Reference-free (reference logps are ignored). The implicit reward is beta times the mean token log-prob.
    ``gamma`` is the absolute target reward margin (the paper's gamma, not the gamma / beta ratio some
    implementations take). ``label_smoothing`` eps > 0 smooths it like cDPO.
    Shapes: all inputs (B,); returns losses (B,).
    """
    _check_label_smoothing(label_smoothing, "simpo")
    chosen_rewards = beta * _mean_logps(policy_chosen_logps, chosen_lengths)
    rejected_rewards = beta * _mean_logps(policy_rejected_logps, rejected_lengths)
    losses = _smoothed_sigmoid_loss(chosen_rewards - rejected_rewards - gamma, label_smoothing)
    return losses, _metrics(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, accurate at both ends (Maechler 2012): log(-expm1(a)) near 0, log1p(-exp(a))
    far below. ``a`` is clamped just below 0 so a mean log-prob of exactly 0 gives a finite value."""
    a = a.clamp(max=-torch.finfo(a.dtype).eps)
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def orpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              reference_chosen_logps: Tensor | None = None, reference_rejected_logps: Tensor | None = None, *,
              chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO, Hong et al. 2024 ("ORPO: Monolithic Preference Optimization without Reference Model"), eq. 6-7:
    L = L_SFT + lambda * L_OR, with L_SFT = -a_w (token-mean NLL of the chosen completion) and
    L_OR = -log sigma(log odds(y_w) - log odds(y_l)), where a = log pi(y|x) / |y| is the mean token log-prob,
    odds = P / (1 - P) with P = exp(a), so log odds = a - log(1 - exp(a)).

    Reference-free (reference logps are ignored). ``beta`` is the paper's lambda.
    Extra metrics: ``orpo/log_odds`` (log odds ratio), ``orpo/nll`` (L_SFT). Shapes: inputs (B,); losses (B,).
    """
    a_chosen = _mean_logps(policy_chosen_logps, chosen_lengths)
    a_rejected = _mean_logps(policy_rejected_logps, rejected_lengths)
    log_odds = (a_chosen - _log1mexp(a_chosen)) - (a_rejected - _log1mexp(a_rejected))
    nll = -a_chosen
    losses = nll - beta * F.logsigmoid(log_odds)
    metrics = _metrics(beta * a_chosen, beta * a_rejected, policy_chosen_logps, policy_rejected_logps)
    metrics.update({"orpo/log_odds": log_odds.detach(), "orpo/nll": nll.detach()})
    return losses, metrics


def rpo_nll_term(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Token-mean NLL of the chosen completion (B,), -log pi(y_w|x) / |y_w|: the term RPO (Pang et al. 2024,
    "Iterative Reasoning Preference Optimization", the L_DPO+NLL objective) adds to DPO with weight alpha.
    Inputs (B,): summed chosen log-probs and chosen lengths."""
    return -_mean_logps(policy_chosen_logps, chosen_lengths)
