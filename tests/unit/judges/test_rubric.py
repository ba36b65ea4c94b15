"""The rubric judge without an LLM: the file format and its errors, verifier rules combined with their weights,
rows a verifier rule cannot check, the grade parser, per-rule statistics, and the judge-stage config checks.
(LLM rules against a scripted endpoint: tests/integration/test_rubric.py.)"""

from __future__ import annotations

import json
import math

import pytest

from posttrain.judges.run import JudgeConfigError, build_member, check_judge_spec, judge_candidates
from posttrain.judges.prompts import parse_grade, rule_messages
from posttrain.judges.rubric import RubricError, RubricJudge, RubricRowError, Rule, load_rubric, rule_statistics
from posttrain.judges.types import Score

P = [{"role": "user", "content": "Say hi."}]
TWO = {"constraints": [{"kind": "lowercase", "args": {}}, {"kind": "no_commas", "args": {}}]}

VERIFIER_ONLY = """\
- {id: lower, text: "All lowercase.", weight: 3, verifier: {kind: lowercase}}
- {id: short, text: "At most 3 words.", verifier: {kind: word_count, args: {max: "3"}}}
- {id: asked, text: "Obeys the prompt's constraints.", weight: 2, verifier: constraints}
"""


def write(tmp_path, text, name="rubric.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_rubric_reads_rules_defaults_and_coerces_constraint_args(tmp_path):
    path = write(tmp_path, VERIFIER_ONLY)
    assert load_rubric(path) == [
        Rule("lower", "All lowercase.", 3.0, {"kind": "lowercase", "args": {}}),
        Rule("short", "At most 3 words.", 1.0, {"kind": "word_count", "args": {"max": 3}}),
        Rule("asked", "Obeys the prompt's constraints.", 2.0, "constraints")]
    # the mapping form and JSON are the same rubric
    rules = [{"id": "lower", "text": "All lowercase.", "weight": 3, "verifier": {"kind": "lowercase"}}]
    as_json = write(tmp_path, json.dumps({"rules": rules}), "rubric.json")
    assert load_rubric(as_json) == load_rubric(path)[:1]


def test_the_shipped_example_rubric_loads():
    from pathlib import Path

    rules = load_rubric(Path(__file__).resolve().parents[3] / "examples" / "rubric.yaml")
    assert any(r.verifier is None for r in rules) and any(r.verifier is not None for r in rules)


@pytest.mark.parametrize("text, message", [
    ("- {id: a, text: t, weight: -1}\n", "rules[0]: field 'weight': must be a positive number, got -1"),
    ("- {id: a, text: t}\n- {id: b, text: t, weight: true}\n",
     "rules[1]: field 'weight': must be a positive number, got True"),
    ("- {id: a, text: t}\n- {id: a, text: u}\n", "rules[1]: field 'id': 'a' repeats the id of rules[0]"),
    ("- {id: 'two words', text: t}\n",
     "rules[0]: field 'id': must be a name of letters, digits, _ . - (no spaces), got 'two words'"),
    ("- {text: t}\n", "rules[0]: field 'id': must be a name of letters, digits, _ . - (no spaces), got None"),
    ("- {id: a, text: '  '}\n", "rules[0]: field 'text': must be a non-empty string, got '  '"),
    ("- {id: a, text: t, wieght: 2}\n", "rules[0]: field 'wieght': unknown field; expected id, text, weight, verifier"),
    ("- {id: a, text: t, verifier: sometimes}\n",
     "rules[0]: field 'verifier': expected one of row, constraints, answer, tests or a constraint {kind: K, "
     "args: {...}}, got 'sometimes'"),
    ("- {id: a, text: t, verifier: {kind: word_count, max: 3}}\n",
     "rules[0]: field 'verifier': a constraint is {kind: K, args: {...}}, got {'kind': 'word_count', 'max': 3}"),
    ("- {id: a, text: t, verifier: {kind: word_count, args: {max: lots}}}\n",
     "rules[0]: field 'verifier': constraint 'word_count': arg 'max' must be a non-negative integer, got 'lots'"),
    ("- {id: a, text: t}\n- just a string\n",
     "rules[1]: expected a mapping with id, text, weight, verifier, got 'just a string'"),
    ("[]\n", "the rubric has no rules"),
    ("rules: [{id: a, text: t}]\nname: x\n", "unknown key 'name'; expected rules"),
    ("id: a\ntext: t\n", "expected a list of rules or a mapping with a 'rules' list"),
    ("- [unclosed\n", "cannot read the rubric (while parsing a flow sequence)"),
])
def test_bad_rubric_files_name_the_file_rule_and_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RubricError) as e:
        load_rubric(path)
    assert str(e.value) == f"{path}: {message}"
    assert "\n" not in str(e.value)


def test_missing_rubric_file_is_one_line(tmp_path):
    with pytest.raises(RubricError, match=r"^.*nope.yaml: cannot read the rubric \(\[Errno 2\] No such file"):
        load_rubric(tmp_path / "nope.yaml")


def test_verifier_rules_combine_with_their_weights_exactly(tmp_path):
    """weights 3 (lowercase), 1 (<= 3 words), 2 (the row's two constraints: the fraction passed)."""
    judge = RubricJudge(str(write(tmp_path, VERIFIER_ONLY)))  # no LLM config: none is needed
    good, bad = judge.score_many([(P, "hello there my friend, hi", TWO), (P, "Hi, you", TWO)])
    # good: lower 1, short 0 (5 words), asked 1/2 (lowercase yes, a comma) -> (3*1 + 1*0 + 2*0.5) / 6
    assert good.value == pytest.approx(2 / 3, abs=1e-12) and good.passed is False
    assert {k: (v["grade"], v["passed"], v["weight"]) for k, v in good.details["rules"].items()} == {
        "lower": (1.0, True, 3.0), "short": (0.0, False, 1.0), "asked": (0.5, False, 2.0)}
    # bad: lower 0, short 1 (2 words), asked 0 (a capital, a comma) -> (0 + 1*1 + 0) / 6
    assert bad.value == pytest.approx(1 / 6, abs=1e-12) and bad.passed is False
    best = judge.score(P, "hi friend", TWO)
    assert (best.value, best.passed) == (1.0, True)
    assert judge.stats() == {"requests": 0, "cache_hits": 0, "retries": 0, "rule_answers": 0, "unparseable": 0}
    assert judge.name == "rubric:rubric" and judge.score_range == (0.0, 1.0)


def test_only_grades_and_combines_the_named_rules(tmp_path):
    """``only``: one aspect of a rubric (or a few) is the score; the other rules are not run."""
    path = str(write(tmp_path, VERIFIER_ONLY))
    short = RubricJudge(path, only=["short"])
    good, bad = short.score_many([(P, "hello there my friend, hi", TWO), (P, "Hi, you", TWO)])
    assert (good.value, bad.value) == (0.0, 1.0) and list(good.details["rules"]) == ["short"]
    assert short.name == "rubric:rubric[short]"
    two = RubricJudge(path, only=["asked", "lower"])  # rubric order, whatever the order asked
    s = two.score(P, "hello there my friend, hi", TWO)  # lower 1 (weight 3), asked 1/2 (weight 2) -> 4 / 5
    assert s.value == pytest.approx(0.8, abs=1e-12) and list(s.details["rules"]) == ["lower", "asked"]
    assert two.name == "rubric:rubric[lower,asked]"
    # the row's constraints are needed only by 'asked': without it, a row that has none is gradable
    assert RubricJudge(path, only=["lower"]).score(P, "hi", {}).value == 1.0
    with pytest.raises(ValueError, match=r"only: no rule 'tone' \(rules: lower, short, asked\)$"):
        RubricJudge(path, only=["tone"])
    with pytest.raises(ValueError, match="only: expected a list of rule ids, got 'short'"):
        RubricJudge(path, only="short")
    with pytest.raises(ValueError, match=r"only: expected a list of rule ids, got \[\]"):
        RubricJudge(path, only=[])
    # an LLM rule left out needs no LLM
    mixed = write(tmp_path, "- {id: helpful, text: 'Helps.'}\n- {id: lower, text: t, verifier: {kind: lowercase}}\n",
                  "mixed.yaml")
    assert RubricJudge(str(mixed), only=["lower"]).score(P, "ok", {}).value == 1.0


def test_pairs_from_one_rule_of_a_rubric(tmp_path):
    """The judge stage with ``only``: the pair follows that rule, whichever way the whole rubric would go."""
    rubric = str(write(tmp_path, VERIFIER_ONLY))
    rows = [{"prompt_id": "p", "prompt": P, "candidate_index": i, "text": t, "metadata": TWO}
            for i, t in enumerate(["hello there my friend, hi", "Hi, you"])]
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def chosen(judge: dict, out: str) -> str:
        judge_candidates(cands, tmp_path / out, [judge])
        (pair,) = [json.loads(line) for line in (tmp_path / out / "pairs.jsonl").read_text().splitlines()]
        return pair["chosen"]

    assert chosen({"type": "rubric", "rubric": rubric}, "all") == rows[0]["text"]  # 2/3 vs 1/6
    assert chosen({"type": "rubric", "rubric": rubric, "only": ["short"]}, "short") == rows[1]["text"]  # 0 vs 1


def test_row_verifier_checks_whatever_the_row_carries(tmp_path):
    path = write(tmp_path, "- {id: row, text: 'Verifiable parts hold.', verifier: row}\n"
                           "- {id: ans, text: 'Right answer.', verifier: answer, weight: 3}\n")
    judge = RubricJudge(str(path))
    meta = {"constraints": [{"kind": "lowercase", "args": {}}], "answer": "4"}
    # "the answer is 5": lowercase passes, the answer fails: row = mean(1, 0) = 0.5, ans = 0 -> 0.5 / 4
    s = judge.score(P, "the answer is 5", meta)
    assert s.value == pytest.approx(0.125, abs=1e-12) and s.passed is False
    assert judge.score(P, "the answer is 4", meta).value == 1.0


def test_rows_a_verifier_rule_cannot_check_raise_or_are_skipped(tmp_path):
    path = write(tmp_path, VERIFIER_ONLY)
    judge = RubricJudge(str(path))
    items = [(P, "hi", TWO), (P, "hi", {}), (P, "hi", {"constraints": [{"kind": "shouting"}]})]
    with pytest.raises(RubricRowError) as e:
        judge.score_many(items)
    assert [i for i, _ in e.value.rows] == [1, 2]
    assert e.value.rows[0][1] == (f"rubric {path}: rules[2] ('asked'): metadata has nothing to verify: expected "
                                  "'constraints', 'constraint' (+ 'constraint_args'), 'answer' or 'tests'; got keys: "
                                  "none")
    assert e.value.rows[1][1].startswith(f"rubric {path}: rules[2] ('asked'): unknown constraint kind 'shouting'")
    ok, skipped, _ = judge.score_many(items, on_row_error="skip")
    assert ok.value == 1.0 and math.isnan(skipped.value) and skipped.passed is None
    assert skipped.details == {"reason": e.value.rows[0][1]}


def test_rule_statistics_count_asked_passed_unparseable():
    rules = [Rule("a", "t"), Rule("b", "t", 2.0)]

    def s(a, b):
        return Score(0.0, None, {"rules": {"a": a, "b": b}})

    yes, half, no, none = ({"grade": 1.0, "passed": True}, {"grade": 0.5, "passed": False},
                           {"grade": 0.0, "passed": False}, {"grade": None, "passed": None})
    scores = [s(yes, none), s(half, yes), s(no, none), Score(math.nan, None, {"reason": "skipped row"})]
    assert rule_statistics(rules, scores) == {
        "a": {"asked": 3, "passed": 1, "unparseable": 0, "pass_rate": 1 / 3, "mean_grade": 0.5},
        "b": {"asked": 3, "passed": 1, "unparseable": 2, "pass_rate": 1.0, "mean_grade": 1.0}}


@pytest.mark.parametrize("answer, grade", [
    ("The response is short.\nGrade: 2", 2), ("**Grade:** 1", 1), ("Final grade: [[0]]", 0), ("grade - 2/2", 2),
    ("Grade: 2.0", 2), ("2", 2), (" 1. ", 1), ("Grade: 1\nOn reflection... Grade: 0", 0),
    ("Grade: 3", None), ("Grade: 1/10", None), ("Grade: 1.5", None), ("It complies.", None), ("", None),
    ("Score: 2", None),
])
def test_parse_grade(answer, grade):
    assert parse_grade(answer) == grade


def test_rule_messages_carry_the_rule_the_conversation_and_the_response():
    system, user = rule_messages(P, "hello!", "Be brief.")
    assert system["role"] == "system" and "Rule:\nBe brief.\n" in system["content"]
    assert "Grade: N" in system["content"]
    assert "<conversation>\n[user]\nSay hi.\n</conversation>" in user["content"]
    assert "<response>\nhello!\n</response>" in user["content"]


def test_judge_stage_config_checks(tmp_path):
    rubric = write(tmp_path, "- {id: helpful, text: 'Helps.'}\n- {id: lower, text: t, verifier: {kind: lowercase}}\n")
    assert check_judge_spec({"type": "rubric", "rubric": str(rubric)}, "judges[0]")[0] == "rubric"
    with pytest.raises(JudgeConfigError, match=r"^judges\[0\] \(rubric\): missing key 'rubric'$"):
        build_member({"type": "rubric"})
    with pytest.raises(JudgeConfigError, match=r"^judges\[1\] \(rubric\): unknown key 'rubrik'"):
        build_member({"type": "rubric", "rubrik": str(rubric)}, 1)
    with pytest.raises(JudgeConfigError) as e:
        build_member({"type": "rubric", "rubric": str(rubric)})
    assert str(e.value) == (f"judges[0] (rubric): rubric {rubric}: rules[0] ('helpful') has no verifier, so an LLM "
                            "grades it: give base_url and model, or local")
    with pytest.raises(JudgeConfigError, match="base_url and model go together"):
        build_member({"type": "rubric", "rubric": str(rubric), "base_url": "http://127.0.0.1:9/v1"})
    bad = write(tmp_path, "- {id: a, text: t, weight: 0}\n", "bad.yaml")
    with pytest.raises(JudgeConfigError) as e:
        build_member({"type": "rubric", "rubric": str(bad)})
    assert str(e.value) == f"judges[0] (rubric): {bad}: rules[0]: field 'weight': must be a positive number, got 0"
    m = build_member({"type": "rubric", "rubric": str(write(tmp_path, VERIFIER_ONLY, "v.yaml")), "weight": 2})
    assert (m.name, m.weight, m.resolved_range()) == ("rubric:v", 2.0, (0.0, 1.0))


def test_judge_stage_bad_row_names_the_candidates_line(tmp_path):
    rubric = write(tmp_path, VERIFIER_ONLY)
    row = {"prompt_id": "p", "prompt": P, "candidate_index": 0, "text": "hi", "metadata": TWO}
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in [row, {**row, "candidate_index": 1, "metadata": {}}]))
    from posttrain.data.schema import DataError

    with pytest.raises(DataError) as e:
        judge_candidates(cands, tmp_path / "out", [{"type": "rubric", "rubric": str(rubric)}])
    assert str(e.value).startswith(f"{cands}:2: field 'metadata': judge 'rubric:rubric': rubric {rubric}: "
                                   "rules[2] ('asked'): metadata has nothing to verify")
    assert not (tmp_path / "out").exists()
