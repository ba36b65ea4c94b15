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


def test_json_outputs_are_strict_json(tmp_path):
    import math

    from posttrain.data.writers import atomic_write_jsonl

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    atomic_write_json(tmp_path / "m.json", {"loss": math.nan, "nested": [math.inf, {"x": -math.inf}], "ok": 1.5})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == {
        "loss": None, "nested": [None, {"x": None}], "ok": 1.5}
    atomic_write_jsonl(tmp_path / "r.jsonl", [{"v": math.nan}, {"v": 2.0}])
    assert [json.loads(ln, parse_constant=refuse) for ln in (tmp_path / "r.jsonl").read_text().splitlines()] == [
        {"v": None}, {"v": 2.0}]


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        return real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_permissions_follow_the_umask_without_touching_it(tmp_path, monkeypatch):
    """os.umask() sets the mask process-wide while it reads it: another thread creating a file in that window
    would get mode 0666. The writer must not call it at all."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("atomic_write_text changed the process umask")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_output_path_checks_name_the_path(tmp_path):
    import pytest

    from posttrain.data.writers import OutputPathError, check_output_path

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    check_output_path(tmp_path / "new" / "deeper", "--output")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    check_output_path(a_file, "--output", folder=False)
    with pytest.raises(OutputPathError, match=f"^--output '{a_file}' is a file, not a folder$"):
        check_output_path(a_file, "--output")
    with pytest.raises(OutputPathError, match=f"^train.output_dir '{a_file}/run': cannot create this folder: "
                                              f"'{a_file}' is a file, not a folder$"):
        check_output_path(a_file / "run", "train.output_dir")
    with pytest.raises(OutputPathError, match=f"^--json '{tmp_path}' is a folder, not a file$"):
        check_output_path(tmp_path, "--json", folder=False)


def test_an_unwritable_location_is_refused_even_for_root(tmp_path):
    """Permission bits do not stop root, so the check writes (an unnamed temp file); /sys refuses new files to
    everyone, root included."""
    import os

    import pytest

    from posttrain.data.writers import OutputPathError, check_output_path

    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs Linux sysfs")
    with pytest.raises(OutputPathError, match=r"^--output '/sys/kernel/posttrain-out': cannot write in "
                                              r"'/sys/kernel' \(Permission denied\)$"):
        check_output_path("/sys/kernel/posttrain-out", "--output")
