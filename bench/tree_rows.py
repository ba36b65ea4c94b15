"""Prefix-tree rows vs padded batches on long sequences: one DPO-shaped micro-batch, forward + backward.

    nice -n 19 .venv/bin/python bench/tree_rows.py --model smollm2-135m-instruct --pairs 4 --length 512

Each pair: a prompt of length/2 tokens (a 30-token "system prompt" shared by all pairs, then random tokens) and
two random completions of length/2. Layouts: padded (2 x pairs rows of `length`), tree rows at the model's
default budget (``data.tree_row_tokens``: ``ops/packing.py::default_tree_row_tokens``), one tree row (no
budget). Each layout runs in its own process (peak RSS = its ru_maxrss), full fine-tuning in float32, timed over
the second of two iterations. A row's attention is quadratic in its length, so one long row loses to padding;
rows at the budget keep the savings of the shared prompt.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(a) -> None:
    import torch

    from posttrain.data.collate import collate_pairs
    from posttrain.data.render import Rendered
    from posttrain.models.policy import load_base
    from posttrain.ops.layouts import batch_sequence_logps
    from posttrain.ops.packing import default_tree_row_tokens

    torch.set_num_threads(a.threads)
    model, _, _ = load_base(a.model, None)
    model.train()
    g = torch.Generator().manual_seed(0)
    system = torch.randint(100, 40000, (30,), generator=g).tolist()
    half = a.length // 2
    pairs = []
    for _ in range(a.pairs):
        prompt = system + torch.randint(100, 40000, (half - 30,), generator=g).tolist()
        chosen, rejected = (torch.randint(100, 40000, (half,), generator=g).tolist() for _ in range(2))
        pairs.append(tuple(Rendered(prompt + c, [0] * len(prompt) + [1] * len(c), len(prompt))
                           for c in (chosen, rejected)))
    budget = default_tree_row_tokens(model.config) if a.layout == "tree_rows" else None
    batch = collate_pairs(pairs, 0, prefix_sharing=a.layout != "padded", max_row_tokens=budget)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        logps, _, _ = batch_sequence_logps(model, batch)
        logps.sum().backward()
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"shape": list(batch["input_ids"].shape), "s": round(seconds[-1], 2),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "logps": round(float(logps.sum()), 3)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layout", choices=["padded", "tree_rows", "one_row"])
    a = p.parse_args()
    if a.layout:
        return child(a)
    rows = {}
    for layout in ("padded", "tree_rows", "one_row"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--layout", layout], capture_output=True,
                             text=True, check=True).stdout
        rows[layout] = json.loads(out.strip().splitlines()[-1])
    print(f"{a.model}: {a.pairs} pairs of {a.length}-token sequences, forward + backward, {a.threads} threads")
    print("| layout | rows x width | s | peak RSS MB | x padded time | summed log-probs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for layout, r in rows.items():
        print(f"| {layout} | {r['shape'][0]} x {r['shape'][1]} | {r['s']} | {r['peak_rss_mb']} | "
              f"{r['s'] / rows['padded']['s']:.2f} | {r['logps']} |")


if __name__ == "__main__":
    main()
