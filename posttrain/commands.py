"""The command table: every training command, once.

One row per command that trains a model: its CLI name (``posttrain reward-model``), its pipeline stage name
(``reward_model``), its config class, the kind of data it reads, the function that trains it, the metric a
pipeline run reports for it, and the files besides model and data whose content decides its output. The CLI
(``posttrain/cli.py``) mounts a command per row and the pipeline registry (``pipeline/registry.py``) builds a stage
per row, both from this table, so a command cannot exist in one and not the other, or with another config class.

Trainers are named, not imported (``module:function``): the training stack stays out of CLI start-up and ``--help``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from posttrain.config import COMMANDS, Section
from posttrain.data.layouts import load_examples


def _reward_model_input(params: dict) -> list[str]:
    """PPO/GRPO: the reward model folder(s) and the rubric file, when the config names them."""
    section = params.get("reward") or {}
    reward = section.get("reward_model")
    models = [r for r in reward if isinstance(r, str) and r] if isinstance(reward, list) else \
        [reward] if isinstance(reward, str) and reward else []
    rubric = section.get("rubric")
    return models + ([rubric] if isinstance(rubric, str) and rubric else [])


def judge_files(judges: list) -> list[str]:
    """What judge configs read besides the candidates: reward-model and local judges' model folders (a rubric
    judge's ``local`` grader too) and rubric files. The pipeline hashes them into a stage's key."""
    out = []
    for j in judges:
        if not isinstance(j, dict):
            continue
        if j.get("type") in ("reward_model", "local") and isinstance(j.get("model"), str):
            out.append(j["model"])
        if j.get("type") == "rubric":
            out += [j[k] for k in ("rubric", "local") if isinstance(j.get(k), str) and j[k]]
    return out


def _judge_model_inputs(params: dict) -> list[str]:
    """Online DPO and rejection-SFT: what their judges read (``judge_files``)."""
    return judge_files(((params.get("online") or params.get("rejection")) or {}).get("judges") or [])


@dataclass(frozen=True)
class TrainingCommand:
    name: str  # the CLI command: `posttrain <name>`
    stage: str  # the pipeline stage's `command:` value
    data_kind: str  # what data.train holds: sft | preference | unpaired | prompts
    entry: str  # "module:function" taking the config, returning the summary dict
    main_metric: str  # the metric `posttrain status` and the report show for a pipeline stage
    help: str  # one line for `posttrain --help`
    decontaminate: bool = False  # the pipeline stage checks its data against the eval suites first
    extra_inputs: Callable[[dict], list[str]] = field(default=lambda params: [])

    @property
    def config(self) -> type[Section]:
        """The config class (``posttrain.config.COMMANDS``, which ``load_config`` reads)."""
        return COMMANDS[self.name]

    def trainer(self) -> Callable[[Any], dict]:
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)


TRAINING_COMMANDS: tuple[TrainingCommand, ...] = (
    TrainingCommand("sft", "sft", "sft", "posttrain.trainers.sft:train_sft", "loss",
                    "Supervised fine-tuning (loss on assistant tokens only).", decontaminate=True),
    TrainingCommand("dpo", "dpo", "preference", "posttrain.trainers.preference:train_preference", "loss",
                    "Preference optimisation: loss.type = dpo | ipo | robust | hinge | simpo | orpo.",
                    decontaminate=True),
    TrainingCommand("kto", "kto", "unpaired", "posttrain.trainers.kto:train_kto", "loss",
                    "KTO on unpaired desirable/undesirable examples.", decontaminate=True),
    TrainingCommand("reward-model", "reward_model", "preference",
                    "posttrain.trainers.reward_model:train_reward_model", "rewards/accuracy",
                    "Train a Bradley-Terry reward model on preference pairs (accuracy, reward distribution, length "
                    "bias)."),
    TrainingCommand("ppo", "ppo", "prompts", "posttrain.trainers.ppo:train_ppo", "reward/total",
                    "PPO with a reward model and/or verifiers, adaptive KL, GAE, value head.",
                    extra_inputs=_reward_model_input),
    TrainingCommand("grpo", "grpo", "prompts", "posttrain.trainers.grpo:train_grpo", "reward/total",
                    "GRPO with verifiable rewards (constraints, math, code) and/or a reward model.",
                    extra_inputs=_reward_model_input),
    TrainingCommand("rejection-sft", "rejection_sft", "prompts",
                    "posttrain.trainers.rejection_sft:train_rejection_sft", "rejection/winners",
                    "Best-of-N sampling by a judge, then SFT on the winners.", extra_inputs=_judge_model_inputs),
    TrainingCommand("online-dpo", "online_dpo", "prompts",
                    "posttrain.trainers.online_dpo:train_online_dpo", "loss",
                    "Online DPO: sample from the current policy, judges (verifier, reward model, LLM) label pairs, a "
                    "DPO-family step on them.", extra_inputs=_judge_model_inputs),
)

BY_NAME: dict[str, TrainingCommand] = {c.name: c for c in TRAINING_COMMANDS}
BY_STAGE: dict[str, TrainingCommand] = {c.stage: c for c in TRAINING_COMMANDS}


def command(name: str) -> TrainingCommand:
    """The row of a CLI name (``reward-model``) or a stage name (``reward_model``)."""
    found = BY_NAME.get(name) or BY_STAGE.get(name)
    if found is None:
        raise KeyError(name)
    return found


def data_stats(name: str, cfg) -> dict:
    """Read and check ``cfg``'s data the way command ``name`` will, without training (``posttrain config
    validate``); returns counts. Raises the data errors the trainer would raise, before anything is written."""
    # Imported here, not at the top: the training stack (training.run, the trainers, generation.prompts) is named,
    # not imported, by this table (module docstring), so `posttrain --help` and the pipeline's checks do without it.
    from posttrain.models.policy import model_tokenizer
    from posttrain.training.run import load_training_data

    row = command(name)
    if row.data_kind != "prompts" and row.name != "reward-model":
        return load_training_data(cfg, row.data_kind).stats
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    if row.name == "reward-model":
        from posttrain.trainers.reward_model import render_rm_pairs

        d = cfg.data
        pairs, dropped = render_rm_pairs(load_examples(d.train, "preference", d.split), tokenizer,
                                         max_length=d.max_length, truncation=d.truncation,
                                         margin_key=cfg.loss.margin_key)
        return {"train/kept": len(pairs), "train/dropped_too_long": dropped}
    from posttrain.generation.prompts import load_prompt_items

    if row.name == "online-dpo":
        need = any(j.get("type") == "verifier" for j in cfg.online.judges)
    else:
        need = row.name != "rejection-sft" and cfg.reward.verifier_weight > 0
    _, stats = load_prompt_items(cfg.data.train, tokenizer, split=cfg.data.split,
                                 max_prompt_length=cfg.data.max_prompt_length, need_verifiable=need)
    if cfg.data.eval:
        _, ev = load_prompt_items(cfg.data.eval, tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                                  need_verifiable=need)
        stats.update({f"eval_{k}": v for k, v in ev.items()})
    return stats
