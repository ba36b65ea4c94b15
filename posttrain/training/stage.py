"""What every training command does around the loop: data loaded, validated and rendered before anything is
written; the output folder checked; the run folder (resolved config first, then manifest) opened; the trained
model saved with its lineage."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import ConfigError, dump_config
from posttrain.data.layouts import load_examples
from posttrain.data.render import render_dataset
from posttrain.models.policy import model_tokenizer
from posttrain.data.runfolder import RunFolder


@dataclass
class StageData:
    tokenizer: object
    train: list
    eval: list
    stats: dict


def load_stage_data(cfg, kind: str) -> StageData:
    """Read, validate and render train (and eval) data; raises DataErrors before any output exists."""
    d = cfg.data
    tokenizer = model_tokenizer(cfg.model.name, cfg.model.cache_dir, cfg.model.trust_remote_code)
    train_examples = load_examples(d.train, kind, d.split)
    eval_examples = load_examples(d.eval, kind, None) if d.eval else []
    if not eval_examples and d.eval_fraction > 0:
        order = list(range(len(train_examples)))
        random.Random(cfg.train.seed).shuffle(order)
        n_eval = max(1, int(round(d.eval_fraction * len(order))))
        eval_examples = [train_examples[i] for i in sorted(order[:n_eval])]
        train_examples = [train_examples[i] for i in sorted(order[n_eval:])]
    train, train_stats = render_dataset(train_examples, tokenizer, max_length=d.max_length, truncation=d.truncation)
    evals, eval_stats = (render_dataset(eval_examples, tokenizer, max_length=d.max_length, truncation=d.truncation)
                         if eval_examples else ([], None))
    stats = {"train/rows": len(train_examples), "train/kept": train_stats.kept,
             "train/dropped_too_long": train_stats.dropped, "train/truncated": train_stats.truncated}
    if eval_stats is not None:
        stats.update({"eval/rows": len(eval_examples), "eval/kept": eval_stats.kept,
                      "eval/dropped_too_long": eval_stats.dropped, "eval/truncated": eval_stats.truncated})
    if not train:
        raise ConfigError(f"{d.train}: no training rows left after truncation policy '{d.truncation}' "
                          f"(max_length={d.max_length})")
    return StageData(tokenizer, train, evals, stats)


def check_output_dir(train_cfg) -> None:
    """``train.output_dir`` is a folder this process can write (or can create), and empty unless resuming or
    overwriting; ``ConfigError`` naming the path otherwise. Called before the model is loaded."""
    from posttrain.data.writers import OutputPathError, check_output_path

    out = Path(train_cfg.output_dir)
    try:
        check_output_path(out, "train.output_dir")
    except OutputPathError as e:
        raise ConfigError(str(e)) from None
    if out.exists() and any(out.iterdir()) and not train_cfg.resume and not train_cfg.overwrite:
        raise ConfigError(f"train.output_dir '{out}' is not empty; set train.resume=true to continue it "
                          "or train.overwrite=true to replace it")


def open_run_folder(cfg, stage: str, is_main: bool, barrier) -> RunFolder:
    out = Path(cfg.train.output_dir)
    if is_main:
        if cfg.train.overwrite and not cfg.train.resume and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    run = RunFolder(out, stage)
    if is_main:
        run.write_config(dump_config(cfg))
        run.add_input("model", cfg.model.name)
        if cfg.model.adapter:
            run.add_input("adapter", cfg.model.adapter)
        run.add_input("data.train", cfg.data.train)
        if cfg.data.eval:
            run.add_input("data.eval", cfg.data.eval)
        if getattr(getattr(cfg, "loss", None), "reference_model", None):  # a pinned reference is an input too
            run.add_input("loss.reference_model", cfg.loss.reference_model)
        run.save(status="running")
    return run


def resolve_prefix_sharing(cfg, model) -> None:
    """Turn ``data.prefix_sharing: auto`` into true/false for this model, and fill in ``data.tree_row_tokens``,
    before the resolved config is written (so the run folder records the layout that ran). Flash-attention
    cannot take the tree's 4D mask: auto turns sharing off there, an explicit true is an error."""
    from posttrain.ops.logprobs import attention_implementation, takes_tree_mask, unwrap_model
    from posttrain.ops.packing import default_tree_row_tokens

    d = cfg.data
    if d.prefix_sharing == "auto":
        d.prefix_sharing = not getattr(d, "packing", False) and takes_tree_mask(model)
    elif d.prefix_sharing and not takes_tree_mask(model):
        raise ConfigError(f"data.prefix_sharing needs an attention that takes a 4D mask (sdpa or eager), not "
                          f"{attention_implementation(model)}; set data.prefix_sharing=false (or auto)")
    if d.prefix_sharing and d.tree_row_tokens is None:
        d.tree_row_tokens = default_tree_row_tokens(unwrap_model(model).config)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def print_summary(stage: str, metrics: dict, out_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"posttrain {stage}: {out_dir}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def run_training_stage(cfg, stage: str, kind: str, build_fns) -> dict:
    """Load and check data, load the policy, open the run folder, ``fit``, save. ``build_fns(model, data,
    accelerator)`` returns the trainer's ``StepFns``. Returns the summary metrics."""
    from posttrain.models.policy import load_policy, save_trained
    from posttrain.training.loop import fit, make_accelerator, settings_from_config

    check_output_dir(cfg.train)
    accelerator = make_accelerator(cfg.train.precision)
    data = load_stage_data(cfg, kind)
    seed_everything(cfg.train.seed)
    model, tokenizer, lineage = load_policy(cfg.model, cfg.peft, seed=cfg.train.seed, tokenizer=data.tokenizer)
    fns = build_fns(model, data, accelerator)
    run = open_run_folder(cfg, stage, accelerator.is_main_process, accelerator.wait_for_everyone)

    def save(summary: dict) -> dict:
        save_trained(model, tokenizer, run.path / "model", lineage)
        summary = {**data.stats, **summary}
        run.finish(summary, {"model": "model", "metrics": "metrics.jsonl"})
        return summary

    return train_then_save(run, accelerator,
                           lambda: fit(model, data.train, data.eval, fns, settings_from_config(cfg, stage), accelerator),
                           save)


def train_then_save(run: RunFolder, accelerator, train, save) -> dict:
    """``train()`` on every process, then ``save(summary)`` on the main process, which writes the outputs, calls
    ``run.finish`` and returns the final summary. Any failure marks the run folder failed and is re-raised."""
    is_main = accelerator.is_main_process
    try:
        summary = train()
        accelerator.wait_for_everyone()
        if is_main:
            summary = save(summary)
        accelerator.wait_for_everyone()
    except BaseException as e:
        if is_main:
            run.save(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    return summary


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
