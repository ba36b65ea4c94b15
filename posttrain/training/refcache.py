"""Cached reference log-probs: the reference model is fixed, so log pi_ref(y|x) of a sequence never changes.

Key. A directory per *reference fingerprint* (``models/fingerprint.py``: a hash of the reference weights -- the
starting model's, or the pinned ``loss.reference_model``'s -- their dtype, the device type and the autocast precision), and inside it one float per *sequence key* (``data/collate.py::sequence_key``, a hash of
the rendered token ids and loss mask: it covers the data, the chat template, the truncation and max length).
So a second epoch or a resume, and (with a shared cache folder, see Location) a beta or loss-type sweep or a
rerun on the same data and model, finds every value and runs no reference forward; a changed template or max
length renders different tokens and simply misses.

Storage. ``<cache_dir>/<fingerprint>/part-*.pt``: each flush writes the entries it added as a new part file
(temp name, then rename), so several processes or runs never write the same file and a killed run leaves
only complete parts. Loading merges every part (tensors and plain data only, ``weights_only=True``); a part that
does not load is skipped with a warning, its values computed again. Values are float64 sums of token log-probs.

Location. ``loss.reference_cache_dir``, by default ``<train.output_dir>/refcache/``: the run's own folder, never
beside the user's data (where it landed inside another pipeline stage's finished folder, or in a repository).
Epochs and resumes of the run reuse it; to share one cache between runs (a beta sweep), point every run's
``loss.reference_cache_dir`` at one folder, e.g. ``$POSTTRAIN_CACHE/refcache``: both keys are content hashes, so
sharing is safe.

Filling is lazy: the first epoch computes the reference log-probs of each micro-batch as it trains (no extra
pass over the data) and stores them; a run that finds the whole train (and eval) set cached does not even
build the frozen reference copy.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import torch


def default_cache_dir(output_dir: str | Path) -> Path:
    """``<output_dir>/refcache``: inside the run folder (see the module docstring)."""
    return Path(output_dir) / "refcache"


class ReferenceCache:
    """sequence key -> reference log-prob sum, loaded from and flushed to ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.values: dict[str, float] = {}
        self.new: dict[str, float] = {}
        self.hits = self.misses = 0
        if self.directory.is_dir():
            for part in sorted(self.directory.glob("part-*.pt")):
                try:
                    self.values.update(torch.load(part, weights_only=True))
                except Exception as e:  # a damaged or foreign file: its values are simply computed again
                    print(f"posttrain: warning: reference cache part {part} does not load ({type(e).__name__}): "
                          "ignoring it", file=sys.stderr, flush=True)

    def covers(self, keys) -> bool:
        return all(k in self.values for k in keys)

    def lookup(self, keys: list[str]) -> list[float] | None:
        """Every key's value, or None (counted as a miss) if any is absent."""
        try:
            out = [self.values[k] for k in keys]
        except KeyError:
            self.misses += 1
            return None
        self.hits += 1
        return out

    def store(self, keys: list[str], values: torch.Tensor) -> None:
        for k, v in zip(keys, values.detach().double().cpu().tolist()):
            if k not in self.values:
                self.values[k] = v
                self.new[k] = v

    def flush(self) -> None:
        if not self.new:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.pt"
        tmp = self.directory / ("." + name + ".tmp")
        torch.save(dict(self.new), tmp)
        os.replace(tmp, self.directory / name)
        self.new.clear()
