"""Supervised fine-tuning: token-mean NLL on assistant tokens only (every assistant turn of a conversation)."""

from __future__ import annotations

from posttrain.data.collate import collate_sequences
from posttrain.losses.sft import sft_loss
from posttrain.ops.logprobs import sequence_logps
from posttrain.training.loop import StepFns
from posttrain.training.stage import run_training_stage, to_device


def sft_step_fns(pad_token_id: int, device) -> StepFns:
    def collate(items):
        return to_device(collate_sequences(items, pad_token_id), device)

    def weight(batch):
        # Loss tokens are targets, i.e. loss_mask shifted by one (the first token predicts nothing).
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(model, batch):
        _, _, token_logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        losses, metrics = sft_loss(token_logps, batch["loss_mask"][:, 1:])
        return losses.sum(), {"nll": metrics["nll_mean"]}, int(batch["attention_mask"].sum())

    return StepFns(collate=collate, weight=weight, loss=loss)


def train_sft(cfg) -> dict:
    def build(model, data, accelerator):
        return sft_step_fns(data.tokenizer.pad_token_id, accelerator.device)

    return run_training_stage(cfg, "sft", "sft", build)
