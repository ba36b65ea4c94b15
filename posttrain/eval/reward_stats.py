"""How good and how length-biased a reward model's scores are on preference pairs (``reward_eval.json`` of
``posttrain reward-model``): pairwise accuracy, the score distribution, and whether the score follows response
length (Pearson correlation; how often "the longer one wins"), a known failure mode of reward models."""

from __future__ import annotations

import math


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else math.nan


def reward_stats(chosen: list[float], rejected: list[float], chosen_lengths: list[int],
                 rejected_lengths: list[int]) -> dict:
    """Accuracy, reward distribution and length sensitivity of the scores of ``len(chosen)`` pairs (score and
    response length of the chosen and of the rejected side of each pair)."""
    scores = chosen + rejected
    lengths = chosen_lengths + rejected_lengths
    ordered = sorted(scores)
    n = len(chosen)
    pairs = list(zip(chosen, rejected, chosen_lengths, rejected_lengths))

    def quantile(q):
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    mean = sum(scores) / len(scores)
    unequal = [(c, r, lc, lr) for c, r, lc, lr in pairs if lc != lr]
    return {
        "pairs": n,
        "accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
        "margin_mean": sum(c - r for c, r in zip(chosen, rejected)) / n,
        "reward_mean": mean,
        "reward_std": math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, len(scores) - 1)),
        "reward_min": ordered[0], "reward_p05": quantile(0.05), "reward_p50": quantile(0.5),
        "reward_p95": quantile(0.95), "reward_max": ordered[-1],
        "chosen_mean": sum(chosen) / n, "rejected_mean": sum(rejected) / n,
        # length bias: does the score follow response length, and does the RM simply pick the longer reply?
        "length_corr": pearson(scores, [float(x) for x in lengths]),
        "margin_length_corr": pearson([c - r for c, r in zip(chosen, rejected)],
                                      [float(lc - lr) for lc, lr in zip(chosen_lengths, rejected_lengths)]),
        "longer_preferred_by_rm": (sum((c > r) == (lc > lr) for c, r, lc, lr in unequal) / len(unequal))
                                  if unequal else math.nan,
        "longer_is_chosen_in_data": (sum(lc > lr for _c, _r, lc, lr in unequal) / len(unequal))
                                    if unequal else math.nan,
    }
