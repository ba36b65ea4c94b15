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


def prefix_tree(input_ids: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]]) -> dict:
    """One row holding S sequences as a token trie: a prefix shared by several sequences is stored once.

    A DPO micro-batch is the main user: chosen and rejected share their prompt, and every row shares the chat
    template's system prompt, so the trie holds about a third of the tokens of the padded batch. Each trie node
    (one token) attends to its ancestors and itself, at position = its depth: exactly the attention and
    positions it has in each of the sequences that pass through it, so every hidden state equals the one a
    padded batch computes.

    Returns ``input_ids`` / ``position_ids`` (1, N) long, ``tree_mask`` (1, 1, N, N) bool (True: query i may
    attend to key j), and the targets of every sequence's loss tokens: ``pred_index`` (M,) the node whose
    hidden state predicts the target, ``labels`` (M,) the target token, ``target_seq`` (M,) its sequence;
    ``num_seqs`` = S, ``num_tokens`` = the sequences' total length (what a padded batch would process)."""
    if not input_ids:
        raise ValueError("cannot pack an empty batch")
    if len(input_ids) != len(loss_masks):
        raise ValueError(f"{len(input_ids)} sequences but {len(loss_masks)} loss masks")
    tokens: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    children: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> node
    pred, labels, target_seq = [], [], []
    for s, (seq, mask) in enumerate(zip(input_ids, loss_masks)):
        if len(seq) < 1:
            raise ValueError("cannot pack an empty sequence")
        node = -1
        for t, token in enumerate(seq):
            if t > 0 and mask[t]:
                pred.append(node)
                labels.append(token)
                target_seq.append(s)
            key = (node, int(token))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(token))
                depth.append(t)
                parent.append(node)
            node = children[key]
    n = len(tokens)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):  # nodes come after their parents: a node sees what its parent sees, and itself
        if parent[i] >= 0:
            allowed[i] = allowed[parent[i]]
        allowed[i, i] = True
    return {"input_ids": torch.tensor([tokens], dtype=torch.long),
            "position_ids": torch.tensor([depth], dtype=torch.long),
            "tree_mask": allowed[None, None],
            "pred_index": torch.tensor(pred, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "target_seq": torch.tensor(target_seq, dtype=torch.long),
            "num_seqs": len(input_ids), "num_tokens": sum(len(s) for s in input_ids)}
