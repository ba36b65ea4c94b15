"""Resolve a model name to weights and a tokenizer.

Names: a builtin (``smollm2-135m-instruct``, ``tiny-random``), a local HF folder, or a hub id. Hub downloads need
network; offline, the error says so and names the alternatives instead of a raw traceback.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from posttrain.models.builtin import BUILTIN_NAMES, BuiltinModelMissing, builtin_dir

# torch and transformers are imported in the functions: `import posttrain.models` stays free of them.


class ModelError(RuntimeError):
    """A model could not be resolved or loaded; ``str()`` is one actionable line."""


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """Return a local folder (builtin or existing path) or the hub id unchanged."""
    if name in BUILTIN_NAMES:
        try:
            return str(builtin_dir(name, cache_dir))
        except BuiltinModelMissing as e:
            raise ModelError(str(e)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: folder has no config.json (not a Hugging Face model folder)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model '{name}': no such folder")
    return name


def _hub_error(name: str, err: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(
        err
    ).lower()
    why = "no network to reach the Hugging Face Hub" if offline else str(err).splitlines()[0]
    close = difflib.get_close_matches(name, BUILTIN_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ModelError(
        f"model '{name}': could not load it from the Hugging Face Hub ({why}); "
        f"{hint}use a local folder or a builtin model ({', '.join(BUILTIN_NAMES)})"
    )


def torch_dtype(dtype: str):
    import torch

    if dtype == "auto":
        # bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls on CPU are slow and lossy here).
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(name: str, cache_dir: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(name, e) from None
    if tok.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works; EOS is the common choice.
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ModelError(f"model '{name}': its tokenizer has no chat template; posttrain renders every row through it")
    return tok


def load_causal_lm(
    name: str,
    cache_dir: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization_config=None,
):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name, cache_dir)
    kwargs = dict(dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(name, e) from None
