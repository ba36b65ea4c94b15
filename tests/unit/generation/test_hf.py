"""The HF backend: N outputs per prompt, finish reasons and token counts, EOS and stop strings, greedy and
seeded sampling independent of batch size, per-row sampling settings in one batch."""

from __future__ import annotations

import pytest
import torch

from posttrain.generation.hf import HFGenerator, RowSampling
from posttrain.generation.types import RowSpec, row_seed

MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models.policy import load_trained

    return load_trained("tiny-random")


def _ids(outs):
    return [[o.token_ids for o in cands] for cands in outs]


def test_tiny_random_gives_n_outputs_with_counts(tiny, prompt_ids):
    model, tok = tiny
    outs = HFGenerator(model, tok, batch_size=4).generate(prompt_ids[:3], n=3, temperature=1.0, top_p=0.95,
                                                          max_new_tokens=MAX_NEW, seed=1)
    assert len(outs) == 3 and all(len(c) == 3 for c in outs)
    for cands in outs:
        for o in cands:
            assert o.completion_tokens == len(o.token_ids)
            if o.finish_reason == "length":
                assert len(o.token_ids) == MAX_NEW and tok.eos_token_id not in o.token_ids
            else:
                assert o.finish_reason == "stop" and o.token_ids[-1] == tok.eos_token_id
            assert o.text == tok.decode(o.token_ids, skip_special_tokens=True)
    # Different seeds per candidate: a prompt's candidates are not all the same sample.
    assert any(len({tuple(o.token_ids) for o in cands}) > 1 for cands in outs)


def test_greedy_is_deterministic_and_independent_of_batch_size(varied_model, tokenizer, prompt_ids):
    runs = [_ids(HFGenerator(varied_model, tokenizer, batch_size=bs).generate(
        prompt_ids, n=n, temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=seed))
        for bs, n, seed in ((1, 1, 0), (3, 1, 0), (16, 2, 7))]
    assert runs[0] == runs[1] == [c[:1] for c in runs[2]]
    assert all(c[0] == c[1] for c in runs[2])  # greedy: every candidate is the same
    assert len({tuple(c[0]) for c in runs[0]}) == len(prompt_ids)  # and the model really varies by prompt


def test_seeded_sampling_is_independent_of_batch_and_order(varied_model, tokenizer, prompt_ids):
    prompts = prompt_ids[:3]
    kw = dict(n=2, temperature=[0.7, 1.3], top_p=1.0, max_new_tokens=MAX_NEW, seed=5)
    keys = [f"p{i}" for i in range(len(prompts))]
    a = _ids(HFGenerator(varied_model, tokenizer, batch_size=1).generate(prompts, keys=keys, **kw))
    b = _ids(HFGenerator(varied_model, tokenizer, batch_size=16).generate(prompts, keys=keys, **kw))
    rev = _ids(HFGenerator(varied_model, tokenizer, batch_size=4).generate(prompts[::-1], keys=keys[::-1], **kw))
    assert a == b == rev[::-1]
    other = _ids(HFGenerator(varied_model, tokenizer, batch_size=16).generate(prompts, keys=keys,
                                                                              **{**kw, "seed": 6}))
    assert other != a


@pytest.mark.parametrize("top_k", [1024, 2])  # 2: the nucleus spills out of the top k and is sorted in full
def test_nucleus_is_the_smallest_set_holding_top_p(monkeypatch, top_k):
    monkeypatch.setattr(RowSampling, "TOP_K", top_k)
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15], [0.9, 0.02, 0.03, 0.02, 0.03]])
    rows = [RowSpec([1], 1.0, 0.75, 4, 0), RowSpec([1], 1.0, 0.5, 4, 1)]
    keep = RowSampling(rows, torch.device("cpu"))._nucleus(probs.log())
    # row 0: 0.4 + 0.3 = 0.7 < 0.75, so 0.15 is needed too; row 1: the top token alone holds 0.9
    assert keep.tolist() == [[False, True, False, True, True], [True, False, False, False, False]]


def test_sampling_frequencies_follow_the_tempered_nucleus():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).log_softmax(-1)
    rows = [RowSpec([1], 2.0, 0.9, 4, seed) for seed in range(4000)]
    sampler = RowSampling(rows, torch.device("cpu"))
    picks = sampler(None, logits.expand(len(rows), -1).clone()).argmax(-1)
    tempered = (logits / 2.0).softmax(-1)[0]  # [0.455, 0.276, 0.167, 0.102]: top 3 hold 0.898 < 0.9, keep all
    freq = torch.bincount(picks, minlength=4).float() / len(rows)
    assert torch.allclose(freq, tempered, atol=0.03)


def test_tiny_top_p_is_greedy_and_rows_keep_their_own_settings(varied_model, tokenizer, prompt_ids):
    gen = HFGenerator(varied_model, tokenizer, batch_size=8)
    greedy = gen.generate(prompt_ids[:2], n=1, temperature=0, top_p=1, max_new_tokens=MAX_NEW, seed=0)
    # The nucleus of top_p ~ 0 is the single most likely token, whatever the temperature and noise.
    nucleus = gen.generate(prompt_ids[:2], n=1, temperature=1.5, top_p=1e-9, max_new_tokens=MAX_NEW, seed=3)
    assert _ids(nucleus) == _ids(greedy)
    # A greedy row batched with hot rows and a shorter row is unaffected by them.
    rows = [RowSpec(prompt_ids[0], 2.0, 1.0, MAX_NEW, row_seed(1, "a", 0)),
            RowSpec(prompt_ids[0], 0.0, 1.0, MAX_NEW, 0),
            RowSpec(prompt_ids[1], 1.0, 1.0, 3, row_seed(1, "b", 0))]
    outs = gen.generate_rows(rows)
    assert outs[1].token_ids == greedy[0][0].token_ids
    assert len(outs[2].token_ids) == 3 and outs[2].finish_reason == "length"
    assert outs[0].token_ids != outs[1].token_ids


def test_eos_stops_a_row_and_stop_strings_cut_text(varied_model, tokenizer, prompt_ids):
    eos = tokenizer.eos_token_id
    calls = {"n": 0}

    def force_eos_in_row0(module, args, output):  # output: (B, L, V) logits; call 3 picks new token 3
        calls["n"] += 1
        if calls["n"] == 3:
            output = output.clone()
            output[0, -1, eos] = 1e4
        return output

    handle = varied_model.lm_head.register_forward_hook(force_eos_in_row0)
    try:
        outs = HFGenerator(varied_model, tokenizer, batch_size=2).generate(
            prompt_ids[:1], n=2, temperature=0, top_p=1, max_new_tokens=MAX_NEW, seed=0)[0]
    finally:
        handle.remove()
    assert outs[0].finish_reason == "stop" and outs[0].completion_tokens == 3 and outs[0].token_ids[-1] == eos
    assert outs[1].finish_reason == "length" and outs[1].completion_tokens == MAX_NEW
    assert outs[0].token_ids[:2] == outs[1].token_ids[:2]

    gen = HFGenerator(varied_model, tokenizer, batch_size=2)
    full = gen.generate_rows([RowSpec(prompt_ids[1], 0.0, 1.0, MAX_NEW, 0)])[0]
    stop = full.text[len(full.text) // 2:][:3]
    cut = gen.generate_rows([RowSpec(prompt_ids[1], 0.0, 1.0, MAX_NEW, 0, stop=[stop])])[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens < MAX_NEW
    assert cut.token_ids == full.token_ids[: cut.completion_tokens]


def test_streaming_callback_gets_every_token_of_every_row(varied_model, tokenizer, prompt_ids):
    got: dict[int, list[int]] = {}
    rows = [RowSpec(p, 1.0, 1.0, MAX_NEW - i, row_seed(0, "s", i)) for i, p in enumerate(prompt_ids[:3])]
    outs = HFGenerator(varied_model, tokenizer, batch_size=2).generate_rows(
        rows, on_token=lambda i, t: got.setdefault(i, []).append(t))
    assert [got[i] for i in range(3)] == [o.token_ids for o in outs]


def test_bad_settings_are_refused(tiny, prompt_ids):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(prompt_ids[:1], n=1, temperature=1.0, top_p=0.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(prompt_ids[:1], n=1, temperature=-1.0, top_p=1.0, max_new_tokens=4, seed=0)
    assert torch.is_grad_enabled()


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from posttrain.generation.hf import shared_prefix_len

    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert shared_prefix_len([[5, 6], [7, 6]]) == 0
    assert shared_prefix_len([[1], [1, 2]]) == 0


def test_decode_loop_passes_the_cache_by_the_models_own_keyword(tiny, prompt_ids):
    """transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns); older 5.x only
    has `past_key_values`. The loop uses whichever the model's forward declares, under a PEFT wrapper too."""
    import inspect
    import warnings

    from peft import LoraConfig, get_peft_model

    from posttrain.generation.hf import cache_keyword

    model, tok = tiny
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert cache_keyword(model) == expected
    wrapped = get_peft_model(_fresh_tiny(), LoraConfig(r=4, target_modules=["q_proj"]))
    assert cache_keyword(wrapped) == expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HFGenerator(model, tok, batch_size=4).generate(prompt_ids[:2], n=2, temperature=1.0, top_p=1.0,
                                                       max_new_tokens=4, seed=0)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def _fresh_tiny():
    from posttrain.models.policy import load_trained

    return load_trained("tiny-random")[0]
