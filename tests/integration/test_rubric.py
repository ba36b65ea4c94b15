"""The rubric judge end to end: LLM rules against a scripted OpenAI-compatible server on 127.0.0.1 (whose answer
depends on the rule text and the response in each request), verifier rules with no request, unparseable grades,
the judge stage (pairs by rubric score, per-rule statistics), the eval metric, and the PPO/GRPO reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from posttrain.judges.rubric import RubricJudge

from .helpers import ScriptedServer

P = [{"role": "user", "content": "Greet me."}]

RUBRIC = """\
rules:
  - {id: concise, text: "RULE-CONCISE: The response is at most three words.", weight: 2}
  - {id: polite, text: "RULE-POLITE: The response is polite."}
  - {id: lower, text: "RULE-LOWER: All lowercase.", verifier: {kind: lowercase}}
"""


def response_of(user: str) -> str:
    return user.split("<response>\n", 1)[1].split("\n</response>", 1)[0]


def grader(body) -> str:
    """Grades by the rule asked (the system message) and the response (the user message)."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    response = response_of(user)
    if "RULE-CONCISE" in system:
        return "Three words or fewer.\nGrade: 2" if len(response.split()) <= 3 else "Too long.\nGrade: 0"
    if "RULE-POLITE" in system:
        if "???" in response:
            return "I cannot tell."  # no grade: the rule is left out
        return "**Grade:** 2" if "please" in response else "Grade: 1" if "thanks" in response else "Grade: 0"
    raise AssertionError(f"a verifier rule was sent to the LLM: {system!r}")


@pytest.fixture
def server():
    s = ScriptedServer()
    s.answer = grader
    yield s
    s.close()


@pytest.fixture
def rubric(tmp_path):
    path = tmp_path / "rubric.yaml"
    path.write_text(RUBRIC)
    return path


def make(rubric, server, tmp_path, **kw):
    return RubricJudge(str(rubric), base_url=server.url, model="grader", cache_path=str(tmp_path / "cache.sqlite"),
                       **kw)


def grades(score):
    return {k: v["grade"] for k, v in score.details["rules"].items()}


def test_llm_rules_are_asked_per_rule_and_combined_with_the_weights(rubric, server, tmp_path):
    judge = make(rubric, server, tmp_path)
    responses = ["hi please", "Hello there, thanks a lot", "ok ???", "WHAT ???"]
    a, b, c, d = judge.score_many([(P, r, {}) for r in responses])
    # weights: concise 2, polite 1, lower 1 (verifier); an unparseable grade is left out of the mean
    assert grades(a) == {"concise": 1.0, "polite": 1.0, "lower": 1.0}
    assert (a.value, a.passed) == (1.0, True)
    assert grades(b) == {"concise": 0.0, "polite": 0.5, "lower": 0.0}
    assert b.value == pytest.approx((2 * 0 + 1 * 0.5 + 1 * 0) / 4, abs=1e-12) and b.passed is False
    assert grades(c) == {"concise": 1.0, "polite": None, "lower": 1.0}
    assert c.value == pytest.approx((2 * 1 + 1 * 1) / 3, abs=1e-12) and c.passed is None  # unknown: not a pass
    assert c.details["rules"]["polite"]["raw"] == "I cannot tell."
    assert c.details["rules"]["polite"]["reason"] == "unparseable answer: no 'Grade: N' in 0-2"
    assert grades(d) == {"concise": 1.0, "polite": None, "lower": 0.0}
    assert d.value == pytest.approx(2 / 3, abs=1e-12) and d.passed is False  # a graded rule failed: known fail
    # one request per (response, LLM rule): each carries exactly one rule's text and the response; the verifier
    # rule is never asked
    asked = []
    for body in server.requests:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        rules = [t for t in ("RULE-CONCISE", "RULE-POLITE", "RULE-LOWER") if t in system]
        assert len(rules) == 1 and body["model"] == "grader"
        asked.append((rules[0], response_of(user)))
    assert sorted(asked) == sorted((rule, r) for rule in ("RULE-CONCISE", "RULE-POLITE") for r in responses)
    # the rule's whole text is in the request (requests run concurrently: their order is not fixed)
    assert any("RULE-CONCISE: The response is at most three words." in body["messages"][0]["content"]
               for body in server.requests)
    stats = judge.stats()
    assert (stats["requests"], stats["cache_hits"], stats["rule_answers"], stats["unparseable"]) == (8, 0, 8, 2)
    # the answers are cached: another judge over the same cache asks nothing again
    again = make(rubric, server, tmp_path).score_many([(P, r, {}) for r in responses])
    assert len(server.requests) == 8 and [s.value for s in again][:2] == [a.value, b.value]


def test_a_rubric_no_rule_of_which_is_graded_has_no_score(tmp_path, server):
    path = tmp_path / "polite.yaml"
    path.write_text("- {id: polite, text: 'RULE-POLITE: polite.'}\n")
    s = make(path, server, tmp_path).score(P, "meh ???", {})
    assert math.isnan(s.value) and s.passed is None
    assert s.details["reason"] == "no rule graded (unparseable answer: no 'Grade: N' in 0-2)"
    assert s.details["raw"] == "I cannot tell."


def test_verifier_rules_need_no_llm_and_make_no_request(tmp_path, server):
    path = tmp_path / "v.yaml"
    path.write_text("- {id: lower, text: 'RULE-LOWER: lowercase.', verifier: {kind: lowercase}, weight: 3}\n"
                    "- {id: asked, text: 'Obeys the row.', verifier: constraints}\n")
    row = {"constraints": [{"kind": "no_commas", "args": {}}]}
    with_llm = make(path, server, tmp_path)  # an endpoint given, and never used
    assert [s.value for s in with_llm.score_many([(P, "a, b", row), (P, "A b", row)])] == [0.75, 0.25]
    assert server.requests == [] and with_llm.stats()["requests"] == 0


def candidates(path, texts_per_prompt, metadata=None):
    rows = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"Greet me, {i}."}], "candidate_index": j,
             "text": t, "metadata": metadata or {}}
            for i, texts in enumerate(texts_per_prompt) for j, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_stage_pairs_by_rubric_score_with_per_rule_statistics(tmp_path, rubric, server):
    """``posttrain judge --config`` with ``{type: rubric}``: best vs worst by the rubric score; the summary has each
    rule's counts over the candidates."""
    from posttrain.cli import app

    cands = candidates(tmp_path / "c.jsonl", [["Hello there, thanks a lot", "hi please", "ok ??? yes well"],
                                              ["WHAT ???", "Good day to you, my friend", "thanks mate"]])
    judges = tmp_path / "judges.yaml"
    judges.write_text(json.dumps({"judges": [{"type": "rubric", "rubric": str(rubric), "base_url": server.url,
                                              "model": "grader", "cache_path": str(tmp_path / "cache.sqlite")}]}))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["judge", "--candidates", str(cands), "-o", str(out), "--config", str(judges),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    # (weights concise 2, polite 1, lower 1) p0: "Hello there, thanks a lot" (0 + 0.5 + 0) / 4, "hi please" 1,
    # "ok ??? yes well" (0 + 1) / 3 (polite ungraded); p1: "WHAT ???" (2 + 0) / 3, "Good day to you, my friend" 0,
    # "thanks mate" (2 + 0.5 + 1) / 4
    assert [(p["chosen"], p["rejected"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [
        ("hi please", "Hello there, thanks a lot", 1.0, 0.125),
        ("thanks mate", "Good day to you, my friend", 0.875, 0.0)]
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["value"] for s in scores] == [0.125, 1.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 0.0, 0.875]
    # only "hi please" passes every rule; a graded failure is a fail even beside an ungraded rule
    assert [s["passed"] for s in scores] == [False, True, False, False, False, False]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rubric"] == {"rubric:rubric": {
        "concise": {"asked": 6, "passed": 3, "unparseable": 0, "pass_rate": 0.5, "mean_grade": 0.5},
        "polite": {"asked": 6, "passed": 1, "unparseable": 2, "pass_rate": 0.25, "mean_grade": 0.5},
        "lower": {"asked": 6, "passed": 3, "unparseable": 0, "pass_rate": 0.5, "mean_grade": 0.5}}}
    assert summary["judges"][0]["stats"]["requests"] == 12 and summary["judges"][0]["stats"]["unparseable"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["judges[0].rubric"]["hash"].startswith("sha256:")


def test_rubric_metrics_in_eval(tmp_path, rubric, server):
    """Per-rule pass rates over an eval's responses; a row a verifier rule cannot check is skipped."""
    from posttrain.eval.run import rubric_metrics
    from posttrain.eval.suites import EvalRow

    path = tmp_path / "eval_rubric.yaml"
    path.write_text(RUBRIC + "  - {id: asked, text: 'Obeys the row.', verifier: constraints}\n")
    low = {"constraints": [{"kind": "no_commas", "args": {}}]}
    rows = [EvalRow("constraints", "a", "constraint", P, low), EvalRow("constraints", "b", "constraint", P, low),
            EvalRow("refusal", "c", "refusal_benign", P, {})]
    gens = [("hi please", 2, "stop"), ("Hello there, thanks a lot", 5, "stop"), ("sure", 1, "stop")]
    metrics, scores = rubric_metrics(make(path, server, tmp_path), rows, gens)
    # a: all four rules pass -> 1; b: concise 0, polite 0.5, lower 0, asked 0 (a comma) -> 0.5 / 5
    assert metrics == {"rubric/n": 2.0, "rubric/skipped": 1.0, "rubric/score": pytest.approx((1 + 0.1) / 2),
                       "rubric/pass_rate": 0.5, "rubric/unparseable": 0.0,
                       "rubric/rule/concise/n": 2.0, "rubric/rule/concise/pass_rate": 0.5,
                       "rubric/rule/polite/n": 2.0, "rubric/rule/polite/pass_rate": 0.5,
                       "rubric/rule/lower/n": 2.0, "rubric/rule/lower/pass_rate": 0.5,
                       "rubric/rule/asked/n": 2.0, "rubric/rule/asked/pass_rate": 0.5}
    assert math.isnan(scores[2].value) and "nothing to verify" in scores[2].details["reason"]
    assert len(server.requests) == 4  # the skipped row is not sent to the LLM


def test_eval_command_with_a_verifier_rubric(tmp_path):
    """``posttrain eval --rubric`` on tiny-random: the rule that checks the row's constraints has the suite's own
    constraint pass rate; a rubric with an LLM rule and no --rubric-judge is one line, before any model loads."""
    from posttrain.eval.cli import eval_command

    app = typer.Typer()
    app.command()(eval_command)
    suite = tmp_path / "mini.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"Say something about {w}. Answer in all lowercase.", "kind": "constraint",
             "constraints": [{"kind": "lowercase", "args": {}}]} for i, w in enumerate(["cats", "tea", "snow"])]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rubric = tmp_path / "r.yaml"
    rubric.write_text("- {id: asked, text: 'Obeys the prompt.', verifier: constraints}\n"
                      "- {id: short, text: 'At most 2 words.', verifier: {kind: word_count, args: {max: 2}}}\n")
    res = CliRunner().invoke(app, ["--model", "tiny-random", "--suite", f"{suite}@4", "--rubric", str(rubric),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["rubric/rule/asked/pass_rate"] == metrics["constraints/pass_rate"]
    assert metrics["rubric/n"] == 3.0 and metrics["rubric/skipped"] == 0.0
    responses = [json.loads(x) for x in (tmp_path / "o" / "responses.jsonl").read_text().splitlines()]
    assert [r["rubric"]["rules"]["asked"]["passed"] for r in responses] == [r["passed"] for r in responses]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["inputs"]["rubric"]["path"] == str(rubric)
    llm = tmp_path / "llm.yaml"
    llm.write_text("- {id: kind, text: 'Is kind.'}\n")
    res = CliRunner().invoke(app, ["--model", "no-such-model", "--suite", str(suite), "--rubric", str(llm),
                                   "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2
    assert f"--rubric: rubric {llm}: rules[0] ('kind') has no verifier, so an LLM grades it" in res.output
    res = CliRunner().invoke(app, ["--model", "no-such-model", "--suite", str(suite), "--rubric-judge",
                                   "rm:some/model", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--rubric-judge grades the rules of a --rubric file; give --rubric" in res.output
    res = CliRunner().invoke(app, ["--model", "no-such-model", "--suite", str(suite), "--rubric", str(llm),
                                   "--rubric-judge", "rm:some/model", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--rubric-judge 'rm:some/model': expected llm:URL:MODEL or local:MODEL" in res.output
    assert not (tmp_path / "o2").exists()


def test_pipeline_eval_stage_with_a_rubric(tmp_path):
    """The pipeline's eval stage takes ``rubric`` (a hashed input) as ``eval --rubric`` does; a bad one is one line
    naming the key before anything runs."""
    from posttrain.pipeline.load import parse_pipeline
    from posttrain.pipeline.registry import STAGES
    from posttrain.pipeline.runner import run_pipeline
    from posttrain.pipeline.spec import PipelineError

    suite = tmp_path / "mini.jsonl"
    suite.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"About {w}, all lowercase.", "kind": "constraint",
                                         "constraints": [{"kind": "lowercase", "args": {}}]}) + "\n"
                             for i, w in enumerate(["cats", "tea"])))
    rubric = tmp_path / "r.yaml"
    rubric.write_text("- {id: asked, text: 'Obeys the prompt.', verifier: constraints}\n")
    tree = {"run_dir": str(tmp_path / "run"), "stages": {"eval": {"command": "eval", "config": {
        "model": "tiny-random", "suites": [f"{suite}@4"], "rubric": str(rubric)}}}}
    manifest = run_pipeline(parse_pipeline(tree, STAGES))
    stage = manifest["stages"]["eval"]
    assert stage["status"] == "done" and str(rubric) in stage["inputs"]
    metrics = json.loads((Path(stage["folder"]) / "metrics.json").read_text())
    assert metrics["rubric/rule/asked/pass_rate"] == metrics["constraints/pass_rate"]
    tree["stages"]["eval"]["config"]["rubric"] = str(tmp_path / "missing.yaml")
    with pytest.raises(PipelineError, match="stages.eval.config: key 'rubric': no such file"):
        run_pipeline(parse_pipeline(tree, STAGES))
    tree["stages"]["eval"]["config"] = {"model": "tiny-random", "suites": [str(suite)], "rubric_judge": "local:x"}
    with pytest.raises(PipelineError, match="key 'rubric_judge' grades the rules of a 'rubric' file"):
        run_pipeline(parse_pipeline(tree, STAGES))


# --------------------------------------------------------------------------------------------- PPO / GRPO reward


def test_reward_function_with_a_rubric(tmp_path, rubric, server, monkeypatch):
    """``reward.rubric``: weighted with the other components, LLM rules asked at ``reward.rubric_base_url``; a
    completion no rule could grade gets the batch mean (never NaN)."""
    from posttrain.config import RLRewardSection
    from posttrain.data.schema import PromptExample
    from posttrain.judges.reward import RewardFunction

    cfg = RLRewardSection(verifier_weight=0, rubric=str(rubric), rubric_weight=2.0, rubric_base_url=server.url,
                          rubric_model="grader")
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))  # the LLM answer cache of this test only
    reward = RewardFunction(cfg, max_new_tokens=8)
    row = PromptExample(P, metadata={})
    scores, metrics = reward([row] * 3, ["hi please", "Hello there, thanks a lot", "ok ???"], [2, 5, 2])
    assert scores.tolist() == pytest.approx([2 * 1.0, 2 * 0.125, 2 * 1.0])
    assert metrics["reward/rubric"] == pytest.approx((1 + 0.125 + 1) / 3)
    assert metrics["reward/rubric_pass_rate"] == pytest.approx(1 / 3) and metrics["reward/rubric_ungraded"] == 0
    assert metrics["reward/rubric/concise"] == pytest.approx(2 / 3) and metrics["reward/rubric/polite"] == 0.75
    one = tmp_path / "polite.yaml"
    one.write_text("- {id: polite, text: 'RULE-POLITE: polite.'}\n")
    reward = RewardFunction(cfg.model_copy(update={"rubric": str(one), "rubric_weight": 1.0}), max_new_tokens=8)
    scores, metrics = reward([row] * 3, ["thanks", "meh ???", "please"], [1, 2, 1])
    assert scores.tolist() == [0.5, 0.75, 1.0] and metrics["reward/rubric_ungraded"] == 1.0


def test_reward_rubric_config_errors(tmp_path, rubric):
    from posttrain.config import ConfigError, RLRewardSection
    from posttrain.data.schema import PromptExample
    from posttrain.judges.reward import RewardFunction

    with pytest.raises(ConfigError) as e:
        RewardFunction(RLRewardSection(verifier_weight=0, rubric=str(rubric)), max_new_tokens=8)
    assert str(e.value) == (f"reward.rubric: {rubric}: rules[0] ('concise') has no verifier, so an LLM grades it: "
                            "set reward.rubric_base_url and reward.rubric_model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: a, text: t, verifier: {kind: nope}}\n")
    with pytest.raises(ConfigError, match=rf"^reward.rubric: {bad}: rules\[0\]: field 'verifier': unknown "
                                          r"constraint kind 'nope'"):
        RewardFunction(RLRewardSection(rubric=str(bad)), max_new_tokens=8)
    # rubric_only: the LLM rules left out need no endpoint; the reward is the named rule alone
    reward = RewardFunction(RLRewardSection(verifier_weight=0, rubric=str(rubric), rubric_only=["lower"]),
                            max_new_tokens=8)
    scores, metrics = reward([PromptExample(P, metadata={})] * 2, ["all quiet", "Not Quiet"], [2, 2])
    assert scores.tolist() == [1.0, 0.0] and "reward/rubric/lower" in metrics and "reward/rubric/concise" not in metrics
    with pytest.raises(ConfigError) as e:
        RewardFunction(RLRewardSection(verifier_weight=0, rubric=str(rubric), rubric_only=["tone"]), max_new_tokens=8)
    assert str(e.value) == f"reward.rubric_only: {rubric}: no rule 'tone' (rules: concise, polite, lower)"
    with pytest.raises(ValueError, match="rubric_base_url and reward.rubric_model go together"):
        RLRewardSection(rubric=str(rubric), rubric_base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="no reward: set reward.verifier_weight > 0, reward.reward_model or "
                                         "reward.rubric"):
        RLRewardSection(verifier_weight=0, rubric=str(rubric), rubric_weight=0)


@pytest.mark.usefixtures("one_torch_thread")
def test_grpo_with_a_verifier_rubric_reward(tmp_path):
    """A rubric whose one rule is the row's answer check scores exactly as the verifier does: with both in the
    reward (rubric weight 0.5), the logged rubric equals the logged verifier and the total is their weighted sum."""
    from posttrain.training.metrics import read_metrics
    from posttrain.trainers.grpo import train_grpo

    from .test_rl import rl_config

    rubric = tmp_path / "letter.yaml"
    rubric.write_text("- {id: letter, text: 'Answers with a letter.', verifier: answer}\n")
    cfg = rl_config("grpo", tmp_path, "optim.batch_size=2", "optim.micro_batch_size=16", "optim.max_steps=1",
                    "grpo.num_generations=4", f"reward.rubric={rubric}", "reward.rubric_weight=0.5",
                    "data.eval=null", "grpo.loss_type=token")
    train_grpo(cfg)
    (row,) = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert row["reward/rubric"] == row["reward/verifier"] and row["reward/rubric/letter"] == row["reward/verifier"]
    assert row["reward/total"] == pytest.approx(1.5 * row["reward/verifier"], abs=1e-6)
    assert row["reward/rubric_pass_rate"] == row["reward/pass_rate"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["inputs"]["reward.rubric"]["hash"].startswith("sha256:")
    # a bad rubric fails before the policy loads (the model name, which does not exist, is never looked up)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: a, text: t, verifier: {kind: nope}}\n")
    (tmp_path / "b").mkdir()
    cfg = rl_config("grpo", tmp_path / "b", f"reward.rubric={bad}", "model.name=no-such-model")
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match=r"^reward.rubric: .*unknown constraint kind 'nope'"):
        train_grpo(cfg)
