"""Pipeline stages ``reward_model``, ``ppo``, ``grpo``, ``rejection_sft`` and ``online_dpo``: the config tree is the
command's config (as in ``posttrain reward-model|ppo|grpo|rejection-sft|online-dpo``), the output folder is the
stage's run folder."""

from __future__ import annotations

from pathlib import Path

STAGE_COMMANDS = {"reward_model": "reward-model", "ppo": "ppo", "grpo": "grpo", "rejection_sft": "rejection-sft",
                  "online_dpo": "online-dpo"}
MAIN_METRICS = {"reward_model": "rewards/accuracy", "ppo": "reward/total", "grpo": "reward/total",
                "rejection_sft": "rejection/winners", "online_dpo": "loss"}


def _runner(command: str):
    def run(params: dict, output_dir: Path, resume: bool) -> dict:
        from posttrain.pipeline.registry import training_config
        from posttrain.trainers.rl_cli import trainer

        return trainer(command)(training_config(command, params, output_dir, resume))

    return run


def _check(command: str):
    def check(params: dict, pending) -> None:  # the whole config, before any stage of the pipeline runs
        from posttrain.pipeline.registry import training_config

        training_config(command, params, Path("<check>"), False)

    return check


def rl_inputs(params: dict) -> list[str]:
    """Model, adapter, data, (PPO/GRPO) the reward model and (online DPO) the judges' model folders: the files whose
    content decides the output."""
    from posttrain.pipeline.registry import training_inputs

    reward = (params.get("reward") or {}).get("reward_model")
    judges = (params.get("online") or {}).get("judges") or []
    judge_models = [j["model"] for j in judges if isinstance(j, dict) and j.get("type") in ("reward_model", "local")
                    and isinstance(j.get("model"), str)]
    return training_inputs(params) + ([reward] if reward else []) + judge_models


def rl_stages() -> dict:
    from posttrain.pipeline.registry import StageSpec

    return {name: StageSpec(_runner(command), rl_inputs, _check(command), main_metric=MAIN_METRICS[name])
            for name, command in STAGE_COMMANDS.items()}
