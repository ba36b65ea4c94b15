"""Ties the constraint library to the shipped sample data: its constraint ids and args must be understood, every
chosen reply must pass, every constraint-breaking rejected reply must fail, every wrong-answer reply must pass."""

import json
from collections import Counter
from pathlib import Path

import pytest

from posttrain.verifiers.constraints import check_constraint, constraints_from_metadata

DATA = Path(__file__).resolve().parents[3] / "examples" / "data"


def rows(name):
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.mark.parametrize("name", ["pairs_heldout.jsonl", "pairs_train.jsonl"])
def test_pairs(name):
    data = rows(name)
    kinds = Counter()
    for i, row in enumerate(data):
        (spec,) = constraints_from_metadata(row)
        assert check_constraint(row["chosen"], spec["kind"], spec["args"]), (name, i + 1, row)
        violates = row["rejected_kind"] == "violates_constraint"
        assert check_constraint(row["rejected"], spec["kind"], spec["args"]) != violates, (name, i + 1, row)
        kinds[(spec["kind"], violates)] += 1
    # every shipped constraint id is exercised, on both kinds of rejected reply
    assert len({k for k, _ in kinds}) == 10 and all(kinds[(k, True)] and kinds[(k, False)] for k, _ in kinds)


def test_kto_rows():
    for i, row in enumerate(rows("kto.jsonl")):
        (spec,) = constraints_from_metadata(row)
        obeys = check_constraint(row["completion"], spec["kind"], spec["args"])
        assert obeys == (row["kind"] != "violates_constraint"), ("kto.jsonl", i + 1, row)
