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


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from posttrain.data.writers import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
