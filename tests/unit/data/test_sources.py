"""Data sources as mappings and weighted mixtures: column renames, weights (exact counts, seeded), labels, the hub
configuration name, and the errors naming the source."""

import json

import pytest

from posttrain.data.layouts import load_examples
from posttrain.data.schema import DataErrors
from posttrain.data.sources import iter_source_records, local_paths, source_label, sources_of, weighted


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_columns_rename_and_weights_mix(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"question": f"q{i}", "good": f"g{i}", "bad": f"b{i}"} for i in range(10)])
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)])
    mix = [{"path": a, "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}, "weight": 0.5},
           {"path": b, "weight": 2}]
    pairs = load_examples(mix, "preference")
    from_a = [p for p in pairs if p.source == a]
    assert len(from_a) == 5 and len(pairs) == 5 + 8  # half of a (seeded), b twice
    assert all(p.prompt[-1]["content"].startswith("q") and p.chosen[-1]["content"].startswith("g") for p in from_a)
    assert [p.row for p in from_a] == sorted(p.row for p in from_a)  # kept in file order
    again = load_examples(mix, "preference")
    assert [p.row for p in again if p.source == a] == [p.row for p in from_a]  # the same sample every run
    assert source_label(mix) == f"{a} (x0.5) + {b} (x2)" and local_paths(mix) == [a, b]


def test_weighted_exact_counts():
    rows = list(range(10))
    assert weighted(rows, 1.0, "s") == rows
    assert len(weighted(rows, 0.3, "s")) == 3 and weighted(rows, 0.3, "s") == weighted(rows, 0.3, "s")
    assert weighted(rows, 2.0, "s") == rows + rows and len(weighted(rows, 1.5, "s")) == 15


def test_a_missing_column_names_the_source_row_and_column(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "x"}, {"prompt": "only prompt"}])
    with pytest.raises(DataErrors) as e:
        load_examples({"path": a, "columns": {"prompt": "question", "completion": "answer"}}, "sft")
    assert str(e.value).startswith(f"{a}:2: field 'question': missing (data columns map 'prompt' to it")


def test_a_hub_source_passes_its_configuration_name(monkeypatch):
    """gsm8k's `main`: the name reaches datasets.load_dataset (the hub itself is not reachable here)."""
    import datasets

    calls = []

    def fake(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "2+2?", "answer": "#### 4"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows = list(iter_source_records({"path": "openai/gsm8k", "name": "main", "split": "test",
                                     "columns": {"prompt": "question"}}))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert rows == [("openai/gsm8k[main:test]", 1, {"prompt": "2+2?", "answer": "#### 4"})]
    assert [s.label for s in sources_of("plain.jsonl")] == ["plain.jsonl"]
