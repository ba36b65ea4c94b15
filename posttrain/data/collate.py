"""Rendered sequences to tensors: padded (B, T) batches, or one padding-free packed row.

Padding is on the right, so position ids are 0..len-1 for every row as in pretraining and the loss mask is a
plain prefix-aligned copy. Pairs go into one batch, chosen rows ``[:B]`` then rejected rows ``[B:]``, so the
policy (and the reference) runs one forward pass per step instead of two. Packed batches
(``ops/packing.py``) keep the same order of sequences: chosen ``0..B-1``, then rejected ``B..2B-1``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from posttrain.data.render import Rendered
from posttrain.ops.packing import Layout, pack_sequences, prefix_tree


def collate_sequences(seqs: list[Rendered], pad_token_id: int) -> dict:
    """A ``Layout.PADDED`` batch: ``input_ids``, ``attention_mask``, ``loss_mask``, each (B, T) long, T = the
    longest sequence."""
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
    return {"layout": Layout.PADDED, "input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def pack_rendered(seqs: list[Rendered]) -> dict:
    """One packed row (``input_ids``, ``position_ids``, ``loss_mask``, ``seq_index``: (1, N); ``num_seqs``), no
    ``attention_mask``: attention stays inside each sequence through the restarting ``position_ids``."""
    return pack_sequences([s.input_ids for s in seqs], [s.loss_mask for s in seqs])


def tree_rendered(seqs: list[Rendered], units: list[list[int]] | None = None, max_row_tokens: int | None = None
                  ) -> dict:
    """Prefix-tree rows (``ops/packing.py::prefix_tree``): shared prefixes stored once, a tree mask per row."""
    return prefix_tree([s.input_ids for s in seqs], [s.loss_mask for s in seqs], units=units,
                       max_row_tokens=max_row_tokens)


def collate_pairs(pairs: list[tuple[Rendered, Rendered]], pad_token_id: int, packing: bool = False,
                  prefix_sharing: bool = False, max_row_tokens: int | None = None) -> dict:
    """One (2B, T) batch (or one packed row of 2B sequences, or prefix-tree rows where shared prompt tokens are
    stored once, a pair's chosen and rejected always in the same row): ``[:B]`` chosen, ``[B:]`` rejected;
    ``num_pairs``."""
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    if prefix_sharing:
        b = len(pairs)
        batch = tree_rendered(seqs, units=[[i, b + i] for i in range(b)], max_row_tokens=max_row_tokens)
    else:
        batch = pack_rendered(seqs) if packing else collate_sequences(seqs, pad_token_id)
    batch["num_pairs"] = len(pairs)
    return batch


def sequence_key(seq: Rendered) -> str:
    """Content hash of a rendered sequence (token ids and loss mask): the key of cached reference log-probs.
    It covers the data, the chat template, the truncation and max length, since all of them shape the tokens."""
    h = hashlib.blake2b(np.asarray(seq.input_ids, dtype=np.int64).tobytes(), digest_size=16)
    h.update(np.asarray(seq.loss_mask, dtype=np.int8).tobytes())
    return h.hexdigest()
