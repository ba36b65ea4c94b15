"""Render examples through the model's own chat template, with a mask that trains on assistant turns only.

For each assistant turn i the conversation up to it, rendered with the generation prompt, must be a token
prefix of the whole conversation: that is exactly what the model sees at inference before it writes turn i, so
the trained span starts where the generation prompt ends. A template that breaks this (it renders the
generation prompt differently from a stored assistant header, or BPE merges across the boundary) would train
the model on a prompt it never gets, so it is an error rather than something to paper over.

A trained span runs up to and including the first EOS after it starts; template tokens after that EOS
(SmolLM2's trailing ``"\\n"``) are not trained. Every rendered sequence ends with exactly one EOS, trained, so
the model learns to stop; it is appended when the template emits none.

Text is rendered with ``tokenize=False`` and tokenised with ``add_special_tokens=False``: the template already
writes any BOS, and a second one would shift every position the model saw in pretraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jinja2

from posttrain.data.schema import (
    DataError,
    DataErrors,
    Example,
    Message,
    PreferencePair,
    PromptExample,
    SFTExample,
    UnpairedExample,
)

TRUNCATION_POLICIES = ("drop", "truncate")
PREFIX_BROKEN = ("chat template breaks the prefix property: the prompt rendered with the generation prompt is "
                 "not a token prefix of the conversation")


@dataclass
class Rendered:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on (assistant content + its EOS)
    prompt_length: int  # tokens before the first trained token (for pairs: the shared prompt)
    truncated: bool = False


@dataclass
class RenderStats:
    kept: int = 0  # examples rendered, truncated ones included
    dropped: int = 0  # longer than max_length under truncation="drop"
    truncated: int = 0  # kept, but cut to max_length under truncation="truncate"

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"kept {self.kept} (truncated {self.truncated}), dropped {self.dropped} longer than max_length"


def _check_settings(tokenizer, max_length: int | None, truncation: str) -> None:
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"unknown truncation policy {truncation!r} (expected one of "
                         f"{', '.join(repr(p) for p in TRUNCATION_POLICIES)})")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use an instruct model's tokenizer or set one")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token, so rendered sequences cannot end")


def _token_ids(messages: list[Message], tokenizer, generation_prompt: bool, source: str, row: int) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except jinja2.TemplateError as e:  # a template's own raise_exception, e.g. "roles must alternate"
        raise DataError(source, row, "messages", f"the chat template rejected this conversation: {e}") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def render_messages(messages: list[Message], tokenizer, *, max_length: int, truncation: str = "drop",
                    source: str = "<memory>", row: int = 0, train_from: int = 0) -> Rendered | None:
    """Token ids and loss mask for a conversation whose assistant turns at index >= ``train_from`` are trained
    (pairs and KTO rows pass ``len(prompt)`` so earlier assistant turns in a multi-turn prompt are context).

    Returns None when the sequence is longer than ``max_length`` under ``truncation="drop"``.
    """
    _check_settings(tokenizer, max_length, truncation)
    eos = tokenizer.eos_token_id
    turns = [i for i, m in enumerate(messages) if i >= train_from and m.get("role") == "assistant"]
    if not turns:
        raise DataError(source, row, "messages", "has no assistant turn to train on")
    full = _token_ids(messages, tokenizer, False, source, row)
    prefixes = [_token_ids(messages[:i], tokenizer, True, source, row) for i in turns]
    mask = [0] * len(full)
    for n, i in enumerate(turns):
        prefix = prefixes[n]
        through_turn = full if i == len(messages) - 1 else _token_ids(messages[: i + 1], tokenizer, False, source, row)
        if full[: len(prefix)] != prefix or through_turn[: len(prefix)] != prefix:
            raise DataError(source, row, "messages", PREFIX_BROKEN)
        start = len(prefix)
        # Turn i's EOS must come before the next assistant turn's generation prompt ends.
        bound = len(prefixes[n + 1]) if n + 1 < len(turns) else len(full)
        end_of_turn = full.index(eos, start, bound) + 1 if eos in full[start:bound] else None
        # No EOS (a template that never emits it): the turn is the part of ``full`` that rendering it alone gives.
        end = end_of_turn or _common_prefix_length(full, through_turn)
        if end <= start:
            raise DataError(source, row, "messages", PREFIX_BROKEN)
        mask[start:end] = [1] * (end - start)
    ids, mask = full[:end], mask[:end]
    if end_of_turn is None:
        ids.append(eos)
        mask.append(1)
    rendered = Rendered(ids, mask, prompt_length=len(prefixes[0]))
    return _fit(rendered, max_length, truncation, source, row)


def _fit(r: Rendered, max_length: int, truncation: str, source: str, row: int) -> Rendered | None:
    if len(r.input_ids) <= max_length:
        return r
    if r.prompt_length >= max_length:
        raise DataError(source, row, "prompt",
                        f"prompt alone is {r.prompt_length} tokens, longer than max_length {max_length}")
    if truncation == "drop":
        return None
    ids, mask = r.input_ids[:max_length], r.loss_mask[:max_length]
    # End on a trained token: a multi-turn cut can land inside a later user turn, which teaches nothing.
    while not mask[-1]:
        ids.pop()
        mask.pop()
    return Rendered(ids, mask, r.prompt_length, truncated=True)


def render_sft(ex: SFTExample, tokenizer, *, max_length: int, truncation: str = "drop") -> Rendered | None:
    return render_messages(ex.messages, tokenizer, max_length=max_length, truncation=truncation,
                           source=ex.source, row=ex.row)


def render_pair(p: PreferencePair, tokenizer, *, max_length: int, truncation: str = "drop"
                ) -> tuple[Rendered, Rendered] | None:
    """Chosen and rejected after the same prompt; None (dropped) if either side is too long under "drop"."""
    sides = []
    for reply in (p.chosen, p.rejected):
        r = render_messages(p.prompt + reply, tokenizer, max_length=max_length, truncation=truncation,
                            source=p.source, row=p.row, train_from=len(p.prompt))
        if r is None:
            return None
        sides.append(r)
    return sides[0], sides[1]


def render_unpaired(ex: UnpairedExample, tokenizer, *, max_length: int, truncation: str = "drop") -> Rendered | None:
    return render_messages(ex.prompt + ex.completion, tokenizer, max_length=max_length, truncation=truncation,
                           source=ex.source, row=ex.row, train_from=len(ex.prompt))


def render_prompt(ex: PromptExample, tokenizer) -> list[int]:
    """The prompt as the model sees it at generation time, ending with the generation prompt."""
    _check_settings(tokenizer, None, "drop")
    return _token_ids(ex.prompt, tokenizer, True, ex.source, ex.row)


def _render_one(ex: Example, tokenizer, max_length: int, truncation: str):
    settings = dict(max_length=max_length, truncation=truncation)
    if isinstance(ex, SFTExample):
        return render_sft(ex, tokenizer, **settings)
    if isinstance(ex, PreferencePair):
        return render_pair(ex, tokenizer, **settings)
    if isinstance(ex, UnpairedExample):
        r = render_unpaired(ex, tokenizer, **settings)
        return None if r is None else (r, ex.label)
    if isinstance(ex, PromptExample):
        return render_prompt(ex, tokenizer)
    raise TypeError(f"not a schema example: {type(ex).__name__}")


def render_dataset(examples: list[Example], tokenizer, *, max_length: int, truncation: str = "drop"
                   ) -> tuple[list, RenderStats]:
    """Render every example; raises ``DataErrors`` listing every row that cannot be rendered.

    Items by type: ``SFTExample`` -> ``Rendered``; ``PreferencePair`` -> ``(chosen, rejected)``;
    ``UnpairedExample`` -> ``(Rendered, label)``; ``PromptExample`` -> prompt ids (never dropped).
    """
    _check_settings(tokenizer, max_length, truncation)
    items, stats, errors = [], RenderStats(), []
    for ex in examples:
        try:
            item = _render_one(ex, tokenizer, max_length, truncation)
        except DataError as e:
            errors.append(e)
            continue
        if item is None:
            stats.dropped += 1
            continue
        parts = item if isinstance(item, tuple) else (item,)
        stats.kept += 1
        stats.truncated += any(isinstance(r, Rendered) and r.truncated for r in parts)
        items.append(item)
    if errors:
        raise DataErrors(errors)
    return items, stats
