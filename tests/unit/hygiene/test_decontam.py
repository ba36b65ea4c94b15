"""n-gram decontamination: a planted eval prompt is found (and removed when asked); a row sharing only a 12-gram
with an eval example is kept at n=13; short eval prompts count whole; the builtin suites are indexed."""

import json

import pytest

from posttrain.hygiene.decontam import Decontaminator, EvalIndex, build_index

EVAL = ("Describe in detail how the ancient city of Petra was carved into the rose red sandstone cliffs of "
        "southern Jordan")  # 20 words -> 8 distinct 13-grams


def _index(n=13, text=EVAL):
    index = EvalIndex(n=n, min_words=6)
    index.sets["heldout"] = {"examples": 0, "ngrams": 0}
    index.add("heldout", "petra-1", [text])
    return index


def test_planted_eval_prompt_found_with_overlap():
    index = _index()
    assert index.examples[0].n_grams == 8
    matches = index.matches("prompt", f"Please help. {EVAL}. Thanks a lot!")
    assert [(m.eval_set, m.eval_id, m.field, m.matched_ngrams, m.eval_ngrams) for m in matches] == [
        ("heldout", "petra-1", "prompt", 8, 8)]
    assert matches[0].overlap == 1.0


def test_twelve_gram_kept_at_thirteen_found_at_twelve():
    words = EVAL.split()
    twelve = " ".join(words[3:15])  # shares exactly one 12-gram, no 13-gram
    row = f"unrelated start {twelve} unrelated end"
    assert _index(13).matches("response", row) == []
    at_twelve = _index(12).matches("response", row)
    assert len(at_twelve) == 1 and at_twelve[0].matched_ngrams == 1 and at_twelve[0].eval_ngrams == 9


def test_partial_overlap_fraction_and_case_punctuation_insensitive():
    words = EVAL.split()
    row = " ".join(words[:14]).upper() + "!!! something else entirely"  # the first two 13-grams
    (match,) = _index().matches("prompt", row)
    assert (match.matched_ngrams, match.eval_ngrams, match.overlap) == (2, 8, 0.25)


def test_short_eval_text_counts_whole():
    index = _index(text="How do I crack an egg with one hand?")  # 9 words < 13
    assert index.examples[0].n_grams == 1
    assert index.matches("prompt", "Q: how do I crack an egg with one hand? I keep failing")[0].overlap == 1.0
    assert index.matches("prompt", "how do I crack an egg with two hands") == []
    tiny = _index(text="Hi there")  # fewer than min_words: not indexed (it would match everything)
    assert tiny.examples == []


def test_decontaminator_removes_above_threshold_only():
    index = _index()
    words = EVAL.split()
    partial = " ".join(words[:13])  # overlap 1/8
    report_only = Decontaminator(index)
    assert report_only.check(1, {"prompt": EVAL})[0] is False
    strict = Decontaminator(index, remove=True, remove_threshold=0.5)
    drop_full, records = strict.check(1, {"prompt": "hello", "response": EVAL})
    drop_partial, _ = strict.check(2, {"prompt": partial})
    drop_clean, none = strict.check(3, {"prompt": "nothing to see here"})
    assert (drop_full, drop_partial, drop_clean) == (True, False, False)
    assert records == [{"line": 1, "eval_set": "heldout", "eval_id": "petra-1", "field": "response",
                        "matched_ngrams": 8, "eval_ngrams": 8, "overlap": 1.0, "removed": True}]
    report = strict.report()
    assert (report["rows_checked"], report["rows_contaminated"], report["rows_removed"]) == (3, 2, 1)
    assert report["eval_sets"]["heldout"]["contaminated_rows"] == 2
    assert report["eval_sets"]["heldout"]["contaminated_example_ids"] == ["petra-1"]


def test_fields_restrict_the_check():
    decon = Decontaminator(_index(), fields=("prompt",))
    assert decon.check(1, {"prompt": "hi", "response": EVAL}) == (False, [])


def test_builtin_suites_and_user_file(tmp_path):
    from posttrain.eval.suites import BUILTIN_SUITES

    first = json.loads(BUILTIN_SUITES["refusal"].read_text().splitlines()[0])
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"id": "m1", "prompt": EVAL}) + "\n")
    index = build_index(["refusal"], [str(own)])
    assert set(index.sets) == {"refusal", "mine"}
    assert index.sets["mine"]["examples"] == 1
    hits = {(m.eval_set, m.eval_id) for m in index.matches("prompt", f"{first['prompt']} and also {EVAL}")}
    assert hits == {("refusal", first["id"]), ("mine", "m1")}
    full = build_index()
    assert set(full.sets) == set(BUILTIN_SUITES) and all(v["examples"] > 0 for v in full.sets.values())


def test_unknown_suite_and_bad_eval_file(tmp_path):
    from posttrain.data.schema import DataError

    with pytest.raises(ValueError, match="unknown eval suite 'mmlu'"):
        build_index(["mmlu"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"id": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'prompt': missing"):
        build_index([], [str(bad)])
