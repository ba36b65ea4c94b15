"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG of every rank, data position.

Layout: ``OUTPUT/checkpoints/step-000010/{trainable.pt, optimizer.pt, scheduler.pt, rng-rank0.pt, state.json}``.
A checkpoint is written under a temporary name and renamed when complete, so a killed run never leaves a
half-written one that looks finished; ``state.json`` is written last and marks completeness.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from posttrain.data.runfolder import atomic_write_json

_PREFIX = "step-"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Parameters that train (LoRA matrices, or every weight in full fine-tuning), keyed by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


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
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{_PREFIX}{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").exists()]
    return max(done, key=lambda p: int(p.name[len(_PREFIX) :]), default=None)


def save_checkpoint(
    output_dir, *, step: int, model, optimizer, scheduler, rank: int, world_size: int, barrier, extra: dict, keep: int
) -> Path:
    """Every rank saves its RNG; rank 0 saves weights and optimizer (identical across DDP ranks)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()
    if rank == 0:
        atomic_write_json(tmp / "state.json", {"step": step, "world_size": world_size, **extra})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(Path(output_dir) / "checkpoints", keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(
        (p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").exists()),
        key=lambda p: int(p.name[len(_PREFIX) :].split(".")[0]),
    )
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, *, model, optimizer, scheduler, rank: int) -> dict:
    state = json.loads((path / "state.json").read_text())
    load_trainable_state(model, torch.load(path / "trainable.pt", map_location="cpu"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return state
