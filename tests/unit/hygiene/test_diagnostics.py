"""Preference diagnostics on a hand-made pair set: every number worked out by hand in the comments."""

import json

from posttrain.hygiene.diagnostics import PairStats
from posttrain.hygiene.templates import TemplateProfile, compare
from posttrain.hygiene.text import stream_rows, text_fields

PAIRS = [
    # chosen 9 chars / 2 words, rejected 2 / 1: chosen longer, ratio 4.5; judge scores agree
    {"prompt": "p1", "chosen": "aaaa bbbb", "rejected": "cc", "chosen_score": 0.9, "rejected_score": 0.1},
    # chosen 11 chars ("## Head" + newline + "- x"), words head, x; rejected 17 / 3: rejected longer;
    # header and bullet in chosen only; UltraFeedback-style scores disagree (1 < 2)
    {"prompt": "p2", "chosen": "## Head\n- x", "rejected": "plain answer here", "score_chosen": 1,
     "score_rejected": 2},
    # identical: 9 / 9 chars, equal; scores tie
    {"prompt": "p3", "chosen": "same text", "rejected": "same text", "chosen_score": 0.5, "rejected_score": 0.5},
    # chosen refuses: 38 chars / 10 words (i m sorry but i can t help with that), rejected 18 / 4; judges a, b
    {"prompt": "p4", "chosen": "I'm sorry, but I can't help with that.", "rejected": "Sure, here is how.",
     "judges": {"a": {"chosen": 1, "rejected": 0}, "b": {"chosen": 0, "rejected": 1}}},
    # near-identical: 55 / 55 chars, 11 words each; 9 word trigrams each, 8 shared -> Jaccard 8/10 = 0.8
    {"prompt": "p5", "chosen": "one two three four five six seven eight nine ten eleven",
     "rejected": "one two three four five six seven eight nine ten twelve"},
]


def _report(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    stats = PairStats(near_threshold=0.75)
    for row in stream_rows(str(path), "preference"):
        f = text_fields(row.example)
        stats.add(row.line, f["chosen"], f["rejected"], row.example.metadata)
    return stats.report()


def test_lengths_exact(tmp_path):
    length = _report(tmp_path)["length"]
    # chosen chars [9, 11, 9, 38, 55]: mean 122/5, sorted [9, 9, 11, 38, 55]: p10 at rank 0.4 -> 9,
    # p90 at rank 3.6 -> 38 + 0.6 * 17 = 48.2
    assert length["chars"]["chosen"] == {"n": 5, "mean": 24.4, "median": 11, "p10": 9, "p90": 48.2, "min": 9,
                                         "max": 55}
    # rejected chars [2, 17, 9, 18, 55]: mean 101/5, sorted [2, 9, 17, 18, 55]: p10 2 + 0.4 * 7, p90 18 + 0.6 * 37
    assert length["chars"]["rejected"] == {"n": 5, "mean": 20.2, "median": 17, "p10": 4.8, "p90": 40.2, "min": 2,
                                           "max": 55}
    assert length["words"]["chosen"]["mean"] == 5.4  # (2 + 2 + 2 + 10 + 11) / 5
    assert length["words"]["rejected"]["mean"] == 4.2  # (1 + 3 + 2 + 4 + 11) / 5
    assert (length["chosen_longer_fraction"], length["rejected_longer_fraction"],
            length["equal_length_fraction"]) == (0.4, 0.2, 0.4)
    # (9/2 + 11/17 + 1 + 38/18 + 1) / 5 = 1.85163...
    assert length["mean_length_ratio"] == 1.8516


def test_identical_format_refusals_judges_exact(tmp_path):
    r = _report(tmp_path)
    assert r["pairs"] == 5
    assert r["identical"] == {"pairs": 1, "fraction": 0.2, "lines": [3]}
    assert r["near_identical"]["pairs"] == 1 and r["near_identical"]["examples"] == [{"line": 5, "similarity": 0.8}]
    header, bullet = r["format"]["artifacts"]["markdown_header"], r["format"]["artifacts"]["bullet"]
    assert header == {"chosen_fraction": 0.2, "rejected_fraction": 0.0, "only_chosen_pairs": 1,
                      "only_rejected_pairs": 0}
    assert bullet == header
    assert r["format"]["artifacts"]["bold"]["chosen_fraction"] == 0.0
    assert r["format"]["flagged"] == ["markdown_header", "bullet"]
    assert r["refusals"] == {"chosen_fraction": 0.2, "rejected_fraction": 0.0, "only_chosen_pairs": 1,
                             "only_rejected_pairs": 0}
    assert r["judge"] == {"scores": {"pairs": 3, "agree": 0.3333, "disagree": 0.3333, "tie": 0.3333},
                          "a": {"pairs": 1, "agree": 1.0, "disagree": 0.0, "tie": 0.0},
                          "b": {"pairs": 1, "agree": 0.0, "disagree": 1.0, "tie": 0.0}}
    warnings = "\n".join(r["warnings"])
    assert "length bias" not in warnings  # 2 of 5 and too few pairs anyway
    for expected in ("1 pair(s) have identical", "1 pair(s) are near-identical", "format artifact: markdown_header",
                     "format artifact: bullet", "refusals preferred", "judge 'scores'", "judge 'b'"):
        assert expected in warnings
    assert "judge 'a'" not in warnings


def test_case_only_difference_is_near_identical_not_identical():
    stats = PairStats()
    stats.add(1, "Red.", "red", {})
    stats.add(2, " same ", "same", {})
    r = stats.report()
    assert r["identical"]["lines"] == [2]
    assert r["near_identical"]["examples"] == [{"line": 1, "similarity": 1.0}]


def test_length_bias_warning():
    stats = PairStats()
    for i in range(10):
        stats.add(i, "a much longer chosen answer" if i < 8 else "x", "short", {})
    assert stats.report()["length"]["chosen_longer_fraction"] == 0.8
    assert any(w.startswith("length bias: chosen is longer in 80%") for w in stats.report()["warnings"])


def test_template_consistency(tmp_path):
    from posttrain.data.layouts import to_preference, to_sft

    sft, pref = TemplateProfile(), TemplateProfile()
    for i in range(10):
        sft.add(to_sft({"system": "You are terse.", "prompt": f"q{i}", "completion": "a"}))
        pref.add(to_preference({"prompt": f"<|im_start|>user\nq{i}<|im_end|>", "chosen": "a", "rejected": "b"}))
    result = compare(sft, pref, "template-A", "template-B")
    assert result["sft"]["system_prompt_fraction"] == 1.0 and result["preference"]["system_prompt_fraction"] == 0.0
    assert result["preference"]["template_markers"] == {"chatml": 10}
    assert result["same_chat_template"] is False
    text = "\n".join(result["warnings"])
    assert "system prompts: 100% of SFT rows have one, 0% of preference rows" in text
    assert "markers differ" in text and "different chat templates" in text
    same = TemplateProfile()
    for i in range(10):
        same.add(to_preference({"system": "You are terse.", "prompt": f"q{i}", "chosen": "a", "rejected": "b"}))
    assert compare(sft, same, "t", "t")["warnings"] == []


def test_console_names_the_rows_of_identical_and_near_identical_pairs(tmp_path):
    import io

    from rich.console import Console

    from posttrain.hygiene.cli import print_diagnostics

    console = Console(record=True, width=300, file=io.StringIO())
    print_diagnostics(_report(tmp_path), console)
    text = console.export_text()
    assert "warning: 1 pair(s) have identical chosen and rejected (no signal): line 3\n" in text
    assert "warning: 1 pair(s) are near-identical (word-trigram Jaccard >= 0.75): line 5\n" in text


def test_many_identical_rows_are_listed_up_to_ten():
    stats = PairStats()
    for line in range(1, 13):
        stats.add(line, "same", "same", {})
    assert "12 pair(s) have identical chosen and rejected (no signal): lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... " \
           "(10 of 12 listed)" in stats.report()["warnings"]
