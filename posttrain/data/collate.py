"""Rendered sequences to padded tensors.

Padding is on the right, so position ids are 0..len-1 for every row as in pretraining and the loss mask is a
plain prefix-aligned copy. Pairs go into one batch, chosen rows ``[:B]`` then rejected rows ``[B:]``, so the
policy (and the reference) runs one forward pass per step instead of two.
"""

from __future__ import annotations

import torch

from posttrain.data.render import Rendered


def collate_sequences(seqs: list[Rendered], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``loss_mask``: each (B, T) long, T = the longest sequence."""
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the eos token)")
    width = max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_pairs(pairs: list[tuple[Rendered, Rendered]], pad_token_id: int) -> dict:
    """One (2B, T) batch: rows ``[:B]`` chosen, ``[B:]`` rejected, plus ``num_pairs`` = B."""
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    batch = collate_sequences([c for c, _ in pairs] + [r for _, r in pairs], pad_token_id)
    batch["num_pairs"] = len(pairs)
    return batch


def count_tokens(batch: dict) -> int:
    """Non-padding tokens in a collated batch."""
    return int(batch["attention_mask"].sum())
