"""Token log-probs from a causal LM: the one place trainers get log pi(y|x).

``gather_token_logps`` never builds a [tokens, vocab] float32 log-softmax: rows are processed in chunks in the
forward pass, and a custom autograd function recomputes each chunk's softmax in the backward pass, so the extra
memory is one float32 chunk plus the gradient of the logits (in the logits' dtype). Packed or sequence-parallel
variants can replace these functions without touching the trainers.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 logsumexp over a 50k-150k vocabulary loses most of its precision: upcast per chunk
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(label) for logits (N, V) and labels (N,); rows whose label is IGNORE_INDEX give 0."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        dtype = _compute_dtype(logits.dtype)
        ignore = labels == IGNORE_INDEX
        safe_labels = labels.long().masked_fill(ignore, 0)  # any valid index; the result is zeroed below
        token_logps = torch.empty(labels.shape, dtype=dtype, device=logits.device)
        logsumexps = torch.empty(labels.shape, dtype=dtype, device=logits.device)
        for start in range(0, logits.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            x = logits[rows].to(dtype)  # (chunk, V)
            logsumexps[rows] = torch.logsumexp(x, dim=-1)
            token_logps[rows] = x.gather(-1, safe_labels[rows].unsqueeze(-1)).squeeze(-1) - logsumexps[rows]
        token_logps.masked_fill_(ignore, 0.0)
        ctx.save_for_backward(logits, safe_labels, ignore, logsumexps)
        ctx.chunk_size = chunk_size
        return token_logps

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, safe_labels, ignore, logsumexps = ctx.saved_tensors
        # d log p(y) / d logits = onehot(y) - softmax(logits), per row; ignored rows get no gradient
        grad_rows = grad_output.masked_fill(ignore, 0.0).to(logsumexps.dtype)
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad_rows[rows].unsqueeze(-1)  # (chunk, 1)
            chunk = -torch.exp(logits[rows].to(logsumexps.dtype) - logsumexps[rows].unsqueeze(-1)) * g
            chunk.scatter_add_(-1, safe_labels[rows].unsqueeze(-1), g)
            grad_logits[rows] = chunk.to(logits.dtype)
        return grad_logits, None, None


def gather_token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log softmax(logits)[label] for every position, computed in chunks of ``chunk_size`` rows.

    Args:
        logits: (..., V) any float dtype; bf16/fp16 are upcast to float32 one chunk at a time.
        labels: (...) int token ids; positions equal to -100 are ignored and give 0.0.
        chunk_size: rows (token positions) per chunk; bounds the float32 working memory to chunk_size * V.

    Returns:
        (...) log-probs, float32 for half-precision logits, else the logits' dtype. Differentiable in logits.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    vocab = logits.shape[-1]
    flat = _ChunkedTokenLogps.apply(logits.reshape(-1, vocab), labels.reshape(-1), chunk_size)
    return flat.reshape(labels.shape)


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, loss_mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the loss tokens of each sequence under a causal LM.

    Logits at position t predict token t + 1, so target tokens are ``input_ids[:, 1:]`` selected by
    ``loss_mask[:, 1:]`` (and by ``attention_mask[:, 1:]``, so padding never counts). Works with any HF causal
    LM or PEFT-wrapped model: it only calls ``model(...)`` and reads ``.logits``.

    Args:
        input_ids, attention_mask, loss_mask: (B, T); loss_mask is 1 on the tokens to score (the completion).
        position_ids: (B, T) or None (the model derives them).

    Returns:
        logps_sum: (B,) sum of log-probs of the loss tokens.
        token_counts: (B,) float number of loss tokens.
        token_logps: (B, T - 1) per-target log-probs, 0 where the target is not a loss token.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits  # (B, T, V)
    target_mask = loss_mask[:, 1:].bool()
    if attention_mask is not None:
        target_mask &= attention_mask[:, 1:].bool()
    # Score all T positions (a view of the contiguous logits, no copy) against labels shifted left by one, with
    # the last position ignored, then drop it: avoids copying logits[:, :-1] into a new (B, T-1, V) tensor.
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:].masked_fill(~target_mask, IGNORE_INDEX)
    token_logps = gather_token_logps(logits, labels)[:, :-1]  # (B, T-1), 0 where not a target
    return token_logps.sum(-1), target_mask.sum(-1).to(token_logps.dtype), token_logps
