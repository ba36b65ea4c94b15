"""The reference model of preference losses: the frozen starting checkpoint.

With a LoRA/DoRA policy the reference is the same network with its adapter disabled (no second copy in memory);
with full fine-tuning it is a frozen copy; reference-free losses (SimPO, ORPO) get none at all. Cached reference
log-probs (``training/refcache.py``) replace the reference pass altogether once computed.

``reference_passes()`` counts how often a reference model was entered (one per micro-batch that needed its
log-probs), so tests can show that a cache hit costs no reference forward.
"""

from __future__ import annotations

import contextlib
import copy

from posttrain.models.adapters import is_peft


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
    return [(k, v) for k, v in policy.state_dict().items() if "lora_" not in k and "modules_to_save" not in k]


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


@contextlib.contextmanager
def reference_model(policy, frozen):
    """Yields the module to run for reference log-probs (call it under ``torch.no_grad()``)."""
    _PASSES[0] += 1
    if frozen is None and not is_peft(policy):
        raise ReferenceError_("no reference model: neither a frozen copy nor an adapter to disable")
    if frozen is not None:
        yield frozen
        return
    with policy.disable_adapter():
        yield policy
