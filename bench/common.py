"""Shared pieces of the benchmarks: synthetic data of varied lengths, running one side in a fresh subprocess
(so its peak RSS is its own), and the table."""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the river cat tea map bell snow ship owl bread clock kite moss stone light quiet green north "
         "market garden letter window music simple careful bright story answer reason small large").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def pair_rows(n: int, seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Prompts of 8-60 words, completions of 4-90 words: lengths vary as in real preference data."""
    rng = random.Random(seed)
    return [{"prompt": sentence(rng, int(rng.randint(8, 60) * scale)),
             "chosen": sentence(rng, int(rng.randint(4, 90) * scale)),
             "rejected": sentence(rng, int(rng.randint(4, 90) * scale))} for _ in range(n)]


def sft_rows(n: int, seed: int = 0, scale: float = 1.0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": sentence(rng, int(rng.randint(8, 60) * scale))},
                          {"role": "assistant", "content": sentence(rng, int(rng.randint(10, 150) * scale))}]}
            for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def emit(result: dict) -> None:
    """A child's result: one JSON line the parent picks out of stdout."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], timeout: int = 3600) -> dict:
    cmd = [sys.executable, script, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            out = json.loads(line[len("BENCH_RESULT "):])
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            return out
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise RuntimeError(f"benchmark child failed: {' '.join(cmd)}")


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores visible, {gpu}, torch {torch.__version__}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def table(title: str, rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = [title, "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |",
             "| " + " | ".join("-" * widths[c] for c in columns) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |")
    return "\n".join(lines)


def model_dir(name: str) -> str:
    from posttrain.models.builtin import BUILTIN_NAMES, builtin_dir

    return str(builtin_dir(name)) if name in BUILTIN_NAMES else name


def rendered_tokens(kind: str, path: Path, model: str, max_length: int) -> int:
    """Tokens (prompt + completion, every sequence) the trainers process per epoch, by posttrain's rendering."""
    from posttrain.data.layouts import load_examples
    from posttrain.data.render import render_dataset
    from posttrain.models.policy import model_tokenizer

    tok = model_tokenizer(model)
    items, _ = render_dataset(load_examples(str(path), kind, None), tok, max_length=max_length, truncation="drop")
    if kind == "preference":
        return sum(len(c.input_ids) + len(r.input_ids) for c, r in items), len(items)
    return sum(len(r.input_ids) for r in items), len(items)
