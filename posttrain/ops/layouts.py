"""One class per batch layout, each owning what differs between them: how a batch's per-sequence log-probs are
computed, how many tokens it processes, and how many loss tokens it holds.

A collated batch is a dict of tensors tagged with its ``ops/packing.py::Layout`` under ``batch["layout"]`` (set by
the one builder of each layout: ``data/collate.py::collate_sequences``, ``ops/packing.py::pack_sequences``,
``ops/packing.py::prefix_tree``, the reward model's ``collate_rm``). ``layout(batch)`` gives the class for that
tag; trainers call its methods (or ``batch_sequence_logps`` / ``count_tokens``) and never test which keys a batch
has or which layout it is.

- ``Padded``: (B, T) right-padded rows; per-token log-probs come back too, so SFT takes its token-level loss.
- ``Packed``: one row of S sequences back to back (``position_ids`` restarting, ``seq_index``, ``num_seqs``).
- ``Tree``: prefix-tree rows, shared prefixes stored once under a 4D mask, one entry per loss token in
  ``pred_index`` / ``labels`` / ``target_seq``; it processes fewer tokens than it stands for.

The log-prob functions are looked up on ``ops/logprobs.py`` at call time (tests count the tokens they see).
"""

from __future__ import annotations

import torch

from posttrain.ops import logprobs
from posttrain.ops.packing import Layout, layout_of


class Padded:
    tag = Layout.PADDED
    token_level = True  # sequence_logps also returns (B, T-1) per-token log-probs

    @staticmethod
    def sequence_logps(model, batch: dict, chunk_size: int = logprobs.DEFAULT_CHUNK_SIZE):
        return logprobs.sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                       chunk_size=chunk_size)

    @staticmethod
    def tokens(batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    @staticmethod
    def loss_tokens(batch: dict) -> float:
        # targets are loss_mask shifted by one: the first token predicts nothing
        return float(batch["loss_mask"][:, 1:].sum())


class Packed:
    tag = Layout.PACKED
    token_level = False  # per-sequence sums (per-token log-probs of one long row are not split back)

    @staticmethod
    def sequence_logps(model, batch: dict, chunk_size: int = logprobs.DEFAULT_CHUNK_SIZE):
        return logprobs.sequence_logps(model, batch["input_ids"], None, batch["loss_mask"], batch["position_ids"],
                                       seq_index=batch["seq_index"], num_seqs=batch["num_seqs"],
                                       chunk_size=chunk_size)

    @staticmethod
    def tokens(batch: dict) -> int:
        return int(batch["input_ids"].numel())

    # packing zeroes each sequence's first token, so the padded count holds for a packed row too
    loss_tokens = staticmethod(Padded.loss_tokens)


class Tree:
    tag = Layout.TREE
    token_level = False

    @staticmethod
    def sequence_logps(model, batch: dict, chunk_size: int = logprobs.DEFAULT_CHUNK_SIZE):
        return (*logprobs.tree_sequence_logps(model, batch, chunk_size=chunk_size), None)

    @staticmethod
    def tokens(batch: dict) -> int:
        # every sequence's tokens (what the other layouts process), not the fewer ones its forward pass runs
        return int(batch["num_tokens"])

    @staticmethod
    def loss_tokens(batch: dict) -> float:
        return float(batch["labels"].numel())  # one label per loss token


LAYOUTS = {cls.tag: cls for cls in (Padded, Packed, Tree)}


def layout(batch: dict) -> type[Padded] | type[Packed] | type[Tree]:
    """The class of the batch's layout; a ValueError (``layout_of``) for a dict no batch builder made."""
    return LAYOUTS[layout_of(batch)]


def batch_sequence_logps(model, batch: dict, chunk_size: int = logprobs.DEFAULT_CHUNK_SIZE
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(per-sequence log-prob sums, loss-token counts, per-token log-probs or None) of a collated batch of any
    layout; sums are per row for padded batches and per sequence for packed and tree ones."""
    return layout(batch).sequence_logps(model, batch, chunk_size)


def count_tokens(batch: dict) -> int:
    """Tokens a batch stands for (non-padding; a prefix tree counts every sequence's tokens)."""
    return layout(batch).tokens(batch)
