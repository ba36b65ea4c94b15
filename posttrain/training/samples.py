"""Sample generations of the offline trainers (SFT, the DPO family, KTO) for ``samples.jsonl`` and the trackers'
tables: at each evaluation, the model's greedy answer to the first ``train.log_samples`` eval prompts, beside the
answer the data holds for that prompt (SFT: the demonstration; pairs: the chosen answer; KTO: the completion with
its label). The online trainers log their own rollouts instead (``training/rollout_loop.py``)."""

from __future__ import annotations

from typing import Any

from posttrain.data.render import Rendered


def _rendered(item: Any) -> tuple[Rendered, dict[str, Any]]:
    """The item's sequence that carries the prompt, and what the row says about it: an SFT item is a ``Rendered``,
    a pair ``(chosen, rejected)``, a KTO row ``(completion, desirable)``."""
    if isinstance(item, Rendered):
        return item, {}
    first, second = item
    return first, ({"desirable": bool(second)} if isinstance(second, bool) else {})


def greedy_samples(model, items: list, *, tokenizer, max_new_tokens: int) -> list[dict[str, Any]]:
    """One row per item: ``prompt`` (its text, special tokens dropped), ``completion`` (the model's greedy
    answer), ``reference`` (the answer in the data), ``tokens``, ``finish`` (``stop`` | ``length``), plus
    ``desirable`` for KTO rows. The model is put in eval mode for the generation and back in train mode after."""
    from posttrain.generation.hf import HFGenerator  # keeps `import posttrain.training.run` free of transformers

    if not items:
        return []
    seqs = [_rendered(it) for it in items]
    prompts = [r.input_ids[:r.prompt_length] for r, _ in seqs]
    was_training = model.training
    model.eval()
    try:
        outs = HFGenerator(model, tokenizer, batch_size=len(prompts)).generate(
            prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0)
    finally:
        model.train(was_training)
    rows = []
    for (r, extra), (out,) in zip(seqs, outs):
        target = [t for t, m in zip(r.input_ids[r.prompt_length:], r.loss_mask[r.prompt_length:]) if m]
        rows.append({"prompt": tokenizer.decode(r.input_ids[:r.prompt_length], skip_special_tokens=True).strip(),
                     "completion": out.text, "reference": tokenizer.decode(target, skip_special_tokens=True).strip(),
                     "tokens": len(out.token_ids), "finish": out.finish_reason, **extra})
    return rows
