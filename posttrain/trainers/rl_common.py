"""What PPO, GRPO and rejection-sampling SFT share: prompt rows, sampling with the current policy, the reward
(verifiers and/or a reward model, weighted, each component logged), and rollout sequences as tensors.

Rewards. ``score = verifier_weight * verifier + reward_model_weight * reward_model - length_penalty * len / L``,
then optionally clipped to [-clip, clip]. The verifier component is ``VerifierJudge``'s value in [0, 1] (the
fraction of the prompt's constraints passed, the math answer, the code tests), read from the prompt row's
metadata; the reward model is any ``posttrain reward-model`` output (or HF classifier with one label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from posttrain.data.layouts import load_examples
from posttrain.data.render import render_prompt
from posttrain.data.schema import DataError, DataErrors, PromptExample

VERIFIABLE_KEYS = ("constraints", "constraint", "answer", "tests")


@dataclass
class PromptItem:
    prompt_ids: list[int]
    example: PromptExample

    @property
    def key(self) -> str:
        """Seeds this prompt's samples: its row and tokens, not the file's path (a moved file samples the same)."""
        from posttrain.generation.types import prompt_key

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
        raise DataErrors([DataError(source, None, None, f"no prompts left at data.max_prompt_length="
                                                        f"{max_prompt_length}")])
    return items, {"prompts/rows": len(examples), "prompts/kept": len(items), "prompts/dropped_too_long": dropped}


class RewardFunction:
    """Scores (prompt row, response text, token count) triples; see the module docstring for the formula."""

    def __init__(self, reward_cfg, *, max_new_tokens: int, device: str | None = None, reduce=None):
        """``reduce``: sums a tensor over processes (reward whitening over every process's rollouts)."""
        self.cfg, self.max_new_tokens, self.reduce = reward_cfg, max_new_tokens, reduce
        self.verifier = None
        if reward_cfg.verifier_weight > 0:
            from posttrain.judges.verifier import VerifierJudge

            components = reward_cfg.verifier_components
            self.verifier = VerifierJudge(**({"components": components} if components else {}),
                                          code_sandbox=reward_cfg.code_sandbox)
        self.reward_model = None
        if reward_cfg.reward_model and reward_cfg.reward_model_weight > 0:
            from posttrain.judges.reward_model import RewardModelJudge

            self.reward_model = RewardModelJudge(reward_cfg.reward_model, batch_size=reward_cfg.reward_model_batch_size,
                                                 device=device)

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
        if self.reward_model is not None:
            rm = torch.tensor(self.reward_model.rewards([(ex.prompt, t) for ex, t in zip(examples, texts)]),
                              dtype=torch.float32)
            total += c.reward_model_weight * rm
            metrics["reward/reward_model"] = float(rm.mean())
            metrics["reward/reward_model_std"] = float(rm.std()) if n > 1 else 0.0
        if c.length_penalty > 0:
            penalty = c.length_penalty * torch.tensor(lengths, dtype=torch.float32) / self.max_new_tokens
            total -= penalty
            metrics["reward/length_penalty"] = float(penalty.mean())
        if c.whiten and batch_whitening and n > 1:
            from posttrain.ops.advantages import whiten

            metrics["reward/total_raw"] = float(total.mean())
            total = whiten(total, shift_mean=False, reduce=self.reduce)
        if c.clip is not None:
            total = total.clamp(-c.clip, c.clip)
        metrics["reward/total"] = float(total.mean())
        return total, metrics


def sample(generator, items: list[PromptItem], *, n: int, rollout_cfg, seed: int, temperature: float | None = None):
    """``n`` completions per prompt, prompt-major (row p*n + i is candidate i of prompt p), each seeded by
    (seed, prompt key, i) so a step's rollouts reproduce on resume. ``temperature`` None: the rollout's."""
    from posttrain.generation.types import candidate_rows

    t = rollout_cfg.temperature if temperature is None else temperature
    rows = candidate_rows([it.prompt_ids for it in items], n=n, temperature=t,
                          top_p=rollout_cfg.top_p, max_new_tokens=rollout_cfg.max_new_tokens, seed=seed,
                          keys=[it.key for it in items])
    return generator.generate_rows(rows)


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


def make_generator(policy, tokenizer, rollout_cfg, model_cfg, rank: int = 0):
    """The rollout generator: HF generation on the live policy, or (``rollout.backend: vllm``) a colocated vLLM
    engine that is sent the policy's weights before each rollout."""
    if rollout_cfg.backend == "vllm":
        from posttrain.generation.backends import _vllm_path
        from posttrain.generation.vllm_backend import PolicySyncedVLLM

        path = _vllm_path(model_cfg.name, model_cfg.adapter, model_cfg.cache_dir)
        return PolicySyncedVLLM(policy, tokenizer, path, batch_size=rollout_cfg.batch_size, rank=rank,
                                gpu_memory_utilization=rollout_cfg.vllm_gpu_memory_utilization)
    from posttrain.generation.hf import HFGenerator

    return HFGenerator(policy, tokenizer, batch_size=rollout_cfg.batch_size)


def heldout_reward(generator, items: list[PromptItem], reward_fn: RewardFunction, rollout_cfg, seed: int,
                   prefix: str, accelerator=None) -> dict[str, float]:
    """``rollout.eval_samples`` completions of each held-out prompt at ``rollout.eval_temperature`` (0: greedy),
    seeded identically before and after training, scored: ``{prefix}/reward/...`` metrics. Under several
    processes each samples its shard of the prompts and the metrics are averaged over all of them."""
    from posttrain.training.rollout_loop import mean_over_processes

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    mine = items[rank::world]
    k = rollout_cfg.eval_samples
    metrics: dict[str, float] = {}
    if mine:
        outs = sample(generator, mine, n=k, rollout_cfg=rollout_cfg, seed=seed,
                      temperature=rollout_cfg.eval_temperature)
        examples = [it.example for it in mine for _ in range(k)]
        _, metrics = reward_fn(examples, [o.text for o in outs], [len(o.token_ids) for o in outs],
                               batch_whitening=False)
        metrics["response_length"] = sum(len(o.token_ids) for o in outs) / len(outs)
    metrics = mean_over_processes(metrics, len(mine) * k, world)
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class RLSetup:
    """What every online trainer (PPO, GRPO, online DPO) loads before its own parts: prompts, policy, sampler."""

    accelerator: Any
    tokenizer: Any
    items: list
    stats: dict
    eval_items: list
    policy: Any
    lineage: Any
    generator: Any


def load_rl_setup(cfg, need_verifiable: bool) -> RLSetup:
    """Prompts (and held-out prompts) read and checked, the output folder checked, then the seeded policy and its
    generator; a missing vllm fails before anything is loaded or written."""
    from posttrain.models.policy import load_policy, model_tokenizer
    from posttrain.training.loop import make_accelerator
    from posttrain.training.stage import check_output_dir, resolve_prefix_sharing, seed_everything

    if cfg.rollout.backend == "vllm":
        from posttrain.generation.vllm_backend import import_vllm

        import_vllm()
    accelerator = make_accelerator(cfg.train.precision)
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    items, stats = load_prompt_items(cfg.data.train, tokenizer, split=cfg.data.split,
                                     max_prompt_length=cfg.data.max_prompt_length, need_verifiable=need_verifiable)
    eval_items = []
    if cfg.data.eval:
        eval_items, _ = load_prompt_items(cfg.data.eval, tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                                          need_verifiable=need_verifiable)
    check_output_dir(cfg.train)
    seed_everything(cfg.train.seed)
    policy, tokenizer, lineage = load_policy(cfg.model, cfg.peft, seed=cfg.train.seed, tokenizer=tokenizer)
    policy.to(accelerator.device)
    generator = make_generator(policy, tokenizer, cfg.rollout, cfg.model, accelerator.process_index)
    resolve_prefix_sharing(cfg, policy)
    return RLSetup(accelerator, tokenizer, items, stats, eval_items, policy, lineage, generator)


def run_rl_stage(cfg, stage: str, build, *, update_epochs: int, mini_batches: int) -> dict:
    """Load prompts (and held-out prompts), the policy and the reward; open the run folder; ``fit_rl``; save.

    ``build(policy, tokenizer, reward_fn, generator, accelerator)`` returns ``(trained module, RLFns, extra
    save)`` where the trained module is the policy or a policy + value-head wrapper and ``extra save(out_dir)``
    writes anything besides the policy (or is None)."""
    from posttrain.models.policy import save_trained
    from posttrain.training.loop import cross_process_sum, settings_from_config
    from posttrain.training.rollout_loop import fit_rl
    from posttrain.training.stage import open_run_folder, train_then_save

    setup = load_rl_setup(cfg, need_verifiable=cfg.reward.verifier_weight > 0)
    accelerator, tokenizer, items, stats, eval_items = (setup.accelerator, setup.tokenizer, setup.items, setup.stats,
                                                        setup.eval_items)
    policy, lineage, generator = setup.policy, setup.lineage, setup.generator
    reward_fn = RewardFunction(cfg.reward, max_new_tokens=cfg.rollout.max_new_tokens,
                               reduce=cross_process_sum(accelerator))
    model, fns, extra_save = build(policy, tokenizer, reward_fn, generator, accelerator)
    run = open_run_folder(cfg, stage, accelerator.is_main_process, accelerator.wait_for_everyone)
    if cfg.reward.reward_model and accelerator.is_main_process:
        run.add_input("reward.reward_model", cfg.reward.reward_model)
        run.save(status="running")

    def heldout(prefix: str) -> dict:
        if not eval_items:
            return {}
        policy.eval()
        return heldout_reward(generator, eval_items, reward_fn, cfg.rollout, cfg.train.seed, prefix, accelerator)

    def train() -> dict:
        summary = {**stats, **heldout("eval_before")}
        summary.update(fit_rl(model, items, fns, settings_from_config(cfg, stage), accelerator,
                              update_epochs=update_epochs, mini_batches=mini_batches))
        summary.update(heldout("eval_after"))
        return summary

    def save(summary: dict) -> dict:
        save_trained(policy, tokenizer, run.path / "model", lineage)
        outputs = {"model": "model", "metrics": "metrics.jsonl"}
        if extra_save is not None:
            outputs.update(extra_save(run.path))
        run.finish(summary, outputs)
        return summary

    return train_then_save(run, accelerator, train, save)


def causal_parts(model):
    """(trunk, output head) of a causal LM under PEFT/DDP wrappers: ``trunk(...)`` gives the last hidden states,
    ``head`` maps them to logits. PEFT adapters live inside the trunk's layers, so ``disable_adapter`` still
    applies. (Models whose logits are more than ``head(hidden)``, e.g. soft-capped, are not supported here.)"""
    from posttrain.ops.logprobs import unwrap_model

    m = unwrap_model(model)
    return m.get_decoder(), m.get_output_embeddings()


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
        from posttrain.ops.logprobs import tree_target_hidden
        from posttrain.ops.packing import prefix_tree

        lengths = batch["attention_mask"].sum(-1).tolist()
        ids, masks = batch["input_ids"].tolist(), batch["loss_mask"].tolist()
        tree = prefix_tree([row[:n] for row, n in zip(ids, lengths)], [m[:n] for m, n in zip(masks, lengths)],
                           max_row_tokens=batch["tree_row_tokens"])
        tree = {k: v.to(where.device) if isinstance(v, torch.Tensor) else v for k, v in tree.items()}
        # the tree lists each sequence's targets in order, sequence by sequence: the row-major order of `where`
        selected, head = tree_target_hidden(model, tree)  # (K, H)
        hidden = selected.new_zeros((*where.shape, selected.shape[-1])).index_put(where.nonzero(as_tuple=True),
                                                                                  selected)
    else:
        trunk, head = causal_parts(model)
        full = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).last_hidden_state  # (N, T, H)
        hidden = full[:, :-1]
        selected = hidden[where]
    logits = head(selected).float()  # (K, V)
    if temperature != 1.0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    token_logps = logps.new_zeros(where.shape).index_put(where.nonzero(as_tuple=True), logps)
    return (hidden, token_logps, logits) if with_logits else (hidden, token_logps)
