"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG of every rank, data position.

Layout: ``OUTPUT/checkpoints/step-000010/{trainable.pt, optimizer.pt, scheduler.json, rng-rank0.pt, state.json}``.
Under ``parallel.strategy=fsdp2`` every process writes its own shards instead (``trainable-rank{r}.pt``,
``optimizer-rank{r}.pt``: local tensors of the sharded parameters and of their optimizer state), and such a
checkpoint resumes with the same number of processes and strategy (anything else is a one-line error). Under
``parallel.strategy=deepspeed`` the engine writes its own files into ``deepspeed/`` (each process its partitions of
the weights and optimizer state; frozen weights left out) and reads them back with DeepSpeed's loader, which
unpickles: resume DeepSpeed runs only from folders you wrote.
A checkpoint is written under a temporary name and renamed when complete, so a killed run never leaves a
half-written one that looks finished; ``state.json`` is written last, marks completeness and records every
file's size and sha256.

Loading never runs code from the run folder: every ``.pt`` is read with ``torch.load(weights_only=True)`` (tensors
and plain containers only; RNG states are saved as tensors and ints, the scheduler as JSON), so a pickle planted
in a checkpoint is refused, not executed. A checkpoint whose files do not match ``state.json`` (truncated,
replaced) or do not load is skipped with a warning naming it, and the previous complete one is used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from posttrain.config import ConfigError
from posttrain.data.runfolder import atomic_write_json, content_hash
from posttrain.training.parallel import local

_PREFIX = "step-"
_DEEPSPEED = "deepspeed"  # the folder of a checkpoint the DeepSpeed engine writes


class CheckpointError(ConfigError):
    """No checkpoint of a run folder can be loaded; ``str()`` is one line naming the folder and each problem."""


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Parameters that train (LoRA matrices, or every weight in full fine-tuning), keyed by name; this process's
    shards when the model is sharded."""
    return {n: local(p).detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise RuntimeError(
            f"checkpoint does not match the model: {len(missing)} trainable parameters missing, "
            f"{len(unknown)} unknown (first: {(missing + unknown)[:3]})"
        )
    with torch.no_grad():
        for n, t in state.items():
            target = local(params[n])
            if target.shape != t.shape:
                raise RuntimeError(f"checkpoint does not match the model: {n} has shape {tuple(t.shape)} in the "
                                   f"checkpoint, {tuple(target.shape)} here")
            target.copy_(t.to(target.device, target.dtype))


def optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded state tensors replaced by this process's shards (plain tensors:
    loadable with ``weights_only=True``)."""
    sd = optimizer.state_dict()
    return {**sd, "state": {i: {k: (local(v).detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                                for k, v in st.items()} for i, st in sd["state"].items()}}


def load_optimizer_state(optimizer, sd: dict) -> None:
    """Inverse of ``optimizer_state``: a shard saved for a sharded parameter becomes a DTensor laid out as the
    parameter again (same mesh and placements) before the optimizer loads it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        if hasattr(p, "to_local"):
            from torch.distributed.tensor import DTensor  # 0.6 s to import; only sharded (FSDP2) runs need it

            st = {k: (DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                         shape=p.shape, stride=p.stride())
                      if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape == p.to_local().shape else v)
                  for k, v in st.items()}
        state[i] = st
    optimizer.load_state_dict({**sd, "state": state})


def rng_state() -> dict:
    """Every generator's state as tensors, ints and tuples: loadable with ``weights_only=True``."""
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:  # a checkpoint written before RNG states were tensors: numpy's own state tuple
        np.random.set_state(n)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{_PREFIX}{step:06d}"


def _complete(root: Path) -> list[Path]:
    """Finished checkpoints (``state.json`` present), oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()
            and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(_PREFIX):]))


def _warn(message: str) -> None:
    # Every process finds the same damage; one line is enough.
    if os.environ.get("RANK", "0") == "0":
        print(f"posttrain: warning: {message}", file=sys.stderr, flush=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted (unreadable ``state.json``, a recorded file missing, or
    of another size or sha256 than recorded), or None. Checkpoints written before files were recorded pass."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"state.json is unreadable ({type(e).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "state.json has no step"
    for name, rec in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != rec["size"]:
            return f"{name} has {size} bytes, {rec['size']} recorded"
        if content_hash(f) != rec["hash"]:
            return f"{name} changed since it was written (sha256 differs from the one recorded)"
    return None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose files match what ``state.json`` recorded; damaged newer ones are
    skipped with a warning naming them. None when there is no complete checkpoint at all."""
    done = _complete(Path(output_dir) / "checkpoints")
    for path in reversed(done):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        _warn(f"checkpoint {path} is damaged ({problem}): skipping it")
    if done:
        raise CheckpointError(f"{Path(output_dir) / 'checkpoints'}: no checkpoint is intact (newest: {done[-1]}: "
                              f"{checkpoint_problem(done[-1])}); remove the folder to start over")
    return None


def save_checkpoint(
    output_dir, *, step: int, model, optimizer, scheduler, rank: int, world_size: int, barrier, extra: dict, keep: int,
    sharded: bool = False, engine=None,
) -> Path:
    """Every rank saves its RNG; rank 0 saves weights and optimizer (identical across DDP ranks), or, ``sharded``,
    every rank saves its own shards of both, or, with a DeepSpeed ``engine``, the engine saves them."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if engine is not None:
        engine.save_checkpoint(str(tmp), tag=_DEEPSPEED, save_latest=False, exclude_frozen_parameters=True)
    elif sharded:
        torch.save(trainable_state(model), tmp / f"trainable-rank{rank}.pt")
        torch.save(optimizer_state(optimizer), tmp / f"optimizer-rank{rank}.pt")
    if rank == 0:
        if not sharded and engine is None:
            torch.save(trainable_state(model), tmp / "trainable.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        atomic_write_json(tmp / "scheduler.json", scheduler.state_dict())
    barrier()
    if rank == 0:
        files = {f.relative_to(tmp).as_posix(): {"size": f.stat().st_size, "hash": content_hash(f)}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        layout = {"engine": "deepspeed", "zero_stage": engine.zero_optimization_stage()} if engine is not None else {}
        atomic_write_json(tmp / "state.json", {"step": step, "world_size": world_size, "sharded": sharded, **layout,
                                               **extra, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(Path(output_dir) / "checkpoints", keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    for old in _complete(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_tensors(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_legacy_rng(path: Path):
    """An RNG file from before RNG states were tensors holds numpy's state tuple: allow numpy arrays (data, not
    code) and nothing else."""
    array = np.zeros(1, dtype=np.uint32)
    with torch.serialization.safe_globals([np.ndarray, np.dtype, type(array.dtype), array.__reduce__()[0]]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _layout(engine: str | None, stage, sharded: bool, world, saved: bool) -> str:
    by = ("by " if saved else "") + f"{world} process{'' if world == 1 else 'es'}"
    if engine == "deepspeed":
        return f"{by} with parallel.strategy=deepspeed (ZeRO-{stage})"
    if sharded:
        return f"{by} with parallel.strategy=fsdp2"
    return "unsharded (parallel.strategy=ddp)" if saved else "parallel.strategy=ddp"


def check_layout(path: Path, state: dict, *, sharded: bool, world_size: int, engine=None) -> None:
    """A sharded checkpoint resumes only as it was saved (same strategy and number of processes), an unsharded one
    only unsharded, a DeepSpeed one only under DeepSpeed with the same ZeRO stage and number of processes; a
    one-line ``CheckpointError`` otherwise."""
    saved = (state.get("engine"), state.get("zero_stage"), bool(state.get("sharded")), state.get("world_size"))
    now = ("deepspeed" if engine is not None else None,
           engine.zero_optimization_stage() if engine is not None else None, sharded, world_size)
    deepspeed = "deepspeed" in (saved[0], now[0])
    if saved[:3] != now[:3] or ((sharded or deepspeed) and saved[3] != now[3]):
        raise CheckpointError(f"{path}: saved {_layout(*saved, saved=True)}; this run has "
                              f"{_layout(*now, saved=False)}: resume it as it was saved")


def read_checkpoint(path: Path, rank: int) -> dict:
    """Every file of one checkpoint, loaded (tensors and plain data only) but not yet applied; raises
    ``CheckpointError`` naming the file that does not load."""
    out = {"state": json.loads((path / "state.json").read_text())}
    shards = bool(out["state"].get("sharded"))
    sources = {"trainable": f"trainable-rank{rank}.pt" if shards else "trainable.pt",
               "optimizer": f"optimizer-rank{rank}.pt" if shards else "optimizer.pt",
               "scheduler": "scheduler.json" if (path / "scheduler.json").exists() else "scheduler.pt",
               "rng": f"rng-rank{rank}.pt"}
    if out["state"].get("engine") == "deepspeed":  # weights and optimizer: the engine's files, its loader
        del sources["trainable"], sources["optimizer"]
    for part, name in sources.items():
        f = path / name
        if part == "rng" and not f.exists():  # resumed on more processes than saved: this rank keeps its seed
            out[part] = None
            continue
        try:
            if name.endswith(".json"):
                out[part] = json.loads(f.read_text())
            elif part == "rng":
                try:
                    out[part] = _load_tensors(f)
                except Exception:
                    out[part] = _load_legacy_rng(f)
            else:
                out[part] = _load_tensors(f)
        except Exception as e:  # truncated zip, a planted pickle (refused by weights_only), missing file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{f}: does not load ({type(e).__name__}: {first[:200]})") from None
    return out


def load_checkpoint(path: Path, *, model, optimizer, scheduler, rank: int, sharded: bool = False,
                    world_size: int = 1, engine=None) -> dict:
    """Restore the checkpoint at ``path``; if one of its files does not load, warn and use the newest older
    complete checkpoint that does (``CheckpointError`` when none does). Returns its ``state.json`` plus
    ``checkpoint``: the folder actually loaded."""
    check_layout(path, json.loads((path / "state.json").read_text()), sharded=sharded, world_size=world_size,
                 engine=engine)
    older = [p for p in _complete(path.parent) if int(p.name[len(_PREFIX):]) < int(path.name[len(_PREFIX):])]
    problems = []
    for candidate in [path, *reversed(older)]:
        problem = None if candidate == path else checkpoint_problem(candidate)
        if problem is None:
            try:
                loaded = read_checkpoint(candidate, rank)
                break
            except CheckpointError as e:
                problem = str(e)
        problems.append(f"{candidate.name}: {problem}")
        _warn(f"checkpoint {candidate} is damaged ({problem}): skipping it")
    else:
        raise CheckpointError(f"{path.parent}: no checkpoint loads ({'; '.join(problems)}); remove the folder "
                              "to start over")
    if candidate != path:
        _warn(f"resuming from {candidate} instead of {path}")
    if engine is not None:
        engine.load_checkpoint(str(candidate), tag=_DEEPSPEED, load_module_strict=False, load_optimizer_states=True,
                               load_lr_scheduler_states=False)
    else:
        load_trainable_state(model, loaded["trainable"])
        load_optimizer_state(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if loaded["rng"] is not None:
        set_rng_state(loaded["rng"])
    return {**loaded["state"], "checkpoint": str(candidate)}
