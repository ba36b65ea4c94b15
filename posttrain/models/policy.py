"""Load the model a stage trains or evaluates, with its adapter lineage.

A trained folder written by posttrain carries ``posttrain.json``: the base model name and the adapters already
merged into it (an SFT LoRA under a DPO LoRA, say). Passing such a folder as ``model.name`` rebuilds exactly the
model it was trained on top of, so stages chain by folder: ``dpo.model.name = runs/sft/model``.

In float32 the lineage is merged into the weights. In bfloat16 / float16 its LoRA adapters stay unmerged
(``keeps_lineage_unmerged``), for generation and for a LoRA/DoRA stage training on top of it, because merged into
half-precision weights a LoRA update mostly rounds away.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from posttrain.models.adapters import (TRAINABLE_ADAPTER, attach_adapter, attach_lineage, is_peft, load_with_adapter,
                                       qlora_quantization_config)
from posttrain.models.resolve import ModelError, load_causal_lm, load_tokenizer, resolve_model_path, torch_dtype

# torch and transformers are imported in the functions: `import posttrain.models` stays free of them.

LINEAGE_FILE = "posttrain.json"


def enable_checkpointing(model, every: int = 1) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs under LoRA, and with DDP), through the
    name the installed transformers prefers: ``activation_checkpointing_enable`` (5.24; the old name warns),
    else ``gradient_checkpointing_enable``.

    ``every`` > 1 keeps checkpointing on every ``every``-th decoder layer only (layers 0, every, 2 x every, ...):
    the others keep their activations, so memory and recompute both land between the two ends."""
    kwargs = {"use_reentrant": False}
    new = getattr(model, "activation_checkpointing_enable", None)
    if new is not None and "activation_checkpointing_kwargs" in inspect.signature(new).parameters:
        new(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if every > 1:
        layers = checkpointed_layers(model)
        if not layers:
            raise ModelError(f"model.checkpoint_every={every}: {type(model).__name__} has no per-layer "
                             "checkpointing (transformers' GradientCheckpointingLayer) to choose from; use "
                             "checkpoint_every=1")
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i % every == 0


def checkpointed_layers(model) -> list:
    """The decoder layers (transformers' ``GradientCheckpointingLayer``) in model order, checkpointed or not."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def resolve_lineage(name: str, adapter: str | None = None) -> tuple[str, list[str]]:
    """(base model name, adapters to merge in order) for a model name and an optional extra adapter."""
    base, adapters = name, []
    path = Path(name)
    if (path / "adapter_config.json").exists():
        meta = path / LINEAGE_FILE
        if meta.exists():
            lineage = json.loads(meta.read_text())
            base, adapters = lineage["base"], list(lineage.get("merged_adapters", [])) + [str(path.resolve())]
        else:
            cfg = json.loads((path / "adapter_config.json").read_text())
            base, adapters = cfg.get("base_model_name_or_path") or name, [str(path.resolve())]
    if adapter:
        adapters.append(str(Path(adapter).resolve()))
    return base, adapters


def load_base(name: str, adapter: str | None, *, cache_dir=None, dtype="auto", trust_remote_code=False,
              quantization_config=None, meta: bool = False):
    """The model with every adapter of its lineage merged in; returns (model, base name, merged adapter list).
    ``meta``: the same architecture built on the meta device from the base's config, no weight read (merging
    adapters changes no shape): for a process that receives its weights from another (``parallel.loads_on_meta``)."""
    base_name, adapters = resolve_lineage(name, adapter)
    if meta:
        return build_on_meta(base_name, cache_dir=cache_dir, dtype=dtype,
                             trust_remote_code=trust_remote_code), base_name, adapters
    model = load_causal_lm(base_name, cache_dir=cache_dir, dtype=dtype, trust_remote_code=trust_remote_code,
                           quantization_config=quantization_config if not adapters else None)
    for a in adapters:
        model = load_with_adapter(model, a, trainable=False).merge_and_unload()
    if adapters:
        # PEFT loads an adapter for inference with every weight frozen, and merging keeps the flags: give back the
        # model as from_pretrained does (every weight trainable), or full fine-tuning from a trained folder has
        # nothing to train (issue 16, session 40: DPO with peft.method=none from the quickstart's SFT model)
        model.requires_grad_(True)
    if quantization_config is not None and adapters:
        raise ModelError("peft.method=qlora cannot start from a model with merged adapters; merge them first")
    return model, base_name, adapters


def is_plain_lora(adapter_dir: str) -> bool:
    """A LoRA adapter whose update is the plain low-rank sum (not DoRA, whose update depends on the weight norm)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg.get("peft_type") == "LORA" and not cfg.get("use_dora")


def keeps_lineage_unmerged(adapters: list[str], dtype: str) -> bool:
    """Whether a lineage's adapters stay unmerged: in bfloat16 / float16, every one a plain LoRA. A LoRA update is
    mostly smaller than half a bfloat16 step of the weight it changes, so merging it into bfloat16 weights rounds
    most of it away (the quickstart's DPO model: 45% of the changed weights back to the base's value, its
    out-of-distribution gain +5.8 points instead of +11.6; unmerged, +10.5). In float32 merging is exact enough and
    costs nothing at run time, so it stays the rule there."""
    import torch

    return bool(adapters) and torch_dtype(dtype) in (torch.bfloat16, torch.float16) and all(
        is_plain_lora(a) for a in adapters)


def load_for_generation(name: str, adapter: str | None = None, *, cache_dir=None, dtype="auto"):
    """The model to answer with: ``load_base``'s merged model, except where ``keeps_lineage_unmerged``: there the
    adapters stay unmerged, every one of the lineage active (``attach_lineage``; PEFT keeps their weights in
    float32). Returns the transformers model (LoRA layers in place), in eval mode."""
    base_name, adapters = resolve_lineage(name, adapter)
    if not keeps_lineage_unmerged(adapters, dtype):
        return load_base(name, adapter, cache_dir=cache_dir, dtype=dtype)[0].eval()
    model = load_causal_lm(base_name, cache_dir=cache_dir, dtype=dtype)
    return attach_lineage(model, adapters).get_base_model().eval()


def build_on_meta(name: str, *, cache_dir=None, dtype="auto", trust_remote_code=False, auto_class=None,
                  **config_kwargs):
    """``name``'s model built from its config on the meta device (parameters with shapes and dtypes, no storage),
    as ``load_causal_lm`` would load it; ``auto_class`` (default ``AutoModelForCausalLM``) and ``config_kwargs``
    (e.g. ``num_labels=1``) for another head."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model_path(name, cache_dir), trust_remote_code=trust_remote_code,
                                        **config_kwargs)
    with torch.device("meta"):
        return (auto_class or AutoModelForCausalLM).from_config(config, dtype=torch_dtype(dtype),
                                                                trust_remote_code=trust_remote_code)


def model_tokenizer(name: str, cache_dir=None, trust_remote_code: bool = False):
    """The tokenizer of ``name``: a trained folder carries its own, an adapter folder uses its base's."""
    if not (Path(name) / "tokenizer_config.json").exists():
        name, _ = resolve_lineage(name)
    return load_tokenizer(name, cache_dir, trust_remote_code)


def load_policy(model_cfg, peft_cfg, *, seed: int, tokenizer=None, meta: bool = False):
    """(trainable model, tokenizer, lineage dict) for a training stage. Pass the ``tokenizer`` the stage already
    loaded to render its data, so it is not read twice. ``meta``: built on the meta device, weights (adapter
    included) to come from the first process (``training/parallel.py::loads_on_meta``). A LoRA/DoRA stage on a
    lineage in bfloat16 / float16 keeps the lineage's adapters frozen and active beside the new one
    (``attach_lineage``): it trains on, and a preference loss references, the model the lineage is."""
    import torch

    quant = qlora_quantization_config() if peft_cfg.method == "qlora" else None
    if tokenizer is None:
        tokenizer = model_tokenizer(model_cfg.name, model_cfg.cache_dir, model_cfg.trust_remote_code)
    base_name, merged = resolve_lineage(model_cfg.name, model_cfg.adapter)
    if peft_cfg.method in ("lora", "dora") and keeps_lineage_unmerged(merged, model_cfg.dtype):
        # a new adapter trained in bfloat16 on top of a lineage: the lineage stays unmerged beside it, so training
        # starts from (and a preference loss references) the model the lineage really is, not its rounded merge
        if meta:
            model = build_on_meta(base_name, cache_dir=model_cfg.cache_dir, dtype=model_cfg.dtype,
                                  trust_remote_code=model_cfg.trust_remote_code)
        else:
            model = load_causal_lm(base_name, cache_dir=model_cfg.cache_dir, dtype=model_cfg.dtype,
                                   trust_remote_code=model_cfg.trust_remote_code)
        model = attach_lineage(model, merged, read_weights=not meta)
    else:
        model, base_name, merged = load_base(model_cfg.name, model_cfg.adapter, cache_dir=model_cfg.cache_dir,
                                             dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code,
                                             quantization_config=quant, meta=meta)
    model.config.use_cache = False
    if peft_cfg.method != "none":
        torch.manual_seed(seed)  # adapter init is random: seed it so runs reproduce
        model = attach_adapter(model, method=peft_cfg.method, r=peft_cfg.r, alpha=peft_cfg.alpha,
                               dropout=peft_cfg.dropout, target_modules=peft_cfg.target_modules)
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model, every=model_cfg.checkpoint_every)
    lineage = {"base": base_name, "merged_adapters": merged, "adapter": peft_cfg.method != "none"}
    return model, tokenizer, lineage


def save_trained(model, tokenizer, out_dir: str | Path, lineage: dict, state_dict: dict | None = None) -> Path:
    """Adapter (PEFT format) or full weights, the tokenizer, and the lineage file. ``state_dict``: the model's
    full weights when they are sharded over processes (``training/parallel.py::full_state_dict``); the folder is
    then the same as an unsharded run writes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a PEFT model saves only the adapter it trained: a lineage kept unmerged beside it is in the lineage file
    only = {"selected_adapters": [TRAINABLE_ADAPTER]} if is_peft(model) else {}
    if state_dict is not None:
        model.save_pretrained(str(out), state_dict=state_dict, **only)
    else:
        model.save_pretrained(str(out), **only)
    tokenizer.save_pretrained(str(out))
    if is_peft(model):
        (out / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
    return out


def load_trained(path_or_name: str, *, cache_dir=None, dtype="auto"):
    """A model for inference from any name posttrain accepts, adapters merged. Returns (model, tokenizer)."""
    model, _, _ = load_base(path_or_name, None, cache_dir=cache_dir, dtype=dtype)
    tokenizer = model_tokenizer(path_or_name, cache_dir)
    model.eval()
    return model, tokenizer


def merge_to_folder(model: str, output: str | Path, *, dtype: str = "float32", cache_dir=None) -> Path:
    """Fold an adapter folder (and its lineage) into its base and write a plain HF folder (safetensors + tokenizer)
    at ``output``, atomically: written beside it under a temp name, then renamed, so a killed export never leaves
    a folder that looks complete. ``dtype``: float32 | bfloat16 | float16. A folder that is already a plain model
    (a merge stage's output, measured by eval before its export) is linked or copied file for file when it is at
    ``dtype`` already, so the export is the bytes that were measured; at another dtype it is converted. Returns
    ``output``."""
    import torch

    folder = Path(model)
    plain = not (folder / "adapter_config.json").exists()
    if plain and not ((folder / "config.json").exists() and any(folder.glob("*.safetensors"))):
        raise ValueError(f"{model}: not an adapter folder (no adapter_config.json) nor a model folder (config.json "
                         "+ safetensors); nothing to merge")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype '{dtype}': expected one of {', '.join(dtypes)}")
    if plain and json.loads((folder / "config.json").read_text()).get("dtype") == dtype:
        return _copy_folder(folder, Path(output))
    merged, tokenizer = load_trained(model, cache_dir=cache_dir, dtype="float32")
    return save_folder(merged.to(dtypes[dtype]), tokenizer, output, dtype)


def _copy_folder(src: Path, out: Path) -> Path:
    """``src``'s files at ``out`` (``_write_folder``): hard links where the file system allows (no second copy of
    the weights; every writer here replaces a folder, never edits a file in place), copies where it does not."""
    def fill(tmp: Path) -> None:
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
    return _write_folder(out, fill)


def save_folder(model, tokenizer, output: str | Path, dtype: str, extra: dict[str, str] | None = None) -> Path:
    """``model`` (already in ``dtype``) and ``tokenizer`` as a plain HF folder at ``output``, plus ``extra`` files
    (name -> text) (``_write_folder``)."""
    model.config.dtype = dtype

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    return _write_folder(Path(output), fill)


def _write_folder(out: Path, fill) -> Path:
    """``fill(tmp)`` writes a folder's files into a temp folder beside ``out``, renamed to ``out`` when complete
    (replacing an older one), so a killed write never leaves a folder that looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
