"""eval/reward_stats.py on hand-made scores: accuracy, distribution and length bias of a reward model."""

import math

import pytest

from posttrain.eval.reward_stats import pearson, reward_stats


def test_hand_counted_pairs():
    # pair: (chosen score, rejected score, chosen length, rejected length)
    chosen, rejected = [2.0, 1.0, 0.0, 3.0], [1.0, 2.0, -1.0, 1.0]
    stats = reward_stats(chosen, rejected, [10, 5, 8, 7], [4, 9, 8, 3])
    assert stats["pairs"] == 4
    assert stats["accuracy"] == 0.75  # pair 2 is ranked wrong
    assert stats["margin_mean"] == pytest.approx((1 - 1 + 1 + 2) / 4)
    assert stats["chosen_mean"] == 1.5 and stats["rejected_mean"] == 0.75
    assert (stats["reward_min"], stats["reward_max"], stats["reward_p50"]) == (-1.0, 3.0, 1.0)
    # 3 pairs with unequal lengths; in each the longer reply got the higher score
    assert stats["longer_preferred_by_rm"] == 1.0
    assert stats["longer_is_chosen_in_data"] == pytest.approx(2 / 3)
    assert stats["length_corr"] == pytest.approx(pearson(chosen + rejected, [10.0, 5, 8, 7, 4, 9, 8, 3]))


def test_pearson_edges():
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1.0], [1.0])) and math.isnan(pearson([1.0, 1.0], [0.0, 5.0]))
    equal = reward_stats([1.0], [0.0], [5], [5])
    assert math.isnan(equal["longer_preferred_by_rm"]) and math.isnan(equal["longer_is_chosen_in_data"])
