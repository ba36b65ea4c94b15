"""The reference model of preference losses: the frozen starting checkpoint.

With a LoRA/DoRA policy the reference is the same network with its adapter disabled (no second copy in memory);
with full fine-tuning it is a frozen copy; reference-free losses (SimPO, ORPO) get none at all.
"""

from __future__ import annotations

import contextlib
import copy

from posttrain.models.adapters import is_peft


class ReferenceError_(ValueError):
    pass


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
    if frozen is not None:
        yield frozen
        return
    with policy.disable_adapter():
        yield policy
