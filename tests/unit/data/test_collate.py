import pytest
import torch

from posttrain.data.collate import collate_pairs, collate_sequences
from posttrain.ops.layouts import count_tokens
from posttrain.data.render import Rendered
from posttrain.ops.packing import Layout, layout_of

PAD = 2


def test_collate_sequences_right_pads_exactly():
    a = Rendered([5, 6, 7, 8], [0, 0, 1, 1], prompt_length=2)
    b = Rendered([9, 10], [0, 1], prompt_length=1)
    batch = collate_sequences([a, b], PAD)
    assert set(batch) == {"layout", "input_ids", "attention_mask", "loss_mask"} and batch["layout"] is Layout.PADDED
    assert all(batch[k].dtype == torch.long and batch[k].shape == (2, 4)
               for k in ("input_ids", "attention_mask", "loss_mask"))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert count_tokens(batch) == 6


def test_collate_pairs_puts_chosen_rows_first_in_one_batch():
    pairs = [
        (Rendered([1, 2, 3], [0, 1, 1], 1), Rendered([1, 4], [0, 1], 1)),
        (Rendered([7, 8], [0, 1], 1), Rendered([7, 9, 9, 9, 9], [0, 1, 1, 1, 1], 1)),
    ]
    batch = collate_pairs(pairs, PAD)
    assert batch["num_pairs"] == 2
    assert batch["input_ids"].shape == (4, 5)
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD, PAD], [7, 8, PAD, PAD, PAD],
                                           [1, 4, PAD, PAD, PAD], [7, 9, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 1]]
    assert count_tokens(batch) == 12


def test_collate_rejects_an_empty_batch_and_a_missing_pad_id():
    with pytest.raises(ValueError, match="empty batch"):
        collate_sequences([], PAD)
    with pytest.raises(ValueError, match="empty batch"):
        collate_pairs([], PAD)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        collate_sequences([Rendered([1], [1], 0)], None)


def test_every_layout_is_tagged_and_counts_the_same_tokens():
    pairs = [(Rendered([1, 2, 3], [0, 1, 1], 1), Rendered([1, 2, 4], [0, 1, 1], 1)),
             (Rendered([7, 8], [0, 1], 1), Rendered([7, 9, 9], [0, 1, 1], 1))]
    padded = collate_pairs(pairs, PAD)
    packed = collate_pairs(pairs, PAD, packing=True)
    tree = collate_pairs(pairs, PAD, prefix_sharing=True)
    assert [layout_of(b) for b in (padded, packed, tree)] == [Layout.PADDED, Layout.PACKED, Layout.TREE]
    # every sequence's tokens, whichever layout (the tree's forward runs fewer: 1, 2 and 7 stored once)
    assert count_tokens(padded) == count_tokens(packed) == count_tokens(tree) == 11
    assert tree["num_nodes"] == 8
    with pytest.raises(ValueError, match="not a collated batch: 'layout' is None"):
        count_tokens({"input_ids": torch.ones(1, 3, dtype=torch.long)})


def test_each_layout_class_counts_the_same_loss_tokens_and_scores_the_same_sequences():
    from posttrain.models.policy import load_trained
    from posttrain.ops.layouts import Packed, Padded, Tree, batch_sequence_logps, layout

    # 4 sequences with 2 + 2 + 1 + 2 target tokens (the first token of each predicts nothing)
    pairs = [(Rendered([1, 2, 3], [0, 1, 1], 1), Rendered([1, 2, 4], [0, 1, 1], 1)),
             (Rendered([7, 8], [0, 1], 1), Rendered([7, 9, 9], [0, 1, 1], 1))]
    batches = [collate_pairs(pairs, PAD), collate_pairs(pairs, PAD, packing=True),
               collate_pairs(pairs, PAD, prefix_sharing=True)]
    assert [layout(b) for b in batches] == [Padded, Packed, Tree]
    assert [layout(b).loss_tokens(b) for b in batches] == [7.0, 7.0, 7.0]
    assert [layout(b).token_level for b in batches] == [True, False, False]
    model, _ = load_trained("tiny-random")
    model.eval()
    with torch.no_grad():
        outs = [batch_sequence_logps(model, b) for b in batches]
    for sums, counts, _ in outs[1:]:
        assert torch.allclose(sums, outs[0][0], atol=1e-5) and counts.tolist() == outs[0][1].tolist() == [2, 1, 2, 2]
    assert outs[0][2] is not None and outs[0][2].shape == (4, 2) and outs[2][2] is None
