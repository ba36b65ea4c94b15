"""Generation: candidates/s of posttrain's HF backend against plain ``model.generate`` at the same batch size.

    nice -n 19 .venv/bin/python bench/generate.py --model smollm2-135m-instruct --prompts 8 --n 4 --batch 16
    nice -n 19 .venv/bin/python bench/generate.py --prompts-file examples/data/prompts_train.jsonl --prompts 64 \
        --n 4 --batch 64 --max-new-tokens 48 --temperature 1.0 --top-p 1.0 --repeats 1   # the quickstart's workload
    nice -n 19 .venv/bin/python bench/generate.py --prompts-file posttrain/resources/eval/constraints_ood.jsonl \
        --prompts 64 --n 1 --batch 64 --max-new-tokens 256 --temperature 0 --repeats 1   # its eval (greedy)

Rows:
* plain model.generate: left-padded batches of ``--batch`` rows in the given order, ``do_sample=True`` with the
  same temperature and top_p, ``num_return_sequences`` not used (one row per candidate, as ours).
* posttrain decode=generate: ``HFGenerator`` on top of ``model.generate`` (per-row seeded sampling, prompts
  sorted by length).
* posttrain decode=loop (default): our decode loop, finished rows leave the batch, a repeated prompt and the
  prompts' common prefix (the chat template's system prompt) are prefilled once.
* posttrain decode=loop, DynamicCache: the same loop with transformers' ``DynamicCache`` (one ``torch.cat`` of the
  whole cache per step) instead of ``kv_cache.preallocated_cache``; the script checks both give the same tokens.
* with ``--bf16``, also posttrain decode=loop on a bfloat16 copy of the weights (``load_trained(dtype=
  "bfloat16")``): the lower-precision lever on a CPU with AMX / AVX512-BF16. It samples other tokens than the
  float32 rows (the logits differ), so its token count differs too; compare new tokens/s.
Every run is repeated ``--repeats`` times interleaved; the best time of each is reported (less noise from the
shared machine).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="add a row: the decode loop on bfloat16 weights")
    p.add_argument("--prompts-file", help="a JSONL of {prompt: ...} rows (e.g. examples/data/prompts_train.jsonl): "
                                          "the first --prompts of them instead of the synthetic open-ended asks")
    a = p.parse_args()
    common.set_threads(a.threads)
    import torch

    from transformers import DynamicCache

    import posttrain.generation.hf as hf
    from posttrain.generation.hf import HFGenerator
    from posttrain.models.policy import load_trained

    model, tok = load_trained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if a.prompts_file:
        texts = [json.loads(line)["prompt"] for line in Path(a.prompts_file).read_text().splitlines()[:a.prompts]]
    else:
        rng = random.Random(0)
        asks = ["Write a haiku about", "Explain briefly", "Give two facts about", "Say hello to",
                "List three uses of", "What is", "Describe", "Tell a short story about"]
        topics = ["the sea", "tea", "owls", "bread", "a clock", "snow in the mountains", "rivers", "kites"]
        texts = [f"{rng.choice(asks)} {rng.choice(topics)}." for _ in range(a.prompts)]
    prompt_ids = [tok(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                              tokenize=False), add_special_tokens=False)["input_ids"] for t in texts]
    rows_ids = [ids for ids in prompt_ids for _ in range(a.n)]
    pad = tok.pad_token_id

    def plain():
        new = 0
        for s in range(0, len(rows_ids), a.batch):
            chunk = rows_ids[s: s + a.batch]
            w = max(map(len, chunk))
            ids = torch.tensor([[pad] * (w - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (w - len(c)) + [1] * len(c) for c in chunk])
            with torch.inference_mode():
                sampling = (dict(do_sample=True, temperature=a.temperature, top_p=a.top_p) if a.temperature > 0
                            else dict(do_sample=False))
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.max_new_tokens,
                                     pad_token_id=pad, eos_token_id=tok.eos_token_id, **sampling)
            for row in out[:, w:].tolist():
                new += (row.index(tok.eos_token_id) + 1) if tok.eos_token_id in row else len(row)
        return new

    tokens: dict[str, list] = {}

    def ours(decode, weights=model, dynamic_cache=False):
        def run():
            gen = HFGenerator(weights, tok, batch_size=a.batch, decode=decode)
            real = hf.preallocated_cache
            if dynamic_cache:
                hf.preallocated_cache = lambda config, capacity: DynamicCache(config=config)
            try:
                outs = gen.generate(prompt_ids, n=a.n, temperature=a.temperature, top_p=a.top_p,
                                    max_new_tokens=a.max_new_tokens, seed=0)
            finally:
                hf.preallocated_cache = real
            tokens["dynamic" if dynamic_cache else decode] = [o.token_ids for c in outs for o in c]
            return sum(o.completion_tokens for c in outs for o in c)
        return run

    runs = {"plain model.generate": plain, "posttrain decode=generate": ours("generate"),
            "posttrain decode=loop": ours("loop"),
            "posttrain decode=loop, DynamicCache": ours("loop", dynamic_cache=True)}
    if a.bf16:
        runs["posttrain decode=loop, bfloat16 weights"] = ours("loop", load_trained(a.model, dtype="bfloat16")[0])
        runs["posttrain decode=loop, bfloat16 weights"]()  # warm-up (oneDNN's bfloat16 kernels)
    ours("loop")()  # warm-up
    best: dict[str, tuple[float, int]] = {}
    for _ in range(a.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            n_new = fn()
            dt = time.perf_counter() - t0
            if name not in best or dt < best[name][0]:
                best[name] = (dt, n_new)
    base = best["plain model.generate"][0]
    rows = []
    for name, (dt, n_new) in best.items():
        rows.append({"run": name, "seconds": round(dt, 2), "candidates/s": round(len(rows_ids) / dt, 2),
                     "new tokens": n_new, "new tokens/s": round(n_new / dt, 1), "x plain": round(base / dt, 2)})
    source = a.prompts_file or "synthetic open-ended prompts"
    print(common.table(f"Generation {a.model}: {len(prompt_ids)} prompts ({source}) x {a.n} candidates, "
                       f"batch {a.batch}, max_new_tokens {a.max_new_tokens}, T={a.temperature}, top_p={a.top_p}, "
                       f"{a.threads} threads, best of {a.repeats}\nmachine: {common.machine()}",
                       rows, ["run", "seconds", "candidates/s", "new tokens", "new tokens/s", "x plain"]))
    same = sum(x == y for x, y in zip(tokens["loop"], tokens["dynamic"]))
    loop, dyn = best["posttrain decode=loop"], best["posttrain decode=loop, DynamicCache"]
    print(f"preallocated / DynamicCache (decode=loop): {dyn[0] / loop[0]:.2f}x; same tokens in {same} of "
          f"{len(tokens['loop'])} candidates")
    if a.bf16:
        fp32, bf16 = best["posttrain decode=loop"], best["posttrain decode=loop, bfloat16 weights"]
        print(f"bfloat16 / float32 new tokens/s (decode=loop): {(bf16[1] / bf16[0]) / (fp32[1] / fp32[0]):.2f}x")


if __name__ == "__main__":
    main()
