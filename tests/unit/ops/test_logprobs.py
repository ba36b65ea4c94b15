import pytest
import torch

from posttrain.ops.logprobs import gather_token_logps, sequence_logps


def reference_token_logps(logits, labels):
    """The plain computation: full log_softmax, gather, zero the ignored positions."""
    ignore = labels == -100
    logps = torch.log_softmax(logits.float(), -1).gather(-1, labels.masked_fill(ignore, 0).unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(ignore, 0.0)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 21, 1024])
def test_gather_matches_log_softmax_values_and_gradients(chunk_size):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50)).requires_grad_()  # N = 21 rows
    labels = torch.randint(0, 50, (3, 7))
    labels[0, 2] = labels[2, 6] = -100
    weights = torch.randn(3, 7)  # a non-uniform upstream gradient

    ours = gather_token_logps(logits, labels, chunk_size=chunk_size)
    (ours * weights).sum().backward()
    grad_ours, logits.grad = logits.grad, None
    expected = reference_token_logps(logits, labels)
    (expected * weights).sum().backward()

    assert ours.shape == (3, 7) and ours.dtype == torch.float32
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(grad_ours, logits.grad, atol=1e-5)
    assert ours[0, 2].item() == 0.0 and ours[2, 6].item() == 0.0
    assert (grad_ours[0, 2] == 0).all() and (grad_ours[2, 6] == 0).all()


def test_gather_all_ignored_and_empty():
    logits = torch.randn(4, 10)
    assert gather_token_logps(logits, torch.full((4,), -100), chunk_size=3).tolist() == [0.0] * 4
    assert gather_token_logps(torch.randn(0, 10), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_gather_upcasts_half_precision():
    torch.manual_seed(1)
    logits = (4 * torch.randn(6, 300)).to(torch.bfloat16)
    labels = torch.randint(0, 300, (6,))
    ours = gather_token_logps(logits, labels, chunk_size=4)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, reference_token_logps(logits, labels), atol=1e-5)
    logits.requires_grad_()
    gather_token_logps(logits, labels, chunk_size=4).sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_gather_gradcheck_float64():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 5, -100, 2, 3])
    assert torch.autograd.gradcheck(lambda x: gather_token_logps(x, labels, chunk_size=2), (logits,))


def test_gather_rejects_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        gather_token_logps(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="disagree"):
        gather_token_logps(torch.randn(2, 3), torch.zeros(3, dtype=torch.long))


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64)
    return LlamaForCausalLM(config).eval()


def test_sequence_logps_matches_plain_computation(tiny_llama):
    torch.manual_seed(2)
    input_ids = torch.randint(0, 128, (2, 9))
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 0, 1]])

    logps_sum, counts, token_logps = sequence_logps(tiny_llama, input_ids, attention_mask, loss_mask)

    logits = tiny_llama(input_ids=input_ids, attention_mask=attention_mask).logits
    expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1) * loss_mask[:, 1:]
    assert token_logps.shape == (2, 8)
    assert torch.allclose(token_logps, expected, atol=1e-5)
    assert torch.allclose(logps_sum, expected.sum(-1), atol=1e-5)
    assert counts.tolist() == [6.0, 3.0]
    assert (token_logps[loss_mask[:, 1:] == 0] == 0).all()


def test_sequence_logps_unchanged_by_right_padding(tiny_llama):
    torch.manual_seed(3)
    short = torch.randint(1, 128, (5,))
    long = torch.randint(1, 128, (11,))
    short_mask = torch.tensor([0, 0, 1, 1, 1])

    alone = sequence_logps(tiny_llama, short[None], torch.ones(1, 5, dtype=torch.long), short_mask[None])

    input_ids = torch.zeros(2, 11, dtype=torch.long)  # pad id 0, right padding
    input_ids[0, :5], input_ids[1] = short, long
    attention_mask = torch.zeros(2, 11, dtype=torch.long)
    attention_mask[0, :5], attention_mask[1] = 1, 1
    loss_mask = torch.zeros(2, 11, dtype=torch.long)
    loss_mask[0, :5], loss_mask[1, 4:] = short_mask, 1
    # a loss mask that wrongly covers padding must not count it either
    loss_mask_over_padding = loss_mask.clone()
    loss_mask_over_padding[0, 5:] = 1

    for mask in (loss_mask, loss_mask_over_padding):
        batched = sequence_logps(tiny_llama, input_ids, attention_mask, mask)
        assert torch.allclose(batched[0][0], alone[0][0], atol=1e-5)
        assert batched[1][0].item() == alone[1][0].item() == 3.0
        assert torch.allclose(batched[2][0, :4], alone[2][0], atol=1e-5)
        assert (batched[2][0, 4:] == 0).all()


def test_sequence_logps_gradients_reach_the_model(tiny_llama):
    input_ids = torch.randint(0, 128, (2, 6))
    logps_sum, _, _ = sequence_logps(tiny_llama, input_ids, torch.ones_like(input_ids), torch.ones_like(input_ids))
    tiny_llama.zero_grad()
    logps_sum.sum().backward()
    grads = [p.grad for p in tiny_llama.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tiny_llama.lm_head.weight.grad.abs().sum() > 0
    tiny_llama.zero_grad()
