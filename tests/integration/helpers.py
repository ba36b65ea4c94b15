"""Small shared data and config builders for the integration tests (tiny-random on CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.config import load_config

TOPICS = ["cats", "rivers", "tea", "maps", "bells", "snow", "ships", "owls", "bread", "clocks", "kites", "moss"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int = 16) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} {i}."},
                      {"role": "assistant", "content": f"Here is a short note about {TOPICS[i % len(TOPICS)]}."}]}
        for i in range(n)
    ]


def pair_rows(n: int = 16) -> list[dict]:
    return [
        {"prompt": f"Name a thing about {TOPICS[i % len(TOPICS)]} number {i}.",
         "chosen": f"one fact about {TOPICS[i % len(TOPICS)]}.",
         "rejected": f"I WILL NOT TALK ABOUT {TOPICS[i % len(TOPICS)].upper()} {i}!"}
        for i in range(n)
    ]


def kto_rows(n: int = 16) -> list[dict]:
    return [
        {"prompt": f"Say something about {TOPICS[i % len(TOPICS)]}.",
         "completion": (f"a calm note on {TOPICS[i % len(TOPICS)]}." if i % 2 == 0 else f"NO {i}!!"),
         "label": i % 2 == 0}
        for i in range(n)
    ]


def tiny_config(command: str, data_path: Path, out: Path, *overrides: str):
    base = [
        f"data.train={data_path}",
        "model.name=tiny-random",
        f"train.output_dir={out}",
        "train.progress=false",
        "optim.batch_size=4",
        "optim.micro_batch_size=4",
        "optim.max_steps=3",
        "optim.lr=1e-2",
        "data.max_length=64",
        "data.shuffle=false",
    ]
    return load_config(command, None, base + list(overrides))


def keep_first_argument(module, name: str, seen: dict, key: str = "model") -> None:
    """Wrap ``module.name`` so that the object it is called with first (the model a loop trains) is kept in
    ``seen[key]``; for the torchrun scripts (dist_*.py) to report on what was trained."""
    real = getattr(module, name)

    def wrapper(model, *args, **kwargs):
        seen[key] = model
        return real(model, *args, **kwargs)

    setattr(module, name, wrapper)


def stopped_after_step_2(full: Path, part: Path) -> None:
    """``part`` as a run that stopped right after its step-2 checkpoint: ``full``'s checkpoints (only step 2 with
    save_every=2 and 4 steps) and its first two metrics lines."""
    part.mkdir()
    shutil.copytree(full / "checkpoints", part / "checkpoints")
    (part / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()[:2]))


def assert_resumed_like(full: Path, part: Path) -> dict:
    """The run resumed in ``part`` logged steps 1-4 and took ``full``'s steps 3-4 (loss, gradient norm) to the same
    adapter. Returns the two adapters' weights."""
    from safetensors.torch import load_file

    from posttrain.training.metrics import read_metrics

    full_rows = [r for r in read_metrics(full / "metrics.jsonl") if r.get("split") != "eval"]
    resumed = [r for r in read_metrics(part / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full_rows[2:], resumed[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa = load_file(full / "model" / "adapter_model.safetensors")
    wb = load_file(part / "model" / "adapter_model.safetensors")
    assert all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)
    return {"full": wa, "part": wb}
