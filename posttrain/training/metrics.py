"""metrics.jsonl (one JSON object per logged step) and reduction of per-example metrics across micro-batches and
processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from posttrain.data.writers import strict_json


class MetricSums:
    """Accumulates per-example metric tensors as (sum, count) pairs, ignoring NaN entries.

    NaN marks "not applicable to this row" (for example KTO's desirable-only rewards), so means are exact
    over the rows a metric applies to, whatever the split into micro-batches and processes.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            v = value.detach().float().reshape(-1)
            ok = ~torch.isnan(v)
            self.sums[key] = self.sums.get(key, 0.0) + float(v[ok].sum())
            self.counts[key] = self.counts.get(key, 0.0) + float(ok.sum())

    def reduced(self, reduce_sum) -> dict[str, float]:
        """Means over all processes; ``reduce_sum`` all-reduces a 1-D float tensor (identity on one process)."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        packed = torch.tensor([self.sums[k] for k in keys] + [self.counts[k] for k in keys], dtype=torch.float64)
        packed = reduce_sum(packed)
        n = len(keys)
        return {k: (float(packed[i] / packed[n + i]) if packed[n + i] > 0 else math.nan) for i, k in enumerate(keys)}


class MetricsLog:
    """Appends JSON lines; on resume, drops lines logged after the checkpoint so no step appears twice."""

    def __init__(self, path: str | Path, enabled: bool, resume_step: int | None = None, trackers=None):
        """``trackers``: a ``training/trackers.py::Trackers`` that gets every record too (main process only)."""
        self.path = Path(path)
        self.enabled = enabled
        self.trackers = trackers if enabled else None
        if enabled and resume_step is not None:
            for path in (self.path, self.path.with_name("samples.jsonl")):
                if path.exists():
                    kept = [ln for ln in path.read_text().splitlines()
                            if ln and json.loads(ln).get("step", 0) <= resume_step]
                    path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict) -> None:
        """Append ``record`` as one line of strict JSON: NaN and infinities are written as null."""
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(strict_json(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def samples(self, step: int, rows: list[dict]) -> None:
        """Sampled completions of a logged step: appended to ``samples.jsonl`` beside metrics.jsonl (one line per
        row, with its ``step``; a resumed run drops the lines after its checkpoint, as for the metrics) and sent to
        the trackers as a table."""
        if not self.enabled or not rows:
            return
        path = self.path.with_name("samples.jsonl")
        with open(path, "a") as fh:
            fh.write("".join(strict_json({"step": step, **row}) + "\n" for row in rows))
        if self.trackers is not None:
            self.trackers.log_samples(rows, step)

    def close(self) -> None:
        """End the trackers' runs (metrics.jsonl needs nothing)."""
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []
