"""Scaling of the log-prob path with sequence length: tokens/s and peak memory at max length 256..2048.

    nice -n 19 .venv/bin/python bench/scaling.py --model tiny-random --lengths 256 512 1024 2048

One training-style step (forward + backward of the summed completion log-probs, completion = second half of
each sequence) per length. Each path runs in its own process, lengths in increasing order; "step MB" is the
growth of the process's peak RSS over its RSS after loading the model and a warm-up, i.e. what the largest step
so far needed (memory grows with length, so the peak after length L is length L's). Two paths:
* split (default): trunk, then the output head on completion positions in chunks of 256 tokens.
* plain: the model's full (B, T, V) logits, then chunked gathering (what ``split=False`` does; TRL-style).
The (B, T, V) float32 logits size is printed for reference: the plain path grows with it, the split path
only with B x T x hidden.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def child(a) -> None:
    common.set_threads(a.threads)
    import torch

    from posttrain.models.policy import load_trained
    from posttrain.ops.logprobs import sequence_logps

    model, _ = load_trained(a.model)
    model.train()
    vocab = model.config.vocab_size
    torch.manual_seed(0)

    def step(length):
        ids = torch.randint(0, vocab, (a.batch, length))
        attn = torch.ones_like(ids)
        loss_mask = torch.zeros_like(ids)
        loss_mask[:, length // 2:] = 1
        s, _, _ = sequence_logps(model, ids, attn, loss_mask, split=a.path == "split")
        s.sum().backward()
        model.zero_grad(set_to_none=True)

    step(16)  # warm-up (kernels, allocator)
    base = common.peak_rss_mb()
    out = []
    for length in sorted(a.lengths):
        t0 = time.perf_counter()
        step(length)
        out.append({"length": length, "step_s": round(time.perf_counter() - t0, 2),
                    "step_mb": round(common.peak_rss_mb() - base, 1)})
    common.emit({"rows": out, "vocab": vocab, "base_mb": round(base, 1)})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--path", choices=["split", "plain"])
    a = p.parse_args()
    if a.path:
        return child(a)
    results = {path: common.run_child(__file__, ["--model", a.model, "--batch", str(a.batch), "--threads",
                                                 str(a.threads), "--path", path, "--lengths",
                                                 *map(str, a.lengths)])
               for path in ("split", "plain")}
    rows = []
    for i, length in enumerate(sorted(a.lengths)):
        for path, r in results.items():
            m = r["rows"][i]
            rows.append({"max length": length, "path": path, "step s": m["step_s"],
                         "tokens/s": round(a.batch * length / m["step_s"], 1), "step MB": m["step_mb"],
                         "step MB / 1k tokens": round(m["step_mb"] / (a.batch * length / 1000), 1),
                         "(B,T,V) fp32 logits MB": round(a.batch * length * r["vocab"] * 4 / 2**20, 1)})
    print(common.table(f"Scaling {a.model}: batch {a.batch}, completion = second half, forward + backward, "
                       f"{a.threads} threads\nmachine: {common.machine()}", rows,
                       ["max length", "path", "step s", "tokens/s", "step MB", "step MB / 1k tokens",
                        "(B,T,V) fp32 logits MB"]))


if __name__ == "__main__":
    main()
