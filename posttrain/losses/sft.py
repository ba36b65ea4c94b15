"""Supervised fine-tuning loss: negative log-likelihood of the target (assistant) tokens."""

from __future__ import annotations

import torch


def sft_loss(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example summed NLL, L_i = -sum_t m_it log p(y_it | y_i<t).

    Sums, not means, per example: the trainer divides the global sum by the global token count, so gradient
    accumulation and data parallelism give exactly the token-mean loss of the full batch.

    Args:
        token_logps: (B, T) float, log-prob of each target token.
        loss_mask: (B, T) 0/1 (or bool), 1 where the token is trained on (assistant tokens, never padding).

    Returns:
        losses: (B,) summed NLL over the masked tokens.
        metrics: detached (B,) tensors, ``tokens`` (count of loss tokens, float) and ``nll_mean``
            (token-mean NLL per example, 0 for an example with no loss tokens).
    """
    mask = loss_mask.bool()
    # where, not multiply: a masked position holding -inf must not turn the sum into NaN
    losses = -torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)
    tokens = mask.sum(-1).to(token_logps.dtype)
    metrics = {"tokens": tokens, "nll_mean": (losses / tokens.clamp(min=1)).detach()}
    return losses, metrics


def sft_loss_from_sums(logps_sum: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sft_loss`` of sequences given as sums: packed and prefix-tree batches yield each sequence's summed
    target log-prob and loss-token count, not a (B, T) grid.

    Args:
        logps_sum: (S,) float, sum_t m_it log p(y_it | y_i<t) per sequence.
        counts: (S,) float, loss tokens per sequence.

    Returns:
        the same ``losses`` (S,) and ``metrics`` as ``sft_loss``.
    """
    losses = -logps_sum
    return losses, {"tokens": counts, "nll_mean": (losses / counts.clamp(min=1)).detach()}
