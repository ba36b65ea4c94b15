"""The preallocated KV cache: every operation the decode loop (and transformers) performs leaves it holding exactly
what transformers' DynamicLayer holds, steps within the reserved length write in place, and the decode loop gives
the same tokens with it as with DynamicCache."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

import posttrain.generation.hf as hf
from posttrain.generation.hf import HFGenerator
from posttrain.generation.kv_cache import PreallocatedLayer, preallocated_cache


def _kv(rows, positions, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, positions, 3, generator=g), torch.randn(rows, 2, positions, 3, generator=g)


def test_every_operation_matches_dynamic_layer():
    ref, pre = DynamicLayer(), PreallocatedLayer(capacity=12)
    steps = [
        ("update", _kv(1, 5, 0)),                      # a shared prefix at batch 1
        ("reorder", torch.tensor([0, 0, 0])),          # expanded to three prompts
        ("update", _kv(3, 4, 1)),                      # the rest of each prompt
        ("update", _kv(3, 1, 2)),                      # a decoding step
        ("reorder", torch.tensor([2, 0])),             # row 1 finished: dropped, the others reordered
        ("update", _kv(2, 1, 3)),
        ("repeat", 2),                                 # each row twice
        ("update", _kv(4, 1, 4)),
        ("crop", -2),
        ("update", _kv(4, 6, 5)),                      # past the reserved 12 positions: the buffer grows
        ("select", torch.tensor([0, 3])),              # transformers' batch_select_indices: keep rows 0 and 3
        ("reorder", torch.tensor([1])),
        ("update", _kv(1, 1, 6)),
    ]
    for op, arg in steps:
        for layer in (ref, pre):
            if op == "update":
                out = layer.update(*arg)
            elif op == "reorder":
                layer.reorder_cache(arg)
            elif op == "select":
                layer.batch_select_indices(arg)
            elif op == "repeat":
                layer.batch_repeat_interleave(arg)
            else:
                layer.crop(arg)
        if op == "update":
            assert torch.equal(out[0], pre.keys) and torch.equal(out[1], pre.values)
        assert torch.equal(ref.keys, pre.keys) and torch.equal(ref.values, pre.values), op
        assert pre.get_seq_length() == ref.get_seq_length()
    assert pre.get_seq_length() == 17


def test_steps_within_the_reserved_length_write_in_place():
    layer = PreallocatedLayer(capacity=10)
    layer.update(*_kv(4, 3, 0))
    buffer = layer.keys.data_ptr()
    for step in range(7):
        layer.update(*_kv(4, 1, step + 1))
        assert layer.keys.data_ptr() == buffer
    layer.reorder_cache(torch.tensor([3, 1]))  # dropping rows compacts into the same buffer
    assert layer.keys.data_ptr() == buffer and layer.keys.shape == (2, 2, 10, 3)
    layer.update(*_kv(2, 1, 9))  # position 11 of 10 reserved: a new, larger buffer
    assert layer.keys.data_ptr() != buffer and layer.get_seq_length() == 11


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        PreallocatedLayer(capacity=0)
    layer = PreallocatedLayer(capacity=4)
    layer.update(*_kv(2, 1, 0))
    with pytest.raises(ValueError, match="holds 2 rows, the update has 3"):
        layer.update(*_kv(3, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        layer.crop(1)


def test_only_full_attention_layers_are_replaced():
    from transformers import LlamaConfig, MistralConfig

    llama = preallocated_cache(LlamaConfig(num_hidden_layers=3, hidden_size=8, intermediate_size=16,
                                           num_attention_heads=2, num_key_value_heads=1, vocab_size=16), 8)
    assert [type(layer) for layer in llama.layers] == [PreallocatedLayer] * 3
    mistral = preallocated_cache(MistralConfig(num_hidden_layers=2, hidden_size=8, intermediate_size=16,
                                               num_attention_heads=2, num_key_value_heads=1, vocab_size=16,
                                               sliding_window=4), 8)
    assert [type(layer) for layer in mistral.layers] == [DynamicSlidingWindowLayer] * 2


@pytest.mark.parametrize("batch_size,n,temperature", [(16, 1, 0.0), (3, 2, 0.0), (16, 3, 0.9)])
def test_decode_loop_gives_the_same_tokens_as_with_dynamic_cache(monkeypatch, varied_model, tokenizer, prompt_ids,
                                                                batch_size, n, temperature):
    """Greedy and sampled, rows finishing at different steps (EOS, per-row limits), repeated prompts expanded."""
    def run():
        return [[o.token_ids for o in cands] for cands in HFGenerator(varied_model, tokenizer, batch_size=batch_size)
                .generate(prompt_ids, n=n, temperature=temperature, top_p=1.0, max_new_tokens=12, seed=3)]

    used = []
    real = hf.preallocated_cache
    monkeypatch.setattr(hf, "preallocated_cache", lambda config, capacity: used.append(capacity) or real(config,
                                                                                                      capacity))
    pre = run()
    assert used[0] == max(len(p) for p in prompt_ids) + 12  # the first batch holds the longest prompts
    monkeypatch.setattr(hf, "preallocated_cache", lambda config, capacity: DynamicCache(config=config))
    assert run() == pre
    assert len({tuple(c[0]) for c in pre}) > 1
