import json

from posttrain.data.writers import atomic_write_json, atomic_write_text


def test_atomic_write_text_leaves_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "pairs.jsonl"
    target.write_text("old\n")
    try:
        atomic_write_text(target, None)  # fails inside the write, after the temp file exists
    except TypeError:
        pass
    else:
        raise AssertionError("writing None should fail")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]


def test_atomic_write_json_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1, "b": "é"})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1, "b": "é"}
