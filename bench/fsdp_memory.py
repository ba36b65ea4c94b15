"""Memory per process and throughput, DDP vs FSDP2 vs DeepSpeed ZeRO-2/3, full fine-tuning under
``torchrun --nproc_per_node 2``.

    nice -n 19 .venv/bin/python bench/fsdp_memory.py --steps 4 [--strategies ddp,fsdp2,zero2,zero3]

The model is SmolLM2-135M's architecture (30 decoder layers, hidden 576, vocab 49152; 135M parameters) with random
weights, so parameters, gradients and AdamW's two moments (4 x 540 MB in float32) dominate a process's memory.
Each strategy runs ``posttrain sft`` (peft.method=none) in a fresh ``torchrun`` pair (gloo, one thread each), and
each process reports what it holds after the run: parameter elements (its local shards under fsdp2), optimizer
state (AdamW's exp_avg/exp_avg_sq, local shards), its peak RSS, and the run's tokens/s. Under fsdp2 the
parameter and optimizer bytes per process should be about half of DDP's (each process keeps 1/2 of every
weight); peak RSS falls less, because the process also holds the all-gathered layer it is computing, the
activations and the Python/torch runtime; the first process also the full model it loaded before sharding (under
fsdp2 the others build the model on the meta device and receive their shards from it; under DDP and DeepSpeed every
process loads the whole model). "load RSS" is a process's peak RSS up to the end of loading and sharding (before
the first step). Read it with care: a float32 safetensors file loaded as float32 on CPU stays memory-mapped and
unread until the first forward, so DDP's column shows little of its full copy (the pages come in during training,
and they are shared between processes through the page cache); under fsdp2 the first process reads all of it (to
send it) and the others hold their shards plus one tensor's receive buffer. The saving is a full private copy per
process wherever loading materialises the weights (a checkpoint in another dtype, a .bin or GGUF file). ZeRO-2 halves the optimizer
state and keeps every parameter (plus an fp32 master copy of its own partition, not counted in the parameter
column); ZeRO-3 halves both (its parameters: each process's partition).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


STRATEGIES = {"ddp": ["parallel.strategy=ddp"], "fsdp2": ["parallel.strategy=fsdp2"],
              "zero2": ["parallel.strategy=deepspeed", "parallel.zero_stage=2"],
              "zero3": ["parallel.strategy=deepspeed", "parallel.zero_stage=3"]}


def child(a) -> None:
    """One process of the torchrun pair: train, then report what this process holds."""
    common.set_threads(1)
    import torch

    import posttrain.training.loop as loop
    import posttrain.training.run as stage
    from posttrain.config import load_config
    from posttrain.trainers.sft import train_sft
    from posttrain.training.parallel import local

    seen: dict = {}
    real_fit, real_build = stage.fit, loop.build_optimization

    def keep_model(model, *args, **kwargs):
        seen["model"] = model
        return real_fit(model, *args, **kwargs)

    def keep_optimizer(*args, **kwargs):  # the loop builds it after loading (and sharding), before step 1
        seen["load_rss_mb"] = common.peak_rss_mb()
        seen["optimizer"], scheduler = real_build(*args, **kwargs)
        return seen["optimizer"], scheduler

    stage.fit, loop.build_optimization = keep_model, keep_optimizer
    cfg = load_config("sft", None, [
        f"model.name={a.model}", "peft.method=none", f"data.train={a.data}", f"train.output_dir={a.out}",
        "train.progress=false", "train.overwrite=true", f"optim.batch_size={a.batch}",
        f"optim.micro_batch_size={a.micro}", f"optim.max_steps={a.steps}", "optim.lr=1e-5", "data.max_length=256",
        "data.shuffle=false", "optim.warmup_steps=0", *STRATEGIES[a.strategy]])
    summary = train_sft(cfg)

    def nbytes(t: torch.Tensor) -> int:
        t = local(t)
        return t.numel() * t.element_size()

    params = sum(nbytes(p) for p in seen["model"].parameters())
    optim = sum(nbytes(v) for state in seen["optimizer"].state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    rank = int(os.environ.get("RANK", "0"))
    Path(a.result, f"rank{rank}.json").write_text(json.dumps({
        "params_mb": params / 2**20, "optimizer_mb": optim / 2**20, "peak_rss_mb": common.peak_rss_mb(),
        "load_rss_mb": seen["load_rss_mb"],
        "tokens_per_s": summary.get("tokens_per_s"), "train_s": summary.get("train_time_s"),
        "loss": summary.get("train/loss")}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--work", default="/tmp/posttrain-bench-fsdp")
    p.add_argument("--child", action="store_true")
    p.add_argument("--strategy", choices=list(STRATEGIES))
    p.add_argument("--strategies", default="ddp,fsdp2,zero2,zero3", help="comma-separated; ddp first (the baseline)")
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--result")
    a = p.parse_args()
    if a.child:
        child(a)
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = common.random_llama(work / "random-llama-135m")
    data = common.write_jsonl(work / "sft.jsonl", common.sft_rows(a.rows))
    print(common.machine())
    rows = []
    strategies = a.strategies.split(",")
    if strategies[0] != "ddp" or not set(strategies) <= set(STRATEGIES):
        raise SystemExit(f"--strategies: ddp first, then any of {', '.join(STRATEGIES)}")
    for strategy in strategies:
        result = work / f"result-{strategy}"
        result.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
             __file__, "--child", "--strategy", strategy, "--model", str(model), "--data", str(data),
             "--out", str(work / f"run-{strategy}"), "--result", str(result), "--steps", str(a.steps),
             "--batch", str(a.batch), "--micro", str(a.micro)],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{strategy}: torchrun failed")
        ranks = [json.loads((result / f"rank{r}.json").read_text()) for r in (0, 1)]
        rows.append({"strategy": strategy,
                     "params MB/proc": round(max(r["params_mb"] for r in ranks), 1),
                     "optimizer MB/proc": round(max(r["optimizer_mb"] for r in ranks), 1),
                     "peak RSS MB/proc": round(max(r["peak_rss_mb"] for r in ranks), 1),
                     "load RSS MB rank 0": round(ranks[0]["load_rss_mb"], 1),
                     "load RSS MB rank 1": round(ranks[1]["load_rss_mb"], 1),
                     "tokens/s": ranks[0]["tokens_per_s"], "loss": round(ranks[0]["loss"], 4),
                     "wall_s": round(time.perf_counter() - t0, 1)})
    ddp = rows[0]
    for r in rows:
        for key, short in (("params MB/proc", "params"), ("optimizer MB/proc", "optimizer"),
                           ("peak RSS MB/proc", "peak RSS"), ("load RSS MB rank 1", "load RSS rank 1"),
                           ("tokens/s", "tokens/s")):
            r[f"x DDP {short}"] = round(r[key] / ddp[key], 3) if ddp[key] else None
    print(common.table(f"DDP vs {', '.join(strategies[1:])}, full fine-tuning, 2 processes x 1 thread, {a.steps} "
                       f"steps of {a.batch} rows",
                       rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
