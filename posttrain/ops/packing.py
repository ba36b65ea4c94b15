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
from enum import Enum

import torch


class Layout(str, Enum):
    """How a collated batch holds its sequences. Every batch builder writes one under ``batch["layout"]``; the
    class of that layout (``ops/layouts.py``: ``Padded``, ``Packed``, ``Tree``) computes its log-probs, token and
    loss-token counts, so no consumer guesses from which keys are present.

    - ``PADDED``: (B, T) right-padded rows, ``input_ids`` / ``attention_mask`` (/ ``loss_mask``)
      (``data/collate.py::collate_sequences``);
    - ``PACKED``: one row of S sequences back to back, ``position_ids`` restarting, ``seq_index``, ``num_seqs``, no
      attention mask (``pack_sequences``);
    - ``TREE``: prefix-tree rows, shared prefixes stored once, a 4D ``tree_mask``, one entry per loss token in
      ``pred_index`` / ``labels`` / ``target_seq`` (``prefix_tree``).
    """

    PADDED = "padded"
    PACKED = "packed"
    TREE = "tree"


def layout_of(batch: dict) -> Layout:
    """The batch's ``Layout``; a ValueError for a dict no batch builder made."""
    try:
        return Layout(batch["layout"])
    except (KeyError, ValueError):
        raise ValueError(f"not a collated batch: 'layout' is {batch.get('layout')!r}, expected one of "
                         f"{[m.value for m in Layout]} (build batches with data/collate.py or ops/packing.py)") from None


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
    return {"layout": Layout.PACKED, "input_ids": ids[None], "position_ids": position_ids[None],
            "loss_mask": mask[None], "seq_index": seq_index[None], "num_seqs": len(lengths), "lengths": lengths}


def block_diagonal_causal_mask(seq_index: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) bool, True where query i may attend to key j: same sequence and j <= i.

    For models whose attention does not read packed ``position_ids``: pass it as a 4D ``attention_mask``."""
    same = seq_index[:, :, None] == seq_index[:, None, :]
    n = seq_index.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=seq_index.device).tril()
    return (same & causal)[:, None]


def prefix_tree(input_ids: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]], *,
                units: Sequence[Sequence[int]] | None = None, max_row_tokens: int | None = None) -> dict:
    """Rows holding S sequences as token tries: a prefix shared by several sequences of a row is stored once.

    A DPO micro-batch is the main user: chosen and rejected share their prompt, and every row shares the chat
    template's system prompt, so the trie holds about a third of the tokens of the padded batch. Each trie node
    (one token) attends to its ancestors and itself, at position = its depth: exactly the attention and
    positions it has in each of the sequences that pass through it, so every hidden state equals the one a
    padded batch computes.

    ``units``: groups of sequence indices kept in one row (a pair's chosen and rejected, so they share their
    prompt); default one unit per sequence. ``max_row_tokens``: a unit that would take a row past this many
    nodes starts a new row (a unit larger than it gets a row of its own); None: one row. The attention of a
    row is quadratic in its length, so long micro-batches split into several rows, right-padded to the longest
    (a padding node attends only to itself). The rows are then evened out: as many rows as that fill makes, at
    the narrowest width that still holds the units in order (``_balanced_rows``).

    Returns ``input_ids`` / ``position_ids`` (R, N) long, ``tree_mask`` (R, 1, N, N) bool (True: query i may
    attend to key j), and the targets of every sequence's loss tokens: ``pred_index`` (M,) the flat index
    (row * N + node) of the hidden state that predicts the target, ``labels`` (M,) the target token,
    ``target_seq`` (M,) its sequence; ``last_index`` (S,) the flat index of each sequence's last token (where
    a reward model reads its score); ``num_seqs`` = S, ``num_tokens`` = the sequences' total length (what a
    padded batch would process), ``num_nodes`` = the tokens the forward pass really runs."""
    if not input_ids:
        raise ValueError("cannot pack an empty batch")
    if len(input_ids) != len(loss_masks):
        raise ValueError(f"{len(input_ids)} sequences but {len(loss_masks)} loss masks")
    if any(len(seq) < 1 for seq in input_ids):
        raise ValueError("cannot pack an empty sequence")
    units = [list(u) for u in units] if units is not None else [[s] for s in range(len(input_ids))]
    if sorted(s for u in units for s in u) != list(range(len(input_ids))):
        raise ValueError(f"units must cover each of the {len(input_ids)} sequences exactly once")
    rows: list[_Trie] = []
    pred: list[tuple[int, int]] = []
    labels, target_seq = [], []
    last: list[tuple[int, int]] = [(0, 0)] * len(input_ids)
    for group in _balanced_rows(input_ids, units, max_row_tokens):
        r, trie = len(rows), _Trie()
        rows.append(trie)
        for s in (s for u in group for s in units[u]):
            for node, token in trie.insert(input_ids[s], loss_masks[s]):
                pred.append((r, node))
                labels.append(token)
                target_seq.append(s)
            last[s] = (r, trie.end)
    width = max(t.size for t in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    depth = torch.zeros(len(rows), width, dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # padding nodes see only themselves
    for r, t in enumerate(rows):
        ids[r, : t.size] = torch.tensor(t.tokens, dtype=torch.long)
        depth[r, : t.size] = torch.tensor(t.depth, dtype=torch.long)
        a = allowed[r]
        for i, parent in enumerate(t.parent):  # nodes come after their parents: a node sees what its parent sees
            if parent >= 0:
                a[i] |= a[parent]
    return {"layout": Layout.TREE, "input_ids": ids, "position_ids": depth, "tree_mask": allowed[:, None],
            "pred_index": torch.tensor([r * width + node for r, node in pred], dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "target_seq": torch.tensor(target_seq, dtype=torch.long),
            "last_index": torch.tensor([r * width + node for r, node in last], dtype=torch.long),
            "num_seqs": len(input_ids), "num_tokens": sum(len(s) for s in input_ids),
            "num_nodes": sum(t.size for t in rows)}


def _fill_rows(input_ids: Sequence[Sequence[int]], units: list[list[int]], budget: int | None
               ) -> tuple[list[list[int]], list[int]]:
    """Units (by index) in order, a new row started where the next unit would take the row past ``budget``
    nodes: (units of each row, nodes of each row)."""
    groups: list[list[int]] = [[]]
    trie = _Trie()
    sizes = [0]
    for u, unit in enumerate(units):
        seqs = [input_ids[s] for s in unit]
        if budget is not None and trie.size and trie.size + trie.new_nodes(seqs) > budget:
            groups.append([])
            sizes.append(0)
            trie = _Trie()
        for seq in seqs:
            trie.insert(seq, [0] * len(seq))  # sizing a row needs no targets
        groups[-1].append(u)
        sizes[-1] = trie.size
    return groups, sizes


def _balanced_rows(input_ids: Sequence[Sequence[int]], units: list[list[int]], budget: int | None
                   ) -> list[list[int]]:
    """The units of each row: as many rows as filling each up to ``budget`` takes, and the narrowest width that
    keeps that many. Rows are padded to the widest, so a full row beside a short one pays for the short one's
    padding (1500 nodes at a budget of 864: 864 + 636 nodes, padded to 2 x 864); the same two rows at about
    750 nodes each run a tenth fewer nodes and a quarter less attention. Found by bisecting the budget between
    the mean row and the widest row (a greedy fill per try: cheap next to the forward pass)."""
    groups, sizes = _fill_rows(input_ids, units, budget)
    if len(groups) < 2:
        return groups
    k, best, lo, hi = len(groups), (groups, max(sizes)), -(-sum(sizes) // len(groups)), max(sizes) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        g, s = _fill_rows(input_ids, units, mid)
        if len(g) <= k:
            if max(s) < best[1]:
                best = (g, max(s))
            hi = min(mid, max(s)) - 1
        else:
            lo = mid + 1
    return best[0]


class _Trie:
    """One row of ``prefix_tree``: nodes in insertion order (a parent always before its children)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.depth: list[int] = []
        self.parent: list[int] = []
        self.children: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> node
        self.end = -1  # the last node of the last inserted sequence

    @property
    def size(self) -> int:
        return len(self.tokens)

    def new_nodes(self, seqs: Sequence[Sequence[int]]) -> int:
        """Nodes that inserting ``seqs`` would add (without inserting them)."""
        extra: dict[tuple[int, int], int] = {}
        for seq in seqs:
            node = -1
            for token in seq:
                key = (node, int(token))
                node = self.children.get(key, extra.get(key))
                if node is None:
                    node = extra[key] = -2 - len(extra)
        return len(extra)

    def insert(self, seq: Sequence[int], mask: Sequence[int]) -> list[tuple[int, int]]:
        """Add ``seq``; returns (node whose hidden state predicts it, target token) for each loss token."""
        targets = []
        node = -1
        for t, token in enumerate(seq):
            if t > 0 and mask[t]:
                targets.append((node, int(token)))
            key = (node, int(token))
            if key not in self.children:
                self.children[key] = len(self.tokens)
                self.tokens.append(int(token))
                self.depth.append(t)
                self.parent.append(node)
            node = self.children[key]
        self.end = node
        return targets


def default_tree_row_tokens(config) -> int:
    """A prefix-tree row's node budget for a model: where the row's attention (quadratic: about 4 * hidden FLOPs
    per query-key pair and layer) costs about a quarter of its linear layers (about 8 * hidden^2 + 6 * hidden *
    ffn per token and layer), i.e. (2 * hidden + 1.5 * ffn) / 4 tokens; at least 512. SmolLM2-135M: 864; a
    7B Llama: about 6000."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    ffn = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    return max(512, int((2 * hidden + 1.5 * ffn) / 4))
