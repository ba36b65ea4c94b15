import pytest

from posttrain.judges.types import ScoringJudge
from posttrain.judges.verifier import VerifierJudge

PROMPT = [{"role": "user", "content": "What is 6 times 7? Answer in all lowercase."}]


def test_is_a_scoring_judge():
    judge = VerifierJudge()
    assert isinstance(judge, ScoringJudge) and judge.name == "verifier"


def test_shipped_single_constraint_form():
    judge = VerifierJudge()
    meta = {"constraint": "ends_with_phrase", "constraint_args": {"phrase": "Hope this helps."}}
    good = judge.score(PROMPT, "The answer is 8. Hope this helps.", meta)
    bad = judge.score(PROMPT, "Hope this helps. The answer is 8.", meta)
    assert (good.value, good.passed) == (1.0, True) and (bad.value, bad.passed) == (0.0, False)
    assert good.details["constraints"] == [{"name": "ends_with_phrase", "args": {"phrase": "Hope this helps."},
                                            "passed": True, "error": None}]


def test_constraints_fraction_and_answer_mean():
    meta = {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"},
                            {"kind": "exact_word_count", "args": {"n": "4"}},
                            {"kind": "ends_with_phrase", "args": {"phrase": "ok"}}], "answer": "42"}
    score = VerifierJudge().score(PROMPT, "the answer is 42.", meta)
    # constraints: 3 of 4 pass (not ending with "ok") -> 0.75; answer right -> 1.0; mean 0.875
    assert score.value == pytest.approx(0.875) and score.passed is False
    assert [c["passed"] for c in score.details["constraints"]] == [True, True, True, False]
    assert score.details["answer"] == {"match": "math", "reference": "42", "passed": True, "extracted": "42"}
    wrong = VerifierJudge().score(PROMPT, "answer is 41. ok", meta)
    assert wrong.value == pytest.approx(0.5) and wrong.passed is False  # constraints 4/4, answer 0


def test_all_components_together():
    meta = {"constraint": "ends_with_phrase", "constraint_args": {"phrase": "Done."}, "answer": "3",
            "tests": "assert add(1, 2) == 3\n"}
    response = "```python\ndef add(a, b):\n    return a + b\n```\nThe sum of 1 and 2 is 3. Done."
    score = VerifierJudge(code_time_limit_s=2).score(PROMPT, response, meta)
    assert (score.value, score.passed) == (1.0, True)
    assert set(score.details) == {"constraints", "answer", "tests"} and score.details["tests"]["tests_run"] == 1
    broken = VerifierJudge(code_time_limit_s=2).score(PROMPT, response.replace("a + b", "a - b"), meta)
    assert broken.value == pytest.approx(2 / 3) and broken.passed is False
    assert broken.details["tests"]["passed"] is False


def test_exact_and_regex_match():
    judge = VerifierJudge()
    assert judge.score(PROMPT, " Paris ", {"answer": "Paris", "match": "exact"}).passed
    assert not judge.score(PROMPT, "paris", {"answer": "Paris", "match": "exact"}).passed
    assert judge.score(PROMPT, "paris", {"answer": "Paris", "match": "exact",
                                         "match_options": {"ignore_case": True}}).passed
    assert judge.score(PROMPT, "It is 42.", {"answer": r"\b42\b", "match": "regex"}).passed
    assert not judge.score(PROMPT, "It is 42.", {"answer": r"\d+", "match": "regex",
                                                 "match_options": {"full": True}}).passed
    assert judge.score(PROMPT, "It is 42", {"answer": 42}).passed  # a numeric reference from JSON


@pytest.mark.parametrize("metadata, message", [
    ({"category": "x"}, "metadata has nothing to verify: .*got keys: category"),
    ({}, "got keys: none"),
    ({"constraints": []}, "metadata has nothing to verify"),
    ({"constraint": "nope"}, "unknown constraint kind 'nope'"),
    ({"constraint": "exact_word_count", "constraint_args": {}}, "missing required arg 'n'"),
    ({"answer": "4", "match": "fuzzy"}, "metadata 'match' must be one of math, exact, regex"),
    ({"answer": "4", "match": "exact", "match_options": {"full": True}},
     "'match_options' for match 'exact' takes only"),
    ({"answer": ["4"]}, "metadata 'answer' must be a string or number"),
    ({"tests": "  "}, "metadata 'tests' must be non-empty"),
])
def test_bad_metadata_raises(metadata, message):
    with pytest.raises(ValueError, match=message):
        VerifierJudge().score(PROMPT, "some response", metadata)


def test_components_pick_what_is_checked():
    """A row with a format constraint and an answer, judged on the format only (and the other way round)."""
    import pytest

    from posttrain.judges.run import JudgeConfigError, build_member

    md = {"constraints": [{"kind": "lowercase", "args": {}}], "answer": r"\bparis\b", "match": "regex",
          "match_options": {"ignore_case": True}}
    prompt = [{"role": "user", "content": "Capital of France? Answer in lowercase."}]
    both = VerifierJudge().score(prompt, "lyon", md)
    assert both.value == 0.5 and both.passed is False and set(both.details) == {"constraints", "answer"}
    fmt = VerifierJudge(components=["constraints"]).score(prompt, "lyon", md)
    assert fmt.value == 1.0 and fmt.passed is True and set(fmt.details) == {"constraints"}
    content = VerifierJudge(components=("answer",)).score(prompt, "PARIS", md)
    assert content.value == 1.0 and set(content.details) == {"answer"}
    with pytest.raises(ValueError, match="nothing to verify"):
        VerifierJudge(components=["tests"]).score(prompt, "paris", md)
    with pytest.raises(JudgeConfigError, match=r"judges\[0\] \(verifier\): verifier components must be"):
        build_member({"type": "verifier", "components": ["format"]})


def test_code_sandbox_setting_is_checked_at_construction():
    with pytest.raises(ValueError, match="code sandbox must be one of auto, bwrap, unsafe"):
        VerifierJudge(code_sandbox="nope")
    VerifierJudge(code_sandbox="nope", components=["constraints"])  # no code is run: the setting is not used


def test_style_penalty_lowers_faulty_responses_exactly():
    judge = VerifierJudge(style_penalty=0.5)
    meta = {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"}]}
    clean = judge.score(PROMPT, "the answer is forty two.", meta)
    assert (clean.value, clean.passed, clean.details["style"]) == (1.0, True, [])
    quoted = judge.score(PROMPT, '"the answer is forty two."', meta)  # both constraints pass, quotes unasked
    assert (quoted.value, quoted.passed, quoted.details["style"]) == (0.5, False, ["unrequested_quotes"])
    loop = judge.score(PROMPT, "THE SKY IS BLUE, TRULY. THE SKY IS BLUE, TRULY.", meta)
    # constraints 0 of 2; it repeats a sentence and shouts: one penalty whatever the number of faults
    assert loop.value == pytest.approx(-0.5) and loop.passed is False
    assert loop.details["style"] == ["repetition", "unrequested_caps"]
    # asked-for quotes are no fault, even when only the answer is checked
    asked = {"constraints": [{"kind": "wrapped_in_quotes"}], "answer": "42"}
    only_answer = VerifierJudge(style_penalty=0.5, components=["answer"])
    assert only_answer.score(PROMPT, '"42"', asked).value == 1.0
    # off by default: the faulty response scores as before and no style detail is written
    plain = VerifierJudge().score(PROMPT, '"the answer is forty two."', meta)
    assert (plain.value, plain.passed, "style" in plain.details) == (1.0, True, False)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5"])
def test_style_penalty_must_be_in_unit_interval(bad):
    with pytest.raises(ValueError, match=r"style_penalty must be a number in \[0, 1\]"):
        VerifierJudge(style_penalty=bad)
