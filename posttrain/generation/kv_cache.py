"""A KV cache for our decode loop that writes each step in place.

transformers' ``DynamicLayer`` grows by ``torch.cat``: every decoding step copies the layer's whole cache to append
one position, so the copying grows with batch and context (at batch 64 and a few hundred tokens, about an eighth
of a decoding step here). ``PreallocatedLayer`` keeps the keys and values in one buffer per layer, sized for the
batch's longest prompt plus its token budget, and hands attention views of the filled part (``keys`` /
``values``, as ``DynamicLayer`` does). A step writes its new position into the buffer; dropping finished rows
(``reorder_cache``) copies only the filled positions of the rows kept, into the same buffer. The values attention
sees are the same, in the same order, so the answers are the same tokens as with ``DynamicCache``
(tests/unit/generation/test_kv_cache.py). Measured on CPU (docs/PERFORMANCE.md): 1.15x on the quickstart eval's
out-of-distribution workload (bench/generate.py, batch 64, 256 new tokens), 1.08x over the whole quickstart eval
at batch 64.

Only plain full-attention layers are replaced; sliding-window and other layer kinds keep transformers' own class.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys`` / ``values`` (B, H, L, D) are views into a (rows, H, capacity, D) buffer.

    ``capacity``: positions to reserve at the first update (the prompt width plus the token budget); a longer
    sequence still works (the buffer doubles). Rows dropped by ``reorder_cache`` are compacted in place."""

    def __init__(self, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._rows = 0
        self._len = 0

    def _reserve(self, rows: int, positions: int, like: torch.Tensor) -> None:
        """New buffers of ``rows`` x ``positions``, the filled part of the old ones copied in."""
        _, heads, _, dim = like.shape
        k = like.new_empty(rows, heads, positions, dim)
        v = like.new_empty(rows, heads, positions, dim)
        if self._len:  # a filled part implies the old buffers
            k[: self._rows, :, : self._len] = self.keys
            v[: self._rows, :, : self._len] = self.values
        self._kbuf, self._vbuf = k, v

    def _views(self) -> None:
        self.keys = self._kbuf[: self._rows, :, : self._len]
        self.values = self._vbuf[: self._rows, :, : self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, new = key_states.shape[0], key_states.shape[-2]
        if self._kbuf is None:
            self._rows = rows
            self._reserve(rows, max(self.capacity, new), key_states)
        elif rows != self._rows:
            raise ValueError(f"the cache holds {self._rows} rows, the update has {rows}")
        elif self._len + new > self._kbuf.shape[-2]:
            self._reserve(self._kbuf.shape[0], 2 * (self._len + new), key_states)
        self._kbuf[:rows, :, self._len: self._len + new] = key_states
        self._vbuf[:rows, :, self._len: self._len + new] = value_states
        self._len += new
        self._views()
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep (or repeat) rows ``beam_idx`` of the batch, in that order."""
        if self.get_seq_length() == 0:
            return
        idx = beam_idx.to(self._kbuf.device)
        keys, values = self.keys.index_select(0, idx), self.values.index_select(0, idx)
        rows = int(idx.numel())
        if rows > self._kbuf.shape[0]:  # more rows than the buffer holds (a prompt expanded to its candidates)
            _, heads, positions, dim = self._kbuf.shape
            self._kbuf = keys.new_empty(rows, heads, positions, dim)
            self._vbuf = values.new_empty(rows, heads, positions, dim)
        self._rows = rows
        self._kbuf[:rows, :, : self._len] = keys
        self._vbuf[:rows, :, : self._len] = values
        self._views()

    batch_select_indices = reorder_cache  # transformers' name for keeping a subset of rows

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.reorder_cache(torch.arange(self._rows, device=self._kbuf.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized or self._kbuf is None:
            return
        self._len = max(0, self._len + tokens_to_remove)
        self._views()

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        self._rows = self._len = 0
        super().reset()


def preallocated_cache(config, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are ``PreallocatedLayer(capacity)``."""
    cache = DynamicCache(config=config)
    if cache.layers:
        cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
    elif cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = lambda: PreallocatedLayer(capacity)
    return cache
