import pytest

from posttrain.verifiers.constraints import (CONSTRAINTS, check_constraint, check_constraints,
                                                    constraints_from_metadata, validate_constraint)
from posttrain.verifiers.counting import paragraphs, sentences, words

# kind -> (args, responses that pass, responses that fail). Every kind in CONSTRAINTS must appear here.
CASES = {
    "lowercase": ({}, ["it is paris.", "the answer is 42!"], ["It is paris.", "42", "IT IS PARIS."]),
    "all_caps": ({}, ["IT IS PARIS.", "THE ANSWER IS 42!"], ["IT IS Paris.", "42"]),
    "uppercase": ({}, ["HELLO WORLD"], ["Hello World"]),
    "capital_word_frequency": ({"n": "2", "relation": "at least"}, ["THE answer IS here", "NASA AND ESA"],
                               ["The answer IS here", "no caps at all"]),
    "word_count": ({"min": 2, "max": 4}, ["two words", "a b c d", "- one two"], ["one", "one two three four five"]),
    "exact_word_count": ({"n": "5"}, ["The capital is New Delhi.", "It is 3.5 meters — roughly."],
                         ["The capital is Delhi.", "The capital is New Delhi indeed."]),
    "sentence_count": ({"max": 2}, ["One. Two!", "Pi is 3.14 today."], ["One. Two. Three?", "a\nb\nc"]),
    "paragraph_count": ({"n": 2}, ["First.\n\nSecond.", "First\n***\nSecond", "A\nB\n\n\n\nC"],
                        ["Only one.", "One\n\nTwo\n\nThree", "One\n***\nTwo\n***\nThree"]),
    "paragraph_first_word": ({"n": 2, "nth": 2, "word": "Then"}, ["First.\n\nThen second.", "A\n\n\"then,\" b"],
                             ["First.\n\nNext second.", "Then.\n\nFirst.", "A\n\nThen\n\nC", "A\n\nThenceforth b"]),
    "constrained_response": ({}, ["My answer is yes.", "Hmm. My answer is maybe. Sorry."],
                             ["Yes.", "my answer is no.", "My answer is yes"]),
    "include_keywords": ({"keywords": ["cat", "blue sky"]}, ["The Cat sat under a blue  sky."],
                         ["The category of blue sky.", "The cat sat."]),
    "exclude_keywords": ({"keywords": ["cat"]}, ["A category error.", "Dogs only."], ["My CAT is here.", "cat"]),
    "keyword_frequency": ({"keyword": "run", "n": 2, "relation": "less than"}, ["I run daily.", "Running is fun."],
                          ["Run, run, run!", "run and run"]),
    "letter_frequency": ({"letter": "z", "n": 3, "relation": "at_least"}, ["Zebras zigzag.", "zzz"],
                         ["Zebras run.", "no letter here"]),
    "no_commas": ({}, ["No commas here."], ["Well, yes.", "a,b"]),
    "forbidden_characters": ({"chars": "#@"}, ["Plain text."], ["Use #tags.", "mail me @ home"]),
    "starts_with_phrase": ({"phrase": "Sure!"}, ["Sure! It is Paris.", "  Sure! Yes"],
                           ["It is Paris. Sure!", "Sure!", "sure! It is Paris."]),
    "ends_with_phrase": ({"phrase": "Hope this helps."}, ["It is 8. Hope this helps.", "8 Hope this helps.  "],
                         ["Hope this helps. It is 8.", "Hope this helps.", "It is 8. hope this helps."]),
    "end_checker": ({"phrase": "Any questions?"}, ["Done. Any questions?"], ["Any questions? Done."]),
    "double_quotes": ({}, ['"It is Tokyo."', "“It is Tokyo.”", ' "x" '], ['"It is Tokyo.', "'It is Tokyo.'", '""']),
    "wrapped_in_quotes": ({}, ['"Yes."'], ["Yes."]),
    "exclamation_sentence": ({}, ["The opposite of heavy is light!", "Pi is 3.14!"],
                             ["Yes. The opposite is light!", "It is light.", "It is\nlight!", "Wow! It is light!"]),
    "valid_json": ({}, ['{"a": [1, 2]}', "[1, 2]", '```json\n{"a": 1}\n```'], ["{'a': 1}", '{"a": 1} trailing']),
    "json_answer": ({}, ['{"answer": "Paris"}', '{"answer": 42}', '```json\n{"answer": 1}\n```'],
                    ['{"result": "Paris"}', '{"answer": "Paris", "why": "x"}', '{"answer": ""}', "answer: Paris",
                     '["answer"]']),
    "bullet_list": ({"n": 3}, ["Items:\n- a\n- b\n* c", "  - a\n  - b\n  - c"],
                    ["- a\n- b", "1. a\n2. b\n3. c", "- a\n- b\n- c\n- d", "*a*\n*b*\n*c*", "-a\n-b\n-c"]),
    "bullet_list_2": ({}, ["- Word: laugh\n- Opposite: cry"],
                      ["* Word: laugh\n* Opposite: cry", "1. Word: laugh\n2. Opposite: cry", "- Given: 6; Answer: 42"]),
    "sections": ({"n": 2, "marker": "Section"},
                 ["Section 1\nIntro\nSection 2\nBody", "## Section 1\na\n**Section 2**\nb"],
                 ["Section 1\nIntro", "Section 1\nSection 2\nSection 3", "SECTION 1\nSECTION 2",
                  "Section one\nSection two"]),
    "title": ({}, ["<<A Poem>>\nRoses are red.", "Title: <<Hi>> there"], ["<<>>\ntext", "<A Poem>", "<<split\nline>>"]),
    "placeholders": ({"n": 2}, ["Send to [name] at [address].", "[a][b][c]"], ["Send to [name].", "[ ] and []"]),
    "postscript": ({}, ["Hello.\n\nP.S. See you.", "Hi\n  p.s. later"], ["Hello. P.S. inline", "Hello\nP.S.", "Hi"]),
    "highlighted_sections": ({"n": 2}, ["Some *important* and **bold** text", "*a* *b*"],
                             ["Only *one* here", "* a bullet\n* another", "** not bold **", "a * b * c"]),
    "ascii_only": ({}, ["Plain English — fine 😀.", "123"], ["Un café.", "Привет"]),
    "repeat_prompt": ({"prompt_to_repeat": "What is 2+2?"}, ["What is 2+2?  It is 4.", "what is  2+2? 4"],
                      ["It is 4. What is 2+2?", "What is 2+2?"]),
    "two_responses": ({}, ["Paris.\n******\nThe capital is Paris."], ["Paris.", "Paris.\n******\nParis.",
                                                                      "a\n******\nb\n******\nc", "******\nb"]),
}


def test_every_kind_has_cases_and_there_are_enough_kinds():
    assert set(CASES) == set(CONSTRAINTS)
    distinct = {spec.fn for spec in CONSTRAINTS.values()}
    assert len(distinct) >= 24
    assert all(spec.name == name and spec.description for name, spec in CONSTRAINTS.items())
    assert all(spec.fn.__doc__ for spec in CONSTRAINTS.values())


@pytest.mark.parametrize("kind", sorted(CASES))
def test_pass_and_fail(kind):
    args, good, bad = CASES[kind]
    for text in good:
        assert check_constraint(text, kind, args), (kind, text)
    for text in bad:
        assert not check_constraint(text, kind, args), (kind, text)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_empty_response_fails_every_kind(kind):
    assert not check_constraint("  \n", kind, CASES[kind][0])


def test_counting_definitions():
    assert words("- It's 3.5 m — ok!") == ["It's", "3.5", "m", "ok!"]
    assert sentences("Pi is 3.14. Done! Really?\nNext line") == ["Pi is 3.14.", "Done!", "Really?", "Next line"]
    assert sentences('He said "hi." Then left...') == ['He said "hi."', "Then left..."]
    assert paragraphs("a\nb\n\n  \n***\nc\n\n") == ["a\nb", "c"]


def test_relations_and_bounds():
    assert check_constraint("AB CD", "capital_word_frequency", {"n": 2, "relation": "at most"})
    assert not check_constraint("AB CD EF", "capital_word_frequency", {"n": 2, "relation": "at most"})
    assert check_constraint("AB CD EF", "capital_word_frequency", {"n": 2, "relation": "more than"})
    assert check_constraint("AB CD", "capital_word_frequency", {"n": 2, "relation": "Exactly"})
    assert check_constraint("AB", "capital_word_frequency", {"n": 1})  # relation defaults to "at least"
    assert check_constraint("one two three", "word_count", {"min": 3})
    assert not check_constraint("one two three", "word_count", {"max": 2})
    assert check_constraint("One. Two.", "sentence_count", {"min": "2", "max": "2"})


def test_paragraph_divider_named_by_the_prompt():
    divided = "First part.\n***\nSecond part."
    assert check_constraint(divided, "paragraph_count", {"n": 2, "divider": "***"})
    assert check_constraint("First.\n\n***\n\nSecond.\n  ***  \nThird.", "paragraph_count", {"n": 3, "divider": "***"})
    # a blank line alone does not divide when the divider is named; without it, it does
    assert not check_constraint("First.\n\nSecond.", "paragraph_count", {"n": 2, "divider": "***"})
    assert check_constraint("First.\n\nSecond.", "paragraph_count", {"n": 2})
    assert not check_constraint("A\n***\nB\n\nC", "paragraph_count", {"n": 3, "divider": "***"})
    assert not check_constraint("A\n***\nB\n\nC", "paragraph_count", {"n": 2, "divider": "***"})
    assert not check_constraint("***\nA\n***\nB", "paragraph_count", {"n": 2, "divider": "***"})  # empty first part
    assert not check_constraint("A *** B", "paragraph_count", {"n": 2, "divider": "***"})  # not a line of its own


def test_aliases_share_rules():
    assert CONSTRAINTS["uppercase"].fn is CONSTRAINTS["all_caps"].fn
    assert CONSTRAINTS["end_checker"].fn is CONSTRAINTS["ends_with_phrase"].fn
    assert CONSTRAINTS["wrapped_in_quotes"].fn is CONSTRAINTS["double_quotes"].fn


def test_args_are_coerced():
    assert validate_constraint("exact_word_count", {"n": "5"}) == {"n": 5}
    assert validate_constraint("exact_word_count", {"n": 5.0}) == {"n": 5}
    assert validate_constraint("include_keywords", {"keywords": "cat"}) == {"keywords": ["cat"]}
    assert validate_constraint("keyword_frequency", {"keyword": "a", "n": "1", "relation": "LESS_THAN"}) == {
        "keyword": "a", "n": 1, "relation": "less than"}
    assert validate_constraint("lowercase", None) == {}
    assert validate_constraint("bullet_list", {"n": 2, "markers": None}) == {"n": 2}  # None: not given


@pytest.mark.parametrize("kind, args, message", [
    ("nope", {}, "unknown constraint kind 'nope'; known kinds: lowercase"),
    ("exact_word_count", {}, "constraint 'exact_word_count': missing required arg 'n'"),
    ("exact_word_count", {"n": "five"},
     "constraint 'exact_word_count': arg 'n' must be a non-negative integer, got 'five'"),
    ("exact_word_count", {"n": -1}, "arg 'n' must be a non-negative integer"),
    ("exact_word_count", {"n": True}, "arg 'n' must be a non-negative integer"),
    ("exact_word_count", {"n": 3, "m": 1}, "constraint 'exact_word_count': unknown arg 'm' \\(takes: n\\)"),
    ("lowercase", {"n": 1}, "unknown arg 'n' \\(takes: no args\\)"),
    ("lowercase", ["n"], "constraint 'lowercase': args must be an object"),
    ("ends_with_phrase", {"phrase": "  "}, "arg 'phrase' must be a non-empty string"),
    ("include_keywords", {"keywords": []}, "arg 'keywords' must be a non-empty list"),
    ("include_keywords", {"keywords": ["a", 3]}, "arg 'keywords' must be a non-empty list"),
    ("letter_frequency", {"letter": "ab", "n": 1}, "arg 'letter' must be a single letter"),
    ("keyword_frequency", {"keyword": "a", "n": 1, "relation": "about"}, "arg 'relation' must be one of 'at least'"),
    ("word_count", {}, "constraint 'word_count': needs at least one of args 'min', 'max'"),
    ("word_count", {"min": 5, "max": 2}, "arg 'min' \\(5\\) is greater than arg 'max' \\(2\\)"),
])
def test_bad_specs_raise_one_line(kind, args, message):
    with pytest.raises(ValueError, match=message) as info:
        validate_constraint(kind, args)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        check_constraint("some text", kind, args)


def test_check_constraints_reports_each_and_keeps_bad_specs_as_errors():
    results = check_constraints("it is paris.", [{"kind": "lowercase"}, {"kind": "no_commas", "args": {}},
                                                 {"kind": "exact_word_count", "args": {"n": "4"}},
                                                 {"kind": "bogus", "args": {}}])
    assert [(r.name, r.passed) for r in results] == [("lowercase", True), ("no_commas", True),
                                                      ("exact_word_count", False), ("bogus", False)]
    assert results[2].args == {"n": "4"} and results[2].error is None
    assert results[3].error.startswith("unknown constraint kind 'bogus'")


def test_constraints_from_metadata_reads_both_forms():
    assert constraints_from_metadata({"prompt": "x"}) == []
    assert constraints_from_metadata({"constraint": "exact_word_count", "constraint_args": {"n": "3"}}) == [
        {"kind": "exact_word_count", "args": {"n": 3}}]
    assert constraints_from_metadata({"constraint": "no_commas", "constraint_args": {}}) == [
        {"kind": "no_commas", "args": {}}]
    both = constraints_from_metadata({"constraint": "no_commas", "constraints": [
        {"kind": "lowercase"}, {"kind": "bullet_list", "args": {"n": "2"}}]})
    assert both == [{"kind": "lowercase", "args": {}}, {"kind": "bullet_list", "args": {"n": 2}},
                    {"kind": "no_commas", "args": {}}]


@pytest.mark.parametrize("metadata, message", [
    ({"constraints": "lowercase"}, "metadata 'constraints' must be a list"),
    ({"constraints": [{"args": {}}]}, "metadata 'constraints\\[0\\]' must be"),
    ({"constraints": [{"kind": "lowercase", "arg": {}}]}, "metadata 'constraints\\[0\\]' must be"),
    ({"constraints": [{"kind": "sections", "args": {"n": "x"}}]}, "constraint 'sections': arg 'n'"),
    ({"constraint": "nope"}, "unknown constraint kind 'nope'"),
])
def test_constraints_from_metadata_errors(metadata, message):
    with pytest.raises(ValueError, match=message):
        constraints_from_metadata(metadata)
