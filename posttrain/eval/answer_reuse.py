"""Eval answers kept for reuse: a model that answers the same prompts with the same settings, code and machine
gives the same greedy tokens, so ``eval`` takes them from a store instead of generating them again.

In a pipeline every eval stage of a run folder shares ``<run_dir>/eval_answers.sqlite``: a recipe variant whose
eval compares a new model against the untouched base generates only the new model's answers (the quickstart's
eval: about half its time), and a round whose model is evaluated again (``final_eval``) generates nothing.
``posttrain eval --answer-cache FILE`` does the same for the command (off without it).

The key is a sha256 of everything the answers depend on:

* the model as loaded: its weights (names, dtypes, shapes, bytes, after every adapter of its lineage is merged or
  attached: ``models/fingerprint.py``), its dtype and device;
* the prompts as token ids, in order (so the suites, the chat template and the tokenizer are in it), each row's
  token budget, the batch size (batching changes floating-point rounding), the seed;
* the machine: the GPU's or the CPU's model name, torch's thread count, the versions of python, torch,
  transformers and the other packages a run records (``data/runfolder.py::package_versions``), and a digest of
  posttrain's generation code (``posttrain/generation/*.py``).

A store entry is one whole call (all rows of one model), never row by row: an answer depends on the rows batched
with it. Only the hf backend is covered: vLLM schedules its own batches, and ``openai:`` endpoints have the answer
cache of their backend (``generation/answer_cache.py``, the same SQLite store used here). Each entry is committed
when it is written, so a crash never leaves a partial one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sqlite3
from pathlib import Path

from posttrain.generation.answer_cache import AnswerCache

STORE_NAME = "eval_answers.sqlite"  # in a pipeline's run folder
_FORMAT = "posttrain-eval-answers/1"


@functools.lru_cache(maxsize=1)
def generation_code_digest() -> str:
    """sha256 of posttrain's generation code (file names and bytes): a change to the decode loop starts afresh."""
    root = Path(__file__).resolve().parent.parent / "generation"
    h = hashlib.sha256()
    for f in sorted(root.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_identity(device) -> dict:
    """What besides the model and the prompts decides the floating-point results of a generation here."""
    import torch

    from posttrain.data.runfolder import package_versions

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = _processor_name()
    return {"device": device.type, "hardware": hardware, "threads": torch.get_num_threads(),
            "versions": {k: v for k, v in package_versions().items() if k != "allocator"},
            "code": generation_code_digest()}


def answers_key(model, prompt_ids: list[list[int]], budgets: list[int], *, batch_size: int, seed: int) -> str:
    """The store key of one eval call (see the module docstring)."""
    from posttrain.models.fingerprint import fingerprint

    first = next(model.parameters())
    weights = fingerprint(list(model.named_parameters()) + list(model.named_buffers()), precision=str(first.dtype),
                          device_type=first.device.type)
    blob = json.dumps({"format": _FORMAT, "model": weights, "prompts": prompt_ids,
                       "budgets": budgets, "batch_size": batch_size, "seed": seed,
                       "machine": machine_identity(first.device)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerStore:
    """``get(key)`` -> the answers ``[(text, completion_tokens, finish_reason), ...]`` or None; ``put``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._cache = AnswerCache(self.path)
        except (sqlite3.Error, OSError) as e:  # a folder, another kind of file, a place that cannot be written
            raise ValueError(f"answer cache {self.path}: cannot be used as an SQLite answer store ({e})") from None

    def get(self, key: str) -> list[tuple[str, int, str]] | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        return [(text, int(tokens), reason) for text, tokens, reason in json.loads(hit[0])]

    def put(self, key: str, answers: list[tuple[str, int, str]], meta: dict) -> None:
        self._cache.put(key, json.dumps([list(a) for a in answers], ensure_ascii=False), meta)

    def close(self) -> None:
        self._cache.close()
