"""The `posttrain` command's allocator choice (posttrain/allocator.py): which library a POSTTRAIN_ALLOCATOR value
picks, the re-exec's command line and environment and its loop guard (end to end through the console script:
tests/integration/test_allocator_cli.py)."""

from __future__ import annotations

import sys

import pytest

from posttrain.allocator import ENV, AllocatorError, choose, loaded_allocator, preload


@pytest.fixture
def libdir(tmp_path):
    d = tmp_path / "lib"
    d.mkdir()
    (d / "libtcmalloc_minimal.so.4").write_bytes(b"")
    (d / "libjemalloc.so.2").write_bytes(b"")
    return d


def test_choose_names_and_paths(libdir, tmp_path):
    dirs = [str(libdir)]
    assert choose(None, dirs) == choose("auto", dirs) == str(libdir / "libtcmalloc_minimal.so.4")
    assert choose("jemalloc", dirs) == str(libdir / "libjemalloc.so.2")
    assert choose("system", dirs) is None
    assert choose(str(libdir / "libjemalloc.so.2"), dirs) == str(libdir / "libjemalloc.so.2")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert choose("auto", [str(empty)]) is None  # nothing installed: the system's malloc, no error


@pytest.mark.parametrize("value, words", [
    ("jemalloc", ["no jemalloc library", "apt-get install libjemalloc2"]),
    ("tcmalloc", ["no tcmalloc library", "apt-get install libtcmalloc-minimal4"]),
    ("/nowhere/libfoo.so", ["/nowhere/libfoo.so: no such file"]),
    ("mimalloc", ["expected auto, tcmalloc, jemalloc, system or a path"]),
])
def test_choose_refuses_what_it_cannot_use(tmp_path, value, words):
    with pytest.raises(AllocatorError) as e:
        choose(value, [str(tmp_path)])
    assert all(w in str(e.value) for w in words) and ENV in str(e.value) and "\n" not in str(e.value)


def test_loaded_allocator_reads_the_mappings(tmp_path):
    maps = tmp_path / "maps"
    glibc = "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    anon = "7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n"
    maps.write_text(glibc + anon)
    assert loaded_allocator(str(maps)) is None
    tc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10"
    maps.write_text(glibc + anon + f"7f0000004000-7f0000005000 r-xp 00000000 08:01 99 {tc}\n")
    assert loaded_allocator(str(maps)) == tc
    assert loaded_allocator(str(tmp_path / "absent")) is None


def _preload(env, libdir, tmp_path, maps_text=""):
    maps = tmp_path / "maps"
    maps.write_text(maps_text)
    calls = []
    preload(["/venv/bin/posttrain", "dpo", "x.yaml"], environ=env, execve=lambda *a: calls.append(a),
            dirs=[str(libdir)], maps=str(maps))
    return calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD re-exec is Linux only")
def test_preload_reexecs_the_same_command_once(libdir, tmp_path):
    env = {"PATH": "/bin", "LD_PRELOAD": "/opt/libother.so"}
    calls = _preload(env, libdir, tmp_path)
    assert len(calls) == 1
    exe, args, child = calls[0]
    lib = str(libdir / "libtcmalloc_minimal.so.4")
    assert exe == sys.executable and args == [sys.executable, "/venv/bin/posttrain", "dpo", "x.yaml"]
    assert child["LD_PRELOAD"] == f"{lib}:/opt/libother.so"
    assert child["POSTTRAIN_ALLOCATOR_EXEC"] == "/opt/libother.so"
    assert int(child["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/opt/libother.so"}  # this process's environment untouched
    # The re-executed process: no second exec, LD_PRELOAD back to what it was for whatever it starts
    assert _preload(child, libdir, tmp_path) == []
    assert child["LD_PRELOAD"] == "/opt/libother.so" and "POSTTRAIN_ALLOCATOR_EXEC" not in child
    # ... and with nothing preloaded before, none after
    first = _preload({"PATH": "/bin"}, libdir, tmp_path)[0][2]
    assert first["LD_PRELOAD"] == lib and first["POSTTRAIN_ALLOCATOR_EXEC"] == ""
    assert _preload(first, libdir, tmp_path) == [] and "LD_PRELOAD" not in first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD re-exec is Linux only")
def test_preload_leaves_the_process_alone(libdir, tmp_path):
    assert _preload({ENV: "system"}, libdir, tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _preload({}, empty, tmp_path) == []  # nothing installed
    loaded = "7f0000004000-7f0000005000 r-xp 00000000 08:01 99 /usr/lib/libjemalloc.so.2\n"
    assert _preload({}, libdir, tmp_path, loaded) == []  # an allocator already preloaded by the user
    with pytest.raises(AllocatorError):
        _preload({ENV: "bogus"}, libdir, tmp_path)

    tried = []

    def failing(*args):
        tried.append(args)
        raise OSError("exec format error")

    env = {"PATH": "/bin"}
    # An exec that fails: tried once, then the command goes on as it was (no exception, environment untouched)
    assert preload(["posttrain"], environ=env, execve=failing, dirs=[str(libdir)],
                   maps=str(tmp_path / "maps")) is None
    assert len(tried) == 1 and env == {"PATH": "/bin"}
