"""Prints what the demo measured: SFT loss, DPO reward accuracy on held-out pairs, wall times."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
rows = []
for stage in ("sft", "dpo"):
    manifest = root / stage / "manifest.json"
    if not manifest.exists():
        sys.exit(f"demo: {manifest} is missing; did the {stage} stage run?")
    m = json.loads(manifest.read_text())
    rows.append((stage, m["status"], m.get("wall_time_s"), m["metrics"]))
print(f"\nposttrain demo ({root})")
for stage, status, wall, metrics in rows:
    print(f"  {stage}: {status} in {wall:.0f} s")
    for key in ("train/loss", "eval/loss", "eval/rewards/accuracy", "eval/rewards/margins", "tokens_per_s"):
        if key in metrics and metrics[key] is not None:
            print(f"    {key:24s} {metrics[key]:.4f}")
acc = rows[1][3].get("eval/rewards/accuracy")
if acc is not None:
    print(f"\n  held-out reward accuracy after DPO: {acc:.3f} (0.5 is chance)")
