"""bf16 autocast against float32 for CPU training steps: does ``train.precision: bf16`` pay on this CPU?

    nice -n 19 .venv/bin/python bench/autocast_cpu.py                     # this CPU as it is
    nice -n 19 .venv/bin/python bench/autocast_cpu.py --isa AVX512_CORE   # oneDNN held below AVX512-BF16

Workload: one forward + backward of a causal LM the shape of the builtin SmolLM2-135M-Instruct (random weights, so
no model file is needed; the time does not depend on the values) with an all-linear LoRA r16, as the quickstart's
SFT and DPO stages train it, on ``--rows`` x ``--tokens`` tokens; ``--steps`` timed steps after one warm-up, float32
and bf16 autocast interleaved ``--repeats`` times in one process. ``--isa`` sets ``ONEDNN_MAX_CPU_ISA`` (read
when torch loads, so the script re-runs itself with it) to measure what a CPU without native bfloat16 would see.
Prints seconds per step for each and bf16's speed-up over float32 (above 1: autocast is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def native_bf16() -> str:
    import torch

    flags = []
    for name, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported")):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            flags.append(name)
    return ", ".join(flags) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA for the run (e.g. AVX512_CORE, AVX2)")
    args = parser.parse_args()
    if args.isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.isa:  # the child sees it set and runs
        sys.exit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, "ONEDNN_MAX_CPU_ISA": args.isa}))

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]))
    ids = torch.randint(0, config.vocab_size, (args.rows, args.tokens))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for bf16 in (False, True):
            step(bf16)  # warm-up: oneDNN builds its kernels for the shapes on first use
            start = time.perf_counter()
            for _ in range(args.steps):
                step(bf16)
            times[bf16].append((time.perf_counter() - start) / args.steps)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"{common.machine()}; {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {native_bf16()}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")
    print(f"{args.rows} x {args.tokens} tokens, LoRA r16 all-linear, forward + backward")
    print(f"float32        {fp32:6.2f} s/step")
    print(f"bf16 autocast  {bf16:6.2f} s/step   speed-up over float32: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
