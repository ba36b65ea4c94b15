"""Reading an existing candidate file for resume: complete prompts kept, torn and partial ones dropped,
rows made with other settings refused."""

from __future__ import annotations

import json

import pytest

from posttrain.data.schema import DataError
from posttrain.generation.candidates import read_existing, sampling_of

SAMPLING = [sampling_of(i, [0.5, 1.0], [1.0, 1.0], 8, 0) for i in range(2)]


def _row(pid: str, i: int, **over) -> str:
    row = {"prompt_id": pid, "candidate_index": i, "text": "t", "model": "m", "sampling": SAMPLING[i], **over}
    return json.dumps(row) + "\n"


def test_complete_prompts_kept_partial_and_torn_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    good = _row("a", 0) + _row("a", 1)
    path.write_text(good + _row("b", 0) + _row("b", 1)[:15])
    ex = read_existing(path, n=2, model="m", sampling=SAMPLING)
    assert ex.done == {"a"} and "".join(ex.lines) == good and ex.dropped == 2 and ex.rewrite
    path.write_text(good)
    ex = read_existing(path, n=2, model="m", sampling=SAMPLING)
    assert ex.done == {"a"} and not ex.rewrite and ex.dropped == 0
    path.write_text(good + _row("a", 1))  # a duplicate
    assert read_existing(path, n=2, model="m", sampling=SAMPLING).dropped == 1
    assert read_existing(tmp_path / "missing.jsonl", n=2, model="m", sampling=SAMPLING).done == set()


def test_other_settings_are_refused_not_mixed(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(_row("a", 0) + _row("a", 1, model="other"))
    with pytest.raises(DataError, match=r"c\.jsonl:2: field 'sampling': made with other settings"):
        read_existing(path, n=2, model="m", sampling=SAMPLING)
    path.write_text(_row("a", 0) + json.dumps({"prompt_id": "a", "candidate_index": 5}) + "\n")
    with pytest.raises(DataError, match="larger n"):
        read_existing(path, n=2, model="m", sampling=SAMPLING)
    path.write_text('{"hello": 1}\n')
    with pytest.raises(DataError, match="not a candidate row"):
        read_existing(path, n=2, model="m", sampling=SAMPLING)
