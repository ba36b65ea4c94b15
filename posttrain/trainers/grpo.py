"""GRPO / RLVR: G samples per prompt, group-normalised advantages, clipped token-level loss, optional k3 KL to the
reference (Shao et al. 2024, DeepSeekMath), with the Dr. GRPO (Liu et al. 2025) and DAPO token-level (Yu et al.
2025) length normalisations. Rewards: verifiers and/or a reward model (``judges/reward.py::RewardFunction``).

With ``grpo.iterations * grpo.mini_batches == 1`` each rollout batch is used for one optimizer step, so the
sampling policy is the current one: the ratio is exactly 1 and the old log-probs need no extra forward pass.
"""

from __future__ import annotations

import torch

from posttrain.losses.rl import grpo_token_losses, reduce_sequence_losses, sequence_loss_weight
from posttrain.models.reference import build_reference, reference_model
from posttrain.ops.advantages import group_advantages
from posttrain.generation.prompts import sample, sample_rows
from posttrain.ops.rollout import completion_forward, rollout_tensors
from posttrain.trainers.rl_common import run_rl_training
from posttrain.training.parallel import place_reference
from posttrain.training.rollout_loop import RLFns, select_rows


def token_logps(model, batch: dict, temperature: float) -> torch.Tensor:
    return completion_forward(model, batch, temperature)[1]


def no_grad_token_logps(model, batch: dict, micro_batch_size: int, temperature: float) -> torch.Tensor:
    """(N, T-1) token log-probs of the completion targets, in micro-batches, without gradients."""
    parts = []
    with torch.no_grad():
        for i in range(0, batch["num_rows"], micro_batch_size):
            mb = select_rows(batch, torch.arange(i, min(i + micro_batch_size, batch["num_rows"])))
            parts.append(token_logps(model, mb, temperature).float())
    return torch.cat(parts)


def grpo_fns(policy, frozen_reference, generator, reward_fn, *, num_generations: int, rollout_cfg, seed: int,
             beta: float, clip_range: float, clip_range_high: float | None, loss_type: str, scale_rewards: bool,
             reuse: bool, pad_token_id: int, micro_batch_size: int, device, tree_row_tokens: int | None = None
             ) -> RLFns:
    G, T = num_generations, rollout_cfg.temperature

    def rollout(items, step):
        outs = sample(generator, items, n=G, rollout_cfg=rollout_cfg, seed=seed * 1000003 + step)
        examples = [it.example for it in items for _ in range(G)]
        completions = [o.token_ids for o in outs]
        lengths = [len(c) for c in completions]
        scores, metrics = reward_fn(examples, [o.text for o in outs], lengths)
        advantages = group_advantages(scores, G, scale_std=scale_rewards)
        batch = rollout_tensors([it.prompt_ids for it in items for _ in range(G)], completions, pad_token_id, device,
                                tree_row_tokens)
        batch.update(num_rows=len(outs), advantages=advantages.to(device),
                     samples=sample_rows(examples, outs, scores))
        if reuse:  # several updates per batch: the ratio is to the sampling policy
            batch["old_logps"] = no_grad_token_logps(policy, batch, micro_batch_size, T)
        if beta > 0:
            with reference_model(policy, frozen_reference) as ref:
                batch["ref_logps"] = no_grad_token_logps(ref, batch, micro_batch_size, T)
        grouped = scores.reshape(-1, G)
        metrics.update({
            "reward/std_in_group": float(grouped.std(dim=1).mean()),
            # groups whose G rewards are all equal carry no signal (too easy or too hard)
            "groups/no_signal": float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean()),
            "response_length": sum(lengths) / len(lengths),
            "response_clipped": sum(o.finish_reason == "length" for o in outs) / len(outs),
        })
        return batch, metrics

    def weight(batch):
        return sequence_loss_weight(batch["completion_mask"], loss_type)

    def loss(model, batch):
        logps = token_logps(model, batch, T)
        mask = batch["completion_mask"]
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        token_losses, m = grpo_token_losses(logps, old, batch["advantages"], mask,
                                            ref_logps=batch.get("ref_logps"), beta=beta, clip_range=clip_range,
                                            clip_range_high=clip_range_high)
        per_seq = reduce_sequence_losses(token_losses, mask, loss_type, rollout_cfg.max_new_tokens)
        n_tok = mask.sum(-1).clamp(min=1).to(logps.dtype)
        metrics = {"clip_fraction": m["clipped"].sum(-1) / n_tok}
        if "ref_logps" in batch:
            metrics["kl"] = m["kl"].sum(-1) / n_tok  # token-mean k3 per sequence
        return per_seq.sum(), metrics, int(batch["attention_mask"].sum())

    return RLFns(rollout=rollout, weight=weight, loss=loss)


def train_grpo(cfg) -> dict:
    g = cfg.grpo

    def build(policy, tokenizer, reward_fn, generator, accelerator):
        frozen, _ = build_reference(policy, g.reference, needs_reference=g.beta > 0)
        place_reference(frozen, cfg, accelerator)
        fns = grpo_fns(policy, frozen, generator, reward_fn, num_generations=g.num_generations, rollout_cfg=cfg.rollout,
                       seed=cfg.train.seed, beta=g.beta, clip_range=g.clip_range, clip_range_high=g.clip_range_high,
                       loss_type=g.loss_type, scale_rewards=g.scale_rewards, reuse=g.iterations * g.mini_batches > 1,
                       pad_token_id=tokenizer.pad_token_id, micro_batch_size=cfg.optim.micro_batch_size,
                       device=accelerator.device,
                       tree_row_tokens=cfg.data.tree_row_tokens if cfg.data.prefix_sharing else None)
        return policy, fns, None

    return run_rl_training(cfg, "grpo", build, update_epochs=g.iterations, mini_batches=g.mini_batches)
