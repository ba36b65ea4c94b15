"""Supervised fine-tuning: token-mean NLL on assistant tokens only (every assistant turn of a conversation).

With ``data.packing`` each micro-batch is one padding-free row (``ops/packing.py``); with
``data.prefix_sharing`` (on by default) prefix-tree rows (the rows' common system prompt computed once). The loss
normaliser (loss tokens of the whole step) is the same in every layout, so they all take the same steps."""

from __future__ import annotations

from posttrain.data.collate import collate_sequences, pack_rendered, tree_rendered
from posttrain.losses.sft import sft_loss, sft_loss_from_sums
from posttrain.ops.layouts import count_tokens, layout
from posttrain.training.loop import StepFns
from posttrain.training.run import (TrainingData, TrainingRun, resolve_prefix_sharing, run_offline_training,
                                    to_device, train_on_data)


def sft_step_fns(pad_token_id: int, device, packing: bool = False, prefix_sharing: bool = False,
                 max_row_tokens: int | None = None) -> StepFns:
    def collate(items):
        if prefix_sharing:
            return to_device(tree_rendered(items, max_row_tokens=max_row_tokens), device)
        return to_device(pack_rendered(items) if packing else collate_sequences(items, pad_token_id), device)

    def weight(batch):
        return layout(batch).loss_tokens(batch)

    def loss(model, batch):
        kind = layout(batch)
        logps_sum, counts, token_logps = kind.sequence_logps(model, batch)
        if kind.token_level:
            losses, metrics = sft_loss(token_logps, batch["loss_mask"][:, 1:])
        else:  # packed and tree batches give per-sequence sums
            losses, metrics = sft_loss_from_sums(logps_sum, counts)
        return losses.sum(), {"nll": metrics["nll_mean"]}, count_tokens(batch)

    return StepFns(collate=collate, weight=weight, loss=loss, length=lambda r: len(r.input_ids))


def sft_builder(cfg):
    """``build_fns`` of the SFT trainer for ``train_on_data``: the micro-batch layout the config asks for
    (``data.prefix_sharing`` resolved for the loaded model, ``data.packing`` where the data section has it)."""
    def build(model, data, accelerator):
        resolve_prefix_sharing(cfg, model)
        return sft_step_fns(data.tokenizer.pad_token_id, accelerator.device,
                            packing=getattr(cfg.data, "packing", False), prefix_sharing=cfg.data.prefix_sharing,
                            max_row_tokens=cfg.data.tree_row_tokens)

    return build


def train_sft(cfg) -> dict:
    return run_offline_training(cfg, "sft", "sft", sft_builder(cfg))


def train_sft_on(run: TrainingRun, data: TrainingData, outputs: dict[str, str] | None = None) -> dict:
    """The SFT trainer on rows another command made (rejection-SFT's winners) in its already opened ``run``."""
    return train_on_data(run, data, sft_builder(run.cfg), outputs)
