"""IFEval instruction ids and RLVR-IFeval ground truths mapped onto constraint kinds."""

import json

import pytest

from posttrain.verifiers.constraints import CONSTRAINTS, check_constraints
from posttrain.verifiers.ifeval import (IFEVAL_IDS, IFEVAL_KINDS, RLVR_FUNCS, UNSUPPORTED_IDS, IFEvalError,
                                               ifeval_constraint, ifeval_constraints, read_ifeval)

# id -> (kwargs as IFEval writes them, the constraint we check, a reply that passes, a reply that fails)
CASES = {
    "keywords:existence": ({"keywords": ["hammock", "tea"]}, ("include_keywords", {"keywords": ["hammock", "tea"]}),
                           "Tea in a hammock.", "A hammock only."),
    "keywords:frequency": ({"keyword": "wave", "frequency": 2, "relation": "less than"},
                           ("keyword_frequency", {"keyword": "wave", "n": 2, "relation": "less than"}),
                           "One wave.", "Wave after wave."),
    "keywords:forbidden_words": ({"forbidden_words": ["easy"]}, ("exclude_keywords", {"keywords": ["easy"]}),
                                 "It takes care.", "It is easy."),
    "keywords:letter_frequency": ({"letter": "b", "let_frequency": 3, "let_relation": "at least"},
                                  ("letter_frequency", {"letter": "b", "n": 3, "relation": "at least"}),
                                  "Big bold bee.", "A big dog."),
    "length_constraints:number_sentences": ({"num_sentences": 2, "relation": "less than"},
                                            ("sentence_count", {"max": 1}), "One sentence.", "One. Two."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, ("paragraph_count", {"n": 2}),
                                             "A\n***\nB", "A"),
    "length_constraints:number_words": ({"num_words": 3, "relation": "at least"}, ("word_count", {"min": 3}),
                                        "one two three", "one two"),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "suddenly"},
        ("paragraph_first_word", {"n": 2, "nth": 2, "word": "suddenly"}), "Calm.\n\nSuddenly, noise.",
        "Calm.\n\nThen noise."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, ("placeholders", {"n": 2}),
                                               "[a] and [b]", "[a] only"),
    "detectable_content:postscript": ({"postscript_marker": "P.P.S"}, ("postscript", {"marker": "P.P.S"}),
                                      "Hi.\nP.P.S. bye", "Hi. bye"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, ("bullet_list", {"n": 2}), "* a\n* b", "* a"),
    "detectable_format:constrained_response": ({}, ("constrained_response", {}), "My answer is no.", "No."),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 1}, ("highlighted_sections", {"n": 1}),
                                                      "A *key* idea", "No highlight"),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            ("sections", {"n": 2, "marker": "Section"}),
                                            "Section 1\na\nSection 2\nb", "Section 1\na"),
    "detectable_format:json_format": ({}, ("valid_json", {}), '{"a": 1}', "a: 1"),
    "detectable_format:title": ({}, ("title", {}), "<<T>>\nbody", "T\nbody"),
    "combination:two_responses": ({}, ("two_responses", {}), "a\n******\nb", "a"),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Say hi."}, ("repeat_prompt", {"prompt_to_repeat": "Say hi."}),
                                  "Say hi. Hi!", "Hi!"),
    "startend:end_checker": ({"end_phrase": "Bye now."}, ("ends_with_phrase", {"phrase": "Bye now."}),
                             "Done. Bye now.", "Bye now. Done."),
    "startend:quotation": ({}, ("double_quotes", {}), '"Hi there."', "Hi there."),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"},
                                           ("capital_word_frequency", {"n": 2, "relation": "at least"}),
                                           "VERY BIG news", "Very BIG news"),
    "change_case:english_capital": ({}, ("all_caps", {}), "HELLO THERE", "Hello there"),
    "change_case:english_lowercase": ({}, ("lowercase", {}), "hello there", "Hello there"),
    "punctuation:no_comma": ({}, ("no_commas", {}), "No commas here.", "Well, no."),
}


def test_every_supported_id_has_a_case_and_maps_to_a_known_kind():
    assert set(CASES) == set(IFEVAL_IDS) and len(IFEVAL_IDS) == 24
    assert set(IFEVAL_KINDS.values()) <= set(CONSTRAINTS)
    assert not set(UNSUPPORTED_IDS) & set(IFEVAL_IDS)
    assert {ifeval_id for ifeval_id, _, _ in RLVR_FUNCS.values()} <= set(IFEVAL_IDS) | set(UNSUPPORTED_IDS)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_each_id_converts_and_checks(instruction_id):
    kwargs, (kind, args), good, bad = CASES[instruction_id]
    constraint = ifeval_constraint(instruction_id, kwargs)
    assert constraint == {"kind": kind, "args": args}
    assert [r.passed for r in check_constraints(good, [constraint])] == [True]
    assert [r.passed for r in check_constraints(bad, [constraint])] == [False]


@pytest.mark.parametrize("relation, bounds", [("less than", {"max": 59}), ("at least", {"min": 60}),
                                              ("at most", {"max": 60}), ("more than", {"min": 61}),
                                              ("exactly", {"min": 60, "max": 60}), (None, {"min": 60})])
def test_count_relations_become_bounds(relation, bounds):
    assert ifeval_constraint("length_constraints:number_words", {"num_words": 60, "relation": relation}) == {
        "kind": "word_count", "args": bounds}


def test_columnar_nulls_are_dropped():
    """Parquet copies of IFEval give every kwargs object every argument name, null where unused."""
    kwargs = {"num_highlights": None, "relation": None, "num_words": 300, "keywords": None, "end_phrase": None}
    kwargs["relation"] = "at least"
    assert ifeval_constraint("length_constraints:number_words", kwargs) == {"kind": "word_count",
                                                                          "args": {"min": 300}}


@pytest.mark.parametrize("instruction_id, kwargs, message", [
    ("language:response_language", {"language": "fr"}, "'language:response_language' has no verifier"),
    ("detectable_format:made_up", {}, "'detectable_format:made_up' is not a known IFEval instruction id"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "around"}, None),  # RLVR's; allowed
    ("length_constraints:number_words", {"num_words": 5, "relation": "roughly"}, "relation must be one of"),
    ("length_constraints:number_words", {"relation": "at least"}, "needs kwarg 'num_words'"),
    ("punctuation:no_comma", {"num_words": 3}, r"unknown kwarg .num_words. \(takes: no kwargs\)"),
    ("keywords:existence", {"keywords": []}, "arg 'keywords' must be a non-empty list"),
    ("detectable_format:number_bullet_lists", "3", "kwargs must be an object"),
])
def test_bad_instructions_name_the_id(instruction_id, kwargs, message):
    if message is None:
        assert ifeval_constraint(instruction_id, kwargs) == {"kind": "word_count", "args": {"min": 4, "max": 6}}
        return
    with pytest.raises(IFEvalError, match=message) as e:
        ifeval_constraint(instruction_id, kwargs)
    assert instruction_id in str(e.value)
    assert e.value.unsupported == ("no verifier" in message or "not a known" in message)


def test_read_ifeval_layouts():
    assert read_ifeval({"prompt": "p"}) is None
    assert read_ifeval({"messages": [], "ground_truth": "42"}) is None  # a math row's answer: not IFEval
    assert read_ifeval({"ground_truth": "{not json"}) is None
    google = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert read_ifeval(google) == ("instruction_id_list", ["punctuation:no_comma"], [{}])
    assert read_ifeval({"instruction_id_list": ["punctuation:no_comma"]}) == (
        "instruction_id_list", ["punctuation:no_comma"], [{}])  # kwargs may be left out
    rlvr = {"ground_truth": json.dumps({"func_name": "verify_keyword_frequency", "N": 3, "word": "sea",
                                        "quantifier": None, "end_phrase": None})}
    assert read_ifeval(rlvr) == ("ground_truth", ["keywords:frequency"],
                                 [{"relation": "exactly", "keyword": "sea", "frequency": 3}])
    listed = {"ground_truth": "[{'instruction_id': ['punctuation:no_comma', 'startend:quotation'], "
                              "'kwargs': [None, {}]}]"}  # later allenai sets: a Python literal
    assert read_ifeval(listed) == ("ground_truth", ["punctuation:no_comma", "startend:quotation"], [None, {}])
    with pytest.raises(IFEvalError, match="one kwargs object per instruction id"):
        read_ifeval({"instruction_id_list": ["a", "b"], "kwargs": [{}]})
    with pytest.raises(IFEvalError, match="non-empty list"):
        read_ifeval({"instruction_id_list": []})


def test_rlvr_functions_keep_their_own_semantics():
    def convert(gt):
        return ifeval_constraints(*read_ifeval({"ground_truth": json.dumps(gt)}))[0]

    # open-instruct counts keywords and letters exactly, and reads "around" as +-10% (>= 1) words, +-1 sentence
    assert convert({"func_name": "verify_letter_frequency", "letter": "z", "N": 2}) == [
        {"kind": "letter_frequency", "args": {"letter": "z", "n": 2, "relation": "exactly"}}]
    assert convert({"func_name": "validate_word_constraint", "N": 50, "quantifier": "around"}) == [
        {"kind": "word_count", "args": {"min": 45, "max": 55}}]
    assert convert({"func_name": "verify_sentence_constraint", "N": 4, "quantifier": "around"}) == [
        {"kind": "sentence_count", "args": {"min": 3, "max": 5}}]
    assert convert({"func_name": "validate_choice", "options": ["yes", "no"]}) == [
        {"kind": "constrained_response", "args": {"options": ["yes", "no"]}}]
    with pytest.raises(IFEvalError, match="func_name 'validate_vibes' is not a known RLVR-IFeval function"):
        convert({"func_name": "validate_vibes"})


def test_skip_drops_only_unsupported_ids():
    ids = ["punctuation:no_comma", "language:response_language", "keywords:key_sentences"]
    constraints, skipped = ifeval_constraints("instruction_id_list", ids, [{}, {"language": "de"}, {}],
                                              unsupported="skip")
    assert constraints == [{"kind": "no_commas", "args": {}}]
    assert skipped == ["language:response_language", "keywords:key_sentences"]
    with pytest.raises(IFEvalError, match="unknown kwarg"):  # a malformed kwarg is an error even when skipping
        ifeval_constraints("instruction_id_list", ["punctuation:no_comma"], [{"x": 1}], unsupported="skip")


def test_judge_and_rl_read_ifeval_rows_through_the_prompt_reader(tmp_path):
    """generate/judge/grpo read prompts with ``load_examples(..., "prompt")`` and score with ``VerifierJudge``:
    an IFEval row's instructions reach the verifier as constraints."""
    from posttrain.data.layouts import load_examples
    from posttrain.judges.verifier import VerifierJudge

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"key": 5, "prompt": "Two bullets, no commas.",
                                "instruction_id_list": ["detectable_format:number_bullet_lists",
                                                        "punctuation:no_comma"],
                                "kwargs": [{"num_bullets": 2}, {}]}) + "\n")
    (ex,) = load_examples(str(path), "prompt")
    judge = VerifierJudge()
    assert judge.score(ex.prompt, "* one\n* two", ex.metadata).value == 1.0
    assert judge.score(ex.prompt, "* one\n* two, three", ex.metadata).value == 0.5
