"""Model merging, one tensor at a time (torch only). Every function takes the same-shaped tensors of the models
being merged and returns the merged tensor; ``models/merge.py`` applies them to whole state dicts.

- ``linear`` (model soups, Wortsman et al. 2022): ``sum_i w_i theta_i / sum_i w_i``.
- ``task_arithmetic`` (Ilharco et al. 2023): ``theta_base + lam * sum_i w_i (theta_i - theta_base)``. With one
  model, ``base`` the model it was trained from and ``lam > 1`` this is ExPO (Zheng et al. 2024, "Weak-to-Strong
  Extrapolation Expedites Alignment"): ``theta_sft + alpha (theta_dpo - theta_sft)``, the preference update
  extrapolated past where training stopped.
- ``ties`` (Yadav et al. 2023), on the task vectors ``tau_i = theta_i - theta_base``: (1) trim: keep the
  ``density`` fraction of each ``tau_i``'s entries with the largest magnitude, zero the rest; (2) elect sign: per
  entry, the sign of ``sum_i w_i trimmed_i``; (3) disjoint mean: per entry, the mean of ``w_i trimmed_i`` over the
  models whose trimmed entry is non-zero and has the elected sign (0 where none); result
  ``theta_base + lam * merged``.
- ``dare`` (Yu et al. 2024) as the first step of ``dare_ties``: each entry of each ``tau_i`` is dropped with
  probability ``p = 1 - density`` (a seeded Bernoulli mask) and the kept ones are rescaled by ``1 / (1 - p)``; then
  TIES's sign election and disjoint mean (no trim).
- ``slerp`` (two models): spherical interpolation of the flattened tensors,
  ``sin((1-t) Omega)/sin(Omega) a + sin(t Omega)/sin(Omega) b`` with ``Omega`` the angle between them; linear
  interpolation where they are (anti)parallel within 1e-6.

Weights ``w_i`` are used as given (not normalised) in task arithmetic, TIES and DARE, as in the papers' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total == 0:
        raise ValueError("linear merge: the weights sum to 0")
    return sum(w * t.float() for w, t in zip(weights, tensors)) / total


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                    lam: float = 1.0) -> torch.Tensor:
    base = base.float()
    return base + lam * sum(w * (t.float() - base) for w, t in zip(weights, tensors))


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its ``density`` fraction of largest-magnitude entries set to 0 (``ceil`` of the count;
    ties at the threshold are kept)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density == 1 or tau.numel() == 0:
        return tau
    k = max(1, int(torch.ceil(torch.tensor(density * tau.numel())).item()))
    threshold = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def disjoint_merge(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES steps 2 and 3 on already trimmed (or dropped) task vectors."""
    weighted = torch.stack([w * t for w, t in zip(weights, taus)])
    sign = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(weighted) == sign) & (weighted != 0)
    count = agree.sum(dim=0)
    total = torch.where(agree, weighted, torch.zeros_like(weighted)).sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float,
         lam: float = 1.0) -> torch.Tensor:
    base = base.float()
    taus = [trim(t.float() - base, density) for t in tensors]
    return base + lam * disjoint_merge(taus, weights)


def dare(tau: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``1 - density`` and rescale the kept ones by ``1 / density``."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    keep = torch.rand(tau.shape, generator=generator) < density
    return torch.where(keep, tau / density, torch.zeros_like(tau))


def dare_ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float,
              generator: torch.Generator, lam: float = 1.0) -> torch.Tensor:
    base = base.float()
    taus = [dare(t.float() - base, density, generator) for t in tensors]
    return base + lam * disjoint_merge(taus, weights)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    if not 0 <= t <= 1:
        raise ValueError(f"slerp t must be in [0, 1], got {t}")
    a32, b32 = a.float().flatten(), b.float().flatten()
    na, nb = a32.norm(), b32.norm()
    if na == 0 or nb == 0:
        return ((1 - t) * a.float() + t * b.float())
    cos = torch.clamp(torch.dot(a32 / na, b32 / nb), -1.0, 1.0)
    if 1 - abs(float(cos)) < 1e-6:  # (anti)parallel: the sphere's arc degenerates; interpolate linearly
        return (1 - t) * a.float() + t * b.float()
    omega = torch.arccos(cos)
    s = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / s) * a32 + (torch.sin(t * omega) / s) * b32).reshape(a.shape)
