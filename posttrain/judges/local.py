"""The LLM judge's prompts run on a model loaded in-process (``load_trained``), greedy decoding.

Same messages, same parsing, same both-orders rule as ``LLMJudge`` (all in ``prompts.py``); only the way an
answer is produced differs: batched ``generate`` with left padding instead of an HTTP call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.judges import prompts
from posttrain.judges.types import Message, Score, Verdict
from posttrain.models.policy import load_trained

# torch is imported in the methods: `import posttrain.judges.local` stays free of it.


class LocalModelJudge:
    """Pairwise (``compare``) and pointwise (``score``) judge on a local model, e.g. an instruct checkpoint."""

    score_range = prompts.SCORE_RANGE

    def __init__(self, model: str, *, rubric: str = prompts.DEFAULT_RUBRIC, max_new_tokens: int = 256,
                 batch_size: int = 4, max_prompt_tokens: int | None = None, device: str | None = None,
                 cache_dir: str | None = None, name: str | None = None):
        import torch

        self.name = name or f"local:{model}"
        self.rubric, self.max_new_tokens, self.batch_size = rubric, max_new_tokens, batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.model, self.tokenizer = load_trained(model, cache_dir=cache_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)

    def complete_many(self, requests: list[list[Message]]) -> list[str]:
        """Greedy answers to chat requests, in order, ``batch_size`` at a time."""
        import torch

        tok = self.tokenizer
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                     for m in requests[start:start + self.batch_size]]
            sides = tok.padding_side, tok.truncation_side
            # Generation continues from the right edge: pad on the left, and truncate the left (rubric, start of the
            # conversation) rather than the right (the responses' ends, the verdict instruction, the generation prompt).
            tok.padding_side = tok.truncation_side = "left"
            try:
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                          truncation=self.max_prompt_tokens is not None, max_length=self.max_prompt_tokens)
            finally:
                tok.padding_side, tok.truncation_side = sides
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.no_grad():
                out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            new = out[:, enc["input_ids"].shape[1]:]  # (B, new tokens)
            answers += tok.batch_decode(new, skip_special_tokens=True)
        return answers

    def compare(self, prompt: list[Message], response_a: str, response_b: str, metadata: dict[str, Any]) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b, metadata)])[0]

    def compare_many(self, items: Sequence[tuple[list[Message], str, str, dict[str, Any]]]) -> list[Verdict]:
        return prompts.both_orders(self.complete_many, [(p, a, b) for p, a, b, _ in items], self.rubric)

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        return self.score_many([(prompt, response, metadata)])[0]

    def score_many(self, items: Sequence[tuple[list[Message], str, dict[str, Any]]]) -> list[Score]:
        return prompts.pointwise(self.complete_many, [(p, r) for p, r, _ in items], self.rubric)
