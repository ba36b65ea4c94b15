"""The Hugging Face backend: batched ``model.generate`` with left padding and per-row sampling.

Every row (one prompt, one candidate) carries its own temperature, top-p, token limit, stop strings and seed,
so one batch can hold candidates at different temperatures, or unrelated server requests. ``generate`` runs
greedy (``do_sample=False``); sampling is done by ``RowSampling``, a logits processor that, for each row with
temperature > 0, scales by the temperature, masks outside the top-p nucleus and adds Gumbel noise drawn from
that row's own ``torch.Generator``: the argmax of ``logits / T + Gumbel`` is an exact sample from the softmax.

Determinism. A row's noise depends only on its seed and the position in its completion, never on the other
rows, so a candidate is the same whatever batch, order or resume it is generated in, *provided the model's
logits are*. They are equal in exact arithmetic (left padding is masked, positions are counted from the first
real token) but not always bitwise: a different batch shape or padding amount can change float rounding by
~1e-6, which flips a token only when two (perturbed) scores tie that closely; GPU kernels can also be
nondeterministic. Same rows + same batch size + same machine = identical output.

Rows are sorted by prompt length (longest first, so an out-of-memory shows up in the first batch) and cut
into batches of ``batch_size`` sequences. N candidates of a prompt are N rows (repeated prompts, not
``num_return_sequences``) so each has its own seed.

Decoding (``decode="loop"``, the default) is our own loop over the KV cache rather than ``model.generate``: a
row that finishes (EOS, its own token limit, a stop string) leaves the batch at once (its KV-cache rows are
dropped), so the remaining steps cost only the rows still running, where ``generate`` keeps computing every
row until the longest one ends. The prompt forward keeps only the last position's logits and does shared work
once: a prompt repeated in the batch (the N candidates of one prompt) is run once, and the prefix every prompt
of the batch starts with (a chat template's system prompt) is run once at batch 1; the KV cache is then
expanded to every row. Each row's output
is the same as with ``decode="generate"`` (the same per-row noise; logits equal up to float rounding of the
smaller batch). The KV cache is ``kv_cache.preallocated_cache``: transformers' dynamic cache with each layer's
keys and values in a buffer sized for the batch, written in place each step instead of concatenated (the same
tokens, 1.08-1.15x as fast). Measured on CPU (bench/generate.py, docs/PERFORMANCE.md): transformers' static
cache, with or without ``torch.compile``, was not faster than the dynamic cache on CPU for these model sizes
(it attends over the whole reserved length), so it is not used.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from posttrain.generation.kv_cache import preallocated_cache
from posttrain.generation.types import GenOutput, RowSpec, TokenCallback, candidate_rows, cut_at_stop, group


class RowSampling(LogitsProcessor):
    """Per-row temperature, top-p and seeded Gumbel noise; rows with temperature 0 are left for greedy argmax.

    ``scores``: ``(B, V)`` float32 logits of the next token. Returns scores whose argmax is the sampled token.
    """

    # The nucleus is looked for among the top TOP_K tokens first (a trained model's nucleus is usually far
    # smaller); only rows whose nucleus is larger pay for a full sort, which is slow on a busy CPU.
    TOP_K = 1024

    def __init__(self, rows: Sequence[RowSpec], device: torch.device):
        picked = [b for b, r in enumerate(rows) if r.temperature > 0]
        self.all_sampled = len(picked) == len(rows)
        self.idx = torch.tensor(picked, dtype=torch.long, device=device)  # (S,) rows that sample
        self.temperature = torch.tensor([rows[b].temperature for b in picked], dtype=torch.float32,
                                        device=device)[:, None]
        # top_p >= 1 keeps everything: those rows skip the nucleus (a float cumsum can fall short of 1.0).
        nucleus = [j for j, b in enumerate(picked) if rows[b].top_p < 1]
        self.nucleus_idx = torch.tensor(nucleus, dtype=torch.long, device=device)
        self.top_p = torch.tensor([rows[picked[j]].top_p for j in nucleus], device=device)[:, None]
        self.generators = [torch.Generator(device=device).manual_seed(rows[b].seed) for b in picked]

    def subset(self, keep: Sequence[int]) -> "RowSampling":
        """The sampler of batch rows ``keep`` only (finished rows left the batch); each kept row continues its
        own generator, so its samples do not depend on which other rows are still running."""
        sub = object.__new__(RowSampling)
        pos = {b: j for j, b in enumerate(self.idx.tolist())}  # batch row -> sampled index
        nucleus = set(self.nucleus_idx.tolist())
        picked = [k for k, b in enumerate(keep) if b in pos]  # new batch positions that sample
        src = [pos[keep[k]] for k in picked]  # their old sampled index
        sub.all_sampled = len(picked) == len(keep)
        sub.idx = torch.tensor(picked, dtype=torch.long, device=self.idx.device)
        sub.temperature = self.temperature[src] if src else self.temperature[:0]
        sub.generators = [self.generators[j] for j in src]
        nuc_new = [n for n, j in enumerate(src) if j in nucleus]
        nuc_pos = {j: n for n, j in enumerate(self.nucleus_idx.tolist())}
        sub.nucleus_idx = torch.tensor(nuc_new, dtype=torch.long, device=self.idx.device)
        sub.top_p = self.top_p[[nuc_pos[src[n]] for n in nuc_new]] if nuc_new else self.top_p[:0]
        return sub

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.generators:
            return scores
        s = (scores if self.all_sampled else scores.index_select(0, self.idx)) / self.temperature  # (S, V)
        if len(self.nucleus_idx):
            sub = s.index_select(0, self.nucleus_idx)
            s = s.index_copy(0, self.nucleus_idx, sub.masked_fill(~self._nucleus(sub), -math.inf))
        uniform = torch.empty_like(s)
        for j, g in enumerate(self.generators):  # each row's own stream: independent of the other rows
            uniform[j].uniform_(generator=g)
        s = s - torch.log(-torch.log(uniform.clamp_min_(1e-20)))  # + Gumbel(0, 1)
        return s if self.all_sampled else scores.index_copy(0, self.idx, s)

    def _nucleus(self, s: torch.Tensor) -> torch.Tensor:
        """``(R, V)`` bool: the smallest set of most likely tokens holding ``top_p`` of the mass (the top token
        is always kept: a token is dropped when the tokens ranked above it already hold ``top_p``)."""
        probs = s.softmax(dim=-1)
        k = min(self.TOP_K, probs.shape[-1])
        top, order = probs.topk(k, dim=-1)  # sorted, descending
        keep_sorted = (top.cumsum(dim=-1) - top) < self.top_p
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, keep_sorted)
        spill = keep_sorted[:, -1].nonzero().flatten() if k < probs.shape[-1] else keep_sorted.new_zeros(0)
        if len(spill):  # the nucleus does not end inside the top k: sort those rows fully
            full, full_order = probs[spill].sort(dim=-1, descending=True)
            full_keep = (full.cumsum(dim=-1) - full) < self.top_p[spill]
            keep[spill] = torch.zeros_like(full_keep).scatter_(-1, full_order, full_keep)
        return keep


class RowLimits(StoppingCriteria):
    """Stops each row at its own ``max_new_tokens`` or stop string (EOS is generate's own criterion).

    ``lengths[b]``: generated tokens of row b when it stopped here, else None."""

    def __init__(self, rows: Sequence[RowSpec], prompt_len: int, tokenizer, eos: int):
        self.rows, self.prompt_len, self.tokenizer, self.eos = rows, prompt_len, tokenizer, eos
        self.lengths: list[int | None] = [None] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        step = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].tolist()
        for b, row in enumerate(self.rows):
            if self.lengths[b] is not None or last[b] == self.eos:
                continue
            if step >= row.max_new_tokens:
                self.lengths[b] = row.max_new_tokens
            elif row.stop:
                text = self.tokenizer.decode(input_ids[b, self.prompt_len:].tolist(), skip_special_tokens=True)
                if cut_at_stop(text, row.stop)[1]:
                    self.lengths[b] = step
        return torch.tensor([n is not None for n in self.lengths], device=input_ids.device)


class RowStreamer:
    """A transformers streamer (``put``/``end``) that hands each running row's new token to ``on_token``."""

    def __init__(self, on_token: TokenCallback, indices: list[int], limits: RowLimits, eos: int):
        self.on_token, self.indices, self.limits, self.eos = on_token, indices, limits, eos
        self.finished = [False] * len(indices)
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate first puts the (padded) prompt
            self.seen_prompt = True
            return
        for b, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[b]:
                continue
            self.on_token(self.indices[b], token)
            self.finished[b] = token == self.eos or self.limits.lengths[b] is not None

    def end(self) -> None:
        pass


def cache_keyword(model) -> str:
    """The forward keyword that takes a KV cache: ``cache`` from transformers 5.24 (``past_key_values`` is
    deprecated there), ``past_key_values`` before. Looked up on the model under any PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class HFGenerator:
    """``generate`` / ``generate_rows`` over a transformers causal LM. ``batch_size``: sequences per forward."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, decode: str = "loop"):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token, so generation cannot stop")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in ("loop", "generate"):
            raise ValueError(f"decode must be 'loop' or 'generate', got {decode!r}")
        self.model, self.tokenizer, self.batch_size, self.decode = model, tokenizer, batch_size, decode
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.cache_kw = cache_keyword(model)

    @property
    def device(self):
        """Where the model's weights are now (read at each use: a model built on the meta device gets its place
        when it is sharded, after this generator was made)."""
        return next(self.model.parameters()).device

    def generate(self, prompt_ids: list[list[int]], *, n: int, temperature, top_p, max_new_tokens: int, seed: int,
                 keys: Sequence[str] | None = None) -> list[list[GenOutput]]:
        """``n`` candidates per prompt: ``out[p][i]`` is candidate i of prompt p. ``temperature`` / ``top_p``: a
        number, or a list cycled over candidates (candidate i uses ``temperature[i % len]``). ``keys``: one
        string per prompt that seeds its candidates (default: a hash of its token ids)."""
        rows = candidate_rows(prompt_ids, n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, keys=keys)
        return group(self.generate_rows(rows), n)

    def generate_rows(self, rows: Sequence[RowSpec], on_token: TokenCallback | None = None) -> list[GenOutput]:
        """One output per row, in the order given."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].prompt_ids))
        outputs: list[GenOutput | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            for i, out in zip(chunk, self._generate_batch([rows[i] for i in chunk], chunk, on_token)):
                outputs[i] = out
        return outputs  # type: ignore[return-value]

    def _generate_batch(self, rows: list[RowSpec], indices: list[int], on_token: TokenCallback | None
                        ) -> list[GenOutput]:
        if self.decode == "loop":
            with torch.inference_mode():
                new_rows, lengths = self._decode_loop(rows, indices, on_token)
            return [self._finish(row, new_rows[b], lengths[b]) for b, row in enumerate(rows)]
        width = max(len(r.prompt_ids) for r in rows)
        # Left padding: every row's last prompt token sits at the same position, so new tokens line up.
        input_ids = torch.tensor([[self.pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in rows],
                                 device=self.device)  # (B, width)
        attention_mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                                      device=self.device)
        limits = RowLimits(rows, width, self.tokenizer, self.eos)
        streamer = RowStreamer(on_token, indices, limits, self.eos) if on_token else None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=False, num_beams=1,
                eos_token_id=self.eos, pad_token_id=self.pad, use_cache=True,
                logits_processor=LogitsProcessorList([RowSampling(rows, self.device)]),
                stopping_criteria=StoppingCriteriaList([limits]), streamer=streamer,
            )
        new = out[:, width:].tolist()  # (B, <= max_new_tokens)
        return [self._finish(row, new[b], limits.lengths[b]) for b, row in enumerate(rows)]

    def _decode_loop(self, rows: list[RowSpec], indices: list[int], on_token: TokenCallback | None
                     ) -> tuple[list[list[int]], list[int | None]]:
        """Sample until every row has finished, dropping finished rows from the batch (and the KV cache).

        Returns each row's new tokens and the length it stopped at (None: it ended with EOS)."""
        b = len(rows)
        new: list[list[int]] = [[] for _ in range(b)]
        lengths: list[int | None] = [None] * b
        limits = [r.max_new_tokens for r in rows]
        active = list(range(b))  # batch position -> row
        sampler = RowSampling(rows, self.device)
        cache = preallocated_cache(self.model.config, max(len(r.prompt_ids) for r in rows) + max(limits))
        logits, attention_mask = self._prefill(rows, cache)
        while True:
            scores = logits[:, -1, :].to(dtype=torch.float32)  # (A, V)
            next_tokens = sampler(None, scores).argmax(dim=-1)  # (A,)
            keep = []
            for j, token in enumerate(next_tokens.tolist()):
                r = active[j]
                new[r].append(token)
                if on_token is not None:
                    on_token(indices[r], token)
                step = len(new[r])
                if token == self.eos:
                    continue
                if step >= limits[r]:
                    lengths[r] = limits[r]
                    continue
                if rows[r].stop:
                    text = self.tokenizer.decode(new[r], skip_special_tokens=True)
                    if cut_at_stop(text, rows[r].stop)[1]:
                        lengths[r] = step
                        continue
                keep.append(j)
            if not keep:
                return new, lengths
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            if len(keep) < len(active):
                idx = torch.tensor(keep, dtype=torch.long, device=self.device)
                cache.reorder_cache(idx)
                attention_mask = attention_mask.index_select(0, idx)
                next_tokens = next_tokens.index_select(0, idx)
                active = [active[j] for j in keep]
                sampler = sampler.subset(keep)
            position_ids = attention_mask.sum(-1, keepdim=True) - 1  # (A, 1)
            logits = self.model(input_ids=next_tokens[:, None], attention_mask=attention_mask,
                                position_ids=position_ids, **{self.cache_kw: cache}, use_cache=True).logits

    def _forward_last(self, **kwargs) -> torch.Tensor:
        """The model's logits at the last position only: (B, 1, V)."""
        try:  # only the last position's logits instead of (B, width, V)
            return self.model(**kwargs, logits_to_keep=1).logits[:, -1:]
        except TypeError:  # a model whose forward has no logits_to_keep
            return self.model(**kwargs).logits[:, -1:]

    def _prefill(self, rows: list[RowSpec], cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the batch's prompts into ``cache``; return the last prompt position's logits (B, 1, V) and the
        (B, L) attention mask over the cache.

        Work shared between rows is done once: a prompt repeated in the batch (N candidates of one prompt) is
        run once, and the longest prefix common to all distinct prompts (a chat template's system prompt) is
        run once at batch 1. The cache is then expanded to every row. The rest of each prompt is left-padded
        after the shared prefix, so the padding sits in the middle of a row; the mask hides it and positions
        count real tokens only, exactly as with plain left padding."""
        prompts = [tuple(r.prompt_ids) for r in rows]
        distinct = list(dict.fromkeys(prompts))  # first-seen order
        slot = {p: i for i, p in enumerate(distinct)}
        expand = [slot[p] for p in prompts]
        shared = shared_prefix_len(distinct) if len(distinct) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        prefix_mask = torch.ones(len(distinct), shared, dtype=torch.long, device=self.device)
        if shared:
            ids = torch.tensor([list(distinct[0][:shared])], device=self.device)
            self._forward_last(input_ids=ids, position_ids=torch.arange(shared, device=self.device)[None],
                               **{self.cache_kw: cache}, use_cache=True)
            cache.reorder_cache(torch.zeros(len(distinct), dtype=torch.long, device=self.device))
        rest = [p[shared:] for p in distinct]
        width = max(len(r) for r in rest)
        input_ids = torch.tensor([[self.pad] * (width - len(r)) + list(r) for r in rest], device=self.device)
        rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=self.device)
        attention_mask = torch.cat([prefix_mask, rest_mask], dim=1)  # (U, shared + width)
        # Positions count from each row's first real token, as generate does for left padding.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)[:, shared:]
        logits = self._forward_last(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    **{self.cache_kw: cache}, use_cache=True)
        if len(distinct) < len(rows):
            idx = torch.tensor(expand, dtype=torch.long, device=self.device)
            cache.reorder_cache(idx)
            logits, attention_mask = logits.index_select(0, idx), attention_mask.index_select(0, idx)
        return logits, attention_mask

    def _finish(self, row: RowSpec, new: list[int], stopped_at: int | None) -> GenOutput:
        tokens = new[: stopped_at if stopped_at is not None else row.max_new_tokens]
        if self.eos in tokens:
            tokens = tokens[: tokens.index(self.eos) + 1]
            reason = "stop"
        else:
            reason = "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if row.stop:
            text, hit = cut_at_stop(text, row.stop)
            reason = "stop" if hit else reason
        return GenOutput(text, tokens, reason)


# Below this many tokens a common prefix is not worth its own forward pass.
MIN_SHARED_PREFIX = 4


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``prompts``, leaving every prompt at least one token of its own
    (the last prompt token must go through the model with the rest of its row)."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for i in range(max(n, 0)):
        t = first[i]
        if any(p[i] != t for p in prompts):
            return i
    return max(n, 0)
