"""Model merging formulas on small hand-made tensors, each against the paper's recipe worked by hand."""

import math

import pytest
import torch

from posttrain.ops import merging


def test_linear_is_the_weighted_mean():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.equal(merging.linear([a, b], [1, 1]), torch.tensor([2.0, 4.0]))
    assert torch.allclose(merging.linear([a, b], [3, 1]), torch.tensor([1.5, 3.0]))
    # a tie at the trim threshold keeps both entries
    assert torch.equal(merging.trim(torch.tensor([0.4, 0.2, 0.1, -0.2]), 0.5), torch.tensor([0.4, 0.2, 0.0, -0.2]))
    with pytest.raises(ValueError, match="sum to 0"):
        merging.linear([a, b], [1, -1])


def test_task_arithmetic():
    base = torch.tensor([1.0, 1.0])
    a, b = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    # base + lam * (w_a (a - base) + w_b (b - base)) = [1,1] + 0.5 * ([1,0] + 2*[0,2])
    assert torch.allclose(merging.task_arithmetic(base, [a, b], [1, 2], lam=0.5), torch.tensor([1.5, 3.0]))
    # ExPO: one model, extrapolated past itself from the model it was trained from: [1,1] + 2 * ([2,1] - [1,1])
    assert torch.equal(merging.task_arithmetic(base, [a], [1], lam=2.0), torch.tensor([3.0, 1.0]))


def test_ties_trim_elect_disjoint_mean():
    base = torch.zeros(4)
    t1 = torch.tensor([0.5, -0.1, 0.3, -0.8])
    t2 = torch.tensor([-0.4, 0.2, 0.1, -0.15])
    t3 = torch.tensor([0.6, 0.05, -0.7, 0.0])
    # trim at density 0.5 (top 2 by magnitude): t1 -> [0.5, 0, 0, -0.8];
    # t3 -> [0.6, 0, -0.7, 0]; t2 -> [-0.4, 0.2, 0, 0]
    assert torch.equal(merging.trim(t1, 0.5), torch.tensor([0.5, 0.0, 0.0, -0.8]))
    assert torch.equal(merging.trim(t3, 0.5), torch.tensor([0.6, 0.0, -0.7, 0.0]))
    # elect: sums [0.7, 0.2, -0.7, -0.8] -> signs [+, +, -, -]; disjoint means over agreeing non-zeros:
    # e0: (0.5 + 0.6) / 2 = 0.55; e1: 0.2; e2: -0.7; e3: -0.8 (t2's -0.15 was trimmed)
    merged = merging.ties(base, [t1, t2, t3], [1, 1, 1], density=0.5)
    assert torch.allclose(merged, torch.tensor([0.55, 0.2, -0.7, -0.8]))
    # weights enter before the election; lam scales the result
    weighted = merging.ties(base + 1, [t1 + 1, t2 + 1], [1, 3], density=1.0, lam=2.0)
    # weighted taus t1 = [0.5, -0.1, 0.3, -0.8] and 3 t2 = [-1.2, 0.6, 0.3, -0.45]: sums [-0.7, 0.5, 0.6, -1.25],
    # signs [-, +, +, -]; agreeing means: e0 -1.2; e1 0.6 (t1's -0.1 disagrees); e2 0.3; e3 (-0.8 - 0.45) / 2
    assert torch.allclose(weighted, 1 + 2 * torch.tensor([-1.2, 0.6, 0.3, -0.625]))


def test_dare_drops_with_a_seeded_mask_and_rescales():
    tau = torch.arange(1.0, 1001.0)
    g = torch.Generator().manual_seed(7)
    out = merging.dare(tau, 0.3, g)
    keep = torch.rand(tau.shape, generator=torch.Generator().manual_seed(7)) < 0.3
    assert torch.equal(out, torch.where(keep, tau / 0.3, torch.zeros_like(tau)))
    assert 250 < int(keep.sum()) < 350
    # dare_ties = base + disjoint merge of the dropped-and-rescaled task vectors, with the same mask stream
    base = torch.zeros(1000)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    merged = merging.dare_ties(base, [tau, -tau / 2], [1, 1], 0.5, g1)
    d1, d2 = merging.dare(tau, 0.5, g2), merging.dare(-tau / 2, 0.5, g2)
    assert torch.allclose(merged, merging.disjoint_merge([d1, d2], [1, 1]))


def test_slerp():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = merging.slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # on the arc, not the chord
    assert torch.allclose(merging.slerp(a, b, 0.0), a) and torch.allclose(merging.slerp(a, b, 1.0), b)
    assert torch.allclose(merging.slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear


def test_merging_a_model_with_itself_changes_nothing():
    w = torch.randn(5, 3)
    assert torch.allclose(merging.linear([w, w], [0.3, 0.7]), w)
    assert torch.allclose(merging.slerp(w, w, 0.4), w)
    assert torch.allclose(merging.ties(w, [w, w], [1, 1], density=0.5), w)


def test_lambda_for_scales_the_weights_whose_names_match():
    """Task arithmetic of one model from a base with lambda 2, and 3 for names containing 'attn' (the first pattern
    that matches wins): base 1, model 2 -> 1 + 3 (2 - 1) = 4 for attention weights, 1 + 2 (2 - 1) = 3 for the rest;
    integer buffers are the model's."""
    from posttrain.models.merge import merge_state_dicts

    base = {"layer.self_attn.q": torch.ones(2), "layer.mlp.up": torch.ones(2), "ids": torch.tensor([0, 1])}
    model = {"layer.self_attn.q": torch.full((2,), 2.0), "layer.mlp.up": torch.full((2,), 2.0),
             "ids": torch.tensor([5, 6])}
    out = merge_state_dicts([model], "task_arithmetic", [1.0], base, lam=2.0,
                            lambda_for={"attn": 3.0, "self_attn": 9.0})
    assert out["layer.self_attn.q"].tolist() == [4.0, 4.0] and out["layer.mlp.up"].tolist() == [3.0, 3.0]
    assert out["ids"].tolist() == [5, 6]
    with pytest.raises(ValueError, match="no weight name contains 'atn'"):
        merge_state_dicts([model], "task_arithmetic", [1.0], base, lambda_for={"atn": 3.0})
