"""The ``mix`` pipeline stage: several data files (any layout posttrain reads) -> one training file.

Config: ``inputs`` (a list; each entry a path, or ``{path, limit}`` to take only the first ``limit`` rows of that
file) and ``kind``: ``preference`` (default), ``sft``, ``kto`` or ``prompt``. Every row of every input is read and
validated through the same readers as training (so a bad row is one ``file:row: field`` line and nothing is
written); rows are written in one canonical layout (message lists), in input order, to ``train.jsonl``, with
``mix.json`` saying how many rows came from which file. The trainer shuffles, so the order here does not matter.

Used by the quickstart to train DPO on fresh on-policy pairs together with shipped off-policy pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.pipeline.spec import PipelineError, check_keys

# posttrain.data imports torch: the functions import it, so `import posttrain.pipeline.mix` stays free of torch.

KINDS = {"preference": "preference", "sft": "sft", "kto": "unpaired", "prompt": "prompt"}


def _entries(params: dict) -> list[tuple[str, int | None]]:
    inputs = params.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise PipelineError("config: key 'inputs' must be a non-empty list of files or {path, limit} entries")
    out = []
    for i, entry in enumerate(inputs):
        if isinstance(entry, str):
            out.append((entry, None))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise PipelineError(f"config: inputs[{i}]: expected a path or {{path, limit}}, got {entry!r}")
        unknown = sorted(set(entry) - {"path", "limit"})
        if unknown:
            raise PipelineError(f"config: inputs[{i}]: unknown key '{unknown[0]}'; expected path, limit")
        limit = entry.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise PipelineError(f"config: inputs[{i}]: 'limit' must be a positive integer, got {limit!r}")
        out.append((entry["path"], limit))
    return out


def canonical_row(example) -> dict[str, Any]:
    """One example as a JSON row every posttrain reader takes back unchanged (message lists)."""
    from posttrain.data.schema import PreferencePair, PromptExample, SFTExample, UnpairedExample

    if isinstance(example, PreferencePair):
        return {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
    if isinstance(example, UnpairedExample):
        return {"prompt": example.prompt, "completion": example.completion, "label": example.label}
    if isinstance(example, SFTExample):
        return {"messages": example.messages}
    if isinstance(example, PromptExample):
        return {"prompt": example.prompt, **example.metadata}
    raise TypeError(f"cannot write {type(example).__name__}")


def run_mix_stage(params: dict, output_dir: Path, resume: bool) -> dict:
    from posttrain.data.layouts import load_examples
    from posttrain.data.writers import atomic_write_json, atomic_write_jsonl

    check_keys(params, ("inputs", "kind"))
    kind = params.get("kind", "preference")
    if kind not in KINDS:
        raise PipelineError(f"config: key 'kind': '{kind}' is not one of {', '.join(KINDS)}")
    rows, counts = [], []
    for path, limit in _entries(params):
        examples = load_examples(path, KINDS[kind], None)
        taken = examples[:limit] if limit is not None else examples
        rows += [canonical_row(e) for e in taken]
        counts.append({"path": path, "rows": len(examples), "taken": len(taken)})
    atomic_write_jsonl(output_dir / "train.jsonl", rows)
    atomic_write_json(output_dir / "mix.json", {"kind": kind, "inputs": counts, "rows": len(rows)})
    return {"rows": len(rows), **{f"rows/{i}": c["taken"] for i, c in enumerate(counts)}}


def mix_inputs(params: dict) -> list[str]:
    try:
        return [path for path, _ in _entries(params)]
    except PipelineError:
        return []  # reported when the stage runs
