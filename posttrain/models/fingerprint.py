"""A content hash of a model's weights as loaded: the key of cached reference log-probs
(``training/refcache.py``) and of reused eval answers (``eval/answer_reuse.py``)."""

from __future__ import annotations

import hashlib


def fingerprint(named_tensors, *, precision: str, device_type: str) -> str:
    """Hash of the weights (names, dtypes, shapes, bytes) plus how they are run."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{precision}|{device_type}".encode())
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
