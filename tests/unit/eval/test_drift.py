"""Degeneration, unrequested formatting and base-relative drift on hand-made responses, with exact values."""

from types import SimpleNamespace

import pytest

from posttrain.eval.drift import degeneration_stats, format_stats, paired_length, relative_metrics
from posttrain.verifiers.style import (has_repeated_sentence, is_all_caps_answer, is_lowercase_answer, is_repetitive,
                                       is_wrapped_in_quotes, repeated_chunk_fraction, repeated_ngram_fraction)

PROSE = "Tides rise and fall twice a day because the moon pulls on the oceans while Earth turns."
LOOP = "The sky is blue. The sky is blue. The sky is blue."
# an answer of the quickstart's model to "List exactly 5 points, each on its own line beginning with '* '." (issue 16,
# session 40), cut to 6 of its 64 lines: no words, so the word tests see nothing
STARS = "* * *\n" * 6


def test_repeated_ngram_fraction_exact():
    assert repeated_ngram_fraction("a b c d a b c d") == pytest.approx(1 / 5)  # 5 four-grams, 4 distinct
    # 12 words, 9 four-grams, 4 distinct ("the sky is blue", "sky is blue the", ...): 5 repeats
    assert repeated_ngram_fraction(LOOP) == pytest.approx(5 / 9)
    assert repeated_ngram_fraction(PROSE) == 0.0
    assert repeated_ngram_fraction("too short") == 0.0  # fewer words than n: no n-grams
    # case and punctuation do not make a repeat look new
    assert repeated_ngram_fraction("One two three four. ONE, two; three four!") == pytest.approx(1 / 5)


def test_repeated_chunk_fraction_exact():
    # 18 chunks "*", 15 four-grams, 1 distinct: 14 repeats
    assert repeated_chunk_fraction(STARS) == pytest.approx(14 / 15)
    assert repeated_ngram_fraction(STARS) == 0.0
    assert repeated_chunk_fraction("**** **** **** **** ****") == pytest.approx(1 / 2)  # 2 four-grams, 1 distinct
    # chunks keep punctuation: "four." and "four!" differ, where the word fraction reads 1/5
    assert repeated_chunk_fraction("One two three four. ONE, two; three four!") == 0.0
    assert repeated_chunk_fraction("a b c d a b c d") == pytest.approx(1 / 5)  # case folded, as for words
    assert repeated_chunk_fraction(PROSE) == 0.0
    assert repeated_chunk_fraction("* *") == 0.0  # fewer chunks than n


def test_repeated_sentence():
    assert has_repeated_sentence("The sky is blue. the sky is BLUE!")
    assert has_repeated_sentence("First line here\nThe sky is blue\nthe sky is blue.")  # line breaks split too
    assert not has_repeated_sentence("Go now. Go now.")  # two words: below the 3-word minimum
    assert not has_repeated_sentence("One two three. Four five six.")
    assert not has_repeated_sentence(PROSE)


def test_is_repetitive_threshold():
    assert is_repetitive(LOOP)
    assert not is_repetitive("a b c d a b c d")  # 0.2 < 0.3 and no sentence repeated
    assert is_repetitive("a b c d a b c d a b c d")  # 5/9 >= 0.3
    assert not is_repetitive(PROSE)
    assert is_repetitive(STARS)  # the chunk fraction, 14/15
    assert is_repetitive("<<Tips for chess>>\n\n" + "* * *\n\n" * 4)  # 8 of its 12 chunk 4-grams repeat
    # a short bullet list, a horizontal rule and a table stay below 0.3
    assert not is_repetitive("* Tides follow the moon.\n* * *\n* The sun pulls too.\n* Two highs a day.")
    assert not is_repetitive("| kind | count |\n| --- | --- |\n| tides | 2 |\n| waves | 9 |")


def test_degeneration_stats_exact():
    stats = degeneration_stats([PROSE, LOOP, "a b c d a b c d"])
    assert stats == pytest.approx({"degeneration/repeat_rate": 1 / 3, "degeneration/repeated_sentence_rate": 1 / 3,
                                   "degeneration/ngram_repeat_fraction": (0 + 5 / 9 + 1 / 5) / 3})
    # a symbol loop is repetitive; the word n-gram mean does not move
    stats = degeneration_stats([PROSE, STARS])
    assert stats == pytest.approx({"degeneration/repeat_rate": 1 / 2, "degeneration/repeated_sentence_rate": 0.0,
                                   "degeneration/ngram_repeat_fraction": 0.0})
    assert degeneration_stats([]) == {}


def test_wrapped_in_quotes_and_all_caps():
    assert is_wrapped_in_quotes('"Hello there."') and is_wrapped_in_quotes(' "x" ')
    assert is_wrapped_in_quotes("“Hi.”")
    assert not is_wrapped_in_quotes('He said "hi".') and not is_wrapped_in_quotes('""') and not is_wrapped_in_quotes("")
    assert is_all_caps_answer("THE SKY IS BLUE.") and is_all_caps_answer("H2O IS WATER")
    assert not is_all_caps_answer("DNA")  # a one-word answer is not shouting
    assert not is_all_caps_answer("The SKY IS BLUE") and not is_all_caps_answer("12 34 56 78")


def test_lowercase_answer():
    assert is_lowercase_answer("the sky is blue.") and is_lowercase_answer('"the air is mostly nitrogen"')
    assert is_lowercase_answer("- the sky is blue\n- grass is green")  # markdown before the first letter
    assert not is_lowercase_answer("the sky over Paris is blue.")  # a capital anywhere
    assert not is_lowercase_answer("81 divided by 9 is 9.")  # a number first: no case to get wrong
    assert not is_lowercase_answer("blue sky")  # fewer than three words
    assert not is_lowercase_answer("The sky is blue.")


def test_format_stats_only_count_rows_that_did_not_ask():
    metadatas = [{}, {"constraints": [{"kind": "double_quotes", "args": {}}]}, {"constraint": "all_caps"}, {}]
    texts = ['"Quoted answer here."', '"asked for quotes."', "ALL CAPS AS ASKED", "NOT ASKED BUT SHOUTED"]
    # quotes: rows 0, 2, 3 did not ask; only row 0 is wrapped. caps: rows 0, 1, 3 did not ask; only row 3 shouts.
    # lowercase: no row asked; only row 1 is written in lowercase.
    assert format_stats(metadatas, texts) == pytest.approx({"format/unrequested_quotes_rate": 1 / 3,
                                                            "format/unrequested_caps_rate": 1 / 3,
                                                            "format/unrequested_lowercase_rate": 1 / 4})
    lower = {"constraints": [{"kind": "lowercase", "args": {}}]}
    assert format_stats([lower, {}], ["all lowercase as asked", "all lowercase unasked"])[
        "format/unrequested_lowercase_rate"] == 1.0
    # an IFEval quotation instruction counts as asking for quotes
    ifeval = {"instruction_id_list": ["startend:quotation"], "constraints": [{"kind": "double_quotes", "args": {}}]}
    assert "format/unrequested_quotes_rate" not in format_stats([ifeval], ['"x y z"'])


def test_format_stats_instruction_echo_over_the_rows_that_ask_for_something():
    metadatas = [{"constraint": "lowercase"}, {"constraints": [{"kind": "no_commas", "args": {}}]}, {}, {}]
    prompts = ["Name a fruit. Use only lowercase characters in your response.",
               "Name a tree. Do not use a single comma.", "Name a bird. Say it in five words or so.",
               "Name a fish."]
    texts = ["apple. use only lowercase characters in your response.", "An oak", "say it in five words or so",
             "A trout"]
    # rows 0 and 1 ask for something: row 0 echoes its instruction, row 1 does not; rows 2-3 (no constraint) do
    # not count, though row 2 copies its second sentence
    stats = format_stats(metadatas, texts, prompts)
    assert stats["format/instruction_echo_rate"] == 0.5
    assert "format/instruction_echo_rate" not in format_stats(metadatas, texts)  # no prompts: no rate
    assert "format/instruction_echo_rate" not in format_stats([{}], ["x"], ["A. B c d e f."])
    assert relative_metrics(stats, {"format/instruction_echo_rate": 0.125}, "base")[
        "format/instruction_echo_delta_vs_base"] == pytest.approx(0.375)


def test_relative_metrics_exact():
    model = {"length/mean_tokens": 30.0, "length/mean_words": 20.0, "length/median_words": 10.0,
             "group/out_of_distribution/length/median_words": 8.0, "degeneration/repeat_rate": 0.25,
             "group/out_of_distribution/length/median_words_clean": 9.0, "format/unrequested_quotes_rate": 0.5, "format/unrequested_caps_rate": 0.1,
             "format/unrequested_lowercase_rate": 0.125, "constraints/pass_rate": 0.4}
    base = {"length/mean_tokens": 60.0, "length/mean_words": 40.0, "length/median_words": 40.0,
            "group/out_of_distribution/length/median_words": 32.0, "degeneration/repeat_rate": 0.05,
            "group/out_of_distribution/length/median_words_clean": 12.0, "format/unrequested_quotes_rate": 0.0, "format/unrequested_lowercase_rate": 0.025}
    assert relative_metrics(model, base, "base") == pytest.approx({
        "length/ratio_to_base": 0.5, "length/mean_words_ratio_to_base": 0.5,
        "length/median_words_ratio_to_base": 0.25,
        "group/out_of_distribution/length/median_words_ratio_to_base": 0.25,
        "group/out_of_distribution/length/median_words_clean_ratio_to_base": 0.75,
        "degeneration/delta_vs_base": 0.2, "format/unrequested_quotes_delta_vs_base": 0.5,
        "format/unrequested_lowercase_delta_vs_base": 0.1})
    # a zero reference gives no ratio (rather than inf), so a gate on it fails as missing
    assert "length/median_words_ratio_to_baseline" not in relative_metrics(
        model, {"length/median_words": 0.0}, "baseline")


def test_paired_length_counts_only_the_rows_where_neither_answer_loops():
    rows = [SimpleNamespace(group="ood", suite="a"), SimpleNamespace(group="ood", suite="a"),
            SimpleNamespace(group="ood", suite="b"), SimpleNamespace(group="id", suite="c"),
            SimpleNamespace(group="id", suite="c")]
    model = ["one two three", "one two three four five six", LOOP, "a b", "x y z w"]
    base = ["one two three four five six", LOOP, "short reply here now", "a b c d", "x y"]
    # row 1: the base loops; row 2: the model loops; both left out wherever they count
    assert paired_length(rows, model, base, "base") == pytest.approx({
        "length/paired_rows_vs_base": 3.0, "length/paired_words_ratio_to_base": (3 + 2 + 4) / (6 + 4 + 2),
        "group/ood/length/paired_rows_vs_base": 1.0, "group/ood/length/paired_words_ratio_to_base": 3 / 6,
        "suite/a/length/paired_rows_vs_base": 1.0, "suite/a/length/paired_words_ratio_to_base": 3 / 6,
        "group/id/length/paired_rows_vs_base": 2.0, "group/id/length/paired_words_ratio_to_base": 6 / 6,
        "suite/c/length/paired_rows_vs_base": 2.0, "suite/c/length/paired_words_ratio_to_base": 6 / 6})
    # the median over each model's own answers that do not loop would compare rows 0 and 1 with rows 0 and 2
    # a slice with no pair left, or whose reference answers are empty, has no ratio (a gate on it fails as missing)
    assert paired_length(rows[1:3], model[1:3], base[1:3], "base") == {}
    assert paired_length(rows[:1], ["two words"], [""], "baseline") == {
        "length/paired_rows_vs_baseline": 1.0, "group/ood/length/paired_rows_vs_baseline": 1.0,
        "suite/a/length/paired_rows_vs_baseline": 1.0}
    with pytest.raises(ValueError, match="paired_length: 1 rows, 2 answers and 1 base answers"):
        paired_length(rows[:1], ["a", "b"], ["c"], "base")


def test_combine_metrics_writes_the_paired_length_against_each_reference():
    from posttrain.eval.run import combine_metrics

    rows = [SimpleNamespace(group="ood", suite="a", kind="constraint"),
            SimpleNamespace(group="ood", suite="a", kind="constraint")]
    texts = {"model": ["one two", "a b c d"], "baseline": ["one two three four", LOOP], "base": ["one", "a b"]}
    verdicts = {role: [True, False] for role in texts}
    out = combine_metrics({}, {"baseline": {}, "base": {}}, rows, verdicts, texts)
    assert out["length/paired_words_ratio_to_baseline"] == pytest.approx(2 / 4)  # the baseline loops on row 1
    assert out["length/paired_words_ratio_to_base"] == pytest.approx(6 / 3)
    assert out["baseline/length/paired_words_ratio_to_base"] == pytest.approx(4 / 1)  # the baseline's own drift
    assert "base/length/paired_words_ratio_to_base" not in out
    # without the answers (an older caller), no paired keys
    assert not any("paired" in k for k in combine_metrics({}, {"base": {}}, rows, {"model": [True, False],
                                                                                   "base": [True, True]}))
