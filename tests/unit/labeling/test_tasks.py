"""Label tasks from the files posttrain writes: comparisons, generate candidates, a judge's pairs and comparisons;
bad rows named by file, line and field."""

import json

import pytest

from posttrain.data.schema import DataError, DataErrors
from posttrain.labeling.tasks import audit_items, category, side_by_side_payloads


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_comparisons_file_gives_seeded_display_orders(tmp_path):
    rows = [{"prompt": f"Q{i}?", "response_a": f"A{i}", "response_b": f"B{i}", "model_a": "sft"} for i in range(40)]
    src = _write(tmp_path / "cmp.jsonl", rows)
    tasks = side_by_side_payloads(src, seed=7)
    assert [t["a"] for t in tasks] == [f"A{i}" for i in range(40)] and tasks[0]["model_a"] == "sft"
    assert tasks[3]["prompt"] == [{"role": "user", "content": "Q3?"}] and tasks[3]["source"] == f"{src}:4"
    orders = [tuple(t["display"]) for t in tasks]
    assert set(orders) == {("a", "b"), ("b", "a")}  # both orders drawn
    assert orders == [tuple(t["display"]) for t in side_by_side_payloads(src, seed=7)]
    assert orders != [tuple(t["display"]) for t in side_by_side_payloads(src, seed=8)]


def test_bad_comparison_rows_are_all_named(tmp_path):
    src = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "response_a": "x", "response_b": "y"},
                                         {"prompt": "", "response_a": "x", "response_b": "y"},
                                         {"prompt": "q", "response_a": "x"}])
    with pytest.raises(DataErrors) as e:
        side_by_side_payloads(src)
    assert [(err.row, err.field_name) for err in e.value.errors] == [(2, "prompt"), (3, "response_b")]
    with pytest.raises(DataError, match="no such file"):
        side_by_side_payloads(tmp_path / "missing.jsonl")


def test_candidates_file_pairs_the_first_two_different_answers(tmp_path):
    def cand(pid, i, text):
        return {"prompt_id": pid, "candidate_index": i, "prompt": [{"role": "user", "content": pid}], "text": text,
                "metadata": {"constraints": [{"kind": "lowercase"}]}}
    src = _write(tmp_path / "cands.jsonl", [cand("p1", 1, "same"), cand("p1", 0, "same"), cand("p1", 2, "other"),
                                            cand("p2", 0, "only"), cand("p2", 1, "only ")])
    tasks = side_by_side_payloads(src)
    assert len(tasks) == 1  # p2 has one distinct answer
    assert (tasks[0]["a"], tasks[0]["b"], tasks[0]["category"]) == ("same", "other", "lowercase")


def test_audit_items_from_pairs_and_comparisons(tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 0.5,
                                              "prompt_id": "p1"}])
    items = audit_items(pairs=pairs)
    assert items == [{"prompt": [{"role": "user", "content": "q"}], "a": "good", "b": "bad", "judge": "a",
                      "confidence": 0.5, "category": "all", "source": f"{pairs}:1"}]
    cands = _write(tmp_path / "c.jsonl", [{"prompt_id": "p1", "candidate_index": i, "text": t,
                                           "prompt": [{"role": "user", "content": "q"}],
                                           "metadata": {"category": "math"}} for i, t in enumerate(["x", "y"])])
    comps = _write(tmp_path / "comparisons.jsonl", [{"prompt_id": "p1", "a_index": 0, "b_index": 1, "winner": "b",
                                                     "confidence": 0.9},
                                                    {"prompt_id": "p1", "a_index": 0, "b_index": 7, "winner": "a"},
                                                    {"prompt_id": "p1", "a_index": 0, "b_index": 1, "winner": "c"}])
    with pytest.raises(DataErrors) as e:
        audit_items(comparisons=comps, candidates=cands)
    assert [(err.row, err.field_name) for err in e.value.errors] == [(2, "prompt_id"), (3, "winner")]
    _write(comps, [{"prompt_id": "p1", "a_index": 0, "b_index": 1, "winner": "b", "confidence": 0.9}])
    [item] = audit_items(comparisons=comps, candidates=cands)
    assert (item["a"], item["b"], item["judge"], item["confidence"], item["category"]) == ("x", "y", "b", 0.9, "math")
    with pytest.raises(ValueError, match="not both"):
        audit_items(pairs=pairs, comparisons=comps)


def test_category():
    assert category({"category": "code"}) == "code"
    assert category({"constraints": [{"kind": "lowercase"}, {"kind": "all_caps"}]}) == "all_caps+lowercase"
    assert category({"constraint": "title"}) == "title" and category(None) == "all"
