"""Trained constraint kinds read from training files, and per-kind pass rates marked trained / unseen."""

import json

import pytest

from posttrain.data.schema import DataError
from posttrain.eval.coverage import canonical_kind, kind_metrics, trained_kinds


def test_canonical_kind_folds_aliases():
    assert [canonical_kind(k) for k in ("uppercase", "end_checker", "wrapped_in_quotes", "bullet_list_2", "x")] == [
        "all_caps", "ends_with_phrase", "double_quotes", "bullet_list_2", "x"]


def test_trained_kinds_from_files_of_any_layout(tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # the shipped pair layout: one constraint per row
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "constraint": "all_caps",
                                 "constraint_args": {}}) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "p", "constraints": [{"kind": "uppercase", "args": {}}, {"kind": "title", "args": {}}]},
        {"prompt": "q", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]},
        {"prompt": "r", "ground_truth": json.dumps({"func_name": "verify_bullet_points", "N": 3})}]))
    candidates = tmp_path / "candidates.jsonl"  # judge/generate rows keep the prompt's metadata nested
    candidates.write_text(json.dumps({"prompt_id": "x", "text": "t",
                                      "metadata": {"constraints": [{"kind": "postscript", "args": {}}]}}) + "\n")
    assert trained_kinds([str(pairs), str(prompts), str(candidates)], ["lowercase"]) == {
        "all_caps", "title", "no_commas", "double_quotes", "bullet_list", "postscript", "lowercase"}
    assert trained_kinds(kinds=["end_checker"]) == {"ends_with_phrase"}
    with pytest.raises(DataError, match="unknown constraint kind 'shouting'"):
        trained_kinds(kinds=["shouting"])
    with pytest.raises(DataError, match="no such file"):
        trained_kinds([str(tmp_path / "missing.jsonl")])


def test_kind_metrics_exact():
    details = [{"constraints": [{"kind": "lowercase", "passed": True}, {"kind": "title", "passed": False}]},
               {"constraints": [{"kind": "lowercase", "passed": False}]},
               {"constraints": [{"kind": "uppercase", "passed": True}]}]
    assert kind_metrics(details, {"lowercase"}) == {
        "constraints/kind/all_caps/pass_rate": 1.0, "constraints/kind/all_caps/n": 1.0,
        "constraints/kind/all_caps/trained": 0.0,
        "constraints/kind/lowercase/pass_rate": 0.5, "constraints/kind/lowercase/n": 2.0,
        "constraints/kind/lowercase/trained": 1.0,
        "constraints/kind/title/pass_rate": 0.0, "constraints/kind/title/n": 1.0,
        "constraints/kind/title/trained": 0.0,
        "constraints/trained/pass_rate": 0.5, "constraints/trained/n": 2.0,
        "constraints/unseen/pass_rate": 0.5, "constraints/unseen/n": 2.0}
    plain = kind_metrics(details)  # no training data given: no trained/unseen marks
    assert not any(k.endswith("/trained") or k.startswith(("constraints/trained", "constraints/unseen"))
                   for k in plain)
