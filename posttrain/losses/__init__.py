"""Loss functions, and the one table that picks a loss by name.

Losses are pure functions of tensors and plain numbers (torch only; a test enforces it). Each ``LossSpec``
says what kind of data the loss trains on and whether it needs a reference model, so trainers can skip the
reference forward pass for reference-free losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from posttrain.losses.dpo import (dpo_loss, hinge_loss, ipo_loss, orpo_loss, robust_dpo_loss, rpo_nll_term,
                                  simpo_loss)
from posttrain.losses.kto import kto_kl_reference_point, kto_kl_reference_point_from_sums, kto_loss
from posttrain.losses.sft import sft_loss


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable
    kind: str  # "sft" | "paired" | "unpaired"
    needs_reference: bool
    default_beta: float | None
    params: tuple[str, ...]  # extra keyword params fn accepts, beyond the shared signature and beta
    paper: str


LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("sft", sft_loss, "sft", False, None, (), "negative log-likelihood of target tokens"),
    LossSpec("dpo", dpo_loss, "paired", True, 0.1, ("label_smoothing", "length_alpha"),
             "Rafailov et al. 2023, DPO, eq. 7; label_smoothing > 0 is cDPO (Mitchell 2023); length_alpha > 0 is "
             "R-DPO (Park et al. 2024, eq. 9)"),
    LossSpec("ipo", ipo_loss, "paired", True, 0.1, (), "Azar et al. 2023, IPO, eq. 17"),
    LossSpec("robust", robust_dpo_loss, "paired", True, 0.1, ("label_smoothing",),
             "Chowdhury et al. 2024, Provably Robust DPO, eq. 9"),
    LossSpec("hinge", hinge_loss, "paired", True, 0.1, (), "Zhao et al. 2023, SLiC-HF (hinge on log-ratios)"),
    LossSpec("simpo", simpo_loss, "paired", False, 2.0, ("gamma", "label_smoothing"), "Meng et al. 2024, SimPO, eq. 6"),
    LossSpec("orpo", orpo_loss, "paired", False, 0.1, (), "Hong et al. 2024, ORPO, eq. 6-7 (beta is lambda)"),
    LossSpec("kto", kto_loss, "unpaired", True, 0.1, ("desirable_weight", "undesirable_weight"),
             "Ethayarajh et al. 2024, KTO, eq. 8"),
)}

# the choices of `posttrain dpo`'s loss.type (config.py reads them from here)
PAIRED_LOSS_TYPES: tuple[str, ...] = tuple(name for name, spec in LOSSES.items() if spec.kind == "paired")


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]


def preference_loss(loss: str | LossSpec, *, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    reference_chosen_logps: torch.Tensor | None = None,
                    reference_rejected_logps: torch.Tensor | None = None, chosen_lengths: torch.Tensor,
                    rejected_lengths: torch.Tensor, beta: float | None = None, rpo_alpha: float = 0.0,
                    **params) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Any paired loss, by name or by its ``LossSpec`` (what a trainer looked up once per run), with shapes as in
    ``posttrain.losses.dpo``: logps and lengths (B,), returns losses (B,) and detached (B,) metrics.

    ``beta`` None takes the loss's default. ``params`` may hold values for parameters other losses declare as
    long as they are None; a non-None value the loss does not declare is an error. ``rpo_alpha`` > 0 adds
    rpo_alpha * the chosen token-mean NLL (RPO, Pang et al. 2024) and the metric ``nll/chosen``.
    """
    spec = loss if isinstance(loss, LossSpec) else get_loss(loss)
    loss_type = spec.name
    if spec.kind != "paired":
        raise ValueError(f"loss '{loss_type}' trains on {spec.kind} data, not pairs; paired losses: "
                         f"{', '.join(PAIRED_LOSS_TYPES)}")
    unexpected = sorted(k for k, v in params.items() if v is not None and k not in spec.params)
    if unexpected:
        takes = ", ".join(("beta", "rpo_alpha") + spec.params)
        raise ValueError(f"loss '{loss_type}' does not take parameter(s) {', '.join(unexpected)} (it takes: {takes})")
    if spec.needs_reference and (reference_chosen_logps is None or reference_rejected_logps is None):
        raise ValueError(f"loss '{loss_type}' needs a reference model: pass reference_chosen_logps and "
                         f"reference_rejected_logps")
    beta = spec.default_beta if beta is None else beta
    if beta <= 0:
        raise ValueError(f"loss '{loss_type}': beta must be > 0, got {beta}")
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    losses, metrics = spec.fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps, chosen_lengths=chosen_lengths,
                              rejected_lengths=rejected_lengths, beta=beta,
                              **{k: v for k, v in params.items() if v is not None})
    if rpo_alpha > 0:
        nll = rpo_nll_term(policy_chosen_logps, chosen_lengths)
        losses = losses + rpo_alpha * nll
        metrics["nll/chosen"] = nll.detach()
    return losses, metrics


__all__ = [
    "LOSSES", "PAIRED_LOSS_TYPES", "LossSpec", "dpo_loss", "get_loss", "hinge_loss", "ipo_loss",
    "kto_kl_reference_point", "kto_kl_reference_point_from_sums", "kto_loss", "orpo_loss", "preference_loss",
    "robust_dpo_loss", "rpo_nll_term", "sft_loss", "simpo_loss",
]
