"""What the online trainers (PPO, GRPO, online DPO) share around their loop: the held-out reward before and after
training, loading prompts + policy + generator (``load_rl_setup``), and the training run of PPO and GRPO
(``run_rl_training``). The parts they share inside the loop live in their layers: prompt rows and sampling in
``generation/prompts.py``, the reward in ``judges/reward.py``, rollout tensors and the completion forward in
``ops/rollout.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from posttrain.generation.prompts import PromptItem, load_prompt_items, make_generator, sample
from posttrain.generation.vllm_backend import import_vllm
from posttrain.judges.reward import RewardFunction, check_rubric_reward
from posttrain.models.policy import load_policy, model_tokenizer, save_trained
from posttrain.training.loop import cross_process_sum, settings_from_config
from posttrain.training.parallel import gathered, loads_on_meta, place_model, shard, shards_with_fsdp2
from posttrain.training.rollout_loop import fit_rl, mean_over_processes
from posttrain.training.run import TrainingRun, resolve_prefix_sharing


def heldout_reward(generator, items: list[PromptItem], reward_fn: RewardFunction, rollout_cfg, seed: int,
                   prefix: str, accelerator=None) -> dict[str, float]:
    """``rollout.eval_samples`` completions of each held-out prompt at ``rollout.eval_temperature`` (0: greedy),
    seeded identically before and after training, scored: ``{prefix}/reward/...`` metrics. Under several
    processes each samples its shard of the prompts and the metrics are averaged over all of them."""
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


def shard_before_sampling(cfg, model, accelerator) -> None:
    """Under ``parallel.strategy=fsdp2`` with several processes, shard ``model`` before the held-out reward first
    samples from it: a process that built it on the meta device (``loads_on_meta``) receives its weights here, and
    ``fit_rl`` then finds it sharded."""
    if shards_with_fsdp2(cfg, accelerator):
        shard(model, accelerator.device, accelerator.num_processes)


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class RLSetup:
    """What every online trainer (PPO, GRPO, online DPO) loads before its own parts: prompts, policy, sampler."""

    tokenizer: Any
    items: list
    stats: dict
    eval_items: list
    policy: Any
    lineage: Any
    generator: Any


def load_rl_setup(cfg, run: TrainingRun, need_verifiable: bool) -> RLSetup:
    """Prompts (and held-out prompts) read and checked, then the seeded policy and its generator; a missing vllm
    fails before anything is loaded or written."""
    if cfg.rollout.backend == "vllm":
        import_vllm()
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    items, stats = load_prompt_items(cfg.data.train, tokenizer, split=cfg.data.split,
                                     max_prompt_length=cfg.data.max_prompt_length, need_verifiable=need_verifiable)
    eval_items = []
    if cfg.data.eval:
        eval_items, _ = load_prompt_items(cfg.data.eval, tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                                          need_verifiable=need_verifiable)
    policy, tokenizer, lineage = load_policy(cfg.model, cfg.peft, seed=cfg.train.seed, tokenizer=tokenizer,
                                             meta=loads_on_meta(cfg, run.accelerator))
    place_model(policy, run.accelerator.device)
    generator = make_generator(policy, tokenizer, cfg.rollout, cfg.model, run.accelerator.process_index)
    resolve_prefix_sharing(cfg, policy)
    return RLSetup(tokenizer, items, stats, eval_items, policy, lineage, generator)


def run_rl_training(cfg, command: str, build, *, update_epochs: int, mini_batches: int) -> dict:
    """PPO and GRPO: load prompts (and held-out prompts), the policy and the reward; open the run folder;
    ``fit_rl`` between two held-out reward measurements; save.

    ``build(policy, tokenizer, reward_fn, generator, accelerator)`` returns ``(trained module, RLFns, extra
    save)`` where the trained module is the policy or a policy + value-head wrapper and ``extra save(out_dir,
    full_state)`` writes anything besides the policy and returns those outputs (or is None); ``full_state`` is the
    trained module's gathered state dict when it was sharded, else None."""
    run = TrainingRun(cfg, command)
    accelerator = run.accelerator
    check_rubric_reward(cfg.reward)  # a bad rubric file fails before the policy loads
    setup = load_rl_setup(cfg, run, need_verifiable=cfg.reward.verifier_weight > 0)
    policy, tokenizer, generator = setup.policy, setup.tokenizer, setup.generator
    reward_fn = RewardFunction(cfg.reward, max_new_tokens=cfg.rollout.max_new_tokens,
                               reduce=cross_process_sum(accelerator))
    model, fns, extra_save = build(policy, tokenizer, reward_fn, generator, accelerator)
    rms = cfg.reward.reward_model
    inputs = ({"reward.reward_model": rms} if isinstance(rms, str) and rms
              else {f"reward.reward_model[{i}]": path for i, path in enumerate(rms or [])})
    if cfg.reward.rubric:
        inputs["reward.rubric"] = cfg.reward.rubric
    run.open(inputs)

    def heldout(prefix: str) -> dict:
        if not setup.eval_items:
            return {}
        policy.eval()
        with gathered(model):  # after a sharded run: each process samples its share with the full weights
            return heldout_reward(generator, setup.eval_items, reward_fn, cfg.rollout, cfg.train.seed, prefix,
                                  accelerator)

    def train() -> dict:
        shard_before_sampling(cfg, model, accelerator)
        summary = {**setup.stats, **heldout("eval_before")}
        summary.update(fit_rl(model, setup.items, fns, settings_from_config(cfg, command), accelerator,
                              update_epochs=update_epochs, mini_batches=mini_batches))
        summary.update(heldout("eval_after"))
        return summary

    def save(summary: dict, path) -> tuple[dict, dict]:
        full = run.full_state  # the trained module's gathered weights when it was sharded (parallel.strategy=fsdp2)
        policy_state = full
        if full is not None and model is not policy:  # PPO: the policy inside its value-head wrapper
            policy_state = {k[len("policy."):]: v for k, v in full.items() if k.startswith("policy.")}
        save_trained(policy, tokenizer, path / "model", setup.lineage, state_dict=policy_state)
        return summary, (extra_save(path, full) if extra_save is not None else {})

    return run.train_and_save(train, save, model=model)
