"""Policy-gradient losses for online RL on language models: KL estimators, the PPO clipped surrogate, the clipped
value loss, token entropy, and the GRPO loss with its length-normalisation variants.

Shapes: ``B`` sequences, ``T`` completion positions; ``mask`` (B, T) is 1 on completion tokens (0 on padding).
Per-token functions return (B, T) tensors zeroed outside the mask; reducing them is the trainer's business
(``reduce_sequence_losses`` below), so the loss normaliser can be exact across micro-batches.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, Schulman 2020 ("Approximating KL Divergence").

    With log r = log pi_ref(y) - log pi(y) for y ~ pi:
      k1 = -log r                  unbiased, high variance, can be negative;
      k2 = (log r)^2 / 2           biased, low variance, >= 0;
      k3 = (r - 1) - log r         unbiased, low variance, >= 0 (GRPO, Shao et al. 2024, eq. 4).

    Args: logps, ref_logps: (...) log-probs of the sampled tokens under the policy and the reference.
    Returns: (...) per-token estimates.
    """
    log_ratio = ref_logps - logps
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        # clamp: exp of a large log-ratio overflows in float32 and turns one bad token into inf
        return torch.exp(log_ratio.clamp(max=20.0)) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator '{kind}'; choose one of: {', '.join(KL_ESTIMATORS)}")


def ppo_clip_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, clip_range: float = 0.2,
                  clip_range_high: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate, Schulman et al. 2017 ("Proximal Policy Optimization Algorithms"), eq. 7, negated:

        l_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t),   rho_t = pi(y_t) / pi_old(y_t).

    ``clip_range_high`` (default: ``clip_range``) gives the asymmetric "clip-higher" of DAPO (Yu et al. 2025, eq. 10).
    The gradient vanishes where the clipped term is the smaller (ratio beyond the edge in the direction the
    advantage pushes), so a token is "clipped" exactly there.

    Args:
        logps, old_logps: (B, T) log-probs of the sampled tokens now and at sampling time.
        advantages: (B, T) per token, or (B,) per sequence (broadcast over tokens).
        mask: (B, T) 1 on completion tokens.

    Returns:
        losses: (B, T) per token, 0 outside the mask.
        metrics: detached (B, T) ``clipped`` (1.0 where the clipped branch is active), ``ratio``.
    """
    high = clip_range if clip_range_high is None else clip_range_high
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + high) * advantages
    m = mask.to(logps.dtype)
    losses = -torch.minimum(unclipped, clipped) * m
    is_clipped = (clipped < unclipped).to(logps.dtype) * m
    return losses, {"clipped": is_clipped.detach(), "ratio": (ratio * m).detach()}


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
                       clip_range: float | None = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """Value loss with the value clipped to ``old_values +- clip_range`` (Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences", following the OpenAI baselines PPO2 implementation):

        l_t = 1/2 max((V_t - R_t)^2, (clip(V_t, V_old - eps, V_old + eps) - R_t)^2).

    ``clip_range`` None gives the plain squared error. Shapes (B, T); returns per-token losses (0 outside the
    mask) and detached (B, T) ``clipped`` (1.0 where the clipped branch is the larger).
    """
    m = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * err * m, {"clipped": torch.zeros_like(err)}
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_clipped = (v_clipped - returns) ** 2
    losses = 0.5 * torch.maximum(err, err_clipped) * m
    return losses, {"clipped": ((err_clipped > err).to(values.dtype) * m).detach()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum softmax(z) z. (..., V) -> (...),
    computed in float32 for half-precision logits. Used for the entropy bonus (Mnih et al. 2016, A3C, sec. 4)."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lse = torch.logsumexp(z, dim=-1)
    return lse - (torch.softmax(z, dim=-1) * z).sum(-1)


def grpo_token_losses(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                      ref_logps: Tensor | None = None, beta: float = 0.0, clip_range: float = 0.2,
                      clip_range_high: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO per-token loss, Shao et al. 2024 ("DeepSeekMath"), eq. 3, negated:

        l_t = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) + beta * k3_t,

    A = the sequence's group-normalised advantage (``ops.advantages.group_advantages``), k3 the KL estimator of
    ``kl_estimate`` against the reference (skipped when ``beta`` is 0 or ``ref_logps`` None).

    Args: logps, old_logps, ref_logps, mask: (B, T); advantages: (B,).
    Returns: (B, T) losses (0 outside the mask) and detached (B, T) metrics ``clipped``, ``kl`` (0 without a
        reference).
    """
    losses, metrics = ppo_clip_loss(logps, old_logps, advantages, mask, clip_range=clip_range,
                                    clip_range_high=clip_range_high)
    m = mask.to(logps.dtype)
    if ref_logps is not None:
        kl = kl_estimate(logps, ref_logps, "k3") * m
        if beta > 0:
            losses = losses + beta * kl
        metrics["kl"] = kl.detach()
    else:
        metrics["kl"] = torch.zeros_like(losses).detach()
    return losses, metrics


def _per_sequence_mean(summed: Tensor, tokens: Tensor, max_tokens: int | None) -> Tensor:
    return summed / tokens.clamp(min=1)


def _per_token_sum(summed: Tensor, tokens: Tensor, max_tokens: int | None) -> Tensor:
    return summed


def _constant_normaliser(summed: Tensor, tokens: Tensor, max_tokens: int | None) -> Tensor:
    if not max_tokens or max_tokens <= 0:
        raise ValueError("loss_type 'dr_grpo' needs max_tokens > 0 (the generation budget)")
    return summed / max_tokens


# loss_type -> (per-sequence contribution from (summed token losses, token count, max_tokens), normaliser unit)
GRPO_REDUCTIONS = {
    "grpo": (_per_sequence_mean, "rows"),      # Shao et al. 2024, eq. 3
    "token": (_per_token_sum, "tokens"),       # Yu et al. 2025 (DAPO), eq. 8
    "dr_grpo": (_constant_normaliser, "rows"),  # Liu et al. 2025 (Dr. GRPO), eq. 3
}
GRPO_LOSS_TYPES = tuple(GRPO_REDUCTIONS)


def _reduction(loss_type: str):
    if loss_type not in GRPO_REDUCTIONS:
        raise ValueError(f"unknown GRPO loss type '{loss_type}'; choose one of: {', '.join(GRPO_LOSS_TYPES)}")
    return GRPO_REDUCTIONS[loss_type]


def reduce_sequence_losses(token_losses: Tensor, mask: Tensor, loss_type: str = "grpo",
                           max_tokens: int | None = None) -> Tensor:
    """Per-sequence contributions (B,) whose sum, divided by ``sequence_loss_weight``, is the batch loss:

    - ``grpo``: mean over each sequence's tokens, then mean over sequences (Shao et al. 2024, eq. 3; weight B).
      Long sequences' tokens count less, which Liu et al. 2025 show biases toward long wrong answers.
    - ``token``: sum over all tokens / all tokens in the batch (DAPO token-level loss, Yu et al. 2025, eq. 8;
      weight = the number of completion tokens).
    - ``dr_grpo``: sum over tokens / a constant ``max_tokens`` (Dr. GRPO, Liu et al. 2025, "Understanding
      R1-Zero-Like Training", eq. 3; weight B): unbiased in length; pair it with advantages not divided by std.
    """
    reduce, _ = _reduction(loss_type)
    m = mask.to(token_losses.dtype)
    return reduce((token_losses * m).sum(-1), m.sum(-1), max_tokens)


def sequence_loss_weight(mask: Tensor, loss_type: str = "grpo") -> float:
    """The loss normaliser of a micro-batch for ``reduce_sequence_losses``: tokens for ``token``, else rows."""
    _, unit = _reduction(loss_type)
    return float(mask.sum()) if unit == "tokens" else float(mask.shape[0])
