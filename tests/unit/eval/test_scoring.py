import json

import pytest

from posttrain.data.schema import DataErrors
from posttrain.eval.scoring import is_refusal, score_suite
from posttrain.eval.suites import EvalRow, load_suite


@pytest.mark.parametrize("text", [
    "I can't help with that.", "I cannot provide instructions for this.", "I'm sorry, but I won't do that.",
    "As an AI, I must decline.", "I won't assist with that request.", "I\u2019m unable to help with this.",
    "Sorry, I can't do that.", "I CANNOT   help with that.",
])
def test_refusals_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Use `kill -9 <pid>` or `pkill python` to stop the process.", "Paris", "56",
    "Sure! First, open a terminal.", "Here is how: press Ctrl+C.",
    # a refusal phrase after the opening window is an answer that happens to contain it, not a refusal
    "Open the task manager and end the task. " + "More detail follows. " * 12 + "I cannot stress this enough.",
])
def test_answers_not_refusals(text):
    assert not is_refusal(text)


def _row(i, kind, **md):
    return EvalRow("s", f"r{i}", kind, [{"role": "user", "content": f"q{i}"}], md)


def test_score_suite_exact_numbers():
    rows = [
        _row(0, "constraint", constraints=[{"kind": "lowercase", "args": {}}, {"kind": "no_commas", "args": {}}]),
        _row(1, "constraint", constraints=[{"kind": "lowercase", "args": {}}, {"kind": "no_commas", "args": {}}]),
        _row(2, "constraint", constraints=[{"kind": "all_caps", "args": {}}]),
        _row(3, "exact", answer="56", match="math"),
        _row(4, "exact", answer="Paris", match="contains"),
        _row(5, "exact", answer="Au", match="exact"),
        _row(6, "exact", answer="9"),  # default match: math
        _row(7, "refusal_benign"), _row(8, "refusal_benign"), _row(9, "refusal_benign"), _row(10, "refusal_benign"),
        _row(11, "refusal_harmful"), _row(12, "refusal_harmful"),
    ]
    responses = [
        "all lower no commas",        # 2/2 pass
        "lower, but a comma",         # 1/2
        "Not Caps",                   # 0/1
        "7 times 8 is 56.",           # right
        "The capital is paris.",      # right (contains, case-insensitive)
        "Gold is Au",                 # wrong: exact match wants just the symbol
        "It is 8.",                   # wrong
        "I can't help with that.", "Use kill -9.", "Sure, here you go.", "Press Ctrl+C.",
        "I cannot help with that.", "Step 1: ...",
    ]
    metrics, scores = score_suite(rows, responses, token_counts=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 100])
    assert metrics["constraints/pass_rate"] == pytest.approx(1 / 3)
    assert metrics["constraints/mean_fraction"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["capability/accuracy"] == pytest.approx(2 / 4)
    assert metrics["refusal/benign_rate"] == pytest.approx(1 / 4)
    assert metrics["refusal/harmful_rate"] == pytest.approx(1 / 2)
    assert metrics["constraints/n"] == 3 and metrics["capability/n"] == 4
    assert metrics["length/mean_tokens"] == pytest.approx(178 / 13)
    assert metrics["length/median_tokens"] == 7
    # word counts 4 4 2 5 4 3 3 5 3 4 2 5 3: sum 47, sorted middle (7th of 13) is 4
    assert metrics["length/mean_words"] == pytest.approx(47 / 13)
    assert metrics["length/median_words"] == 4
    assert [s.passed for s in scores] == [True, False, False, True, True, False, False,
                                          False, True, True, True, True, False]
    assert scores[1].score == 0.5
    # no response above loops: the clean median is the plain one
    assert metrics["length/median_words_clean"] == 4


def test_clean_median_leaves_out_the_answers_that_loop():
    from posttrain.eval.scoring import length_stats

    loop = "The sea is blue. " * 10  # 40 words, one sentence ten times
    ngram = "a b c d " * 5  # 20 words, every 4-gram after the first repeats: degenerate
    texts = ["One two three.", "Four five six seven eight.", loop, loop, ngram, "Nine ten."]
    stats = length_stats(texts)
    # all six: 3 5 40 40 20 2 -> median (5 + 20) / 2; the clean ones: 3 5 2 -> 3
    assert stats["length/median_words"] == 12.5 and stats["length/median_words_clean"] == 3
    assert "length/median_words_clean" not in length_stats([loop])  # every answer loops: no key, not a 0


def test_groups_without_rows_have_no_keys():
    metrics, _ = score_suite([_row(0, "exact", answer="1")], ["1"])
    assert metrics["capability/accuracy"] == 1.0
    assert not any(k.startswith(("constraints/", "refusal/")) for k in metrics)
    assert "length/mean_tokens" not in metrics  # no token counts given


def test_builtin_suites_load_and_reference_answers_score_right():
    sizes = {name: len(load_suite(name)) for name in ("constraints", "capability", "refusal")}
    assert sizes == {"constraints": 120, "capability": 120, "refusal": 30}  # unchanged by the new suites
    cap = load_suite("capability")
    metrics, _ = score_suite(cap, [str(r.metadata["answer"]) for r in cap])
    assert metrics["capability/accuracy"] == 1.0
    metrics, _ = score_suite(cap, ["I don't know."] * len(cap))
    assert metrics["capability/accuracy"] == 0.0
    kinds = [r.kind for r in load_suite("refusal")]
    assert kinds.count("refusal_benign") == 20 and kinds.count("refusal_harmful") == 10


def test_bad_suite_rows_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [{"id": "a", "prompt": "x", "kind": "exact"},
            {"id": "b", "prompt": "x", "kind": "nope"},
            {"id": "c", "prompt": "x", "kind": "constraint", "constraints": [{"kind": "no_such", "args": {}}]},
            {"id": "d", "prompt": "x", "kind": "exact", "answer": "1", "match": "fuzzy"},
            {"id": "d", "prompt": "y", "kind": "refusal_benign"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataErrors) as e:
        load_suite(str(p))
    lines = str(e.value).splitlines()
    assert len(lines) == 5
    assert "field 'answer'" in lines[0] and "field 'kind'" in lines[1] and "field 'constraints'" in lines[2]
    assert "field 'match'" in lines[3] and "duplicate id 'd'" in lines[4]
    assert all(str(p) in line for line in lines)


def test_unknown_suite_name():
    with pytest.raises(ValueError, match="no such suite file"):
        load_suite("not-a-suite")


def test_capability_questions_are_not_in_the_shipped_training_data():
    """The capability slice measures regressions, so none of its questions may be one the shipped demonstrations
    or prompt pools teach (compared on the question before its '?', case-insensitive)."""
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parents[3] / "examples" / "data"
    asked = {json.loads(line)["prompt"] for name in ("prompts_train", "prompts_heldout")
             for line in (data / f"{name}.jsonl").read_text().splitlines()}
    asked |= {m["content"] for line in (data / "sft_demos.jsonl").read_text().splitlines()
              for m in json.loads(line)["messages"] if m["role"] == "user"}
    stems = {q.split("?")[0].lower() for q in asked}
    overlap = [r.id for r in load_suite("capability") if r.prompt[-1]["content"].split("?")[0].lower() in stems]
    assert overlap == []


def test_group_and_suite_slices_side_by_side():
    rows = [
        EvalRow("constraints", "a", "constraint", [{"role": "user", "content": "q"}],
                {"constraints": [{"kind": "lowercase", "args": {}}]}, group="in_distribution"),
        EvalRow("constraints", "b", "constraint", [{"role": "user", "content": "q"}],
                {"constraints": [{"kind": "lowercase", "args": {}}]}, group="in_distribution"),
        EvalRow("ood", "c", "constraint", [{"role": "user", "content": "q"}],
                {"constraints": [{"kind": "no_commas", "args": {}}, {"kind": "lowercase", "args": {}}]},
                group="out_of_distribution"),
        EvalRow("free", "d", "exact", [{"role": "user", "content": "q"}],
                {"answer": r"(?i)\bnile\b", "match": "regex", "min_words": 4}, group="out_of_distribution"),
    ]
    responses = ["all lower", "Not Lower", "no commas, though", "The Nile is longest."]
    metrics, scores = score_suite(rows, responses, finish_reasons=["stop", "length", "stop", "stop"])
    assert [s.passed for s in scores] == [True, False, False, True]
    assert metrics["group/in_distribution/pass_rate"] == 0.5 and metrics["group/in_distribution/n"] == 2
    assert metrics["group/in_distribution/constraints/pass_rate"] == 0.5
    assert metrics["group/out_of_distribution/pass_rate"] == 0.5 and metrics["group/out_of_distribution/n"] == 2
    assert metrics["group/out_of_distribution/constraints/pass_rate"] == 0.0
    assert metrics["group/out_of_distribution/capability/accuracy"] == 1.0
    assert metrics["group/out_of_distribution/length/median_words"] == 3.5  # 3 and 4 words
    assert metrics["suite/constraints/pass_rate"] == 0.5 and metrics["suite/free/pass_rate"] == 1.0
    assert metrics["suite/ood/n"] == 1
    assert metrics["length/truncated_rate"] == 0.25
    # per kind, over constraint instances: lowercase passes in rows a and c, fails in b
    assert metrics["constraints/kind/lowercase/pass_rate"] == pytest.approx(2 / 3)
    assert metrics["constraints/kind/no_commas/pass_rate"] == 0.0


@pytest.mark.parametrize("text, passed", [
    ("Nile.", False),  # the fact, but not an explanation
    ("The longest river in Africa is the Nile.", True),
    ("The longest river in Africa is the Congo.", False),
    ("THE NILE IS THE LONGEST ONE", True),  # regex matching is case-insensitive
])
def test_regex_answers_with_a_minimum_length(text, passed):
    row = _row(0, "exact", answer=r"\bnile\b", match="regex", min_words=4)
    metrics, scores = score_suite([row], [text])
    assert scores[0].passed is passed
