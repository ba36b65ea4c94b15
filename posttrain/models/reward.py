"""A reward model to train: a one-output sequence classifier on any causal LM posttrain loads (its adapter lineage
merged), or an HF classifier, with a fresh LoRA/DoRA adapter or fully trainable (``trainers/reward_model.py``)."""

from __future__ import annotations

import torch

from posttrain.config import ConfigError
from posttrain.models.policy import build_on_meta, enable_checkpointing, load_base, resolve_lineage
from posttrain.models.resolve import ModelError, resolve_model_path, torch_dtype


def load_reward_model(model_cfg, peft_cfg, *, seed: int, pad_token_id: int, meta: bool = False):
    """A one-output sequence classifier on ``model.name`` (adapter lineage merged), with a fresh LoRA/DoRA
    adapter (the score head fully trained) or fully trainable. Returns (model, base name). ``meta``: the same
    classifier built on the meta device, its weights to come from the first process
    (``training/parallel.py::loads_on_meta``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification  # keeps the module free of transformers

    base_name, adapters = resolve_lineage(model_cfg.name, model_cfg.adapter)
    path = resolve_model_path(base_name, model_cfg.cache_dir)
    dtype = torch_dtype(model_cfg.dtype)
    torch.manual_seed(seed)  # the score head is freshly initialised
    try:
        if meta:
            model = build_on_meta(base_name, cache_dir=model_cfg.cache_dir, dtype=model_cfg.dtype,
                                  trust_remote_code=model_cfg.trust_remote_code,
                                  auto_class=AutoModelForSequenceClassification, num_labels=1)
        elif adapters:  # a trained folder: merge its lineage into the causal LM, then move the trunk over
            causal, _, _ = load_base(model_cfg.name, model_cfg.adapter, cache_dir=model_cfg.cache_dir,
                                     dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code)
            config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=model_cfg.trust_remote_code)
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
            missing, _ = model.load_state_dict(causal.state_dict(), strict=False)
            head = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
            if set(missing) - head:
                raise ModelError(f"model '{model_cfg.name}': its trunk does not fit a sequence classifier "
                                 f"(missing {sorted(set(missing) - head)[:3]})")
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, ignore_mismatched_sizes=True, dtype=dtype,
                trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{model_cfg.name}': cannot load it as a sequence classifier "
                         f"({str(e).splitlines()[0]})") from None
    model.config.pad_token_id = pad_token_id  # the classifier pools the last non-pad token
    if peft_cfg.method != "none":
        from peft import LoraConfig, get_peft_model  # keeps the module free of peft

        if peft_cfg.method == "qlora":
            raise ConfigError("peft.method=qlora is not supported for reward models; use lora or none")
        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                                                 target_modules=peft_cfg.target_modules,
                                                 use_dora=peft_cfg.method == "dora", task_type="SEQ_CLS"))
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model, every=model_cfg.checkpoint_every)
    return model, base_name
