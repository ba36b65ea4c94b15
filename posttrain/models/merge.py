"""``posttrain merge --method ...``: merge two or more models of the same architecture into one plain Hugging Face
folder, with the formulas of ``ops/merging.py``.

Every input is loaded as a full float32 model (an adapter folder is folded into its base first, with its lineage),
so fine-tunes done with LoRA and with full fine-tuning mix freely as long as they share a base. ``base`` (needed by
task_arithmetic, ties and dare_ties) is the model the task vectors are measured from, usually the common base
model. Task arithmetic also takes a single model: with ``base`` its reference (the SFT model a DPO run started from)
and ``lambda`` above 1 it is ExPO's extrapolation (``ops/merging.py``). Tensors that are not floating point
(buffers) are taken from the first model. ``lambda_for`` (task_arithmetic, ties, dare_ties) sets another scale for
the weights whose names contain a pattern (the first pattern that matches wins; the rest keep ``lambda``), e.g.
``{"self_attn": 1.5}``: extrapolate the attention weights further than the MLPs; a pattern no weight name contains
is an error. The output is written beside
its final name and renamed when complete, with ``merge.json`` (method, inputs, weights, density, seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain.models.policy import load_trained, save_folder
from posttrain.ops import merging

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties")


def check_merge_args(models: list[str], method: str, weights: list[float] | None, base: str | None,
                     density: float, t: float, lambda_for: dict[str, float] | None = None) -> list[float]:
    """The weights to use (default: equal); ``ValueError`` (one line) for a combination that cannot merge."""
    if method not in METHODS:
        raise ValueError(f"merge method '{method}': expected one of {', '.join(METHODS)}")
    if lambda_for and method not in NEEDS_BASE:
        raise ValueError(f"--lambda-for scales task vectors: it applies to {', '.join(NEEDS_BASE)}, not {method}")
    if lambda_for and not all(pattern for pattern in lambda_for):
        raise ValueError("--lambda-for: an empty pattern would match every weight; use --lambda")
    if method == "task_arithmetic" and not models:  # one model is enough here: ExPO
        raise ValueError("merge --method task_arithmetic needs a model")
    if method != "task_arithmetic" and len(models) < 2:
        raise ValueError(f"merge --method {method} needs two or more models, got {len(models)}")
    if method == "slerp" and len(models) != 2:
        raise ValueError(f"slerp merges exactly two models, got {len(models)}")
    if method in NEEDS_BASE and not base:
        raise ValueError(f"merge --method {method} needs --base (the model the task vectors are measured from)")
    if weights is None:
        weights = [1.0 / len(models)] * len(models) if method == "linear" else [1.0] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"--weights has {len(weights)} values for {len(models)} models")
    if not 0 < density <= 1:
        raise ValueError(f"--density must be in (0, 1], got {density}")
    if not 0 <= t <= 1:
        raise ValueError(f"--t must be in [0, 1], got {t}")
    return list(weights)


def lambda_of(name: str, lam: float, lambda_for: dict[str, float] | None) -> float:
    """The scale of weight ``name``: that of the first ``lambda_for`` pattern its name contains, else ``lam``."""
    return next((value for pattern, value in (lambda_for or {}).items() if pattern in name), lam)


def merge_state_dicts(states: list[dict[str, torch.Tensor]], method: str, weights: list[float],
                      base: dict[str, torch.Tensor] | None = None, *, density: float = 1.0, lam: float = 1.0,
                      t: float = 0.5, seed: int = 0,
                      lambda_for: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The merged state dict (float32 for floating tensors). Keys and shapes must match across inputs."""
    keys = list(states[0])
    for i, s in enumerate(states[1:] + ([base] if base is not None else []), 1):
        if set(s) != set(keys):
            missing = sorted(set(keys) ^ set(s))[0]
            raise ValueError(f"the models differ in their weights (e.g. '{missing}'): merge needs one architecture")
        bad = next((k for k in keys if s[k].shape != states[0][k].shape), None)
        if bad:
            raise ValueError(f"weight '{bad}' has shape {tuple(s[bad].shape)} in one model and "
                             f"{tuple(states[0][bad].shape)} in another")
    unmatched = [pattern for pattern in lambda_for or {} if not any(pattern in key for key in keys)]
    if unmatched:
        raise ValueError(f"--lambda-for: no weight name contains '{unmatched[0]}' (e.g. '{keys[0]}')")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in keys:
        tensors = [s[key] for s in states]
        if not tensors[0].is_floating_point():
            out[key] = tensors[0].clone()
        elif method == "linear":
            out[key] = merging.linear(tensors, weights)
        elif method == "slerp":
            out[key] = merging.slerp(tensors[0], tensors[1], t)
        elif method == "task_arithmetic":
            out[key] = merging.task_arithmetic(base[key], tensors, weights, lambda_of(key, lam, lambda_for))
        elif method == "ties":
            out[key] = merging.ties(base[key], tensors, weights, density, lambda_of(key, lam, lambda_for))
        else:
            out[key] = merging.dare_ties(base[key], tensors, weights, density, generator,
                                         lambda_of(key, lam, lambda_for))
    return out


def merge_models(models: list[str], output: str | Path, *, method: str, weights: list[float] | None = None,
                 base: str | None = None, density: float = 1.0, lam: float = 1.0, t: float = 0.5, seed: int = 0,
                 dtype: str = "float32", cache_dir=None, lambda_for: dict[str, float] | None = None) -> Path:
    """Load, merge and save (module docstring); returns ``output``."""
    weights = check_merge_args(models, method, weights, base, density, t, lambda_for)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype '{dtype}': expected one of {', '.join(dtypes)}")
    loaded = [load_trained(m, cache_dir=cache_dir, dtype="float32") for m in models]
    first, tokenizer = loaded[0]
    states = [{k: v.detach() for k, v in m.state_dict().items()} for m, _ in loaded]
    base_state = None
    if method in NEEDS_BASE:
        base_model, _ = load_trained(base, cache_dir=cache_dir, dtype="float32")
        base_state = {k: v.detach() for k, v in base_model.state_dict().items()}
    merged = merge_state_dicts(states, method, weights, base_state, density=density, lam=lam, t=t, seed=seed,
                               lambda_for=lambda_for)
    first.load_state_dict(merged)
    record = {"method": method, "models": models, "weights": weights, "base": base, "density": density,
              "lambda": lam, "t": t, "seed": seed}
    if lambda_for:
        record["lambda_for"] = dict(lambda_for)
    return save_folder(first.to(dtypes[dtype]), tokenizer, output, dtype,
                       {"merge.json": json.dumps(record, indent=2) + "\n"})
