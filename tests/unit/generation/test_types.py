"""Per-candidate settings (round-robin temperatures), seeds, stop strings, prompt ids."""

from __future__ import annotations

import pytest

from posttrain.generation.candidates import prompt_id
from posttrain.generation.types import candidate_rows, cut_at_stop, per_candidate, row_seed


def test_temperatures_round_robin_over_candidates():
    assert per_candidate([0.2, 0.7, 1.0], 7, "temperature") == [0.2, 0.7, 1.0, 0.2, 0.7, 1.0, 0.2]
    assert per_candidate(0.5, 3, "temperature") == [0.5, 0.5, 0.5]
    rows = candidate_rows([[1, 2], [3]], n=3, temperature=[0.0, 1.0], top_p=[0.9], max_new_tokens=4, seed=0)
    assert [r.temperature for r in rows] == [0.0, 1.0, 0.0] * 2
    assert [r.prompt_ids for r in rows] == [[1, 2]] * 3 + [[3]] * 3
    with pytest.raises(ValueError, match="temperature"):
        per_candidate([], 2, "temperature")


def test_row_seeds_depend_on_seed_key_and_index_only():
    rows = candidate_rows([[1, 2], [3]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=9, keys=["a", "b"])
    assert [r.seed for r in rows] == [row_seed(9, k, i) for k in ("a", "b") for i in range(2)]
    assert len({r.seed for r in rows}) == 4
    alone = candidate_rows([[3]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=9, keys=["b"])
    assert [r.seed for r in alone] == [r.seed for r in rows[2:]]
    assert row_seed(9, "a", 0) != row_seed(10, "a", 0)


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("hello world. bye", ["bye", "."]) == ("hello world", True)
    assert cut_at_stop("hello", ["x"]) == ("hello", False)
    assert cut_at_stop("hello", []) == ("hello", False)


def test_prompt_id_is_sha256_of_the_messages_json():
    import hashlib
    import json

    messages = [{"role": "user", "content": "héllo"}]
    expected = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False,
                                         separators=(",", ":")).encode()).hexdigest()[:16]
    assert prompt_id(messages) == expected and len(expected) == 16
