"""PPO for RLHF (Ziegler et al. 2019; Ouyang et al. 2022): policy, frozen reference, reward (reward model and/or
verifiers) and a value model.

Per step: sample one completion per prompt; score it; per-token reward r_t = -beta KL_t plus the score on the
last token (``ops.advantages.token_rewards``), with beta from the adaptive KL controller; GAE (gamma, lambda) over
the critic's values; then ``ppo.epochs`` passes of ``ppo.mini_batches`` optimizer steps, each minimising

    clipped surrogate + vf_coef * clipped value loss - entropy_coef * entropy      (token mean over the minibatch)

The value model is a linear head on the policy's last hidden state (``value_model: head``: with LoRA the critic
shares the frozen trunk and trains through the adapter) or on a separate copy of the base with its own adapter
(``separate``). With LoRA the reference is the policy with its adapter disabled.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.generation.prompts import sample, sample_rows
from posttrain.losses.rl import clipped_value_loss, entropy_from_logits, kl_estimate, ppo_clip_loss
from posttrain.models.policy import load_policy
from posttrain.models.reference import build_reference, reference_model
from posttrain.ops.advantages import AdaptiveKLController, explained_variance, gae, token_rewards, whiten
from posttrain.ops.rollout import completion_forward, rollout_tensors
from posttrain.trainers.rl_common import run_rl_training
from posttrain.training.loop import cross_process_sum
from posttrain.training.parallel import loads_on_meta, place_model, place_reference
from posttrain.training.rollout_loop import RLFns, select_rows


class PolicyWithValueHead(nn.Module):
    """The trained module: ``policy`` (a causal LM, maybe PEFT) and a value head; ``value_trunk`` None shares
    the policy's trunk. ``forward`` -> (logits (B, T, V), values (B, T))."""

    def __init__(self, policy, value_trunk=None):
        super().__init__()
        self.policy, self.value_trunk = policy, value_trunk
        hidden = policy.config.hidden_size
        dtype = next(policy.parameters()).dtype
        self.value_head = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: dict, temperature: float):
        """(token_logps (N, T-1), tempered completion logits (K, V), values (N, T-1)): the value at position t
        is that of the state which predicts token t + 1."""
        hidden, token_logps, logits = completion_forward(self.policy, batch, temperature, with_logits=True)
        if self.value_trunk is not None:
            hidden = completion_forward(self.value_trunk, batch, temperature)[0]
        return token_logps, logits, self.value_head(hidden).squeeze(-1).float()


def build_value_trunk(cfg, seed: int, meta: bool = False):
    """A separate critic trunk: the base model again, with its own adapter (or fully trainable). ``meta``: built on
    the meta device, its weights to come from the first process (``training/parallel.py::loads_on_meta``)."""
    model, _, _ = load_policy(cfg.model, cfg.peft, seed=seed + 1, meta=meta)
    return model


def ppo_fns(model: PolicyWithValueHead, frozen_reference, generator, reward_fn, *, rollout_cfg, seed: int, p,
            pad_token_id: int, micro_batch_size: int, batch_size: int, device, reduce=None,
            tree_row_tokens: int | None = None) -> RLFns:
    """``p``: the ``ppo`` config section (read once here, passed as plain numbers below). ``reduce``: sums a
    tensor over processes (advantage whitening over every process's rollouts); None: one process."""
    T = rollout_cfg.temperature
    kl_ctl = AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)

    def forward(m, batch):
        return m(batch, T)

    def rollout(items, step):
        outs = sample(generator, items, n=1, rollout_cfg=rollout_cfg, seed=seed * 1000003 + step)
        completions = [o.token_ids for o in outs]
        lengths = [len(c) for c in completions]
        scores, metrics = reward_fn([it.example for it in items], [o.text for o in outs], lengths)
        batch = rollout_tensors([it.prompt_ids for it in items], completions, pad_token_id, device, tree_row_tokens)
        batch["num_rows"] = n = len(outs)
        batch["samples"] = sample_rows([it.example for it in items], outs, scores)
        mask = batch["completion_mask"]
        old_logps, values, ref_logps, entropies = [], [], [], []
        with torch.no_grad():
            for i in range(0, n, micro_batch_size):
                mb = select_rows(batch, torch.arange(i, min(i + micro_batch_size, n)))
                lp, logits, v = forward(model, mb)
                old_logps.append(lp.float())
                values.append(v)
                entropies.append(entropy_from_logits(logits).sum())
                with reference_model(model.policy, frozen_reference) as ref:
                    ref_logps.append(completion_forward(ref, mb, T)[1].float())
        old_logps, values, ref_logps = torch.cat(old_logps), torch.cat(values), torch.cat(ref_logps)
        m = mask.float()
        kl = kl_estimate(old_logps, ref_logps, p.kl_estimator) * m  # (N, T-1)
        rewards = token_rewards(scores.to(device), kl, mask, kl_coef=kl_ctl.value)
        advantages, returns = gae(rewards, values * m, mask, gamma=p.gamma, lam=p.lam)
        if p.whiten_advantages:
            advantages = whiten(advantages, mask, reduce=reduce)
        batch.update(old_logps=old_logps, old_values=values * m, advantages=advantages, returns=returns)
        seq_kl = kl.sum(-1)
        metrics.update({
            "kl": float(seq_kl.mean()),  # per-sequence KL(pi || ref), the quantity the controller targets
            "kl_coef": kl_ctl.value,
            "entropy": float(sum(entropies) / m.sum().clamp(min=1)),
            "response_length": sum(lengths) / n,
            "score": float(scores.mean()),
            "non_score_reward": float((-kl_ctl.value * seq_kl).mean()),
            "explained_variance": explained_variance(values * m, returns, mask),
        })
        return batch, metrics

    def weight(batch):
        return float(batch["completion_mask"].sum())

    def loss(m, batch):
        logps, logits, values = forward(m, batch)
        mask = batch["completion_mask"]
        pg, pg_m = ppo_clip_loss(logps, batch["old_logps"], batch["advantages"], mask, clip_range=p.clip_range)
        vl, vl_m = clipped_value_loss(values, batch["old_values"], batch["returns"], mask,
                                      clip_range=p.value_clip_range)
        fm = mask.to(pg.dtype)
        per_token = pg + p.vf_coef * vl
        # entropy of the (tempered) sampling distribution at the K completion positions
        where = mask.bool()
        ent = torch.zeros_like(pg)
        ent[where] = entropy_from_logits(logits).to(pg.dtype)
        if p.entropy_coef > 0:
            per_token = per_token - p.entropy_coef * ent
        n_tok = fm.sum(-1).clamp(min=1)
        metrics = {"clip_fraction": pg_m["clipped"].sum(-1) / n_tok, "value_loss": vl.detach().sum(-1) / n_tok,
                   "value_clip_fraction": vl_m["clipped"].sum(-1) / n_tok,
                   "approx_kl_old": (0.5 * (logps.detach() - batch["old_logps"]) ** 2 * fm).sum(-1) / n_tok,
                   "entropy_train": ent.detach().sum(-1) / n_tok}
        return (per_token * fm).sum(), metrics, int(batch["attention_mask"].sum())

    def after_step(record):
        # Ziegler et al.: the controller sees the batch's KL and the number of samples since the last update
        kl_ctl.update(record["kl"], n_steps=batch_size)
        return {"kl_coef_next": kl_ctl.value}

    def state():
        return {"kl_coef": kl_ctl.value}

    def load_state(s):
        if "kl_coef" in s:
            kl_ctl.value = float(s["kl_coef"])

    return RLFns(rollout=rollout, weight=weight, loss=loss, after_step=after_step, state=state, load_state=load_state)


def train_ppo(cfg) -> dict:
    p = cfg.ppo

    def build(policy, tokenizer, reward_fn, generator, accelerator):
        frozen, _ = build_reference(policy, p.reference, needs_reference=True)
        trunk = (build_value_trunk(cfg, cfg.train.seed, meta=loads_on_meta(cfg, accelerator))
                 if p.value_model == "separate" else None)
        torch.manual_seed(cfg.train.seed)
        model = PolicyWithValueHead(policy, trunk)
        place_model(model, accelerator.device)
        place_reference(frozen, cfg, accelerator)
        fns = ppo_fns(model, frozen, generator, reward_fn, rollout_cfg=cfg.rollout, seed=cfg.train.seed, p=p,
                      pad_token_id=tokenizer.pad_token_id, micro_batch_size=cfg.optim.micro_batch_size,
                      batch_size=cfg.optim.batch_size, device=accelerator.device,
                      reduce=cross_process_sum(accelerator),
                      tree_row_tokens=cfg.data.tree_row_tokens if cfg.data.prefix_sharing else None)

        def save_value(out_dir, full_state):
            state = {k: v for k, v in (full_state or model.state_dict()).items() if k.startswith("value_head.")}
            torch.save(state, out_dir / "value_head.pt")
            return {"value_head": "value_head.pt"}

        return model, fns, save_value

    return run_rl_training(cfg, "ppo", build, update_epochs=p.epochs, mini_batches=p.mini_batches)
