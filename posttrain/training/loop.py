"""The one training loop every trainer runs, built on accelerate (DDP/FSDP/DeepSpeed via ``accelerate launch`` or
``torchrun``, unchanged code).

A trainer supplies a ``StepFns``: how to collate items into a micro-batch, how much a micro-batch weighs in the
loss normaliser (tokens for SFT, pairs for DPO), and how to compute the summed loss of a micro-batch. The loop
owns the rest: data order, sharding across processes, gradient accumulation with exact loss scaling, clipping,
schedule, checkpoints, resume, eval, metrics and the progress bar.

Exact accumulation: the loss of one optimizer step is ``sum(micro-batch loss sums) / W`` where W is the global
weight of the whole step (summed over micro-batches *and* processes before any forward pass). So 1x8 and 8x1
give the same gradient, and token-mean SFT loss is not biased toward short micro-batches.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from posttrain.config import ConfigError, DataSection, OptimSection, PromptDataSection, TrainSection
from posttrain.ops.logprobs import unwrap_model
from posttrain.training.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from posttrain.training.metrics import MetricSums, MetricsLog
from posttrain.training.optim import build_optimizer, build_scheduler, resolve_warmup
from posttrain.training.parallel import (check_optimizer_covers, deepspeed_config, deepspeed_engine, gradient_sync,
                                         is_sharded, local, shard, total_norm)
from posttrain.training.trackers import Trackers


@dataclass
class StepFns:
    collate: Callable[[list], dict]
    # Contribution of a micro-batch to the loss normaliser; needs no forward pass.
    weight: Callable[[dict], float]
    # (model, batch) -> (summed loss over the micro-batch, per-example metrics (B,), tokens processed)
    loss: Callable[[Any, dict], tuple[torch.Tensor, dict[str, torch.Tensor], int]]
    # Same contract for evaluation, where processes may run different numbers of micro-batches and so must not
    # issue collectives inside the loss; defaults to ``loss``.
    eval_loss: Callable[[Any, dict], tuple[torch.Tensor, dict[str, torch.Tensor], int]] | None = None
    # Tokens in one item, for length-sorted batching (``data.sort_by_length``); None: the option is refused.
    length: Callable[[Any], int] | None = None
    # Called at every checkpoint and at the end of training (e.g. to write cached reference log-probs).
    flush: Callable[[], None] | None = None
    # (unwrapped model, eval items) -> rows of sample generations for samples.jsonl and the trackers, made on the
    # main process at each evaluation (``training/samples.py``); None: no samples
    samples: Callable[[Any, list], list[dict]] | None = None


@dataclass(frozen=True)
class LoopSettings:
    """What the loops read of a run's config: its ``optim`` and ``train`` sections and its data section (order:
    ``shuffle``; offline data: ``sort_by_length``, ``sort_window``), held as the config objects themselves, not
    copied field by field; ``parallel`` is ``parallel.strategy`` (ddp | fsdp2 | deepspeed, ``training/parallel.py``),
    ``zero_stage`` its ZeRO stage under deepspeed, ``desc`` the progress bar's label, ``config`` the resolved config
    logged to the trackers as hyperparameters."""
    optim: OptimSection
    train: TrainSection
    data: DataSection | PromptDataSection
    parallel: str = "ddp"
    zero_stage: int = 2  # with parallel="deepspeed"
    desc: str = "train"
    config: dict | None = None

    @property
    def sort_window(self) -> int:
        """Batches per length-sorted window; 0: no length sort (off, or prompt data: RL, rejection-SFT)."""
        return self.data.sort_window if getattr(self.data, "sort_by_length", False) else 0


def build_optimization(model, s: LoopSettings, total_steps: int):
    """The optimizer over ``model``'s trainable parameters and its schedule over ``total_steps`` optimizer steps."""
    o = s.optim
    optimizer = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, betas=(o.adam_beta1, o.adam_beta2),
                                eps=o.adam_eps)
    warmup = resolve_warmup(total_steps, o.warmup_steps, o.warmup_ratio)
    return optimizer, build_scheduler(optimizer, total_steps=total_steps, warmup_steps=warmup, schedule=o.schedule)


def resume_from_checkpoint(s: LoopSettings, model, optimizer, scheduler, *, rank: int, total_steps: int,
                           sharded: bool = False, world_size: int = 1, engine=None) -> tuple[int, dict]:
    """(step to start at, the checkpoint's state) from the latest checkpoint when ``train.resume``; (0, {})
    otherwise."""
    if not s.train.resume or (ckpt := latest_checkpoint(s.train.output_dir)) is None:
        return 0, {}
    state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, sharded=sharded,
                            world_size=world_size, engine=engine)
    if rank == 0:
        # the checkpoint actually loaded: a damaged latest one falls back to the previous complete one
        used = state.get("checkpoint", ckpt)
        print(f"posttrain: resumed from {used} (step {state['step']} of {total_steps})", flush=True)
    return state["step"], state


def progress_bar(s: LoopSettings, total_steps: int, start: int, enabled: bool = True):
    """A tqdm bar over optimizer steps, or None when progress is off (or on ranks other than 0)."""
    if not (enabled and s.train.progress):
        return None
    return tqdm(total=total_steps, initial=start, desc=s.desc, unit="step", dynamic_ncols=True)


class NonFiniteLoss(ConfigError):
    """A step's loss, gradient norm or weights are NaN or infinite under ``train.on_nonfinite: fail``. A
    ``ConfigError`` (one line, exit 2): the fixes are settings (a lower ``optim.lr``, ``optim.max_grad_norm``,
    ``train.precision=fp32``) or the data."""


ON_NONFINITE = ("fail", "skip")


def check_on_nonfinite(s: LoopSettings) -> None:
    if s.train.on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"train.on_nonfinite '{s.train.on_nonfinite}': expected one of {', '.join(ON_NONFINITE)}")


def optimizer_step(accelerator, params: list, optimizer, scheduler, max_grad_norm: float | None,
                   loss: float = 0.0, sharded: bool = False, engine=None) -> tuple[float, bool]:
    """Clip the accumulated gradients, step the optimizer and the schedule, clear the gradients. Returns (the
    gradient norm before clipping, whether the update was applied).

    When ``loss`` (the step's loss, the same on every process) or the norm is NaN or infinite the optimizer is
    not stepped, so the weights keep their last finite values; the schedule still advances, so the learning rate
    stays a function of the step number (what resume relies on). Under DeepSpeed, ``engine_step``."""
    if engine is not None:
        return engine_step(engine, scheduler, loss)
    limit = max_grad_norm if max_grad_norm is not None else math.inf
    # sharded (DTensor) gradients: torch's clip computes the global norm over the shards
    grad_norm = (total_norm(torch.nn.utils.clip_grad_norm_(params, limit)) if sharded
                 else float(accelerator.clip_grad_norm_(params, limit)))
    applied = math.isfinite(grad_norm) and math.isfinite(loss)
    if applied:
        optimizer.step()
        scheduler.step()
    else:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" is the point here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied


def engine_autocast(accelerator):
    """bf16 autocast under DeepSpeed when the run's precision is bf16: accelerate turns its own autocast off when it
    was launched with a DeepSpeed config (it expects DeepSpeed's bf16 mode, which posttrain leaves off)."""
    return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16,
                          enabled=accelerator.mixed_precision == "bf16")


def start_engine(model, optimizer, s: LoopSettings, world: int):
    """The DeepSpeed engine over ``model`` and the optimizer built over it (``parallel.strategy=deepspeed``), its
    buckets sized from the model's hidden size (the first submodule whose config names one: a PPO policy + value
    head wrapper has none of its own)."""
    hidden = next((m.config.hidden_size for m in unwrap_model(model).modules()
                   if isinstance(getattr(getattr(m, "config", None), "hidden_size", None), int)), None)
    return deepspeed_engine(model, optimizer, deepspeed_config(
        s.zero_stage, s.optim.micro_batch_size, world, s.optim.max_grad_norm, hidden))


def micro_batch_backward(engine, accelerator, model, last_micro_batch: bool):
    """(autocast context, backward function) for one micro-batch. Under DeepSpeed the engine reduces the
    gradients at the accumulation boundary the loop marks (the last micro-batch of an optimizer step), and its
    backward leaves the loss as given (the loop scales it itself); otherwise accelerate's, with ``model``'s
    gradient sync (FSDP2) on for the last micro-batch only."""
    if engine is None:
        gradient_sync(model, last_micro_batch)
        return accelerator.autocast(), accelerator.backward
    engine.set_gradient_accumulation_boundary(last_micro_batch)
    return engine_autocast(accelerator), functools.partial(engine.backward, scale_wrt_gas=False)


def engine_step(engine, scheduler, loss: float) -> tuple[float, bool]:
    """``optimizer_step`` under DeepSpeed: the engine reduces the accumulated gradients, clips them
    (``gradient_clipping``) and steps; the schedule is the loop's. A non-finite loss is not applied (it stops the
    run: ``train.on_nonfinite=skip`` is refused with DeepSpeed before step 0)."""
    if not math.isfinite(loss):
        return math.nan, False
    engine.step()
    norm = engine.get_global_grad_norm()
    grad_norm = math.nan if norm is None else float(norm)
    scheduler.step()
    return grad_norm, math.isfinite(grad_norm)


def _checkpoint_note(checkpoint: Path | None) -> str:
    return (f"the last checkpoint, {checkpoint}, is kept (train.resume=true continues from it)"
            if checkpoint is not None else "no checkpoint was saved before it")


def on_nonfinite_step(s: LoopSettings, step: int, loss: float, grad_norm: float, is_main: bool,
                      checkpoint: Path | None) -> None:
    """After a step whose update was not applied: raise ``NonFiniteLoss`` (naming the step and ``checkpoint``,
    the run's newest) under ``on_nonfinite: fail``; under ``skip``, print a warning (main process) and return."""
    what = f"step {step}: loss {loss:.6g}, gradient norm {grad_norm:.6g}"
    if s.train.on_nonfinite == "skip":
        if is_main:
            print(f"posttrain: warning: {what}: not finite, update skipped (train.on_nonfinite=skip)",
                  file=sys.stderr, flush=True)
        return
    raise NonFiniteLoss(f"{what}: not finite, so the run stops without applying it or saving a model; "
                        f"{_checkpoint_note(checkpoint)}. Lower optim.lr, set optim.max_grad_norm, use "
                        "train.precision=fp32, check the data, or set train.on_nonfinite=skip to skip such steps")


def check_finite_weights(model, step: int, reduce, checkpoint: Path | None) -> None:
    """Raise ``NonFiniteLoss`` if any trainable weight is NaN or infinite after ``step`` (checked before each
    checkpoint and before the model is returned for saving, so neither is ever written with such weights). The
    verdict is summed over processes (``reduce``) so every process stops together, also when weights are
    sharded."""
    bad = next((n for n, p in model.named_parameters()
                if p.requires_grad and not torch.isfinite(local(p)).all()), None)
    if float(reduce(torch.tensor([float(bad is not None)], dtype=torch.float64))[0]) == 0:
        return
    raise NonFiniteLoss(f"after step {step}: trainable weights hold NaN or infinite values"
                        f"{f' (first: {bad})' if bad else ''}; the losses were finite but the update overflowed, "
                        f"so nothing is saved; "
                        f"{_checkpoint_note(checkpoint)}. Lower optim.lr or set optim.max_grad_norm")


def settings_from_config(cfg, desc: str) -> LoopSettings:
    return LoopSettings(optim=cfg.optim, train=cfg.train, data=cfg.data, parallel=cfg.parallel.strategy,
                        zero_stage=cfg.parallel.zero_stage, desc=desc, config=cfg.model_dump(mode="json"))


def open_metrics_log(s: LoopSettings, rank: int, start: int) -> MetricsLog:
    """metrics.jsonl of the run (main process), with the trackers of ``s.train.report_to`` behind it."""
    trackers = None
    if rank == 0 and s.train.report_to:
        t = s.train
        trackers = Trackers(t.report_to, t.output_dir, t.run_name or Path(t.output_dir).name, s.config or {})
    return MetricsLog(Path(s.train.output_dir) / "metrics.jsonl", enabled=rank == 0,
                      resume_step=start if s.train.resume else None, trackers=trackers)


def plan_steps(num_items: int, batch_size: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, total steps). A trailing partial batch is dropped so every step weighs the same."""
    if num_items < batch_size:
        raise ConfigError(f"the training set has {num_items} examples, fewer than optim.batch_size={batch_size}")
    per_epoch = num_items // batch_size
    return per_epoch, (max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch)))


def epoch_order(epoch: int, *, num_items: int, batch_size: int, seed: int, shuffle: bool,
                lengths: list[int] | None = None, sort_window: int = 0) -> list[int]:
    """Every example index of one epoch, in training order: a seeded permutation (or 0..N-1).

    With ``lengths`` and ``sort_window`` > 0 (length-sorted batching), the permutation is cut into windows of
    ``sort_window * batch_size`` examples; each window is sorted by length, cut into batches, and its full
    batches are put in a seeded random order (a partial batch stays last). Batches then hold similar lengths
    (little padding) while the order is still random across windows and a pure function of (seed, epoch)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + 1000003 * epoch)
        order = torch.randperm(num_items, generator=g).tolist()
    else:
        order = list(range(num_items))
    if lengths is None or sort_window <= 0:
        return order
    g = torch.Generator().manual_seed(seed + 7919 * epoch + 1)
    window = sort_window * batch_size
    out: list[int] = []
    for w0 in range(0, num_items, window):
        chunk = sorted(order[w0: w0 + window], key=lambda i: lengths[i])
        full = [chunk[i: i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        rest = chunk[len(full) * batch_size:]
        picks = torch.randperm(len(full), generator=g).tolist() if shuffle else range(len(full))
        for b in picks:
            out.extend(full[b])
        out.extend(rest)
    return out


def step_indices(step: int, *, num_items: int, batch_size: int, steps_per_epoch: int, seed: int, shuffle: bool,
                 lengths: list[int] | None = None, sort_window: int = 0, _orders: dict | None = None):
    """Global example indices of optimizer step ``step``: a pure function of the step, so resume is exact.
    ``_orders``: an optional one-entry memo of ``epoch_order`` (the order is recomputed per epoch only)."""
    epoch, pos = divmod(step, steps_per_epoch)
    if _orders is not None and epoch in _orders:
        order = _orders[epoch]
    else:
        order = epoch_order(epoch, num_items=num_items, batch_size=batch_size, seed=seed, shuffle=shuffle,
                            lengths=lengths, sort_window=sort_window)
        if _orders is not None:
            _orders.clear()
            _orders[epoch] = order
    return order[pos * batch_size : (pos + 1) * batch_size]


def micro_batches(indices: list[int], *, rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    mine = indices[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def make_accelerator(precision: str = "auto"):
    from accelerate import Accelerator  # keeps `import posttrain.training.loop` free of accelerate (0.2 s)

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not cuda)


def reduce_sum_fn(accelerator):
    def reduce(t: torch.Tensor) -> torch.Tensor:
        if accelerator.num_processes == 1:
            return t
        return accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()

    return reduce


def cross_process_sum(accelerator):
    """``reduce_sum_fn`` under several processes; None for one (callers then take their local statistics)."""
    return reduce_sum_fn(accelerator) if accelerator.num_processes > 1 else None


def evaluate(model, items: list, fns: StepFns, accelerator, micro_batch_size: int, progress: bool = False
             ) -> dict[str, float]:
    """Mean loss and metrics over ``items``, sharded across processes."""
    reduce = reduce_sum_fn(accelerator)
    mine = items[accelerator.process_index :: accelerator.num_processes]
    if is_sharded(model):  # every forward is a collective: each process runs all rows (the same numbers)
        mine, reduce = items, (lambda t: t)
    sums = MetricSums()
    loss_sum, weight = 0.0, 0.0
    was_training = model.training
    model.eval()
    starts = range(0, len(mine), micro_batch_size)
    with torch.no_grad():
        for i in tqdm(starts, desc="eval", unit="batch", leave=False, dynamic_ncols=True,
                      disable=not (progress and accelerator.is_main_process)):
            batch = fns.collate(mine[i : i + micro_batch_size])
            with accelerator.autocast():
                loss, metrics, _ = (fns.eval_loss or fns.loss)(model, batch)
            loss_sum += float(loss)
            weight += float(fns.weight(batch))
            sums.add(metrics)
    model.train(was_training)
    totals = reduce(torch.tensor([loss_sum, weight], dtype=torch.float64))
    out = {"loss": float(totals[0] / totals[1]) if totals[1] > 0 else math.nan}
    out.update(sums.reduced(reduce))
    return out


def log_eval_samples(model, eval_items: list, fns: StepFns, s: LoopSettings, log: MetricsLog, step: int, rank: int,
                     sharded: bool) -> None:
    """The greedy answers to the first ``s.train.log_samples`` eval prompts, into samples.jsonl and the trackers: on the
    main process with the plain (unwrapped) model, while the others wait at their next collective. Not under
    fsdp2, where a forward of a sharded model is a collective every process must join."""
    if fns.samples is None or not s.train.log_samples or rank != 0 or sharded:
        return
    log.samples(step, fns.samples(model, eval_items[:s.train.log_samples]))


def fit(model, train_items: list, eval_items: list, fns: StepFns, s: LoopSettings, accelerator, on_log=None):
    """Train ``model`` in place. Returns a summary dict (final train/eval metrics, throughput, steps)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    reduce = reduce_sum_fn(accelerator)
    if s.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size={s.optim.batch_size} must be divisible by the number of processes "
                          f"({world})")
    check_on_nonfinite(s)
    per_epoch, total_steps = plan_steps(len(train_items), s.optim.batch_size, s.optim.epochs, s.optim.max_steps)
    lengths = None
    if s.sort_window:
        if fns.length is None:
            raise ConfigError("data.sort_by_length is not supported by this trainer")
        lengths = [int(fns.length(item)) for item in train_items]
    orders: dict = {}

    sharded = s.parallel == "fsdp2" and world > 1
    engine = None  # DeepSpeed's, under parallel.strategy=deepspeed
    if sharded:
        shard(model, accelerator.device, world)  # before the optimizer: it must hold the sharded parameters
    optimizer, scheduler = build_optimization(model, s, total_steps)
    if s.parallel == "deepspeed":  # after the optimizer: DeepSpeed partitions what it holds
        engine = start_engine(model, optimizer, s, world)
        ddp_model = engine  # forwards through the engine (its per-micro-batch bookkeeping), backward and step too
        sharded = is_sharded(model)  # ZeRO-3: every forward is a collective, as under FSDP2
    else:
        ddp_model = model if sharded else accelerator.prepare(model)
        check_optimizer_covers(ddp_model, optimizer)
    params = [p for p in ddp_model.parameters() if p.requires_grad]
    start, _ = resume_from_checkpoint(s, model, optimizer, scheduler, rank=rank, total_steps=total_steps,
                                      sharded=sharded, world_size=world, engine=engine)
    log = open_metrics_log(s, rank, start)
    bar = progress_bar(s, total_steps, start, enabled=rank == 0)
    checkpoint = checkpoint_dir(s.train.output_dir, start) if start else None  # the newest, named if a step fails
    ddp_model.train()
    tokens_total, t_train, last, skipped = 0, 0.0, {}, 0
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        idx = step_indices(step, num_items=len(train_items), batch_size=s.optim.batch_size,
                           steps_per_epoch=per_epoch, seed=s.train.seed, shuffle=s.data.shuffle, lengths=lengths,
                           sort_window=s.sort_window, _orders=orders)
        batches = [fns.collate([train_items[i] for i in mb]) for mb in
                   micro_batches(idx, rank=rank, world_size=world, micro_batch_size=s.optim.micro_batch_size)]
        global_weight = float(reduce(torch.tensor([sum(float(fns.weight(b)) for b in batches)], dtype=torch.float64)))
        sums, loss_value, tokens = MetricSums(), 0.0, 0
        for i, batch in enumerate(batches):
            # Only the last micro-batch all-reduces (DDP) or reduce-scatters (FSDP2) gradients; both average over
            # processes, hence "* world" (DeepSpeed's reduction averages too).
            last_micro_batch = i == len(batches) - 1
            autocast, backward = micro_batch_backward(engine, accelerator, ddp_model, last_micro_batch)
            sync = contextlib.nullcontext()
            if not (engine is not None or last_micro_batch or sharded):
                sync = accelerator.no_sync(ddp_model)
            with sync, autocast:
                loss_sum, metrics, n_tok = fns.loss(ddp_model, batch)
                backward(loss_sum * (world / global_weight))
            loss_value += float(loss_sum.detach()) / global_weight
            tokens += n_tok
            sums.add(metrics)
        lr_now = scheduler.get_last_lr()[0]
        # The loss is summed over processes before the update so that every process takes the same decision
        # on a non-finite step (the gradient norm is already global: gradients were all-reduced).
        step_tokens, loss_all = reduce(torch.tensor([tokens, loss_value], dtype=torch.float64)).tolist()
        grad_norm, applied = optimizer_step(accelerator, params, optimizer, scheduler, s.optim.max_grad_norm,
                                            loss_all, sharded=sharded, engine=engine)
        dt = time.perf_counter() - t0
        tokens_total += int(step_tokens)
        t_train += dt
        record = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4), "loss": loss_all,
                  "lr": lr_now, "grad_norm": grad_norm, "tokens": int(step_tokens),
                  "tokens_per_s": round(step_tokens / dt, 1), **sums.reduced(reduce)}
        if not applied:
            skipped += 1
            log.write({**record, "nonfinite": True})  # NaN/inf are written as null
            on_nonfinite_step(s, step + 1, loss_all, grad_norm, rank == 0, checkpoint)
        else:
            last = record
            if (step + 1) % s.train.log_every == 0 or step + 1 == total_steps:
                log.write(record)
                if on_log:
                    on_log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_all:.4f}", tok_s=f"{step_tokens / dt:.0f}")
            bar.update(1)
        if eval_items and s.train.eval_every and (step + 1) % s.train.eval_every == 0 and step + 1 < total_steps:
            ev = evaluate(ddp_model, eval_items, fns, accelerator, s.optim.micro_batch_size, s.train.progress)
            log.write({"step": step + 1, "split": "eval", **ev})
            log_eval_samples(model, eval_items, fns, s, log, step + 1, rank, sharded)
        if s.train.save_every and (step + 1) % s.train.save_every == 0 and step + 1 < total_steps:
            check_finite_weights(model, step + 1, reduce, checkpoint)
            checkpoint = save_checkpoint(s.train.output_dir, step=step + 1, model=model, optimizer=optimizer,
                                         scheduler=scheduler, rank=rank, world_size=world,
                                         barrier=accelerator.wait_for_everyone, extra={"total_steps": total_steps},
                                         keep=s.train.keep_checkpoints, sharded=sharded, engine=engine)
            if fns.flush:
                fns.flush()
    if skipped and skipped == total_steps - start:
        raise NonFiniteLoss(f"train.on_nonfinite=skip: all {skipped} steps had a non-finite loss or gradient "
                            "norm, so nothing was trained; lower optim.lr or check the data")
    check_finite_weights(model, total_steps, reduce, checkpoint)
    if bar is not None:
        bar.close()
    summary = {"steps": total_steps, "train/" + "loss": last.get("loss", math.nan),
               "tokens_per_s": round(tokens_total / t_train, 1) if t_train else None,
               "train_time_s": round(t_train, 2)}
    if s.train.on_nonfinite == "skip":
        summary["train/skipped_steps"] = skipped
    summary.update({f"train/{k}": v for k, v in last.items() if k.startswith(("rewards/", "logps/", "nll"))})
    if eval_items:
        ev = evaluate(ddp_model, eval_items, fns, accelerator, s.optim.micro_batch_size, s.train.progress)
        log.write({"step": total_steps, "split": "eval", **ev})
        log_eval_samples(model, eval_items, fns, s, log, total_steps, rank, sharded)
        summary.update({f"eval/{k}": v for k, v in ev.items()})
    if fns.flush:
        fns.flush()
    log.close()
    return summary
