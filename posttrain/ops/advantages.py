"""Advantages and rewards for online RL: GAE, group-normalised advantages (GRPO), whitening, per-token rewards with
a KL penalty, and the adaptive KL controller.

Shapes: ``B`` sequences, ``T`` completion positions, right-padded; ``mask`` (B, T) is 1 on completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    mean = masked_mean(x, mask)
    if mask is None:
        n = torch.tensor(float(x.numel()))
        var = ((x - mean) ** 2).mean()
    else:
        m = mask.to(x.dtype)
        n = m.sum()
        var = (((x - mean) ** 2) * m).sum() / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8,
           reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x - mean) / std over the masked entries (``shift_mean`` False keeps the mean: used for rewards, whose sign
    carries meaning). Entries outside the mask are returned as 0. ``reduce``: sums a tensor over processes, so
    the mean and (unbiased) variance are those of every process's entries together."""
    if reduce is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        xd, md = x.double(), m.double()
        s = reduce(torch.stack([(xd * md).sum(), (xd * xd * md).sum(), md.sum()]).cpu())
        n = float(s[2])
        mean_d = s[0] / max(n, 1.0)
        var_d = (s[1] / max(n, 1.0) - mean_d ** 2).clamp(min=0) * (n / (n - 1) if n > 1 else 1.0)
        mean, var = mean_d.to(x.dtype).to(x.device), var_d.to(x.dtype).to(x.device)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask.to(x.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation, Schulman et al. 2016 ("High-Dimensional Continuous Control Using GAE"),
    eq. 16: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}; V after the last completion
    token is 0 (the episode ends).

    Args: rewards, values, mask: (B, T). Returns (advantages, returns = advantages + values), both (B, T) and 0
    outside the mask.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # m[:, t] resets the running sum on padding, so a row's last real token sees V_{T}=0 and A_{T}=0
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m


def group_advantages(rewards: Tensor, group_size: int, *, scale_std: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO outcome advantages, Shao et al. 2024 (DeepSeekMath), sec. 4.1.2: A_i = (r_i - mean(group)) / std(group).

    Rows are grouped consecutively: rows ``[g*G, (g+1)*G)`` are the G samples of prompt g. ``scale_std`` False
    keeps only the mean subtraction (Dr. GRPO, Liu et al. 2025: dividing by std over-weights near-solved and
    near-impossible prompts). The std is the sample std (unbiased), as in the paper's implementations.

    Args: rewards (N,) with N divisible by ``group_size``. Returns (N,).
    """
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_std and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float) -> Tensor:
    """Per-token rewards of RLHF PPO (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2):
    r_t = -kl_coef * KL_t, plus the sequence score on its last completion token.

    Args: scores (B,), kl (B, T) per-token KL estimates, mask (B, T) (may start after a prompt). Returns (B, T)."""
    m = mask.to(kl.dtype)
    rewards = -kl_coef * kl * m
    positions = torch.arange(1, m.shape[1] + 1, device=m.device, dtype=m.dtype)
    last = (positions * m).argmax(-1)  # index of each row's last completion token
    has_tokens = m.sum(-1) > 0
    rewards[torch.arange(rewards.shape[0]), last] += torch.where(has_tokens, scores.to(kl.dtype),
                                                                 torch.zeros_like(scores, dtype=kl.dtype))
    return rewards


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant, negative worse."""
    var_r = masked_var(returns, mask)
    if float(var_r) == 0.0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_r)


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019, sec. 2.2: beta_{t+1} = beta_t (1 + K_beta e_t), e_t = clip(KL_t / target - 1, -0.2, 0.2),
    K_beta = n_steps / horizon. KL above target raises beta, below lowers it. ``target`` None keeps beta fixed."""

    value: float
    target: float | None = None
    horizon: float = 10000.0

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None and self.target > 0:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
