"""Small shared data and config builders for the integration tests (tiny-random on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

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
