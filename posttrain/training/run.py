"""What every training command does around the loop: data loaded, validated and rendered before anything is
written; the output folder checked; the run folder (resolved config first, then manifest) opened; the trained
model saved with its lineage."""

from __future__ import annotations

import dataclasses
import functools
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from posttrain.config import ConfigError, dump_config
from posttrain.data.layouts import load_examples
from posttrain.data.sources import local_paths, source_label
from posttrain.data.render import render_dataset
from posttrain.data.runfolder import RunFolder
from posttrain.data.writers import OutputPathError, check_output_path
from posttrain.models.policy import load_policy, model_tokenizer, save_trained
from posttrain.ops.logprobs import attention_implementation, takes_tree_mask, unwrap_model
from posttrain.ops.packing import default_tree_row_tokens
from posttrain.training.loop import fit, make_accelerator, settings_from_config
from posttrain.training.parallel import (check_combination, full_state_dict, launcher_strategy, launcher_zero_stage,
                                        loads_on_meta)
from posttrain.training.samples import greedy_samples


@dataclass
class TrainingData:
    tokenizer: object
    train: list
    eval: list
    stats: dict


def split_off_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): ``fraction`` of the rows (at least one) drawn as held-out rows by a seeded shuffle; both
    keep the file's order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(fraction * len(order))))
    return [examples[i] for i in sorted(order[n_eval:])], [examples[i] for i in sorted(order[:n_eval])]


def load_training_data(cfg, kind: str) -> TrainingData:
    """Read, validate and render train (and eval) data; raises DataErrors before any output exists."""
    d = cfg.data
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    train_examples = load_examples(d.train, kind, d.split)
    eval_examples = load_examples(d.eval, kind, None) if d.eval else []
    if not eval_examples and d.eval_fraction > 0:
        train_examples, eval_examples = split_off_eval(train_examples, d.eval_fraction, cfg.train.seed)
    train, train_stats = render_dataset(train_examples, tokenizer, max_length=d.max_length, truncation=d.truncation)
    evals, eval_stats = (render_dataset(eval_examples, tokenizer, max_length=d.max_length, truncation=d.truncation)
                         if eval_examples else ([], None))
    stats = {"train/rows": len(train_examples), "train/kept": train_stats.kept,
             "train/dropped_too_long": train_stats.dropped, "train/truncated": train_stats.truncated}
    if eval_stats is not None:
        stats.update({"eval/rows": len(eval_examples), "eval/kept": eval_stats.kept,
                      "eval/dropped_too_long": eval_stats.dropped, "eval/truncated": eval_stats.truncated})
    if not train:
        raise ConfigError(f"{source_label(d.train)}: no training rows left after truncation policy '{d.truncation}' "
                          f"(max_length={d.max_length})")
    return TrainingData(tokenizer, train, evals, stats)


def check_output_dir(train_cfg) -> None:
    """``train.output_dir`` is a folder this process can write (or can create), and empty unless resuming or
    overwriting; ``ConfigError`` naming the path otherwise. Called before the model is loaded."""
    out = Path(train_cfg.output_dir)
    try:
        check_output_path(out, "train.output_dir")
    except OutputPathError as e:
        raise ConfigError(str(e)) from None
    if out.exists() and any(out.iterdir()) and not train_cfg.resume and not train_cfg.overwrite:
        raise ConfigError(f"train.output_dir '{out}' is not empty; set train.resume=true to continue it "
                          "or train.overwrite=true to replace it")


class TrainingRun:
    """One training command's run around its loop, the same for every trainer (sft, the DPO family, kto,
    reward-model, rejection-sft, ppo, grpo, online-dpo):

    - constructing it checks ``train.output_dir`` (before anything slow is loaded), makes the accelerator and
      seeds every RNG;
    - ``open(inputs)`` (after the data and model are checked and loaded) replaces or creates the folder and writes
      the resolved config and the manifest with the run's inputs (model, adapter, data, pinned reference, plus the
      trainer's own, e.g. a reward model);
    - inside ``guard()``, and in ``train_and_save``, a failure marks the manifest ``failed`` with the error and is
      re-raised;
    - ``train_and_save(train, save)`` runs ``train()`` on every process, then ``save(summary, path)`` on the main
      one, which writes the outputs and returns (final summary, outputs besides ``model`` and ``metrics``); the
      manifest is finished with them.
    """

    def __init__(self, cfg, command: str):
        check_output_dir(cfg.train)
        self.cfg, self.command = cfg, command
        self.accelerator = make_accelerator(cfg.train.precision)
        launched = launcher_strategy(self.accelerator.distributed_type, cfg.parallel.strategy,
                                     self.accelerator.num_processes)
        if launched != cfg.parallel.strategy:  # recorded in config.yaml: the run says how it ran
            cfg.parallel.strategy = launched
        if launched == "deepspeed":
            cfg.parallel.zero_stage = launcher_zero_stage(cfg.parallel.zero_stage)
        check_combination(cfg)
        self.is_main = self.accelerator.is_main_process
        self.folder: RunFolder | None = None
        self.full_state: dict | None = None  # the trained model's gathered weights when it was sharded
        seed_everything(cfg.train.seed)

    @property
    def path(self) -> Path:
        if self.folder is None:
            raise RuntimeError("TrainingRun.open() first")
        return self.folder.path

    def open(self, inputs: dict[str, str] | None = None) -> RunFolder:
        cfg, out = self.cfg, Path(self.cfg.train.output_dir)
        if self.is_main:
            if cfg.train.overwrite and not cfg.train.resume and out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.folder = RunFolder(out, self.command)
        if self.is_main:
            self.folder.write_config(dump_config(cfg))
            for name, value in {**standard_inputs(cfg), **(inputs or {})}.items():
                self.folder.add_input(name, value)
            self.folder.save(status="running")
        return self.folder

    @contextmanager
    def guard(self):
        try:
            yield
        except BaseException as e:
            if self.is_main and self.folder is not None:
                self.folder.save(status="failed", error=f"{type(e).__name__}: {e}")
            raise

    def train_and_save(self, train, save, model=None) -> dict:
        """``model``: the trained module; when the loop sharded it (``parallel.strategy=fsdp2``), its full weights
        are gathered on the main process (every process takes part) into ``self.full_state`` for ``save``."""
        with self.guard():
            summary = train()
            if model is not None:
                self.full_state = full_state_dict(model)
            self.accelerator.wait_for_everyone()
            if self.is_main:
                summary, outputs = save(summary, self.path)
                self.folder.finish(summary, {"model": "model", "metrics": "metrics.jsonl", **outputs})
            self.accelerator.wait_for_everyone()
        return summary


def standard_inputs(cfg) -> dict[str, str]:
    """The inputs every training run records in its manifest (their content keys the pipeline's cache)."""
    inputs = {"model": cfg.model.name}
    if cfg.model.adapter:
        inputs["adapter"] = cfg.model.adapter
    for key in ("train", "eval"):
        value = getattr(cfg.data, key)
        if isinstance(value, str):
            inputs[f"data.{key}"] = value
        elif value:  # a mixture: each source's path
            inputs.update({f"data.{key}[{i}]": path for i, path in enumerate(local_paths(value))})
    mix = getattr(getattr(cfg, "mix_sft", None), "path", None)  # SFT rows mixed into preference training
    if isinstance(mix, str):
        inputs["mix_sft.path"] = mix
    elif mix:
        inputs.update({f"mix_sft.path[{i}]": path for i, path in enumerate(local_paths(mix))})
    if getattr(getattr(cfg, "loss", None), "reference_model", None):  # a pinned reference is an input too
        inputs["loss.reference_model"] = cfg.loss.reference_model
    return inputs


def resolve_prefix_sharing(cfg, model) -> None:
    """Turn ``data.prefix_sharing: auto`` into true/false for this model, and fill in ``data.tree_row_tokens``,
    before the resolved config is written (so the run folder records the layout that ran). Flash-attention
    cannot take the tree's 4D mask: auto turns sharing off there, an explicit true is an error."""
    d = cfg.data
    if d.prefix_sharing == "auto":
        d.prefix_sharing = not getattr(d, "packing", False) and takes_tree_mask(model)
    elif d.prefix_sharing and not takes_tree_mask(model):
        raise ConfigError(f"data.prefix_sharing needs an attention that takes a 4D mask (sdpa or eager), not "
                          f"{attention_implementation(model)}; set data.prefix_sharing=false (or auto)")
    if d.prefix_sharing and d.tree_row_tokens is None:
        d.tree_row_tokens = default_tree_row_tokens(unwrap_model(model).config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def print_summary(command: str, metrics: dict, out_dir: str) -> None:
    table = Table(title=f"posttrain {command}: {out_dir}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def run_offline_training(cfg, command: str, kind: str, build_fns) -> dict:
    """The offline trainers (sft, the DPO family, kto): load and check data, then ``train_on_data``. Returns the
    summary metrics."""
    run = TrainingRun(cfg, command)
    return train_on_data(run, load_training_data(cfg, kind), build_fns)


def train_on_data(run: TrainingRun, data: TrainingData, build_fns, outputs: dict[str, str] | None = None) -> dict:
    """Load the policy, build the trainer's ``StepFns`` (``build_fns(model, data, accelerator)``), open the run
    folder (or, when the caller opened it already to make the data, rewrite its config with what ``build_fns``
    resolved), ``fit``, save the model. The summary starts with ``data.stats``; ``outputs``: files besides the
    model that the caller wrote into the run folder (recorded in the manifest). Used by the offline trainers and by
    rejection-SFT, whose selected winners are SFT data like any other."""
    cfg = run.cfg
    with run.guard():  # a failure while loading marks a folder the caller opened as failed
        model, tokenizer, lineage = load_policy(cfg.model, cfg.peft, seed=cfg.train.seed, tokenizer=data.tokenizer,
                                                meta=loads_on_meta(cfg, run.accelerator))
        fns = build_fns(model, data, run.accelerator)
        if getattr(cfg.train, "log_samples", 0) and data.eval:
            fns = dataclasses.replace(fns, samples=functools.partial(
                greedy_samples, tokenizer=tokenizer, max_new_tokens=cfg.train.log_samples_max_new_tokens))
        if run.folder is None:
            run.open()
        elif run.is_main:
            run.folder.write_config(dump_config(cfg))

    def save(summary: dict, path: Path) -> tuple[dict, dict]:
        save_trained(model, tokenizer, path / "model", lineage, state_dict=run.full_state)
        return {**data.stats, **summary}, dict(outputs or {})

    return run.train_and_save(
        lambda: fit(model, data.train, data.eval, fns, settings_from_config(cfg, run.command), run.accelerator),
        save, model=model)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
