"""Data hygiene at scale: time and peak memory of each step of `posttrain data` on 100k and 1M synthetic SFT rows.

    nice -n 19 .venv/bin/python bench/hygiene_scale.py                 # 100k and 1M, every step
    nice -n 19 .venv/bin/python bench/hygiene_scale.py --sizes 100000 --steps exact near

The data: prompts of 8-40 words and replies of 10-80 words over a 20k-word vocabulary, with 5% exact copies
(re-cased and re-punctuated), 5% near copies (one word of the reply changed), 0.1% rows that quote a builtin
eval prompt and 2% rows with an e-mail address or phone number. It is written to a temp folder line by line.

Each (size, step) runs in a fresh process, so its peak RSS is its own; ``base MB`` is that process's RSS after
imports (torch comes in with posttrain.data), ``peak MB`` its peak during the pass. ``cpu s`` is the pass's process
CPU time, ``pass s`` its wall time (on a shared machine mostly a measure of the neighbours). Growth from 100k to
1M rows should be ~10x in CPU time and, for dedup, at most ~10x in (peak - base) memory: the index holds one entry
per distinct row (allocated in doublings, so the ratio moves in steps).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def emit(result: dict) -> None:
    """A child's result: one JSON line the parent picks out of stdout."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_child(args: list[str], timeout: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise RuntimeError(f"benchmark child failed: {args}")


def table(title: str, rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = [title, "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |",
             "| " + " | ".join("-" * widths[c] for c in columns) + " |"]
    lines += ["| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


STEPS = {
    "exact": dict(exact=True, near=False, decontaminate=False, redact=False),
    "near": dict(exact=False, near=True, decontaminate=False, redact=False),
    "decontaminate": dict(exact=False, near=False, decontaminate=True, redact=False),
    "redact": dict(exact=False, near=False, decontaminate=False, redact=True),
    "clean": dict(exact=True, near=True, decontaminate=True, redact=True),
}


def _vocab(rng: random.Random, n: int = 20000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def write_data(path: Path, n: int, seed: int = 0) -> None:
    from posttrain.eval.suites import BUILTIN_SUITES

    rng = random.Random(seed)
    vocab = _vocab(rng)
    evals = [json.loads(x)["prompt"] for x in BUILTIN_SUITES["refusal"].read_text().splitlines() if x.strip()]
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.05:  # exact copy, different case and punctuation
                src = rng.choice(recent)
                row = {"prompt": src["prompt"].upper() + "!", "completion": src["completion"].lower()}
            elif recent and roll < 0.10:  # near copy: one reply word changed
                src = rng.choice(recent)
                words = src["completion"].split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                row = {"prompt": src["prompt"], "completion": " ".join(words)}
            else:
                prompt = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 40)))
                reply = " ".join(rng.choice(vocab) for _ in range(rng.randint(10, 80)))
                if roll < 0.101:
                    prompt = f"{prompt} {rng.choice(evals)}"
                elif roll < 0.121:
                    reply += rng.choice([f" write to user{i}@example.com", f" call 555-{rng.randint(100, 999)}-"
                                         f"{rng.randint(1000, 9999)}"])
                row = {"prompt": prompt, "completion": reply}
                if len(recent) < 5000:
                    recent.append(row)
                else:
                    recent[rng.randrange(5000)] = row
            fh.write(json.dumps(row) + "\n")


def child(step: str, path: str) -> None:
    from posttrain.hygiene.clean import HygieneConfig, run_hygiene

    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.process_time()
        w0 = time.perf_counter()
        report = run_hygiene(path, Path(out) / "out", HygieneConfig(**STEPS[step], progress=False))
        cpu = time.process_time() - t0
        wall = time.perf_counter() - w0
    emit({"rows": report["rows_in"], "rows out": report["rows_out"], "cpu s": round(cpu, 1),
          "pass s": round(wall, 1), "rows/s": int(report["rows_in"] / max(wall, 1e-9)), "base MB": round(base),
          "removed": sum(report["removed"].values())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--child", nargs=2, metavar=("STEP", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"rows_{size}.jsonl"
            t0 = time.perf_counter()
            write_data(path, size)
            print(f"wrote {size} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            for step in args.steps:
                result = run_child(["--child", step, str(path)], timeout=7200)
                result.update({"step": step, "peak MB": round(result.pop("peak_rss_mb"))})
                result["MB over base"] = result["peak MB"] - result["base MB"]
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
            path.unlink()
    columns = ["step", "rows", "rows out", "removed", "pass s", "cpu s", "rows/s", "base MB", "peak MB",
               "MB over base"]
    print(table("posttrain data: time and peak RSS per step", results, columns))
    by = {(r["step"], r["rows"]): r for r in results}
    if len(args.sizes) == 2:
        small, large = sorted(args.sizes)
        # CPU time, not wall time: on a shared machine the wall clock measures the neighbours too.
        print(f"\ngrowth {small} -> {large} rows ({large / small:g}x):")
        for step in args.steps:
            a, b = by.get((step, small)), by.get((step, large))
            if a and b:
                mem = (b["MB over base"] / a["MB over base"]) if a["MB over base"] > 0 else float("nan")
                print(f"  {step:14s} cpu time x{b['cpu s'] / max(a['cpu s'], 1e-9):.1f} "
                      f"(wall x{b['pass s'] / max(a['pass s'], 1e-9):.1f}), memory over base x{mem:.1f}")


if __name__ == "__main__":
    main()
