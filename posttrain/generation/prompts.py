"""Prompt rows for the trainers that sample (PPO, GRPO, online DPO, rejection-sampling SFT): read and render
them, sample ``n`` completions each with the current policy (seeded per prompt, so a step's rollouts reproduce on
resume), and the rollout generator (HF on the live policy, or vLLM sent the policy's weights)."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.data.layouts import load_examples
from posttrain.data.sources import source_label
from posttrain.data.render import render_prompt
from posttrain.data.schema import DataError, DataErrors, PromptExample
from posttrain.generation.backends import _vllm_path
from posttrain.generation.types import candidate_rows, prompt_key
from posttrain.generation.vllm_backend import PolicySyncedVLLM

VERIFIABLE_KEYS = ("constraints", "constraint", "answer", "tests")


@dataclass
class PromptItem:
    prompt_ids: list[int]
    example: PromptExample

    @property
    def key(self) -> str:
        """Seeds this prompt's samples: its row and tokens, not the file's path (a moved file samples the same)."""
        return f"{self.example.row}:{prompt_key(self.prompt_ids)}"


def load_prompt_items(source: str, tokenizer, *, split: str | None = None, max_prompt_length: int,
                      need_verifiable: bool) -> tuple[list[PromptItem], dict]:
    """Prompt rows rendered with the generation prompt; too-long prompts dropped (counted). With
    ``need_verifiable``, every row must carry something a verifier can check (DataErrors naming the rows)."""
    examples = load_examples(source, "prompt", split)
    if need_verifiable:
        bad = [DataError(ex.source, ex.row, "constraints", "nothing to verify: the verifier reward needs "
                         f"one of {', '.join(VERIFIABLE_KEYS)} (or set reward.verifier_weight=0)")
               for ex in examples if not any(ex.metadata.get(k) is not None for k in VERIFIABLE_KEYS)]
        if bad:
            raise DataErrors(bad)
    items, dropped = [], 0
    for ex in examples:
        ids = render_prompt(ex, tokenizer)
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        items.append(PromptItem(ids, ex))
    if not items:
        raise DataErrors([DataError(source_label(source), None, None, f"no prompts left at data.max_prompt_length="
                                                        f"{max_prompt_length}")])
    return items, {"prompts/rows": len(examples), "prompts/kept": len(items), "prompts/dropped_too_long": dropped}


def sample(generator, items: list[PromptItem], *, n: int, rollout_cfg, seed: int, temperature: float | None = None):
    """``n`` completions per prompt, prompt-major (row p*n + i is candidate i of prompt p), each seeded by
    (seed, prompt key, i) so a step's rollouts reproduce on resume. ``temperature`` None: the rollout's."""
    t = rollout_cfg.temperature if temperature is None else temperature
    rows = candidate_rows([it.prompt_ids for it in items], n=n, temperature=t,
                          top_p=rollout_cfg.top_p, max_new_tokens=rollout_cfg.max_new_tokens, seed=seed,
                          keys=[it.key for it in items])
    return generator.generate_rows(rows)


def make_generator(policy, tokenizer, rollout_cfg, model_cfg, rank: int = 0):
    """The rollout generator: HF generation on the live policy, or (``rollout.backend: vllm``) a colocated vLLM
    engine that is sent the policy's weights before each rollout."""
    if rollout_cfg.backend == "vllm":
        path = _vllm_path(model_cfg.name, model_cfg.adapter, model_cfg.cache_dir)
        return PolicySyncedVLLM(policy, tokenizer, path, batch_size=rollout_cfg.batch_size, rank=rank,
                                gpu_memory_utilization=rollout_cfg.vllm_gpu_memory_utilization)
    from posttrain.generation.hf import HFGenerator  # keeps `import posttrain.generation.prompts` free of transformers

    return HFGenerator(policy, tokenizer, batch_size=rollout_cfg.batch_size)


def last_user_text(prompt) -> str:
    """The text of a prompt's last user turn (a message list), or the prompt itself when it is a string."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def sample_rows(examples, outs, scores) -> list[dict]:
    """Sampled completions as plain rows for ``samples.jsonl`` and tracker tables: the prompt's last user turn,
    the completion, its reward, its length in tokens and why it stopped."""
    return [{"prompt": last_user_text(ex.prompt), "completion": o.text, "reward": float(r),
             "tokens": len(o.token_ids), "finish": o.finish_reason}
            for ex, o, r in zip(examples, outs, scores.tolist())]
