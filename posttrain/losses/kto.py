"""KTO on unpaired examples, Ethayarajh et al. 2024 ("KTO: Model Alignment as Prospect Theoretic Optimization").

Each example is one (prompt, completion) with a label: desirable or undesirable. The reference point z0 is an
estimate of KL(pi || pi_ref), computed on mismatched (prompt i, completion j) pairs so that it carries no
information about the labels, clamped at 0 and detached.

Distributed training: z0 must be the same on every process. Either all-reduce the sum of
``policy_kl_logps - reference_kl_logps`` and the row count and call ``kto_kl_reference_point_from_sums``, or
call ``kto_kl_reference_point`` on the gathered rows.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def kto_kl_reference_point(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """z0 = max(0, mean_i (log pi(y_j|x_i) - log pi_ref(y_j|x_i))), detached, a scalar tensor.

    Args: policy_kl_logps, reference_kl_logps (B,) summed log-probs of mismatched (prompt, completion) pairs.
    This is the local mean; see the module docstring for the distributed form.
    """
    log_ratios = (policy_kl_logps - reference_kl_logps).detach()
    return kto_kl_reference_point_from_sums(log_ratios.sum(), log_ratios.numel())


def kto_kl_reference_point_from_sums(log_ratio_sum: Tensor | float, count: Tensor | float) -> Tensor:
    """z0 = max(0, log_ratio_sum / count), detached: the form to use after all-reducing the sum and count of
    the mismatched-pair log-ratios over every process."""
    log_ratio_sum = torch.as_tensor(log_ratio_sum).detach()
    return (log_ratio_sum / count).clamp(min=0)


def kto_loss(policy_logps: Tensor, reference_logps: Tensor, labels: Tensor, kl_reference_point: Tensor | float, *,
             beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO loss, Ethayarajh et al. 2024, eq. 8: L = w(y) (1 - v(x, y)) with r = log pi(y|x) - log pi_ref(y|x) and

        v = sigma(beta (r - z0))    for desirable y,    weight w_D = ``desirable_weight``
        v = sigma(beta (z0 - r))    for undesirable y,  weight w_U = ``undesirable_weight``

    Args:
        policy_logps, reference_logps: (B,) summed completion log-probs.
        labels: (B,) bool, True where the completion is desirable.
        kl_reference_point: scalar tensor z0 (from ``kto_kl_reference_point``); treated as a constant.

    Returns:
        losses: (B,) per-example.
        metrics: detached (B,) tensors: ``rewards`` = beta * r, ``desirable`` 1.0 / 0.0 (a mask for averaging
            rewards of each kind), ``kl`` = z0 broadcast to (B,).
    """
    labels = labels.bool()
    r = policy_logps - reference_logps
    z0 = torch.as_tensor(kl_reference_point, dtype=r.dtype, device=r.device).detach()
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(labels, desirable_losses, undesirable_losses)
    metrics = {
        "rewards": (beta * r).detach(),
        "desirable": labels.to(r.dtype),
        "kl": z0.expand(r.shape[0]).clone(),
    }
    return losses, metrics
