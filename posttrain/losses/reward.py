"""Reward-model losses: the Bradley-Terry pairwise loss, with an optional per-pair margin and reward centering."""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       *, centering_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise reward-model loss, L = -log sigma(r_c - r_r - m) + c (r_c + r_r)^2.

    - Bradley & Terry 1952 ("Rank analysis of incomplete block designs"), as used for RLHF reward models by
      Ouyang et al. 2022 (InstructGPT), eq. 1.
    - ``margin`` m: Touvron et al. 2023 (Llama 2), eq. 2, a per-pair margin from the preference strength
      (0 gives plain Bradley-Terry).
    - ``centering_coef`` c: the auxiliary term of Eisenstein et al. 2023 ("Helping or Herding?", sec. 3), which
      pins the reward's mean to zero; BT is invariant to a shared shift, so without it rewards can drift.

    Args:
        chosen_rewards, rejected_rewards: (B,) scalar rewards of the preferred and dispreferred responses.
        margin: (B,) or a number or None.
        centering_coef: >= 0.

    Returns:
        losses: (B,) per pair.
        metrics: detached (B,) ``accuracy`` (1 where r_c > r_r), ``margin`` (r_c - r_r), ``chosen``, ``rejected``.
    """
    if centering_coef < 0:
        raise ValueError(f"centering_coef must be >= 0, got {centering_coef}")
    diff = chosen_rewards - rejected_rewards
    m = torch.zeros_like(diff) if margin is None else torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    losses = -F.logsigmoid(diff - m)
    if centering_coef > 0:
        losses = losses + centering_coef * (chosen_rewards + rejected_rewards) ** 2
    metrics = {"accuracy": (diff > 0).to(diff.dtype).detach(), "margin": diff.detach(),
               "chosen": chosen_rewards.detach(), "rejected": rejected_rewards.detach()}
    return losses, metrics
