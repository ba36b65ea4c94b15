"""Pick and load a generation backend by name: ``hf`` (always), ``vllm`` (when installed, GPU), or a remote
``openai:URL:MODEL`` endpoint (``openai_backend.py``; it takes prompt messages, so ``candidates.py`` drives it)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from posttrain.generation.openai_backend import SPEC_HELP, parse_openai_spec
from posttrain.generation.types import BackendError, Generator
from posttrain.generation.vllm_backend import VLLMGenerator, import_vllm
from posttrain.models.builtin import cache_root
from posttrain.models.policy import load_base, load_for_generation, model_tokenizer, resolve_lineage
from posttrain.models.resolve import resolve_model_path

# generation.hf, torch and posttrain.data (which imports torch) are imported in the functions that need them:
# `import posttrain.generation.backends` stays free of torch and transformers.
BACKENDS = ("hf", "vllm")  # the local backends; a remote one is a spec, openai:URL:MODEL
# Weights dtype of the hf backend. auto: bfloat16 on a GPU that supports it, else float32. bfloat16 on a CPU with
# AMX / AVX512-BF16 decodes about 1.6-1.8x faster than float32 (docs/PERFORMANCE.md) but is a different model:
# greedy answers and samples change.
GENERATION_DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_backend(backend: str) -> tuple[str, str] | None:
    """None for a local backend (``hf``, ``vllm``), ``(base_url, model)`` for ``openai:URL:MODEL``;
    ``BackendError`` (one line) for anything else."""
    if backend in BACKENDS:
        return None
    remote = parse_openai_spec(backend)
    if remote is None:
        raise BackendError(f"backend '{backend}': expected one of: {', '.join(BACKENDS)}, {SPEC_HELP}")
    return remote


def check_dtype(dtype: str, backend: str = "hf") -> str:
    """``dtype`` when the backend can take it; ``BackendError`` (one line) otherwise. Only the hf backend loads
    weights in a chosen dtype (vLLM picks its own, a remote model is served as it is)."""
    if dtype not in GENERATION_DTYPES:
        raise BackendError(f"dtype '{dtype}': expected one of: {', '.join(GENERATION_DTYPES)}")
    if dtype != "auto" and backend != "hf":
        raise BackendError(f"dtype '{dtype}': only the hf backend loads weights in a chosen dtype (backend "
                           f"'{backend}'); leave dtype at auto")
    return dtype


def model_label(model_name: str, adapter: str | None) -> str:
    """How candidate rows and the server name the model: ``name``, or ``name + adapter``."""
    return model_name if not adapter else f"{model_name} + {adapter}"


def load_generator(model_name: str, *, adapter: str | None = None, backend: str = "hf", batch_size: int = 32,
                   seed: int = 0, cache_dir: str | None = None, dtype: str = "auto") -> tuple[Generator, object]:
    """(generator, tokenizer) for any model name posttrain accepts, with its adapter lineage merged. ``dtype``:
    the hf backend's weights dtype (``GENERATION_DTYPES``)."""
    if backend not in BACKENDS:
        raise BackendError(f"backend: unknown '{backend}' (expected one of: {', '.join(BACKENDS)})")
    check_dtype(dtype, backend)
    if backend == "vllm":
        import_vllm()  # fail before loading anything
        tokenizer = model_tokenizer(model_name, cache_dir)
        path = _vllm_path(model_name, adapter, cache_dir)
        return VLLMGenerator.from_path(path, tokenizer, batch_size=batch_size, seed=seed), tokenizer
    from posttrain.generation.hf import HFGenerator

    tokenizer = model_tokenizer(model_name, cache_dir)
    model = load_for_generation(model_name, adapter, cache_dir=cache_dir, dtype=dtype)
    import torch

    if torch.cuda.is_available():  # from_pretrained loads to CPU; generation belongs on the GPU when there is one
        model.to("cuda")
    return HFGenerator(model, tokenizer, batch_size=batch_size), tokenizer


def _vllm_path(model_name: str, adapter: str | None, cache_dir: str | None) -> str:
    """A plain HF folder vLLM can load: the model itself, or its adapters merged once into a cache folder."""
    from posttrain.data.runfolder import content_hash

    base, adapters = resolve_lineage(model_name, adapter)
    if not adapters:
        return resolve_model_path(base, cache_dir)
    key = hashlib.sha256("|".join([base] + [str(content_hash(a)) for a in adapters]).encode()).hexdigest()[:16]
    target = (Path(cache_dir) if cache_dir else cache_root()) / "merged" / key
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=target.parent))
        try:
            model, _, _ = load_base(model_name, adapter, cache_dir=cache_dir, dtype="auto")
            model.save_pretrained(str(tmp))
            model_tokenizer(model_name, cache_dir).save_pretrained(str(tmp))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
