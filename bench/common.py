"""Shared pieces of the benchmarks: synthetic data of varied lengths, running one side in a fresh subprocess
(so its peak RSS is its own), and the table."""

from __future__ import annotations

import argparse
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


LORA = dict(r=16, alpha=32)
TABLE_COLUMNS = ["run", "train_s", "tokens/s", "peak_rss_mb", "x TRL tokens/s", "x TRL peak RSS", "loss"]


def trainer_args(count_flag: str) -> argparse.ArgumentParser:
    """The arguments every posttrain-vs-TRL benchmark takes; ``count_flag`` (e.g. "--pairs") sets the data size.
    ``--side`` and the arguments after it are how the parent tells a child process what to run."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-random")
    p.add_argument(count_flag, dest="count", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", choices=["posttrain", "trl"])
    p.add_argument("--layout", choices=["default", "padded", "packing", "prefix_sharing"], default="default",
                   help="posttrain's micro-batch layout: default (data.prefix_sharing=auto: prefix sharing here), "
                        "padded (prefix_sharing=false), packing, prefix_sharing (explicitly true)")
    p.add_argument("--checkpointing", choices=["on", "off"],
                   help="activation (gradient) checkpointing; default: each side's own default (posttrain off, TRL "
                        "on: TRL's SFTConfig and DPOConfig turn it on)")
    p.add_argument("--checkpoint-every", type=int, default=1,
                   help="posttrain with --checkpointing on: checkpoint every N-th decoder layer only "
                        "(model.checkpoint_every)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: both sides on the GPU in bf16 autocast over fp32 weights (posttrain's "
                        "train.precision=auto, TRL's bf16=True)")
    p.add_argument("--quick", action="store_true",
                   help="only posttrain's default layout against TRL's defaults (the GPU check's rows)")
    p.add_argument("--json-out", help="also write the rows, with model TFLOP/s and MFU, to this JSON file")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--steps", type=int)
    return p


def trl_device(a) -> dict:
    """TRL config kwargs for ``--device``."""
    return {"use_cpu": a.device == "cpu", "bf16": a.device == "cuda", "fp16": False}


# Dense bf16 peak FLOP/s of the GPUs the check is likely to meet (vendor datasheets, no sparsity); MFU is left out
# for any other device.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def parameter_count(model: str) -> int:
    """Parameters of a model folder (or builtin name), from its safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir(model)).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def add_mfu(rows: list[dict], model: str, device: str) -> None:
    """Model FLOP/s per row (6 x parameters x tokens/s: forward and backward of every weight, the usual
    convention; a LoRA run skips the frozen weights' gradients, so this overstates its work by up to a third) and
    MFU against the device's dense bf16 peak."""
    n, peak = parameter_count(model), peak_flops(device)
    for r in rows:
        r["model TFLOP/s"] = round(6 * n * r["tokens/s"] / 1e12, 2)
        r["MFU"] = round(6 * n * r["tokens/s"] / peak, 4) if peak else None


def random_llama(out: Path, **overrides) -> Path:
    """SmolLM2-135M's config (with ``overrides``) and tokenizer with freshly initialised weights, saved as a plain
    HF folder: a model of any size without a download."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    src = model_dir("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(src, **overrides)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(src).save_pretrained(str(out))
    return out


# ~1.1B parameters (TinyLlama's shape on SmolLM2's 49k vocabulary, embeddings tied)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4)


def posttrain_overrides(a, lr: float) -> list[str]:
    """Config overrides for one epoch of a child's arguments ``a``, LoRA as ``LORA``, timed from the first step."""
    return [f"data.train={a.data}", f"model.name={a.model}", f"train.output_dir={a.out}", "train.progress=false",
            f"optim.batch_size={a.batch}", f"optim.micro_batch_size={a.batch}", f"optim.max_steps={a.steps}",
            f"optim.lr={lr}", f"data.max_length={a.max_length}", "data.shuffle=false", "train.overwrite=true",
            f"peft.r={LORA['r']}", f"peft.alpha={LORA['alpha']}", f"data.packing={a.layout == 'packing'}",
            "data.prefix_sharing=" + {"default": "auto", "prefix_sharing": "true"}.get(a.layout, "false"),
            "optim.warmup_steps=0",
            f"model.gradient_checkpointing={a.checkpointing == 'on'}",
            *([f"model.checkpoint_every={a.checkpoint_every}"] if a.checkpointing == "on" else [])]


def trl_checkpointing(a) -> dict:
    """TRL config kwargs for ``--checkpointing`` (nothing: TRL's default, which is on)."""
    return {} if a.checkpointing is None else {"gradient_checkpointing": a.checkpointing == "on"}


def trl_model(a):
    """(model, tokenizer, LoRA config) for a TRL child, loaded as TRL users do."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM",
                      lora_dropout=0.0)
    return model, tok, lora


def trl_train_and_emit(make_trainer) -> None:
    """Build a TRL trainer with ``make_trainer(callbacks)``, train it timing each optimizer step, emit the result."""
    from transformers import TrainerCallback

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    trainer = make_trainer([Timer()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    emit({"train_s": round(sum(times), 2), "loss": losses[-1] if losses else None})


def compare_with_trl(script: str, runs: list[tuple[str, list[str]]], base: list[str], tmp: Path, tokens: int
                     ) -> list[dict]:
    """Run each (name, child args) in its own process; the last run is TRL, the reference of the ratios."""
    rows = []
    for name, extra in runs:
        r = run_child(script, base + extra + ["--out", str(tmp / name.replace(" ", "_"))])
        r["run"] = name
        r["tokens/s"] = round(tokens / r["train_s"], 1)
        rows.append(r)
    trl = rows[-1]
    for r in rows:
        r["x TRL tokens/s"] = round(r["tokens/s"] / trl["tokens/s"], 2)
        r["x TRL peak RSS"] = round(r["peak_rss_mb"] / trl["peak_rss_mb"], 2)
    return rows


def trl_runs(trainer: str) -> list[tuple[str, list[str]]]:
    """TRL without and with activation checkpointing (its default); the last is the reference of the ratios."""
    return [(f"TRL {trainer}, no checkpointing", ["--side", "trl", "--checkpointing", "off"]),
            (f"TRL {trainer} (defaults: checkpointing on)", ["--side", "trl"])]


def print_comparison(what: str, unit: str, a, steps: int, tokens: int, rows: list[dict]) -> None:
    """The table; with ``--json-out`` the rows (plus model TFLOP/s and MFU) are also written there."""
    add_mfu(rows, a.model, a.device)
    print(table(f"{what} {a.model}: {a.count} {unit}, batch {a.batch}, max_length {a.max_length}, {steps} steps, "
                f"{tokens} tokens, LoRA r={LORA['r']}, {a.threads} threads, {a.device}\nmachine: {machine()}", rows,
                TABLE_COLUMNS + ["model TFLOP/s", "MFU"]))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows))


def epoch_plan(kind: str, data: Path, a) -> tuple[int, int, list[str]]:
    """(steps, tokens of those steps, child args every side shares) for one epoch over ``data``."""
    tokens, kept = rendered_tokens(kind, data, a.model, a.max_length)
    steps = kept // a.batch
    tokens = tokens * steps * a.batch // kept  # the rows of the steps actually run
    base = ["--model", a.model, "--batch", str(a.batch), "--max-length", str(a.max_length), "--threads",
            str(a.threads), "--data", str(data), "--steps", str(steps), "--device", a.device]
    return steps, tokens, base
