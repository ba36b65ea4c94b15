"""Padding-free packing: exact tensors, and packed log-probs equal to padded ones (values and gradients)."""

import pytest
import torch

from posttrain.ops.logprobs import sequence_logps
from posttrain.ops.packing import block_diagonal_causal_mask, pack_sequences


def test_pack_sequences_exact_tensors():
    batch = pack_sequences([[5, 6, 7], [8], [9, 10]], [[0, 1, 1], [1], [1, 1]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch["seq_index"].tolist() == [[0, 0, 0, 1, 2, 2]]
    # a sequence's first token is never a target (the previous sequence would predict it)
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 1]]
    assert batch["num_seqs"] == 3 and batch["lengths"].tolist() == [3, 1, 2]
    with pytest.raises(ValueError):
        pack_sequences([], [])
    with pytest.raises(ValueError):
        pack_sequences([[1], []], [[0], []])


def test_block_diagonal_mask():
    mask = block_diagonal_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0].int()
    assert mask.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


def _model(attn_implementation):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, attn_implementation=attn_implementation)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("split", [True, False])
def test_packed_equals_padded_logps_and_gradients(one_torch_thread, attn, split):
    model = _model(attn)
    torch.manual_seed(3)
    lengths = [9, 3, 14, 1, 6]
    seqs = [torch.randint(1, 120, (n,)).tolist() for n in lengths]
    masks = [[0] * min(2, n - 1) + [1] * (n - min(2, n - 1)) for n in lengths]
    masks = [[0] + m[1:] for m in masks]  # first token is prompt, as rendered data always has
    # padded batch
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn_mask = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)], attn_mask[i, : len(s)], loss[i, : len(s)] = torch.tensor(s), 1, torch.tensor(m)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5])
    padded = sequence_logps(model, ids, attn_mask, loss, split=split)
    (padded[0] * weights).sum().backward()
    g_padded = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    packed_batch = pack_sequences(seqs, masks)
    packed = sequence_logps(model, packed_batch["input_ids"], None, packed_batch["loss_mask"],
                            packed_batch["position_ids"], seq_index=packed_batch["seq_index"],
                            num_seqs=packed_batch["num_seqs"], split=split)
    (packed[0] * weights).sum().backward()
    assert torch.allclose(packed[0], padded[0], atol=1e-5), (packed[0], padded[0])
    assert torch.equal(packed[1], padded[1])
    assert packed[1].tolist() == [7.0, 1.0, 12.0, 0.0, 4.0]
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, g_padded[n], atol=1e-5), n


def test_packing_without_restarting_positions_would_differ(one_torch_thread):
    """The test above can fail: attention leaking across sequences changes the numbers."""
    model = _model("sdpa")
    seqs = [[3, 4, 5, 6], [7, 8, 9]]
    masks = [[0, 1, 1, 1], [0, 1, 1]]
    batch = pack_sequences(seqs, masks)
    with torch.no_grad():
        right = sequence_logps(model, batch["input_ids"], None, batch["loss_mask"], batch["position_ids"],
                               seq_index=batch["seq_index"], num_seqs=2)[0]
        leaky = sequence_logps(model, batch["input_ids"], None, batch["loss_mask"], None,
                               seq_index=batch["seq_index"], num_seqs=2)[0]
        alone = sequence_logps(model, torch.tensor([seqs[1]]), None, torch.tensor([masks[1]]))[0]
    assert torch.allclose(right[1], alone[0], atol=1e-5)
    assert not torch.allclose(leaky[1], alone[0], atol=1e-3)


def test_prefix_tree_exact_tensors():
    from posttrain.ops.packing import prefix_tree

    # Two "pairs" sharing a 2-token system prefix; each pair's chosen/rejected share their prompt.
    seqs = [[1, 2, 5, 6, 7], [1, 2, 8, 9], [1, 2, 5, 6, 3], [1, 2, 8, 4, 4]]
    masks = [[0, 0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    t = prefix_tree(seqs, masks)
    assert t["input_ids"].tolist() == [[1, 2, 5, 6, 7, 8, 9, 3, 4, 4]]
    assert t["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 4, 3, 4]]
    # targets: (predicting node, label, sequence)
    assert list(zip(t["pred_index"].tolist(), t["labels"].tolist(), t["target_seq"].tolist())) == [
        (3, 7, 0), (5, 9, 1), (3, 3, 2), (5, 4, 3), (8, 4, 3)]
    mask = t["tree_mask"][0, 0]
    assert mask[7].nonzero().flatten().tolist() == [0, 1, 2, 3, 7]  # "3" sees its own path only, not "7"
    assert mask[9].nonzero().flatten().tolist() == [0, 1, 5, 8, 9]
    assert t["num_seqs"] == 4 and t["num_tokens"] == 19 and t["num_nodes"] == 10
    with pytest.raises(ValueError):
        prefix_tree([], [])


def test_prefix_tree_rows_split_at_the_budget_and_keep_units_together():
    from posttrain.ops.packing import prefix_tree

    seqs = [[1, 2, 5, 6, 7], [1, 2, 8, 9], [1, 2, 5, 6, 3], [1, 2, 8, 4, 4]]
    masks = [[0, 0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    # units (0, 2) and (1, 3): 6 nodes each; a budget of 8 puts them in two rows, the second padded to width 6
    t = prefix_tree(seqs, masks, units=[[0, 2], [1, 3]], max_row_tokens=8)
    assert t["input_ids"].tolist() == [[1, 2, 5, 6, 7, 3], [1, 2, 8, 9, 4, 4]]
    assert t["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 3, 4]]
    # flat index row * 6 + node: sequence 1's target 9 is predicted by node 2 ("8") of row 1
    assert list(zip(t["pred_index"].tolist(), t["labels"].tolist(), t["target_seq"].tolist())) == [
        (3, 7, 0), (3, 3, 2), (8, 9, 1), (8, 4, 3), (10, 4, 3)]
    assert t["tree_mask"].shape == (2, 1, 6, 6)
    assert t["tree_mask"][1, 0, 5].nonzero().flatten().tolist() == [0, 1, 2, 4, 5]
    assert t["num_nodes"] == 12 and t["num_tokens"] == 19
    # a unit larger than the budget gets a row of its own; padding nodes see only themselves
    t = prefix_tree([[1, 2, 3, 4, 5, 6], [7, 8]], [[0, 1, 1, 1, 1, 1], [0, 1]], max_row_tokens=4)
    assert t["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]]
    assert t["tree_mask"][1, 0, 3].nonzero().flatten().tolist() == [3]
    with pytest.raises(ValueError, match="exactly once"):
        prefix_tree(seqs, masks, units=[[0, 1], [1, 2, 3]])


def test_prefix_tree_rows_are_evened_out():
    """Units of 4, 4, 4, 4 and 2 nodes (nothing shared) at a budget of 12: filling each row up to the budget
    gives rows of 12 and 6 nodes, padded to 2 x 12; the same two rows evened out hold 8 and 10 (2 x 10)."""
    from posttrain.ops.packing import _fill_rows, prefix_tree

    seqs = [[10 * u + i for i in range(1, n + 1)] for u, n in enumerate((4, 4, 4, 4, 2))]
    masks = [[0] + [1] * (len(s) - 1) for s in seqs]
    assert _fill_rows(seqs, [[u] for u in range(5)], 12) == ([[0, 1, 2], [3, 4]], [12, 6])
    t = prefix_tree(seqs, masks, max_row_tokens=12)
    assert t["input_ids"].tolist() == [[1, 2, 3, 4, 11, 12, 13, 14, 0, 0],
                                       [21, 22, 23, 24, 31, 32, 33, 34, 41, 42]]
    assert t["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    assert t["num_nodes"] == 18
    # targets still point at the node that predicts them: sequence 4's "42" is predicted by row 1's node 8 ("41")
    assert list(zip(t["pred_index"].tolist(), t["labels"].tolist(), t["target_seq"].tolist()))[-1] == (18, 42, 4)
    assert t["last_index"].tolist() == [3, 7, 13, 17, 19]


def test_evened_rows_are_never_more_nor_wider_than_the_greedy_fill():
    """Random DPO-like micro-batches (a shared system prompt, pairs sharing their prompt) at several budgets."""
    import random

    from posttrain.ops.packing import _balanced_rows, _fill_rows, prefix_tree

    rng = random.Random(0)
    evened = 0
    for trial in range(60):
        system = [rng.randint(1, 50) for _ in range(rng.randint(0, 12))]
        seqs, units = [], []
        for p in range(rng.randint(2, 12)):
            prompt = system + [rng.randint(51, 500) for _ in range(rng.randint(1, 30))]
            units.append([len(seqs), len(seqs) + 1])
            seqs += [prompt + [rng.randint(501, 900) for _ in range(rng.randint(1, 40))] for _ in range(2)]
        budget = rng.choice([60, 100, 150, 250])
        greedy, sizes = _fill_rows(seqs, units, budget)
        rows = _balanced_rows(seqs, units, budget)
        assert [u for r in rows for u in r] == list(range(len(units)))  # every unit once, in order
        assert len(rows) == len(greedy)
        t = prefix_tree(seqs, [[1] * len(s) for s in seqs], units=units, max_row_tokens=budget)
        assert t["input_ids"].shape == (len(greedy), t["input_ids"].shape[1]) and t["input_ids"].shape[1] <= max(sizes)
        evened += t["input_ids"].shape[1] < max(sizes)
    assert evened >= 10  # and it often narrows them (13 of the 60 batches here, 55 of which take several rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("row_tokens", [None, 24])
def test_prefix_tree_equals_padded_logps_and_gradients(one_torch_thread, attn, split, row_tokens):
    """Sequences sharing prefixes of several lengths (a system prompt for all, a prompt per pair, one pair whose
    completions share their first tokens): one tree row, or pairs split over padded rows at a node budget, gives
    the padded batch's sums, counts and gradients."""
    from posttrain.ops.logprobs import tree_sequence_logps
    from posttrain.ops.packing import prefix_tree

    model = _model(attn)
    torch.manual_seed(4)
    system = torch.randint(1, 120, (5,)).tolist()
    seqs, masks = [], []
    for p_len, c_len, r_len, common in ((4, 3, 6, 0), (7, 5, 2, 0), (2, 4, 4, 2)):
        prompt = system + torch.randint(1, 120, (p_len,)).tolist()
        head = torch.randint(1, 120, (common,)).tolist()
        for n in (c_len, r_len):
            completion = head + torch.randint(1, 120, (n,)).tolist()
            seqs.append(prompt + completion)
            masks.append([0] * len(prompt) + [1] * len(completion))
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn_mask, loss = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)], attn_mask[i, : len(s)], loss[i, : len(s)] = torch.tensor(s), 1, torch.tensor(m)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, -1.0])
    padded = sequence_logps(model, ids, attn_mask, loss, split=split)
    (padded[0] * weights).sum().backward()
    g_padded = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    tree = prefix_tree(seqs, masks, units=[[0, 1], [2, 3], [4, 5]], max_row_tokens=row_tokens)
    assert tree["num_nodes"] < sum(map(len, seqs)) - (20 if row_tokens is None else 10)  # shared tokens once
    assert tree["input_ids"].shape[0] == (1 if row_tokens is None else 3)
    sums, counts = tree_sequence_logps(model, tree, split=split)
    (sums * weights).sum().backward()
    assert torch.allclose(sums, padded[0], atol=1e-5), (sums, padded[0])
    assert torch.equal(counts, padded[1])
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, g_padded[n], atol=1e-5), n


def test_prefix_tree_without_its_mask_would_differ(one_torch_thread):
    """The test above can fail: with plain causal attention a branch would see its sibling's tokens."""
    from posttrain.ops.logprobs import tree_sequence_logps
    from posttrain.ops.packing import prefix_tree

    model = _model("sdpa")
    tree = prefix_tree([[3, 4, 5, 6], [3, 4, 7, 8]], [[0, 0, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        right = tree_sequence_logps(model, tree)[0]
        causal = dict(tree, tree_mask=torch.ones_like(tree["tree_mask"]).tril())
        leaky = tree_sequence_logps(model, causal)[0]
        alone = sequence_logps(model, torch.tensor([[3, 4, 7, 8]]), None, torch.tensor([[0, 0, 1, 1]]))[0]
    assert torch.allclose(right[1], alone[0], atol=1e-5)
    assert not torch.allclose(leaky[1], alone[0], atol=1e-3)
