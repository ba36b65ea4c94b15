"""PEFT: LoRA, DoRA and QLoRA on any causal LM, loaded and saved in PEFT's own format (merging: models/policy.py)."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from posttrain.models.resolve import ModelError

# torch, transformers and peft are imported in the functions: `import posttrain.models` stays free of them.


def qlora_quantization_config():
    """4-bit NF4 config for QLoRA; needs bitsandbytes and CUDA, and says so clearly when either is missing."""
    import torch

    if not torch.cuda.is_available():
        raise ModelError("peft.method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); use lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("peft.method=qlora needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


TRAINABLE_ADAPTER = "default"  # PEFT's name for the adapter a stage trains (and saves)
LINEAGE_ADAPTER = "lineage_"  # + index: the adapters of the lineage kept unmerged beside it (models/policy.py)


def attach_adapter(model, *, method: str, r: int, alpha: int, dropout: float, target_modules):
    """Wrap ``model`` with a fresh LoRA/DoRA adapter; base weights are frozen by PEFT. ``model`` may already be a
    PEFT model holding a lineage's adapters (``attach_lineage``): the new adapter is then added beside them, all of
    them active, only the new one trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_dora=(method == "dora"),
        task_type="CAUSAL_LM",
    )
    try:
        if not is_peft(model):
            return get_peft_model(model, config)
        lineage = list(model.peft_config)
        model.add_adapter(TRAINABLE_ADAPTER, config)
    except ValueError as e:
        raise ModelError(f"peft.target_modules={target_modules!r}: {str(e).splitlines()[0]}") from None
    model.base_model.set_adapter(lineage + [TRAINABLE_ADAPTER])  # every adapter active (this marks all trainable)
    for name, param in model.named_parameters():
        if any(f".{a}." in name for a in lineage):
            param.requires_grad_(False)
    return model


def attach_lineage(model, adapters: list[str], *, read_weights: bool = True):
    """``model`` as a PEFT model holding ``adapters`` (LoRA folders, in lineage order) unmerged, named
    ``lineage_0``, ``lineage_1``, ...: frozen, every one active (their updates add up as merging them would), their
    dropout off (a merged update has none) and their weights in float32 whatever the model's dtype. The reason is
    precision: merged into bfloat16 weights, a LoRA update mostly rounds away (models/policy.py::load_policy).
    ``read_weights=False``: the same modules without reading the adapter files, for a model on the meta device
    whose weights come from another process (``training/parallel.py::loads_on_meta``)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from torch import nn

    names = [f"{LINEAGE_ADAPTER}{i}" for i in range(len(adapters))]
    for a in adapters:
        if not (Path(a) / "adapter_config.json").exists():
            raise ModelError(f"{a}: no adapter_config.json (not a PEFT adapter folder)")
    if read_weights:
        peft = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0], is_trainable=False)
        for name, path in zip(names[1:], adapters[1:]):
            peft.load_adapter(path, adapter_name=name, is_trainable=False)
    else:
        peft = get_peft_model(model, LoraConfig.from_pretrained(adapters[0]), adapter_name=names[0])
        for name, path in zip(names[1:], adapters[1:]):
            peft.add_adapter(name, LoraConfig.from_pretrained(path))
    peft.base_model.set_adapter(names, inference_mode=True)
    for module in peft.modules():
        dropout = getattr(module, "lora_dropout", None)
        if isinstance(dropout, nn.ModuleDict):
            for name in names:
                if name in dropout:
                    dropout[name] = nn.Identity()
    return peft


def lineage_adapters(model) -> list[str]:
    """The names of the unmerged lineage adapters ``model`` holds beside the one it trains (none for most)."""
    return [a for a in getattr(model, "peft_config", {}) if a.startswith(LINEAGE_ADAPTER)] if is_peft(model) else []


@contextlib.contextmanager
def without_trained_adapter(model):
    """``model`` with only its lineage adapters active for the block: the model training started from (the
    reference of a preference loss), as ``disable_adapter`` is for a model without a lineage. Sets the active
    adapters of each LoRA layer directly, so no parameter's ``requires_grad`` changes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    lineage = lineage_adapters(model)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [m._active_adapter for m in layers]
    try:
        for m in layers:
            m._active_adapter = [a for a in m.active_adapters if a in lineage]
        yield model
    finally:
        for m, active in zip(layers, saved):
            m._active_adapter = active


def load_with_adapter(model, adapter_dir: str, trainable: bool):
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise ModelError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter folder)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
