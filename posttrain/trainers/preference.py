"""Preference optimisation on (prompt, chosen, rejected) pairs: DPO and its family (IPO, robust/cDPO, hinge,
SimPO, ORPO, optional RPO NLL term). The loss is picked by name from ``posttrain.losses.LOSSES``.

Chosen and rejected sequences go through the policy in one forward pass (rows ``[:B]`` chosen, ``[B:]``
rejected). The reference pass is skipped for reference-free losses.
"""

from __future__ import annotations

import torch

from posttrain.data.collate import collate_pairs
from posttrain.losses import get_loss, preference_loss
from posttrain.models.reference import build_reference, reference_model
from posttrain.ops.logprobs import sequence_logps
from posttrain.training.loop import StepFns
from posttrain.training.stage import run_training_stage, to_device


def preference_step_fns(policy, frozen_reference, *, loss_type: str, loss_params: dict, pad_token_id: int,
                        device) -> StepFns:
    spec = get_loss(loss_type)

    def collate(items):
        return to_device(collate_pairs(items, pad_token_id), device)

    def weight(batch):
        return float(batch["num_pairs"])

    def loss(model, batch):
        ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        b = batch["num_pairs"]
        logps, counts, _ = sequence_logps(model, ids, attn, mask)
        ref = {}
        if spec.needs_reference:
            with torch.no_grad(), reference_model(policy, frozen_reference) as ref_model:
                ref_logps, _, _ = sequence_logps(ref_model, ids, attn, mask)
            ref = {"reference_chosen_logps": ref_logps[:b], "reference_rejected_logps": ref_logps[b:]}
        losses, metrics = preference_loss(
            loss_type,
            policy_chosen_logps=logps[:b],
            policy_rejected_logps=logps[b:],
            chosen_lengths=counts[:b].float(),
            rejected_lengths=counts[b:].float(),
            **ref,
            **loss_params,
        )
        return losses.sum(), metrics, int(attn.sum())

    return StepFns(collate=collate, weight=weight, loss=loss)


def loss_params(loss_cfg) -> dict:
    """The config values the chosen loss declares, plus beta and rpo_alpha (which every paired loss takes)."""
    spec = get_loss(loss_cfg.type)
    params = {"beta": loss_cfg.beta, "rpo_alpha": loss_cfg.rpo_alpha}
    params.update({name: getattr(loss_cfg, name) for name in spec.params if hasattr(loss_cfg, name)})
    return params


def train_preference(cfg) -> dict:
    spec = get_loss(cfg.loss.type)

    def build(model, data, accelerator):
        frozen, kind = build_reference(model, cfg.loss.reference, spec.needs_reference)
        if frozen is not None:
            frozen.to(accelerator.device)
        return preference_step_fns(model, frozen, loss_type=cfg.loss.type, loss_params=loss_params(cfg.loss),
                                   pad_token_id=data.tokenizer.pad_token_id, device=accelerator.device)

    return run_training_stage(cfg, "dpo", "preference", build)
