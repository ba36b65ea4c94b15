"""Token log-probs from a causal LM: the one place trainers get log pi(y|x).

Two memory savings, both exact (same numbers as a full ``log_softmax`` to float rounding):

* ``gather_token_logps`` never builds a [tokens, vocab] float32 log-softmax: rows are processed in chunks in the
  forward pass, and a custom autograd function recomputes each chunk's softmax in the backward pass.
* ``sequence_logps`` never builds the [B, T, V] logits at all when the model can be split into a decoder trunk
  and a linear output head (every HF causal LM whose ``forward`` is ``lm_head(hidden)``, PEFT-wrapped or not):
  the trunk runs once, the hidden states of the *target* positions only (completion tokens, not the prompt
  or padding) are selected, and the head is applied ``chunk_size`` tokens at a time inside a custom autograd
  function that recomputes each chunk's logits in the backward pass. Peak extra memory is one
  (chunk_size, V) float32 block instead of (B, T, V). A head that is not a plain ``nn.Linear`` (LoRA on
  ``lm_head``) is applied per chunk under activation checkpointing; models with logit soft-capping or scaling
  fall back to the plain path.

Packed batches (``ops/packing.py``: several sequences in one row, ``position_ids`` restarting at 0) go through
the same function with ``seq_index``; transformers then keeps attention inside each sequence. Prefix-tree rows
(``ops/packing.py::prefix_tree``: shared prefixes stored once, a 4D tree mask) go through
``tree_sequence_logps``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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


# Config attributes that mean "logits are not just lm_head(hidden)": such models use the plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale", "logit_scale_init")
DEFAULT_CHUNK_SIZE = 256  # tokens per head chunk: 256 x 49k vocab x 4 bytes = 50 MB of float32 logits


def unwrap_model(model):
    """The innermost model under DDP / DeepSpeed / PEFT wrappers (the ``XForCausalLM`` that owns ``lm_head``, or
    the ``XForSequenceClassification`` that owns ``score``)."""
    m = model
    for _ in range(4):
        if isinstance(m, nn.parallel.DistributedDataParallel) or type(m).__name__ in ("DistributedDataParallel",
                                                                                       "DeepSpeedEngine"):
            m = m.module
        elif hasattr(m, "get_base_model") and hasattr(m, "peft_config"):
            m = m.get_base_model()
        else:
            break
    return m


def split_head(model, head_called: bool = False):
    """(causal LM, output head) when ``model``'s logits are exactly ``head(last hidden state)``, else None.
    ``head_called``: the caller runs the head as a module (``head(hidden)``), so a ZeRO-3 partitioned head works
    too (its hooks gather the weight for that call); the fused log-prob path reads the weight outside any forward,
    where ZeRO-3 holds only this process's partition, so without it such a head gives None (full logits)."""
    lm = unwrap_model(model)
    head = getattr(lm, "lm_head", None)
    if not isinstance(head, nn.Module) or not hasattr(lm, "get_output_embeddings"):
        return None
    if not head_called and hasattr(getattr(head, "weight", None), "ds_id"):
        return None
    try:
        if lm.get_output_embeddings() is not head:
            return None
    except (AttributeError, NotImplementedError):
        return None
    config = getattr(lm, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, False):
            return None
    return lm, head


@contextlib.contextmanager
def _head_removed(lm):
    """``lm``'s forward returns the last hidden states as ``.logits`` (the head is an identity meanwhile)."""
    head = lm.lm_head
    lm.lm_head = nn.Identity()
    try:
        yield head
    finally:
        lm.lm_head = head


def trunk_forward(model, lm, **inputs) -> tuple[torch.Tensor, nn.Module]:
    """(last hidden states, output head): ``model``'s forward with ``lm``'s head swapped for an identity. Through
    ``model`` itself, not its inner decoder: wrappers' forward hooks run (FSDP2 all-gathers the root's weights in
    them; calling the decoder directly would meet the embeddings still sharded)."""
    with _head_removed(lm) as head:
        hidden = model(**inputs, use_cache=False).logits
    if hidden.shape[-1] != getattr(head, "in_features", hidden.shape[-1]):
        raise RuntimeError(f"{type(lm).__name__}: forward did not return hidden states with the head removed")
    return hidden, head


class _LinearHeadLogps(torch.autograd.Function):
    """log softmax(hidden @ W.T + b)[label] for hidden (N, H), W (V, H), labels (N,), ``chunk`` rows at a time.

    Saves only hidden, W and the (N,) logsumexps; the backward recomputes each (chunk, V) block of logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):
        dtype = _compute_dtype(hidden.dtype)
        w = weight.to(hidden.dtype)
        b = bias.to(hidden.dtype) if bias is not None else None
        token_logps = torch.empty(labels.shape, dtype=dtype, device=hidden.device)
        logsumexps = torch.empty(labels.shape, dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = nn.functional.linear(hidden[rows], w, b).to(dtype)  # (chunk, V)
            logsumexps[rows] = torch.logsumexp(logits, dim=-1)
            token_logps[rows] = logits.gather(-1, labels[rows, None]).squeeze(-1) - logsumexps[rows]
        ctx.save_for_backward(hidden, weight, bias, labels, logsumexps)
        ctx.chunk = chunk
        return token_logps

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, bias, labels, logsumexps = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(hidden.dtype)
        b = bias.to(hidden.dtype) if bias is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=logsumexps.dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=logsumexps.dtype, device=bias.device) if need_b else None
        g_all = grad_output.to(logsumexps.dtype)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            g = g_all[rows, None]  # (chunk, 1)
            logits = nn.functional.linear(hidden[rows], w, b).to(logsumexps.dtype)
            # d log p(y) / d logits = onehot(y) - softmax(logits), scaled by the upstream gradient: (chunk, V)
            d = logits.sub_(logsumexps[rows, None]).exp_().mul_(-g)  # in place: one (chunk, V) buffer
            d.scatter_add_(-1, labels[rows, None], g)
            if need_h:
                grad_h[rows] = (d.to(hidden.dtype) @ w).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(d.t(), hidden[rows].to(d.dtype))
            if need_b:
                grad_b += d.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def head_token_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """log softmax(head(hidden))[label] for hidden (N, H) and labels (N,), never holding (N, V) logits."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=_compute_dtype(hidden.dtype))
    if type(head) is nn.Linear:
        return _LinearHeadLogps.apply(hidden, head.weight, head.bias, labels, chunk_size)
    # Any other head (LoRA on lm_head, a quantised linear): checkpoint each chunk so its logits are freed.
    def one(h, y):
        return gather_token_logps(head(h), y, chunk_size=chunk_size)

    parts = [checkpoint(one, hidden[s: s + chunk_size], labels[s: s + chunk_size], use_reentrant=False)
             if torch.is_grad_enabled() else one(hidden[s: s + chunk_size], labels[s: s + chunk_size])
             for s in range(0, hidden.shape[0], chunk_size)]
    return torch.cat(parts)


def target_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       target_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, split: bool = True) -> torch.Tensor:
    """(B, T-1) log p(input_ids[:, t+1] | ...) where ``target_mask`` (B, T-1) is set, 0 elsewhere.

    ``split=False`` (or a model that cannot be split) computes the full (B, T, V) logits, then gathers in
    chunks: the reference behaviour the split path is tested against."""
    parts = split_head(model) if split else None
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits  # (B, T, V)
        # Score all T positions (a view, no copy) against labels shifted left by one, the last one ignored.
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, :-1] = input_ids[:, 1:].masked_fill(~target_mask, IGNORE_INDEX)
        return gather_token_logps(logits, labels, chunk_size=chunk_size)[:, :-1]
    hidden, head = trunk_forward(model, parts[0], input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids)  # (B, T, H)
    where = target_mask.nonzero(as_tuple=True)  # target positions t: hidden[t] predicts input_ids[t + 1]
    selected = hidden[:, :-1][where]  # (N, H)
    labels = input_ids[:, 1:][where]  # (N,)
    logps = head_token_logps(head, selected, labels, chunk_size)  # (N,)
    out = logps.new_zeros(target_mask.shape)
    return out.index_put(where, logps)


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, loss_mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None, *, seq_index: torch.Tensor | None = None,
                   num_seqs: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, split: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the loss tokens of each sequence under a causal LM.

    Logits at position t predict token t + 1, so target tokens are ``input_ids[:, 1:]`` selected by
    ``loss_mask[:, 1:]`` (and by ``attention_mask[:, 1:]``, so padding never counts). Works with any HF causal
    LM or PEFT-wrapped model; the output head is applied to the target positions only, in chunks.

    Args:
        input_ids, attention_mask, loss_mask: (B, T); loss_mask is 1 on the tokens to score (the completion).
        position_ids: (B, T) or None (the model derives them). Packed rows pass restarting positions and no
            attention_mask.
        seq_index: (B, T) long, packed rows only: which sequence each token belongs to (0..num_seqs-1); the sums
            are then per sequence, not per row. The loss mask must be 0 on each sequence's first token.

    Returns:
        logps_sum: (B,) or (num_seqs,) sum of log-probs of the loss tokens.
        token_counts: same shape, float number of loss tokens.
        token_logps: (B, T - 1) per-target log-probs, 0 where the target is not a loss token.
    """
    target_mask = loss_mask[:, 1:].bool()
    if attention_mask is not None:
        target_mask &= attention_mask[:, 1:].bool()
    token_logps = target_token_logps(model, input_ids, attention_mask, target_mask, position_ids, chunk_size, split)
    if seq_index is None:
        return token_logps.sum(-1), target_mask.sum(-1).to(token_logps.dtype), token_logps
    index = seq_index[:, 1:].reshape(-1)
    n = int(num_seqs) if num_seqs is not None else int(seq_index.max()) + 1
    sums = token_logps.new_zeros(n).index_add(0, index, token_logps.reshape(-1))
    counts = token_logps.new_zeros(n).index_add(0, index, target_mask.reshape(-1).to(token_logps.dtype))
    return sums, counts, token_logps


def attention_implementation(model) -> str:
    """The attention implementation the model runs ("sdpa", "eager", "flash_attention_2", ...; "" if unknown)."""
    return str(getattr(getattr(unwrap_model(model), "config", None), "_attn_implementation", None) or "")


def takes_tree_mask(model) -> bool:
    """Whether the model's attention accepts the prefix tree's 4D mask (flash-attention does not)."""
    return "flash" not in attention_implementation(model)


def tree_forward_mask(model, tree_mask: torch.Tensor) -> torch.Tensor:
    """The prefix-tree mask as ``model``'s attention takes it: bool for SDPA, additive float for eager; a clear
    error for flash-attention (no 4D masks)."""
    attn = attention_implementation(model)
    if not takes_tree_mask(model):
        raise RuntimeError(f"data.prefix_sharing needs an attention that takes a 4D mask (sdpa or eager), not "
                           f"{attn}; turn prefix_sharing off or load the model with attn_implementation=sdpa")
    if attn == "eager":  # eager attention adds the mask to its scores: 0 where allowed, a large negative elsewhere
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        return torch.zeros(tree_mask.shape, dtype=dtype, device=tree_mask.device).masked_fill_(
            ~tree_mask, torch.finfo(dtype).min)
    return tree_mask  # bool, True = attend: SDPA takes it as is, whatever the compute dtype


def tree_target_hidden(model, batch: dict, head_called: bool = False) -> tuple[torch.Tensor, nn.Module]:
    """(hidden states that predict each target of prefix-tree rows (M, H), the output head), from one trunk
    forward over the rows' distinct tokens. Needs a model whose logits are ``head(hidden)`` (``split_head``;
    ``head_called`` as there)."""
    parts = split_head(model, head_called)
    if parts is None:
        raise RuntimeError(f"{type(unwrap_model(model)).__name__}: prefix sharing here needs logits = lm_head(hidden)")
    hidden, head = trunk_forward(model, parts[0], input_ids=batch["input_ids"],
                                  attention_mask=tree_forward_mask(model, batch["tree_mask"]),
                                  position_ids=batch["position_ids"])  # (R, N, H)
    return hidden.reshape(-1, hidden.shape[-1])[batch["pred_index"]], head


def tree_sequence_logps(model, batch: dict, chunk_size: int = DEFAULT_CHUNK_SIZE, split: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and counts of each sequence's loss tokens for prefix-tree rows
    (``ops/packing.py::prefix_tree``): one forward over the shared tokens, under the trees' attention mask."""
    pred, labels, seq = batch["pred_index"], batch["labels"], batch["target_seq"]
    if split and split_head(model) is not None:
        hidden, head = tree_target_hidden(model, batch)
        logps = head_token_logps(head, hidden, labels, chunk_size)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=tree_forward_mask(model, batch["tree_mask"]),
                       position_ids=batch["position_ids"], use_cache=False).logits  # (R, N, V)
        logps = gather_token_logps(logits.reshape(-1, logits.shape[-1])[pred], labels, chunk_size=chunk_size)
    n = int(batch["num_seqs"])
    sums = logps.new_zeros(n).index_add(0, seq, logps)
    counts = logps.new_zeros(n).index_add(0, seq, torch.ones_like(logps))
    return sums, counts
