import json

import pytest

from posttrain.data.schema import DataError, DataErrors
from posttrain.judges.cli import load_judges_file, parse_judge_spec
from posttrain.judges.run import JudgeConfigError, build_member, judge_candidates, read_candidates
from posttrain.judges.types import Score

ROW = {"prompt_id": "p", "prompt": [{"role": "user", "content": "q"}], "candidate_index": 0, "text": "t"}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_candidates_names_file_row_and_field(tmp_path):
    ok = write(tmp_path / "ok.jsonl", [ROW, {**ROW, "candidate_index": 1}])
    assert len(read_candidates(ok)) == 2
    bad = write(tmp_path / "bad.jsonl", [ROW, {**ROW, "candidate_index": "1"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'candidate_index': missing or not a int"):
        read_candidates(bad)
    many = write(tmp_path / "many.jsonl", ["{nope", {**ROW, "prompt": "q"}, ROW, ROW])
    with pytest.raises(DataErrors) as e:
        read_candidates(many)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{many}:1: not valid JSON")
    assert lines[1] == f"{many}:2: field 'prompt': must be a non-empty list of {{role, content}} messages"
    assert lines[2] == f"{many}:4: field 'candidate_index': repeats candidate 0 of prompt 'p'"
    with pytest.raises(DataError, match="no such file"):
        read_candidates(tmp_path / "missing.jsonl")


def test_judge_config_errors():
    with pytest.raises(JudgeConfigError, match=r"judges\[0\]: unknown type 'oracle'"):
        build_member({"type": "oracle"})
    with pytest.raises(JudgeConfigError, match=r"judges\[2\] \(llm\): unknown key 'modle'"):
        build_member({"type": "llm", "base_url": "http://x/v1", "modle": "m"}, 2)
    with pytest.raises(JudgeConfigError, match=r"judges\[0\] \(llm\): missing key 'model'"):
        build_member({"type": "llm", "base_url": "http://x/v1"})
    with pytest.raises(JudgeConfigError, match="'weight' must be a positive number"):
        build_member({"type": "llm", "base_url": "http://x/v1", "model": "m", "weight": 0})
    m = build_member({"type": "llm", "base_url": "http://x/v1", "model": "m", "weight": 2, "use_cache": False})
    assert (m.name, m.weight, m.resolved_range()) == ("llm:m", 2.0, (1.0, 10.0))


def test_bad_config_writes_nothing(tmp_path):
    cands = write(tmp_path / "c.jsonl", [ROW])
    out = tmp_path / "out"
    with pytest.raises(JudgeConfigError, match="pairs: unknown key 'margin'"):
        judge_candidates(cands, out, [{"type": "llm", "base_url": "http://x/v1", "model": "m"}], {"margin": 1})
    with pytest.raises(JudgeConfigError, match="pairs.strategy 'best'"):
        judge_candidates(cands, out, [{"type": "llm", "base_url": "http://x/v1", "model": "m"}], {"strategy": "best"})
    assert not out.exists()


def test_parse_judge_spec():
    assert parse_judge_spec("verifier") == {"type": "verifier"}
    assert parse_judge_spec("llm:http://127.0.0.1:8000/v1:qwen2.5:7b") == {
        "type": "llm", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5:7b"}
    assert parse_judge_spec("llm:https://api.example.com/v1:gpt-x") == {
        "type": "llm", "base_url": "https://api.example.com/v1", "model": "gpt-x"}
    assert parse_judge_spec("local:runs/sft/model") == {"type": "local", "model": "runs/sft/model"}
    assert parse_judge_spec("rm:runs/rm") == {"type": "reward_model", "model": "runs/rm"}
    assert parse_judge_spec("rubric:examples/rubric.yaml") == {"type": "rubric", "rubric": "examples/rubric.yaml"}
    with pytest.raises(JudgeConfigError, match="--judge 'llm:gpt'"):
        parse_judge_spec("llm:gpt")


def test_load_judges_file(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("judges:\n  - type: verifier\n    weight: 2\npairs:\n  min_margin: 0.2\n")
    assert load_judges_file(f) == ([{"type": "verifier", "weight": 2}], {"min_margin": 0.2})
    f.write_text("- type: verifier\n")
    assert load_judges_file(f) == ([{"type": "verifier"}], {})
    f.write_text("judge:\n  - type: verifier\n")
    with pytest.raises(JudgeConfigError, match="expected a list of judges"):
        load_judges_file(f)


class AnswerChecker:
    """A verifier-like scoring judge: 1 if the metadata's answer is in the response; a row without one is bad."""

    name = "verifier"

    def score(self, prompt, response, metadata):
        if "answer" not in metadata:
            raise ValueError("metadata has nothing to verify")
        return Score(float(metadata["answer"] in response), metadata["answer"] in response)


class Brevity:
    """A reward-model-like batch judge: shorter is better (unbounded scores)."""

    def __init__(self, model):
        self.name, self.calls = f"brevity:{model}", 0

    def score_many(self, items):
        self.calls += 1
        return [Score(-float(len(r))) for _, r, _ in items]

    def score(self, prompt, response, metadata):
        return self.score_many([(prompt, response, metadata)])[0]


def candidate_rows(texts_by_prompt, answer="4"):
    rows = []
    for p, texts in enumerate(texts_by_prompt):
        for i, text in enumerate(texts):
            rows.append({**ROW, "prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"q{p}"}],
                         "candidate_index": i, "text": text, "metadata": {"answer": answer} if answer else {}})
    return rows


@pytest.fixture
def fake_judges(monkeypatch):
    from posttrain.judges import run as judge_run

    classes = {"verifier": AnswerChecker, "reward_model": Brevity}
    monkeypatch.setattr(judge_run, "_judge_class", lambda kind: classes[kind])


def test_stage_with_one_scoring_judge(tmp_path, fake_judges):
    cands = write(tmp_path / "c.jsonl", candidate_rows([["it is 5", "it is 4"], ["4", "four"]]))
    summary = judge_candidates(cands, tmp_path / "out", [{"type": "verifier"}])
    pairs = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("it is 4", "it is 5", 1.0),
                                                                        ("4", "four", 1.0)]
    assert pairs[0]["judge"] == {"judges": ["verifier"], "chosen_index": 1, "rejected_index": 0}
    assert summary["pairs"]["score_units"] == "raw" and summary["agreement"] is None
    scores = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert scores[0] == {"prompt_id": "p0", "candidate_index": 0, "value": 0.0, "passed": False, "details": {}}
    for name in ("pairs.jsonl", "scores.jsonl", "summary.json", "manifest.json", "config.yaml"):
        assert (tmp_path / "out" / name).exists()
    # the DPO trainer's reader takes the file as is
    from posttrain.data import load_examples

    read = load_examples(str(tmp_path / "out" / "pairs.jsonl"), "preference")
    assert read[1].chosen == [{"role": "assistant", "content": "4"}] and read[1].metadata["margin"] == 1.0


def test_stage_ensemble_of_scoring_judges(tmp_path, fake_judges):
    # verifier: "x 4" right, "4" right, "5" wrong; brevity prefers "4" and "5" over "x 4"
    cands = write(tmp_path / "c.jsonl", candidate_rows([["x 4", "4", "5"]]))
    judges = [{"type": "verifier", "weight": 3}, {"type": "reward_model", "model": "m"}]
    summary = judge_candidates(cands, tmp_path / "out", judges, {"strategy": "all_above_margin"})
    pairs = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    # normalised: verifier (0,1) as is; brevity sigmoid(-len): sigmoid(-3) for "x 4", sigmoid(-1) otherwise
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("4", "x 4"), ("x 4", "5"), ("4", "5")]
    agree = {(p["chosen"], p["rejected"]): p["judge"]["agreement"] for p in pairs}
    assert agree == {("4", "x 4"): 0.5, ("x 4", "5"): 0.5, ("4", "5"): 0.5}
    assert summary["pairs"]["score_units"] == "normalised"
    assert summary["agreement"]["unanimous_fraction"] == 0.0
    assert summary["agreement"]["agreement_matrix"]["brevity:m"]["verifier"] == 0.0


def test_stage_reports_rows_a_judge_rejects_and_writes_nothing(tmp_path, fake_judges):
    rows = candidate_rows([["4", "5"]]) + candidate_rows([["", "", "4"]], answer=None)[2:]
    rows[-1]["prompt_id"] = "p9"
    cands = write(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=r"c.jsonl:3: field 'metadata': judge 'verifier': metadata has nothing"):
        judge_candidates(cands, tmp_path / "out", [{"type": "verifier"}, {"type": "reward_model", "model": "m"}])
    assert not (tmp_path / "out").exists()


def test_stage_with_the_real_verifier(tmp_path):
    pytest.importorskip("posttrain.verifiers")
    cands = write(tmp_path / "c.jsonl", candidate_rows([["It is 5.", "The answer is 4."]]))
    summary = judge_candidates(cands, tmp_path / "out", [{"type": "verifier"}])
    (pair,) = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert (pair["chosen"], pair["rejected"]) == ("The answer is 4.", "It is 5.")
    assert summary["pairs"]["pairs_kept"] == 1


def _constraint_rows(texts, constraints, answer=None):
    meta = {"constraints": constraints, **({"answer": answer} if answer else {})}
    return [{**ROW, "prompt_id": "p0", "prompt": [{"role": "user", "content": "Describe bees. No capitals."}],
             "candidate_index": i, "text": t, "metadata": meta} for i, t in enumerate(texts)]


def test_repair_pairs_a_failing_candidate_with_its_edited_copy(tmp_path):
    lower = [{"kind": "lowercase", "args": {}}]
    cands = write(tmp_path / "c.jsonl", _constraint_rows(["Bees make honey.", "Bees are busy. Bees are busy.",
                                                           "bees fly."], lower))
    summary = judge_candidates(cands, tmp_path / "out", [{"type": "verifier"}], {"strategy": "repair", "repair": 2})
    pairs = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    # candidates 0 and 1 fail (capitals) and are repaired; 2 already passes. Candidate 1 loses its repeated
    # sentence on both sides (the rejected is tidied as its repair was), so each pair differs in the case alone
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        ("bees make honey.", "Bees make honey.", 1.0), ("bees are busy.", "Bees are busy.", 1.0)]
    assert [(p["judge"]["chosen_index"], p["judge"]["rejected_index"]) for p in pairs] == [(-1, 0), (-2, 1)]
    assert summary["pairs"]["repaired"] == 2 and summary["pairs"]["strategy"] == "repair"
    # scores.jsonl and the pass statistics describe the sampled candidates only
    scores = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [s["candidate_index"] for s in scores] == [0, 1, 2] and summary["scores"]["pass_rate"] == 1 / 3

    # added to best_vs_worst: the best (2) vs the worst (0) plus one repair (the lowest failing index, 0)
    judge_candidates(cands, tmp_path / "both", [{"type": "verifier"}], {"repair": 1})
    pairs = [json.loads(x) for x in (tmp_path / "both" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("bees make honey.", "Bees make honey."),
                                                             ("bees fly.", "Bees make honey.")]


def test_repair_that_does_not_raise_the_score_is_dropped(tmp_path):
    # the answer check fails both before and after the edit: the repaired copy is scored by the same verifier
    # (constraint passes, answer still wrong: 0.5) against the original (0.0), so the pair is kept with margin 0.5;
    # with min_margin 0.6 it is dropped as below the margin
    cands = write(tmp_path / "c.jsonl", _constraint_rows(["It is Five."], [{"kind": "lowercase", "args": {}}],
                                                         answer="4"))
    judge_candidates(cands, tmp_path / "a", [{"type": "verifier"}], {"strategy": "repair"})
    (pair,) = [json.loads(x) for x in (tmp_path / "a" / "pairs.jsonl").read_text().splitlines()]
    assert (pair["chosen"], pair["margin"]) == ("it is five.", 0.5)
    from posttrain.judges.run import NoPairsKept

    with pytest.raises(NoPairsKept, match="margin 1"):
        judge_candidates(cands, tmp_path / "b", [{"type": "verifier"}], {"strategy": "repair", "min_margin": 0.6})


@pytest.mark.parametrize("pairs,message", [
    ({"strategy": "repair", "repair": 0}, "would propose no pair"),
    ({"repair": -1}, "expected a count of repaired pairs per prompt"),
    ({"repair": True}, "expected a count"),
    ({"strategy": "round_robin", "repair": 1}, "works with a scoring strategy"),
])
def test_repair_config_errors(tmp_path, pairs, message):
    cands = write(tmp_path / "c.jsonl", [ROW])
    with pytest.raises(JudgeConfigError, match=message):
        judge_candidates(cands, tmp_path / "out", [{"type": "verifier"}], pairs)
    assert not (tmp_path / "out").exists()
