"""The split path (trunk, then the output head on target positions in chunks) against the plain (B, T, V) path:
same log-probs and same gradients for plain HF models, PEFT LoRA, LoRA on lm_head, and tied embeddings."""

import pytest
import torch

from posttrain.ops.logprobs import head_token_logps, sequence_logps, split_head


def _llama(tie: bool, vocab: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def _batch():
    torch.manual_seed(5)
    input_ids = torch.randint(1, 96, (3, 10))
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    loss_mask = torch.zeros(3, 10, dtype=torch.long)
    loss_mask[0, 3:] = 1
    loss_mask[1, 2:9] = 1  # covers padding too: must not count
    loss_mask[2, 1:4] = 1
    return input_ids, attention_mask, loss_mask


def _both(model, chunk_size):
    ids, attn, mask = _batch()
    out = {}
    for split in (False, True):
        model.zero_grad()
        s, c, t = sequence_logps(model, ids, attn, mask, chunk_size=chunk_size, split=split)
        (s * torch.tensor([1.0, -0.5, 2.0])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[split] = (s.detach(), c, t.detach(), grads)
    return out


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk_size", [3, 256])
def test_split_head_equals_plain_path_values_and_gradients(one_torch_thread, tie, chunk_size):
    model = _llama(tie)
    assert split_head(model) is not None
    out = _both(model, chunk_size)
    (s0, c0, t0, g0), (s1, c1, t1, g1) = out[False], out[True]
    assert torch.allclose(s0, s1, atol=1e-5) and torch.equal(c0, c1) and torch.allclose(t0, t1, atol=1e-5)
    assert c1.tolist() == [7.0, 5.0, 3.0]
    assert g0.keys() == g1.keys() and ("lm_head.weight" in g1 or "model.embed_tokens.weight" in g1)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), name


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_split_head_with_peft_lora(one_torch_thread, targets):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_llama(tie=False), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                         init_lora_weights=False))
    lm, head = split_head(model)
    assert (type(head) is torch.nn.Linear) == ("lm_head" not in targets)
    out = _both(model, chunk_size=4)
    (s0, _, _, g0), (s1, _, _, g1) = out[False], out[True]
    assert torch.allclose(s0, s1, atol=1e-5)
    assert g1 and all("lora_" in n for n in g1)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), name
    with model.disable_adapter():  # the reference: adapter disabled also on the split path
        ids, attn, mask = _batch()
        with torch.no_grad():
            a = sequence_logps(model, ids, attn, mask, split=False)[0]
            b = sequence_logps(model, ids, attn, mask, split=True)[0]
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, s0, atol=1e-3)


def test_models_with_logit_softcapping_use_the_plain_path(one_torch_thread):
    model = _llama(tie=True)
    model.config.final_logit_softcapping = 30.0
    assert split_head(model) is None
    ids, attn, mask = _batch()
    with torch.no_grad():
        assert torch.isfinite(sequence_logps(model, ids, attn, mask)[0]).all()


def test_head_token_logps_gradcheck_float64():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=True).double()
    hidden = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda h, w, b: torch.nn.functional.linear(h, w, b).log_softmax(-1)
                                    .gather(-1, labels[:, None]).squeeze(-1), (hidden, head.weight, head.bias))
    assert torch.autograd.gradcheck(
        lambda h, w, b: head_token_logps(_Lin(w, b), h, labels, chunk_size=3), (hidden, head.weight, head.bias))


class _Lin(torch.nn.Linear):
    """An nn.Linear whose weight/bias are the given tensors (for gradcheck through the custom function)."""

    def __init__(self, w, b):
        torch.nn.Module.__init__(self)
        self.weight, self.bias = w, b
        self.in_features = w.shape[1]


def test_split_path_largest_allocation_is_lower(one_torch_thread):
    """The largest single allocation (profiler, CPU) of log-probs + backward for (4, 256) tokens with a 32k
    vocabulary: the plain path allocates the (B, T, V) logits and their gradient; the split path at most a
    (chunk, V) block. (Peak RSS of whole steps: bench/scaling.py.)"""
    from torch.profiler import ProfilerActivity, profile

    model = _llama(tie=True, vocab=32000)
    torch.manual_seed(1)
    ids = torch.randint(0, 32000, (4, 256))
    attn, mask = torch.ones_like(ids), torch.ones_like(ids)
    peaks = {}
    for split in (False, True):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            s, _, _ = sequence_logps(model, ids, attn, mask, split=split, chunk_size=128)
            s.sum().backward()
        model.zero_grad(set_to_none=True)
        events = [e for e in prof.events() if e.cpu_memory_usage > 0]
        peaks[split] = max(e.cpu_memory_usage for e in events)
    # the plain path's largest single allocation is the (4, 256, 32000) float32 logits = 131 MB
    assert peaks[False] >= 4 * 256 * 32000 * 4
    assert peaks[True] < peaks[False] / 4
