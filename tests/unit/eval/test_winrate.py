import math

import pytest

from posttrain.eval.winrate import (fit_logistic, length_controlled_win_rate, wilson_interval, win_indicators,
                                    win_rate)


def test_win_rate_with_ties_and_wilson_interval():
    ind = win_indicators(["a"] * 6 + ["b"] * 2 + ["tie"] * 2)
    out = win_rate(ind)
    assert out["win_rate"] == pytest.approx(0.7)  # (6 + 2 * 0.5) / 10
    assert (out["wins"], out["losses"], out["ties"], out["n"]) == (6, 2, 2, 10)
    # Wilson 95% for p = 0.7, n = 10 (textbook value 0.3968 .. 0.8922)
    assert out["ci_low"] == pytest.approx(0.39677, abs=1e-4)
    assert out["ci_high"] == pytest.approx(0.89220, abs=1e-4)


def test_wilson_edges():
    lo, hi = wilson_interval(1.0, 20)
    assert hi == 1.0 and lo == pytest.approx(20 / (20 + 1.959963984540054 ** 2))  # closed form at p = 1
    assert wilson_interval(0.5, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(1 - hi)  # symmetric around 0.5


def test_bad_winner():
    with pytest.raises(ValueError, match="'model'"):
        win_indicators(["a", "model"])


def test_length_explains_wins_so_controlled_rate_moves_to_half():
    # The model is longer on 40 prompts and wins 80% of those; shorter on 10 and wins 20% of those. Within each
    # length group the win rate is symmetric around 0.5, so at equal length the model is no better: LC = 0.5,
    # while the raw win rate (0.68) rewards it for being long more often.
    ind = [1.0] * 32 + [0.0] * 8 + [1.0] * 2 + [0.0] * 8
    diffs = [20.0] * 40 + [-20.0] * 10
    assert win_rate(ind)["win_rate"] == pytest.approx(0.68)
    lc = length_controlled_win_rate(ind, diffs)
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)  # not exact: the slope's small ridge
    assert lc["length_slope"] > 0


def test_no_length_effect_keeps_raw_rate():
    ind = [1.0] * 24 + [0.0] * 16 + [1.0] * 6 + [0.0] * 4  # 60% wins whether longer or shorter
    diffs = [20.0] * 40 + [-20.0] * 10
    lc = length_controlled_win_rate(ind, diffs)
    assert lc["lc_win_rate"] == pytest.approx(0.6, abs=1e-3)
    assert lc["length_slope"] == pytest.approx(0.0, abs=1e-6)


def test_logistic_fit_recovers_known_coefficients():
    # Soft labels equal to the model's own probabilities are fitted exactly (up to the tiny ridge).
    xs = [-2.0, -1.0, 0.0, 1.0, 2.0]
    ys = [1 / (1 + math.exp(-(0.3 + 0.8 * x))) for x in xs]
    b0, b1 = fit_logistic(xs, ys, ridge=0.0)
    assert (b0, b1) == (pytest.approx(0.3, abs=1e-8), pytest.approx(0.8, abs=1e-8))


def test_separable_data_stays_finite_and_equal_lengths_give_raw_rate():
    lc = length_controlled_win_rate([1.0, 1.0, 0.0, 0.0], [5.0, 3.0, -3.0, -5.0])
    assert math.isfinite(lc["length_slope"]) and lc["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)
    lc = length_controlled_win_rate([1.0, 0.5, 1.0, 0.0], [0.0] * 4)  # no length variation: intercept only
    assert lc["lc_win_rate"] == pytest.approx(0.625, abs=1e-8)
