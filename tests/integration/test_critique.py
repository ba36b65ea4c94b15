"""Constitutional critique-and-revise (``posttrain critique``, judges/critique.py) against a scripted
OpenAI-compatible critic on loopback, a local tiny-random critic, and as a pipeline stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.judges.critique import (CritiqueError, clean_revision, draw_principle, load_constitution,
                                       run_critique)
from posttrain.pipeline.load import parse_pipeline
from posttrain.pipeline.registry import STAGES
from posttrain.pipeline.runner import run_pipeline
from tests.integration.helpers import write_jsonl
from tests.integration.helpers import ScriptedServer

CONSTITUTION = {"principles": [
    {"id": "brief", "critique": "PRINCIPLE-BRIEF: be brief.", "revision": "REVISE-BRIEF: make it brief."},
    {"id": "kind", "critique": "PRINCIPLE-KIND: be kind.", "revision": "REVISE-KIND: make it kind."},
    {"id": "exact", "critique": "PRINCIPLE-EXACT: be exact.", "revision": "REVISE-EXACT: make it exact."},
]}


def critic_answer(body):
    """Critiques name the principle they were asked about; a revision is labelled and names its principle, except
    for the prompt about owls (the critic gives back the reply unchanged) and about moss (empty answer)."""
    messages = body["messages"]
    last = messages[-1]["content"]
    prompt = messages[0]["content"]
    if last.startswith("Critique"):
        tag = last.split(":")[1].strip().split()[0]
        return f"It breaks {tag}"
    tag = last.split(":")[1].strip().split()[0]
    if "owls" in prompt:
        return messages[-4]["content"]  # the reply being critiqued, unchanged
    if "moss" in prompt:
        return "   "
    return f"Revision: better answer ({tag}) to: {prompt}"


@pytest.fixture
def critic(tmp_path):
    s = ScriptedServer()
    s.answer = critic_answer
    yield s
    s.close()


@pytest.fixture
def rows(tmp_path) -> Path:
    topics = ["cats", "rivers", "owls", "tea", "moss"]
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": f"Tell me about {t}."},
                      {"role": "assistant", "content": f"A long rambling reply about {t}."}]} for t in topics])


def spec(server, tmp_path):
    return {"type": "llm", "base_url": server.url, "model": "critic", "cache_path": str(tmp_path / "cache.sqlite"),
            "backoff_base": 0.01}


def test_critique_revise_rows_pairs_principles_and_cache(critic, rows, tmp_path):
    constitution = tmp_path / "constitution.yaml"
    constitution.write_text(yaml.safe_dump(CONSTITUTION))
    out = tmp_path / "out"
    summary = run_critique(rows, out, spec(critic, tmp_path), constitution=constitution, passes=2, seed=3,
                           progress=False)
    principles = load_constitution(constitution)
    records = [json.loads(x) for x in (out / "critiques.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["revised", "revised", "unchanged", "revised", "empty"]
    # each pass asked about the principle drawn for (seed, row, pass), and the critique answered that request
    for r in records:
        drawn = [draw_principle(principles, 3, r["key"], k).id for k in range(len(r["passes"]))]
        assert [p["principle"] for p in r["passes"]] == drawn
        for p in r["passes"]:
            assert p["critique"] == f"It breaks PRINCIPLE-{p['principle'].upper()}"
    # the moss row: its first revision was empty, so it made one pass (2 requests), the others two (4 each)
    assert len(records[4]["passes"]) == 1
    assert len(critic.requests) == 4 * 4 + 2
    asked = [m["messages"][-1]["content"] for m in critic.requests]
    assert sum("PRINCIPLE-" in a for a in asked) == 9 and sum("REVISE-" in a for a in asked) == 9
    # a second pass critiques the first revision, not the original
    second = [m for m in critic.requests if m["messages"][0]["content"] == "Tell me about cats."][2]
    assert second["messages"][1]["content"].startswith("better answer (REVISE-")
    # outputs: SFT rows for every non-empty revision, pairs only where it changed; the label is cut off
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(sft) == 4 and len(pairs) == 3
    cats = pairs[0]
    assert cats["rejected"] == "A long rambling reply about cats."
    assert cats["chosen"] == f"better answer (REVISE-{records[0]['passes'][1]['principle'].upper()}) to: " \
                             "Tell me about cats."
    assert cats["metadata"]["critique"]["principles"] == [p["principle"] for p in records[0]["passes"]]
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": cats["chosen"]}
    assert summary["revised"] == 3 and summary["unchanged"] == 1 and summary["empty"] == 1
    assert summary["critic"]["stats"]["requests"] == 18
    # a rerun makes no request: every answer comes from the cache, the outputs are the same
    n = len(critic.requests)
    again = run_critique(rows, tmp_path / "again", spec(critic, tmp_path), constitution=constitution, passes=2,
                         seed=3, progress=False)
    assert len(critic.requests) == n and again["critic"]["stats"]["cache_hits"] == 18
    assert (tmp_path / "again" / "pairs.jsonl").read_text() == (out / "pairs.jsonl").read_text()


def test_cli_reads_candidates_and_errors_are_one_line(critic, tmp_path):
    candidates = write_jsonl(tmp_path / "candidates.jsonl", [
        {"prompt_id": f"p{i}", "candidate_index": j, "prompt": [{"role": "user", "content": f"Tell me about {t}."}],
         "text": f"reply {j} about {t}", "metadata": {"constraints": []}}
        for i, t in enumerate(["cats", "tea"]) for j in range(2)])
    runner = CliRunner()
    critic_config = tmp_path / "critic.yaml"
    critic_config.write_text(yaml.safe_dump(spec(critic, tmp_path)))
    result = runner.invoke(app, ["critique", "-i", str(candidates), "-o", str(tmp_path / "c"), "--critic-config",
                                 str(critic_config), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 responses, 1 pass(es): 4 revised" in result.output
    pairs = [json.loads(x) for x in (tmp_path / "c" / "pairs.jsonl").read_text().splitlines()]
    assert [p["rejected"] for p in pairs] == ["reply 0 about cats", "reply 1 about cats", "reply 0 about tea",
                                              "reply 1 about tea"]
    assert pairs[0]["metadata"]["constraints"] == []  # the candidate's metadata travels with its pair

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"principles": [{"id": "a", "critique": "x"}]}))
    result = runner.invoke(app, ["critique", "-i", str(candidates), "-o", str(tmp_path / "d"), "--critic",
                                 f"llm:{critic.url}:m", "--constitution", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad}: principles[0]: field 'revision' must be a "
                                                  "non-empty string"]
    result = runner.invoke(app, ["critique", "-i", str(candidates), "-o", str(tmp_path / "d"), "--critic",
                                 "verifier"])
    assert result.exit_code == 2 and "critic: expected a config of type llm or local" in result.output
    assert not (tmp_path / "d").exists()


def test_echoed_critiques_and_verified_revisions(critic, tmp_path):
    """A "revision" that repeats the critique is no revision (outcome echo); with verify, a revision the verifier
    scores below the original is dropped (outcome rejected), one it scores at least as high is kept."""
    def answer(body):
        last, prompt = body["messages"][-1]["content"], body["messages"][0]["content"]
        if last.startswith("Critique"):
            return "The reply should be shorter and clearer."
        if "echo" in prompt:
            return "The reply should be shorter and clearer!"
        return "SHOUTED REVISION." if "shout" in prompt else "a calm lowercase revision."
    critic.answer = answer
    lower = [{"kind": "lowercase", "args": {}}]
    candidates = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt_id": p, "candidate_index": 0, "prompt": [{"role": "user", "content": f"{p}: answer in lowercase."}],
         "text": "an original lowercase reply.", "metadata": {"constraints": lower}} for p in ("echo", "shout", "calm")])
    summary = run_critique(candidates, tmp_path / "v", spec(critic, tmp_path), verify=True, progress=False)
    records = [json.loads(x) for x in (tmp_path / "v" / "critiques.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["echo", "rejected", "revised"]
    assert records[0]["passes"][0]["failed"] == "echo" and records[1]["verified"] == {"original": 1.0,
                                                                                       "revision": 0.0}
    assert (summary["echo"], summary["rejected"], summary["revised"], summary["sft_rows"]) == (1, 1, 1, 1)
    pairs = [json.loads(x) for x in (tmp_path / "v" / "pairs.jsonl").read_text().splitlines()]
    assert [p["chosen"] for p in pairs] == ["a calm lowercase revision."]
    # without verify the shouted revision is kept
    assert run_critique(candidates, tmp_path / "nv", spec(critic, tmp_path), progress=False)["revised"] == 2


def test_clean_revision_drops_labels_and_constitution_errors(tmp_path):
    assert clean_revision("  Revision: Short.  ") == "Short."
    assert clean_revision("**Revised reply:** Short.") == "Short."
    assert clean_revision("Revisions are hard.") == "Revisions are hard."
    other = tmp_path / "other.yaml"
    other.write_text("rules: [a]\n")
    with pytest.raises(CritiqueError, match=r"other.yaml: expected a mapping with a non-empty 'principles' list"):
        load_constitution(other)
    other.write_text("principles: [{id: a, critique: x, revision: y}, {id: a, critique: x, revision: y}]\n")
    with pytest.raises(CritiqueError, match=r"principles\[1\]: id 'a' repeats"):
        load_constitution(other)
    assert len(load_constitution()) == 8  # the shipped constitution


def test_pipeline_stage_with_the_model_as_its_own_critic(rows, tmp_path):
    tree = {"run_dir": str(tmp_path / "run"), "stages": {"critique": {"command": "critique", "config": {
        "inputs": str(rows), "critic": {"type": "local", "model": "tiny-random", "max_new_tokens": 8},
        "passes": 1, "seed": 0}}}}
    manifest = run_pipeline(parse_pipeline(tree, STAGES))
    stage = manifest["stages"]["critique"]
    assert stage["status"] == "done", stage
    folder = Path(stage["folder"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rows"] == 5 and summary["passes"] == 1 and summary["seed"] == 0
    assert summary["sft_rows"] == summary["revised"] + summary["unchanged"]
    # every row made its one pass under the shipped constitution's principle drawn for (seed 0, row, pass 0)
    shipped = load_constitution()
    records = [json.loads(x) for x in (folder / "critiques.jsonl").read_text().splitlines()]
    assert [[p["principle"] for p in r["passes"]] for r in records] == [
        [draw_principle(shipped, 0, r["key"], 0).id] for r in records]
    assert summary["principles_drawn"] == {k: sum(r["passes"][0]["principle"] == k for r in records)
                                           for k in sorted({r["passes"][0]["principle"] for r in records})}
    # the second run is a cache hit of the whole stage
    again = run_pipeline(parse_pipeline(tree, STAGES))
    assert again["stages"]["critique"]["status"] == "skipped"
