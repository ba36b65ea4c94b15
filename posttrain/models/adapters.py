"""PEFT: LoRA, DoRA and QLoRA on any causal LM, loaded and saved in PEFT's own format (merging: models/policy.py)."""

from __future__ import annotations

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


def attach_adapter(model, *, method: str, r: int, alpha: int, dropout: float, target_modules):
    """Wrap ``model`` with a fresh LoRA/DoRA adapter; base weights are frozen by PEFT."""
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
        return get_peft_model(model, config)
    except ValueError as e:
        raise ModelError(f"peft.target_modules={target_modules!r}: {str(e).splitlines()[0]}") from None


def load_with_adapter(model, adapter_dir: str, trainable: bool):
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise ModelError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter folder)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
