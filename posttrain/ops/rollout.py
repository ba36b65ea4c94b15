"""Rollout sequences as tensors, and the forward pass that scores only their completion tokens (PPO, GRPO,
online DPO)."""

from __future__ import annotations

import torch

from posttrain.ops import logprobs
from posttrain.ops.packing import prefix_tree


def rollout_tensors(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int, device,
                    tree_row_tokens: int | None = None) -> dict:
    """Right-padded ``input_ids``, ``attention_mask``, ``loss_mask`` (N, T) (1 on completion tokens) and
    ``completion_mask`` (N, T-1): the loss mask in target space (position t scores token t+1).
    ``tree_row_tokens`` (not None: prefix sharing) makes ``completion_forward`` run each micro-batch as
    prefix-tree rows of at most that many nodes, so the G samples of a prompt share its forward pass."""
    n = len(prompt_ids)
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        loss_mask[i, len(p): len(p) + len(c)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
           "completion_mask": loss_mask[:, 1:].clone()}
    out = {k: v.to(device) for k, v in out.items()}
    out["tree_row_tokens"] = tree_row_tokens
    return out


def completion_forward(model, batch: dict, temperature: float = 1.0, with_logits: bool = False):
    """One forward pass scoring the completion tokens only: the head runs on the K completion positions, never
    on the whole (N, T, V), so prompts cost a trunk pass and nothing more. With ``batch["tree_row_tokens"]`` set
    (prefix sharing) the rows go through the trunk as prefix-tree rows (``ops/packing.py::prefix_tree``): a
    prompt shared by G samples is computed once, with the same hidden states as the padded batch.

    Returns (hidden (N, T-1, H) in target space: [:, t] is the state that predicts token t + 1 (zeros off the
    completion under prefix sharing), token_logps (N, T-1) under softmax(logits / temperature), 0 off the
    completion; and, with ``with_logits``, the tempered completion logits (K, V) in mask order). The temperature
    is the sampler's, so the ratio and the policy gradient are those of the distribution the tokens came from."""
    where = batch["completion_mask"].bool()  # (N, T-1): position t predicts token t + 1
    targets = batch["input_ids"][:, 1:][where]  # (K,)
    if batch.get("tree_row_tokens") is not None:
        lengths = batch["attention_mask"].sum(-1).tolist()
        ids, masks = batch["input_ids"].tolist(), batch["loss_mask"].tolist()
        tree = prefix_tree([row[:n] for row, n in zip(ids, lengths)], [m[:n] for m, n in zip(masks, lengths)],
                           max_row_tokens=batch["tree_row_tokens"])
        tree = {k: v.to(where.device) if isinstance(v, torch.Tensor) else v for k, v in tree.items()}
        # the tree lists each sequence's targets in order, sequence by sequence: the row-major order of `where`
        selected, head = logprobs.tree_target_hidden(model, tree, head_called=True)  # (K, H)
        hidden = selected.new_zeros((*where.shape, selected.shape[-1])).index_put(where.nonzero(as_tuple=True),
                                                                                  selected)
    else:
        parts = logprobs.split_head(model, head_called=True)  # the head runs as a module below (ZeRO-3 too)
        if parts is None:
            raise RuntimeError(f"{type(logprobs.unwrap_model(model)).__name__}: scoring completions needs logits = "
                               "lm_head(hidden) (models with soft-capped or scaled logits are not supported here)")
        # through the model's own forward (PEFT's disable_adapter and FSDP's hooks apply), head swapped out
        full, head = logprobs.trunk_forward(model, parts[0], input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"])  # (N, T, H)
        hidden = full[:, :-1]
        selected = hidden[where]
    logits = head(selected).float()  # (K, V)
    if temperature != 1.0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    token_logps = logps.new_zeros(where.shape).index_put(where.nonzero(as_tuple=True), logps)
    return (hidden, token_logps, logits) if with_logits else (hidden, token_logps)
