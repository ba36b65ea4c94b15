"""The run folder every stage writes: resolved config, manifest (inputs with hashes, versions, git sha, metrics,
status), metrics.jsonl and artifacts. Writes are atomic: a temp name, then a rename."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from posttrain.data.writers import atomic_write_json, atomic_write_text  # noqa: F401 (callers import both from here)

_VERSIONED = ("posttrain", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers")


def content_hash(path: str | os.PathLike) -> str | None:
    """sha256 of a file, or of a folder's files (names and bytes, in sorted order); None if it does not exist."""
    p = Path(path)
    if not p.exists():
        return None
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a run's numbers depend on, and the memory allocator the process runs
    with (``allocator.allocator_label``: tcmalloc where the command found it, else the system's)."""
    from posttrain.allocator import allocator_label

    out = {"python": platform.python_version(), "allocator": allocator_label()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits of sha256 over the installed posttrain package's own files (its modules and the data it ships:
    eval suites, templates; names and bytes, in sorted order; caches left out): two installs that can compute
    differently have different fingerprints, whatever their version string says. Computed once per process."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and p.suffix not in (".pyc", ".pyo")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunFolder:
    """One stage's output folder and its manifest."""

    def __init__(self, path: str | os.PathLike, stage: str):
        self.path = Path(path)
        self.stage = stage
        self.manifest: dict[str, Any] = {
            "stage": stage,
            "status": "created",
            "inputs": {},
            "outputs": {},
            "metrics": {},
            "versions": package_versions(),
            "git_sha": git_sha(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._t0 = time.time()

    def add_input(self, name: str, location: str) -> None:
        self.manifest["inputs"][name] = {"location": location, "hash": content_hash(location)}

    def write_config(self, text: str) -> None:
        atomic_write_text(self.path / "config.yaml", text)

    def save(self, **updates: Any) -> None:
        self.manifest.update(updates)
        self.manifest["wall_time_s"] = round(time.time() - self._t0, 2)
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def finish(self, metrics: dict[str, Any], outputs: dict[str, str]) -> None:
        self.manifest["metrics"].update(metrics)
        for name, loc in outputs.items():
            self.manifest["outputs"][name] = {"location": loc, "hash": content_hash(self.path / loc)}
        self.save(status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


PROMOTION = "promotion.json"  # written by `posttrain promote` into each promoted model folder


def promoted_identity(model_path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(id, lineage key) of the promoted model behind ``model_path`` (a serving folder's ``current`` link or a model
    folder), read together from its ``promotion.json`` (``pipeline/promote.py``):
    the lineage key of a run stage's model is ``<run_dir>:<stage>:<stage key>`` (the full content key, which hashes
    the stage's config, inputs and every upstream stage: the run's manifest tells the rest), of a first deploy
    ``base:<model>``. (None, None) for a model that was not promoted."""
    try:
        promotion = json.loads((Path(model_path).resolve() / PROMOTION).read_text())
        model_id = promotion["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if promotion.get("key"):
        return model_id, f"{promotion.get('run_dir')}:{promotion.get('stage')}:{promotion['key']}"
    return model_id, f"base:{promotion['base']}" if promotion.get("base") else None
