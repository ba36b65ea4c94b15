"""Checkpoints that cannot lie (tiny-random, CPU): a damaged or planted latest checkpoint is skipped for the
previous complete one, nothing in a run folder is unpickled as code, and the reference log-prob cache stays in
the run folder."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.data.runfolder import content_hash
from posttrain.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from posttrain.training.metrics import read_metrics

from .helpers import pair_rows, sft_rows, tiny_config, write_jsonl

COMMON = ["optim.max_steps=4", "train.save_every=1", "train.keep_checkpoints=3", "optim.lr=1e-3",
          "data.shuffle=true"]


class Planted:
    """Unpickling this creates ``path``: the stand-in for arbitrary code in a planted checkpoint file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _sft(data: Path, out: Path, *extra: str) -> dict:
    from posttrain.trainers.sft import train_sft

    return train_sft(tiny_config("sft", data, out, *COMMON, *extra))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 4-step SFT run with checkpoints after steps 1, 2 and 3."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    data = write_jsonl(root / "sft.jsonl", sft_rows(16))
    _sft(data, root / "full")
    yield data, root / "full"
    torch.set_num_threads(before)


def _killed_after_step_3(full: Path, part: Path) -> Path:
    """``part``: what a run killed after its step-3 checkpoint left behind. Returns that checkpoint."""
    part.mkdir()
    shutil.copytree(full / "checkpoints", part / "checkpoints")
    (part / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                                (full / "metrics.jsonl").read_text().splitlines()[:3]))
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-000001", "step-000002", "step-000003"]
    return part / "checkpoints" / "step-000003"


def _plant(path: Path, marker: Path, rerecord: bool) -> None:
    """Replace ``path`` with a torch file whose unpickling would create ``marker``; ``rerecord``: also fix the size
    and hash recorded in state.json, so that only the loader itself stands between the file and its code."""
    torch.save(Planted(str(marker)), path)
    if rerecord:
        state_file = path.parent / "state.json"
        state = json.loads(state_file.read_text())
        state["files"][path.name] = {"size": path.stat().st_size, "hash": content_hash(path)}
        state_file.write_text(json.dumps(state))


def _same_result(full: Path, part: Path) -> None:
    a = [r for r in read_metrics(full / "metrics.jsonl") if r.get("split") != "eval"]
    b = [r for r in read_metrics(part / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert b[3]["loss"] == a[3]["loss"] and b[3]["grad_norm"] == a[3]["grad_norm"]  # bit-exact resume
    wa = load_file(full / "model" / "adapter_model.safetensors")
    wb = load_file(part / "model" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("damage", ["truncated", "planted_pickle", "planted_pickle_rerecorded"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(full_run, tmp_path, capfd, damage):
    data, full = full_run
    part = tmp_path / "part"
    latest = _killed_after_step_3(full, part)
    marker = tmp_path / "planted-code-ran"
    if damage == "truncated":
        blob = (latest / "trainable.pt").read_bytes()
        (latest / "trainable.pt").write_bytes(blob[: len(blob) // 2])
    else:  # the optimizer file was unpickled with weights_only=False before
        _plant(latest / "optimizer.pt", marker, rerecord=damage == "planted_pickle_rerecorded")
    capfd.readouterr()
    _sft(data, part, "train.resume=true")
    out = capfd.readouterr()
    assert not marker.exists()  # the planted pickle was never executed
    assert f"checkpoint {latest} is damaged" in out.err and "skipping it" in out.err
    why = {"truncated": "trainable.pt has", "planted_pickle": "optimizer.pt has",
           "planted_pickle_rerecorded": "optimizer.pt: does not load"}[damage]
    assert why in out.err, out.err
    assert "step-000002" in out.out + out.err and "(step 2 of 4)" in out.out
    _same_result(full, part)


def test_no_loadable_checkpoint_is_a_clear_error(full_run, tmp_path):
    data, full = full_run
    part = tmp_path / "part"
    _killed_after_step_3(full, part)
    for ckpt in (part / "checkpoints").iterdir():
        (ckpt / "trainable.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoints: no checkpoint is intact .*trainable\.pt has 0 bytes"):
        _sft(data, part, "train.resume=true")


def test_checkpoint_files_load_without_pickled_code_and_old_rng_files_still_restore(tmp_path):
    import numpy as np

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler, rank=0,
                           world_size=1, barrier=lambda: None, extra={}, keep=2)
    for f in path.glob("*.pt"):
        torch.load(f, weights_only=True)  # tensors and plain containers only
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    # A checkpoint from before RNG states were tensors: numpy's state tuple, no file records.
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": None}, path / "rng-rank0.pt")
    state = json.loads((path / "state.json").read_text())
    del state["files"]
    (path / "state.json").write_text(json.dumps(state))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda s: 1.0 / (s + 1))
    loaded = load_checkpoint(path, model=model, optimizer=fresh, scheduler=fresh_scheduler, rank=0)
    assert loaded["step"] == 1 and loaded["checkpoint"] == str(path)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_reference_cache_defaults_to_the_run_folder_not_beside_the_data(tmp_path, one_torch_thread):
    from posttrain.trainers.preference import train_preference

    (tmp_path / "data").mkdir()
    data = write_jsonl(tmp_path / "data" / "pairs.jsonl", pair_rows(4))
    train_preference(tiny_config("dpo", data, tmp_path / "out", "optim.max_steps=1"))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["pairs.jsonl"]  # nothing beside the data
    assert list((tmp_path / "out" / "refcache").glob("*/part-*.pt"))
