"""The reference model of preference losses: the frozen starting checkpoint.

With a LoRA/DoRA policy the reference is the same network with its adapter disabled (no second copy in memory;
where the policy keeps its lineage's adapters unmerged beside the trained one, in bfloat16, only the trained one);
with full fine-tuning it is a frozen copy; reference-free losses (SimPO, ORPO) get none at all. A *pinned*
reference (``loss.reference_model``) is a frozen copy of another model, loaded from its own name: iterated DPO
keeps the SFT model as the reference of every round while each round starts from the previous round's model.
Cached reference log-probs (``training/refcache.py``) replace the reference pass altogether once computed.

``reference_passes()`` counts how often a reference model was entered (one per micro-batch that needed its
log-probs), so tests can show that a cache hit costs no reference forward.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from posttrain.models.adapters import TRAINABLE_ADAPTER, is_peft, lineage_adapters, without_trained_adapter
from posttrain.models.policy import load_base, model_tokenizer


class ReferenceError_(ValueError):
    pass


_PASSES = [0]


def reference_passes() -> int:
    """Times ``reference_model`` was entered in this process (one per reference pass over a micro-batch)."""
    return _PASSES[0]


def reference_weights(policy, frozen):
    """(name, tensor) of the reference's weights: the frozen copy's, or the policy's minus its adapter."""
    if frozen is not None:
        return list(frozen.state_dict().items())
    trained = f".{TRAINABLE_ADAPTER}."  # a lineage kept unmerged (lineage_* adapters) is part of the reference
    return [(k, v) for k, v in policy.state_dict().items()
            if not ("lora_" in k and trained in k) and "modules_to_save" not in k]


def build_reference(policy, mode: str, needs_reference: bool):
    """Returns (frozen copy or None, kind) where kind is 'none', 'adapter-disabled' or 'copy'."""
    if not needs_reference:
        return None, "none"
    if mode == "auto":
        mode = "adapter-disabled" if is_peft(policy) else "copy"
    if mode == "adapter-disabled":
        if not is_peft(policy):
            raise ReferenceError_("loss.reference=adapter-disabled needs peft.method lora/dora/qlora")
        return None, mode
    frozen = copy.deepcopy(policy)
    frozen.requires_grad_(False)
    frozen.eval()
    return frozen, "copy"


def same_model(name: str, start: str, start_adapter: str | None) -> bool:
    """Whether ``name`` names the model training starts from (``model.name`` without ``model.adapter``): then
    the ordinary reference (adapter disabled, or a copy of the policy before training) already is that model."""
    if start_adapter:
        return False
    if name == start:
        return True
    a, b = Path(name).expanduser(), Path(start).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def load_reference_model(name: str, tokenizer, *, cache_dir=None, dtype="auto", trust_remote_code=False):
    """The frozen pinned reference: ``name`` loaded with its adapter lineage merged, no gradients, eval mode.
    The policy's sequences are scored by it token id for token id, so its tokenizer must have the policy
    ``tokenizer``'s vocabulary; ``ReferenceError_`` (one line naming both) when it does not."""
    ref_vocab = model_tokenizer(name, cache_dir, trust_remote_code).get_vocab()
    vocab = tokenizer.get_vocab()
    if ref_vocab != vocab:
        differ = sorted(set(ref_vocab.items()) ^ set(vocab.items()), key=lambda kv: kv[1])
        raise ReferenceError_(
            f"loss.reference_model '{name}': its tokenizer differs from the policy's ({len(ref_vocab)} vs "
            f"{len(vocab)} tokens; first difference {differ[0][0]!r} at id {differ[0][1]}); the reference must share "
            "the policy's vocabulary")
    frozen, _, _ = load_base(name, None, cache_dir=cache_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    frozen.requires_grad_(False)
    frozen.eval()
    return frozen


@contextlib.contextmanager
def reference_model(policy, frozen):
    """Yields the module to run for reference log-probs (call it under ``torch.no_grad()``)."""
    _PASSES[0] += 1
    if frozen is None and not is_peft(policy):
        raise ReferenceError_("no reference model: neither a frozen copy nor an adapter to disable")
    if frozen is not None:
        yield frozen
        if hasattr(frozen, "reshard"):  # sharded (FSDP2): the root's weights stay gathered after a forward (the
            frozen.reshard()  # output head is applied outside it); a frozen module has no backward to free them
        return
    if lineage_adapters(policy):  # the lineage kept unmerged is the starting model: only the trained adapter goes
        with without_trained_adapter(policy):
            yield policy
        return
    with policy.disable_adapter():
        yield policy
