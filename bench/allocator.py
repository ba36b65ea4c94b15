"""The memory allocator under posttrain's CPU training and generation: glibc's malloc against jemalloc / tcmalloc
(``LD_PRELOAD``), same command, same machine, interleaved.

    nice -n 19 .venv/bin/python bench/allocator.py            # every allocator found, every workload
    nice -n 19 .venv/bin/python bench/allocator.py --workloads dpo --repeats 2

Workloads (builtin SmolLM2-135M-Instruct, float32, LoRA r16 all-linear, the machine's threads):
* sft: ``posttrain sft`` on 64 synthetic chats of varied length, ``--steps`` optimizer steps of 8 rows.
* dpo: ``posttrain dpo`` from the base on 64 synthetic pairs, ``--steps`` steps of 8 pairs.
* generate: ``bench/generate.py`` (plain ``generate`` and our two decode paths), 32 prompts x 2 candidates,
  batch 64, 96 new tokens.

Each run is a fresh process (imports and model load included, as a user's command pays them). Reported: wall,
user and system CPU seconds of the child, and wall as a ratio to glibc's on the same workload. glibc returns large
freed blocks to the kernel (a block over its mmap threshold is unmapped on free), so every step's activations are
page-faulted and zeroed again: the system column shows what that costs; jemalloc and tcmalloc keep freed memory
for reuse. Allocators are looked up as Debian installs them (``libjemalloc2``, ``libtcmalloc-minimal4``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from posttrain.allocator import ENV, LIBDIRS, find_library  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def workload_cmd(name: str, tmp: Path, steps: int) -> list[str]:
    cli = shutil.which("posttrain") or str(Path(sys.executable).parent / "posttrain")
    common_keys = ["model.name=smollm2-135m-instruct", "peft.method=lora", "peft.r=16", "peft.alpha=32",
                   "optim.batch_size=8", "optim.micro_batch_size=8", f"optim.max_steps={steps}",
                   "data.eval_fraction=0.0", "train.log_every=100", "train.overwrite=true"]
    if name == "sft":
        return [cli, "sft", f"data.train={tmp / 'sft.jsonl'}", "data.max_length=512", *common_keys,
                f"train.output_dir={tmp / 'out-sft'}"]
    if name == "dpo":
        return [cli, "dpo", f"data.train={tmp / 'pairs.jsonl'}", "data.max_length=512", "optim.lr=1e-4",
                *common_keys, f"train.output_dir={tmp / 'out-dpo'}"]
    return [sys.executable, str(ROOT / "bench" / "generate.py"), "--prompts", "32", "--n", "2", "--batch", "64",
            "--max-new-tokens", "96", "--repeats", "1"]


def run_once(cmd: list[str], preload: str | None) -> tuple[float, float, float, int]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env.pop("LD_PRELOAD", None)
    env[ENV] = "system"  # the posttrain command would otherwise preload tcmalloc itself: the bench sets LD_PRELOAD
    if preload:
        env["LD_PRELOAD"] = preload
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed under {preload or 'glibc'} (exit {code}):\n{err[-2000:]}")
    return wall, usage.ru_utime, usage.ru_stime, usage.ru_minflt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default="sft,dpo,generate")
    p.add_argument("--allocators", default="jemalloc,tcmalloc")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()
    found = {"glibc": None}
    for name in a.allocators.split(","):
        path = find_library(name)
        if path is None:
            print(f"{name}: not found in {', '.join(LIBDIRS)} (Debian: apt-get install libjemalloc2 "
                  "libtcmalloc-minimal4); skipped")
        else:
            found[name] = path
    tmp = Path(tempfile.mkdtemp(prefix="bench-alloc-"))
    common.write_jsonl(tmp / "sft.jsonl", common.sft_rows(64, seed=0))
    common.write_jsonl(tmp / "pairs.jsonl", common.pair_rows(64, seed=0))
    rows = []
    try:
        for w in a.workloads.split(","):
            cmd = workload_cmd(w, tmp, a.steps)
            best: dict[str, tuple] = {}
            for _ in range(a.repeats):  # interleaved: a slow spell of the machine hits every allocator alike
                for name, path in found.items():
                    r = run_once(cmd, path)
                    if name not in best or r[0] < best[name][0]:
                        best[name] = r
                    print(f"{w:9s} {name:9s} wall {r[0]:6.1f} s  user {r[1]:6.1f}  sys {r[2]:6.1f}  "
                          f"minor faults {r[3]}", flush=True)
            for name, r in best.items():
                rows.append((w, name, r, best["glibc"][0] / r[0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{common.machine()}")
    print(f"{'workload':9s} {'allocator':9s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'faults':>9s} "
          f"{'speedup vs glibc':>17s}")
    for w, name, (wall, user, sys_, flt), ratio in rows:
        print(f"{w:9s} {name:9s} {wall:7.1f} {user:7.1f} {sys_:7.1f} {flt:9d} {ratio:16.2f}x")


if __name__ == "__main__":
    main()
