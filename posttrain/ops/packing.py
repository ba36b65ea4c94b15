"""Padding-free packing: several sequences concatenated into one row, attention kept inside each sequence.

A packed batch of S sequences of lengths L_1..L_S is one row of N = sum L_i tokens with ``position_ids``
restarting at 0 for every sequence and no ``attention_mask``. transformers (5.x ``masking_utils``) reads the
restarts from ``position_ids`` and keeps attention block-diagonal: flash-attention varlen kernels on GPU
(``cu_seqlens`` from the restarts), a block-diagonal causal mask for SDPA/eager on CPU. So a sequence sees only
itself, exactly as in a padded batch, and no FLOPs are spent on padding.

The first token of every sequence gets loss-mask 0 here: as a *target* it would be predicted by the previous
sequence's last token. Rendered sequences never train on their first token anyway (it is prompt), so the
number of loss tokens, and with it the loss normaliser, is the same packed or padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_sequences(input_ids: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]]) -> dict:
    """One packed row from S sequences.

    Returns ``input_ids``, ``position_ids``, ``loss_mask``, ``seq_index`` (each (1, N) long; ``seq_index`` says
    which of the S sequences a token belongs to), ``num_seqs`` = S and ``lengths`` (S,) long.
    """
    if not input_ids:
        raise ValueError("cannot pack an empty batch")
    if len(input_ids) != len(loss_masks):
        raise ValueError(f"{len(input_ids)} sequences but {len(loss_masks)} loss masks")
    lengths = torch.tensor([len(s) for s in input_ids], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("cannot pack an empty sequence")
    ids = torch.tensor([t for s in input_ids for t in s], dtype=torch.long)
    mask = torch.tensor([m for s in loss_masks for m in s], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths  # (S,) offset of each sequence in the row
    seq_index = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N,)
    position_ids = torch.arange(len(ids)) - starts[seq_index]
    mask[starts] = 0
    return {"input_ids": ids[None], "position_ids": position_ids[None], "loss_mask": mask[None],
            "seq_index": seq_index[None], "num_seqs": len(lengths), "lengths": lengths}


def block_diagonal_causal_mask(seq_index: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) bool, True where query i may attend to key j: same sequence and j <= i.

    For models whose attention does not read packed ``position_ids``: pass it as a 4D ``attention_mask``."""
    same = seq_index[:, :, None] == seq_index[:, None, :]
    n = seq_index.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=seq_index.device).tril()
    return (same & causal)[:, None]
