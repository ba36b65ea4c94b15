"""The shipped diverse-prompt generator (examples/data/make_prompts.py): valid verifier specs, the leave-out
protocol, determinism, and that the shipped file is what the script writes."""

import importlib.util
import json
from pathlib import Path

import pytest

from posttrain.verifiers.constraints import validate_constraint

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "examples" / "data" / "make_prompts.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_prompts", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_row_is_a_valid_verifier_spec_and_compatible(gen):
    rows = gen.make_rows(300, 3)
    assert len({r["prompt"] for r in rows}) == 300
    for r in rows:
        kinds = [c["kind"] for c in r["constraints"]]
        assert 1 <= len(kinds) <= 2 and len(set(kinds)) == len(kinds) and gen.compatible(kinds)
        for c in r["constraints"]:
            validate_constraint(c["kind"], c["args"])
        assert [p.split("/")[0] for p in r["phrasings"]] == kinds
        for c in r["constraints"]:  # the request to repeat is the task sentence the prompt starts with
            if c["kind"] == "repeat_prompt":
                assert r["prompt"].startswith(c["args"]["prompt_to_repeat"] + " ")


def test_every_kind_has_several_phrasings(gen):
    for kind, (_, templates) in gen.CONSTRAINTS.items():
        assert len(templates) >= 3, kind
        texts = {t({"max": 30, "n": 2, "keywords": ["calm"], "phrase": "Well", "keyword": "calm",
                  "letter": "a", "word": "then", "chars": "!"}) for t in templates}
        assert len(texts) == len(templates), kind


def test_hold_out_kinds_and_templates(gen):
    rows = gen.make_rows(200, 5, hold_out_kinds=["lowercase", "title"], hold_out_templates=[0, 2])
    kinds = {c["kind"] for r in rows for c in r["constraints"]}
    assert "lowercase" not in kinds and "title" not in kinds and len(kinds) == len(gen.CONSTRAINTS) - 2
    templates = {int(p.split("/")[1]) for r in rows for p in r["phrasings"]}
    assert 0 not in templates and 2 not in templates and 1 in templates
    with pytest.raises(SystemExit, match="unknown constraint kind"):
        gen.make_rows(5, 0, hold_out_kinds=["no_such_kind"])


def test_deterministic_and_shipped_file_matches(gen, tmp_path):
    assert gen.make_rows(50, 9) == gen.make_rows(50, 9)
    out = tmp_path / "p.jsonl"
    gen.main(["-o", str(out)])
    assert out.read_text() == (ROOT / "examples" / "data" / "prompts_diverse.jsonl").read_text()
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"id", "prompt", "category", "constraints", "phrasings"}


def test_eval_suite_rows_are_in_distribution_and_none_is_a_training_prompt(gen, tmp_path):
    from posttrain.eval.run import load_suites

    train = tmp_path / "train.jsonl"
    gen.main(["--n", "120", "--seed", "4", "-o", str(train)])
    out = tmp_path / "heldout.jsonl"
    gen.main(["--eval-suite", str(train), "--n", "40", "--seed", "4", "-o", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    taken = {json.loads(line)["prompt"] for line in train.read_text().splitlines()}
    # the same seed makes the same first 120 prompts: every one of them is skipped, so none leaks into the suite
    assert len(rows) == 40 and not {r["prompt"] for r in rows} & taken
    assert all(r["kind"] == "constraint" and r["group"] == "in_distribution" for r in rows)
    assert rows[0]["id"].startswith("heldout-diverse-")
    # eval reads the file as a suite whose rows count in the in-distribution group
    suite_rows, _, (entry,) = load_suites([str(out)], 64)
    assert entry["rows"] == 40 and {r.group for r in suite_rows} == {"in_distribution"}


def test_shipped_heldout_suite_matches_the_generator(gen, tmp_path):
    out = tmp_path / "h.jsonl"
    gen.main(["--eval-suite", str(ROOT / "examples" / "data" / "prompts_diverse.jsonl"), "--n", "64", "--seed", "99",
              "-o", str(out)])
    assert out.read_text() == (ROOT / "examples" / "data" / "prompts_diverse_heldout.jsonl").read_text()
