"""KTO on unpaired examples (prompt, completion, desirable or not), Ethayarajh et al. 2024.

The reference point z0 is the batch KL estimate: log-ratios of the policy to the reference on *mismatched*
(prompt i, completion i+1) sequences, averaged over every process, clamped at 0 and detached.
"""

from __future__ import annotations

import torch

from posttrain.data.collate import collate_sequences
from posttrain.data.render import Rendered
from posttrain.losses.kto import kto_loss
from posttrain.models.reference import build_reference, reference_model
from posttrain.ops.logprobs import sequence_logps
from posttrain.training.loop import StepFns, reduce_sum_fn
from posttrain.training.parallel import place_reference
from posttrain.training.run import run_offline_training, to_device


def mismatched(items: list[tuple[Rendered, bool]], max_length: int) -> list[Rendered]:
    """Prompt of row i followed by the completion of row i+1 (cyclic), for the KL reference point."""
    out = []
    for i, (r, _) in enumerate(items):
        other, _ = items[(i + 1) % len(items)]
        ids = r.input_ids[: r.prompt_length] + other.input_ids[other.prompt_length :]
        mask = [0] * r.prompt_length + other.loss_mask[other.prompt_length :]
        out.append(Rendered(input_ids=ids[:max_length], loss_mask=mask[:max_length], prompt_length=r.prompt_length))
    return out


def kto_step_fns(policy, frozen_reference, *, beta, desirable_weight, undesirable_weight, pad_token_id,
                 max_length, device, reduce_sum) -> StepFns:
    """``reduce_sum`` all-reduces a float64 tensor over processes (training); evaluation uses the local z0."""
    def collate(items):
        batch = to_device(collate_sequences([r for r, _ in items], pad_token_id), device)
        kl = to_device(collate_sequences(mismatched(items, max_length), pad_token_id), device)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.bool, device=device)
        return batch

    def weight(batch):
        return float(batch["labels"].numel())

    def loss(model, batch, reduce=reduce_sum):
        main = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        kl = (batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_loss_mask"])
        policy_logps, _, _ = sequence_logps(model, *main)
        with torch.no_grad():
            policy_kl_logps, _, _ = sequence_logps(model, *kl)
            with reference_model(policy, frozen_reference) as ref:
                reference_logps, _, _ = sequence_logps(ref, *main)
                reference_kl_logps, _, _ = sequence_logps(ref, *kl)
            # z0 = max(0, mean over every process's mismatched rows of log pi/pi_ref)
            totals = reduce(torch.tensor([float((policy_kl_logps - reference_kl_logps).sum()),
                                              float(policy_kl_logps.numel())], dtype=torch.float64))
            z0 = torch.tensor(max(0.0, float(totals[0] / totals[1])), device=policy_logps.device)
        losses, metrics = kto_loss(policy_logps, reference_logps, batch["labels"], z0, beta=beta,
                                   desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
        tokens = int(batch["attention_mask"].sum() + batch["kl_attention_mask"].sum())
        return losses.sum(), metrics, tokens

    # No reference cache here: the KL rows pair row i with row i+1 of the micro-batch, so their reference
    # log-probs depend on batch composition; the main rows alone would save only half the reference work.
    return StepFns(collate=collate, weight=weight, loss=loss, eval_loss=lambda m, b: loss(m, b, reduce=lambda t: t),
                   length=lambda item: len(item[0].input_ids))


def train_kto(cfg) -> dict:
    def build(model, data, accelerator):
        frozen, _ = build_reference(model, cfg.loss.reference, needs_reference=True)
        place_reference(frozen, cfg, accelerator)
        return kto_step_fns(model, frozen, beta=cfg.loss.beta, desirable_weight=cfg.loss.desirable_weight,
                            undesirable_weight=cfg.loss.undesirable_weight, pad_token_id=data.tokenizer.pad_token_id,
                            max_length=cfg.data.max_length, device=accelerator.device,
                            reduce_sum=reduce_sum_fn(accelerator))

    return run_offline_training(cfg, "kto", "unpaired", build)
