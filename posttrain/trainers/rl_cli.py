"""The ``reward-model``, ``ppo``, ``grpo``, ``rejection-sft`` and ``online-dpo`` commands (mounted by
``posttrain/cli.py``).

Each takes an optional YAML config followed by dotted overrides, like ``posttrain dpo``::

    posttrain grpo examples/grpo.yaml grpo.num_generations=8 optim.lr=1e-5
"""

from __future__ import annotations

import typer

RL_COMMANDS = ("reward-model", "ppo", "grpo", "rejection-sft", "online-dpo")


def trainer(command: str):
    """The training function of one of ``RL_COMMANDS`` (imported when called: torch stays out of CLI start-up)."""
    if command == "reward-model":
        from posttrain.trainers.reward_model import train_reward_model

        return train_reward_model
    if command == "ppo":
        from posttrain.trainers.ppo import train_ppo

        return train_ppo
    if command == "grpo":
        from posttrain.trainers.grpo import train_grpo

        return train_grpo
    if command == "rejection-sft":
        from posttrain.trainers.rejection_sft import train_rejection_sft

        return train_rejection_sft
    if command == "online-dpo":
        from posttrain.trainers.online_dpo import train_online_dpo

        return train_online_dpo
    raise KeyError(command)


def _run(command: str, args: list[str] | None) -> None:
    import os

    from posttrain.cli import _fail, _split_args, _user_errors
    from posttrain.config import load_config
    from posttrain.training.stage import print_summary

    path, overrides = _split_args(args)
    try:
        cfg = load_config(command, path, overrides)
        summary = trainer(command)(cfg)
    except _user_errors() as e:
        _fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(command, summary, cfg.train.output_dir)


_ARGS = typer.Argument(None, help="[CONFIG.yaml] [section.key=value ...]")


def reward_model_command(args: list[str] = _ARGS) -> None:
    """Bradley-Terry reward model on preference pairs; reports held-out accuracy and length bias."""
    _run("reward-model", args)


def ppo_command(args: list[str] = _ARGS) -> None:
    """PPO (RLHF): rollouts, KL-penalised reward, GAE, clipped surrogate and value loss."""
    _run("ppo", args)


def grpo_command(args: list[str] = _ARGS) -> None:
    """GRPO / RLVR: G samples per prompt, group-normalised advantages, verifier and/or reward-model rewards."""
    _run("grpo", args)


def rejection_sft_command(args: list[str] = _ARGS) -> None:
    """Rejection-sampling SFT: best-of-N by a judge, then SFT on the winners."""
    _run("rejection-sft", args)


def online_dpo_command(args: list[str] = _ARGS) -> None:
    """Online DPO (OAIF): each step samples from the current policy, judges label pairs, a DPO-family update."""
    _run("online-dpo", args)


def mount(app) -> None:
    app.command("reward-model", help="Train a Bradley-Terry reward model on preference pairs (accuracy, reward "
                                     "distribution, length bias).")(reward_model_command)
    app.command("ppo", help="PPO with a reward model and/or verifiers, adaptive KL, GAE, value head.")(ppo_command)
    app.command("grpo", help="GRPO with verifiable rewards (constraints, math, code) and/or a reward model.")(
        grpo_command)
    app.command("rejection-sft", help="Best-of-N sampling by a judge, then SFT on the winners.")(
        rejection_sft_command)
    app.command("online-dpo", help="Online DPO: sample from the current policy, judges (verifier, reward model, LLM) "
                                   "label pairs, a DPO-family step on them.")(online_dpo_command)


def validate_data(command: str, cfg) -> dict:
    """Read and check ``cfg``'s data the way ``command`` will (for ``posttrain config validate``); returns counts."""
    from posttrain.models.policy import model_tokenizer

    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    if command == "reward-model":
        from posttrain.data.layouts import load_examples
        from posttrain.trainers.reward_model import render_rm_pairs

        d = cfg.data
        pairs, dropped = render_rm_pairs(load_examples(d.train, "preference", d.split), tokenizer,
                                         max_length=d.max_length, truncation=d.truncation,
                                         margin_key=cfg.loss.margin_key)
        return {"train/kept": len(pairs), "train/dropped_too_long": dropped}
    from posttrain.trainers.rl_common import load_prompt_items

    if command == "online-dpo":
        need = any(j.get("type") == "verifier" for j in cfg.online.judges)
    else:
        need = command != "rejection-sft" and cfg.reward.verifier_weight > 0
    _, stats = load_prompt_items(cfg.data.train, tokenizer, split=cfg.data.split,
                                 max_prompt_length=cfg.data.max_prompt_length, need_verifiable=need)
    if cfg.data.eval:
        _, ev = load_prompt_items(cfg.data.eval, tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                                  need_verifiable=need)
        stats.update({f"eval_{k}": v for k, v in ev.items()})
    return stats
