"""The reward of the online trainers (PPO, GRPO): verifiers and/or a reward model, weighted, each component
logged.

``score = verifier_weight * verifier + reward_model_weight * reward_model + rubric_weight * rubric
- length_penalty * len / L``, where ``reward_model`` is one model's reward or an ensemble's (``ensemble_rewards``:
mean, min or mean - k * std), then optionally whitened over the batch and clipped to [-clip, clip]. The verifier
component is ``VerifierJudge``'s value in [0, 1] (the fraction of the prompt's constraints passed, the math answer,
the code tests), read from the prompt row's metadata; the reward model is any ``posttrain reward-model`` output (or
HF classifier with one label); the rubric is ``RubricJudge``'s weighted mean of per-rule grades in [0, 1]
(``reward.rubric``: verifier rules need no LLM, the others ask ``reward.rubric_base_url`` / ``rubric_model``).
A completion the rubric's LLM could grade on no rule gets the batch's mean rubric value (0 when none was graded):
no signal either way, and never a NaN reward.
"""

from __future__ import annotations

import math

import torch

from posttrain.config import ConfigError
from posttrain.data.schema import DataError, DataErrors, PromptExample
from posttrain.judges.reward_model import RewardModelJudge
from posttrain.judges.rubric import (RubricError, RubricJudge, RubricRowError, load_rubric, rule_statistics,
                                    select_rules)
from posttrain.judges.verifier import VerifierJudge
from posttrain.ops.advantages import whiten

def ensemble_rewards(each: torch.Tensor, reduce: str = "mean", k: float = 1.0) -> torch.Tensor:
    """Per completion, the rewards of M reward models ``each`` (M, N) combined: ``mean``, ``min`` (the most
    pessimistic model, which a policy cannot raise by fooling one of them), or ``mean_minus_std``
    (``mean - k * std``, the population std over the M models: uncertainty lowers the reward). One model: itself."""
    if reduce == "min":
        return each.min(dim=0).values
    mean = each.mean(dim=0)
    if reduce == "mean_minus_std":
        return mean - k * each.std(dim=0, unbiased=False)
    if reduce != "mean":
        raise ValueError(f"reward_model_reduce must be mean, min or mean_minus_std, got {reduce!r}")
    return mean


def check_rubric_reward(reward_cfg) -> None:
    """``reward.rubric`` reads as a rubric, and an LLM is configured if a rule needs one: ``ConfigError`` (one
    line) otherwise. Cheap: the RL trainers call it before the policy loads."""
    if not (reward_cfg.rubric and reward_cfg.rubric_weight > 0):
        return
    try:
        rules = load_rubric(reward_cfg.rubric)
    except RubricError as e:
        raise ConfigError(f"reward.rubric: {e}") from None
    try:
        used = {r.id for r in select_rules(rules, reward_cfg.rubric_only)}
    except ValueError as e:
        raise ConfigError(f"reward.rubric_only: {reward_cfg.rubric}: {e}") from None
    asked = [(i, r) for i, r in enumerate(rules) if r.verifier is None and r.id in used]
    if asked and not reward_cfg.rubric_base_url:
        i, r = asked[0]
        raise ConfigError(f"reward.rubric: {reward_cfg.rubric}: rules[{i}] ('{r.id}') has no verifier, so "
                          "an LLM grades it: set reward.rubric_base_url and reward.rubric_model")


class RewardFunction:
    """Scores (prompt row, response text, token count) triples; see the module docstring for the formula."""

    def __init__(self, reward_cfg, *, max_new_tokens: int, device: str | None = None, reduce=None):
        """``reduce``: sums a tensor over processes (reward whitening over every process's rollouts)."""
        self.cfg, self.max_new_tokens, self.reduce = reward_cfg, max_new_tokens, reduce
        self.verifier = None
        if reward_cfg.verifier_weight > 0:
            components = reward_cfg.verifier_components
            self.verifier = VerifierJudge(**({"components": components} if components else {}),
                                          code_sandbox=reward_cfg.code_sandbox,
                                          style_penalty=reward_cfg.verifier_style_penalty)
        self.reward_models: list[RewardModelJudge] = []
        if reward_cfg.reward_model and reward_cfg.reward_model_weight > 0:
            paths = [reward_cfg.reward_model] if isinstance(reward_cfg.reward_model, str) else reward_cfg.reward_model
            self.reward_models = [RewardModelJudge(p, batch_size=reward_cfg.reward_model_batch_size, device=device)
                                  for p in paths]
        self.rubric: RubricJudge | None = None
        if reward_cfg.rubric and reward_cfg.rubric_weight > 0:
            check_rubric_reward(reward_cfg)
            llm = ({"base_url": reward_cfg.rubric_base_url, "model": reward_cfg.rubric_model,
                    "api_key_env": reward_cfg.rubric_api_key_env} if reward_cfg.rubric_base_url else {})
            self.rubric = RubricJudge(reward_cfg.rubric, code_sandbox=reward_cfg.code_sandbox,
                                      only=reward_cfg.rubric_only, **llm)

    def __call__(self, examples: list[PromptExample], texts: list[str], lengths: list[int], *,
                 batch_whitening: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """(scores (N,) float32, metrics: the mean of each component and of the total). ``batch_whitening``
        False skips ``reward.whiten`` (held-out scores are reported raw, with no collective)."""
        c = self.cfg
        n = len(texts)
        total = torch.zeros(n, dtype=torch.float32)
        metrics: dict[str, float] = {}
        if self.verifier is not None:
            results = []
            for ex, text in zip(examples, texts):
                try:
                    results.append(self.verifier.score(ex.prompt, text, ex.metadata))
                except ValueError as e:
                    raise DataErrors([DataError(ex.source, ex.row, "constraints", str(e))]) from None
            values = torch.tensor([r.value for r in results], dtype=torch.float32)
            total += c.verifier_weight * values
            metrics["reward/verifier"] = float(values.mean())
            metrics["reward/pass_rate"] = sum(bool(r.passed) for r in results) / n
        if self.reward_models:
            pairs = [(ex.prompt, t) for ex, t in zip(examples, texts)]
            each = torch.tensor([rm.rewards(pairs) for rm in self.reward_models], dtype=torch.float32)  # (M, N)
            rm = ensemble_rewards(each, c.reward_model_reduce, c.reward_model_std_k)
            if len(self.reward_models) > 1:
                metrics["reward/reward_model_disagreement"] = float(each.std(dim=0, unbiased=False).mean())
            total += c.reward_model_weight * rm
            metrics["reward/reward_model"] = float(rm.mean())
            metrics["reward/reward_model_std"] = float(rm.std()) if n > 1 else 0.0
        if self.rubric is not None:
            try:
                scores = self.rubric.score_many([(ex.prompt, t, ex.metadata) for ex, t in zip(examples, texts)])
            except RubricRowError as e:
                raise DataErrors([DataError(examples[i].source, examples[i].row, "metadata", msg)
                                  for i, msg in e.rows]) from None
            graded = [s.value for s in scores if math.isfinite(s.value)]
            fill = sum(graded) / len(graded) if graded else 0.0
            values = torch.tensor([s.value if math.isfinite(s.value) else fill for s in scores], dtype=torch.float32)
            total += c.rubric_weight * values
            metrics["reward/rubric"] = float(values.mean())
            metrics["reward/rubric_pass_rate"] = sum(s.passed is True for s in scores) / n
            metrics["reward/rubric_ungraded"] = float(n - len(graded))
            for rule, st in rule_statistics(self.rubric.rules, scores).items():
                if st["mean_grade"] is not None:
                    metrics[f"reward/rubric/{rule}"] = st["mean_grade"]
        if c.length_penalty > 0:
            penalty = c.length_penalty * torch.tensor(lengths, dtype=torch.float32) / self.max_new_tokens
            total -= penalty
            metrics["reward/length_penalty"] = float(penalty.mean())
        if c.whiten and batch_whitening and n > 1:
            metrics["reward/total_raw"] = float(total.mean())
            total = whiten(total, shift_mean=False, reduce=self.reduce)
        if c.clip is not None:
            total = total.clamp(-c.clip, c.clip)
        metrics["reward/total"] = float(total.mean())
        return total, metrics
