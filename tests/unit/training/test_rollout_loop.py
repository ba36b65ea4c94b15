"""Pieces of the online-RL loop and of rejection sampling that need no model."""

import math

import pytest
import torch

from posttrain.config import ConfigError
from posttrain.trainers.rejection_sft import pick_winners
from posttrain.ops.rollout import rollout_tensors
from posttrain.training.rollout_loop import select_rows, split_even


def test_split_even():
    assert split_even(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert split_even(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ConfigError, match="cannot split 2 rollout sequences into 3 minibatches"):
        split_even(2, 3)


def test_select_rows_picks_tensors_and_lists_by_row():
    batch = {"num_rows": 3, "x": torch.arange(6).reshape(3, 2), "names": ["a", "b", "c"], "scalar": 7,
             "other": torch.zeros(5)}
    sub = select_rows(batch, torch.tensor([2, 0]))
    assert sub["x"].tolist() == [[4, 5], [0, 1]] and sub["names"] == ["c", "a"]
    assert sub["scalar"] == 7 and sub["other"].shape == (5,) and sub["num_rows"] == 2


def test_rollout_tensors_masks():
    b = rollout_tensors([[5, 6], [7]], [[8, 9, 2], [10]], pad_token_id=0, device="cpu")
    assert b["input_ids"].tolist() == [[5, 6, 8, 9, 2], [7, 10, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    # target space: position t scores token t + 1
    assert b["completion_mask"].tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


def test_pick_winners():
    nan = math.nan
    assert pick_winners([[0.1, 0.9, 0.9], [nan, 0.2], [nan, nan]], None) == [1, 1, None]
    assert pick_winners([[0.1, 0.5], [1.0, 0.0]], min_score=0.8) == [None, 0]


def test_prompts_per_step_must_divide_over_the_processes():
    from types import SimpleNamespace

    from posttrain.training.rollout_loop import fit_rl

    three = SimpleNamespace(process_index=0, num_processes=3)
    with pytest.raises(ConfigError, match=r"optim.batch_size=4 prompts per step must be divisible by the number of "
                                          r"processes \(3\)"):
        fit_rl(None, [], None, SimpleNamespace(optim=SimpleNamespace(batch_size=4)), three, update_epochs=1, mini_batches=1)
