"""The online-RL loop (PPO, GRPO): rollouts, then several update epochs over minibatches of them.

It is ``training/loop.py::fit`` with one level more: each *step* draws ``optim.batch_size`` prompts (a pure
function of the step, as in ``fit``, so resume needs only the step number), samples completions with the current
policy and scores them (``RLFns.rollout``), then runs ``epochs`` passes over the rollout batch, each split into
``mini_batches`` optimizer steps of ``micro_batch_size`` sequences per forward pass. Within one optimizer step the
loss is ``sum(micro-batch loss sums) / W`` with W the minibatch's total weight (tokens or sequences), known before
the first forward, so the micro-batch size does not change the gradient. The optimizer, schedule (over all
optimizer steps), checkpoints (plus the trainer's own state, e.g. the adaptive KL coefficient), metrics.jsonl and
the progress bar are the same pieces ``fit`` uses.

Several processes (``torchrun`` / ``accelerate launch``, DDP semantics): ``optim.batch_size`` prompts per step over
all processes; each process samples and scores its shard (prompts ``rank::world`` of the step), so rollouts run in
parallel; its minibatches are the same fraction of its rollouts. Gradients are summed across processes by one
all-reduce per optimizer step (``allreduce_gradients``) instead of through a DDP wrapper, because the RL losses
call the trunk, the output head and the value head separately, outside any wrapper's forward. W is summed
across processes too, so the step is the one process's step on the union of the shards when each update uses
the whole rollout batch (``mini_batches`` 1). Batch statistics (reward/advantage whitening, the KL the controller
sees, every logged metric) are taken over all processes (``RLFns`` builders receive a ``reduce``).

``parallel.strategy=fsdp2`` (GRPO): the model is sharded before the optimizer is built, each rollout runs with the
weights gathered (``training/parallel.py::gathered``: decoding makes no collective call, so processes may decode
different lengths), FSDP reduce-scatters (averages) the gradients instead of ``allreduce_gradients`` (sums), so the
loss is scaled by the process count, and each process checkpoints its shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from posttrain.config import ConfigError
from posttrain.training.checkpoint import checkpoint_dir, save_checkpoint
from posttrain.training.loop import (LoopSettings, NonFiniteLoss, build_optimization, check_finite_weights,
                                     check_on_nonfinite, micro_batch_backward, on_nonfinite_step,
                                     optimizer_step, plan_steps, progress_bar, open_metrics_log, reduce_sum_fn,
                                     resume_from_checkpoint, start_engine, step_indices)
from posttrain.training.metrics import MetricSums
from posttrain.training.parallel import check_optimizer_covers, gathered, is_sharded, shard


@dataclass
class RLFns:
    # (prompt items, step) -> (rollout batch: tensors with N rows first, plus "num_rows"; per-step metrics)
    rollout: Callable[[list, int], tuple[dict, dict[str, float]]]
    # loss normaliser contribution of a micro-batch (tokens or rows); no forward pass
    weight: Callable[[dict], float]
    # (model, micro-batch) -> (summed loss, per-row metrics (B,), tokens processed)
    loss: Callable[[Any, dict], tuple[torch.Tensor, dict[str, torch.Tensor], int]]
    # after the updates of a step: (record) -> extra fields to log (e.g. the new KL coefficient)
    after_step: Callable[[dict], dict] | None = None
    # trainer state saved in checkpoints (JSON-serialisable) and restored on resume
    state: Callable[[], dict] = field(default=lambda: {})
    load_state: Callable[[dict], None] = field(default=lambda s: None)


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of ``rows`` (a 1-D index tensor): tensors are indexed on dim 0, lists picked, others kept."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch["num_rows"]:
            out[k] = v.index_select(0, rows.to(v.device))
        elif isinstance(v, list) and len(v) == batch["num_rows"]:
            out[k] = [v[i] for i in rows.tolist()]
        else:
            out[k] = v
    out["num_rows"] = len(rows)
    return out


def split_even(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, end) ranges covering range(n), sizes differing by at most one."""
    if parts > n:
        raise ConfigError(f"cannot split {n} rollout sequences into {parts} minibatches")
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def allreduce_gradients(params: list, world: int, bucket_elems: int = 1 << 24) -> None:
    """Sum every parameter's gradient over the ``world`` processes (a missing gradient counts as zeros), in
    flat buckets of at most ``bucket_elems`` elements: one collective per bucket, not per parameter."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elems or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset: offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def mean_over_processes(metrics: dict[str, float], weight: float, world: int) -> dict[str, float]:
    """The ``weight``-weighted mean of each metric over the processes (each process's value is a mean over its
    ``weight`` rows); keys any process lacks are averaged over those that have them. One process: unchanged."""
    if world == 1:
        return dict(metrics)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (float(weight), dict(metrics)))
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, m in gathered for k in m):
        parts = [(w, m[key]) for w, m in gathered if key in m and w > 0]
        total = sum(w for w, _ in parts)
        out[key] = sum(w * v for w, v in parts) / total if total else math.nan
    return out


def fit_rl(model, prompts: list, fns: RLFns, s: LoopSettings, accelerator, *, update_epochs: int,
           mini_batches: int, on_log=None) -> dict:
    """Train ``model`` in place on rollouts from ``prompts``. Returns a summary dict: the metrics of the last step
    that updated the model (a step with nothing to learn from logs ``loss: null`` and does not count) and
    ``train/steps_without_update``."""
    rank, world = accelerator.process_index, accelerator.num_processes
    reduce = reduce_sum_fn(accelerator)
    if s.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size={s.optim.batch_size} prompts per step must be divisible by the number of "
                          f"processes ({world})")
    check_on_nonfinite(s)
    per_epoch, total_steps = plan_steps(len(prompts), s.optim.batch_size, s.optim.epochs, s.optim.max_steps)
    opt_steps = total_steps * update_epochs * mini_batches
    sharded = s.parallel == "fsdp2" and world > 1
    if sharded:
        shard(model, accelerator.device, world)  # before the optimizer: it must hold the sharded parameters
    optimizer, scheduler = build_optimization(model, s, opt_steps)
    engine, trained = None, model  # trained: what the losses run forwards through
    if s.parallel == "deepspeed":  # after the optimizer: DeepSpeed partitions what it holds
        engine = trained = start_engine(model, optimizer, s, world)
        sharded = is_sharded(model)  # ZeRO-3: every forward is a collective, as under FSDP2
    else:
        if world == 1:
            model = trained = accelerator.prepare(model)
        check_optimizer_covers(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    # gradients are summed over processes by allreduce_gradients (DDP semantics), or averaged by FSDP's
    # reduce-scatter or DeepSpeed's reduction: the loss is then scaled by the process count so that all give the
    # same step
    scale = world if sharded or engine is not None else 1
    start, state = resume_from_checkpoint(s, model, optimizer, scheduler, rank=rank, total_steps=total_steps,
                                          sharded=sharded, world_size=world, engine=engine)
    if start:
        fns.load_state(state.get("rl", {}))
    log = open_metrics_log(s, rank, start)
    bar = progress_bar(s, total_steps, start, enabled=rank == 0)
    last: dict = {}  # the record of the last step that updated the model (the summary's train/* values)
    t_total, tokens_total, skipped_total, applied_total, idle_steps = 0.0, 0, 0, 0, 0
    checkpoint = checkpoint_dir(s.train.output_dir, start) if start else None  # the newest, named if an update fails
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        idx = step_indices(step, num_items=len(prompts), batch_size=s.optim.batch_size, steps_per_epoch=per_epoch,
                           seed=s.train.seed, shuffle=s.data.shuffle)
        model.eval()
        with gathered(model):  # sampling: each process decodes its prompts for as long as they need
            batch, rollout_metrics = fns.rollout([prompts[i] for i in idx[rank::world]], step)
        samples = batch.pop("samples", None) or []  # this process's sampled completions (text rows), if any
        rollout_metrics = mean_over_processes(rollout_metrics, batch["num_rows"], world)
        t_rollout = time.perf_counter() - t0
        model.train()
        n = batch["num_rows"]
        order_gen = torch.Generator().manual_seed(s.train.seed * 7919 + step)
        sums, losses, norms, tokens, skipped = MetricSums(), [], [], 0, 0
        for _ in range(update_epochs):
            perm = torch.randperm(n, generator=order_gen)
            for lo, hi in split_even(n, mini_batches):
                rows = perm[lo:hi]
                micro = [select_rows(batch, rows[i:i + s.optim.micro_batch_size])
                         for i in range(0, len(rows), s.optim.micro_batch_size)]
                weight = float(reduce(torch.tensor([sum(float(fns.weight(m)) for m in micro)],
                                                   dtype=torch.float64)))
                if weight <= 0:
                    continue
                loss_value = 0.0
                for j, m in enumerate(micro):
                    autocast, backward = micro_batch_backward(engine, accelerator, model, j == len(micro) - 1)
                    with autocast:
                        loss_sum, metrics, n_tok = fns.loss(trained, m)
                        backward(loss_sum * scale / weight)
                    loss_value += float(loss_sum.detach()) / weight
                    tokens += n_tok
                    sums.add(metrics)
                if not sharded and engine is None:
                    allreduce_gradients(params, world)
                # the minibatch loss over all processes, so that every process takes the same decision on a
                # non-finite update (the gradient norm is already global after the all-reduce)
                loss_value = float(reduce(torch.tensor([loss_value], dtype=torch.float64))[0])
                norm, applied = optimizer_step(accelerator, params, optimizer, scheduler, s.optim.max_grad_norm,
                                               loss_value, sharded=sharded, engine=engine)
                if not applied:
                    skipped += 1
                    log.write({"step": step + 1, "update": len(norms) + skipped, "loss": loss_value,
                               "grad_norm": norm, "nonfinite": True})  # NaN/inf are written as null
                    on_nonfinite_step(s, step + 1, loss_value, norm, rank == 0, checkpoint)
                    continue
                norms.append(norm)
                losses.append(loss_value)
        skipped_total, applied_total = skipped_total + skipped, applied_total + len(norms)
        tokens = int(reduce(torch.tensor([tokens], dtype=torch.float64))[0])
        dt = time.perf_counter() - t0
        t_total += dt
        tokens_total += tokens
        record = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4),
                  "loss": sum(losses) / len(losses) if losses else math.nan,
                  "lr": scheduler.get_last_lr()[0], "grad_norm": max(norms) if norms else math.nan,
                  **rollout_metrics, **sums.reduced(reduce),
                  "rollout_s": round(t_rollout, 2), "step_s": round(dt, 2)}
        if skipped:
            record["skipped_updates"] = skipped
        if fns.after_step is not None:
            record.update(fns.after_step(record))
        if losses:
            last = record
        else:  # nothing to learn from this step (online DPO: every sample tied), or every update skipped
            idle_steps += 1
        if (step + 1) % s.train.log_every == 0 or step + 1 == total_steps:
            log.write(record)
            log.samples(step + 1, samples[:s.train.log_samples])  # the main process's rows (written there only)
            if on_log and rank == 0:
                on_log(record)
        if bar is not None:
            # PPO/GRPO log the reward, online DPO its judges' mean score
            reward = record.get("reward/total", record.get("score/mean", math.nan))
            bar.set_postfix(reward=f"{reward:.3f}", loss=f"{record['loss']:.4f}" if losses else "no update")
            bar.update(1)
        if s.train.save_every and (step + 1) % s.train.save_every == 0 and step + 1 < total_steps:
            check_finite_weights(model, step + 1, reduce, checkpoint)
            checkpoint = save_checkpoint(s.train.output_dir, step=step + 1, model=model, optimizer=optimizer,
                                         scheduler=scheduler, rank=rank, world_size=world,
                                         barrier=accelerator.wait_for_everyone,
                                         extra={"total_steps": total_steps, "rl": fns.state()},
                                         keep=s.train.keep_checkpoints, sharded=sharded, engine=engine)
    if bar is not None:
        bar.close()
    if skipped_total and not applied_total:
        raise NonFiniteLoss(f"train.on_nonfinite=skip: all {skipped_total} updates had a non-finite loss or "
                            "gradient norm, so nothing was trained; lower optim.lr or check the rewards")
    check_finite_weights(model, total_steps, reduce, checkpoint)
    summary = {"steps": total_steps, "train_time_s": round(t_total, 2),
               "tokens_per_s": round(tokens_total / t_total, 1) if t_total else None}
    summary.update({f"train/{k}": v for k, v in last.items() if k not in ("step", "epoch", "lr")})
    summary["train/steps_without_update"] = idle_steps
    if s.train.on_nonfinite == "skip":
        summary["train/skipped_updates"] = skipped_total
    log.close()
    return summary
