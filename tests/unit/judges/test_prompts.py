import math

import pytest

from posttrain.judges import prompts
from posttrain.judges.prompts import combine_orders, parse_score, parse_verdict

PROMPT = [{"role": "user", "content": "Name a prime number."}]


@pytest.mark.parametrize("text, expected", [
    ("Both are fine but A is precise.\nVerdict: A", "a"),
    ("verdict: b", "b"),
    ("Verdict: tie", "tie"),
    ("Verdict: TIE.", "tie"),
    ("**Verdict:** B", "b"),
    ("Final verdict: [[A]]", "a"),
    ("Verdict - Response B", "b"),
    ("Verdict: A is better", "a"),
    ("Verdict: a tie", "tie"),
    ("Verdict: A\n...on reflection...\nVerdict: B", "b"),  # the last verdict counts
    ("[[B]]", "b"),
    ("B", "b"),
    (" tie. ", "tie"),
    ("I prefer the first one.", None),
    ("Verdict: both are good", None),
    ("", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Solid answer.\nScore: 8", 8.0),
    ("score: 7/10", 7.0),
    ("**Score:** 9.5", 9.5),
    ("Score: 3\nScore: 6", 6.0),
    ("Score: 11", None),
    ("Score: 0", None),
    ("eight out of ten", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_consistent_orders_give_the_winner():
    # (A, B) picks A; (B, A) picks position B, which is the original A.
    v = combine_orders("Verdict: A", "Verdict: B")
    assert (v.winner, v.confidence) == ("a", 1.0)
    assert v.details["raw"] == ["Verdict: A", "Verdict: B"]
    assert "reason" not in v.details
    v = combine_orders("Verdict: B", "Verdict: A")
    assert (v.winner, v.confidence) == ("b", 1.0)


def test_same_position_both_times_is_position_bias():
    v = combine_orders("Verdict: A", "Verdict: A")
    assert (v.winner, v.confidence) == ("tie", 0.0)
    assert "position bias" in v.details["reason"]
    v = combine_orders("Verdict: B", "Verdict: B")
    assert v.winner == "tie" and "position bias" in v.details["reason"]


def test_tie_and_split_and_unparseable():
    assert combine_orders("Verdict: tie", "Verdict: tie").winner == "tie"
    assert combine_orders("Verdict: tie", "Verdict: tie").confidence == 1.0
    split = combine_orders("Verdict: A", "Verdict: tie")
    assert (split.winner, split.confidence) == ("tie", 0.5)
    assert "disagree" in split.details["reason"]
    junk = combine_orders("no idea", "Verdict: B")
    assert junk.winner == "tie" and "unparseable answer in order ab" in junk.details["reason"]
    assert junk.details["parsed"] == [None, "b"]


def test_both_orders_asks_each_pair_swapped():
    seen = []

    def ask(requests):
        seen.extend(requests)
        # prefer whichever position holds "7"
        return ["Verdict: A" if "<response_a>\n7\n" in r[1]["content"] else "Verdict: B" for r in requests]

    verdicts = prompts.both_orders(ask, [(PROMPT, "7", "8"), (PROMPT, "9", "7")])
    assert [v.winner for v in verdicts] == ["a", "b"]
    assert len(seen) == 4
    assert "<response_a>\n7\n</response_a>" in seen[0][1]["content"]
    assert "<response_a>\n8\n</response_a>" in seen[1][1]["content"]
    assert seen[0][0]["role"] == "system" and prompts.DEFAULT_RUBRIC in seen[0][0]["content"]


def test_custom_rubric_and_pointwise():
    def ask(requests):
        assert all("Be terse." in r[0]["content"] for r in requests)
        return ["Score: 9", "hmm"]

    good, bad = prompts.pointwise(ask, [(PROMPT, "7"), (PROMPT, "8")], rubric="Be terse.")
    assert good.value == 9.0 and good.details["raw"] == "Score: 9"
    assert math.isnan(bad.value) and "unparseable" in bad.details["reason"]
