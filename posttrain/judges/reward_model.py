"""A reward-model judge: a sequence-classification checkpoint with one output (``num_labels=1``) scores
prompt + response rendered with the tokenizer's chat template. Higher is better; ``compare`` picks the higher score
(a tie within ``epsilon``) with the Bradley-Terry probability ``sigmoid(|r_a - r_b|)`` as confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from posttrain.judges.types import Message, Score, Verdict
from posttrain.models.resolve import ModelError, load_tokenizer, resolve_model_path, torch_dtype

# torch and transformers are imported in the methods: `import posttrain.judges.reward_model` stays free of them.


class RewardModelJudge:
    score_range = None  # unbounded: ensembles squash it with a sigmoid

    def __init__(self, model: str, *, batch_size: int = 8, epsilon: float = 1e-6, max_length: int | None = None,
                 device: str | None = None, dtype: str = "auto", cache_dir: str | None = None,
                 name: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.name = name or f"reward_model:{model}"
        self.batch_size, self.epsilon, self.max_length = batch_size, epsilon, max_length
        path = resolve_model_path(model, cache_dir)
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype))
        except (OSError, ValueError) as e:
            raise ModelError(f"reward model '{model}': cannot load it as a sequence classifier "
                             f"({str(e).splitlines()[0]})") from None
        if self.model.config.num_labels != 1:
            raise ModelError(f"reward model '{model}': has num_labels={self.model.config.num_labels}, "
                             "a reward model needs num_labels=1 (one scalar per sequence)")
        self.tokenizer = load_tokenizer(model, cache_dir)
        if self.model.config.pad_token_id is None:
            # The classifier pools the last non-pad token, so it must know which id is padding.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()

    def render(self, prompt: Sequence[Message], response: str) -> str:
        return self.tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}],
                                                  tokenize=False)

    def rewards(self, items: Sequence[tuple[Sequence[Message], str]]) -> list[float]:
        """One scalar per (prompt, response), ``batch_size`` sequences per forward pass."""
        import torch

        tok = self.tokenizer
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            texts = [self.render(p, r) for p, r in items[start:start + self.batch_size]]
            sides = tok.padding_side, tok.truncation_side
            # Right padding keeps position ids equal to an unpadded run; truncating the left keeps the response.
            tok.padding_side, tok.truncation_side = "right", "left"
            try:
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                          truncation=self.max_length is not None, max_length=self.max_length)
            finally:
                tok.padding_side, tok.truncation_side = sides
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits  # (B, 1)
            out += logits[:, 0].float().cpu().tolist()
        return out

    def score(self, prompt: list[Message], response: str, metadata: dict[str, Any]) -> Score:
        return self.score_many([(prompt, response, metadata)])[0]

    def score_many(self, items: Sequence[tuple[list[Message], str, dict[str, Any]]]) -> list[Score]:
        return [Score(r) for r in self.rewards([(p, resp) for p, resp, _ in items])]

    def compare(self, prompt: list[Message], response_a: str, response_b: str, metadata: dict[str, Any]) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b, metadata)])[0]

    def compare_many(self, items: Sequence[tuple[list[Message], str, str, dict[str, Any]]]) -> list[Verdict]:
        flat = [x for p, a, b, _ in items for x in ((p, a), (p, b))]
        r = self.rewards(flat)
        verdicts = []
        for i in range(len(items)):
            ra, rb = r[2 * i], r[2 * i + 1]
            diff = ra - rb
            winner = "tie" if abs(diff) <= self.epsilon else ("a" if diff > 0 else "b")
            confidence = 0.5 if winner == "tie" else 1.0 / (1.0 + math.exp(-abs(diff)))
            verdicts.append(Verdict(winner, confidence, {"reward_a": ra, "reward_b": rb}))
        return verdicts
